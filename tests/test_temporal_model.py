"""Temporal perception in the model: track life cycle, identity across a scene's keyframes, clip training."""
from __future__ import annotations

import pytest
import torch

from odvla.model.clip_batch import CLIP_KEY, clip_frames
from odvla.model.config import ModelConfig
from odvla.model.track_policy import TrackPolicy, fixed_assignments, runtime_update
from odvla.model.vision_encoder import VisionEncoder
from odvla.model.vla import OpenDriveVLA
from odvla.platform.bench.bench_model import synthetic_batch

pytestmark = pytest.mark.usefixtures("one_torch_thread")

A, B_, C = 101, 202, 303  # instance ids of three synthetic agents


def tiny_cfg() -> ModelConfig:
    cfg = ModelConfig()
    cfg.vision.image_height, cfg.vision.image_width = 32, 64
    return cfg


def scene_frames(cfg, T: int = 4) -> list[dict]:
    """One scene (one row per frame batch), keyframes 0..T-1 at 0.5 s: agent A drives along x at 4 m/s, agent C is
    annotated in frames 0-1 only, agent B appears from frame 2."""
    frames = []
    for t in range(T):
        b = synthetic_batch(cfg.vision, 1, seed=10 + t)
        boxes = torch.zeros(1, 3, 9)
        boxes[..., 3:6] = torch.tensor([1.9, 4.5, 1.6])
        ids = torch.full((1, 3), -1, dtype=torch.long)
        labels = torch.full((1, 3), -1, dtype=torch.long)
        present = [(A, (5.0 + 2.0 * t, 3.0))] + ([(C, (-10.0, -6.0))] if t < 2 else []) \
            + ([(B_, (12.0, -8.0))] if t >= 2 else [])
        for j, (inst, (x, y)) in enumerate(present):
            boxes[0, j, 0:2] = torch.tensor([x, y])
            boxes[0, j, 7] = 4.0 if inst == A else 0.0
            ids[0, j], labels[0, j] = inst, 0
        b.update(gt_boxes=boxes, gt_labels=labels, gt_instance=ids,
                 gt_agent_future=boxes[:, :, None, :2].expand(1, 3, 6, 2).clone(),
                 gt_agent_future_mask=torch.ones(1, 3, 6), frame_index=torch.tensor([t]),
                 scene_token=["sceneX"], sample_token=[f"sceneX_{t}"])
        frames.append(b)
    return frames


def to_clip(frames: list[dict], supervised: list[bool]) -> dict:
    out = {}
    for k, v in frames[0].items():
        if torch.is_tensor(v):
            out[k] = torch.stack([f[k] for f in frames], dim=1)
        else:
            out[k] = [[f[k][r] for f in frames] for r in range(len(v))]
    out[CLIP_KEY] = torch.tensor(supervised, dtype=torch.bool)[None].expand(len(frames[0]["sample_token"]), -1)
    return out


def test_runtime_tracker_births_misses_and_deaths():
    """UniAD RuntimeTrackerBase semantics: born at >= birth, a miss below keep, ended after miss_tolerance misses,
    scores between keep and birth neither confirm nor miss."""
    p = TrackPolicy(birth=0.4, keep=0.35, miss_tolerance=2)
    ids = torch.full((3,), -1, dtype=torch.long)
    miss = torch.zeros(3, dtype=torch.long)
    ids, miss, nxt = runtime_update(ids, miss, torch.tensor([0.9, 0.1, 0.5]), 7, p)
    assert ids.tolist() == [7, -1, 8] and nxt == 9
    ids, miss, nxt = runtime_update(ids, miss, torch.tensor([0.2, 0.38, 0.37]), nxt, p)
    assert ids.tolist() == [7, -1, 8] and miss.tolist() == [1, 0, 0] and nxt == 9  # 0.38 < birth: no birth
    ids, miss, nxt = runtime_update(ids, miss, torch.tensor([0.1, 0.1, 0.9]), nxt, p)
    assert ids.tolist() == [-1, -1, 8] and miss.tolist() == [0, 0, 0]  # slot 0 ended after 2 misses
    ids, miss, nxt = runtime_update(ids, miss, torch.tensor([0.95, 0.0, 0.0]), nxt, p)
    assert ids.tolist() == [9, -1, 8] and nxt == 10  # a freed slot is born again under a new id
    with pytest.raises(ValueError, match="track_keep_score"):
        cfg = tiny_cfg()
        cfg.vision.track_keep_score = 0.9
        TrackPolicy.from_config(cfg.vision)


def test_fixed_assignments_keep_identity_and_end_lost_tracks():
    track_gt = torch.tensor([-1, A, C, -1])
    gt_ids = torch.tensor([B_, A, -1])
    slots, cols, ended = fixed_assignments(track_gt, gt_ids, torch.tensor([True, True, False]))
    assert slots.tolist() == [1] and cols.tolist() == [1] and ended.tolist() == [False, False, True, False]


def test_tracked_agent_keeps_its_query_slot_across_a_scene():
    """Training-mode tracking on a synthetic scene: agent A is matched once, then keeps its slot and id on every
    frame; C's track ends when C leaves; B, appearing later, is born with a new id in another slot."""
    cfg = tiny_cfg()
    torch.manual_seed(0)
    enc = VisionEncoder(cfg).train()
    states, slots, ids = None, [], []
    c_slot, b_id = None, None
    with torch.no_grad():
        for t, fb in enumerate(scene_frames(cfg, 4)):
            out = enc(fb, states=states)
            states = out.states
            s = states[0]
            assert s.num_tracks == 2  # two annotated agents in every frame
            q = int((s.track_gt == A).nonzero()[0, 0])
            slots.append(q)
            ids.append(int(s.track_ids[q]))
            assert int(out.predictions["track_ids"][0, q]) == ids[-1]
            if t == 0:
                c_slot = int((s.track_gt == C).nonzero()[0, 0])
                c_id = int(s.track_ids[c_slot])
            if t == 2:
                assert not bool((s.track_gt == C).any())  # C left: its track ended
                assert c_id not in s.track_ids.tolist()
                bq = int((s.track_gt == B_).nonzero()[0, 0])
                b_id = int(s.track_ids[bq])
                assert b_id == s.next_track_id - 1 and b_id > max(ids[0], c_id)
            if t == 3:
                assert int(s.track_ids[(s.track_gt == B_).nonzero()[0, 0]]) == b_id
    assert len(set(slots)) == 1 and len(set(ids)) == 1, (slots, ids)


def test_clip_batch_splits_into_frames():
    cfg = tiny_cfg()
    frames = scene_frames(cfg, 3)
    clip = to_clip(frames, [False, False, True])
    back = clip_frames(clip)
    assert len(back) == 3 and back[2]["sample_token"] == ["sceneX_2"]
    assert torch.equal(back[1]["images"], frames[1]["images"])
    with pytest.raises(ValueError, match="gt_boxes"):
        clip_frames(dict(clip, gt_boxes=clip["gt_boxes"][:, :2]))


def test_clip_training_trains_the_temporal_fusion():
    """A clip (earlier frames without gradients) gives the tracking-query projection and the BEV fusion gradients;
    a single keyframe leaves the track projection without any. Its loss is the last frame's loss with the state of
    the earlier frames, computed by the same per-frame step."""
    cfg = tiny_cfg()
    torch.manual_seed(0)
    model = OpenDriveVLA(cfg)
    model.set_trainable(["projectors", "llm", "vision"])
    model.train()
    frames = scene_frames(cfg, 3)
    track_w = model.vision.agent_queries.track_proj[1].last.weight
    fuse_w = model.vision.bev_encoder.fuse[0].weight

    out = model(frames[0])
    sum(out[k] for k in ("lm", "det", "map", "motion")).backward()
    assert track_w.grad is None or float(track_w.grad.abs().sum()) == 0.0
    model.zero_grad(set_to_none=True)

    clip = to_clip(frames, [False, False, True])
    out = model(clip)
    sum(out[k] for k in ("lm", "det", "map", "motion")).backward()
    assert float(track_w.grad.abs().sum()) > 0
    assert float(fuse_w.grad.abs().sum()) > 0

    with torch.no_grad():
        states = None
        for fb in frames[:2]:
            states = model.perceive(fb, states, compute_losses=True).states
        ref = model(frames[2], states=states)
        again = model(clip)
    for k in ("lm", "det", "map", "motion"):
        assert torch.allclose(again[k], ref[k], atol=1e-5), k

    with torch.no_grad():  # clip_loss 'all': mean over the frames, answer tokens summed
        every = model(to_clip(frames, [True, True, True]))
        per_frame = sum(int(model(f)["answer_tokens"]) for f in frames)
    assert int(every["answer_tokens"]) == per_frame
    assert not torch.allclose(every["det"], ref["det"])
