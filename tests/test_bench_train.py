"""``odvla bench train --profile`` end to end: a real stage3 run (Ray Train + DeepSpeed, the demo's clips) whose rank 0
records its optimiser steps with torch.profiler, logs the table to the run and prints where a step's time goes."""
from __future__ import annotations

import re

import pytest

pytestmark = pytest.mark.integration


def test_bench_train_profile_prints_where_a_step_goes(ray_session, shards_dir, capsys):
    from odvla.platform.cli.main import main

    assert main(["bench", "train", "--workers", "1", "--steps", "3", "--warmup", "1", "--profile", "2",
                 "--batch-size", "2", "--shards", str(shards_dir)]) == 0
    out = capsys.readouterr().out
    assert "where a step's time goes" in out, out
    rows = {m.group(1): float(m.group(2)) for m in re.finditer(r"^\| ([\w. ()]+) \| [\d.]* \| [\d.]* \| ([\d.]+) \|",
                                                                out, flags=re.M)}
    # every part of a stage3 step on clips is there, and the ones that train have time
    for part in ("vision.backbone", "vision.bev", "vision.agents", "vision.map", "llm.forward_loss",
                 "train.optimizer"):
        assert rows.get(part, 0.0) > 0.0, (part, out)
    step = re.search(r"\*\*step \(wall\)\*\* \| \| \| \*\*([\d.]+)\*\*", out)
    assert step and sum(rows.values()) <= 1.05 * float(step.group(1)), out  # the parts fit inside the step
    tokens = re.search(r"2 optimiser steps, 2\.0 samples per step, (\d+) LLM input tokens per sample", out)
    assert tokens and int(tokens.group(1)) > 100, out  # a clip of 2 planning prompts


def test_bench_train_refuses_a_profile_longer_than_the_run():
    from odvla.platform.cli.main import main

    with pytest.raises(SystemExit, match=r"--profile 5 after --warmup 3 needs --steps >= 8"):
        main(["bench", "train", "--workers", "1", "--steps", "4", "--profile", "5", "--shards", "/nonexistent"])
