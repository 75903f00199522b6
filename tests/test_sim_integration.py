"""The model in the closed loop: in process and over HTTP (Ray Serve), on Ray, tracked in MLflow.

An untrained ``tiny`` export drives (its plans are poor; what is tested is the plumbing: the same plan from both
paths, errors counted, artifacts written). Scenarios last 6.5 s (13 planner ticks), the shortest a scenario may be.
"""
from __future__ import annotations

import json
import time

import numpy as np
import pytest

PORT = 8131
URL = f"http://127.0.0.1:{PORT}"
APP = "odvla-sim-test"
DURATION = 6.5
IMAGE_HW = (90, 160)


@pytest.fixture(scope="module")
def served(ray_session, tiny_export):
    """The export served on 127.0.0.1:8131 by 2 Planner replicas (one torch thread each)."""
    import httpx
    from ray import serve

    from odvla.platform.config import load_config
    from odvla.serve.app import AppArgs, build_app_from_config

    cfg = load_config(overrides=["serve.num_replicas=2", "serve.num_cpus=0.5", "serve.torch_threads=1",
                                 "serve.request_timeout_s=120", "serve.health_check_period_s=2"])
    app = build_app_from_config(AppArgs(model=str(tiny_export)), cfg.serve, cfg.tracking)
    serve.start(http_options={"host": "127.0.0.1", "port": PORT})
    serve.run(app, name=APP, route_prefix="/")
    deadline = time.monotonic() + 180
    with httpx.Client(base_url=URL, timeout=30) as client:
        while client.get("/readyz").status_code != 200:
            assert time.monotonic() < deadline, "planner app never became ready"
            time.sleep(0.5)
    yield URL
    import ray

    if ray.is_initialized():  # a failed test has the shared instance shut down (conftest.py)
        serve.delete(APP)
        serve.shutdown()  # its proxy holds PORT's HTTP options: the next module's serve.start sets its own


def _scenario(kind="normal", seed=0):
    from odvla.platform.sim.scenario import make_scenario

    return make_scenario(kind, seed, "log", DURATION)


@pytest.mark.integration
def test_http_and_in_process_give_the_same_rollout(served, tiny_export):
    import torch

    from odvla.platform.sim.planners import PlannerSpec, make_planner
    from odvla.platform.sim.rollout import run_rollout

    torch.set_num_threads(1)  # as the replicas (serve.torch_threads=1)
    local = make_planner(PlannerSpec("model", "export", {"ref": str(tiny_export)}))
    remote = make_planner(PlannerSpec("model", "http", {"url": served}))
    a = run_rollout(_scenario(), local, IMAGE_HW)
    b = run_rollout(_scenario(), remote, IMAGE_HW)
    assert len(a.tick_t) == len(b.tick_t) == 13
    # the HTTP session carried the scene state on one replica: no tick rebuilt it
    assert all("rebuilt" not in w for _, w in remote.warnings), remote.warnings
    # a request the schema refuses (the untrained plans drive the ego far out of the API's bounds) fails on the
    # same tick on both paths, naming the same field
    assert [t for t, _ in a.plan_errors] == [t for t, _ in b.plan_errors], (a.plan_errors, b.plan_errors)
    for (_, ma), (_, mb) in zip(a.plan_errors, b.plan_errors):
        assert ma.startswith("request refused: ") and mb.startswith("HTTP 422: request.")
        assert ma.split(": ")[1] in mb, (ma, mb)
    valid = np.isfinite(a.plans).all((1, 2))
    assert valid.sum() >= 3, a.plan_errors  # the comparison covers real plans, the state carried across ticks
    np.testing.assert_array_equal(a.plans, b.plans)  # tick by tick, NaN where both failed
    np.testing.assert_array_equal(a.ego_pose, b.ego_pose)


@pytest.mark.integration
def test_rollout_survives_a_killed_replica_and_reports_it(served):
    import ray

    from odvla.platform.sim.planners import PlannerSpec, make_planner
    from odvla.platform.sim.rollout import run_rollout

    inner = make_planner(PlannerSpec("model", "http", {"url": served}))
    killed = {}

    class KillReplicaAfterTick2:
        """Fault injection: after tick 2 the replica holding the session is killed (as a lost node would)."""

        name = "model"

        def reset(self, scenario):
            inner.reset(scenario)

        def plan(self, obs):
            out = inner.plan(obs)
            if obs.frame_index == 2:
                replica = inner.last_session["replica"]
                ray.kill(ray.get_actor(replica, namespace="serve"), no_restart=True)
                killed["replica"] = replica
            return out

    r = run_rollout(_scenario(seed=1), KillReplicaAfterTick2(), IMAGE_HW)
    assert killed and len(r.tick_t) == 13  # the rollout ran to its end
    after = range(3, 13)
    reported = [w for t, w in inner.warnings if t in after and "gone" in w and "rebuilt" in w]
    errors = [e for e in r.plan_errors if e[0] in after and ("HTTP 503" in e[1] or "lost" in e[1])]
    assert reported or errors, (inner.warnings, r.plan_errors)
    answered = [t for t in after if np.isfinite(r.plans[t]).all()]
    assert answered, r.plan_errors  # another replica took the session over


@pytest.mark.integration
def test_odvla_sim_end_to_end_on_ray(ray_session, tiny_export, mlflow_sqlite, tmp_path, caplog):
    from mlflow import MlflowClient
    from PIL import Image

    from odvla.platform.cli.main import main

    out = tmp_path / "sim"
    with caplog.at_level("INFO", logger="odvla.platform.sim.runner"):
        rc = main(["sim", "--model", str(tiny_export), "--scenarios", "2", "--out", str(out),
                   "--set", f"tracking.tracking_uri={mlflow_sqlite}", "--set", "tracking.experiment=sim-test",
                   "--set", f"sim.duration_s={DURATION}", "--set", "sim.workers=2",
                   "--set", f"sim.image_height={IMAGE_HW[0]}", "--set", f"sim.image_width={IMAGE_HW[1]}",
                   "--set", "sim.baselines=[expert]"])
    assert rc == 0
    progress = [r.getMessage() for r in caplog.records if r.getMessage().startswith("rollout ")]
    assert len(progress) == 4 and any("4/4" in p for p in progress)  # 2 worlds x 2 planners
    metrics = json.loads((out / "metrics.json").read_text())
    rows = metrics["rollouts"]
    assert sorted((r["scenario"], r["planner"]) for r in rows) == sorted(
        (f"normal-{s}-log", p) for s in (0, 1) for p in ("model", "expert"))
    for p in ("model", "expert"):
        mine = [r for r in rows if r["planner"] == p]
        assert metrics["planners"][p]["pdms"] == pytest.approx(np.mean([r["pdms"] for r in mine]))
        assert metrics["planners"][p]["planner_errors"] == sum(len(r["plan_errors"]) for r in mine)
    assert metrics["planners"]["expert"]["collisions"] == 0  # the log collides with nothing in normal scenarios
    table = (out / "results.md").read_text()
    assert "| model | 2 |" in table and "| expert | 2 |" in table and "## Per scenario" in table
    frames = len(range(0, int(round(DURATION / 0.1)) + 1, 5))  # every 0.5 s; 6.5 s ends on a multiple of 0.5 s
    for r in rows:
        stem = f"{r['scenario']}__{r['planner']}"
        with Image.open(out / "gifs" / f"{stem}.gif") as gif:
            assert gif.n_frames == frames and gif.size == (400, 400)
        with Image.open(out / "cameras" / f"{stem}.png") as strip:
            assert strip.size == (3 * IMAGE_HW[1], 2 * IMAGE_HW[0] + 16)
    client = MlflowClient(mlflow_sqlite)
    exp = client.get_experiment_by_name("sim-test")
    (run,) = client.search_runs([exp.experiment_id])
    assert run.info.status == "FINISHED"
    assert run.data.metrics["sim/expert/pdms"] == pytest.approx(metrics["planners"]["expert"]["pdms"])
    assert "sim/model/normal-1-log/route_completion" in run.data.metrics
    logged = {f.path for f in client.list_artifacts(run.info.run_id, "sim")}
    assert {"sim/results.md", "sim/metrics.json", "sim/gifs", "sim/cameras"} <= logged


# ---------------------------------------------------------------------- bad input and answers (no Ray)
def test_unknown_scenario_kind_and_agent_mode_are_named():
    from odvla.platform.config.schema import SimConfig
    from odvla.platform.sim.planners import PlannerSpec
    from odvla.platform.sim.runner import rollout_jobs, scenario_list

    with pytest.raises(ValueError, match="unknown scenario kind 'highway'"):
        scenario_list(1, False, kinds=["normal", "highway"])
    with pytest.raises(ValueError, match="sim.agents: unknown agent mode 'smart'"):
        rollout_jobs(SimConfig(agents="smart"), [PlannerSpec("expert")])
    with pytest.raises(ValueError, match="unknown kind 'oracle'"):
        PlannerSpec("oracle")
    assert scenario_list(2, True, seed=5)[:5] == [("normal", 5), ("stationary", 5), ("frontal", 5), ("cutin", 5),
                                                  ("pedestrian", 5)]


def test_cli_names_a_bad_agent_mode(tiny_export, capsys):
    from odvla.platform.cli.main import main

    assert main(["sim", "--model", str(tiny_export), "--agents", "smart", "--no-mlflow"]) == 2
    assert "unknown agent mode 'smart'" in capsys.readouterr().err


def test_unreachable_endpoint_is_named():
    from odvla.platform.sim.planners import PlannerSpec
    from odvla.platform.sim.runner import check_planner

    with pytest.raises(ValueError, match=r"planner endpoint http://127.0.0.1:9/x: not reachable"):
        check_planner(PlannerSpec("model", "http", {"url": "http://127.0.0.1:9/x/"}))


def test_export_whose_cameras_the_renderer_cannot_produce(tmp_path):
    from odvla.model.vla import OpenDriveVLA
    from odvla.platform.config import load_config
    from odvla.platform.export import save_export
    from odvla.platform.sim.planners import PlannerSpec, make_planner
    from odvla.platform.sim.runner import check_planner

    cfg = load_config(model="tiny", overrides=["model.vision.image_height=64", "model.vision.image_width=64"])
    ref = str(save_export(OpenDriveVLA(cfg.model), cfg, tmp_path / "square"))
    spec = PlannerSpec("model", "export", {"ref": ref})
    with pytest.raises(ValueError, match=r"model export .*square.*cannot produce.*64x64.*aspect 1\.000"):
        check_planner(spec)
    with pytest.raises(ValueError, match=r"model export .*square.*cannot produce"):
        make_planner(spec)


def test_unparsed_answer_becomes_a_plan_error():
    from odvla.platform.sim.planners import plan_result

    bad = plan_result({"parsed": False, "waypoints": None, "answer": "<traj_start> [1.0,",
                       "warnings": ["the answer did not parse as a trajectory: waypoint 1: expected ','"]})
    assert bad.waypoints is None and "did not parse" in bad.error and "waypoint 1" in bad.error
    short = plan_result({"parsed": True, "waypoints": [[1.0, 0.0]] * 5, "warnings": []})
    assert short.waypoints is None and "(5, 2)" in short.error
    ok = plan_result({"parsed": True, "waypoints": [[i * 1.0, 0.0] for i in range(1, 7)], "warnings": []})
    assert ok.error is None and ok.waypoints.shape == (6, 2)


def test_aggregate_pools_collisions_over_distance():
    from odvla.platform.sim.table import aggregate, markdown_table

    base = {"pdms_nc": 1.0, "pdms_dac": 1.0, "pdms_ttc": 1.0, "pdms_ep": 1.0, "pdms_comfort": 1.0,
            "offroad_time_s": 0.0, "ticks": 30, "planner_errors": 0, "route_completion": 1.0}
    rows = [dict(base, planner="p", pdms=1.0, distance_m=300.0, collisions=0, collision_events=[]),
            dict(base, planner="p", pdms=0.0, distance_m=200.0, collisions=2, planner_errors=3,
                 collision_events=[{"impact_speed": 4.0}, {"impact_speed": 2.0}], ncap_score=2.0)]
    a = aggregate(rows)["p"]
    assert a["collisions_per_km"] == pytest.approx(2 / 0.5) and a["impact_speed"] == pytest.approx(3.0)
    assert a["pdms"] == pytest.approx(0.5) and a["ncap_score"] == 2.0 and a["planner_errors"] == 3
    assert "| p | 2 | 0.500 |" in markdown_table({"p": a})
