"""Serve planner pieces without a cluster: request schemas, error messages, session store, routing hash, config."""
from __future__ import annotations

import base64
import copy
import json
from pathlib import Path

import pytest
import yaml
from pydantic import ValidationError

from odvla.model.constants import CAMERAS
from odvla.serve.app import validation_message
from odvla.serve.bench import synthetic_request
from odvla.serve.routing import rendezvous_score
from odvla.serve.schemas import ChatRequest, Health, PlanRequest
from odvla.serve.sessions import SessionStore

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def body() -> dict:
    return synthetic_request(image_hw=(45, 80))


def _parse(data: dict, model=PlanRequest):
    """As the ingress parses a body: JSON, strict (no coercion, arrays for the fixed-size tuples)."""
    return model.model_validate_json(json.dumps(data))


def _errors(data: dict, model=PlanRequest) -> str:
    with pytest.raises(ValidationError) as ei:
        _parse(data, model)
    return validation_message(ei.value.errors())


def test_valid_request_parses(body):
    req = _parse(body)
    assert [c.name for c in req.cameras] == list(CAMERAS)
    assert req.command == "keep forward"
    assert req.ego_state.as_list()[5] == 5.0
    # only what the OpenAPI schema shows: 'extrinsics' (no second name), numbers as numbers
    alt = copy.deepcopy(body)
    alt["cameras"][0]["sensor2ego"] = alt["cameras"][0].pop("extrinsics")
    assert "cameras.0.extrinsics: Field required" in _errors(alt)
    assert "ego_state.vx" in _errors(dict(body, ego_state=dict(body["ego_state"], vx="5.0")))


def test_wrong_camera_count_names_field(body):
    bad = copy.deepcopy(body)
    bad["cameras"] = bad["cameras"][:5]
    msg = _errors(bad)
    assert msg.startswith("cameras:") and "expected 6 cameras" in msg and "got 5" in msg


def test_camera_order_is_checked(body):
    bad = copy.deepcopy(body)
    bad["cameras"][0]["name"], bad["cameras"][1]["name"] = bad["cameras"][1]["name"], bad["cameras"][0]["name"]
    msg = _errors(bad)
    assert "cameras.0.name: Input should be 'CAM_FRONT'" in msg and "cameras.1.name" in msg


@pytest.mark.parametrize("image, expect", [
    ("/9j/not base64 at all!", "not valid base64"),
    (base64.b64encode(b"\x89PNG\r\n\x1a\n....").decode(), "not a base64 JPEG"),
])
def test_bad_image_names_camera(body, image, expect):
    bad = copy.deepcopy(body)
    bad["cameras"][3]["image"] = image
    msg = _errors(bad)
    assert "cameras.3.image" in msg and expect in msg


@pytest.mark.parametrize("field, value, expect", [
    ("speed", float("nan"), "ego_state.speed"),
    ("vx", float("inf"), "ego_state.vx"),
    ("speed", 250.0, "ego_state.speed"),
    ("yaw_rate", -9.0, "ego_state.yaw_rate"),
])
def test_ego_state_nonfinite_or_out_of_range(body, field, value, expect):
    bad = copy.deepcopy(body)
    bad["ego_state"][field] = value
    assert expect in _errors(bad)


def test_missing_and_unknown_fields(body):
    bad = copy.deepcopy(body)
    del bad["ego_state"]["ay"]
    bad["ego_state"]["warp"] = 9
    msg = _errors(bad)
    assert "ego_state.ay: Field required" in msg and "ego_state.warp" in msg


def test_unknown_command(body):
    bad = dict(body, command="fly")
    assert "command" in _errors(bad)


def test_geometry_checks(body):
    bad = copy.deepcopy(body)
    bad["cameras"][2]["intrinsics"][0][0] = -5.0
    assert "cameras.2.intrinsics" in _errors(bad)
    bad = copy.deepcopy(body)
    bad["cameras"][1]["extrinsics"][0][0] = 3.0  # outside what a rotation entry can be: the schema's bound
    assert "cameras.1.extrinsics.0.0: Input should be less than or equal to 1.001" in _errors(bad)
    bad["cameras"][1]["extrinsics"][0][:3] = [0.0, 0.0, 0.0]  # within the bounds, but not a rotation
    assert "cameras.1.extrinsics" in _errors(bad) and "determinant 0.000" in _errors(bad)
    bad = copy.deepcopy(body)
    bad["cameras"][4]["intrinsics"][2] = [0.0, 0.5, 1.0]
    assert "cameras.4.intrinsics.2.1: Input should be less than or equal to 0.000001" in _errors(bad)
    bad = copy.deepcopy(body)
    bad["history"] = [[0.0, 0.0]] * 3
    assert "history" in _errors(bad)


def test_chat_needs_question(body):
    data = {k: v for k, v in body.items() if k not in ("command", "history")}
    assert "question: Field required" in _errors(data, ChatRequest)
    assert _parse(dict(data, question="what is ahead?"), ChatRequest).command == "keep forward"


def test_malformed_json_message():
    msg = validation_message([{"type": "json_invalid", "loc": ("body", 17), "msg": "JSON decode error",
                               "ctx": {"error": "Expecting value"}}])
    assert msg == "body: malformed JSON (Expecting value) at position 17"


class Clock:
    def __init__(self):
        self.t = 0.0

    def __call__(self):
        return self.t


def test_session_store_lifecycle():
    clock = Clock()
    store = SessionStore(idle_s=10.0, clock=clock)
    co = store.checkout("s1", "scene-a", None)
    assert co.status == "new" and co.state is None and co.warning is None
    assert store.commit("s1", "STATE1", "scene-a", None, co.frames_before) == 1
    clock.t = 5.0
    co = store.checkout("s1", "scene-a", None)
    assert co.status == "continued" and co.state == "STATE1" and co.frames_before == 1
    assert store.commit("s1", "STATE2", "scene-a", None, co.frames_before) == 2
    # a different scene resets, so does frame 0 again
    assert store.checkout("s1", "scene-b", 3).status == "reset"
    assert store.checkout("s1", "scene-a", 0).status == "reset"
    # idle beyond session_idle_s: evicted, then rebuilt with a warning naming the setting
    clock.t = 16.0
    co = store.checkout("s1", "scene-a", 2)
    assert co.status == "rebuilt" and co.state is None and "session_idle_s" in co.warning
    assert len(store) == 0
    store.commit("s1", "STATE3", "scene-a", 2, co.frames_before)
    assert store.checkout("s1", "scene-a", 3).status == "continued"


def test_session_unknown_later_frame_is_rebuilt():
    store = SessionStore(idle_s=10.0, clock=Clock())
    co = store.checkout("moved", "scene", 7)
    assert co.status == "rebuilt" and "frame 7" in co.warning and "gone" in co.warning


def test_rendezvous_hash_is_stable_and_spreads():
    replicas = ["r-a", "r-b", "r-c"]
    pick = {s: max(replicas, key=lambda r: rendezvous_score(s, r)) for s in (f"s{i}" for i in range(60))}
    assert pick == {s: max(replicas, key=lambda r: rendezvous_score(s, r)) for s in pick}
    assert set(pick.values()) == set(replicas)
    # removing one replica only moves the sessions it held
    rest = ["r-a", "r-c"]
    for s, r in pick.items():
        if r != "r-b":
            assert max(rest, key=lambda x: rendezvous_score(s, x)) == r


def test_serve_config_file_is_valid():
    from ray.serve.schema import ServeDeploySchema

    raw = yaml.safe_load((REPO / "serve" / "config.yaml").read_text())
    schema = ServeDeploySchema.model_validate(raw)
    assert schema.http_options.host == "127.0.0.1"
    app = schema.applications[0]
    assert app.import_path == "odvla.serve.app:build_app"
    assert not app.deployments  # deployment settings come from ServeConfig only (through args.set)
    from odvla.platform.config import load_config
    from odvla.serve.app import planner_options

    s = load_config(overrides=app.args["set"]).serve
    opts = planner_options(s)
    assert opts["user_config"] == {"max_batch_size": s.max_batch_size, "batch_wait_timeout_s": s.batch_wait_timeout_s}
    assert opts["max_ongoing_requests"] >= 2 * s.max_batch_size
    assert opts["autoscaling_config"]["max_replicas"] == s.max_replicas


def test_planner_options_couple_batch_and_ongoing():
    from odvla.platform.config import load_config
    from odvla.serve.app import planner_options

    s = load_config(overrides=["serve.max_batch_size=16", "serve.max_ongoing_requests=4",
                               "serve.autoscaling=true"]).serve
    opts = planner_options(s)
    assert opts["max_ongoing_requests"] == 32 and opts["user_config"]["max_batch_size"] == 16  # 2 batches
    assert opts["autoscaling_config"]["min_replicas"] == 1 and opts["num_replicas"] is None
    assert opts["request_router_config"].request_router_kwargs == {"session_idle_s": 300.0}


def test_body_limit_counts_streamed_bodies():
    """A chunked body without Content-Length is cut at the limit too (the e2e test covers Content-Length)."""
    from fastapi import FastAPI
    from fastapi.testclient import TestClient

    from odvla.serve.body_limit import install_body_limit

    app = FastAPI()
    install_body_limit(app, 100)

    @app.post("/echo")
    async def echo(h: Health) -> Health:
        return h

    client = TestClient(app)
    r = client.post("/echo", content=(b"x" * 50 for _ in range(10)), headers={"Content-Type": "application/json"})
    assert r.status_code == 413 and "serve.max_body_bytes" in r.json()["message"]
    assert client.post("/echo", json={"status": "ok"}).status_code == 200


def test_session_question_does_not_advance_state():
    store = SessionStore(idle_s=10.0, clock=Clock())
    co = store.checkout("s", "scene", 0)
    store.commit("s", "S0", "scene", 0, co.frames_before)
    co = store.checkout("s", "scene", 0, read_only=True)  # /v1/chat about frame 0: no warning, same state
    assert co.status == "continued" and co.state == "S0" and co.warning is None
    assert store.checkout("s", "scene", 0).status == "reset"  # planning frame 0 again restarts the scene


def test_request_from_shards_matches_training_inputs(shards_dir, synth_root):
    """A sample sent through the API is preprocessed exactly like the training pipeline prepares it."""
    from odvla.platform.config import load_config
    from odvla.platform.data.collate import collate, rows_from_table
    from odvla.platform.data.rows import RowSpec
    from odvla.platform.data.shards import read_split
    from odvla.serve.client import request_from_shards
    from odvla.serve.preprocess import json_jpegs, scene_item

    cfg = load_config(model="tiny")
    table = read_split(shards_dir, "val").slice(1, 1)  # frame 1: part of the history is missing
    token = table.column("sample_token")[0].as_py()
    train_row = rows_from_table(table, synth_root, RowSpec.from_config(cfg.data, cfg.model.vision))[0]

    req = _parse(request_from_shards(shards_dir, token))
    assert req.frame_index == 1 and req.scene_token == table.column("scene_token")[0].as_py()
    hw = (cfg.model.vision.image_height, cfg.model.vision.image_width)
    item = scene_item(req, json_jpegs(req), [f"cameras.{i}.image" for i in range(6)], req.command, "planning", "",
                      hw)
    import numpy as np
    import torch

    assert item["images"].shape == train_row["images"].shape == (6, *hw, 3)  # both channel-last
    np.testing.assert_array_equal(item["images"], np.asarray(train_row["images"]))
    from odvla.serve.deployment import collate_items

    served, trained = collate_items([item])["images"], collate([train_row])["images"]
    assert served.dtype == trained.dtype == torch.uint8 and tuple(served.shape) == (1, 6, 3, *hw)
    assert torch.equal(served, trained)
    for key in ("intrinsics", "sensor2ego", "ego_state", "past_traj", "past_mask"):
        np.testing.assert_allclose(item[key], np.asarray(train_row[key]), rtol=1e-6, atol=1e-6, err_msg=key)
    assert item["command"] == int(train_row["command"])
    assert 0 < item["past_mask"].sum() < 4 and req.history[0] is None

    with pytest.raises(ValueError, match="no-such-token"):
        request_from_shards(shards_dir, "no-such-token")


def test_resolve_version_of_refs():
    from odvla.serve.deployment import resolve_version

    assert resolve_version("models:/odvla-planner/7") == "7"
    assert resolve_version("/exports/stage3") is None and resolve_version("runs:/abc/export") is None


def test_openapi_states_auth_only_with_a_token():
    """Without a token the document has no security scheme and no 401; with one, both (no Ray: the document
    comes from the routes, which the owner does not take part in)."""
    from types import SimpleNamespace

    from odvla.serve.app import create_api

    for token, auth in ((None, False), ("t", True)):
        spec = create_api(SimpleNamespace(token=token, max_body_bytes=1000, planner=None)).openapi()
        for path, method in (("/v1/plan", "post"), ("/v1/chat", "post"), ("/v1/model", "get")):
            op = spec["paths"][path][method]
            assert ("401" in op["responses"]) is auth and ("security" in op) is auth, (path, token)
        assert ("securitySchemes" in spec.get("components", {})) is auth
        plan = spec["paths"]["/v1/plan"]["post"]
        assert {"400", "413", "415", "422", "503", "504"} <= set(plan["responses"])
        assert plan["responses"]["503"]["headers"]["Retry-After"]["schema"] == {"type": "integer"}
        assert set(plan["requestBody"]["content"]) == {"application/json", "multipart/form-data"}
        form = plan["requestBody"]["content"]["multipart/form-data"]["schema"]
        assert form["required"] == ["request", *CAMERAS] and form["additionalProperties"] is False
        cams = spec["components"]["schemas"]["PlanRequest"]["properties"]["cameras"]
        names = [spec["components"]["schemas"][c["$ref"].rsplit("/", 1)[1]]["properties"]["name"]["const"]
                 for c in cams["prefixItems"]]
        assert names == list(CAMERAS) and cams["minItems"] == cams["maxItems"] == 6


@pytest.mark.parametrize("encoding,compact", [("absolute", False), ("absolute", True), ("delta", False),
                                              ("delta", True), ("residual", False), ("residual", True)])
def test_history_limits_are_what_the_encoding_can_write(encoding, compact):
    """Every history the bound admits is writable by the served encoding (the widest case: two consecutive
    points at opposite corners, the fastest ego state the schema accepts against the step), and where the encoding
    is what bounds it, one unit (0.01 m) further is not: the schema accepts exactly what the codec writes."""
    from odvla.model.config import TextConfig
    from odvla.model.traj_codec import TrajectoryCodec
    from odvla.serve.schemas import EGO_STATE_BOUNDS, POSITION_LIMIT_M, history_limits

    import numpy as np

    text = TextConfig(traj_encoding=encoding, compact_tokens=compact)
    codec = TrajectoryCodec(text)
    lx, ly = history_limits(text)

    def writes(x: float, y: float) -> bool:
        # x from -x to +x (text Y grows 2x), y from +y to -y (text X grows 2y); residual: the constant-velocity step
        # points the other way (vx = -70 m/s, vy = +20 m/s), so step - cv is widest
        past = np.array([[-x, y], [x, -y], [x, -y], [x, -y]])
        ego = [EGO_STATE_BOUNDS["vx"][0], EGO_STATE_BOUNDS["vy"][1], 0, 0, 0, 70.0, 0]
        try:
            codec.encode_history(past, ego)
            codec.encode_history(past[[1, 0, 0, 0]], [-v if i < 2 else v for i, v in enumerate(ego)])
        except ValueError:
            return False
        return True

    assert writes(lx, ly)
    if (lx, ly) == (POSITION_LIMIT_M, POSITION_LIMIT_M):  # the physical cap, not the encoding, binds
        assert encoding == "absolute" or not compact
    else:
        assert not writes(lx + 0.01, ly) and not writes(lx, ly + 0.01)
    expected = {("delta", True): (49.99, 49.99), ("residual", True): (32.49, 44.99)}  # (99.99 - cv) / 2
    assert (lx, ly) == expected.get((encoding, compact), (POSITION_LIMIT_M, POSITION_LIMIT_M))


def test_request_models_state_and_enforce_the_served_history_bound(body):
    from odvla.serve.schemas import request_models

    plan, form, chat, _ = request_models((32.49, 44.99), "the note")
    assert plan.__name__ == "PlanRequest" and form.__name__ == "PlanForm" and chat.__name__ == "ChatRequest"
    hist = plan.model_json_schema()["properties"]["history"]
    point = hist["anyOf"][0]["items"]["anyOf"][0]
    assert [(c["minimum"], c["maximum"]) for c in point["prefixItems"]] == [(-32.49, 32.49), (-44.99, 44.99)]
    assert "|x| <= 32.49 m, |y| <= 44.99 m: the note" in hist["description"]
    ok = dict(body, history=[[-32.49, 44.99], [32.49, -44.99], None, [0.0, 0.0]])
    assert _parse(ok, plan).history[1] == (32.49, -44.99)
    msg = _errors(dict(body, history=[[-3.0, 0.0], [-1.5, 0.0], [40.0, 0.0], None]), plan)
    assert msg.startswith("history.2.0:") and "less than or equal to 32.49" in msg


def test_a_batch_with_one_bad_input_gives_that_row_its_error_and_the_others_their_plans(body):
    """``Planner._process`` (the replica's batch step, without Serve): the batch's generate fails on one input the
    model cannot take (a history step the compact residual encoding cannot write), so the rows rerun one by one:
    that row gets its error, the others their plans."""
    import asyncio
    import time

    import numpy as np
    import torch

    from odvla.model.constrained_decoding import PRE
    from odvla.model.vla import OpenDriveVLA
    from odvla.platform.config import load_config
    from odvla.serve.deployment import Planner
    from odvla.serve.preprocess import json_jpegs, scene_item

    cfg = load_config(model="tiny")
    torch.manual_seed(0)
    planner = object.__new__(Planner.func_or_class)  # the replica's state, without a Serve replica around it
    planner.model, planner.model_cfg, planner.device = OpenDriveVLA(cfg.model).eval(), cfg.model, "cpu"
    planner.min_plan_tokens = int(planner.model.grammar.min_to_finish(PRE)) + 1
    planner.replica, planner._fatal, planner.max_batch_size, planner.batch_wait_timeout_s = "r", None, 4, 0.0
    planner.info = {"ref": "x", "version": None, "preset": "tiny", "checksum": "c"}
    hw = (cfg.model.vision.image_height, cfg.model.vision.image_width)
    req = _parse(body)
    item = scene_item(req, json_jpegs(req), [f"cameras.{i}.image" for i in range(6)], req.command, "planning", "",
                      hw)
    bad = dict(item, past_traj=np.array([[-150.0, 0.0], [0.0, 0.0], [0.0, 0.0], [0.0, 0.0]], np.float32),
               past_mask=np.ones(4, np.float32))
    good2 = dict(item, command=0)

    def run(items):
        return asyncio.run(planner._process([(it, None, time.perf_counter()) for it in items]))

    outs = run([item, bad, good2])
    assert set(outs[1]) == {"input_error"} and "outside the compact encoding's range" in outs[1]["input_error"]
    for got in (outs[0], outs[2]):
        assert "input_error" not in got and got["batch_size"] == 1  # rerun row by row
        assert got["parsed"] and len(got["waypoints"]) == 6 and np.isfinite(got["waypoints"]).all()
