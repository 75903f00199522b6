"""The conversation store on the session's synthetic nuScenes shards (prepared through the real data layer):
every generated task is present in both splits and each stage preset's mixture has examples."""
from __future__ import annotations

import json

from odvla.platform.config import load_config
from odvla.platform.data.conversations.build import build_instructions
from odvla.platform.data.conversations.mixture import examples_for_stage, mixture_counts
from odvla.platform.data.shards import read_split


def test_store_and_stage_mixtures_on_synthetic_shards(shards_dir, tmp_path):
    out = tmp_path / "conversations"
    report = build_instructions(shards_dir, seed=0, out_dir=out)
    for split in ("train", "val"):
        counts = report["counts"][split]["generated"]
        samples = read_split(shards_dir, split, columns=["sample_token"]).num_rows
        assert counts["planning"] == samples and counts["caption_scene"] == samples
        assert counts["qa"] >= 2 * samples  # count + action questions at least, per keyframe
        assert counts["interaction"] > 0 and counts["caption_agent"] > 0 and counts["caption_map"] > 0
    print(json.dumps(report["counts"], sort_keys=True))
    for stage in ("stage1", "stage2", "stage2_5", "stage3"):
        cfg = load_config(model="tiny", stage=stage,
                          overrides=[f"data.shards={shards_dir}", f"data.instructions={out}"])
        examples = examples_for_stage(cfg.data, cfg.stage, cfg.train.seed, "train")
        counts = mixture_counts(examples)
        print(stage, {t: c["selected"] for t, c in counts.items()})
        for task, w in cfg.stage.mixture.items():
            if w > 0 and task != "external":
                assert counts[task]["selected"] > 0, (stage, task)
        assert examples.num_rows == sum(c["selected"] for c in counts.values())
