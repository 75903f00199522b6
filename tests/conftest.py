"""Shared fixtures: one local Ray instance per test session, and (added by the data layer) a small synthetic
nuScenes dataroot and its Parquet shards, built once per session.

Tests that need their own cluster (``ray start --head`` + ``ray job submit``) start it in a subprocess on a
port of their own and stop it at the end.
"""
from __future__ import annotations

import os

import pytest

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING", "false")


@pytest.fixture(scope="session")
def ray_session():
    """A real local Ray instance shared by the whole session (4 logical CPUs so data + train workers fit)."""
    import ray

    if not ray.is_initialized():
        ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield ray
    ray.shutdown()
