"""Kill-and-resume with scene clips (``data.clip_len=2``): a DeepSpeed run of the tiny OpenDriveVLA on Ray Train,
whose train worker process is SIGKILLed after the first checkpoint, resumes from it and consumes exactly the clip
sequence of an uninterrupted run with the same seed, none twice (the per-step sample log names each clip by the
keyframe it ends at: every keyframe ends exactly one clip). The full fault-tolerance checks (two ranks, MLflow
across the restart, the registry) are in ``test_train_resume.py``; this one keeps to one worker, the clip data path
and the fewest steps that cross a checkpoint."""
from __future__ import annotations

import os
import signal

import pytest

from odvla.platform.config import load_config
from train_helpers import Background, PauseAfterFirstCheckpoint, committed_checkpoints, wait_for

MAX_STEPS, EVERY, BATCH, CLIP = 4, 2, 2, 2


def _cfg(shards_dir, storage, run_name, uri):
    return load_config(model="tiny", stage="stage3", overrides=[
        f"data.shards={shards_dir}", f"data.clip_len={CLIP}", "data.clip_loss=last", "train.num_workers=1",
        "train.cpus_per_worker=1", f"train.max_steps={MAX_STEPS}", f"train.checkpoint_every={EVERY}",
        f"data.batch_size={BATCH}", f"train.storage_path={storage}", f"train.run_name={run_name}",
        f"tracking.tracking_uri={uri}", "tracking.experiment=test-resume-clips", "train.max_failures=2",
        "tracking.log_system_metrics=false", "tracking.log_checkpoint=false"])


@pytest.mark.integration
@pytest.mark.slow
def test_killed_worker_resumes_the_same_clip_sequence(ray_session, shards_dir, mlflow_sqlite, tmp_path):
    from odvla.platform.data.shards import read_split
    from odvla.platform.train import run_stage
    from odvla.platform.train.sample_log import LOG_DIR, read_sample_log

    storage = tmp_path / "runs"
    ref = run_stage(_cfg(shards_dir, storage, "reference", mlflow_sqlite), register=False)
    assert ref.metrics["restarts"] == 0 and ref.metrics["global_step"] == MAX_STEPS
    reference = read_sample_log(str(storage / "reference" / LOG_DIR))

    hook = tmp_path / "hook"
    bg = Background(lambda: run_stage(_cfg(shards_dir, storage, "resume", mlflow_sqlite),
                                      worker_hooks=[PauseAfterFirstCheckpoint(hook)], register=False))
    pid_file = wait_for(lambda: (hook / "rank0-0.pid").exists() and hook / "rank0-0.pid", 900,
                        "the first checkpoint of attempt 0", bg)
    pid, step = map(int, pid_file.read_text().split()[:2])
    assert step == EVERY
    wait_for(lambda: committed_checkpoints(storage / "resume"), 120, "Ray Train to commit the checkpoint", bg)
    os.kill(pid, signal.SIGKILL)  # the train worker process dies mid-run
    (hook / "go").touch()
    res = bg.result(600)

    m = res.metrics
    assert m["global_step"] == MAX_STEPS and m["final"] is True and m["restarts"] == 1
    assert m["samples_seen"] == MAX_STEPS * BATCH  # clip rows counted once each, none twice
    resumed = read_sample_log(str(storage / "resume" / LOG_DIR))
    assert sorted(resumed) == sorted(reference) == list(range(1, MAX_STEPS + 1))
    assert [resumed[s]["attempt"] for s in sorted(resumed)] == [0] * EVERY + [1] * (MAX_STEPS - EVERY)
    for s in reference:  # step for step, the clips of the uninterrupted run in the same order
        assert resumed[s]["ranks"] == reference[s]["ranks"], f"step {s} trained other clips after the resume"
        assert len(resumed[s]["ranks"]) == 1 and len(resumed[s]["ranks"][0]) == BATCH
    ends = [t for s in sorted(resumed) for t in resumed[s]["ranks"][0]]
    assert len(ends) == len(set(ends)) == MAX_STEPS * BATCH  # no clip trained twice

    # the log names clips of train keyframes, shuffled at the clip level (not the shards' keyframe order)
    train = read_split(str(shards_dir), "train", columns=["sample_token", "scene_token", "frame_index"]).to_pylist()
    order = {r["sample_token"]: (r["scene_token"], r["frame_index"]) for r in train}
    assert set(ends) <= set(order)
    assert [order[t] for t in ends] != sorted(order[t] for t in ends)
