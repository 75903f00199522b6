"""The HPO sweep's searcher and scheduler change what runs (a single real trial could not show it: random search
would pass). The sweep's own ``build_search`` / ``build_hpo_space`` drive a real Tune run on the local Ray cluster,
with a cheap function trainable that reports like a sweep trial: one training-loss report per stage, then the
evaluation metric. Its loss grows with distance from lr = 1e-3 in log space, so a trial far from it lags."""
from __future__ import annotations

import math
import os

import pytest

from odvla.platform.config import load_config
from odvla.tune.hpo import LOSS_METRIC, build_search
from odvla.tune.space import build_hpo_space

STAGES = 2


def _make_trial(loss_key: str, stages: int):
    """The trainable, built inside the test so Ray pickles it by value (workers cannot import a test module)."""

    def trial(config: dict) -> None:
        import math

        from ray import tune

        gap = abs(math.log10(config["lr"]) + 3.0)  # 0 at lr = 1e-3
        for stage in range(stages):
            tune.report({loss_key: 1.0 + gap - 0.1 * stage, "phase": "train"})
        tune.report({loss_key: 1.0 + gap, "uniad/L2_avg": 0.5 + gap, "phase": "done"})

    return trial


@pytest.mark.integration
def test_optuna_proposes_from_the_space_and_asha_stops_laggards(ray_session, tmp_path, monkeypatch):
    from ray import tune

    cfg = load_config(model="tiny", overrides=["sweep.mode=hpo", "sweep.searcher=optuna", "sweep.scheduler=asha",
                                               "sweep.lr_min=1e-5", "sweep.lr_max=1e-1", "sweep.num_samples=8",
                                               "sweep.stage_sets=[[stage1,stage3]]"])
    search, scheduler, relaxed = build_search(cfg.sweep, num_stages=STAGES, seed=cfg.train.seed)
    assert relaxed and search is not None and scheduler is not None
    monkeypatch.setenv("TUNE_DISABLE_STRICT_METRIC_CHECKING", "1")
    space = build_hpo_space(cfg.sweep)
    tuner = tune.Tuner(
        tune.with_resources(_make_trial(LOSS_METRIC, STAGES), {"cpu": 1}), param_space={"lr": space["lr"]},
        tune_config=tune.TuneConfig(search_alg=search, scheduler=scheduler, num_samples=cfg.sweep.num_samples,
                                    max_concurrent_trials=1),
        run_config=tune.RunConfig(storage_path=str(tmp_path), name="hpo-choices", verbose=0))
    results = tuner.fit()
    assert not results.errors, results.errors
    rows = [(r.config["lr"], r.metrics["training_iteration"]) for r in results]
    assert len(rows) == cfg.sweep.num_samples
    lrs = [lr for lr, _ in rows]
    # proposed by the searcher from the log-uniform space: inside the range, spread over decades, all distinct
    assert all(1e-5 <= lr <= 1e-1 for lr in lrs) and len(set(lrs)) == len(lrs)
    assert max(lrs) / min(lrs) > 10
    # ASHA stopped at least one lagging trial at a rung before the evaluation report; a finished one was better
    full = STAGES + 1
    stopped = [lr for lr, it in rows if it < full]
    finished = [lr for lr, it in rows if it == full]
    assert stopped and finished, rows
    gap = lambda lr: abs(math.log10(lr) + 3.0)  # noqa: E731
    assert min(gap(lr) for lr in finished) < max(gap(lr) for lr in stopped)
    assert "TUNE_DISABLE_STRICT_METRIC_CHECKING" in os.environ  # the sweep relaxes it the same way
