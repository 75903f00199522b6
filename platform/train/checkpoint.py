"""Checkpoints of a training run: one DeepSpeed shard per rank plus the loop's own state, in one Ray checkpoint.

Layout of a reported checkpoint (Ray merges the folders of all ranks):

    deepspeed/<tag>/mp_rank_00_model_states.pt           rank 0: module weights (+ client state)
    deepspeed/<tag>/zero_pp_rank_<r>_..._optim_states.pt one per rank: its ZeRO optimiser shard
    deepspeed/latest                                     the tag to load
    train_state.json                                     rank 0: TrainState (step, epoch, batches consumed, run id)
    export/                                              only in the final checkpoint: the consolidated export

Resume: ``ray.train.get_checkpoint()`` -> ``engine.load_checkpoint`` on every rank -> ``TrainState`` says where in
the data the run stopped, so the loop skips exactly the micro-batches already consumed in that epoch.
"""
from __future__ import annotations

import json
import os
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional

DS_DIR = "deepspeed"
STATE_FILE = "train_state.json"
EXPORT_DIR = "export"


@dataclass
class TrainState:
    global_step: int = 0
    """Optimiser steps done."""
    epoch: int = 0
    """Epoch in progress."""
    batches_in_epoch: int = 0
    """Micro-batches of ``epoch`` this rank already consumed (the same on every rank: equal shards)."""
    samples_seen: int = 0
    """Rows trained on, all ranks together."""
    tokens_seen: int = 0
    run_id: Optional[str] = None
    restarts: int = 0
    """Times the run was resumed from a checkpoint."""

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1)

    @classmethod
    def from_json(cls, text: str) -> "TrainState":
        return cls(**json.loads(text))


def new_checkpoint_dir() -> Path:
    """A fresh local folder for this rank's part; Ray deletes it after the (async) upload."""
    return Path(tempfile.mkdtemp(prefix="odvla-ckpt-"))


def save_shard(engine, ckpt_dir: Path, state: TrainState, rank: int) -> None:
    """Every rank: write its DeepSpeed shard (collective call); rank 0 also writes the loop state."""
    engine.save_checkpoint(str(ckpt_dir / DS_DIR), tag=f"step{state.global_step:08d}",
                           client_state={"odvla_state": json.loads(state.to_json())})
    if rank == 0:
        (ckpt_dir / STATE_FILE).write_text(state.to_json())


def load_into(engine, ckpt_dir: str | os.PathLike) -> TrainState:
    """Every rank: load its shard (module, optimiser, scheduler) and the loop state from a Ray checkpoint."""
    ckpt_dir = Path(ckpt_dir)
    state_file = ckpt_dir / STATE_FILE
    if not state_file.exists():
        raise FileNotFoundError(f"checkpoint {ckpt_dir} has no {STATE_FILE}: not a checkpoint of this platform")
    load_path, _ = engine.load_checkpoint(str(ckpt_dir / DS_DIR), load_optimizer_states=True,
                                          load_lr_scheduler_states=True)
    if load_path is None:
        raise FileNotFoundError(f"DeepSpeed found no checkpoint under {ckpt_dir / DS_DIR}")
    return TrainState.from_json(state_file.read_text())
