"""Which errors of a ``Planner`` call mean "the replica (or its whole node) is gone", and what the client gets then.

A model replica can vanish under a request: its process is killed, or its node is lost (a spot instance reclaimed,
a raylet gone). Ray reports that to the caller in several shapes, depending on when the caller notices:

- ``RayActorError`` (``ActorDiedError`` once the GCS has marked the actor dead, ``ActorUnavailableError`` while
  the connection is lost but the death is not confirmed yet);
- ``NodeDiedError``, ``WorkerCrashedError``, ``LocalRayletDiedError``: the process or raylet died with the task;
- ``ObjectLostError`` and subclasses (``OwnerDiedError``...): the reply lived on the lost node;
- Serve's ``ReplicaUnavailableError``: the router had picked a replica that is no longer reachable;
- any of these wrapped in a ``RayTaskError`` (``.cause``).

The ingress retries such a request on another replica a few times (the router drops a dead replica as soon as a
call to it fails); when every attempt fails the client gets **503 with Retry-After**, never a 500 and never a hang:
the request did not run to completion and can be sent again as is. Errors of the model itself (a ``RayTaskError``
with another cause) are not replica loss and are not retried.
"""
from __future__ import annotations

RETRY_AFTER_LOST_S = 5
"""Seconds a client is told to wait after replica loss: about Serve's time to notice a lost node (health checks of
a few seconds) and route around it."""


def replica_lost_errors() -> tuple[type[BaseException], ...]:
    """The exception types that mean the replica or its node is gone (imported lazily: Ray is heavy)."""
    import ray.exceptions as rex
    from ray.serve.exceptions import ReplicaUnavailableError

    return (rex.RayActorError, rex.NodeDiedError, rex.WorkerCrashedError, rex.LocalRayletDiedError,
            rex.ObjectLostError, ReplicaUnavailableError)


def replica_lost(exc: BaseException) -> bool:
    """True when ``exc`` (or the cause a ``RayTaskError`` wraps) says the replica or its node is gone."""
    import ray.exceptions as rex

    lost = replica_lost_errors()
    seen = 0
    while exc is not None and seen < 5:
        if isinstance(exc, lost):
            return True
        if isinstance(exc, rex.RayTaskError):
            exc = getattr(exc, "cause", None)
            seen += 1
            continue
        return False
    return False


def lost_replica_response(exc: BaseException, attempts: int) -> tuple[int, str, dict]:
    """(status, message, headers) for a request whose ``attempts`` tries all hit lost replicas: 503 + Retry-After."""
    first_line = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else ""
    detail = f"{type(exc).__name__}: {first_line}" if first_line else type(exc).__name__
    return (503, f"the model replica serving this request was lost ({detail}); tried {attempts} replica(s); "
                 f"retry after {RETRY_AFTER_LOST_S} s", {"Retry-After": str(RETRY_AFTER_LOST_S)})
