"""Search algorithm and trial scheduler of an 'hpo' sweep (learning-rate search).

- Searcher (``sweep.searcher``): 'optuna' = Optuna's TPE through ``ray.tune.search.optuna.OptunaSearch``, judged
  on the final evaluation metric (``sweep.metric``, e.g. ``uniad/L2_avg``, lower is better); 'random' = Tune's
  random sampling of the log-uniform LR range.
- Scheduler (``sweep.scheduler``): 'asha' = ``ASHAScheduler`` on the training loss reported after each stage
  (``training_iteration`` counts reports: one per stage, one for the evaluation), so a trial whose loss lags after
  its first stages stops before the expensive later stages; 'none' = run every trial to the end.

The two judge different metrics: intermediate reports have no evaluation metric yet. Tune's strict check that
every report carries every metric is therefore relaxed for 'optuna' sweeps (``TUNE_DISABLE_STRICT_METRIC_CHECKING``)
and the Optuna searcher ignores reports without its metric.
"""
from __future__ import annotations

import optuna
from ray.tune.search.optuna import OptunaSearch

from odvla.platform.config import ConfigError
from odvla.platform.config.schema import SweepConfig

LOSS_METRIC = "train_loss"


class FinalMetricOptunaSearch(OptunaSearch):
    """OptunaSearch that learns only from reports carrying its metric (the trial's final evaluation)."""

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        if self.metric in result:
            super().on_trial_result(trial_id, result)


CLOSED_LOOP_LOWER_IS_BETTER = ("collisions", "impact_speed", "offroad_time_s", "planner_errors")
"""Closed-loop figures (``closed_loop/...``, ``platform/sim/table.py``) where lower is better; the scores (PDMS and
its sub-scores, route completion, the NeuroNCAP score) are higher-is-better."""


def metric_mode(metric: str) -> str:
    """Lower is better for L2 / collision / loss and the closed loop's collisions, impact speed, off-road time and
    planner errors; higher for QA scores (BLEU, METEOR, CIDEr) and the closed loop's scores (``closed_loop/pdms``,
    ``closed_loop/ncap_score``, ``closed_loop/route_completion``, ...)."""
    m = metric.lower()
    if m.startswith("closed_loop/"):
        return "min" if any(k in m for k in CLOSED_LOOP_LOWER_IS_BETTER) else "max"
    return "max" if any(k in m for k in ("bleu", "meteor", "cider")) else "min"


def build_search(sw: SweepConfig, num_stages: int, seed: int = 0):
    """(search_alg or None, scheduler or None, needs_relaxed_metric_check) for the ``sweep`` section ``sw``; ``seed``
    seeds the TPE sampler (``train.seed``)."""
    if sw.mode != "hpo":
        return None, None, False
    if sw.searcher == "optuna":
        mode = metric_mode(sw.metric)
        search = FinalMetricOptunaSearch(metric=sw.metric, mode=mode,
                                         sampler=optuna.samplers.TPESampler(seed=seed))
        relaxed = True
    elif sw.searcher == "random":
        search, relaxed = None, False
    else:
        raise ConfigError(f"sweep.searcher: unknown search algorithm {sw.searcher!r} (known: optuna, random)")
    if sw.scheduler == "asha":
        from ray.tune.schedulers import ASHAScheduler

        # Rungs at 1, 2, 4 ... reports; max_t = every stage + the evaluation report.
        scheduler = ASHAScheduler(time_attr="training_iteration", metric=LOSS_METRIC, mode="min",
                                  max_t=num_stages + 1, grace_period=1, reduction_factor=2)
    elif sw.scheduler == "none":
        scheduler = None
    else:
        raise ConfigError(f"sweep.scheduler: unknown scheduler {sw.scheduler!r} (known: asha, none)")
    return search, scheduler, relaxed
