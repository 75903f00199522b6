"""Stage-1 alignment captions generated from a keyframe's annotations: the scene as a whole (task
'caption_scene'), single agents (class, position, motion; 'caption_agent') and map elements ('caption_map').

Positions are ego-frame points written through the waypoint codec (text frame X right, Y forward, metres).
"""
from __future__ import annotations

from collections import Counter

import numpy as np

from odvla.model.constants import DETECTION_CLASSES, MAP_CLASSES

from .scene_view import (CLASS_WORDS, MAP_WORDS, SceneView, direction_words, join_words, motion_words, plural)
from .schema import make_record
from .templates import pick, sample_rng
from .text_numbers import fmt_num, fmt_point, fmt_points

MAX_AGENT_CAPTIONS = 3
"""Agent captions per keyframe (nearest agents first)."""
CAPTION_RANGE_M = 50.0

SCENE_QUESTIONS = (
    "Describe the current driving scene.",
    "Summarize what is around the ego vehicle.",
    "Give a short description of the traffic scene.",
    "What does the scene around the ego vehicle look like?",
)
AGENT_QUESTIONS = (
    "Describe the object at {pos}.",
    "What is the object located at {pos}, and how is it moving?",
    "Tell me about the traffic participant at {pos}.",
)
MAP_QUESTIONS = (
    "Describe the map elements around the ego vehicle.",
    "Which road elements are near the ego vehicle?",
    "Summarize the lane markings, road boundaries and crossings nearby.",
)


def agent_sentence(view: SceneView, i: int) -> str:
    x, y = view.boxes[i, :2]
    vx, vy = view.boxes[i, 7:9]
    cls = CLASS_WORDS[view.classes[i]][0]
    motion = motion_words(vx, vy)
    speed = "" if motion == "stationary" else f" at {fmt_num(np.hypot(vx, vy))} m/s"
    return (f"a {cls} at {fmt_point(view.boxes[i, :2])}, {fmt_num(np.hypot(x, y))} m {direction_words(x, y)}, "
            f"{motion}{speed}")


def counts_text(view: SceneView, within: float = CAPTION_RANGE_M) -> str:
    near = view.distances() <= within
    counts = Counter(c for c, k in zip(view.classes, near) if k)
    parts = [plural(counts[c], CLASS_WORDS[c]) for c in DETECTION_CLASSES if counts[c]]
    return join_words(parts) if parts else "no other traffic participants"


def scene_caption(view: SceneView, rng) -> tuple[str, str]:
    speed = view.ego_speed
    ego = ("The ego vehicle is stopped" if speed < 0.5 else f"The ego vehicle drives at {fmt_num(speed)} m/s")
    ego += f" and its navigation command is to {view.command_text}."
    parts = [ego, f"Within {fmt_num(CAPTION_RANGE_M)} m: {counts_text(view)}."]
    d = view.distances()
    if len(d):
        parts.append(f"The closest is {agent_sentence(view, int(np.argmin(d)))}.")
    map_counts = Counter(c for c, _ in view.map_elements)
    if map_counts:
        parts.append("The map shows " + join_words(
            [plural(map_counts[c], MAP_WORDS[c]) for c in MAP_CLASSES if map_counts[c]]) + ".")
    return pick(rng, SCENE_QUESTIONS), " ".join(parts)


def map_caption(view: SceneView, rng) -> tuple[str, str] | None:
    if not view.map_elements:
        return None
    map_counts = Counter(c for c, _ in view.map_elements)
    parts = ["Around the ego vehicle: " + join_words([plural(map_counts[c], MAP_WORDS[c]) for c in MAP_CLASSES
                                                       if map_counts[c]]) + "."]
    for c in MAP_CLASSES:
        elems = [p for k, p in view.map_elements if k == c and len(p)]
        if not elems:
            continue
        nearest = min(elems, key=lambda p: float(np.min(np.hypot(p[:, 0], p[:, 1]))))
        dist = float(np.min(np.hypot(nearest[:, 0], nearest[:, 1])))
        ends = nearest[[0, -1]] if len(nearest) > 1 else nearest
        parts.append(f"The nearest {MAP_WORDS[c][0]} is {fmt_num(dist)} m away and runs through "
                     f"{fmt_points(ends)}.")
    return pick(rng, MAP_QUESTIONS), " ".join(parts)


def generate_captions(view: SceneView, seed: int) -> list[dict]:
    """Caption records of one keyframe: 1 scene caption, up to ``MAX_AGENT_CAPTIONS`` agent captions (nearest
    first, within ``CAPTION_RANGE_M``), 1 map caption when the keyframe has map elements."""
    rng = sample_rng(seed, view.sample_token, "captions")
    tok = view.sample_token
    q, a = scene_caption(view, rng)
    out = [make_record(tok, "caption_scene", "generated", f"{tok}/caption_scene", [("human", q), ("gpt", a)])]
    d = view.distances()
    for i in [int(i) for i in np.argsort(d, kind="stable") if d[i] <= CAPTION_RANGE_M][:MAX_AGENT_CAPTIONS]:
        q = pick(rng, AGENT_QUESTIONS).format(pos=fmt_point(view.boxes[i, :2]))
        a = agent_sentence(view, i)
        a = f"It is {a}."
        out.append(make_record(tok, "caption_agent", "generated", f"{tok}/caption_agent/{view.instances[i]}",
                               [("human", q), ("gpt", a)], instance_token=view.instances[i]))
    m = map_caption(view, rng)
    if m:
        out.append(make_record(tok, "caption_map", "generated", f"{tok}/caption_map", [("human", m[0]),
                                                                                      ("gpt", m[1])]))
    return out
