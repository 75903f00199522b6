"""Serving under node loss, for ``odvla bench faults --faults serve`` (entry point ``odvla.faults: serve``).

A head (Serve controller, HTTP proxy, ingress) plus two CPU-less worker nodes, each running one ``Planner`` replica
(``serve.replica_resources``); ``CLIENTS`` threads keep posting ``/v1/plan`` while one replica's node is killed (raylet
and processes, no notice) and a replacement node joins ``--replace-after`` s later. Figure: requests failed (not
200) / sent, and the time from the kill to the first answer sent after it.
"""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from pathlib import Path

CLIENTS = 3
PORT = 8141
APP = "odvla-bench-faults"
AFTER_RECOVERY = 12
"""Answers counted once the replacement replica runs, before the load stops."""


class Load:
    """``clients`` threads posting the same /v1/plan body in a loop; every outcome is recorded as
    (sent monotonic s, done monotonic s, status or exception name, Retry-After, message)."""

    def __init__(self, base_url: str, body: dict, clients: int = CLIENTS, timeout_s: float = 90.0):
        self.base_url, self.body, self.timeout_s = base_url, body, timeout_s
        self.results: list = []
        self.stop = threading.Event()
        self._lock = threading.Lock()
        self.threads = [threading.Thread(target=self._loop, daemon=True) for _ in range(clients)]
        for t in self.threads:
            t.start()

    def _loop(self):
        import httpx

        with httpx.Client(base_url=self.base_url, timeout=self.timeout_s) as client:
            while not self.stop.is_set():
                t0 = time.monotonic()
                try:
                    r = client.post("/v1/plan", json=self.body)
                    rec = (t0, time.monotonic(), r.status_code, r.headers.get("retry-after"),
                           r.text[:300] if r.status_code != 200 else "")
                except httpx.HTTPError as e:  # a hang ends here as a ReadTimeout
                    rec = (t0, time.monotonic(), type(e).__name__, None, str(e)[:300])
                with self._lock:
                    self.results.append(rec)

    def count(self, since: float = 0.0, status=200) -> int:
        with self._lock:
            return sum(1 for r in self.results if r[0] >= since and r[2] == status)

    def finish(self, timeout_s: float = 120.0) -> list:
        """Stop the clients; returns every outcome. RuntimeError if a request never returned."""
        self.stop.set()
        for t in self.threads:
            t.join(timeout_s)
        if any(t.is_alive() for t in self.threads):
            raise RuntimeError("a client request never returned")
        return list(self.results)


def planner_nodes() -> dict[str, str]:
    """node id -> name of the live Planner replica actor on it (the GCS actor table: no dashboard needed)."""
    import ray

    return {a["Address"]["NodeID"]: a["Name"] for a in ray._private.state.actors().values()
            if a["State"] == "ALIVE" and a["ActorClassName"].endswith(":Planner")}


def _wait(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while not (value := predicate()):
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.5)
    return value


def serve_fault_setup(tmp: Path):
    """-> (export folder, /v1/plan body, root config) of the serve node-loss fault: a random ``tiny`` export under
    ``tmp``, a body of 90 x 160 JPEGs asking for at most 60 new tokens, and two ``Planner`` replicas of 0 CPU that
    each hold one ``TRAIN_NODE`` resource (so one per worker node), small batches and 1 s health checks."""
    from odvla.model.vla import OpenDriveVLA
    from odvla.platform.bench.fault_injection import TRAIN_NODE
    from odvla.platform.config import load_config
    from odvla.platform.export import save_export
    from odvla.serve.bench import synthetic_request

    export = save_export(OpenDriveVLA(load_config(model="tiny").model), load_config(model="tiny"),
                         tmp / "serve-export")
    body = synthetic_request(image_hw=(90, 160))
    body["max_new_tokens"] = 60
    cfg = load_config(overrides=[
        "serve.num_replicas=2", "serve.num_cpus=0", f"serve.replica_resources.{TRAIN_NODE}=1",
        "serve.max_batch_size=4", "serve.max_ongoing_requests=4", "serve.batch_wait_timeout_s=0.01",
        "serve.request_timeout_s=60", "serve.health_check_period_s=1"])
    return export, body, cfg


@dataclass
class ServeNodeLossRun:
    """What one serve node loss left: every request's outcome (``Load`` records), the monotonic times of the kill
    and of the replacement replica running, the Planner placement before the kill (node id -> replica), and the
    worker nodes' ids."""
    results: list
    killed_at: float
    recovered_at: float
    placed: dict
    worker_nodes: list


def run_serve_node_loss(tmp: Path, cluster_context, replace_after: float = 5.0) -> ServeNodeLossRun:
    """Serve the fault's app (``serve_fault_setup``) on the cluster ``cluster_context`` yields as (cluster, worker
    nodes) (a head plus two CPU-less worker nodes: only the Planner replicas land there), put ``CLIENTS`` clients on
    it, kill the node of one replica, add a replacement node ``replace_after`` s later, and wait for its replica and
    ``AFTER_RECOVERY`` answers after it."""
    import httpx
    from ray import serve

    from odvla.platform.bench.fault_injection import add_train_node, kill_node
    from odvla.serve.app import AppArgs, build_app_from_config

    export, body, cfg = serve_fault_setup(tmp)
    url = f"http://127.0.0.1:{PORT}"
    with cluster_context as (cluster, nodes):
        serve.start(proxy_location="HeadOnly", http_options={"host": "127.0.0.1", "port": PORT})
        load = None
        try:
            serve.run(build_app_from_config(AppArgs(model=str(export)), cfg.serve, cfg.tracking), name=APP,
                      route_prefix="/")
            with httpx.Client(base_url=url, timeout=60) as c:
                _wait(lambda: c.get("/readyz").status_code == 200, 180, "the planner app to be ready")
            placed = _wait(lambda: len(planner_nodes()) == 2 and planner_nodes(), 60, "two Planner replicas")
            load = Load(url, body)
            _wait(lambda: load.count() >= 2 * CLIENTS, 180, "the first answers under load")
            victim = next(n for n in nodes if n.node_id in placed)
            killed_at = kill_node(cluster, victim)
            time.sleep(replace_after)
            add_train_node(cluster, cpus=0)  # the replacement node (a new spot instance joining)

            def replaced():
                dep = serve.status().applications[APP].deployments["Planner"]
                live = planner_nodes()
                return (dep.replica_states.get("RUNNING", 0) == 2 and dep.status == "HEALTHY" and len(live) == 2
                        and victim.node_id not in live and time.monotonic())

            recovered_at = _wait(replaced, 240, "Serve to run a replacement replica on the new node")
            _wait(lambda: load.count(since=recovered_at) >= AFTER_RECOVERY, 240,
                  f"{AFTER_RECOVERY} answers after the replacement replica is up")
            results = load.finish()
        finally:
            if load is not None:
                load.stop.set()
            serve.shutdown()
    return ServeNodeLossRun(results, killed_at, recovered_at, placed, [n.node_id for n in nodes])


def serve_node_loss(args, tmp: Path):
    """The ``serve`` fault of ``odvla bench faults``; returns a ``FaultFigure``."""
    from odvla.platform.bench.bench_faults import FaultFigure
    from odvla.platform.bench.fault_injection import local_multinode_cluster

    run = run_serve_node_loss(tmp, local_multinode_cluster(workers=2, head_cpus=2, worker_cpus=0),
                              args.replace_after)
    results, killed_at = run.results, run.killed_at
    failed = sum(1 for r in results if r[2] != 200)
    first_ok = min((r[1] for r in results if r[0] >= killed_at and r[2] == 200), default=float("nan"))
    return FaultFigure(f"serve node loss ({CLIENTS} clients)", first_ok - killed_at, None, failed, len(results),
                       note=f"2 replicas on 2 nodes, replacement after {args.replace_after:g} s, its replica "
                            f"running {run.recovered_at - killed_at:.0f} s after the kill")
