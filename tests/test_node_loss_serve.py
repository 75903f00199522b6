"""Node loss in serving, on a three-node Ray cluster on one machine: the head runs the Serve controller, the HTTP
proxy and the ingress; each of two worker nodes runs one ``Planner`` replica (``serve.replica_resources``).

Client threads keep sending ``/v1/plan`` while the node of one replica is killed (raylet and processes, no notice)
and a replacement node joins 5 s later. The service keeps answering on the surviving replica; a request in flight
on the lost node is retried by the ingress on another replica or answered 503 with ``Retry-After`` - never a 500,
never a hang (the client's timeout would fail the test); once Serve has the replacement replica running, no
request fails. Prints the figure: requests failed / sent, time to recover.
"""
from __future__ import annotations

import time

import httpx
import pytest

from cluster_helpers import add_train_node, kill_node, multinode_cluster
from odvla.serve.fault_bench import Load, planner_nodes as _planner_nodes, serve_fault_setup

pytestmark = [pytest.mark.integration, pytest.mark.slow]

PORT = 8131
APP = "odvla-node-loss"
CLIENTS = 3
AFTER_RECOVERY = 12
"""Requests that must all succeed once the replacement replica is up."""


def _wait(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while not (value := predicate()):
        assert time.monotonic() < deadline, f"timed out after {timeout} s waiting for {what}"
        time.sleep(0.5)
    return value


def test_serving_survives_a_lost_node(tmp_path):
    from ray import serve

    from odvla.serve.app import AppArgs, build_app_from_config

    export, body, cfg = serve_fault_setup(tmp_path)  # the bench's setup: one Planner replica per worker node
    # worker nodes without CPUs: only the Planner replicas (0 CPU + one odvla_train_node each) land there; the
    # ingress (0.25 CPU), the controller and the proxy stay on the head, which this test does not kill
    with multinode_cluster(workers=2, head_cpus=2, worker_cpus=0) as (cluster, nodes):
        serve.start(proxy_location="HeadOnly", http_options={"host": "127.0.0.1", "port": PORT})
        load = None
        try:
            serve.run(build_app_from_config(AppArgs(model=str(export)), cfg.serve, cfg.tracking), name=APP,
                      route_prefix="/")
            with httpx.Client(base_url=f"http://127.0.0.1:{PORT}", timeout=60) as c:
                _wait(lambda: c.get("/readyz").status_code == 200, 180, "the planner app to be ready")
            placed = _wait(lambda: len(_planner_nodes()) == 2 and _planner_nodes(), 60, "two Planner replicas")
            assert set(placed) == {n.node_id for n in nodes}, f"replicas not one per worker node: {placed}"

            load = Load(f"http://127.0.0.1:{PORT}", body, clients=CLIENTS)
            _wait(lambda: load.count() >= 2 * CLIENTS, 180, "the first answers under load")
            victim = nodes[0]
            killed_at = kill_node(cluster, victim)
            time.sleep(5)
            add_train_node(cluster, cpus=0)  # the replacement node (a new spot instance joining)

            def replaced():
                dep = serve.status().applications[APP].deployments["Planner"]
                live = _planner_nodes()
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

    statuses = [r[2] for r in results]
    assert set(statuses) <= {200, 503}, f"not 200/503 (a 5xx, or a hang ending in a client timeout): " \
        f"{[r for r in results if r[2] not in (200, 503)][:3]}"
    failed = [r for r in results if r[2] != 200]
    for r in failed:  # a lost request says when to come back
        assert r[3] is not None and int(r[3]) > 0, f"503 without Retry-After: {r}"
        assert "lost" in r[4] or "unavailable" in r[4], r[4]
    during = [r for r in results if killed_at <= r[0] < recovered_at]
    assert any(r[2] == 200 for r in during), "the service did not answer while one node was down"
    after = [r for r in results if r[0] >= recovered_at]
    assert len(after) >= AFTER_RECOVERY and all(r[2] == 200 for r in after), \
        f"requests failed after the replacement replica was up: {[r for r in after if r[2] != 200][:3]}"
    first_ok_after_kill = min((r[1] for r in results if r[0] >= killed_at and r[2] == 200), default=float("nan"))
    print(f"\n[fault figure] serve node loss (2 replicas on 2 nodes, replacement node after 5 s, {CLIENTS} clients): "
          f"requests failed {len(failed)} / sent {len(results)} ({len(during)} sent while degraded), "
          f"first answer after the kill {first_ok_after_kill - killed_at:.1f} s, replacement replica running "
          f"{recovered_at - killed_at:.1f} s after the kill", flush=True)
