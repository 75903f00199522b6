"""API v1 request and response models (pydantic). The OpenAPI spec of the service is generated from these.

Frames and units: waypoints and history are in the nuScenes ego frame of the current keyframe (x forward, y
left, metres); ``waypoints_text_frame`` repeats the plan in the text frame of the answer (X right, Y forward:
``(X, Y) = (-y, x)``). Cameras come in ``CAMERAS`` order, each with its intrinsics (pixels of the image sent)
and its camera->ego transform. Ego state fields follow ``EGO_STATE_FIELDS`` (m/s, m/s^2, rad/s, rad).

Validation errors name the field (``cameras.2.intrinsics``, ``ego_state.speed``); the app turns them into a 422
whose ``message`` lists every offending field.
"""
from __future__ import annotations

import base64
import binascii
import math
from typing import Annotated, Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, field_validator

from odvla.model.constants import CAMERAS, COMMANDS, EGO_STATE_FIELDS, FUTURE_STEPS, PAST_STEPS

CommandText = Literal["turn right", "turn left", "keep forward"]
assert tuple(CommandText.__args__) == COMMANDS  # one vocabulary: model/constants.py

EGO_STATE_BOUNDS = {
    "vx": (-70.0, 70.0),  # m/s, ego frame
    "vy": (-20.0, 20.0),
    "ax": (-20.0, 20.0),  # m/s^2
    "ay": (-20.0, 20.0),
    "yaw_rate": (-3.0, 3.0),  # rad/s
    "speed": (0.0, 70.0),  # m/s
    "steering": (-10.0, 10.0),  # rad (steering wheel angle; 0 without CAN bus)
}
"""Physically plausible range of each ego-state field; values outside are rejected (422)."""

MAX_IMAGE_B64_CHARS = 8_000_000
"""Largest base64 string accepted for one camera image (~6 MB of JPEG); the body limit caps the total."""
MAX_QUESTION_CHARS = 2000
POSITION_LIMIT_M = 200.0
"""Largest |coordinate| of a history waypoint (2 s of history at 70 m/s is 140 m)."""

Finite = Annotated[float, Field(allow_inf_nan=False)]
Row3 = Annotated[list[Finite], Field(min_length=3, max_length=3)]
Row4 = Annotated[list[Finite], Field(min_length=4, max_length=4)]
Point = Annotated[list[Annotated[float, Field(allow_inf_nan=False, ge=-POSITION_LIMIT_M, le=POSITION_LIMIT_M)]],
                  Field(min_length=2, max_length=2, description="[x, y] metres, ego frame (x forward, y left)")]
SessionId = Annotated[str, Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9_.:\-]+$")]


class Camera(BaseModel):
    """One camera: a JPEG (base64) with its calibration. ``intrinsics`` are in pixels of the image sent."""

    model_config = ConfigDict(extra="forbid", validate_by_name=True, validate_by_alias=True)

    name: Optional[str] = Field(None, description=f"camera name; when given it must match CAMERAS order {CAMERAS}")
    image: str = Field(..., min_length=4, max_length=MAX_IMAGE_B64_CHARS, description="base64-encoded JPEG")
    intrinsics: Annotated[list[Row3], Field(min_length=3, max_length=3, description="[3x3] pixels")]
    sensor2ego: Annotated[list[Row4], Field(
        min_length=4, max_length=4, alias="extrinsics",
        description="[4x4] camera -> ego transform (metres); also accepted as 'sensor2ego'")]

    @field_validator("image")
    @classmethod
    def _base64(cls, v: str) -> str:
        try:
            raw = base64.b64decode(v, validate=True)
        except (binascii.Error, ValueError) as e:
            raise ValueError(f"not valid base64 ({e})") from None
        if raw[:2] != b"\xff\xd8":
            raise ValueError("not a JPEG image (missing the FFD8 start-of-image marker)")
        return v

    @field_validator("intrinsics")
    @classmethod
    def _intrinsics(cls, k: list) -> list:
        fx, fy = k[0][0], k[1][1]
        if not (fx > 0 and fy > 0):
            raise ValueError(f"focal lengths must be positive, got fx={fx}, fy={fy}")
        if any(abs(a - b) > 1e-6 for a, b in zip(k[2], (0.0, 0.0, 1.0))):
            raise ValueError(f"last row must be [0, 0, 1], got {k[2]}")
        if max(abs(x) for row in k for x in row) > 1e6:
            raise ValueError("values above 1e6 pixels")
        return k

    @field_validator("sensor2ego")
    @classmethod
    def _extrinsics(cls, t: list) -> list:
        if any(abs(a - b) > 1e-6 for a, b in zip(t[3], (0.0, 0.0, 0.0, 1.0))):
            raise ValueError(f"last row must be [0, 0, 0, 1], got {t[3]}")
        if max(abs(t[i][3]) for i in range(3)) > 100.0:
            raise ValueError("camera position more than 100 m from the ego origin")
        rot = [row[:3] for row in t[:3]]
        det = (rot[0][0] * (rot[1][1] * rot[2][2] - rot[1][2] * rot[2][1])
               - rot[0][1] * (rot[1][0] * rot[2][2] - rot[1][2] * rot[2][0])
               + rot[0][2] * (rot[1][0] * rot[2][1] - rot[1][1] * rot[2][0]))
        if not math.isfinite(det) or abs(det - 1.0) > 0.05:
            raise ValueError(f"rotation part is not a rotation (determinant {det:.3f}, expected 1)")
        return t


def _bounded(name: str):
    lo, hi = EGO_STATE_BOUNDS[name]
    return Field(..., ge=lo, le=hi, allow_inf_nan=False)


class EgoState(BaseModel):
    """Ego state at the keyframe (``EGO_STATE_FIELDS``): ego-frame velocity m/s, acceleration m/s^2, yaw rate
    rad/s, speed m/s, steering rad. Non-finite or out-of-range values are rejected."""

    model_config = ConfigDict(extra="forbid")

    vx: float = _bounded("vx")
    vy: float = _bounded("vy")
    ax: float = _bounded("ax")
    ay: float = _bounded("ay")
    yaw_rate: float = _bounded("yaw_rate")
    speed: float = _bounded("speed")
    steering: float = Field(0.0, ge=EGO_STATE_BOUNDS["steering"][0], le=EGO_STATE_BOUNDS["steering"][1],
                            allow_inf_nan=False)

    def as_list(self) -> list[float]:
        return [float(getattr(self, f)) for f in EGO_STATE_FIELDS]


assert tuple(EgoState.model_fields) == EGO_STATE_FIELDS


class SceneInput(BaseModel):
    """What both endpoints need: the six cameras, ego state, optional history and the session of the scene."""

    model_config = ConfigDict(extra="forbid")

    cameras: Annotated[list[Camera], Field(description=f"exactly {len(CAMERAS)} cameras in order {list(CAMERAS)}")]
    ego_state: EgoState
    history: Optional[Annotated[list[Optional[Point]], Field(min_length=PAST_STEPS, max_length=PAST_STEPS)]] = Field(
        None, description=f"{PAST_STEPS} past ego positions at 0.5 s steps (t-2.0 .. t-0.5 s), oldest first, in the "
                          f"current ego frame; null for a step without data (start of a scene)")
    session_id: Optional[SessionId] = Field(
        None, description="scene session: requests with the same id go to the replica holding its tracking state")
    scene_token: Optional[str] = Field(None, max_length=128,
                                       description="scene of the frame; a new token resets the session state")
    frame_index: Optional[int] = Field(None, ge=0, le=100_000,
                                       description="keyframe index inside the scene (0 = first)")
    max_new_tokens: Optional[int] = Field(None, ge=1, le=512)

    @field_validator("cameras")
    @classmethod
    def _cameras(cls, cams: list[Camera]) -> list[Camera]:
        if len(cams) != len(CAMERAS):
            raise ValueError(f"expected {len(CAMERAS)} cameras in order {list(CAMERAS)}, got {len(cams)}")
        for i, (cam, want) in enumerate(zip(cams, CAMERAS)):
            if cam.name is not None and cam.name != want:
                raise ValueError(f"camera {i} is named {cam.name!r}; expected {want!r} (CAMERAS order)")
        return cams


class PlanRequest(SceneInput):
    command: CommandText = Field(..., description=f"high-level command, one of {list(COMMANDS)}")
    question: Optional[str] = Field(None, max_length=MAX_QUESTION_CHARS,
                                    description="optional text added to the planning turn")


class ChatRequest(SceneInput):
    question: str = Field(..., min_length=1, max_length=MAX_QUESTION_CHARS)
    command: CommandText = Field("keep forward", description="command shown to the model as context")


class ModelInfo(BaseModel):
    ref: str = Field(..., description="what was loaded: export folder, runs:/ or models:/ URI")
    version: Optional[str] = Field(None, description="MLflow registry version when loaded from the registry")
    preset: str
    checksum: str = Field(..., description="sha256 (first 12 hex) of the served weights")
    max_batch_size: int
    batch_wait_timeout_s: float


class Timings(BaseModel):
    preprocess_ms: float = Field(..., description="base64 + JPEG decode + resize in the ingress")
    queue_ms: float = Field(..., description="waiting in the replica's batch queue")
    inference_ms: float = Field(..., description="model.generate of the batch")
    total_ms: float = Field(..., description="ingress receive to response")
    batch_size: int = Field(..., description="requests in the batch this one ran in")
    generated_tokens: int


class SessionInfo(BaseModel):
    session_id: str
    state: Literal["new", "continued", "reset", "rebuilt"] = Field(
        ..., description="new: first frame; continued: tracking state reused; reset: scene changed; "
                         "rebuilt: state was lost (idle eviction or replica restart) and rebuilt from this frame")
    frames: int = Field(..., description="frames this replica has processed for the session since (re)build")
    replica: str = Field(..., description="replica that holds the session state")


class ChatResponse(BaseModel):
    """What every answer carries; ``/v1/chat`` returns exactly this, ``/v1/plan`` adds the waypoints."""

    answer: str
    model: ModelInfo
    timings: Timings
    session: Optional[SessionInfo] = None
    warnings: list[str] = Field(default_factory=list)
    request_id: str


class PlanResponse(ChatResponse):
    waypoints: Optional[list[list[float]]] = Field(
        ..., description=f"{FUTURE_STEPS} ego-frame [x, y] metres at 0.5 s steps; null when the answer did not parse")
    waypoints_text_frame: Optional[list[list[float]]] = Field(
        ..., description="the same points in the answer's text frame [X right, Y forward]")
    parsed: bool


class ErrorResponse(BaseModel):
    message: str = Field(..., description="one line naming the offending field(s)")
    detail: Optional[list | str] = None


class Health(BaseModel):
    status: str
    detail: Optional[str] = None
