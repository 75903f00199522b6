"""Stage-3 planning records: one per keyframe, empty turns (the model builds the planning prompt from ego state,
command and history, and its codec writes the answer from the target), target = the recorded ego future."""
from __future__ import annotations

from .scene_view import SceneView
from .schema import make_record


def generate_planning(view: SceneView) -> list[dict]:
    return [make_record(view.sample_token, "planning", "generated", f"{view.sample_token}/planning",
                        [("human", ""), ("gpt", "")], target_traj=view.future_traj, target_mask=view.future_mask)]
