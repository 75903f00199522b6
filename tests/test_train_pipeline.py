"""Two stages as a pipeline (stage1 -> stage3, the paper's '+alignment' ablation) on the tiny model, then the
evaluation: stage3 starts from stage1's export (lineage tags, nested MLflow runs), its export is registered as the
planner, is evaluated from the registry, and after training on the synthetic train split it beats the untrained
model on the val split's L2 (learning happens). Beating constant velocity takes the demo's 200 stage3 steps of 8 clips on
more data: tests/test_demo.py checks that."""
from __future__ import annotations

import math

import pytest
import torch

from odvla.platform.config import load_config

STAGE3_STEPS = 40  # lr 2e-3, batch 4: the answer-token loss falls ~3x by then (measured)


@pytest.mark.integration
def test_pipeline_lineage_and_learning(ray_session, shards_dir, mlflow_sqlite, tmp_path):
    from mlflow.tracking import MlflowClient

    from odvla.model.vla import OpenDriveVLA
    from odvla.platform.eval.evaluate import run_eval
    from odvla.platform.export import save_export
    from odvla.platform.train import run_pipeline

    base = load_config(model="tiny", overrides=[
        f"data.shards={shards_dir}", f"train.storage_path={tmp_path / 'runs'}", "train.run_name=pipe",
        f"tracking.tracking_uri={mlflow_sqlite}", "tracking.experiment=test-pipeline",
        "tracking.registered_model=odvla-planner-pipe", "tracking.log_checkpoint=false"])
    common = ["train.num_workers=1", "train.checkpoint_every=0", "data.batch_size=4", "train.warmup_steps=5"]
    out = run_pipeline(base, stages=["stage1", "stage3"], overrides=common,
                       stage_overrides={"stage1": ["train.max_steps=2"],
                                        "stage3": [f"train.max_steps={STAGE3_STEPS}", "train.lr=2e-3"]})
    s1, s3 = out.results
    assert s1.metrics["global_step"] == 2 and s3.metrics["global_step"] == STAGE3_STEPS

    client = MlflowClient(mlflow_sqlite)
    r1, r3, parent = (client.get_run(i) for i in (s1.run_id, s3.run_id, out.parent_run_id))
    assert parent.data.tags["odvla.pipeline"] == "true"
    assert r1.data.tags["mlflow.parentRunId"] == r3.data.tags["mlflow.parentRunId"] == out.parent_run_id
    assert r1.data.tags["odvla.stage"] == "stage1" and r1.data.tags["odvla.init_from"] == ""
    assert r3.data.tags["odvla.init_from_run"] == s1.run_id  # stage3 started from stage1's export
    assert r3.data.tags["odvla.init_from"] == str(s1.export_dir)
    assert r1.data.params["stage.trainable"] == "['projectors']" and r3.data.params["train.lr"] == "0.002"
    assert out.registered_version is not None
    loss = [m.value for m in sorted(client.get_metric_history(s3.run_id, "loss_lm"), key=lambda m: m.step)]
    assert len(loss) == STAGE3_STEPS and sum(loss[-5:]) < 0.6 * sum(loss[:5])

    trained = run_eval(base, f"models:/odvla-planner-pipe/{out.registered_version}", out_dir=tmp_path / "eval")
    cfg3 = load_config(model="tiny", stage="stage3")
    torch.manual_seed(0)
    untrained_dir = save_export(OpenDriveVLA(cfg3.model), cfg3, tmp_path / "untrained")
    untrained = run_eval(base, str(untrained_dir), out_dir=tmp_path / "eval-untrained")
    l2, l2_untrained, l2_cv = (trained.metrics["uniad/L2_avg"], untrained.metrics["uniad/L2_avg"],
                               trained.metrics["cv/uniad/L2_avg"])
    assert all(math.isfinite(v) for v in (l2, l2_untrained, l2_cv)), trained.metrics
    assert trained.metrics["predict/malformed"] == 0
    assert l2 < l2_untrained, (l2, l2_untrained, l2_cv)
