"""Stage-2.5 agent-environment interaction generated from annotations (task 'interaction'): given an agent, its
future waypoints, either plainly or conditional on the ego plan (the ego's recorded future, given in the
question), plus whether the agent comes close to that plan.

Waypoints are ego-frame centres at t+0.5 .. t+3.0 s written with the codec (text frame, metres); an agent's
future stops at its first invalid step (the answer says how many steps it covers).
"""
from __future__ import annotations

import numpy as np

from odvla.model.constants import FUTURE_STEPS, STEP_SECONDS

from .scene_view import CLASS_WORDS, MOVERS, STATIONARY_MPS, SceneView
from .schema import make_record
from .templates import pick, sample_rng
from .text_numbers import fmt_num, fmt_point, fmt_points

MAX_AGENTS = 3
"""Agents per keyframe (moving before stationary, then nearest; at least ``MIN_STEPS`` valid future steps), each
giving a forecast record and a proximity record."""
MIN_STEPS = 2
CLOSE_M = 5.0

PLAIN_QUESTIONS = ("Predict the future waypoints of the {cls} at {pos} for the next {t} s.",
                   "Where will the {cls} at {pos} be over the next {t} s?",
                   "Forecast the trajectory of the {cls} currently at {pos}.")
CONDITIONAL_QUESTIONS = ("The ego vehicle will follow {plan}. Predict the future waypoints of the {cls} at {pos}.",
                         "Given the ego plan {plan}, where will the {cls} at {pos} go in the next {t} s?",
                         "If the ego vehicle drives along {plan}, how will the {cls} at {pos} move?")
CLOSE_QUESTIONS = ("The ego vehicle will follow {plan}. Will the {cls} at {pos} come within {r} m of the ego?",
                   "Given the ego plan {plan}, does the {cls} at {pos} get closer than {r} m to the ego vehicle?")


def valid_steps(mask: np.ndarray) -> int:
    """Length of the valid prefix of a [6] mask."""
    bad = np.flatnonzero(np.asarray(mask) <= 0)
    return int(bad[0]) if len(bad) else len(mask)


def generate_interaction(view: SceneView, seed: int) -> list[dict]:
    rng = sample_rng(seed, view.sample_token, "interaction")
    tok = view.sample_token
    ego_steps = valid_steps(view.future_mask)
    plan = fmt_points(view.future_traj[:ego_steps]) if ego_steps else None
    steps = np.array([valid_steps(m) for m in view.agent_future_mask], int)
    movers = np.array([c in MOVERS for c in view.classes], bool)
    cand = np.flatnonzero(movers & (steps >= MIN_STEPS)) if len(steps) else np.zeros(0, int)
    moving = view.speeds()[cand] >= STATIONARY_MPS if len(cand) else np.zeros(0, bool)
    cand = cand[np.lexsort((view.distances()[cand], ~moving))][:MAX_AGENTS]  # moving agents first, then nearest
    out = []
    for i in (int(i) for i in cand):
        k = int(steps[i])
        fut = view.agent_future[i, :k]
        cls, pos, t = CLASS_WORDS[view.classes[i]][0], fmt_point(view.boxes[i, :2]), fmt_num(k * STEP_SECONDS)
        answer = f"{fmt_points(fut)}" if k == FUTURE_STEPS else f"Over the next {t} s: {fmt_points(fut)}"
        meta = {"steps": k}
        if plan is not None and rng.random() < 0.5:
            q = pick(rng, CONDITIONAL_QUESTIONS).format(plan=plan, cls=cls, pos=pos, t=t)
            meta["conditional"] = True
        else:
            q = pick(rng, PLAIN_QUESTIONS).format(cls=cls, pos=pos, t=t)
            meta["conditional"] = False
        out.append(make_record(tok, "interaction", "generated", f"{tok}/interaction/{view.instances[i]}",
                               [("human", q), ("gpt", answer)], instance_token=view.instances[i], meta=meta))
        if plan is not None:
            n = min(k, ego_steps)
            gaps = np.linalg.norm(fut[:n] - view.future_traj[:n], axis=1)
            j = int(np.argmin(gaps))
            r = fmt_num(CLOSE_M)
            q = pick(rng, CLOSE_QUESTIONS).format(plan=plan, cls=cls, pos=pos, r=r)
            if gaps[j] < CLOSE_M:
                a = (f"Yes. At t+{fmt_num((j + 1) * STEP_SECONDS)} s it will be {fmt_num(gaps[j])} m from the ego "
                     f"vehicle, at {fmt_point(fut[j])}.")
            else:
                a = f"No. The closest it gets is {fmt_num(gaps[j])} m, at t+{fmt_num((j + 1) * STEP_SECONDS)} s."
            out.append(make_record(tok, "interaction", "generated", f"{tok}/interaction_close/{view.instances[i]}",
                                   [("human", q), ("gpt", a)], instance_token=view.instances[i],
                                   meta={"steps": n, "conditional": True, "kind": "proximity"}))
    return out
