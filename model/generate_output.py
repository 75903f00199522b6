"""What ``OpenDriveVLA.generate`` returns."""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import torch
from transformers import LogitsProcessor

PLAN_PARTS = ("vision_ms", "prompt_ms", "prefill_ms", "decode_ms", "parse_ms")
"""The parts of ``OpenDriveVLA.generate``'s time, in order (``GenerateOutput.timings``)."""


class StepClock(LogitsProcessor):
    """Records when generation asks for each step's logits: the first call comes right after the prefill forward,
    each later one after one decode step, so (first - start) is the prefill and (end - first) the decode steps
    after it. Host clock: on CUDA it reads the queue as the host sees it (the constrained decoder reads the ids on
    the host every step, which keeps the two close). It leaves the scores as they are."""

    def __init__(self):
        self.calls: list[float] = []

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        self.calls.append(time.perf_counter())
        return scores


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
    timings               wall ms of the batch's plan parts (``PLAN_PARTS``: vision encoder, prompt assembly, the
                          LLM's prefill, the decode steps after it, parsing the answers) and ``decode_steps``
    """

    answers: list[str]
    trajectories: np.ndarray
    parsed: list[bool]
    errors: list = field(default_factory=list)
    states: list = field(default_factory=list)
    num_generated_tokens: list[int] = field(default_factory=list)
    timings: dict = field(default_factory=dict)
