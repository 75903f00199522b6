"""Shared fixtures: one local Ray instance per test session, and (added by the data layer) a small synthetic
nuScenes dataroot and its Parquet shards, built once per session.

Tests that need their own cluster (``ray start --head`` + ``ray job submit``) start it in a subprocess on a
port of their own and stop it at the end.

Tiers (markers are declared in ``pyproject.toml``):

- ``integration``: starts a real Ray cluster, MLflow server or Serve app. Every test that uses the ``ray_session``
  or ``mlflow_server`` fixture gets it automatically; tests that start their own cluster or server carry it by hand.
- ``slow``: over about a minute on 2 cores (the demo, multi-node fault tests).
- unmarked: unit and module tests. ``make test-fast`` runs only these (``-m "not integration and not slow"``) with
  ``ODVLA_TEST_TIER=fast``, under which any attempt to start or reach Ray fails the test: ``RAY_ADDRESS`` points at a
  closed port, so an unmarked test that (even indirectly) needs a cluster is caught rather than slowly tolerated.
"""
from __future__ import annotations

import os

import pytest

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING", "false")

FAST_TIER = os.environ.get("ODVLA_TEST_TIER") == "fast"
if FAST_TIER:
    # Nothing listens on port 1: ray.init() / Ray Data calls fail at once instead of starting a local cluster.
    os.environ["RAY_ADDRESS"] = "127.0.0.1:1"


TIMEOUT_REFERENCE_GFLOPS = 150.0
"""The per-test time limits (``timeout`` in pyproject.toml, ``@pytest.mark.timeout``) are written for a machine whose
1024^2 float32 matmul runs at this many GFLOP/s on 2 threads. On a slower one every limit grows by the ratio
(``odvla.platform.machine``), so a hang is still caught but a slow CPU is not a failure."""


def _machine_speed():
    from odvla.platform.machine import measure

    return measure()


def pytest_report_header(config):
    speed = _machine_speed()
    return [f"machine: {speed.line()}; per-test time limits x{speed.slowdown(TIMEOUT_REFERENCE_GFLOPS):.2f}"]


def _scale_timeouts(config, items) -> None:
    scale = _machine_speed().slowdown(TIMEOUT_REFERENCE_GFLOPS)
    if scale <= 1.0:
        return
    default = float(config.getini("timeout") or 0)
    for item in items:
        marker = item.get_closest_marker("timeout")
        base = float(marker.args[0]) if marker is not None and marker.args else default
        if base > 0:
            item.add_marker(pytest.mark.timeout(base * scale), append=False)  # first: pytest-timeout reads it


INTEGRATION_FIXTURES = {"ray_session", "mlflow_server"}
"""Fixtures that start a Ray cluster or a server: a test that uses one is an integration test."""


LAST_MODULES = ("test_real_size_05b.py",)
"""Run after everything else: the 0.5b curriculum needs most of a 24 GB machine, so it starts on a freshly restarted
Ray instance with no earlier test's processes around, and nothing runs after it that it could starve."""


def pytest_collection_modifyitems(config, items):
    """Tests that use a cluster or server fixture are integration tests, whether or not they say so; the
    ``LAST_MODULES`` go to the end of the run."""
    for item in items:
        if INTEGRATION_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.integration)
    items.sort(key=lambda item: item.path.name in LAST_MODULES)  # stable: the order is otherwise unchanged
    _scale_timeouts(config, items)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    """Keeps each phase's report on the item (``item.rep_call``) for the fixtures below."""
    report = yield
    setattr(item, f"rep_{report.when}", report)
    return report


@pytest.fixture(scope="session")
def ray_session():
    """A real local Ray instance shared by the whole session (4 logical CPUs so data + train workers fit)."""
    from local_ray import ensure_local_ray

    if FAST_TIER:
        pytest.fail("the fast tier (ODVLA_TEST_TIER=fast) starts no Ray cluster; mark this test `integration`")
    ray = ensure_local_ray()
    yield ray
    ray.shutdown()


@pytest.fixture(autouse=True)
def _shared_ray_is_up(request):
    """A multi-node test stops the shared instance while it runs its own cluster; tests after it that use
    ``ray_session`` get it back (module fixtures are restored by ``cluster_helpers.multinode_cluster`` itself).

    After a test that failed (or hit its timeout) the shared instance is shut down: a training run it left going
    in a background thread, with its workers, data tasks and memory, would otherwise starve every later test. The
    next test that needs Ray starts a fresh one."""
    if "ray_session" in request.fixturenames:
        from local_ray import ensure_local_ray

        ensure_local_ray()
    yield
    report = getattr(request.node, "rep_call", None)
    if report is not None and report.failed:
        import ray

        if ray.is_initialized():
            ray.shutdown()


@pytest.fixture(scope="session")
def tiny_export(tmp_path_factory):
    """An untrained ``tiny`` export (random init; read only): what the Serve and closed-loop tests serve and drive,
    where the plumbing, not the plans' quality, is tested."""
    from odvla.model.vla import OpenDriveVLA
    from odvla.platform.config import load_config
    from odvla.platform.export import save_export

    cfg = load_config(model="tiny")
    return save_export(OpenDriveVLA(cfg.model), cfg, tmp_path_factory.mktemp("tiny-export") / "export")


@pytest.fixture(scope="session")
def synth_root(tmp_path_factory):
    """A small synthetic nuScenes v1.0-mini dataroot: 4 scenes x 20 keyframes (3 train, 1 val), 320x180 JPEGs."""
    from odvla.platform.data.synth import write_synthetic

    return write_synthetic(tmp_path_factory.mktemp("synth") / "nuscenes", scenes=4, keyframes=20, seed=0,
                           image_wh=(320, 180))


@pytest.fixture(scope="session")
def shards_dir(synth_root, tmp_path_factory):
    """Parquet shards of ``synth_root``: train 60 rows in 2 files, val 20. Built in-process (no Ray start for
    tests that only read shards); tests/test_data_prepare.py checks the Ray-parallel path writes the same rows."""
    from odvla.platform.data.prepare import prepare

    out = tmp_path_factory.mktemp("shards")
    prepare(synth_root, "v1.0-mini", out, rows_per_shard=32, num_workers=0, progress=False)
    return out


@pytest.fixture(scope="session")
def mlflow_sqlite(tmp_path_factory):
    """A real local MLflow store (SQLite + artifact folder) shared by the session; returns its tracking URI."""
    from odvla.platform.tracking import resolve_tracking_uri

    return resolve_tracking_uri(f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}")


@pytest.fixture
def own_mlflow_store(tmp_path):
    """A real MLflow store (SQLite + artifacts) under ``tmp_path / "mlflow"`` for one test that logs large exports:
    they go with the test's ``tmp_path`` instead of piling up in the session's store."""
    from odvla.platform.tracking import resolve_tracking_uri

    return resolve_tracking_uri(f"sqlite:///{tmp_path / 'mlflow' / 'mlflow.db'}")


@pytest.fixture(scope="module")
def one_torch_thread():
    """One intra-op torch thread for a module of tiny-model tests: small tensors gain little from two, and on a busy
    2-core machine spinning OpenMP threads are an order of magnitude slower. Restored afterwards. Use with
    ``pytestmark = pytest.mark.usefixtures("one_torch_thread")``."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
