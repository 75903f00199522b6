"""Faults on a multi-node Ray cluster on one machine, for ``odvla bench faults`` and the node-loss tests.

``ray.cluster_utils.Cluster`` starts a head and worker raylets on loopback, each with its own resources; all of them
see the same folders (standing in for shared storage). Removing a node kills its raylet and every worker process on
it, as a lost spot instance would. ``PauseAfterFirstCheckpoint`` is a train-worker hook (``run_stage(worker_hooks=
[...])``) that holds rank 0 after its first checkpoint, so a fault lands at a known step.
"""
from __future__ import annotations

import os
import time
from contextlib import contextmanager
from pathlib import Path

TRAIN_NODE = "odvla_train_node"
"""Custom resource of the worker nodes: one train worker per node (``train.worker_resources``)."""


@contextmanager
def local_multinode_cluster(workers: int = 2, head_cpus: int = 2, worker_cpus: int = 1,
                            start_timeout_s: float = 10.0, worker_resources: dict | None = None):
    """Head (``head_cpus`` for Ray Data and the Train controller, no train slot) + ``workers`` nodes with one
    ``odvla_train_node`` each (and ``worker_resources``); this process is connected as the driver (Ray must not be
    initialised yet). Yields (cluster, [worker nodes]); shuts Ray and the cluster down on exit.

    ``start_timeout_s``: Ray Train's worker-group start timeout, set before the raylets start so that the Train
    controller (a Ray actor) inherits it; ``train.capacity_timeout_s`` is counted in it.
    """
    import ray
    from ray.cluster_utils import Cluster

    from odvla.platform.train.trainer import START_TIMEOUT_ENV

    old = os.environ.get(START_TIMEOUT_ENV)
    os.environ[START_TIMEOUT_ENV] = str(start_timeout_s)
    cluster = Cluster(initialize_head=True, head_node_args={
        "num_cpus": head_cpus, "include_dashboard": False,
        "_system_config": {"health_check_period_ms": 1000, "health_check_failure_threshold": 3}})
    try:
        nodes = [add_train_node(cluster, worker_cpus, worker_resources) for _ in range(workers)]
        ray.init(address=cluster.address, log_to_driver=False, configure_logging=False)
        yield cluster, nodes
    finally:
        ray.shutdown()
        cluster.shutdown()
        if old is None:
            os.environ.pop(START_TIMEOUT_ENV, None)
        else:
            os.environ[START_TIMEOUT_ENV] = old


def add_train_node(cluster, cpus: int = 1, resources: dict | None = None):
    """A worker node with one ``odvla_train_node`` slot (plus ``resources``): a node joining, or a replacement."""
    return cluster.add_node(num_cpus=cpus, resources={TRAIN_NODE: 1, **(resources or {})})


def kill_node(cluster, node) -> float:
    """SIGKILL the node's raylet and processes (no drain, no notice); returns the time.monotonic() of the kill."""
    t = time.monotonic()
    cluster.remove_node(node, allow_graceful=False)
    return t


def node_by_id(nodes, node_id: str):
    for n in nodes:
        if n.node_id == node_id:
            return n
    raise LookupError(f"node {node_id} is not one of the worker nodes {[n.node_id for n in nodes]}")


class PauseAfterFirstCheckpoint:
    """Worker hook (``run_stage(worker_hooks=[...])``): rank 0 writes ``rank0-<attempt>.pid`` ("<pid> <step>
    <node id>") after the first checkpoint of each attempt and, on attempt 0, waits (at most ``wait_s``) for a
    ``go`` file in ``folder``, so a caller can kill a worker, a node or the tracking server at a known step."""

    def __init__(self, folder: Path | str, wait_s: float = 180.0):
        self.folder = str(folder)
        self.wait_s = wait_s
        self._fired = False

    def marker(self, step: int, attempt: int, node: str) -> tuple[str, str]:
        """(file name, text) that rank 0 writes after the first checkpoint of an attempt."""
        return f"rank0-{attempt}.pid", f"{os.getpid()} {step} {node}\n"

    def after_checkpoint(self, step: int, attempt: int, rank: int) -> None:
        if rank != 0 or self._fired:
            return
        self._fired = True
        node = ""
        try:
            import ray

            node = ray.get_runtime_context().get_node_id()
        except Exception:  # noqa: BLE001 - the node id is informative only
            pass
        name, text = self.marker(step, attempt, node)
        d = Path(self.folder)
        d.mkdir(parents=True, exist_ok=True)
        tmp = d / f".{name}"
        tmp.write_text(text)
        tmp.rename(d / name)
        if attempt == 0:
            deadline = time.monotonic() + self.wait_s
            while not (d / "go").exists() and time.monotonic() < deadline:
                time.sleep(0.1)
