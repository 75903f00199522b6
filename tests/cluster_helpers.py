"""A multi-node Ray cluster on one machine for node-loss tests: ``ray.cluster_utils.Cluster`` starts a head and
worker raylets on loopback, each with its own resources; all of them see the same folders (standing in for shared
storage). Removing a node kills its raylet and every worker process on it, as a lost spot instance would."""
from __future__ import annotations

import os
import time
from contextlib import contextmanager

TRAIN_NODE = "odvla_train_node"
"""Custom resource of the worker nodes: one train worker per node (``train.worker_resources``)."""
START_TIMEOUT_ENV = "RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S"


@contextmanager
def multinode_cluster(workers: int = 2, head_cpus: int = 2, worker_cpus: int = 1, start_timeout_s: float = 10.0):
    """Head (``head_cpus`` for Ray Data and the Train controller, no train slot) + ``workers`` nodes with one
    ``odvla_train_node`` each; the driver is connected. Yields (cluster, [worker nodes]).

    ``start_timeout_s``: Ray Train's worker-group start timeout, set before the raylets start so that the Train
    controller (a Ray actor) inherits it; the tests' ``train.capacity_timeout_s`` is counted in it.
    """
    import ray
    from ray.cluster_utils import Cluster

    had_shared = ray.is_initialized()
    if had_shared:  # the session's shared single-node instance: this test needs its own cluster
        ray.shutdown()
    old = os.environ.get(START_TIMEOUT_ENV)
    os.environ[START_TIMEOUT_ENV] = str(start_timeout_s)
    cluster = Cluster(initialize_head=True, head_node_args={
        "num_cpus": head_cpus, "include_dashboard": False,
        "_system_config": {"health_check_period_ms": 1000, "health_check_failure_threshold": 3}})
    try:
        nodes = [add_train_node(cluster, worker_cpus) for _ in range(workers)]
        ray.init(address=cluster.address, log_to_driver=False, configure_logging=False)
        yield cluster, nodes
    finally:
        ray.shutdown()
        cluster.shutdown()
        if old is None:
            os.environ.pop(START_TIMEOUT_ENV, None)
        else:
            os.environ[START_TIMEOUT_ENV] = old
        if had_shared:  # give the rest of the session its shared instance back
            from local_ray import ensure_local_ray

            ensure_local_ray()


def add_train_node(cluster, cpus: int = 1):
    return cluster.add_node(num_cpus=cpus, resources={TRAIN_NODE: 1})


def kill_node(cluster, node) -> float:
    """SIGKILL the node's raylet and processes (no drain, no notice); returns the time.monotonic() of the kill."""
    t = time.monotonic()
    cluster.remove_node(node, allow_graceful=False)
    return t


def node_by_id(nodes, node_id: str):
    for n in nodes:
        if n.node_id == node_id:
            return n
    raise AssertionError(f"node {node_id} is not one of the worker nodes {[n.node_id for n in nodes]}")
