"""A stage's training data: the Ray Dataset of its mixture and how many rows it holds.

Planning-only stages read one row per train keyframe; other mixtures sample instruction examples by the stage's
weights (``odvla.platform.data.conversations.mixture.examples_for_stage``) and expand each sample into its
examples. The row count comes from Parquet metadata / the examples table, never from executing the pipeline.
"""
from __future__ import annotations

from typing import Optional

from odvla.platform.config import Config


def _planning_only(mixture: dict) -> bool:
    return set(mixture) == {"planning"} and float(mixture["planning"]) == 1.0


def stage_examples(cfg: Config, split: str = "train"):
    """None (one 'planning' row per sample) or the examples table of the stage's mixture."""
    if _planning_only(cfg.stage.mixture):
        return None
    from odvla.platform.data.conversations.mixture import examples_for_stage

    return examples_for_stage(cfg, split)


def mixture_report(examples) -> Optional[dict]:
    if examples is None:
        return None
    from odvla.platform.data.conversations.mixture import mixture_counts

    return mixture_counts(examples)


def build_stage_dataset(cfg: Config, split: str = "train"):
    """-> (ray.data.Dataset, num_rows, mixture report or None)."""
    if not cfg.data.shards:
        raise ValueError("data.shards is not set: run `odvla prepare` (or `odvla demo`) and pass "
                         "--set data.shards=<folder>")
    from odvla.platform.data.pipeline import build_dataset
    from odvla.platform.data.shards import read_split

    examples = stage_examples(cfg, split)
    if examples is None:
        num_rows = read_split(cfg.data.shards, split, columns=["sample_token"]).num_rows
    else:
        num_rows = examples.num_rows
    if num_rows == 0:
        raise ValueError(f"stage {cfg.stage.name}: no {split} rows in {cfg.data.shards} for mixture "
                         f"{cfg.stage.mixture}")
    return build_dataset(cfg, split, examples), num_rows, mixture_report(examples)
