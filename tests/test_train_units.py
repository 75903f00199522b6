"""Unit tests of the training infrastructure that need no cluster: DeepSpeed config, stage resolution, step
planning, the consolidated export (real tiny OpenDriveVLA), and export references through a real MLflow store."""
from __future__ import annotations

import logging
import re

import pytest
import torch

from odvla.platform.config import ConfigError, load_config
from odvla.platform.train.deepspeed_config import build_ds_config, lr_factor
from odvla.platform.train.loop import _total_loss, planned_steps
from odvla.platform.train.stages import InitSource, check_stage, previous_stage, resolve_init, stage_config


def test_ds_config_batch_arithmetic_and_schedule():
    cfg = load_config(model="tiny", stage="stage3",
                      overrides=["data.batch_size=3", "train.grad_accum=2", "train.zero_stage=2", "train.bf16=true",
                                 "train.warmup_steps=0", "train.lr=5e-4", "train.grad_clip=0.5"])
    ds = build_ds_config(cfg.train, cfg.data.batch_size, world_size=4)
    assert ds["train_batch_size"] == 3 * 2 * 4
    assert ds["train_micro_batch_size_per_gpu"] == 3 and ds["gradient_accumulation_steps"] == 2
    assert ds["zero_optimization"]["stage"] == 2 and ds["bf16"]["enabled"] is True
    assert ds["optimizer"]["type"] == "AdamW" and ds["optimizer"]["params"]["lr"] == 5e-4
    assert ds["gradient_clipping"] == 0.5
    assert "scheduler" not in ds  # the client scheduler (build_scheduler) runs the schedule
    cfg.train.zero_stage = 5
    with pytest.raises(ValueError, match="zero_stage"):
        build_ds_config(cfg.train, cfg.data.batch_size, 1)


def test_schedule_trains_from_the_first_step():
    # a 2-step stage must change weights: the first optimiser step already has a non-zero learning rate
    assert lr_factor(0, total_steps=2, warmup_steps=5) == pytest.approx(0.5)
    assert lr_factor(1, total_steps=2, warmup_steps=5) == pytest.approx(1.0)
    factors = [lr_factor(s, total_steps=100, warmup_steps=5) for s in range(100)]
    assert factors[0] == pytest.approx(0.2) and factors[4] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(factors[4:], factors[5:]))  # cosine decay after warm-up
    assert factors[-1] == pytest.approx(0.1, abs=1e-3)
    assert lr_factor(0, total_steps=10, warmup_steps=0) == pytest.approx(1.0)


def test_stage_presets_and_overrides_win():
    base = load_config(model="tiny", overrides=["train.max_steps=7"])
    s1 = stage_config(base, "stage1", overrides=["train.max_steps=7"])
    assert s1.stage.name == "stage1" and s1.stage.trainable == ["projectors"] and s1.stage.init_from is None
    assert "caption_scene" in s1.stage.mixture and s1.train.max_steps == 7
    s3 = stage_config(base, "stage3", overrides=["train.lr=1e-2"])
    assert s3.stage.init_from == "auto" and s3.stage.loss_weights["det"] > 0 and s3.train.lr == 1e-2
    with pytest.raises(ConfigError, match="unknown stage"):
        stage_config(base, "stage9")
    bad = load_config(model="tiny", stage="stage3", overrides=["stage.loss_weights.depth=1.0"])
    with pytest.raises(ConfigError, match="loss_weights"):
        check_stage(bad.stage)
    assert previous_stage("stage3", ["stage1", "stage3"]) == "stage1"
    assert previous_stage("stage1", ["stage1", "stage3"]) is None


def test_init_from_resolution():
    cfg = load_config(model="tiny", stage="stage3")
    assert resolve_init(cfg.stage, None).ref is None  # auto, first stage of its pipeline: random init
    prev = InitSource("/x/export", "abc")
    assert resolve_init(cfg.stage, prev) == prev
    cfg.stage.init_from = "runs:/0123/export"
    got = resolve_init(cfg.stage, prev)
    assert got.ref == "runs:/0123/export" and got.run_id == "0123"
    cfg.stage.init_from = None
    assert resolve_init(cfg.stage, prev).ref is None


def test_planned_steps_and_loss_weights():
    cfg = load_config(model="tiny", stage="stage3", overrides=["data.batch_size=2", "train.epochs=2"])
    assert planned_steps(cfg.train, cfg.data.batch_size, num_rows=60, world_size=2) == 2 * 15
    cfg.train.grad_accum = 4
    assert planned_steps(cfg.train, cfg.data.batch_size, num_rows=60, world_size=2) == 2 * 3
    cfg.train.max_steps = 5
    assert planned_steps(cfg.train, cfg.data.batch_size, 60, 2) == 5
    cfg.train.max_steps, cfg.data.batch_size, cfg.train.grad_accum = 0, 8, 8
    with pytest.raises(ValueError, match="no optimiser step"):
        planned_steps(cfg.train, cfg.data.batch_size, num_rows=10, world_size=2)
    losses = {"lm": torch.tensor(2.0), "det": torch.tensor(4.0), "map": torch.tensor(1.0)}
    assert float(_total_loss(losses, {"lm": 1.0, "det": 0.5, "map": 0.0})) == pytest.approx(4.0)
    with pytest.raises(ValueError, match="no positive weight"):
        _total_loss(losses, {"motion": 1.0})


@pytest.fixture(scope="module")
def tiny_export(tmp_path_factory):
    from odvla.model.vla import OpenDriveVLA
    from odvla.platform.export import save_export

    cfg = load_config(model="tiny", stage="stage3")
    torch.manual_seed(1)
    model = OpenDriveVLA(cfg.model)
    out = save_export(model, cfg, tmp_path_factory.mktemp("export") / "export")
    return model, cfg, out


def test_export_roundtrip_real_model(tiny_export):
    from odvla.platform.export import load_export, load_weights

    model, cfg, out = tiny_export
    assert {p.name for p in out.iterdir()} >= {"model.safetensors", "config.yaml", "tokenizer", "export.json"}
    loaded, lcfg = load_export(out)
    assert lcfg.model == cfg.model and not loaded.training
    a, b = model.state_dict(), loaded.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert loaded.tokenizer.get_vocab() == model.tokenizer.get_vocab()
    # load_export builds without the LLM's random init (model_for_weights): the output embedding is still tied
    assert loaded.llm.lm_head.weight.data_ptr() == loaded.llm.get_input_embeddings().weight.data_ptr()
    # a fresh model differs until the export's weights are loaded into it
    from odvla.model.vla import OpenDriveVLA

    torch.manual_seed(2)
    other = OpenDriveVLA(cfg.model)
    name = next(k for k in a if a[k].is_floating_point() and a[k].numel() > 10)
    assert not torch.equal(other.state_dict()[name], a[name])
    load_weights(other, out)
    assert torch.equal(other.state_dict()[name], a[name])


def test_uninitialised_model_refuses_an_export_missing_a_weight(tiny_export, tmp_path):
    """Without a random init, a weight the export lacks would be uninitialised memory: load_weights names it."""
    from safetensors.torch import load_file, save_file

    from odvla.platform.export import WEIGHTS, load_weights, model_for_weights

    _, cfg, out = tiny_export
    state = load_file(str(out / WEIGHTS))
    gone = next(k for k in state if k.startswith("llm.model.layers.0."))
    del state[gone]
    (tmp_path / "partial").mkdir()
    save_file(state, str(tmp_path / "partial" / WEIGHTS))
    with pytest.raises(ValueError, match=re.escape(gone)):
        load_weights(model_for_weights(cfg.model), tmp_path / "partial")


def test_bad_export_reference_names_the_path(tmp_path):
    from odvla.platform.export import resolve_export

    with pytest.raises(FileNotFoundError, match="not an export folder"):
        resolve_export(tmp_path)


def test_export_references_through_mlflow_registry(tiny_export, mlflow_sqlite):
    """runs:/ and models:/ (version and alias) resolve to the same export through a real MLflow store."""
    from mlflow.tracking import MlflowClient

    from odvla.platform.tracking import ensure_experiment, get_or_create_run, register_export
    from odvla.platform.export import resolve_export

    _, _, out = tiny_export
    client = MlflowClient(mlflow_sqlite)
    exp = ensure_experiment(client, "unit-registry", mlflow_sqlite)
    run_id, resumed = get_or_create_run(client, exp, "/k/unit", "unit", {"odvla.stage": "stage3"})
    assert not resumed and get_or_create_run(client, exp, "/k/unit", "unit", {}) == (run_id, True)
    client.log_artifacts(run_id, str(out), "export")
    version = register_export(client, run_id, "odvla-planner-unit")
    for ref in (f"runs:/{run_id}/export", f"runs:/{run_id}", f"models:/odvla-planner-unit/{version}",
                "models:/odvla-planner-unit@latest-trained"):
        got = resolve_export(ref, mlflow_sqlite)
        assert (got / "model.safetensors").read_bytes() == (out / "model.safetensors").read_bytes(), ref


@pytest.mark.integration
def test_warns_when_workers_leave_no_cpu_for_data(ray_session, caplog):
    """Workers taking every CPU of the cluster would leave Ray Data no CPU: the run would wait silently. The warning
    is a log record of the trainer (the ``odvla`` command shows it on stderr)."""
    from odvla.platform.train.trainer import _warn_if_no_cpu_left_for_data

    def warnings() -> list:
        return [r.getMessage() for r in caplog.records
                if r.name == "odvla.platform.train.trainer" and r.levelno == logging.WARNING]

    total = int(ray_session.cluster_resources()["CPU"])
    t = load_config(model="tiny", overrides=["train.num_workers=1", f"train.cpus_per_worker={total}"]).train
    with caplog.at_level(logging.WARNING, logger="odvla"):
        _warn_if_no_cpu_left_for_data(t)
        assert any(f"= {total} CPUs, the cluster has {total}" in m for m in warnings()), caplog.text
        caplog.clear()
        t.cpus_per_worker = total - 1
        _warn_if_no_cpu_left_for_data(t)
        assert warnings() == []


def test_sample_log_chunks_latest_attempt_wins(tmp_path):
    from odvla.platform.train.sample_log import SampleLog, read_sample_log, repeated_steps

    root = f"file://{tmp_path}/run/sample_log"  # through pyarrow's file systems, as s3:// would be
    first = SampleLog(root, attempt=0)
    for step in (1, 2, 3):
        first.add(step, 0, [[f"a{step}"], [f"b{step}"]])
    assert first.flush().endswith("a000-00000001-00000003.jsonl") and first.flush() is None
    second = SampleLog(root, attempt=1)  # resumed from the step-2 checkpoint: step 3 trained again
    second.add(3, 0, [["a3"], ["b3"]])
    second.add(4, 0, [["a4"], ["b4"]])
    second.flush()
    log = read_sample_log(root)
    assert sorted(log) == [1, 2, 3, 4] and [log[s]["attempt"] for s in (1, 2, 3, 4)] == [0, 0, 1, 1]
    assert log[4]["ranks"] == [["a4"], ["b4"]] and repeated_steps(root) == 1
    assert SampleLog(None).flush() is None
    with pytest.raises(FileNotFoundError, match="no sample log"):
        read_sample_log(str(tmp_path / "empty"))
    (tmp_path / "run" / "sample_log" / "a009-00000001-00000001.jsonl").write_text("not json\n")
    with pytest.raises(ValueError, match="a009-00000001-00000001.jsonl line 1"):
        read_sample_log(root)


def test_capacity_wait_is_bounded_and_its_error_names_the_resources():
    from odvla.platform.train.trainer import capacity_message, controller_failure_limit, worker_resources

    assert controller_failure_limit(600, 60) == 10 and controller_failure_limit(20, 10) == 2
    assert controller_failure_limit(5, 60) == 1  # at least one wait, never Ray's unlimited by accident
    assert controller_failure_limit(-1, 60) == -1  # explicit opt-in to wait forever
    cfg = load_config(model="tiny", overrides=["train.num_workers=2", "train.worker_resources.spot_node=1",
                                               "train.capacity_timeout_s=20"])
    assert worker_resources(cfg.train) == {"CPU": 1, "spot_node": 1.0}
    msg = capacity_message("stage3", cfg.train, 20, {"CPU": 2.0, "spot_node": 0.0}, {"CPU": 3.0, "spot_node": 1.0}, 2)
    assert "'spot_node': '2 wanted, 1 in the cluster (0 free)'" in msg and "CPU" not in msg.split("missing:")[1]
    assert "train.capacity_timeout_s=20" in msg and "train.num_workers" in msg and "2 node(s) alive" in msg


def test_runs_never_land_in_rays_working_dir_copy(tmp_path, monkeypatch):
    from odvla.platform.durable_paths import EphemeralPathError, resolve_storage_path
    from odvla.platform.tracking.store import resolve_tracking_uri

    job_copy = tmp_path / "ray" / "session_x" / "runtime_resources" / "working_dir_files" / "_ray_pkg_abc"
    job_copy.mkdir(parents=True)
    home = tmp_path / "home"
    monkeypatch.setenv("ODVLA_HOME", str(home))
    monkeypatch.delenv("ODVLA_STORAGE_PATH", raising=False)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)  # a normal folder: relative paths stay where the user is
    assert resolve_storage_path("runs") == str(tmp_path / "runs")
    monkeypatch.chdir(job_copy)  # a `ray job submit --working-dir .` driver
    assert resolve_storage_path("runs") == str(home / "runs")
    assert resolve_tracking_uri(None) == f"sqlite:///{home / 'mlruns' / 'mlflow.db'}"
    with pytest.raises(EphemeralPathError, match="train.storage_path=.*_ray_pkg_abc.*shared storage"):
        resolve_storage_path(str(job_copy / "runs"))
    with pytest.raises(EphemeralPathError, match="tracking.tracking_uri"):
        resolve_tracking_uri(f"sqlite:///{job_copy / 'mlflow.db'}")
    assert resolve_storage_path("s3://bucket/runs") == "s3://bucket/runs"
    monkeypatch.setenv("ODVLA_STORAGE_PATH", "/mnt/shared/odvla/runs")  # the cluster config's shared storage
    assert resolve_storage_path("runs") == "/mnt/shared/odvla/runs"
    assert resolve_storage_path("/data/runs") == "/data/runs"  # an explicit path wins


def test_controller_poll_interval_reaches_the_controllers_environment(monkeypatch):
    """``train.health_check_interval_s`` is what Ray hands the Train controller it starts (Ray copies the driver's
    RAY_TRAIN_* variables into the controller's runtime env), only while the run starts; an operator's variable wins."""
    from ray.train.v2._internal.constants import get_env_vars_to_propagate

    from odvla.platform.train.trainer import HEALTH_CHECK_ENV, controller_poll_interval, poll_interval_s

    monkeypatch.delenv(HEALTH_CHECK_ENV, raising=False)
    cfg = load_config(model="tiny", stage="stage1", overrides=["train.health_check_interval_s=0.25"])
    with controller_poll_interval(poll_interval_s(cfg.train)) as used:
        assert used == "0.25"
        assert get_env_vars_to_propagate().get(HEALTH_CHECK_ENV) == "0.25"
    assert HEALTH_CHECK_ENV not in get_env_vars_to_propagate()  # restored: the next run reads its own config

    monkeypatch.setenv(HEALTH_CHECK_ENV, "3")
    with controller_poll_interval(poll_interval_s(cfg.train)) as used:
        assert used == "3" and get_env_vars_to_propagate()[HEALTH_CHECK_ENV] == "3"
    assert get_env_vars_to_propagate()[HEALTH_CHECK_ENV] == "3"


@pytest.mark.parametrize("bad", ["0", "-1", "soon"])
def test_a_bad_controller_poll_interval_names_the_setting(bad):
    from odvla.platform.train.trainer import poll_interval_s

    cfg = load_config(model="tiny", stage="stage1")
    cfg.train.health_check_interval_s = bad if bad == "soon" else float(bad)
    with pytest.raises(ValueError, match=r"train\.health_check_interval_s=.*> 0"):
        poll_interval_s(cfg.train)
