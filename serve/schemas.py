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

import numpy as np
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    Strict,
    WithJsonSchema,
    create_model,
    field_validator,
)

from odvla.model.constants import CAMERAS, COMMANDS, EGO_STATE_FIELDS, FUTURE_STEPS, PAST_STEPS
from odvla.model.traj_codec import COMPACT_INT_LIMIT, MAX_INT_DIGITS
from odvla.model.traj_encodings import TRAJ_ENCODINGS, DeltaEncoding, ResidualEncoding

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
POSITION_LIMIT_M = float(COMPACT_INT_LIMIT)
"""Largest |coordinate| of a history waypoint (m) whatever the encoding: 2 s of history at 45 m/s. The served
model's encoding may bound it further (``history_limits``)."""

SessionId = Annotated[str, Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9_.:\-]+$")]

IMAGE_B64_PATTERN = r"^/9j/(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?$"
"""A base64 JPEG: the encoding of the FF D8 FF start-of-image bytes (``/9j/``) followed by padded base64."""
MAX_PIXELS_COORD = 1e6
"""Largest |entry| of an intrinsics matrix (pixels)."""
EPS = 1e-6
"""Tolerance of the fixed entries of the calibration matrices (the last rows)."""


def _num(lo: float, hi: float, gt: bool = False, **kw):
    """A finite float in [lo, hi] (or (lo, hi] with ``gt``): stated as minimum/maximum in the OpenAPI schema."""
    bounds = {"gt": lo} if gt else {"ge": lo}
    return Annotated[float, Strict(), Field(le=hi, allow_inf_nan=False, **bounds, **kw)]


_Px = _num(-MAX_PIXELS_COORD, MAX_PIXELS_COORD)
_Focal = _num(0.0, MAX_PIXELS_COORD, gt=True, description="focal length (pixels), > 0")
_Zero = _num(-EPS, EPS)
_One = _num(1.0 - EPS, 1.0 + EPS)
_Rot = _num(-1.001, 1.001, description="rotation entry")
_Trans = _num(-100.0, 100.0, description="camera position (m, ego frame)")
Intrinsics = tuple[tuple[_Focal, _Px, _Px], tuple[_Px, _Focal, _Px], tuple[_Zero, _Zero, _One]]
"""[[fx, s, cx], [0, fy, cy], [0, 0, 1]] in pixels of the image sent (fixed entries within ``EPS``)."""
Sensor2Ego = tuple[tuple[_Rot, _Rot, _Rot, _Trans], tuple[_Rot, _Rot, _Rot, _Trans],
                   tuple[_Rot, _Rot, _Rot, _Trans], tuple[_Zero, _Zero, _Zero, _One]]
"""[4x4] camera -> ego transform: a rotation (determinant 1, checked) and a translation in metres."""
Point = Annotated[tuple[_num(-POSITION_LIMIT_M, POSITION_LIMIT_M), _num(-POSITION_LIMIT_M, POSITION_LIMIT_M)],
                  Field(description="[x, y] metres, ego frame (x forward, y left)")]
def _whole(v):
    """JSON Schema's integer includes 3.0: a whole float is that integer; anything else goes on to strict int."""
    return int(v) if isinstance(v, float) and v.is_integer() else v


def _whole_int(lo: int, hi: int):
    """An integer in [lo, hi] as JSON Schema has it: 3 and 3.0, not 3.5 or "3"."""
    return Annotated[int, Strict(), BeforeValidator(_whole), Field(ge=lo, le=hi),
                     WithJsonSchema({"type": "integer", "minimum": lo, "maximum": hi})]
STRICT = ConfigDict(extra="forbid")
"""Request models: no unknown fields; numbers are ``Strict`` (no "5" for 5), as the OpenAPI schema states."""


def _bounded(name: str):
    lo, hi = EGO_STATE_BOUNDS[name]
    return Field(..., ge=lo, le=hi, allow_inf_nan=False, strict=True)


class EgoState(BaseModel):
    """Ego state at the keyframe (``EGO_STATE_FIELDS``): ego-frame velocity m/s, acceleration m/s^2, yaw rate
    rad/s, speed m/s, steering rad. Non-finite or out-of-range values are rejected."""

    model_config = STRICT

    vx: float = _bounded("vx")
    vy: float = _bounded("vy")
    ax: float = _bounded("ax")
    ay: float = _bounded("ay")
    yaw_rate: float = _bounded("yaw_rate")
    speed: float = _bounded("speed")
    steering: float = Field(0.0, ge=EGO_STATE_BOUNDS["steering"][0], le=EGO_STATE_BOUNDS["steering"][1],
                            allow_inf_nan=False, strict=True)

    def as_list(self) -> list[float]:
        return [float(getattr(self, f)) for f in EGO_STATE_FIELDS]


assert tuple(EgoState.model_fields) == EGO_STATE_FIELDS


class CameraCalibration(BaseModel):
    """One camera's calibration (the multipart ``request`` part; the JPEG is the part named after the camera).
    ``intrinsics`` are in pixels of the image sent; the rotation of ``extrinsics`` must have determinant 1."""

    model_config = STRICT

    name: str
    intrinsics: Intrinsics
    sensor2ego: Sensor2Ego = Field(..., alias="extrinsics",
                                   description="[4x4] camera -> ego transform (metres)")

    @field_validator("sensor2ego")
    @classmethod
    def _rotation(cls, t: tuple) -> tuple:
        det = float(np.linalg.det(np.asarray([row[:3] for row in t[:3]], dtype=np.float64)))
        if not math.isfinite(det) or abs(det - 1.0) > 0.05:
            raise ValueError(f"rotation part is not a rotation (determinant {det:.3f}, expected 1)")
        return t


class Camera(CameraCalibration):
    """One camera of a JSON request: the calibration and a base64 JPEG."""

    image: str = Field(..., min_length=8, max_length=MAX_IMAGE_B64_CHARS, description="base64-encoded JPEG",
                       json_schema_extra={"pattern": IMAGE_B64_PATTERN, "contentEncoding": "base64",
                                          "contentMediaType": "image/jpeg"})

    @field_validator("image")
    @classmethod
    def _base64(cls, v: str) -> str:  # the pattern above, with a message that says what is wrong
        if not v.startswith("/9j/"):
            raise ValueError("not a base64 JPEG (a JPEG starts with FF D8 FF, base64 '/9j/')")
        try:
            base64.b64decode(v, validate=True)
        except (binascii.Error, ValueError) as e:
            raise ValueError(f"not valid base64 ({e})") from None
        return v


def _positional(base: type[BaseModel]):
    """``base`` once per camera, each with ``name`` fixed to that camera: the tuple type of ``cameras`` (the
    OpenAPI schema gets ``prefixItems`` with one ``const`` name per position, in ``CAMERAS`` order)."""
    models = []
    for i, cam in enumerate(CAMERAS):
        title = "".join(part.title() for part in cam.split("_"))
        models.append(create_model(
            f"{base.__name__}{title.removeprefix('Cam')}", __base__=base,
            name=(Literal[cam], Field(..., description=f"camera {i} is {cam}"))))
    return tuple[tuple(models)]


CameraTuple = _positional(Camera)
CalibrationTuple = _positional(CameraCalibration)


class SceneFields(BaseModel):
    """What both endpoints need besides the cameras: ego state, optional history and the session of the scene."""

    model_config = STRICT

    ego_state: EgoState
    history: Optional[Annotated[list[Optional[Point]], Field(min_length=PAST_STEPS, max_length=PAST_STEPS)]] = Field(
        None, description=f"{PAST_STEPS} past ego positions at 0.5 s steps (t-2.0 .. t-0.5 s), oldest first, in the "
                          f"current ego frame; null for a step without data (start of a scene)")
    session_id: Optional[SessionId] = Field(
        None, description="scene session: requests with the same id go to the replica holding its tracking state")
    scene_token: Optional[str] = Field(None, max_length=128,
                                       description="scene of the frame; a new token resets the session state")
    frame_index: Optional[_whole_int(0, 100_000)] = Field(None,
                                       description="keyframe index inside the scene (0 = first)")
    max_new_tokens: Optional[_whole_int(1, 512)] = Field(
        None, description="cap on generated tokens; /v1/plan raises it to what one trajectory needs "
                                        "(with a warning)")


class _PlanFields(BaseModel):
    command: CommandText = Field(..., description=f"high-level command, one of {list(COMMANDS)}")
    question: Optional[str] = Field(None, max_length=MAX_QUESTION_CHARS,
                                    description="optional text added to the planning turn")


class _ChatFields(BaseModel):
    question: str = Field(..., min_length=1, max_length=MAX_QUESTION_CHARS)
    command: CommandText = Field("keep forward", description="command shown to the model as context")


_CAMERAS_DOC = f"exactly {len(CAMERAS)} cameras in the order {list(CAMERAS)}"


def _six_cameras(cams):
    """Before the per-position checks: a list of the wrong length gets one message instead of six."""
    if isinstance(cams, list) and len(cams) != len(CAMERAS):
        raise ValueError(f"expected {len(CAMERAS)} cameras in order {list(CAMERAS)}, got {len(cams)}")
    return cams


class SceneInput(SceneFields):
    cameras: CameraTuple = Field(..., description=_CAMERAS_DOC)
    _count = field_validator("cameras", mode="before")(_six_cameras)


class PlanRequest(SceneInput, _PlanFields):
    """``/v1/plan`` as ``application/json``: six cameras with base64 JPEGs, ego state, command."""


class ChatRequest(SceneInput, _ChatFields):
    """``/v1/chat`` as ``application/json``."""


class SceneForm(SceneFields):
    cameras: CalibrationTuple = Field(..., description=_CAMERAS_DOC + " (calibration only; the JPEGs are parts)")
    _count = field_validator("cameras", mode="before")(_six_cameras)


class PlanForm(SceneForm, _PlanFields):
    """The ``request`` part of a multipart ``/v1/plan``: the JSON body without the images."""


class ChatForm(SceneForm, _ChatFields):
    """The ``request`` part of a multipart ``/v1/chat``."""


# ---------------------------------------------------------------------- the history the served encoding can write
def history_limits(text_cfg) -> tuple[float, float]:
    """The largest |x| and |y| (m, ego frame: x forward, y left) of a history point such that the served model's
    trajectory encoding (``text_cfg``: ``traj_encoding``, ``traj_decimals``, ``compact_tokens``) can write every
    history the schema accepts, capped at ``POSITION_LIMIT_M``.

    A written number has at most ``MAX_INT_DIGITS`` integer digits, or with compact tokens |integer part| <=
    ``COMPACT_INT_LIMIT`` (``model/traj_codec.py``): W = the largest writable |value|. Points are rounded to
    10^-decimals m before the encodings difference them (``model/traj_encodings.py``), and any two valid history
    points can be consecutive (null steps are skipped), so with every coordinate within L:
    - ``absolute`` writes the points: L = W;
    - ``delta`` writes steps between consecutive points and into the ego: |step| <= 2L, so L = floor(W / 2);
    - ``residual`` writes a step minus the constant-velocity step ``v * 0.5 s`` of the ego state, |v| within
      ``EGO_STATE_BOUNDS`` (text X = -y from vy, text Y = x from vx): L = floor((W - |v|max * 0.5) / 2) per axis;
    - ``action`` writes codebook entries (a step outside the codebook gets the nearest entry, counted): no bound.
    The bound is tight: one unit past it, two points of opposite sign with the largest ego velocity are not
    writable (``tests/test_serve_units.py``)."""
    scheme = TRAJ_ENCODINGS[text_cfg.traj_encoding]
    d = int(text_cfg.traj_decimals)
    unit = 10 ** d
    compact = bool(text_cfg.compact_tokens) and not getattr(scheme, "needs_codebook", False)
    w_q = ((COMPACT_INT_LIMIT + 1) if compact else 10 ** MAX_INT_DIGITS) * unit - 1  # W in units of 10^-d m
    cap_q = int(round(POSITION_LIMIT_M * unit))
    if getattr(scheme, "needs_codebook", False):
        return cap_q / unit, cap_q / unit
    if not isinstance(scheme, DeltaEncoding):  # absolute: the points themselves are written
        return min(w_q, cap_q) / unit, min(w_q, cap_q) / unit
    cv_x = cv_y = 0
    if isinstance(scheme, ResidualEncoding):  # text Y (ego x) moves by vx * 0.5 s, text X (ego y) by -vy * 0.5 s
        cv_x = int(round(max(map(abs, EGO_STATE_BOUNDS["vx"])) * 0.5 * unit))
        cv_y = int(round(max(map(abs, EGO_STATE_BOUNDS["vy"])) * 0.5 * unit))
    return min((w_q - cv_x) // 2, cap_q) / unit, min((w_q - cv_y) // 2, cap_q) / unit


def history_field(limits: tuple[float, float], note: str = ""):
    """The ``history`` field with every point within ``limits`` (|x|, |y| in metres), as the OpenAPI schema states
    (``minimum`` / ``maximum`` of each coordinate); ``note`` says where the bound comes from."""
    lx, ly = limits
    point = Annotated[tuple[_num(-lx, lx, description="x (m, forward)"), _num(-ly, ly, description="y (m, left)")],
                      Field(description="[x, y] metres, ego frame (x forward, y left)")]
    doc = (f"{PAST_STEPS} past ego positions at 0.5 s steps (t-2.0 .. t-0.5 s), oldest first, in the current ego "
           f"frame; null for a step without data (start of a scene). |x| <= {lx:g} m, |y| <= {ly:g} m" +
           (f": {note}" if note else ""))
    return (Optional[Annotated[list[Optional[point]], Field(min_length=PAST_STEPS, max_length=PAST_STEPS)]],
            Field(None, description=doc))


def request_models(limits: tuple[float, float], note: str = "") -> tuple[type[BaseModel], ...]:
    """``PlanRequest``, ``PlanForm``, ``ChatRequest``, ``ChatForm`` (same names in the OpenAPI document) whose
    history points lie within ``limits`` (``history_limits`` of the served model's encoding)."""
    hist = history_field(limits, note)
    return tuple(create_model(m.__name__, __base__=m, __doc__=m.__doc__, history=hist)
                 for m in (PlanRequest, PlanForm, ChatRequest, ChatForm))


def encoding_note(text_cfg) -> str:
    """Why the history is bounded, for the schema's description: the encoding and its widest step."""
    enc = text_cfg.traj_encoding + (" with compact number tokens" if text_cfg.compact_tokens else "")
    return f"what the served model's '{enc}' trajectory encoding can write"


class ModelInfo(BaseModel):
    ref: str = Field(..., description="what was loaded: export folder, runs:/ or models:/ URI")
    version: Optional[str] = Field(None, description="MLflow registry version when loaded from the registry")
    preset: str
    checksum: str = Field(..., description="sha256 (first 12 hex) of the served weights")
    max_batch_size: int
    batch_wait_timeout_s: float


class StageCpu(BaseModel):
    """CPU time (ms) of the stages that compute: ``parse`` and ``decode`` are the ingress worker thread's CPU time
    for this request; ``batch`` and ``generate`` the model replica's process CPU time (all torch threads) for the
    whole batch this request ran in."""

    parse_ms: float
    decode_ms: float
    batch_ms: float
    generate_ms: float


class GenerateParts(BaseModel):
    """``generate_ms`` split into the parts of a plan (wall ms, the whole batch; ``OpenDriveVLA.generate``):
    vision encoder, prompt assembly, the LLM's prefill (up to the first step's logits), the decode steps after it,
    and parsing the answers."""

    vision_ms: float
    prompt_ms: float
    prefill_ms: float
    decode_ms: float
    parse_ms: float
    decode_steps: int = Field(..., description="decode steps of the batch (its longest answer, end token included)")


class Timings(BaseModel):
    """Where a request's time went (wall ms). total = http + parse + decode + queue + batch + generate + the
    ingress's own bookkeeping; the HTTP proxy in front of the ingress is outside (a client sees it as the
    difference between its latency and ``total_ms``)."""

    http_ms: float = Field(..., description="ingress received the request -> body read")
    parse_ms: float = Field(..., description="JSON parse + validation + base64 decode (multipart: part split)")
    decode_ms: float = Field(..., description="JPEG decode + resize to the network input (ingress worker thread)")
    queue_ms: float = Field(..., description="Ray hop to the model replica and back + waiting for a batch")
    batch_ms: float = Field(..., description="forming the model batch (stack, normalise, to device)")
    generate_ms: float = Field(..., description="model.generate of the batch (vision + language model)")
    generate_parts: GenerateParts
    total_ms: float = Field(..., description="ingress received the request -> response built")
    cpu_ms: StageCpu
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
