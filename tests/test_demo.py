"""`odvla demo` end to end, as `make demo` runs it: synthetic nuScenes -> shards -> instruction data -> the four
stages on `tiny` (Ray Train + DeepSpeed on the CPU) -> evaluation. The trained planner must beat the
constant-velocity baseline clearly on the synthetic val split (UniAD L2 averaged over 1/2/3 s), every answer must
parse, and the printed table and MLflow location must be there."""
from __future__ import annotations

import math
import re

import pytest

CLEAR_MARGIN = 0.85
"""'Clearly below' constant velocity: the model's L2 at most 85 % of the baseline's."""


@pytest.mark.integration
@pytest.mark.slow
def test_demo_planner_beats_constant_velocity(ray_session, mlflow_sqlite, tmp_path, capsys):
    from mlflow.tracking import MlflowClient

    from odvla.platform.config import stage_names
    from odvla.platform.demo import demo_steps, run_demo

    res = run_demo(tmp_path / "demo", overrides=[
        f"tracking.tracking_uri={mlflow_sqlite}", "tracking.experiment=test-demo",
        "tracking.registered_model=odvla-planner-demo", "tracking.log_checkpoint=false"])
    printed = capsys.readouterr().out
    m = res.eval.metrics
    model, cv, mlp = m["uniad/L2_avg"], m["cv/uniad/L2_avg"], m["mlp/uniad/L2_avg"]
    assert all(math.isfinite(v) for v in (model, cv, mlp)), m
    assert m["predict/malformed"] == 0
    assert model < CLEAR_MARGIN * cv, f"demo planner L2 {model:.2f} m vs constant velocity {cv:.2f} m (MLP {mlp:.2f})"
    assert [r.metrics["global_step"] for r in res.pipeline.results] == [demo_steps(s) for s in stage_names()]
    assert "constant velocity" in printed and f"MLflow: {mlflow_sqlite}" in printed
    # quiet: Ray Data's execution dumps and the scorers' subprocess output go to the log (under pytest, Python
    # log records are caught by pytest's own log capture instead); the demo prints its progress and the log's path
    log = tmp_path / "demo" / "demo.log"
    assert "streaming_executor" not in printed and "logging_progress" not in printed
    assert "PTBTokenizer" not in printed and "PTBTokenizer" in log.read_text() and f"log: {log}" in printed
    assert re.search(r"stage3: step \d+/400 ", printed)  # progress lines read from the stage's MLflow run
    run = MlflowClient(mlflow_sqlite).get_run(res.pipeline.results[-1].run_id)
    assert run.data.metrics["eval/uniad/L2_avg"] == pytest.approx(model)
