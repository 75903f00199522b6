"""``PlannerClient``: the Python client of the HTTP API v1, plus builders of request bodies from prepared data.

    from odvla.serve.client import PlannerClient, request_from_image_dir
    client = PlannerClient("http://127.0.0.1:8000")          # token: ODVLA_SERVE_TOKEN when set
    plan = client.plan(**request_from_image_dir("sample_dir"))
    plan["waypoints"]    # [[x, y] * 6] metres, ego frame (x forward, y left), t+0.5 .. t+3.0 s

The client sends ``multipart/form-data`` by default (the JPEGs as bytes, one part per camera, and a ``request``
JSON part; see ``odvla.serve.upload``); ``upload="json"`` sends the JSON body with base64 images instead.
A camera dict's ``image`` is JPEG bytes or base64 text.

An image directory holds one JPEG per camera named ``<CAMERA>.jpg`` (``CAMERAS``) and ``sample.json`` with
``intrinsics`` (per camera [3x3] pixels of those JPEGs), ``sensor2ego`` (per camera [4x4]), ``ego_state`` (a dict
of ``EGO_STATE_FIELDS``), ``command`` and optionally ``history`` ([4x2]), ``scene_token``, ``frame_index``.
``request_from_shards`` builds the same from a row of the Parquet shards; ``write_image_dir`` saves it.
"""
from __future__ import annotations

import base64
import json
import os
import time
from pathlib import Path
from typing import Any, Optional

import httpx
import numpy as np

from odvla.model.constants import CAMERAS, COMMANDS, EGO_STATE_FIELDS, PAST_STEPS
from odvla.serve.auth import TOKEN_ENV


class PlannerError(RuntimeError):
    """An HTTP error answer of the planner; ``status`` and the server's ``message`` (naming the field)."""

    def __init__(self, status: int, message: str):
        super().__init__(f"HTTP {status}: {message}")
        self.status, self.message = status, message


def encode_image(image: bytes | str | os.PathLike) -> str:
    """JPEG bytes or a path -> base64 text for the ``cameras[i].image`` field."""
    raw = image if isinstance(image, (bytes, bytearray)) else Path(image).read_bytes()
    return base64.b64encode(raw).decode("ascii")


def jpeg_bytes(image: bytes | str) -> bytes:
    """A camera's ``image`` (JPEG bytes or base64 text) -> JPEG bytes."""
    return bytes(image) if isinstance(image, (bytes, bytearray)) else base64.b64decode(image)


UPLOADS = ("multipart", "json")


def encode_body(body: dict, upload: str = "multipart") -> tuple[bytes, str]:
    """A request body (cameras with ``image``) -> (bytes, Content-Type) for ``upload`` 'multipart' (one JPEG part
    per camera named after it, plus the ``request`` JSON part without images) or 'json' (base64 images)."""
    if upload not in UPLOADS:
        raise ValueError(f"upload={upload!r}: expected one of {UPLOADS}")
    if upload == "json":
        cams = [{**c, "image": c["image"] if isinstance(c["image"], str) else encode_image(c["image"])}
                for c in body["cameras"]]
        return json.dumps({**body, "cameras": cams}).encode(), "application/json"
    boundary = "odvla-" + os.urandom(12).hex()
    meta = {**body, "cameras": [{k: v for k, v in c.items() if k != "image"} for c in body["cameras"]]}
    chunks = []
    for name, filename, ctype, data in (
            [("request", "request.json", "application/json", json.dumps(meta).encode())]
            + [(c["name"], f"{c['name']}.jpg", "image/jpeg", jpeg_bytes(c["image"])) for c in body["cameras"]]):
        chunks.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"; filename="{filename}"\r\n'
                      f"Content-Type: {ctype}\r\n\r\n".encode() + data + b"\r\n")
    chunks.append(f"--{boundary}--\r\n".encode())
    return b"".join(chunks), f"multipart/form-data; boundary={boundary}"


class PlannerClient:
    def __init__(self, url: str = "http://127.0.0.1:8000", token: Optional[str] = None, timeout_s: float = 60.0,
                 upload: str = "multipart"):
        if upload not in UPLOADS:
            raise ValueError(f"upload={upload!r}: expected one of {UPLOADS}")
        self.url = url.rstrip("/")
        self.upload = upload
        token = token if token is not None else os.environ.get(TOKEN_ENV) or None
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._http = httpx.Client(base_url=self.url, headers=headers, timeout=timeout_s)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> "PlannerClient":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _check(self, r: httpx.Response) -> dict:
        if r.status_code >= 400:
            try:
                msg = r.json().get("message") or r.text
            except ValueError:
                msg = r.text
            raise PlannerError(r.status_code, msg)
        return r.json()

    # ------------------------------------------------------------------ endpoints
    def health(self) -> dict:
        return self._check(self._http.get("/healthz"))

    def ready(self) -> bool:
        try:
            return self._http.get("/readyz").status_code == 200
        except httpx.HTTPError:
            return False

    def wait_ready(self, timeout_s: float = 120.0) -> None:
        deadline = time.monotonic() + timeout_s
        while not self.ready():
            if time.monotonic() > deadline:
                raise TimeoutError(f"planner at {self.url} not ready after {timeout_s:g} s")
            time.sleep(0.5)

    def model(self) -> dict:
        return self._check(self._http.get("/v1/model"))

    def plan(self, cameras: list[dict], ego_state: dict, command: str, history=None, question: Optional[str] = None,
             session_id: Optional[str] = None, scene_token: Optional[str] = None,
             frame_index: Optional[int] = None, **extra: Any) -> dict:
        body = _scene_body(cameras, ego_state, history, session_id, scene_token, frame_index, extra)
        body["command"] = command
        if question:
            body["question"] = question
        return self._post("/v1/plan", body)

    def chat(self, cameras: list[dict], ego_state: dict, question: str, command: str = "keep forward",
             history=None, session_id: Optional[str] = None, scene_token: Optional[str] = None,
             frame_index: Optional[int] = None, **extra: Any) -> dict:
        body = _scene_body(cameras, ego_state, history, session_id, scene_token, frame_index, extra)
        body.update(question=question, command=command)
        return self._post("/v1/chat", body)

    def _post(self, path: str, body: dict) -> dict:
        content, ctype = encode_body(body, self.upload)
        return self._check(self._http.post(path, content=content, headers={"Content-Type": ctype}))


def _scene_body(cameras, ego_state, history, session_id, scene_token, frame_index, extra) -> dict:
    body: dict[str, Any] = {"cameras": cameras, "ego_state": ego_state}
    if history is not None:
        body["history"] = [None if p is None else [float(p[0]), float(p[1])] for p in history]
    for k, v in (("session_id", session_id), ("scene_token", scene_token), ("frame_index", frame_index)):
        if v is not None:
            body[k] = v
    body.update({k: v for k, v in extra.items() if v is not None})
    return body


# ---------------------------------------------------------------------- request bodies from data
def cameras_payload(jpegs: list[bytes], intrinsics, sensor2ego, base64_images: bool = True) -> list[dict]:
    """The ``cameras`` of a request: name, image (base64 text, or the JPEG bytes with ``base64_images=False``),
    intrinsics [3x3] and extrinsics [4x4]."""
    k = np.asarray(intrinsics, dtype=float).reshape(len(CAMERAS), 3, 3)
    t = np.asarray(sensor2ego, dtype=float).reshape(len(CAMERAS), 4, 4)
    return [{"name": cam, "image": encode_image(jpegs[i]) if base64_images else bytes(jpegs[i]),
             "intrinsics": k[i].tolist(), "extrinsics": t[i].tolist()} for i, cam in enumerate(CAMERAS)]


def request_from_image_dir(directory: str | os.PathLike) -> dict:
    """Keyword arguments of ``PlannerClient.plan`` from an image directory (see the module docstring)."""
    d = Path(directory)
    meta_path = d / "sample.json"
    if not meta_path.exists():
        raise FileNotFoundError(f"{meta_path}: missing (intrinsics, sensor2ego, ego_state, command)")
    try:
        meta = json.loads(meta_path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{meta_path}: not valid JSON ({e})") from None
    for key in ("intrinsics", "sensor2ego", "ego_state", "command"):
        if key not in meta:
            raise ValueError(f"{meta_path}: missing key {key!r}")
    jpegs = []
    for cam in CAMERAS:
        p = d / f"{cam}.jpg"
        if not p.exists():
            raise FileNotFoundError(f"{p}: missing camera image (expected one <CAMERA>.jpg per camera {CAMERAS})")
        jpegs.append(p.read_bytes())
    out = {"cameras": cameras_payload(jpegs, meta["intrinsics"], meta["sensor2ego"]),
           "ego_state": meta["ego_state"], "command": meta["command"]}
    for key in ("history", "scene_token", "frame_index", "question", "session_id"):
        if meta.get(key) is not None:
            out[key] = meta[key]
    return out


def request_from_shards(shards: str | os.PathLike, sample_token: str, dataroot: Optional[str] = None) -> dict:
    """Keyword arguments of ``PlannerClient.plan`` for one keyframe of prepared Parquet shards."""
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    from odvla.platform.data.shards import check_version, read_manifest, shard_files

    shards = Path(shards)

    row, searched = None, 0
    for split in ("train", "val", "test"):
        if not (shards / split).is_dir():
            continue
        for f in shard_files(shards, split):
            check_version(f)
            searched += 1
            t = pq.read_table(f)
            t = t.filter(pc.equal(t["sample_token"], sample_token))
            if t.num_rows:
                row = {c: t.column(c)[0].as_py() for c in t.column_names}
                break
        if row is not None:
            break
    if searched == 0:
        raise FileNotFoundError(f"{shards}: no Parquet shards (expected <split>/*.parquet from odvla prepare)")
    if row is None:
        raise ValueError(f"sample {sample_token!r} is in none of the {searched} shards under {shards}")
    if dataroot is None:
        dataroot = read_manifest(shards).get("dataroot")
    if dataroot is None:
        raise ValueError(f"{shards}/manifest.json names no dataroot; pass --dataroot")
    jpegs = []
    for rel in row["cam_paths"]:
        p = Path(dataroot) / rel
        if not p.exists():
            raise FileNotFoundError(f"sample {sample_token}: camera image {p} is missing")
        jpegs.append(p.read_bytes())
    ego = dict(zip(EGO_STATE_FIELDS, (float(x) for x in row["ego_state"])))
    past = np.asarray(row["past_traj"], float).reshape(PAST_STEPS, 2)
    mask = np.asarray(row["past_mask"], float)
    out = {"cameras": cameras_payload(jpegs, row["cam_intrinsics"], row["cam_sensor2ego"]), "ego_state": ego,
           "command": COMMANDS[int(row["command"])], "scene_token": row["scene_token"],
           "frame_index": int(row["frame_index"])}
    if mask.any():
        out["history"] = [p.tolist() if m > 0 else None for p, m in zip(past, mask)]
    return out


def write_image_dir(request: dict, directory: str | os.PathLike) -> Path:
    """Save a request (``request_from_shards`` output) as an image directory for ``odvla plan --image-dir``."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    for cam in request["cameras"]:
        (d / f"{cam['name']}.jpg").write_bytes(jpeg_bytes(cam["image"]))
    meta = {"intrinsics": [c["intrinsics"] for c in request["cameras"]],
            "sensor2ego": [c["extrinsics"] for c in request["cameras"]]}
    meta.update({k: v for k, v in request.items() if k != "cameras"})
    (d / "sample.json").write_text(json.dumps(meta, indent=1))
    return d
