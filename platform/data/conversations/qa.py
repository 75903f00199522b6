"""Stage-2 driving QA generated from a keyframe's annotations (task 'qa'): counting, relative position,
nearest agent, and what the ego vehicle should do and why (from its command, its recorded future and the agents
in its path)."""
from __future__ import annotations

import numpy as np

from odvla.model.constants import FUTURE_STEPS, STEP_SECONDS

from .captions import CAPTION_RANGE_M
from .scene_view import CLASS_WORDS, MOVERS, SceneView, direction_words, in_ego_path, there_are
from .schema import make_record
from .templates import pick, sample_rng
from .text_numbers import fmt_num, fmt_point

COUNT_RADII_M = (20.0, 30.0, 50.0)

COUNT_QUESTIONS = ("How many {cls} are within {r} m of the ego vehicle?",
                   "Count the {cls} closer than {r} m.",
                   "Within {r} m, how many {cls} can you see?")
POSITION_QUESTIONS = ("Where is the {cls} at {pos} relative to the ego vehicle?",
                      "Describe the position of the {cls} at {pos} relative to the ego vehicle.")
NEAREST_QUESTIONS = ("Which object is closest to the ego vehicle?",
                     "What is the nearest traffic participant?",
                     "Name the object nearest to the ego vehicle and where it is.")
ACTION_QUESTIONS = ("What should the ego vehicle do next, and why?",
                    "What is the appropriate driving action now? Explain.",
                    "How should the ego vehicle proceed, and for what reason?")


def counting_qa(view: SceneView, rng) -> tuple[str, str]:
    present = sorted(set(view.classes))
    cls = pick(rng, present) if present and rng.random() < 0.8 else pick(rng, list(CLASS_WORDS))
    r = float(pick(rng, COUNT_RADII_M))
    n = int(sum(1 for c, d in zip(view.classes, view.distances()) if c == cls and d <= r))
    q = pick(rng, COUNT_QUESTIONS).format(cls=CLASS_WORDS[cls][1], r=fmt_num(r))
    a = there_are(n, CLASS_WORDS[cls], f" within {fmt_num(r)} m.")
    return q, a


def position_qa(view: SceneView, rng) -> tuple[str, str] | None:
    near = np.flatnonzero(view.distances() <= CAPTION_RANGE_M)
    if not len(near):
        return None
    i = int(near[rng.integers(len(near))])
    x, y = (float(v) for v in view.boxes[i, :2])
    q = pick(rng, POSITION_QUESTIONS).format(cls=CLASS_WORDS[view.classes[i]][0], pos=fmt_point(view.boxes[i, :2]))
    side = "left" if y > 0 else "right"
    longi = "ahead of" if x >= 0 else "behind"
    a = (f"It is {fmt_num(np.hypot(x, y))} m away, {direction_words(x, y)}: {fmt_num(abs(x))} m {longi} the ego "
         f"vehicle and {fmt_num(abs(y))} m to its {side}.")
    return q, a


def nearest_qa(view: SceneView, rng) -> tuple[str, str] | None:
    d = view.distances()
    if not len(d):
        return None
    i = int(np.argmin(d))
    x, y = view.boxes[i, :2]
    a = (f"The nearest is a {CLASS_WORDS[view.classes[i]][0]} at {fmt_point(view.boxes[i, :2])}, "
         f"{fmt_num(d[i])} m {direction_words(x, y)}.")
    return pick(rng, NEAREST_QUESTIONS), a


def planned_speed_change(view: SceneView) -> str:
    """'stop', 'stay stopped', 'accelerate', 'slow down' or 'keep its speed' from the recorded future (m/s)."""
    valid = int(np.sum(view.future_mask > 0))
    if valid < 2:
        return "keep its speed"
    pts = np.concatenate([np.zeros((1, 2), np.float32), view.future_traj[:valid]])
    step_speed = np.linalg.norm(np.diff(pts, axis=0), axis=1) / STEP_SECONDS  # [valid]
    if view.ego_speed < 0.5 and step_speed.max() < 0.5:
        return "stay stopped"
    if step_speed[-1] < 0.5 <= view.ego_speed:
        return "stop"
    delta = float(step_speed[-1] - view.ego_speed)
    if delta > 1.0:
        return "accelerate"
    if delta < -1.0:
        return "slow down"
    return "keep its speed"


def action_reason(view: SceneView) -> str:
    path = in_ego_path(view)
    movers = np.array([c in MOVERS for c in view.classes], bool)
    blockers = np.flatnonzero(path & movers) if len(path) else np.zeros(0, int)
    if len(blockers):
        i = int(blockers[np.argmin(view.boxes[blockers, 0])])
        return (f"a {CLASS_WORDS[view.classes[i]][0]} is {fmt_num(view.boxes[i, 0])} m ahead in its path and is "
                f"{'stationary' if np.hypot(*view.boxes[i, 7:9]) < 0.5 else 'moving'}")
    crossings = [p for c, p in view.map_elements if c == "crossing" and len(p)]
    ahead = [float(np.min(p[:, 0])) for p in crossings if np.any((p[:, 0] > 0) & (np.abs(p[:, 1]) < 10))]
    if ahead and min(ahead) <= 1.0:
        return "the ego vehicle is at a pedestrian crossing"
    if ahead and min(ahead) < 25:
        return f"a pedestrian crossing is {fmt_num(min(ahead))} m ahead"
    return "the path ahead is clear of other agents"


def action_qa(view: SceneView, rng) -> tuple[str, str]:
    change = planned_speed_change(view)
    horizon = fmt_num(FUTURE_STEPS * STEP_SECONDS)
    a = (f"The ego vehicle should {view.command_text} and {change} over the next {horizon} s, because "
         f"{action_reason(view)}.")
    return pick(rng, ACTION_QUESTIONS), a


def generate_qa(view: SceneView, seed: int) -> list[dict]:
    """QA records of one keyframe: one counting, one relative-position, one nearest-agent (when there are agents)
    and one action question."""
    rng = sample_rng(seed, view.sample_token, "qa")
    out = []
    for kind, fn in (("count", counting_qa), ("position", position_qa), ("nearest", nearest_qa),
                     ("action", action_qa)):
        qa = fn(view, rng)
        if qa:
            out.append(make_record(view.sample_token, "qa", "generated", f"{view.sample_token}/qa/{kind}",
                                   [("human", qa[0]), ("gpt", qa[1])], meta={"kind": kind}))
    return out
