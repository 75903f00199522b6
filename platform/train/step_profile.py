"""Where a training step's time goes: ``torch.profiler`` over a few optimiser steps, summed per named part.

``train.profile_steps`` N > 0 makes rank 0 record N optimiser steps after ``train.profile_warmup`` steps
(``odvla bench train --profile`` sets both and prints the table). The model and the loop mark their parts with
``odvla.model.profiling.scope`` (``odvla::vision.backbone``, ``odvla::llm.forward_loss``, ``odvla::train.backward``,
...). ``part_times`` turns the recorded events into milliseconds per part:

- **forward**: a range's own time, i.e. its CPU time minus the ranges nested in it (Python work between operators,
  Hungarian matching in scipy included);
- **backward**: every ``autograd::engine::evaluate_function`` event is charged to the part whose forward operator
  has the same autograd sequence number; what is left of ``train.backward`` stays there (gradient accumulation,
  DeepSpeed's hooks).

The earlier keyframe of a clip runs without gradients inside ``clip.context``; everything in it is charged to
that range as a whole, so the table shows what the no-gradient frame costs.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Optional

from odvla.model.profiling import PREFIX

CONTEXT = "clip.context"
"""Range of a clip's no-gradient earlier keyframe: its inner ranges are folded into it."""


def _scope_of(ev) -> Optional[str]:
    """Name (without the prefix) of the nearest ``odvla::`` range enclosing ``ev`` (itself included); a
    ``clip.context`` anywhere above wins."""
    found, node = None, ev
    while node is not None:
        if node.name.startswith(PREFIX):
            name = node.name[len(PREFIX):]
            if name == CONTEXT:
                return CONTEXT
            found = found or name
        node = node.cpu_parent
    return found


def part_times(events) -> dict[str, dict[str, float]]:
    """``{part: {"forward": us, "backward": us}}`` summed over ``events`` (``profiler.events()``), CPU time in
    microseconds. Parts are the ``odvla::`` ranges; backward operators whose forward was recorded outside any range
    go to ``backward (unattributed)``."""
    out: dict[str, dict[str, float]] = {}

    def add(part: str, kind: str, us: float) -> None:
        out.setdefault(part, {"forward": 0.0, "backward": 0.0})[kind] += us

    seq_part: dict[int, str] = {}
    backward_events = []
    # An operator records the autograd sequence number that the next node will get, whether or not it makes one;
    # the one that does make node N is the last to record N. So in time order the last operator wins.
    for ev in sorted(events, key=lambda e: e.time_range.start):
        if ev.name.startswith("autograd::engine::evaluate_function"):
            backward_events.append(ev)
            continue
        if ev.name.startswith(PREFIX):
            part = _scope_of(ev)
            if part == CONTEXT and ev.name != PREFIX + CONTEXT:
                continue  # folded into the context range's total
            nested = sum(c.cpu_time_total for c in _nested_ranges(ev))
            add(part, "forward", max(ev.cpu_time_total - nested, 0.0))
        elif getattr(ev, "sequence_nr", -1) >= 0 and ev.cpu_parent is not None and not _is_nested_backward(ev):
            part = _scope_of(ev)
            if part is not None:
                seq_part[ev.sequence_nr] = part
    for ev in backward_events:
        if _is_nested_backward(ev):
            continue  # its time is inside its parent's
        part = seq_part.get(ev.sequence_nr, "backward (unattributed)")
        add(part, "backward", ev.cpu_time_total)
        host = _scope_of(ev)  # the range the backward ran in (train.backward): its own time must not count it
        if host is not None and host in out:
            out[host]["forward"] -= ev.cpu_time_total
    # train.backward's remainder is backward work (hooks, accumulation), not forward
    if "train.backward" in out:
        tb = out["train.backward"]
        tb["backward"], tb["forward"] = tb["backward"] + max(tb["forward"], 0.0), 0.0
    for v in out.values():
        v["forward"] = max(v["forward"], 0.0)
    return out


def _nested_ranges(ev):
    """The ``odvla::`` ranges directly nested in ``ev`` (the first ones met below it on each branch)."""
    stack = list(ev.cpu_children)
    while stack:
        c = stack.pop()
        if c.name.startswith(PREFIX):
            yield c
        else:
            stack.extend(c.cpu_children)


def _is_nested_backward(ev) -> bool:
    node = ev.cpu_parent
    while node is not None:
        if node.name.startswith("autograd::engine::evaluate_function"):
            return True
        node = node.cpu_parent
    return False


PART_ORDER = ("train.data", "vision.backbone", "vision.bev", "vision.scene", "vision.heatmap", "vision.agents",
              "vision.map", "vision.agent_losses", "vision.map_losses", "vision.states", CONTEXT, "text.prompt",
              "llm.embed", "llm.forward_loss", "train.forward", "train.backward", "train.optimizer",
              "train.finish_step")
"""Rows of the table, in the order a step runs them; parts not listed follow in name order."""


def profile_table(parts: dict, steps: int, wall_s: float, samples: int, tokens: int) -> str:
    """Markdown: milliseconds per optimiser step for each part (forward, backward, total, share of the step's
    wall time), then the step's wall time and the tokens per sample."""
    order = [p for p in PART_ORDER if p in parts] + sorted(p for p in parts if p not in PART_ORDER)
    step_ms = 1000.0 * wall_s / max(steps, 1)
    lines = ["| part | forward ms | backward ms | total ms | share of step |", "|---|---:|---:|---:|---:|"]
    counted = 0.0
    for p in order:
        f, b = parts[p]["forward"] / 1000 / steps, parts[p]["backward"] / 1000 / steps
        counted += f + b
        lines.append(f"| {p} | {f:.1f} | {b:.1f} | {f + b:.1f} | {100 * (f + b) / step_ms:.0f}% |")
    lines.append(f"| (outside every range) | | | {max(step_ms - counted, 0.0):.1f} | "
                 f"{100 * max(step_ms - counted, 0.0) / step_ms:.0f}% |")
    lines.append(f"| **step (wall)** | | | **{step_ms:.1f}** | 100% |")
    per = samples / max(steps, 1)
    return "\n".join(lines + ["", f"{steps} optimiser steps, {per:.1f} samples per step, "
                              f"{tokens / max(samples, 1):.0f} LLM input tokens per sample, "
                              f"{samples / max(wall_s, 1e-9):.2f} samples/s while profiled", ""])


@dataclass
class StepProfiler:
    """Records optimiser steps ``warmup+1 .. warmup+steps`` of one worker with ``torch.profiler``.

    ``maybe_start(step)`` before a step's first micro-batch, ``after_step(step, samples, tokens)`` after the
    optimiser step; ``after_step`` returns the markdown table once the last profiled step is done, else None."""

    steps: int
    warmup: int
    _prof: object = None
    _t0: float = 0.0
    _samples: int = 0
    _tokens: int = 0
    done: bool = False
    table: Optional[str] = None
    parts: dict = field(default_factory=dict)

    def maybe_start(self, finished_steps: int) -> None:
        if self.steps <= 0 or self.done or self._prof is not None or finished_steps != self.warmup:
            return
        import torch

        self._prof = torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU])
        self._prof.__enter__()
        self._t0 = time.perf_counter()

    def after_step(self, step: int, samples: int, tokens: int) -> Optional[str]:
        if self._prof is None:
            return None
        self._samples += samples
        self._tokens += tokens
        if step < self.warmup + self.steps:
            return None
        wall = time.perf_counter() - self._t0
        self._prof.__exit__(None, None, None)
        self.parts = part_times(self._prof.events())
        self._prof, self.done = None, True
        self.table = profile_table(self.parts, self.steps, wall, self._samples, self._tokens)
        return self.table
