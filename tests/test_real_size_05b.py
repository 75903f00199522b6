"""Qwen2.5-0.5B's real LLM width through the whole curriculum on 2 Ray Train CPU workers, as the `0.5b` preset runs it
on GPUs: hidden 896, 14 heads / 2 KV heads, the 151,936-token Qwen2.5 vocabulary, a bf16 DeepSpeed engine, gradient
checkpointing, bf16 exports. Two things are made small so the test costs minutes on any 2-core machine:

- the visual encoder (ResNet-18 on 64 x 112 images, a coarse BEV);
- the LLM's depth: ``LLM_LAYERS`` decoder layers instead of 24. The layers are 24 copies of one block, so what the
  test proves (shapes, the real vocabulary and its head, dtypes through DeepSpeed's casts, ZeRO-2/3 partitioning and
  resume, the bf16 export and Serve) does not depend on their number; the embedding and head, 136 M of the 494 M
  parameters, stay whole.

On a CPU without bf16 instructions (``odvla.platform.machine.native_bf16``) every bf16 matmul runs ~100x slower
than float32: a step at the real vocabulary would take many minutes. There the engines train in float32
(``train.bf16=false``) and the export and the served model are still bf16 (``model.dtype``);
``tests/test_train_mixed_precision.py`` proves the bf16 engine's casts (ZeRO-3 included) at small width on every
machine.

stage1 -> stage2 -> stage2_5 run one optimiser step each with ZeRO-2, each from the previous stage's export; stage3
runs two steps with ZeRO-3 and loses its rank-0 worker process after the step-1 checkpoint, resumes from it, and exports
bf16 safetensors, which Ray Serve loads and answers one /v1/plan with a parsed six-waypoint trajectory.

Each finished stage's DeepSpeed shards are deleted once the next stage has its export, as a disk-limited user would
(the exports and the final stage's checkpoint stay). The figures (seconds per step, peak RSS per worker, export size)
are printed as ``[0.5b figure]`` lines."""
from __future__ import annotations

import os
import shutil
import signal
import time
from pathlib import Path

import pytest

from odvla.platform.config import load_config
from train_helpers import Background, PauseAfterFirstCheckpoint, committed_checkpoints, wait_for

SMALL_VISION = [
    "model.vision.backbone=resnet18", "model.vision.image_height=64", "model.vision.image_width=112",
    "model.vision.bev_resolution=3.2", "model.vision.bev_channels=32", "model.vision.fpn_channels=32",
    "model.vision.num_scene_queries=4", "model.vision.num_agent_queries=16", "model.vision.num_agent_tokens=4",
    "model.vision.num_map_queries=8", "model.vision.map_points=10", "model.vision.decoder_layers=1",
    "model.vision.decoder_heads=4"]
"""The visual encoder at toy size; the LLM keeps every dimension of the preset."""

LLM_LAYERS = 2
"""Decoder layers of the test's LLM (Qwen2.5-0.5B has 24 of the same block)."""

PORT = 8133


def _engine_bf16() -> bool:
    from odvla.platform.machine import native_bf16

    return native_bf16()


def _cfg(stage: str, zero: int, steps: int, every: int, init, shards_dir, tmp_path, uri):
    return load_config(model="0.5b", stage=stage, overrides=[
        *SMALL_VISION, f"model.llm.num_hidden_layers={LLM_LAYERS}", f"data.shards={shards_dir}",
        "data.batch_size=1", "data.shuffle_buffer=0", "train.num_workers=2", "train.use_gpu=false",
        f"train.bf16={str(_engine_bf16()).lower()}", f"train.zero_stage={zero}",
        "train.grad_accum=1", f"train.max_steps={steps}", f"train.checkpoint_every={every}", "train.max_failures=1",
        "train.lr=1e-5", "train.warmup_steps=0", f"stage.init_from={init or 'none'}",
        f"train.storage_path={tmp_path / 'runs'}", f"train.run_name=real05b-{stage}",
        f"tracking.tracking_uri={uri}", "tracking.experiment=test-real-0.5b", "tracking.log_checkpoint=false",
        "tracking.log_system_metrics=false"])


def _figure(res, seconds: float) -> str:
    m = res.metrics
    size = sum(f.stat().st_size for f in Path(res.export_dir).rglob("*") if f.is_file()) / 1e9
    return (f"[0.5b figure] {res.stage}: {seconds:.0f} s for the stage, {2 / max(m['samples_per_s'], 1e-9):.0f} s "
            f"per step of 2 samples, peak RSS per worker {m['peak_rss_gb']:.1f} GB, export {size:.2f} GB")


def _drop_shards(run_dir: Path) -> None:
    for ds in run_dir.glob("checkpoint_*/deepspeed"):
        shutil.rmtree(ds, ignore_errors=True)


@pytest.mark.integration
@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_05b_every_stage_zero2_zero3_resume_export_and_serve(ray_session, shards_dir, tmp_path, own_mlflow_store):
    import psutil

    from local_ray import ensure_local_ray

    ray_session.shutdown()  # a fresh instance: no idle worker of an earlier test holds memory (conftest runs this last)
    ensure_local_ray()
    print(f"[0.5b figure] memory available at the start: {psutil.virtual_memory().available / 2**30:.1f} GiB; "
          f"engines in {'bf16' if _engine_bf16() else 'float32 (no bf16 instructions on this CPU)'}")
    try:  # its own MLflow store (tmp_path / "mlflow"): the four ~1 GB exports it logs are removed below
        _every_stage(tmp_path, shards_dir, own_mlflow_store)
    finally:  # about 25 GB of checkpoints, exports and logged exports: not left on the disk, failed or not
        shutil.rmtree(tmp_path / "runs", ignore_errors=True)
        shutil.rmtree(tmp_path / "mlflow", ignore_errors=True)


def _every_stage(tmp_path, shards_dir, mlflow_sqlite) -> None:
    from mlflow.tracking import MlflowClient
    from safetensors import safe_open

    from odvla.platform.train import run_stage
    from odvla.platform.train.sample_log import LOG_DIR, read_sample_log

    client = MlflowClient(mlflow_sqlite)
    init, previous_run = None, None
    for stage in ("stage1", "stage2", "stage2_5"):
        t = time.time()
        res = run_stage(_cfg(stage, 2, 1, 0, init, shards_dir, tmp_path, mlflow_sqlite), register=False)
        print(_figure(res, time.time() - t))
        assert res.stage == stage and res.metrics["global_step"] == 1 and res.metrics["final"] is True
        params = client.get_run(res.run_id).data.params
        assert params["train.zero_stage"] == "2" and params["model.llm.vocab_size"] == "151936"
        assert params["model.llm.hidden_size"] == "896" and params["train.bf16"] == str(_engine_bf16())
        # the real vocabulary's 136 M embedding rows (tied head) and LLM_LAYERS blocks of 14.9 M, plus the rest
        assert int(params["params_total"]) > 136_000_000 + LLM_LAYERS * 14_900_000
        if previous_run is not None:
            _drop_shards(previous_run)
        init, previous_run = res.export_dir, tmp_path / "runs" / f"real05b-{stage}"

    # stage 3 under ZeRO-3: rank 1 dies after the step-1 checkpoint; the run resumes from it
    hook = tmp_path / "hook"
    cfg = _cfg("stage3", 3, 2, 1, init, shards_dir, tmp_path, mlflow_sqlite)
    t = time.time()
    bg = Background(lambda: run_stage(cfg, worker_hooks=[PauseAfterFirstCheckpoint(hook, wait_s=600)]))
    pid_file = wait_for(lambda: (hook / "rank0-0.pid").exists() and hook / "rank0-0.pid", 1500,
                        "the step-1 checkpoint of stage3", bg)
    pid, step = map(int, pid_file.read_text().split()[:2])
    assert step == 1
    wait_for(lambda: committed_checkpoints(tmp_path / "runs" / "real05b-stage3"), 300,
             "Ray Train to commit the checkpoint", bg)
    _drop_shards(previous_run)
    os.kill(pid, signal.SIGKILL)
    (hook / "go").touch()
    res = bg.result(1500)
    print(_figure(res, time.time() - t))
    m = res.metrics
    assert m["global_step"] == 2 and m["restarts"] == 1 and m["samples_seen"] == 2 * 2
    log = read_sample_log(str(tmp_path / "runs" / "real05b-stage3" / LOG_DIR))
    assert sorted(log) == [1, 2] and [log[s]["attempt"] for s in (1, 2)] == [0, 1]
    tokens = [t for s in (1, 2) for r in log[s]["ranks"] for t in r]
    assert len(tokens) == len(set(tokens)) == 4  # the resumed step trained new samples
    params = client.get_run(res.run_id).data.params
    total = int(params["params_total"])
    local = [int(params[f"params_local_rank{r}"]) for r in range(2)]
    assert all(n < 0.75 * total for n in local)  # ZeRO-3: no rank built the whole model

    weights = Path(res.export_dir) / "model.safetensors"
    with safe_open(str(weights), "pt") as f:
        emb = f.get_tensor("llm.model.embed_tokens.weight")
    assert str(emb.dtype) == "torch.bfloat16" and tuple(emb.shape) == (151936, 896)

    _serve_one_plan(res.export_dir)


def _serve_one_plan(export_dir) -> None:
    """The bf16 export in Ray Serve (1 replica, the CLI's app builder) answers one /v1/plan that parses."""
    import httpx
    from ray import serve

    from odvla.serve.app import AppArgs, build_app_from_config
    from odvla.serve.bench import synthetic_request

    cfg = load_config(overrides=["serve.num_replicas=1", "serve.num_cpus=1", "serve.request_timeout_s=600",
                                 "serve.max_batch_size=1"])
    app = build_app_from_config(AppArgs(model=str(export_dir)), cfg.serve, cfg.tracking)
    serve.start(http_options={"host": "127.0.0.1", "port": PORT})
    try:
        serve.run(app, name="odvla-05b", route_prefix="/")
        http = httpx.Client(base_url=f"http://127.0.0.1:{PORT}", timeout=600)
        deadline = time.monotonic() + 600
        while http.get("/readyz").status_code != 200:
            assert time.monotonic() < deadline, "the 0.5b planner never became ready"
            time.sleep(1)
        body = synthetic_request(image_hw=(90, 160))
        t = time.time()
        r = http.post("/v1/plan", json=body)
        assert r.status_code == 200, r.text
        out = r.json()
        print(f"[0.5b figure] /v1/plan on 1 CPU: {time.time() - t:.1f} s")
        # constrained decoding makes the answer parse by construction; what can fail: the waypoints are the
        # trajectory the answer text writes, decoded by the export's own codec
        import numpy as np

        from odvla.model.constants import EGO_STATE_FIELDS
        from odvla.model.traj_codec import TrajectoryCodec
        from odvla.platform.export import load_export_config

        text_cfg = load_export_config(export_dir)[1].model.text
        ego = [body["ego_state"].get(k, 0.0) for k in EGO_STATE_FIELDS]
        decoded = TrajectoryCodec(text_cfg).decode(out["answer"], ego)
        assert np.allclose(np.asarray(out["waypoints"], float), decoded, atol=1e-4), out
    finally:
        serve.shutdown()
