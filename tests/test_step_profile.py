"""The step profile (``odvla bench train --profile``): torch.profiler events summed per named part, backward
operators charged to the part whose forward made them."""
from __future__ import annotations

import time

import pytest
import torch

from odvla.model.profiling import scope
from odvla.platform.train.step_profile import StepProfiler, part_times, profile_table

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _profile(fn):
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        fn()
    return part_times(prof.events())


def test_backward_time_goes_to_the_part_that_ran_the_forward():
    big = torch.nn.Linear(512, 512)
    small = torch.nn.Linear(512, 8)
    x = torch.randn(256, 512)

    def step():
        with scope("train.forward"):
            with scope("big"):
                h = torch.relu(big(x))
                for _ in range(4):
                    h = torch.relu(big(h))
            with scope("small"):
                y = small(h).sum()
        with scope("train.backward"):
            y.backward()

    parts = _profile(step)
    assert parts["big"]["backward"] > 0 and parts["small"]["backward"] > 0
    assert parts["big"]["backward"] > 5 * parts["small"]["backward"]  # 5 big matmuls against one 8-wide one
    assert parts["big"]["forward"] > parts["small"]["forward"]
    # the backward operators' time is not also counted as train.backward's own time
    total_bwd = sum(v["backward"] for v in parts.values())
    assert parts["train.backward"]["backward"] < 0.5 * total_bwd


def test_python_time_inside_a_range_counts_for_it():
    def step():
        with scope("sleepy"):
            time.sleep(0.05)
        with scope("quick"):
            torch.ones(3).sum()

    parts = _profile(step)
    assert parts["sleepy"]["forward"] >= 45_000  # microseconds
    assert parts["quick"]["forward"] < 20_000


def test_clip_context_folds_its_inner_parts():
    lin = torch.nn.Linear(64, 64)
    x = torch.randn(32, 64)

    def step():
        with torch.no_grad(), scope("clip.context"):
            with scope("vision.backbone"):
                lin(x)
        with scope("vision.backbone"):
            lin(x).sum().backward()

    parts = _profile(step)
    assert parts["clip.context"]["forward"] > 0 and parts["clip.context"]["backward"] == 0
    assert parts["vision.backbone"]["backward"] > 0


def test_the_model_marks_its_parts_and_a_frozen_backbone_costs_no_backward():
    from odvla.model.vla import OpenDriveVLA
    from odvla.platform.bench.bench_model import synthetic_batch
    from odvla.platform.config import load_config

    cfg = load_config(model="tiny", stage="stage3")
    model = OpenDriveVLA(cfg.model)
    batch = synthetic_batch(cfg.model.vision, 2)
    seen = {}
    for parts_trained in (["projectors", "llm", "vision"], ["projectors", "llm"]):
        model.set_trainable(parts_trained)
        model.train()
        parts = _profile(lambda: model(batch)["lm"].backward())
        seen[tuple(parts_trained)] = parts
    full, frozen = seen[("projectors", "llm", "vision")], seen[("projectors", "llm")]
    for p in ("vision.backbone", "vision.bev", "vision.agents", "vision.map", "text.prompt", "llm.forward_loss"):
        assert full[p]["forward"] > 0, p
    assert full["vision.backbone"]["backward"] > 0 and full["llm.forward_loss"]["backward"] > 0
    assert frozen["vision.backbone"]["backward"] == 0 and frozen["llm.forward_loss"]["backward"] > 0


def test_step_profiler_records_the_steps_after_the_warmup_and_renders_a_table():
    lin = torch.nn.Linear(128, 128)
    prof = StepProfiler(steps=2, warmup=1)
    tables = []
    for step in range(1, 5):
        prof.maybe_start(step - 1)
        with scope("train.forward"):
            lin(torch.randn(64, 128)).sum().backward()
        tables.append(prof.after_step(step, samples=4, tokens=40))
    assert tables[0] is None and tables[1] is None and tables[3] is None  # recorded steps 2 and 3 only
    table = tables[2]
    assert table is not None and prof.done and "| train.forward |" in table
    assert "2 optimiser steps, 4.0 samples per step, 10 LLM input tokens per sample" in table


def test_profile_table_shares_add_up():
    parts = {"a": {"forward": 30_000.0, "backward": 10_000.0}, "b": {"forward": 20_000.0, "backward": 0.0}}
    table = profile_table(parts, steps=2, wall_s=0.1, samples=8, tokens=800)
    rows = {line.split("|")[1].strip(): line for line in table.splitlines() if line.startswith("| ")}
    assert "| 20.0 |" in rows["a"] and "40%" in rows["a"]  # (30 + 10) ms / 2 steps, of a 50 ms step
    assert "| 10.0 |" in rows["b"] and "20%" in rows["b"]
    assert "| 20.0 | 40% |" in rows["(outside every range)"]
