"""Units of fault handling, without a cluster: which Ray errors mean a lost model replica (503 + Retry-After in the
Serve ingress) and whether a preemption notice leaves time for a checkpoint."""
from __future__ import annotations

import pytest


def test_lost_replica_errors_are_recognised():
    import ray.exceptions as rex
    from ray.serve.exceptions import BackPressureError, ReplicaUnavailableError

    from odvla.serve.failures import RETRY_AFTER_LOST_S, lost_replica_response, replica_lost

    for e in (rex.ActorDiedError(), rex.ActorUnavailableError("node 12ab gone", None), rex.NodeDiedError("x"),
              rex.WorkerCrashedError(), rex.OwnerDiedError("ab" * 14, None, ""), ReplicaUnavailableError("r")):
        assert replica_lost(e), type(e).__name__
    for e in (ValueError("bad"), RuntimeError("CUDA error"), BackPressureError(num_queued_requests=3,
                                                                               max_queued_requests=2)):
        assert not replica_lost(e), type(e).__name__
    # the model's own exception inside a task error is not replica loss; a lost node inside one is
    assert not replica_lost(rex.RayTaskError("infer", "tb", ValueError("bad input")))
    assert replica_lost(rex.RayTaskError("infer", "tb", rex.NodeDiedError("node gone")))

    status, msg, headers = lost_replica_response(rex.ActorDiedError(), 3)
    assert status == 503 and headers == {"Retry-After": str(RETRY_AFTER_LOST_S)}
    assert "ActorDiedError" in msg and "tried 3 replica" in msg and "lost" in msg


@pytest.mark.parametrize("deadline_in, grace, last_save, fits", [
    (10.0, 0.0, None, True),     # no checkpoint yet this attempt: try
    (10.0, 0.0, 4.0, True),      # 4 s fit in 10 s
    (3.0, 0.0, 4.0, False),      # 4 s do not fit in 3 s
    (3.0, 2.0, 4.0, True),       # ... but do with 2 s of grace past the deadline
    (-1.0, 0.0, 0.5, False),     # the deadline has passed
])
def test_preemption_checkpoint_fits_or_not(deadline_in, grace, last_save, fits):
    from odvla.platform.train.preemption import PreemptionCheck

    check = PreemptionCheck(grace, rank=0, world=2)
    if last_save is not None:
        check.saved(last_save)
    now = 1_000_000.0
    ok, why = check.decide(int((now + deadline_in) * 1000), [1], now)
    assert ok is fits, why
    assert "ranks [1]" in why and f"train.preemption_grace_s={grace:g}" in why
    assert ("checkpointing now" in why) is fits


def test_preemption_without_deadline_checkpoints_and_negative_grace_disables():
    from odvla.platform.train.preemption import PreemptionCheck

    assert PreemptionCheck(0.0, 0, 1).decide(None, [0], 0.0)[0] is True
    off = PreemptionCheck(-1, 0, 1)
    assert not off.enabled and off.checkpoint_now() is False  # never reaches Ray: no train session needed
