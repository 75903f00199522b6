"""Decoded rows kept across epochs (``data.cache_decoded``): when ``cache_plan`` keeps them, and that a stage trained
from the kept rows consumes exactly the sample sequence of one that decodes every epoch again."""
from __future__ import annotations

import pytest

from odvla.platform.config import load_config
from odvla.platform.train.stage_data import cache_plan, decoded_row_bytes


def _data(**kw):
    cfg = load_config(model="tiny", overrides=[f"data.{k}={v}" for k, v in kw.items()])
    return cfg.data, cfg.model.vision


def test_row_bytes_count_every_keyframe_of_a_clip():
    data, vision = _data()
    one = decoded_row_bytes(data, vision)
    assert one >= 6 * vision.image_height * vision.image_width * 3  # six uint8 images at network size
    data2, _ = _data(clip_len=3)
    assert decoded_row_bytes(data2, vision) == 3 * one


def test_auto_keeps_rows_only_for_several_epochs_on_one_node_within_the_cap():
    data, vision = _data()
    several = cache_plan(data, vision, num_rows=160, rows_per_step=8, total_steps=200, nodes=1)
    assert several.cache and several.epochs == pytest.approx(10.0) and "10.0 epochs" in several.reason
    once = cache_plan(data, vision, num_rows=160, rows_per_step=4, total_steps=10, nodes=1)
    assert not once.cache and "one epoch or less" in once.reason
    two_nodes = cache_plan(data, vision, num_rows=160, rows_per_step=8, total_steps=200, nodes=2)
    assert not two_nodes.cache and "2 nodes" in two_nodes.reason
    small_cap, _ = _data(cache_decoded_max_mb=1)
    big = cache_plan(small_cap, vision, num_rows=160, rows_per_step=8, total_steps=200, nodes=1)
    assert not big.cache and "cache_decoded_max_mb=1" in big.reason and big.mb > 1


def test_always_and_never_override_auto_but_not_the_cap():
    on, vision = _data(cache_decoded="always")
    assert cache_plan(on, vision, 160, 4, 10, nodes=3).cache  # one epoch, three nodes: kept as asked
    on_small, _ = _data(cache_decoded="always", cache_decoded_max_mb=0.5)
    assert not cache_plan(on_small, vision, 160, 4, 10, nodes=1).cache
    off, _ = _data(cache_decoded="never")
    plan = cache_plan(off, vision, 160, 8, 200, nodes=1)
    assert not plan.cache and plan.reason == "data.cache_decoded=never"


def test_an_unknown_mode_names_the_setting():
    bad, vision = _data(cache_decoded="sometimes")
    with pytest.raises(ValueError, match=r"data.cache_decoded='sometimes'.*auto, always, never"):
        cache_plan(bad, vision, 160, 8, 200, nodes=1)


STEPS, BATCH = 5, 16
"""5 steps of 16 single keyframes: 80 rows over the fixture's 60 train keyframes, so the run crosses an epoch."""


def _stage(shards_dir, storage, name, uri, mode):
    return load_config(model="tiny", stage="stage3", overrides=[
        f"data.shards={shards_dir}", f"data.cache_decoded={mode}", "train.num_workers=1", "train.cpus_per_worker=1",
        f"train.max_steps={STEPS}", f"data.batch_size={BATCH}", "train.checkpoint_every=0",
        f"train.storage_path={storage}", f"train.run_name={name}", f"tracking.tracking_uri={uri}",
        "tracking.experiment=test-cache-decoded", "tracking.log_system_metrics=false",
        "tracking.log_checkpoint=false"])


@pytest.mark.integration
def test_kept_rows_train_the_same_sequence_across_the_epoch_boundary(ray_session, shards_dir, mlflow_sqlite,
                                                                     tmp_path):
    import mlflow

    from odvla.platform.train import run_stage
    from odvla.platform.train.sample_log import LOG_DIR, read_sample_log

    storage = tmp_path / "runs"
    logs, runs = {}, {}
    for mode in ("never", "auto"):
        res = run_stage(_stage(shards_dir, storage, mode, mlflow_sqlite, mode), register=False)
        assert res.metrics["global_step"] == STEPS
        logs[mode] = read_sample_log(str(storage / mode / LOG_DIR))
        runs[mode] = mlflow.MlflowClient(mlflow_sqlite).get_run(res.run_id)
    assert runs["never"].data.params["data.cached_decoded"] == "False"
    assert runs["auto"].data.params["data.cached_decoded"] == "True"  # 80 rows over 60: more than one epoch
    seq = {m: [t for s in sorted(log) for t in log[s]["ranks"][0]] for m, log in logs.items()}
    assert len(seq["never"]) > 60 and seq["auto"] == seq["never"]  # step for step, the same keyframes in order
    # the first epoch visits every train keyframe once, the second starts over
    assert len(set(seq["never"][:60])) == 60 and set(seq["never"][60:]) <= set(seq["never"][:60])


@pytest.mark.integration
def test_a_bad_image_met_while_keeping_rows_fails_the_run_and_names_it(ray_session, synth_root, shards_dir,
                                                                       mlflow_sqlite, tmp_path):
    """Kept rows are decoded on the driver before training: a JPEG that does not decode fails the stage there, with
    the sample token and file in the error, and the stage's MLflow run ends FAILED, as a failure in training does."""
    import mlflow

    from odvla.platform.data.shards import read_split
    from odvla.platform.train import run_stage
    from test_data_errors import _light_copy

    root = _light_copy(synth_root, tmp_path / "root")
    row = read_split(shards_dir, "train").slice(0, 1).to_pylist()[0]
    img = root / row["cam_paths"][2]
    img.unlink()
    img.write_bytes(b"\xff\xd8" + bytes(range(256)) * 4 + b"\xff\xd9")  # markers intact, data not a JPEG
    cfg = _stage(shards_dir, tmp_path / "runs", "bad-image", mlflow_sqlite, "auto")
    cfg.data.dataroot = str(root)
    with pytest.raises(Exception, match=row["sample_token"]) as e:
        run_stage(cfg, register=False)
    assert str(img) in str(e.value)
    client = mlflow.MlflowClient(mlflow_sqlite)
    exp = client.get_experiment_by_name("test-cache-decoded")
    runs = client.search_runs([exp.experiment_id], "attributes.run_name = 'bad-image'")
    assert [r.info.status for r in runs] == ["FAILED"]
