"""``odvla serve`` (start the planner app) and ``odvla plan`` (send one prepared sample, print the plan).

Registered through the ``odvla.commands`` entry points of pyproject.toml (``platform`` does not import ``serve``).
"""
from __future__ import annotations

import json
import sys

import httpx


def register(sub) -> None:
    from odvla.platform.config.args import add_config_args

    p = sub.add_parser("serve", help="start the Ray Serve planner (HTTP API v1) on 127.0.0.1")
    add_config_args(p, model=None)
    p.set_defaults(model=None)
    # --model here names what to serve (an export), not a size preset: the export carries its model config.
    for action in p._actions:
        if action.dest == "model":
            action.help = "export folder, runs:/<run_id>/export or models:/odvla-planner/<version|alias>"
            action.metavar = "REF"
    p.add_argument("--host", default=None, help="bind address (default serve.host = 127.0.0.1)")
    p.add_argument("--port", type=int, default=None, help="HTTP port (default serve.port = 8000)")
    p.add_argument("--address", default=None, help="Ray cluster address (default: RAY_ADDRESS or a local instance)")
    p.add_argument("--name", default="odvla", help="Serve application name")
    p.add_argument("--no-block", action="store_true", help="deploy and return (the app keeps running on the cluster)")
    p.set_defaults(func=run_serve)


def register_plan(sub) -> None:
    p = sub.add_parser("plan", help="send a prepared sample to the planner and print the plan")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--image-dir", help="folder with <CAMERA>.jpg per camera and sample.json")
    src.add_argument("--shards", help="Parquet shards folder (with --sample TOKEN)")
    p.add_argument("--sample", help="sample token in --shards")
    p.add_argument("--dataroot", help="dataroot of --shards (default: from its manifest.json)")
    p.add_argument("--url", default="http://127.0.0.1:8000")
    p.add_argument("--command", dest="drive_command", choices=["turn right", "turn left", "keep forward"],
                   help="override the sample's command")
    p.add_argument("--question", help="ask a scene question (/v1/chat) instead of planning")
    p.add_argument("--session", help="session id (keeps tracking state across frames of a scene)")
    p.add_argument("--save-dir", help="also write the sample as an --image-dir folder")
    p.add_argument("--json", action="store_true", help="print the whole JSON answer")
    p.add_argument("--upload", choices=["multipart", "json"], default="multipart",
                   help="multipart/form-data with JPEG parts (default) or JSON with base64 images")
    p.set_defaults(func=run_plan)


def run_serve(args) -> int:
    import ray
    from ray import serve

    from odvla.platform.config import load_config
    from odvla.serve.app import AppArgs, build_app_from_config

    cfg = load_config(model=None, files=args.config, overrides=args.overrides)
    s = cfg.serve
    host = args.host or s.host
    port = args.port or s.port
    ref = args.model or s.model
    if not ref:
        raise ValueError("no model to serve: pass --model REF (export folder or models:/odvla-planner/<version>)")
    if not ray.is_initialized():
        ray.init(address=args.address, include_dashboard=False, configure_logging=False)
    serve.start(http_options={"host": host, "port": port, "request_timeout_s": s.request_timeout_s + 5})
    app = build_app_from_config(AppArgs(model=ref), cfg.serve, cfg.tracking)
    serve.run(app, name=args.name, route_prefix="/", blocking=False)
    print(f"OpenDriveVLA planner serving {ref} at http://{host}:{port}  (docs: http://{host}:{port}/docs)",
          flush=True)
    if args.no_block:
        return 0
    try:
        import time

        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        serve.delete(args.name)
    return 0


def run_plan(args) -> int:
    from odvla.serve.client import (
        PlannerClient,
        PlannerError,
        request_from_image_dir,
        request_from_shards,
        write_image_dir,
    )

    if args.shards:
        if not args.sample:
            raise ValueError("--shards needs --sample TOKEN")
        req = request_from_shards(args.shards, args.sample, args.dataroot)
    else:
        req = request_from_image_dir(args.image_dir)
    if args.save_dir:
        write_image_dir(req, args.save_dir)
    if args.drive_command:
        req["command"] = args.drive_command
    if args.session:
        req["session_id"] = args.session
    try:
        with PlannerClient(args.url, upload=args.upload) as client:
            if args.question:
                req.pop("question", None)
                out = client.chat(**{**req, "question": args.question})
            else:
                out = client.plan(**req)
    except PlannerError as e:
        print(f"odvla plan: the planner at {args.url} refused the request: {e}", file=sys.stderr)
        return 1
    except httpx.HTTPError as e:
        print(f"odvla plan: cannot reach the planner at {args.url}: {e}", file=sys.stderr)
        return 1
    if args.json:
        json.dump(out, sys.stdout, indent=1)
        print()
        return 0
    m = out["model"]
    print(f"model {m['ref']} (version {m['version'] or '-'}, {m['preset']}, weights {m['checksum']})")
    if "waypoints" in out:
        print(f"command: {req['command']}")
        if out["waypoints"] is None:
            print("waypoints: (answer did not parse)")
        else:
            print("waypoints (ego frame, x forward / y left, metres):")
            for i, (x, y) in enumerate(out["waypoints"]):
                print(f"  t+{0.5 * (i + 1):.1f}s  x={x:7.2f}  y={y:7.2f}")
    print(f"answer: {out['answer']}")
    t = out["timings"]
    print(f"timings: total {t['total_ms']:.1f} ms (http {t['http_ms']:.1f}, parse {t['parse_ms']:.1f}, decode "
          f"{t['decode_ms']:.1f}, queue {t['queue_ms']:.1f}, batch {t['batch_ms']:.1f}, generate "
          f"{t['generate_ms']:.1f}; batch of {t['batch_size']})")
    for w in out.get("warnings", []):
        print(f"warning: {w}")
    return 0
