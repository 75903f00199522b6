"""A stage's training data: the Ray Dataset of its mixture and how many rows it holds.

Planning-only stages read one row per train keyframe; other mixtures sample instruction examples by the stage's
weights (``odvla.platform.data.conversations.mixture.examples_for_stage``) and expand each sample into its
examples. The row count comes from Parquet metadata / the examples table, never from executing the pipeline.
"""
from __future__ import annotations

from dataclasses import dataclass
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


CACHE_MODES = ("auto", "always", "never")
ROW_OVERHEAD_BYTES = 64 * 1024
"""Decoded bytes of a row besides its images (geometry, boxes, map polylines, text), rounded up."""


@dataclass
class CachePlan:
    """Whether a stage keeps its decoded rows across epochs (``data.cache_decoded``), and why."""

    cache: bool
    reason: str
    epochs: float
    """Planned passes over the stage's rows (optimiser steps x rows per step / rows)."""
    mb: float
    """Estimated decoded size of the stage's rows, MB."""


def decoded_row_bytes(data: DataConfig, vision: VisionConfig) -> int:
    """Estimated bytes of one decoded row: ``clip_len`` keyframes of 6 uint8 images at the network size, plus
    ``ROW_OVERHEAD_BYTES`` per keyframe."""
    from odvla.model.constants import CAMERAS

    frames = max(int(data.clip_len), 1)
    return frames * (len(CAMERAS) * int(vision.image_height) * int(vision.image_width) * 3 + ROW_OVERHEAD_BYTES)


def cache_plan(data: DataConfig, vision: VisionConfig, num_rows: int, rows_per_step: int, total_steps: int,
               nodes: int) -> CachePlan:
    """Decide ``data.cache_decoded`` for a stage of ``total_steps`` optimiser steps of ``rows_per_step`` rows
    (batch x accumulation x workers) over ``num_rows`` rows, on a cluster of ``nodes`` alive nodes.

    Each epoch of a Ray dataset is a new execution: its decode actors start again (seconds each time on a small
    machine) and decode every image again. Decoding is deterministic, so rows kept from the first epoch are the rows
    later epochs would decode, in the same order."""
    mode = str(data.cache_decoded).lower()
    if mode not in CACHE_MODES:
        raise ValueError(f"data.cache_decoded={data.cache_decoded!r}: expected one of {', '.join(CACHE_MODES)}")
    epochs = total_steps * rows_per_step / max(num_rows, 1)
    mb = num_rows * decoded_row_bytes(data, vision) / 2 ** 20
    cap = float(data.cache_decoded_max_mb)

    def plan(cache: bool, why: str) -> CachePlan:
        return CachePlan(cache, why, epochs, mb)

    if mode == "never":
        return plan(False, "data.cache_decoded=never")
    if mb > cap:
        return plan(False, f"{num_rows} decoded rows are about {mb:.0f} MB, over data.cache_decoded_max_mb={cap:g}")
    if mode == "always":
        return plan(True, "data.cache_decoded=always")
    if epochs <= 1:
        return plan(False, f"one epoch or less ({epochs:.2f}): every row is decoded once anyway")
    if nodes != 1:
        return plan(False, f"{nodes} nodes: decoded blocks on a lost node could not be rebuilt "
                           "(data.cache_decoded=always keeps them anyway)")
    return plan(True, f"{epochs:.1f} epochs of {num_rows} rows, about {mb:.0f} MB decoded, one node")
