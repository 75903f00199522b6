"""Session affinity: a Ray Serve request router that keeps each scene session on the replica holding its state.

Configured on the ``Planner`` deployment (``request_router_config``); it runs inside every caller of the
deployment's handle (the ingress replicas). Requests carry ``session_id`` as a keyword argument:

- without a session: power-of-two-choices on queue length, like Serve's default router;
- with a session: the replica this router already sent the session to, if it is still running; otherwise the
  replica of highest rendezvous hash ``sha1(session_id, replica_id)``. Hashing makes the first choice the same in
  every ingress replica without shared state; the sticky map keeps a session in place when replicas are added by
  the autoscaler. When that replica dies the session moves to the next replica by hash, whose store has no state
  for it: the replica rebuilds it and the response carries a warning.

Only the router's own request is fulfilled by a routing attempt (the base class matches on the request id, not
FIFO), so a session's request never lands on another session's replica.
"""
from __future__ import annotations

import hashlib
import random
import time
from typing import List, Optional

from ray.serve.request_router import PendingRequest, ReplicaID, RequestRouter, RunningReplica

SESSION_KWARG = "session_id"


def rendezvous_score(session_id: str, replica_unique_id: str) -> int:
    return int.from_bytes(hashlib.sha1(f"{session_id}|{replica_unique_id}".encode()).digest()[:8], "big")


class SessionAffinityRouter(RequestRouter):
    def initialize_state(self, session_idle_s: float = 300.0, **kwargs) -> None:
        self._session_idle_s = float(session_idle_s)
        self._assigned: dict[str, tuple[ReplicaID, float]] = {}
        self._last_sweep = time.monotonic()

    def _sweep(self, now: float) -> None:
        if now - self._last_sweep < 10.0:
            return
        self._last_sweep = now
        cutoff = now - 2 * self._session_idle_s
        for sid in [s for s, (_, t) in self._assigned.items() if t < cutoff]:
            del self._assigned[sid]

    def session_replica(self, session_id: str, candidates: List[RunningReplica]) -> RunningReplica:
        now = time.monotonic()
        if not hasattr(self, "_assigned"):
            self.initialize_state()
        self._sweep(now)
        by_id = {r.replica_id: r for r in candidates}
        held = self._assigned.get(session_id)
        if held is not None and held[0] in by_id:
            target = by_id[held[0]]
        else:
            target = max(candidates, key=lambda r: rendezvous_score(session_id, r.replica_id.unique_id))
        self._assigned[session_id] = (target.replica_id, now)
        return target

    async def choose_replicas(
        self,
        candidate_replicas: List[RunningReplica],
        pending_request: Optional[PendingRequest] = None,
    ) -> List[List[RunningReplica]]:
        if not candidate_replicas:
            return []
        sid = None
        if pending_request is not None:
            sid = (pending_request.kwargs or {}).get(SESSION_KWARG)
        if sid:
            return [[self.session_replica(str(sid), candidate_replicas)]]
        if len(candidate_replicas) <= 2:
            return [list(candidate_replicas)]
        return [random.sample(list(candidate_replicas), 2)]

    def on_replica_actor_died(self, replica_id: ReplicaID):
        super().on_replica_actor_died(replica_id)
        if hasattr(self, "_assigned"):
            for sid in [s for s, (r, _) in self._assigned.items() if r == replica_id]:
                del self._assigned[sid]
