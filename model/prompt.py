"""Prompt builder: the system prompt and the user turn the LLM reads (released OpenDriveVLA layout).

User turn of a planning example::

    Scene information: <scene_start><SCENE><scene_end>
    Object-wise tracking information: <track_start><TRACK><track_end>
    Map information: <map_start><MAP><map_end>
    Ego states:
    - Velocity (vx,vy): (0.00,3.73)
    - Heading Angular Velocity (v_yaw): (-0.01)
    - Acceleration (ax,ay): (0.02,0.19)
    - Can Bus: (0.19,-0.02)
    - Heading Speed: (3.77)
    - Steering: (-0.06)
    Historical trajectory (last 2 seconds): [(0.01,-7.21),(0.01,-5.39),(0.00,-3.58),(0.00,-1.79)]
    Mission goal: keep forward
    Planning trajectory:

Every vector of the text is in the text frame (X right, Y forward, ego at the origin): velocity and acceleration are
``(-v_y, v_x)`` of the ego frame. ``Can Bus`` is the raw CAN-bus acceleration ``(a_x, a_y)`` of the vehicle frame
(x forward, y left) as the bus reports it. Yaw rate keeps its sign (counter-clockwise positive in both frames).
History points whose mask is 0 (start of a scene) are left out of the list, never invented.

Each placeholder ``<SCENE>`` / ``<TRACK>`` / ``<MAP>`` stands for a block of visual tokens; the model expands it to
``num_scene_queries`` / ``num_agent_tokens`` / ``num_map_queries`` positions at tokenisation and splices the projected
visual tokens there. Other tasks get the same visual header followed by their question. The chat template
(``<|im_start|>system ... <|im_end|>``) is applied by the model.
"""
from __future__ import annotations

import numpy as np

from odvla.model.constants import COMMANDS, EGO_STATE_FIELDS, PAST_STEPS
from odvla.model.ego_token import EGO_TOKEN
from odvla.model.tasks import TASKS
from odvla.model.traj_codec import format_number, format_points
from odvla.model.traj_encodings import TRAJ_ENCODINGS

SCENE_TOKEN, TRACK_TOKEN, MAP_TOKEN = "<SCENE>", "<TRACK>", "<MAP>"
PLACEHOLDERS = (SCENE_TOKEN, TRACK_TOKEN, MAP_TOKEN)
MARKERS = ("<scene_start>", "<scene_end>", "<track_start>", "<track_end>", "<map_start>", "<map_end>")

SYSTEM_PROMPT = (
    "You are an autonomous driving agent. You see the surroundings of the ego vehicle through six cameras, given "
    "to you as scene tokens, object-wise tracking tokens and map tokens. Coordinates are in metres in a top-down "
    "frame centred on the ego vehicle: X points to the right, Y points forward, the ego vehicle is at the origin "
    "(0,0). When asked to plan, output a safe trajectory for the next 3 seconds as 6 waypoints, one every 0.5 "
    "seconds, written as <traj_start>[(x1,y1),(x2,y2),(x3,y3),(x4,y4),(x5,y5),(x6,y6)]<traj_end>."
)

_COMPACT_NOTE = (" Numbers in the trajectory are written as an integer-part token and a fraction token, without "
                 "brackets or commas.")


SHORT_SYSTEM_PROMPT = "You are an autonomous driving agent."
"""``text.system: short``: one sentence. The full text is constant across samples, so a model trained from random
init (``tiny``) learns nothing from it; at ~250 of its ~410 tokens per planning prompt it was most of the LLM's work."""
SYSTEMS = ("full", "short")


def system_prompt(text_cfg=None) -> str:
    """SYSTEM_PROMPT, with a sentence on the trajectory encoding when ``text_cfg`` selects delta / residual /
    compact; ``SHORT_SYSTEM_PROMPT`` alone when ``text_cfg.system`` is 'short'."""
    system = getattr(text_cfg, "system", "full")
    if system not in SYSTEMS:
        raise ValueError(f"model.text.system={system!r}: expected one of {', '.join(SYSTEMS)}")
    if system == "short":
        return SHORT_SYSTEM_PROMPT
    s = SYSTEM_PROMPT
    if text_cfg is not None:
        s += TRAJ_ENCODINGS[text_cfg.traj_encoding].prompt_note
    if text_cfg is not None and text_cfg.compact_tokens:
        s += _COMPACT_NOTE
    return s


def visual_header() -> str:
    return ("Scene information: <scene_start><SCENE><scene_end>\n"
            "Object-wise tracking information: <track_start><TRACK><track_end>\n"
            "Map information: <map_start><MAP><map_end>\n")


def ego_state_lines(ego_state, ego_token: bool = False, text: bool = True) -> str:
    """``ego_state`` [7] (EGO_STATE_FIELDS: vx, vy, ax, ay, yaw_rate, speed, steering; ego frame) -> text lines.
    ``ego_token``: the header line carries the ``<EGO>`` placeholder (``odvla.model.ego_token``). ``text`` False
    (``model.text.ego_text``): the header line alone; the ``<EGO>`` embedding then carries the state."""
    e = np.asarray(ego_state, dtype=np.float64).reshape(-1)
    if e.shape != (len(EGO_STATE_FIELDS),):
        raise ValueError(f"ego_state must have {len(EGO_STATE_FIELDS)} values {EGO_STATE_FIELDS}, got shape "
                         f"{np.shape(ego_state)}")
    if not np.all(np.isfinite(e)):
        raise ValueError(f"ego_state has non-finite values: {dict(zip(EGO_STATE_FIELDS, e.tolist()))}")
    if not text and not ego_token:
        raise ValueError("model.text.ego_text=false needs model.text.ego_token=true: the ego state must reach the "
                         "model as text or as the <EGO> embedding")
    vx, vy, ax, ay, yaw_rate, speed, steering = (float(v) for v in e)
    f = format_number
    if not text:
        return f"Ego states: {EGO_TOKEN}\n"
    return (f"Ego states:{' ' + EGO_TOKEN if ego_token else ''}\n"
            f"- Velocity (vx,vy): ({f(-vy)},{f(vx)})\n"
            f"- Heading Angular Velocity (v_yaw): ({f(yaw_rate)})\n"
            f"- Acceleration (ax,ay): ({f(-ay)},{f(ax)})\n"
            f"- Can Bus: ({f(ax)},{f(ay)})\n"
            f"- Heading Speed: ({f(speed)})\n"
            f"- Steering: ({f(steering)})\n")


def history_line(past_traj, past_mask, codec=None, ego_state=None) -> str:
    """``past_traj`` [4, 2] ego frame oldest first, ``past_mask`` [4] -> the history line (valid points only).

    ``codec`` (a ``TrajectoryCodec``): write the history in the answer's encoding (delta / compact tokens, see
    ``TrajectoryCodec.encode_history``; the residual encoding needs ``ego_state``); None or the plain absolute codec
    give the reference form."""
    p = np.asarray(past_traj, dtype=np.float64)
    m = np.asarray(past_mask, dtype=np.float64).reshape(-1)
    if p.shape != (PAST_STEPS, 2) or m.shape != (PAST_STEPS,):
        raise ValueError(f"past_traj must be [{PAST_STEPS}, 2] and past_mask [{PAST_STEPS}], got {p.shape} and "
                         f"{m.shape}")
    valid = p[m > 0.5]
    text = codec.encode_history(valid, ego_state) if codec is not None else format_points(valid)
    return f"Historical trajectory (last 2 seconds): {text}\n"


def build_user_turn(task: str, question: str, ego_state, command: int, past_traj, past_mask, codec=None,
                    ego_token: bool = False, ego_text: bool = True) -> str:
    """The user message (see module docstring). Planning: ego states, history, mission goal and
    'Planning trajectory:'; other tasks: the visual header then ``question``. ``codec``: see ``history_line``;
    ``ego_token``, ``ego_text``: planning prompts carry one ``<EGO>`` placeholder, and the ego state as text lines
    unless ``ego_text`` is False (see ``ego_state_lines``)."""
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; expected one of {TASKS}")
    if task != "planning":
        if not isinstance(question, str) or not question.strip():
            raise ValueError(f"task {task!r} needs a non-empty question, got {question!r}")
        for ph in PLACEHOLDERS + (EGO_TOKEN,):
            if ph in question:
                raise ValueError(f"question of task {task!r} contains the reserved placeholder {ph}: {question!r}")
        return visual_header() + question.strip()
    c = int(command)
    if not 0 <= c < len(COMMANDS):
        raise ValueError(f"command index must be in 0..{len(COMMANDS) - 1} {COMMANDS}, got {command!r}")
    return (visual_header() + ego_state_lines(ego_state, ego_token, ego_text)
            + history_line(past_traj, past_mask, codec, ego_state)
            + f"Mission goal: {COMMANDS[c]}\n" + "Planning trajectory:")
