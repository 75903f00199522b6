"""Which samples each optimiser step trained on: a small log in the run's storage that proves a resume exact.

``samples_seen`` comes out as steps x batch x workers whatever happens, so a resume that trained the same batches
twice would still add up. This log names them: for every optimiser step, the ``sample_token`` of each row each rank
consumed (all micro-batches of the step, in order). Layout, beside Ray Train's checkpoints of the run:

    <train.storage_path>/<run_name>/sample_log/a<attempt:03d>-<first step:08d>-<last step:08d>.jsonl
        {"step": 3, "epoch": 0, "attempt": 1, "ranks": [["tok_a", "tok_b"], ["tok_c", "tok_d"]]}   one line a step

Rank 0 writes one chunk per checkpoint (and one at the end), so a chunk exists only for steps that reached a
checkpoint attempt; steps trained after the last checkpoint of a lost attempt are repeated by the next attempt,
whose chunk (higher attempt number) wins in ``read_sample_log``. Written through pyarrow's file systems, so
``s3://`` / ``gs://`` storage works as well as a shared folder (one object per chunk, no appends).
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Optional

from odvla.platform.durable_paths import filesystem_of

LOG_DIR = "sample_log"


@dataclass
class SampleLog:
    """Rank 0's buffer of per-step sample tokens; ``flush`` writes the buffered steps as one chunk."""

    root: Optional[str]
    """``<storage>/<run_name>/sample_log`` (a folder or URI); None disables the log."""
    attempt: int = 0
    """Resumes from a checkpoint so far (``TrainState.restarts``): tells a repeated step's attempts apart."""
    pending: list = field(default_factory=list)

    def add(self, step: int, epoch: int, ranks: list) -> None:
        """``ranks[r]``: the sample tokens rank ``r`` trained on in optimiser step ``step`` (1-based)."""
        if self.root:
            self.pending.append({"step": int(step), "epoch": int(epoch), "attempt": self.attempt,
                                 "ranks": [list(map(str, r)) for r in ranks]})

    def flush(self) -> Optional[str]:
        """Write the pending steps as one chunk; returns its path (None when there was nothing to write)."""
        if not self.root or not self.pending:
            return None
        fs, base = filesystem_of(self.root)
        fs.create_dir(base, recursive=True)
        first, last = self.pending[0]["step"], self.pending[-1]["step"]
        path = f"{base.rstrip('/')}/a{self.attempt:03d}-{first:08d}-{last:08d}.jsonl"
        with fs.open_output_stream(path) as f:
            f.write("".join(json.dumps(r) + "\n" for r in self.pending).encode())
        self.pending = []
        return path


def read_sample_log(root: str) -> dict[int, dict]:
    """{step: record} over all chunks under ``root``; where attempts repeated a step, the latest attempt wins.

    Raises FileNotFoundError naming ``root`` when it holds no chunk, and ValueError naming the chunk and line of a
    record that does not parse."""
    import pyarrow.fs as pafs

    fs, base = filesystem_of(root)
    infos = [i for i in fs.get_file_info(pafs.FileSelector(base, allow_not_found=True))
             if i.type == pafs.FileType.File and i.path.endswith(".jsonl")]
    if not infos:
        raise FileNotFoundError(f"no sample log chunk under {root}")
    steps: dict[int, dict] = {}
    for info in sorted(infos, key=lambda i: i.path):  # attempt-major order: later attempts overwrite
        with fs.open_input_stream(info.path) as f:
            text = f.read().decode()
        for n, line in enumerate(text.splitlines(), 1):
            try:
                rec = json.loads(line)
                step = int(rec["step"])
            except (ValueError, KeyError, TypeError) as e:
                raise ValueError(f"sample log {info.path} line {n}: not a step record ({e})") from e
            if step not in steps or rec["attempt"] >= steps[step]["attempt"]:
                steps[step] = rec
    return steps


def repeated_steps(root: str) -> int:
    """Optimiser steps trained more than once across attempts (recorded in a chunk by more than one attempt)."""
    import pyarrow.fs as pafs

    fs, base = filesystem_of(root)
    seen: dict[int, set] = {}
    for info in fs.get_file_info(pafs.FileSelector(base, allow_not_found=True)):
        if info.type != pafs.FileType.File or not info.path.endswith(".jsonl"):
            continue
        with fs.open_input_stream(info.path) as f:
            for line in f.read().decode().splitlines():
                rec = json.loads(line)
                seen.setdefault(int(rec["step"]), set()).add(int(rec["attempt"]))
    return sum(len(a) - 1 for a in seen.values())
