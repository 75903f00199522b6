"""``make gpu-check``: the one script for a lent CUDA machine. From a bare checkout (``make venv`` installs), it
trains the ``0.5b`` preset (Qwen2.5-0.5B dimensions, random weights, 384 x 704 images cut from 1600 x 900 JPEGs) in
bf16 with ZeRO-3 on one GPU for ``--steps`` optimiser steps through the real path (synthetic nuScenes -> Parquet
shards -> Ray Data -> Ray Train + DeepSpeed -> MLflow), serves the run's export with Ray Serve and measures
``/v1/plan`` at concurrency 1 and 8, then prints one table:

    samples/s, tokens/s (all input tokens), MFU = (6 x LLM params x tokens + attention) / the GPU's bf16 peak,
    /v1/plan p50 / p99 ms at 1 and 8 clients.

Attention FLOPs per sample: 12 x layers x hidden x L^2 (forward and backward, PaLM's convention); the vision encoder's
FLOPs are left out, so the MFU is a lower bound. Without CUDA it fails at once, saying so (exit status 2).

    python tests/gpu/gpu_check.py [--steps 30] [--peak-tflops 989] [--requests 32]
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

BF16_PEAK_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0, "L40S": 362.0, "A10": 125.0}
"""Dense bf16 peak TFLOP/s by GPU name (SXM parts; NVIDIA data sheets)."""


class NoCudaError(RuntimeError):
    """gpu-check needs a CUDA GPU."""


def require_cuda() -> str:
    """The GPU's name, or ``NoCudaError`` saying what torch sees."""
    import torch

    if not torch.cuda.is_available():
        raise NoCudaError(f"make gpu-check needs a CUDA GPU: torch {torch.__version__} (CUDA build "
                          f"{torch.version.cuda or 'none'}) sees no GPU (torch.cuda.is_available() is False). Run it "
                          f"on the lent GPU machine; on this machine use `odvla bench train` and `make test`.")
    return torch.cuda.get_device_name(0)


def peak_tflops(name: str, given: float) -> float:
    if given > 0:
        return given
    for key, tflops in BF16_PEAK_TFLOPS.items():
        if key in name:
            return tflops
    return 0.0


def _data(tmp: Path, scenes: int, keyframes: int) -> Path:
    from odvla.platform.data.prepare import prepare
    from odvla.platform.data.synth import write_synthetic

    root = write_synthetic(tmp / "nuscenes", scenes=scenes, keyframes=keyframes, seed=0, image_wh=(1600, 900))
    prepare(root, "v1.0-mini", tmp / "shards", rows_per_shard=64, num_workers=4, progress=False)
    return tmp / "shards"


def _train(tmp: Path, shards: Path, steps: int, uri: str):
    from odvla.platform.config import load_config
    from odvla.platform.train import run_stage

    cfg = load_config(model="0.5b", stage="stage3", overrides=[
        f"data.shards={shards}", "train.num_workers=1", "train.use_gpu=true", "train.bf16=true",
        "train.zero_stage=3", f"train.max_steps={steps}", "train.grad_accum=1", "data.batch_size=1",
        "train.checkpoint_every=0", f"train.storage_path={tmp / 'runs'}", "train.run_name=gpu-check",
        f"tracking.tracking_uri={uri}", "tracking.log_checkpoint=false", "stage.init_from=null"])
    t0 = time.perf_counter()
    res = run_stage(cfg, register=False)
    return cfg, res, time.perf_counter() - t0


def _medians(uri: str, run_id: str, warmup: int) -> dict:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    out = {}
    for key in ("samples_per_s", "data_wait_frac", "loss"):
        hist = sorted(client.get_metric_history(run_id, key), key=lambda m: m.step)
        vals = [m.value for m in hist if m.step > warmup] or [m.value for m in hist]
        out[key] = statistics.median(vals) if vals else float("nan")
    return out


def _sequence_length(export_dir: Path) -> tuple[int, object]:
    """Input tokens L of one planning sample (the LLM's input embeddings [1, L, H]) and the LLM config."""
    import torch

    from odvla.platform.bench.bench_model import synthetic_batch
    from odvla.platform.export import load_export

    model = load_export(str(export_dir), device="cuda")
    model = model[0] if isinstance(model, tuple) else model
    seen = {}

    def hook(_mod, args, kwargs):
        emb = kwargs.get("inputs_embeds")
        if emb is not None:
            seen["L"] = int(emb.shape[1])

    h = model.llm.register_forward_pre_hook(hook, with_kwargs=True)
    batch = {k: (v.to("cuda") if torch.is_tensor(v) else v) for k, v in synthetic_batch(model.config.vision, 1).items()}
    with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
        model(batch)
    h.remove()
    llm_cfg = model.llm.config
    n_llm = sum(p.numel() for p in model.llm.parameters())
    del model
    torch.cuda.empty_cache()
    return seen["L"], (llm_cfg, n_llm)


def _serve(export_dir: Path, requests: int, port: int) -> list[dict]:
    import ray
    from ray import serve

    from odvla.platform.config import load_config
    from odvla.serve.app import AppArgs, build_app_from_config
    from odvla.serve.bench import measure, synthetic_request
    from odvla.serve.client import PlannerClient

    serve.start(http_options={"host": "127.0.0.1", "port": port})
    url = f"http://127.0.0.1:{port}"
    try:
        cfg = load_config(model=None, overrides=["serve.num_gpus=1", "serve.num_replicas=1",
                                                  "serve.max_queued_requests=1000"])
        app = build_app_from_config(AppArgs(model=str(export_dir)), cfg.serve, cfg.tracking)
        serve.run(app, name="odvla-gpu-check", route_prefix="/")
        PlannerClient(url).wait_ready(300)
        return measure(url, synthetic_request(image_hw=(900, 1600)), [1, 8], requests, {})
    finally:
        serve.shutdown()
        del ray


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=30, help="optimiser steps of the training run (default: %(default)s)")
    p.add_argument("--warmup", type=int, default=5, help="steps left out of the medians (default: %(default)s)")
    p.add_argument("--requests", type=int, default=32, help="/v1/plan requests per concurrency (default: %(default)s)")
    p.add_argument("--peak-tflops", type=float, default=0.0, help="bf16 peak TFLOP/s (default: by GPU name)")
    p.add_argument("--scenes", type=int, default=2)
    p.add_argument("--keyframes", type=int, default=20)
    p.add_argument("--port", type=int, default=8131)
    args = p.parse_args(argv)
    try:
        gpu = require_cuda()
    except NoCudaError as e:
        print(f"gpu-check: FAILED: {e}", file=sys.stderr)
        return 2
    import ray

    t_all = time.perf_counter()
    tmp = Path(tempfile.mkdtemp(prefix="odvla-gpu-check-"))
    uri = f"sqlite:///{tmp / 'mlflow.db'}"
    ray.init(include_dashboard=False, configure_logging=False, log_to_driver=True)
    t0 = time.perf_counter()
    shards = _data(tmp, args.scenes, args.keyframes)
    t_data = time.perf_counter() - t0
    cfg, res, t_train = _train(tmp, shards, args.steps, uri)
    med = _medians(uri, res.run_id, args.warmup)
    L, (llm_cfg, n_llm) = _sequence_length(res.export_dir)
    flops_per_sample = 6 * n_llm * L + 12 * llm_cfg.num_hidden_layers * llm_cfg.hidden_size * L * L
    peak = peak_tflops(gpu, args.peak_tflops)
    sps = med["samples_per_s"]
    mfu = sps * flops_per_sample / (peak * 1e12) if peak else float("nan")
    lat = _serve(res.export_dir, args.requests, args.port)
    ray.shutdown()
    rows = [("GPU", f"{gpu} (bf16 peak {peak:g} TFLOP/s)"),
            ("train", f"0.5b stage3, ZeRO-3 bf16, 1 GPU, batch 1, {args.steps} steps (median after {args.warmup})"),
            ("samples/s", f"{sps:.2f}"), ("tokens/s", f"{sps * L:.0f} ({L} input tokens per sample)"),
            ("MFU", f"{100 * mfu:.1f} % (6 x {n_llm / 1e6:.0f} M LLM params x tokens + attention)"),
            ("data_wait_frac", f"{med['data_wait_frac']:.3f}"), ("final loss", f"{med['loss']:.3f}"),
            *[(f"/v1/plan at {r['concurrency']} client(s)", f"p50 {r['p50_ms']:.0f} ms, p99 {r['p99_ms']:.0f} ms, "
               f"{r['rps']:.2f} req/s") for r in lat],
            ("wall", f"data {t_data:.0f} s, train {t_train:.0f} s, all {time.perf_counter() - t_all:.0f} s")]
    print("\n| gpu-check | |\n|---|---|")
    for k, v in rows:
        print(f"| {k} | {v} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
