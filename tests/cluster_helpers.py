"""A multi-node Ray cluster on one machine for node-loss tests: ``odvla.platform.bench.fault_injection`` (also what
``odvla bench faults`` runs on) - ``ray.cluster_utils.Cluster`` starts a head and worker raylets on loopback, each
with its own resources; all of them see the same folders (standing in for shared storage). Removing a node kills its
raylet and every worker process on it, as a lost spot instance would. Here the session's shared single-node Ray is
stopped for the test's own cluster and given back afterwards."""
from __future__ import annotations

from contextlib import contextmanager

from odvla.platform.bench.fault_injection import (TRAIN_NODE, add_train_node,  # noqa: F401
                                                  kill_node, local_multinode_cluster, node_by_id)


@contextmanager
def multinode_cluster(workers: int = 2, head_cpus: int = 2, worker_cpus: int = 1, start_timeout_s: float = 10.0,
                      worker_resources: dict | None = None):
    """``local_multinode_cluster`` (head with ``head_cpus``, ``workers`` nodes with one ``odvla_train_node`` each
    and ``worker_resources``; yields (cluster, [worker nodes])), after stopping the session's shared Ray instance,
    which comes back on exit."""
    import ray

    had_shared = ray.is_initialized()
    if had_shared:  # the session's shared single-node instance: this test needs its own cluster
        ray.shutdown()
    try:
        with local_multinode_cluster(workers, head_cpus, worker_cpus, start_timeout_s, worker_resources) as both:
            yield both
    finally:
        if had_shared:  # give the rest of the session its shared instance back
            from local_ray import ensure_local_ray

            ensure_local_ray()
