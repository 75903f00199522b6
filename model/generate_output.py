"""What ``OpenDriveVLA.generate`` returns."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class GenerateOutput:
    """One entry per batch row.

    answers               generated assistant text (special tokens removed; trajectory markers kept)
    trajectories          float64 [B, 6, 2] parsed trajectory, nuScenes ego frame (x forward, y left, metres);
                          NaN where the row has no parsed trajectory
    parsed                True when the row's answer holds a trajectory that parsed
    errors                parse error message for planning rows that did not parse (None otherwise)
    states                per-row tracking state after this frame (``odvla.model.scene_state.SceneState``)
    num_generated_tokens  decode steps of each row, the end token included
    """

    answers: list[str]
    trajectories: np.ndarray
    parsed: list[bool]
    errors: list = field(default_factory=list)
    states: list = field(default_factory=list)
    num_generated_tokens: list[int] = field(default_factory=list)
