"""The Serve planner end to end over HTTP on loopback: a real tiny export served by Ray Serve (2 model replicas).

Covers the API (plan, chat, model, health, auth), bad input (4xx naming the field, 413, never 5xx, schemathesis
fuzz from the OpenAPI spec), dynamic batching, session affinity, backpressure (503) and a killed replica being
replaced while the service keeps answering.
"""
from __future__ import annotations

import base64
import copy
import json
import os
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest

pytestmark = pytest.mark.integration

PORT = 8123
URL = f"http://127.0.0.1:{PORT}"
TOKEN = "serve-test-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
APP = "odvla-test"
MAX_BODY = 2 * 1024 * 1024
MODEL_REF = "models:/odvla-planner/champion"


@pytest.fixture(scope="module")
def registry(tiny_export, tmp_path_factory):
    """A real MLflow store (SQLite) where the export is version 1 of odvla-planner, alias 'champion'."""
    from mlflow import MlflowClient

    from odvla.platform.tracking.registry import register_export
    from odvla.platform.tracking.store import ensure_experiment

    uri = f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"
    client = MlflowClient(uri)
    run = client.create_run(ensure_experiment(client, "serve-test", uri))
    client.log_artifacts(run.info.run_id, str(tiny_export), "export")
    client.set_terminated(run.info.run_id)
    version = register_export(client, run.info.run_id, alias="champion")
    return uri, version


@pytest.fixture(scope="module")
def served(ray_session, registry):
    """The registry's 'champion' served on 127.0.0.1:8123 with auth on, 2 Planner replicas, a small queue and a
    2 MB body limit."""
    from ray import serve

    from odvla.platform.config import load_config
    from odvla.serve.app import AppArgs, build_app_from_config

    cfg = load_config(overrides=[f"tracking.tracking_uri={registry[0]}",
        "serve.num_replicas=2", "serve.num_cpus=0.5", "serve.max_batch_size=4", "serve.max_ongoing_requests=4",
        "serve.batch_wait_timeout_s=0.01", "serve.max_queued_requests=8", f"serve.max_body_bytes={MAX_BODY}",
        "serve.request_timeout_s=120", "serve.health_check_period_s=2"])
    old = os.environ.get("ODVLA_SERVE_TOKEN")
    os.environ["ODVLA_SERVE_TOKEN"] = TOKEN
    try:
        app = build_app_from_config(AppArgs(model=MODEL_REF), cfg.serve, cfg.tracking)
    finally:
        if old is None:
            os.environ.pop("ODVLA_SERVE_TOKEN", None)
        else:
            os.environ["ODVLA_SERVE_TOKEN"] = old
    serve.start(http_options={"host": "127.0.0.1", "port": PORT})
    serve.run(app, name=APP, route_prefix="/")
    client = httpx.Client(base_url=URL, timeout=180)
    deadline = time.monotonic() + 180
    while client.get("/readyz").status_code != 200:
        assert time.monotonic() < deadline, "planner app never became ready"
        time.sleep(0.5)
    yield client
    client.close()
    serve.shutdown()


@pytest.fixture(scope="module")
def body():
    from odvla.serve.bench import synthetic_request

    b = synthetic_request(image_hw=(90, 160))
    b["max_new_tokens"] = 120
    return b


def _plan(client, body, **kw):
    return client.post("/v1/plan", json=body, headers=AUTH, **kw)


def test_health_ready_and_model_from_registry(served, tiny_export, registry):
    from odvla.platform.export import load_export
    from odvla.serve.deployment import weights_fingerprint

    assert served.get("/healthz").json() == {"status": "ok", "detail": None}
    ready = served.get("/readyz")
    assert ready.status_code == 200 and ready.json()["detail"] == MODEL_REF
    info = served.get("/v1/model", headers=AUTH).json()
    model, _ = load_export(tiny_export)
    assert info["checksum"] == weights_fingerprint(model)  # the registry's champion is the export we wrote
    assert info["preset"] == "tiny" and info["ref"] == MODEL_REF and info["version"] == registry[1] == "1"
    assert info["max_batch_size"] == 4
    spec = served.get("/openapi.json").json()
    assert {"/v1/plan", "/v1/chat", "/v1/model", "/healthz", "/readyz"} <= set(spec["paths"])


def test_auth_required_on_v1(served, body):
    r = served.post("/v1/plan", json=body)
    assert r.status_code == 401 and "bearer token" in r.json()["message"]
    r = served.get("/v1/model", headers={"Authorization": "Bearer wrong"})
    assert r.status_code == 401 and "invalid" in r.json()["message"]


def test_plan_returns_six_waypoints(served, body, tiny_export):
    r = _plan(served, body)
    assert r.status_code == 200, r.text
    out = r.json()
    # constrained decoding makes every plan parse by construction: the served answer is the export's own
    # constrained answer on the same input, and without the constraint the untrained model writes no trajectory
    from odvla.platform.eval.decoding_check import decoding_comparison
    from odvla.platform.export import load_export
    from odvla.serve.deployment import collate_items
    from odvla.serve.preprocess import json_jpegs, scene_item
    from odvla.serve.schemas import PlanRequest

    model, _ = load_export(tiny_export)
    req = PlanRequest.model_validate_json(json.dumps(body))
    hw = (model.config.vision.image_height, model.config.vision.image_width)
    item = scene_item(req, json_jpegs(req), [f"cameras.{i}.image" for i in range(6)], req.command, "planning", "",
                      hw)
    dc = decoding_comparison(model, [item], max_new_tokens=body.get("max_new_tokens"), collate_fn=collate_items)
    print(f"[serve figure] untrained tiny export, parse rate without constrained decoding: "
          f"{dc['decoding/parse_rate_unconstrained']:.0%}, with: {dc['decoding/parse_rate_constrained']:.0%}")
    assert out["answer"] == dc["decoding/answers"][0][0] and out["parsed"] is True
    assert dc["decoding/parse_rate_unconstrained"] == 0.0
    wp = np.asarray(out["waypoints"])
    assert wp.shape == (6, 2) and np.isfinite(wp).all()
    # the text frame is (X right, Y forward) = (-y, x)
    np.testing.assert_allclose(np.asarray(out["waypoints_text_frame"]), np.stack([-wp[:, 1], wp[:, 0]], 1))
    assert out["session"] is None and out["warnings"] == []
    t = out["timings"]
    assert set(t) == {"http_ms", "parse_ms", "decode_ms", "queue_ms", "batch_ms", "generate_ms", "generate_parts",
                      "total_ms", "cpu_ms", "batch_size", "generated_tokens"}
    assert t["generated_tokens"] > 0 and out["model"]["preset"] == "tiny"
    stages = sum(t[k] for k in ("http_ms", "parse_ms", "decode_ms", "queue_ms", "batch_ms", "generate_ms"))
    assert 0 < stages <= t["total_ms"] * 1.01 and t["generate_ms"] > 0 and t["cpu_ms"]["decode_ms"] > 0
    # generate_ms split into the plan's parts: they add up to it (less the call's own overhead), and a batch of one
    # takes as many decode steps as its answer has tokens
    parts = t["generate_parts"]
    split = sum(parts[k] for k in ("vision_ms", "prompt_ms", "prefill_ms", "decode_ms", "parse_ms"))
    assert t["batch_size"] > 1 or parts["decode_steps"] == t["generated_tokens"]
    assert all(parts[k] > 0 for k in ("vision_ms", "prefill_ms", "decode_ms")) and split <= t["generate_ms"] * 1.01


def _multipart(body: dict, drop=(), extra=(), replace=None):
    """``body`` as multipart/form-data parts (list of (name, (filename, bytes, type))) with edits for bad input."""
    from odvla.serve.client import jpeg_bytes

    meta = {**body, "cameras": [{k: v for k, v in c.items() if k != "image"} for c in body["cameras"]]}
    parts = [("request", ("request.json", json.dumps(meta).encode(), "application/json"))]
    parts += [(c["name"], (f"{c['name']}.jpg", jpeg_bytes(c["image"]), "image/jpeg")) for c in body["cameras"]]
    parts = [(n, (replace or {}).get(n, v)) for n, v in parts if n not in drop]
    return parts + list(extra)


def test_multipart_plan_equals_json_plan(served, body):
    from odvla.serve.client import PlannerClient

    r = served.post("/v1/plan", files=_multipart(body), headers=AUTH)
    assert r.status_code == 200, r.text
    js = _plan(served, body).json()
    assert r.json()["waypoints"] == js["waypoints"] and r.json()["answer"] == js["answer"]
    with PlannerClient(URL, token=TOKEN) as client:  # the Python client sends multipart by default
        assert client.upload == "multipart" and client.plan(**body)["waypoints"] == js["waypoints"]


BAD_PARTS = [
    ("missing camera", dict(drop=("CAM_BACK",)), "part CAM_BACK: missing"),
    ("missing request", dict(drop=("request",)), "part request: missing"),
    ("png camera", dict(replace={"CAM_FRONT_LEFT": ("x.png", b"\x89PNG\r\n\x1a\n" + b"\x00" * 64, "image/png")}),
     "part CAM_FRONT_LEFT: not a JPEG"),
    ("truncated jpeg", dict(replace={"CAM_FRONT": ("f.jpg", b"\xff\xd8\xff\xe0" + b"\x00" * 64, "image/jpeg")}),
     "CAM_FRONT: undecodable image"),
    ("unknown camera", dict(extra=[("CAM_TOP", ("t.jpg", b"\xff\xd8\xff", "image/jpeg"))]), "part 'CAM_TOP': unknown"),
    ("duplicated camera", dict(extra=[("CAM_BACK", ("b.jpg", b"\xff\xd8\xff", "image/jpeg"))]),
     "part CAM_BACK: given 2 times"),
    ("bad json part", dict(replace={"request": ("r.json", b"{not json", "application/json")}),
     "part request: malformed JSON"),
]


@pytest.mark.parametrize("name, edit, expect", BAD_PARTS, ids=[b[0] for b in BAD_PARTS])
def test_bad_multipart_is_4xx_naming_the_part(served, body, name, edit, expect):
    r = served.post("/v1/plan", files=_multipart(body, **edit), headers=AUTH)
    assert 400 <= r.status_code < 500, r.text
    assert expect in r.json()["message"], r.json()


def test_bad_multipart_fields_and_bodies(served, body):
    bad = copy.deepcopy(body)
    bad["ego_state"]["speed"] = -1.0
    r = served.post("/v1/plan", files=_multipart(bad), headers=AUTH)
    assert r.status_code == 422 and "request.ego_state.speed" in r.json()["message"]
    r = served.post("/v1/plan", content=b"--x\r\nno headers", headers={**AUTH, "Content-Type": "multipart/form-data"})
    assert r.status_code == 400 and "multipart" in r.json()["message"]
    r = served.post("/v1/plan", content=b"cameras=1", headers={**AUTH, "Content-Type": "text/plain"})
    assert r.status_code == 415 and "text/plain" in r.json()["message"]


def test_chat_answers(served, body):
    req = {k: v for k, v in body.items() if k != "command"}
    req["question"] = "What should the ego vehicle watch out for?"
    r = served.post("/v1/chat", json=req, headers=AUTH)
    assert r.status_code == 200, r.text
    out = r.json()
    # a chat answer: no plan fields, generated within the cap, the same answer for the same question (greedy)
    assert "waypoints" not in out and out["model"]["preset"] == "tiny"
    assert 0 < out["timings"]["generated_tokens"] <= body["max_new_tokens"]
    assert served.post("/v1/chat", files=_multipart(req), headers=AUTH).json()["answer"] == out["answer"]


def _bad(body, mutate):
    b = copy.deepcopy(body)
    mutate(b)
    return b


BAD_INPUTS = [
    ("five cameras", lambda b: b.update(cameras=b["cameras"][:5]), "cameras"),
    ("undecodable jpeg", lambda b: b["cameras"][2].update(image=base64.b64encode(b"\xff\xd8" + b"\x00" * 64).decode()),
     "cameras.2.image"),
    ("not base64", lambda b: b["cameras"][0].update(image="%%%%"), "cameras.0.image"),
    ("speed out of range", lambda b: b["ego_state"].update(speed=-3.0), "ego_state.speed"),
    ("unknown command", lambda b: b.update(command="go home"), "command"),
    ("bad intrinsics", lambda b: b["cameras"][1].update(intrinsics=[[1, 0], [0, 1]]), "cameras.1.intrinsics"),
]


@pytest.mark.parametrize("name, mutate, field", BAD_INPUTS, ids=[b[0] for b in BAD_INPUTS])
def test_bad_input_is_4xx_naming_the_field(served, body, name, mutate, field):
    r = _plan(served, _bad(body, mutate))
    assert r.status_code == 422, r.text
    assert field in r.json()["message"]


def test_nan_and_malformed_json(served, body):
    text = json.dumps(body).replace('"vx": 5.0', '"vx": NaN')
    r = served.post("/v1/plan", content=text, headers={**AUTH, "Content-Type": "application/json"})
    assert r.status_code == 422 and "ego_state.vx" in r.json()["message"]
    r = served.post("/v1/plan", content=b'{"cameras": [', headers={**AUTH, "Content-Type": "application/json"})
    assert r.status_code == 400 and r.json()["message"].startswith("body: malformed JSON")


def test_oversize_body_is_413(served, body):
    big = copy.deepcopy(body)
    big["question"] = "x" * 10
    big["cameras"][0]["image"] = base64.b64encode(b"\xff\xd8" + b"\x00" * (MAX_BODY + 10)).decode()
    r = _plan(served, big)
    assert r.status_code == 413, r.text
    assert "serve.max_body_bytes" in r.json()["message"] and str(MAX_BODY) in r.json()["message"]


def test_concurrent_requests_are_batched(served, body):
    with ThreadPoolExecutor(8) as pool:
        rs = list(pool.map(lambda _: _plan(served, body), range(8)))
    assert [r.status_code for r in rs] == [200] * 8
    sizes = [r.json()["timings"]["batch_size"] for r in rs]
    assert max(sizes) > 1 and max(sizes) <= 4  # batches form, never above max_batch_size
    assert len({json.dumps(r.json()["waypoints"]) for r in rs}) == 1  # same input, same plan, batched or not


def test_sessions_stick_to_their_replica(served, body):
    """Each session's frames run on one replica and continue its tracking state; both replicas get sessions."""
    def run_session(sid):
        out = []
        for frame in range(3):
            b = dict(body, session_id=sid, scene_token=f"scene-{sid}", frame_index=frame)
            r = _plan(served, b)
            assert r.status_code == 200, r.text
            out.append(r.json()["session"])
        return out

    seen: dict[str, list] = {}
    i = 0
    with ThreadPoolExecutor(4) as pool:
        while len({s[0]["replica"] for s in seen.values()}) < 2:
            assert i < 40, "every session landed on one replica"
            for sid, res in zip([f"s{i + k}" for k in range(4)], pool.map(run_session, [f"s{i + k}" for k in range(4)])):
                seen[sid] = res
            i += 4
    for sid, frames in seen.items():
        assert len({f["replica"] for f in frames}) == 1, f"session {sid} moved between replicas"
        assert [f["state"] for f in frames] == ["new", "continued", "continued"]
        assert [f["frames"] for f in frames] == [1, 2, 3]
    # a question about the session's current frame uses its state without advancing it
    chat = {k: v for k, v in body.items() if k != "command"}
    r = served.post("/v1/chat", json=dict(chat, question="what is ahead?", session_id="s0", scene_token="scene-s0",
                                          frame_index=2), headers=AUTH)
    assert r.status_code == 200 and r.json()["session"]["state"] == "continued" and r.json()["warnings"] == []
    assert r.json()["session"]["frames"] == 3 and r.json()["session"]["replica"] == seen["s0"][0]["replica"]
    # a new scene on the same session resets the state
    r = _plan(served, dict(body, session_id="s0", scene_token="another-scene", frame_index=0))
    assert r.json()["session"]["state"] == "reset"


def test_overload_gives_503_not_a_crash(served, body):
    def call(_):
        return _plan(served, body).status_code

    with ThreadPoolExecutor(64) as pool:
        codes = list(pool.map(call, range(64)))
    assert set(codes) <= {200, 503}, codes
    assert 503 in codes and 200 in codes
    assert _plan(served, body).status_code == 200  # and it recovers


def _real_scene(case, jpeg: bytes, extrinsics: list) -> None:
    """Positive cases: what JSON Schema cannot state is made true (a decodable JPEG, a rotation of determinant 1;
    the schema bounds every entry), and the token cap is kept small so the fuzz stays quick. The rest is as
    generated, the history included: its schema bounds each point by what the served encoding can write."""
    body = case.body
    if not isinstance(body, dict):
        return
    if "cameras" in body:  # JSON
        for cam, t in zip(body["cameras"], extrinsics):
            cam["image"] = base64.b64encode(jpeg).decode()
            cam["extrinsics"] = [row[:3] + [cam["extrinsics"][i][3]] for i, row in enumerate(t[:3])] + [t[3]]
        meta = body
    else:  # multipart: the JPEG parts and the JSON 'request' part
        for name in list(body):
            if name.startswith("CAM_"):
                body[name] = jpeg
        meta = body.get("request")
        if isinstance(meta, dict):
            for cam, t in zip(meta.get("cameras", []), extrinsics):
                cam["extrinsics"] = t
    if isinstance(meta, dict) and meta.get("max_new_tokens"):
        meta["max_new_tokens"] = min(meta["max_new_tokens"], 40)


def test_schemathesis_all_checks(served, body):
    """Every schemathesis check (status codes, content types, response schemas and headers, positive data
    accepted, negative data rejected, auth not ignored, no 5xx) on JSON and multipart cases from /openapi.json."""
    import hypothesis
    import schemathesis
    from hypothesis import HealthCheck, given, settings
    from schemathesis import GenerationMode

    from odvla.serve.client import jpeg_bytes

    spec = served.get("/openapi.json").json()
    scheme = spec["components"]["securitySchemes"]["HTTPBearer"]
    assert (scheme["type"], scheme["scheme"]) == ("http", "bearer")
    plan = spec["paths"]["/v1/plan"]["post"]
    assert {"400", "401", "413", "415", "422", "503", "504"} <= set(plan["responses"])
    cams = spec["components"]["schemas"]["PlanRequest"]["properties"]["cameras"]
    assert cams["minItems"] == cams["maxItems"] == 6 and len(cams["prefixItems"]) == 6
    # the tiny export writes compact residuals: the history bound is its own (schemas.history_limits)
    hist = spec["components"]["schemas"]["PlanRequest"]["properties"]["history"]["anyOf"][0]["items"]["anyOf"][0]
    assert [c["maximum"] for c in hist["prefixItems"]] == [32.49, 44.99]
    schema = schemathesis.openapi.from_dict(spec)
    jpeg = jpeg_bytes(body["cameras"][0]["image"])
    extrinsics = [c["extrinsics"] for c in body["cameras"]]
    failures, statuses = [], {}
    for result in schema.get_all_operations():
        op = result.ok()
        modes = [GenerationMode.POSITIVE] + ([GenerationMode.NEGATIVE] if op.method.upper() == "POST" else [])
        for mode in modes:

            @settings(max_examples=25 if mode == GenerationMode.POSITIVE else 15, deadline=None, database=None,
                      derandomize=True, suppress_health_check=list(HealthCheck), phases=[hypothesis.Phase.generate])
            @given(case=op.as_strategy(generation_mode=mode))
            def fuzz(case):
                if mode == GenerationMode.POSITIVE:
                    _real_scene(case, jpeg, extrinsics)
                try:
                    r = case.call_and_validate(base_url=URL, headers=AUTH, timeout=120)
                    statuses.setdefault((op.label, mode.value), set()).add(r.status_code)
                except Exception as e:  # collect every failing check, report them together
                    failures.append((op.label, mode.value, case.media_type, str(e)[:600]))

            fuzz()
    assert failures == [], "\n\n".join(map(str, failures[:5]))
    # the fuzz reached the model (positive cases planned) and the validation (negative cases rejected)
    assert 200 in statuses[("POST /v1/plan", "positive")] and 200 in statuses[("POST /v1/chat", "positive")]
    assert 422 in statuses[("POST /v1/plan", "negative")]


def test_killed_replica_is_replaced_and_service_keeps_answering(served, body):
    import ray
    from ray import serve

    sid = "killed-session"
    first = _plan(served, dict(body, session_id=sid, scene_token="k", frame_index=0)).json()["session"]
    victim = first["replica"]
    ray.kill(ray.get_actor(victim, namespace="serve"), no_restart=True)
    # stateless traffic keeps succeeding while the replica is replaced
    for _ in range(4):
        r = _plan(served, body)
        assert r.status_code == 200, r.text
    # the session's state died with its replica: rebuilt, and the response says so
    r = _plan(served, dict(body, session_id=sid, scene_token="k", frame_index=1))
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["session"]["state"] == "rebuilt" and out["session"]["replica"] != victim
    assert any("gone" in w and "rebuilt" in w for w in out["warnings"]), out["warnings"]
    r = _plan(served, dict(body, session_id=sid, scene_token="k", frame_index=2))
    assert r.json()["session"]["state"] == "continued"
    # Serve brings the deployment back to 2 running replicas
    deadline = time.monotonic() + 120
    while True:
        dep = serve.status().applications[APP].deployments["Planner"]
        if dep.replica_states.get("RUNNING", 0) == 2 and dep.status == "HEALTHY":
            break
        assert time.monotonic() < deadline, f"replica not replaced: {dep}"
        time.sleep(1)


def test_plan_cli_with_image_dir(served, body, tmp_path, capsys, monkeypatch):
    from odvla.platform.cli.main import main
    from odvla.serve.client import write_image_dir

    req = {k: v for k, v in body.items() if k != "max_new_tokens"}
    write_image_dir(req, tmp_path / "sample")
    monkeypatch.setenv("ODVLA_SERVE_TOKEN", TOKEN)
    assert main(["plan", "--image-dir", str(tmp_path / "sample"), "--url", URL]) == 0
    out = capsys.readouterr().out
    assert "waypoints (ego frame" in out and "t+3.0s" in out
    assert main(["plan", "--image-dir", str(tmp_path / "sample"), "--url", URL, "--json"]) == 0
    assert len(json.loads(capsys.readouterr().out)["waypoints"]) == 6
    monkeypatch.delenv("ODVLA_SERVE_TOKEN")
    assert main(["plan", "--image-dir", str(tmp_path / "sample"), "--url", URL]) == 1  # no token: refused
    assert "401" in capsys.readouterr().err
    assert main(["plan", "--image-dir", str(tmp_path / "missing"), "--url", URL]) == 2


def test_plan_cli_with_shards(served, shards_dir, tmp_path, capsys, monkeypatch):
    from odvla.platform.cli.main import main
    from odvla.platform.data.shards import read_split

    token = read_split(shards_dir, "val", columns=["sample_token"]).column("sample_token")[3].as_py()
    monkeypatch.setenv("ODVLA_SERVE_TOKEN", TOKEN)
    args = ["plan", "--shards", str(shards_dir), "--sample", token, "--url", URL, "--session", "cli-scene",
            "--save-dir", str(tmp_path / "saved"), "--json"]
    assert main(args) == 0
    out = json.loads(capsys.readouterr().out)
    assert len(out["waypoints"]) == 6 and out["session"]["session_id"] == "cli-scene"
    assert sorted(p.name for p in (tmp_path / "saved").iterdir())[-1] == "sample.json"
    assert main(["plan", "--image-dir", str(tmp_path / "saved"), "--url", URL, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["waypoints"] == out["waypoints"]
