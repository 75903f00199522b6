"""A stage's training data: the Ray Dataset of its mixture and how many rows it holds.

Planning-only stages read one row per train keyframe; other mixtures sample instruction examples by the stage's
weights (``odvla.platform.data.conversations.mixture.examples_for_stage``) and expand each sample into its
examples. The row count comes from Parquet metadata / the examples table, never from executing the pipeline.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Optional

if TYPE_CHECKING:
    from odvla.model.config import VisionConfig
    from odvla.platform.config.schema import DataConfig, StageConfig


def _planning_only(mixture: dict) -> bool:
    return set(mixture) == {"planning"} and float(mixture["planning"]) == 1.0


def stage_examples(data: DataConfig, stage: StageConfig, seed: int, split: str = "train"):
    """None (one 'planning' row per sample) or the examples table of ``stage.mixture`` (sampled with ``seed``,
    ``train.seed``)."""
    if _planning_only(stage.mixture):
        return None
    from odvla.platform.data.conversations.mixture import examples_for_stage

    return examples_for_stage(data, stage, seed, split)


def mixture_report(examples) -> Optional[dict]:
    if examples is None:
        return None
    from odvla.platform.data.conversations.mixture import mixture_counts

    return mixture_counts(examples)


def build_stage_dataset(data: DataConfig, vision: VisionConfig, stage: StageConfig, seed: int,
                        split: str = "train"):
    """-> (ray.data.Dataset, num_rows, mixture report or None): the rows of ``stage``'s mixture of ``data.shards``,
    images at ``vision``'s size; ``seed`` (``train.seed``) samples the mixture."""
    if not data.shards:
        raise ValueError("data.shards is not set: run `odvla prepare` (or `odvla demo`) and pass "
                         "--set data.shards=<folder>")
    from odvla.platform.data.pipeline import build_dataset
    from odvla.platform.data.shards import read_split

    examples = stage_examples(data, stage, seed, split)
    if examples is None:
        num_rows = read_split(data.shards, split, columns=["sample_token"]).num_rows
    else:
        num_rows = examples.num_rows
    if num_rows == 0:
        raise ValueError(f"stage {stage.name}: no {split} rows in {data.shards} for mixture {stage.mixture}")
    return build_dataset(data, vision, split, examples), num_rows, mixture_report(examples)
