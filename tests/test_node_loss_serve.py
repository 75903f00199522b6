"""Node loss in serving, on a three-node Ray cluster on one machine: the head runs the Serve controller, the HTTP
proxy and the ingress; each of two worker nodes runs one ``Planner`` replica (``serve.replica_resources``).

Client threads keep sending ``/v1/plan`` while the node of one replica is killed (raylet and processes, no notice)
and a replacement node joins 5 s later. The service keeps answering on the surviving replica; a request in flight
on the lost node is retried by the ingress on another replica or answered 503 with ``Retry-After`` - never a 500,
never a hang (the client's timeout would fail the test); once Serve has the replacement replica running, no
request fails. Prints the figure: requests failed / sent, time to recover.
"""
from __future__ import annotations

import pytest

from cluster_helpers import multinode_cluster
from odvla.serve.fault_bench import AFTER_RECOVERY, CLIENTS, run_serve_node_loss

pytestmark = [pytest.mark.integration, pytest.mark.slow]

def test_serving_survives_a_lost_node(tmp_path):
    # worker nodes without CPUs: only the Planner replicas (0 CPU + one odvla_train_node each) land there; the
    # ingress (0.25 CPU), the controller and the proxy stay on the head, which this test does not kill
    run = run_serve_node_loss(tmp_path, multinode_cluster(workers=2, head_cpus=2, worker_cpus=0), replace_after=5)
    assert set(run.placed) == set(run.worker_nodes), f"replicas not one per worker node: {run.placed}"
    results, killed_at, recovered_at = run.results, run.killed_at, run.recovered_at

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
