"""Graceful preemption: a just-in-time checkpoint when a node of the run is about to be reclaimed.

A preemptible node gets a notice before it goes (a spot reclaim, a Kubernetes pod deletion). In Ray 2.60 the notice
reaches the cluster as a node *drain* with reason PREEMPTION and a deadline: ``ray start --block`` answers SIGTERM by
draining its own node for ``RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S`` seconds before it stops its processes, and the
autoscaler or KubeRay drain nodes they are about to remove. Ray Train watches drains of the run's nodes and reports
them to every worker through ``ray.train.get_preemption_info()``; at the deadline (plus
``FailureConfig.preemption_grace_s``) it tears the worker group down and restarts it from the latest checkpoint,
counted against ``max_preemption_failures``, not ``max_failures``.

``PreemptionCheck`` asks after every optimiser step (every rank, the same number of times: the call is a barrier
across ranks). On the first notice it decides, on rank 0 and broadcast so that every rank agrees, whether a
checkpoint fits in the time left: the deadline minus now plus ``train.preemption_grace_s``, against how long the
last checkpoint of this attempt took to save (unknown before the first: it tries). A checkpoint that does not fit
is skipped with a message, and the run resumes from the last periodic checkpoint instead. One just-in-time
checkpoint per attempt; ``train.preemption_grace_s < 0`` turns the check off.
"""
from __future__ import annotations

import logging
import time
from typing import Optional

log = logging.getLogger(__name__)


class PreemptionCheck:
    """Per worker: ``checkpoint_now()`` after each optimiser step; ``saved(seconds)`` after each checkpoint."""

    def __init__(self, grace_s: float, rank: int, world: int):
        self.grace_s, self.rank, self.world = float(grace_s), int(rank), int(world)
        self.noticed = False
        self.last_save_s: Optional[float] = None
        self.message = ""

    @property
    def enabled(self) -> bool:
        return self.grace_s >= 0

    def saved(self, seconds: float) -> None:
        self.last_save_s = float(seconds)

    def checkpoint_now(self) -> bool:
        """True once, on every rank alike, when a preemption notice has come and a checkpoint fits before the
        node goes. A barrier over the ranks (``ray.train.get_preemption_info``)."""
        if not self.enabled or self.noticed:
            return False
        import ray.train

        info = ray.train.get_preemption_info()
        if info is None:
            return False
        self.noticed = True
        fits, self.message = self.decide(info.deadline_ms, info.preempted_ranks, time.time())
        if self.world > 1:  # rank 0 decides; clocks and save times differ a little between ranks
            import torch
            import torch.distributed as dist

            flag = torch.tensor([1 if fits else 0], dtype=torch.int64)
            dist.broadcast(flag, src=0)
            fits = bool(flag.item())
        if self.rank == 0:
            log.warning("%s", self.message)
        return fits

    def decide(self, deadline_ms: Optional[int], ranks, now_s: float) -> tuple[bool, str]:
        """(checkpoint now?, why) for a notice with ``deadline_ms`` (UNIX ms, None: no deadline given)."""
        if deadline_ms is None:
            return True, f"preemption notice for ranks {list(ranks)} without a deadline: checkpointing now"
        left = deadline_ms / 1000.0 - now_s + self.grace_s
        need = self.last_save_s
        if need is None or need <= left:
            took = "unknown (no checkpoint yet)" if need is None else f"{need:.1f} s last time"
            return True, (f"preemption notice for ranks {list(ranks)}: {left:.1f} s left (deadline + "
                          f"train.preemption_grace_s={self.grace_s:g}), a checkpoint takes {took}: checkpointing now")
        return False, (f"preemption notice for ranks {list(ranks)}: {left:.1f} s left (deadline + "
                       f"train.preemption_grace_s={self.grace_s:g}) but a checkpoint takes {need:.1f} s: no "
                       f"checkpoint, the run resumes from its last periodic one")
