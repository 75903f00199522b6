"""Serve planner load: closed-loop p50/p99 latency and throughput per concurrency, batched vs unbatched.

Without ``--url`` the bench starts the app itself on loopback (a local Ray instance; ``--model`` or a tiny random
export built on the fly), measures it with dynamic batching on (``serve.max_batch_size``), then reconfigures the
same replicas to ``max_batch_size=1`` (a ``user_config`` change, no restart) and measures again, and prints the
throughput ratio batched/unbatched per concurrency. With ``--url`` it only measures the running app.

Closed loop: ``c`` clients each send a /v1/plan request, wait for the answer, and send the next. Bodies are
``multipart/form-data`` (``--upload json``: base64 JPEGs in JSON), encoded once. Batch settings, CPUs and torch
threads default to ``ServeConfig``. Besides latency and throughput the bench prints where a request's time goes
(the ``timings`` of the answers, mean per stage: wall ms and CPU ms), and ``proxy`` = client latency - the
ingress's ``total_ms`` (HTTP proxy, loopback and the client itself).
"""
from __future__ import annotations

import asyncio
import statistics
import tempfile
import time
from pathlib import Path


def add_args(p) -> None:
    p.add_argument("--url", default=None, help="measure a running app instead of starting one")
    p.add_argument("--model", default=None, help="export to serve (default: a tiny random export)")
    p.add_argument("--preset", default="tiny", help="model preset of the random export (default: tiny)")
    p.add_argument("--concurrency", default="1,4,8,16", help="comma-separated client counts")
    p.add_argument("--requests", type=int, default=48, help="requests per concurrency level (after warm-up)")
    p.add_argument("--port", type=int, default=8124)
    p.add_argument("--replicas", type=int, default=1)
    p.add_argument("--max-batch-size", type=int, default=None, help="default: serve.max_batch_size")
    p.add_argument("--batch-wait-ms", type=float, default=None, help="default: serve.batch_wait_timeout_s")
    p.add_argument("--max-new-tokens", type=int, default=None, help="cap generated tokens per request")
    p.add_argument("--num-cpus", type=float, default=None, help="CPUs per model replica (default: serve.num_cpus)")
    p.add_argument("--torch-threads", type=int, default=None,
                   help="torch threads per replica (0: torch default; default: serve.torch_threads)")
    p.add_argument("--num-gpus", type=float, default=0.0)
    p.add_argument("--upload", choices=["multipart", "json"], default="multipart", help="request body encoding")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="other serve.* overrides of the served app")


def synthetic_request(image_hw=(225, 400), seed: int = 0) -> dict:
    """A valid /v1/plan body with random JPEGs and a plausible calibration (load only, not a real scene)."""
    import io

    import numpy as np
    from PIL import Image

    from odvla.model.constants import CAMERAS
    from odvla.serve.client import cameras_payload

    rng = np.random.default_rng(seed)
    h, w = image_hw
    jpegs = []
    for _ in CAMERAS:
        buf = io.BytesIO()
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(buf, format="JPEG", quality=80)
        jpegs.append(buf.getvalue())
    k = [[[w / 2, 0, w / 2], [0, w / 2, h / 2], [0, 0, 1]]] * len(CAMERAS)
    yaws = np.deg2rad([0, -55, 55, 180, 110, -110])
    t = []
    for yaw in yaws:  # camera (z forward, x right, y down) looking along ego yaw
        c, s = np.cos(yaw), np.sin(yaw)
        fwd, right, down = np.array([c, s, 0.0]), np.array([s, -c, 0.0]), np.array([0.0, 0.0, -1.0])
        m = np.eye(4)
        m[:3, 0], m[:3, 1], m[:3, 2], m[:3, 3] = right, down, fwd, [1.5, 0.0, 1.6]
        t.append(m)
    return {"cameras": cameras_payload(jpegs, k, t),
            "ego_state": {"vx": 5.0, "vy": 0.0, "ax": 0.1, "ay": 0.0, "yaw_rate": 0.0, "speed": 5.0, "steering": 0.0},
            "command": "keep forward", "history": [[-10.0, 0.0], [-7.5, 0.0], [-5.0, 0.0], [-2.5, 0.0]]}


STAGES = ("http_ms", "parse_ms", "decode_ms", "queue_ms", "batch_ms", "generate_ms", "total_ms")
CPU_STAGES = ("parse_ms", "decode_ms", "batch_ms", "generate_ms")


async def _closed_loop(url: str, body: dict, concurrency: int, total: int, headers: dict,
                       upload: str = "multipart") -> dict:
    import httpx

    from odvla.serve.client import encode_body

    payload, ctype = encode_body(body, upload)  # encoded once: the clients should not be what limits the load
    headers = {**headers, "Content-Type": ctype}
    lat: list[float] = []
    batch_sizes: list[int] = []
    model_ms: list[float] = []
    stages: dict[str, list[float]] = {k: [] for k in (*STAGES, "proxy_ms")}
    cpu: dict[str, list[float]] = {k: [] for k in CPU_STAGES}
    errors: dict[int, int] = {}
    remaining = total

    async def user(client: httpx.AsyncClient):
        nonlocal remaining
        while remaining > 0:
            remaining -= 1
            t0 = time.perf_counter()
            r = await client.post("/v1/plan", content=payload)
            if r.status_code == 200:
                lat.append(time.perf_counter() - t0)
                timings = r.json()["timings"]
                batch_sizes.append(timings["batch_size"])
                model_ms.append(timings["batch_ms"] + timings["generate_ms"])
                for k in STAGES:
                    stages[k].append(timings[k])
                stages["proxy_ms"].append(lat[-1] * 1e3 - timings["total_ms"])
                for k in CPU_STAGES:
                    cpu[k].append(timings["cpu_ms"][k])
            else:
                errors[r.status_code] = errors.get(r.status_code, 0) + 1

    limits = httpx.Limits(max_connections=concurrency + 2)
    async with httpx.AsyncClient(base_url=url, timeout=300, limits=limits, headers=headers) as client:
        for _ in range(2):  # warm-up
            await client.post("/v1/plan", content=payload)
        t0 = time.perf_counter()
        await asyncio.gather(*(user(client) for _ in range(concurrency)))
        wall = time.perf_counter() - t0
    lat.sort()
    q = (lambda f: lat[min(len(lat) - 1, int(round(f * (len(lat) - 1))))] * 1e3) if lat else (lambda f: float("nan"))
    return {"concurrency": concurrency, "ok": len(lat), "errors": errors, "p50_ms": q(0.5), "p99_ms": q(0.99),
            "rps": len(lat) / wall if wall > 0 else 0.0,
            "mean_batch": statistics.fmean(batch_sizes) if batch_sizes else 0.0,
            "model_ms": statistics.median(model_ms) if model_ms else float("nan"),
            "stages": {k: statistics.fmean(v) if v else float("nan") for k, v in stages.items()},
            "cpu": {k: statistics.fmean(v) if v else float("nan") for k, v in cpu.items()}}


def measure(url: str, body: dict, levels: list[int], total: int, headers: dict,
            upload: str = "multipart") -> list[dict]:
    return [asyncio.run(_closed_loop(url, body, c, max(total, c), headers, upload)) for c in levels]


def _stage_table(rows: list[dict]) -> str:
    """Mean per stage and clients: wall ms (CPU ms where the stage computes; batch stages per whole batch)."""
    names = [k.removesuffix("_ms") for k in (*STAGES, "proxy_ms")]
    out = ["| clients | " + " | ".join(names) + " |", "|---:|" + "---:|" * len(names)]
    for r in rows:
        cells = []
        for k in (*STAGES, "proxy_ms"):
            cell = f"{r['stages'][k]:.1f}"
            if k in r["cpu"]:
                cell += f" ({r['cpu'][k]:.1f})"
            cells.append(cell)
        out.append(f"| {r['concurrency']} | " + " | ".join(cells) + " |")
    return "\n".join(out)


def _table(title: str, rows: list[dict]) -> str:
    out = [f"### {title}", "",
           "| clients | ok | errors | p50 ms | p99 ms | req/s | mean batch | p50 model ms/batch |",
           "|---:|---:|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        out.append(f"| {r['concurrency']} | {r['ok']} | {r['errors'] or '-'} | {r['p50_ms']:.1f} | {r['p99_ms']:.1f} "
                   f"| {r['rps']:.2f} | {r['mean_batch']:.2f} | {r['model_ms']:.1f} |")
    return "\n".join(out)


def _tiny_export(preset: str, out: Path) -> str:
    from odvla.model.vla import OpenDriveVLA
    from odvla.platform.config import load_config
    from odvla.platform.export import save_export

    cfg = load_config(model=preset)
    model = OpenDriveVLA(cfg.model)
    return str(save_export(model, cfg, out / f"export-{preset}"))


def run(args) -> int:
    import os

    levels = [int(x) for x in str(args.concurrency).split(",") if x.strip()]
    token = os.environ.get("ODVLA_SERVE_TOKEN")
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    body = synthetic_request()
    if args.max_new_tokens:
        body["max_new_tokens"] = args.max_new_tokens
    if args.url:
        rows = measure(args.url, body, levels, args.requests, headers, args.upload)
        print(_table(f"{args.url}", rows), "", "per stage, wall ms (CPU ms):", _stage_table(rows), sep="\n")
        return 0
    from odvla.platform.config.schema import ServeConfig

    d = ServeConfig()
    mbs_on = args.max_batch_size if args.max_batch_size is not None else d.max_batch_size
    wait_ms = args.batch_wait_ms if args.batch_wait_ms is not None else d.batch_wait_timeout_s * 1e3
    num_cpus = args.num_cpus if args.num_cpus is not None else d.num_cpus
    threads = args.torch_threads if args.torch_threads is not None else d.torch_threads

    import ray
    from ray import serve

    from odvla.platform.config import load_config
    from odvla.serve.app import AppArgs, build_app_from_config

    with tempfile.TemporaryDirectory(prefix="odvla-bench-serve-") as tmp:
        model = args.model or _tiny_export(args.preset, Path(tmp))
        if not ray.is_initialized():
            ray.init(num_cpus=max(4, int(args.replicas * num_cpus) + 1), include_dashboard=False,
                     configure_logging=False, log_to_driver=False)
        serve.start(http_options={"host": "127.0.0.1", "port": args.port})
        url = f"http://127.0.0.1:{args.port}"
        results = {}
        try:
            for label, mbs in (("batched", mbs_on), ("unbatched", 1)):
                cfg = load_config(model=None, overrides=[
                    f"serve.max_batch_size={mbs}", f"serve.batch_wait_timeout_s={wait_ms / 1e3}",
                    f"serve.num_replicas={args.replicas}", f"serve.num_cpus={num_cpus}",
                    f"serve.num_gpus={args.num_gpus}", f"serve.torch_threads={threads}",
                    "serve.max_queued_requests=1000", *args.overrides])
                serve.run(build_app_from_config(AppArgs(model=model), cfg.serve, cfg.tracking), name="odvla-bench",
                          route_prefix="/")
                from odvla.serve.client import PlannerClient

                PlannerClient(url).wait_ready(300)
                results[label] = measure(url, body, levels, args.requests, headers, args.upload)
                print(_table(f"{label} (max_batch_size={mbs}, wait {wait_ms:g} ms, {args.replicas} replica(s), "
                             f"{threads} torch thread(s), {args.upload} upload, model {Path(model).name})",
                             results[label]), "", "per stage, mean wall ms (CPU ms):", _stage_table(results[label]),
                      "", sep="\n", flush=True)
        finally:
            serve.shutdown()
    print("### batched / unbatched throughput", "", "| clients | ratio | p50 batched ms | p50 unbatched ms |",
          "|---:|---:|---:|---:|", sep="\n")
    for b, u in zip(results["batched"], results["unbatched"]):
        ratio = b["rps"] / u["rps"] if u["rps"] else float("nan")
        print(f"| {b['concurrency']} | {ratio:.2f} | {b['p50_ms']:.1f} | {u['p50_ms']:.1f} |")
    return 0
