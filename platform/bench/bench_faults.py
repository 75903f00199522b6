"""Fault recovery: time to recover, steps repeated and requests failed for each fault, on a multi-node Ray cluster.

    odvla bench faults [--faults worker,node,serve] [--steps 4] [--every 2] [--replace-after 5] [--set ...]

Each fault runs at tiny scale on its own one-machine cluster (``fault_injection.local_multinode_cluster``: a head
plus two worker nodes with one ``odvla_train_node`` each, checkpoints on a folder they all see):

- ``worker``: a 2-worker stage (one worker per node); rank 0's process is SIGKILLed after the first checkpoint.
- ``node``: the same stage; rank 0's whole node is killed (raylet and processes) and a replacement node joins
  ``--replace-after`` s later.
- ``serve`` (and any fault another package adds in the ``odvla.faults`` entry-point group, since the platform does
  not import ``serve``): two Planner replicas on two nodes under client load; one node is killed and replaced.

"time to recover" is from the kill to the first training step after it (MLflow's timestamp of that step) or, for
serving, to the first answer sent after the kill; "steps repeated" comes from the run's sample log (steps trained
by more than one attempt). Prints one table; a bench asserts nothing.
"""
from __future__ import annotations

import math
import tempfile
import time
from dataclasses import dataclass
from importlib.metadata import entry_points
from pathlib import Path

TRAIN_FAULTS = ("worker", "node")
ENTRY_POINT_GROUP = "odvla.faults"
"""Entry points ``name = "module:function"``; ``function(args, tmp: Path) -> FaultFigure``."""


@dataclass
class FaultFigure:
    fault: str
    """What was done, e.g. 'train node loss (replacement after 5 s)'."""
    recover_s: float
    """Seconds from the fault to the first step trained (or answer sent) after it; NaN if it never recovered."""
    steps_repeated: int | None = None
    """Optimiser steps trained twice (training faults); None where it does not apply."""
    requests_failed: int | None = None
    requests_sent: int | None = None
    """Requests answered with anything but 200 / sent (serving faults); None where it does not apply."""
    note: str = ""


COLUMNS = ("fault", "time to recover (s)", "steps repeated", "requests failed / sent", "note")


def table_rows(figures: list[FaultFigure]) -> list[tuple[str, ...]]:
    """One row of strings per figure, in ``COLUMNS`` order ('-' where a column does not apply)."""
    rows = []
    for f in figures:
        recover = "did not recover" if f.recover_s is None or math.isnan(f.recover_s) else f"{f.recover_s:.1f}"
        steps = "-" if f.steps_repeated is None else str(f.steps_repeated)
        req = "-" if f.requests_sent is None else f"{f.requests_failed} / {f.requests_sent}"
        rows.append((f.fault, recover, steps, req, f.note))
    return rows


def fault_table(figures: list[FaultFigure], title: str = "odvla bench faults"):
    """The figures as a ``rich.table.Table``."""
    from rich.table import Table

    table = Table(title=title)
    for i, c in enumerate(COLUMNS):
        table.add_column(c, justify="right" if 0 < i < len(COLUMNS) - 1 else "left")
    for row in table_rows(figures):
        table.add_row(*row)
    return table


def add_args(p) -> None:
    p.add_argument("--faults", default="worker,node,serve",
                   help="comma-separated faults to run: worker, node, serve (default: %(default)s)")
    p.add_argument("--steps", type=int, default=4, help="optimiser steps of each training run (default: %(default)s)")
    p.add_argument("--every", type=int, default=2, help="steps between checkpoints; the fault comes after the "
                   "first (default: %(default)s)")
    p.add_argument("--replace-after", type=float, default=5.0,
                   help="seconds before a replacement node joins (default: %(default)s)")
    p.add_argument("--shards", default=None, help="prepared shards (default: a small synthetic set)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", dest="overrides")


def _shards(args, out: Path) -> str:
    if args.shards:
        return args.shards
    if (out / "shards").exists():  # written for an earlier fault of this run
        return str(out / "shards")
    from odvla.platform.data.prepare import prepare
    from odvla.platform.data.synth import write_synthetic

    root = write_synthetic(out / "nuscenes", scenes=3, keyframes=16, seed=0, image_wh=(320, 180))
    prepare(root, "v1.0-mini", out / "shards", rows_per_shard=64, num_workers=0, progress=False)
    return str(out / "shards")


def _wait(predicate, timeout: float, what: str, runner=None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        if runner is not None and not runner.is_alive():
            raise RuntimeError(f"the run ended before {what}")
        time.sleep(0.2)
    raise TimeoutError(f"timed out after {timeout} s waiting for {what}")


def train_fault(kind: str, args, tmp: Path) -> FaultFigure:
    """Run a 2-worker tiny stage on a 3-node cluster and inflict ``kind`` ('worker' or 'node') after its first
    checkpoint; returns the figure read back from MLflow and the run's sample log."""
    import json
    import os
    import signal
    import threading

    from mlflow.tracking import MlflowClient

    from odvla.platform.bench.fault_injection import (TRAIN_NODE, PauseAfterFirstCheckpoint, add_train_node,
                                                      kill_node, local_multinode_cluster, node_by_id)
    from odvla.platform.config import load_config
    from odvla.platform.train import run_stage
    from odvla.platform.train.sample_log import LOG_DIR, repeated_steps

    shards = _shards(args, tmp)
    run_name, storage, hook = f"fault-{kind}", tmp / "shared" / "runs", tmp / f"hook-{kind}"
    uri = f"sqlite:///{tmp / 'mlflow.db'}"
    cfg = load_config(model="tiny", stage="stage3", overrides=[
        f"data.shards={shards}", "train.num_workers=2", f"train.max_steps={args.steps}",
        f"train.checkpoint_every={args.every}", "data.batch_size=2", f"train.storage_path={storage}",
        f"train.run_name={run_name}", f"tracking.tracking_uri={uri}", "tracking.experiment=bench-faults",
        f"train.worker_resources.{TRAIN_NODE}=1", "train.max_failures=2", "train.zero_stage=1",
        "train.capacity_timeout_s=300", "tracking.log_system_metrics=false", "tracking.log_checkpoint=false",
        *args.overrides])
    out: dict = {}

    def target():
        try:
            out["result"] = run_stage(cfg, register=False, worker_hooks=[PauseAfterFirstCheckpoint(hook)])
        except BaseException as e:  # noqa: BLE001 - reported below
            out["error"] = e

    with local_multinode_cluster(workers=2) as (cluster, nodes):
        runner = threading.Thread(target=target, daemon=True)
        runner.start()
        pid_file = hook / "rank0-0.pid"
        _wait(pid_file.exists, 900, "the first checkpoint", runner)
        pid, step, node_id = pid_file.read_text().split()

        def committed():
            snap = storage / run_name / "checkpoint_manager_snapshot.json"
            try:
                return snap.exists() and json.loads(snap.read_text()).get("checkpoint_results")
            except json.JSONDecodeError:
                return False

        _wait(committed, 120, "Ray Train to commit the checkpoint", runner)
        killed_wall = time.time()
        if kind == "worker":
            os.kill(int(pid), signal.SIGKILL)
            (hook / "go").touch()
            note = f"rank-0 process killed at step {step}"
        else:
            kill_node(cluster, node_by_id(nodes, node_id))
            (hook / "go").touch()
            time.sleep(args.replace_after)
            add_train_node(cluster)
            note = f"node of rank 0 killed at step {step}, replacement after {args.replace_after:g} s"
        runner.join(900)
    if "error" in out or "result" not in out:
        return FaultFigure(f"train {kind} loss", math.nan, None, note=f"run failed: {out.get('error')!r:.200}")
    res = out["result"]
    history = {h.step: h.timestamp for h in MlflowClient(uri).get_metric_history(res.run_id, "loss")}
    after = [ts for s, ts in history.items() if s > int(step)]
    recover = min(after) / 1000.0 - killed_wall if after else math.nan
    repeated = repeated_steps(str(storage / run_name / LOG_DIR))
    return FaultFigure(f"train {kind} loss", recover, repeated,
                       note=f"{note}; restarts {res.metrics.get('restarts')}")


def run(args) -> int:
    import ray
    from rich.console import Console

    faults = [f.strip() for f in args.faults.split(",") if f.strip()]
    extra = {ep.name: ep for ep in entry_points(group=ENTRY_POINT_GROUP)}
    unknown = [f for f in faults if f not in TRAIN_FAULTS and f not in extra]
    if unknown:
        raise ValueError(f"--faults: unknown fault(s) {unknown} (known: "
                         f"{', '.join([*TRAIN_FAULTS, *sorted(extra)])})")
    if ray.is_initialized():
        raise RuntimeError("odvla bench faults starts its own multi-node clusters: run it without a Ray instance "
                         "(ray.shutdown() first)")
    tmp = Path(tempfile.mkdtemp(prefix="odvla-bench-faults-"))
    figures = []
    for f in faults:
        print(f"[odvla bench faults] {f} ...", flush=True)
        t0 = time.monotonic()
        fig = train_fault(f, args, tmp) if f in TRAIN_FAULTS else extra[f].load()(args, tmp)
        print(f"[odvla bench faults] {f}: done in {time.monotonic() - t0:.0f} s", flush=True)
        figures.append(fig)
    Console(width=160).print(fault_table(figures))
    return 0
