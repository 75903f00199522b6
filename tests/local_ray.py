"""The single-node Ray instance the test session shares (``ray_session`` in conftest.py), in one place, so a test
that needs a cluster of its own (multi-node fault tests) can stop it and bring it back for the tests after it."""
from __future__ import annotations

LOCAL_RAY = dict(num_cpus=4, include_dashboard=False, log_to_driver=False, configure_logging=False)
"""4 logical CPUs so data + train workers fit."""


def ensure_local_ray():
    """Start the shared local instance unless Ray is already initialised; returns the ``ray`` module."""
    import ray

    if not ray.is_initialized():  # address="local": never join a `ray start` cluster another test left behind
        ray.init(address="local", **LOCAL_RAY)
    return ray
