"""VisionEncoder on the tiny preset: output contract, losses, tracking state, bf16, checkpointing, training."""
from __future__ import annotations

import copy
import dataclasses
import math

import pytest
import torch

from odvla.model.constants import CAMERAS, DETECTION_CLASSES, MAP_CLASSES
from odvla.model.scene_state import SceneState
from odvla.model.vision_encoder import VisionEncoder, VisionOutput


def camera_rig(B: int, image_hw: tuple[int, int], fov_deg: float = 70.0) -> tuple[torch.Tensor, torch.Tensor]:
    """nuScenes-like rig: six cameras 1.6 m up, yawed like CAMERAS; returns (intrinsics [B,6,3,3], sensor2ego
    [B,6,4,4]). Camera frame: x right, y down, z forward."""
    H, W = image_hw
    yaws = {"CAM_FRONT": 0, "CAM_FRONT_RIGHT": -55, "CAM_FRONT_LEFT": 55, "CAM_BACK": 180,
            "CAM_BACK_LEFT": 110, "CAM_BACK_RIGHT": -110}
    f = W / (2 * math.tan(math.radians(fov_deg / 2)))
    K = torch.tensor([[f, 0, W / 2], [0, f, H / 2], [0, 0, 1.0]])
    intr, s2e = torch.zeros(B, 6, 3, 3), torch.zeros(B, 6, 4, 4)
    for c, name in enumerate(CAMERAS):
        y = math.radians(yaws[name])
        R = torch.tensor([[math.sin(y), 0, math.cos(y)], [-math.cos(y), 0, math.sin(y)], [0, -1.0, 0]])
        s2e[:, c, :3, :3] = R
        s2e[:, c, :3, 3] = torch.tensor([1.5, 0.0, 1.6])
        s2e[:, c, 3, 3] = 1.0
        intr[:, c] = K
    return intr, s2e


def random_batch(cfg, B: int = 2, seed: int = 0, na: int = 6, nm: int = 5) -> dict:
    """A batch per odvla.model.batch with random images and plausible targets inside the BEV grid."""
    g = torch.Generator().manual_seed(seed)
    v = cfg.vision
    H, W = v.image_height, v.image_width
    intr, s2e = camera_rig(B, (H, W))
    xy = (torch.rand(B, na, 2, generator=g) - 0.5) * 60
    boxes = torch.cat([xy, torch.rand(B, na, 1, generator=g) - 0.5,
                       torch.tensor([1.9, 4.5, 1.7]) * (0.8 + 0.4 * torch.rand(B, na, 3, generator=g)),
                       (torch.rand(B, na, 1, generator=g) - 0.5) * 6, torch.randn(B, na, 2, generator=g) * 3], -1)
    labels = torch.randint(0, len(DETECTION_CLASSES), (B, na), generator=g)
    labels[:, na - 2:] = -1  # padding
    steps = torch.arange(1, 7, dtype=torch.float32)[None, None, :, None] * 0.5
    future = boxes[..., None, 0:2] + boxes[..., None, 7:9] * steps
    fmask = torch.ones(B, na, 6)
    fmask[:, :, 4:] = 0.0
    start = (torch.rand(B, nm, 1, 2, generator=g) - 0.5) * 60
    direction = torch.randn(B, nm, 1, 2, generator=g)
    t = torch.linspace(0, 20, v.map_points)[None, None, :, None]
    pts = start + direction / direction.norm(dim=-1, keepdim=True) * t
    map_labels = torch.randint(0, len(MAP_CLASSES), (B, nm), generator=g)
    map_labels[:, nm - 1] = -1
    return {
        "images": torch.randn(B, 6, 3, H, W, generator=g), "intrinsics": intr, "sensor2ego": s2e,
        "ego_state": torch.zeros(B, 7), "command": torch.full((B,), 2), "past_traj": torch.zeros(B, 4, 2),
        "past_mask": torch.ones(B, 4), "future_traj": torch.zeros(B, 6, 2), "future_mask": torch.ones(B, 6),
        "gt_boxes": boxes, "gt_labels": labels, "gt_agent_future": future, "gt_agent_future_mask": fmask,
        "gt_map_pts": pts, "gt_map_labels": map_labels, "frame_index": torch.zeros(B, dtype=torch.long),
        "sample_token": [f"sample{seed}_{b}" for b in range(B)], "scene_token": [f"scene{b}" for b in range(B)],
        "task": ["planning"] * B, "question": [""] * B, "answer": [""] * B,
    }


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def cfg():
    from odvla.platform.config import load_config

    return load_config(model="tiny").model


@pytest.fixture(scope="module")
def encoder(cfg):
    torch.manual_seed(0)
    return VisionEncoder(cfg).eval()


def test_output_contract(cfg, encoder):
    v = cfg.vision
    batch = random_batch(cfg)
    out = encoder(batch)
    assert isinstance(out, VisionOutput)
    C = encoder.out_channels
    assert C == v.bev_channels
    assert out.scene_tokens.shape == (2, v.num_scene_queries, C)
    assert out.agent_tokens.shape == (2, v.num_agent_tokens, C)
    assert out.map_tokens.shape == (2, v.num_map_queries, C)
    Q, Qm = v.num_agent_queries, v.num_map_queries
    p = out.predictions
    assert p["boxes"].shape == (2, Q, 9) and p["scores"].shape == (2, Q)
    assert p["agent_future"].shape == (2, Q, 6, 2)
    assert p["map_pts"].shape == (2, Qm, v.map_points, 2) and p["map_scores"].shape == (2, Qm)
    nx = round((v.bev_x_range[1] - v.bev_x_range[0]) / v.bev_resolution)
    assert p["bev"].shape == (2, C, nx, nx)
    # agent tokens are the embeddings of the most confident slots, by descending score
    idx = p["agent_token_index"]
    assert torch.equal(idx[0], p["scores"][0].topk(v.num_agent_tokens).indices)
    # boxes and polylines lie inside the BEV grid; sizes positive
    assert (p["boxes"][..., 0].abs() <= v.bev_x_range[1]).all() and (p["boxes"][..., 3:6] > 0).all()
    assert (p["map_pts"].abs() <= v.bev_x_range[1]).all()
    assert set(out.losses) == {"det", "map", "motion"}
    assert all(torch.isfinite(x) and x.dim() == 0 and x > 0 for x in out.losses.values())
    assert len(out.states) == 2 and all(isinstance(s, SceneState) for s in out.states)
    assert out.states[0].scene_token == "scene0" and out.states[1].sample_token == "sample0_1"


def test_losses_zero_without_targets_but_graph_attached(cfg, encoder):
    batch = {k: v for k, v in random_batch(cfg).items() if not k.startswith("gt_")}
    out = encoder(batch)
    assert all(float(x.detach()) == 0.0 for x in out.losses.values())
    sum(out.losses.values()).backward()  # attached: every vision parameter gets a (zero) gradient
    assert all(p.grad is not None for p in encoder.agent_motion_parameters())
    encoder.zero_grad(set_to_none=True)
    out = encoder(random_batch(cfg), compute_losses=False)
    assert all(float(x.detach()) == 0.0 for x in out.losses.values())


def test_empty_and_all_padding_targets(cfg, encoder):
    batch = random_batch(cfg)
    batch["gt_labels"][:] = -1  # every agent is padding: the classifier still learns "no object"
    batch["gt_map_labels"][0] = -1
    out = encoder(batch)
    losses = {k: float(x.detach()) for k, x in out.losses.items()}
    assert losses["det"] > 0 and losses["motion"] == 0.0 and losses["map"] > 0
    batch["gt_boxes"], batch["gt_labels"] = torch.zeros(2, 0, 9), torch.zeros(2, 0, dtype=torch.long)
    batch["gt_agent_future"], batch["gt_agent_future_mask"] = torch.zeros(2, 0, 6, 2), torch.zeros(2, 0, 6)
    batch["gt_map_pts"], batch["gt_map_labels"] = torch.zeros(2, 0, cfg.vision.map_points, 2), torch.zeros(
        2, 0, dtype=torch.long)
    out = encoder(batch)
    assert all(torch.isfinite(x) for x in out.losses.values()) and float(out.losses["motion"].detach()) == 0.0


def test_bad_input_is_named(cfg, encoder):
    batch = random_batch(cfg)
    batch["images"] = batch["images"][..., :-1]
    with pytest.raises(ValueError, match="images"):
        encoder(batch)
    batch = random_batch(cfg)
    batch["gt_boxes"][1, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="sample0_1"):
        encoder(batch)


def test_agent_motion_parameters_are_the_agent_heads(encoder):
    params = encoder.agent_motion_parameters()
    names = {id(p): n for n, p in encoder.named_parameters()}
    got = sorted(names[id(p)] for p in params)
    assert got and all(n.startswith(("agent_queries.cls_head", "agent_queries.box_head",
                                     "agent_queries.motion_head")) for n in got)
    assert any("motion_head" in n for n in got)


def test_tracking_state_carries_resets_and_round_trips(cfg, encoder):
    from odvla.model.track_policy import TrackPolicy

    encoder = copy.deepcopy(encoder)
    Q = cfg.vision.num_agent_queries
    encoder.track_policy = TrackPolicy(birth=0.0, keep=0.0)  # the untrained encoder's every slot is a track
    batch0 = random_batch(cfg, seed=1)
    batch1 = random_batch(cfg, seed=2)
    batch1["frame_index"] = torch.tensor([1, 1])
    with torch.no_grad():
        out0 = encoder(batch0)
        fresh1 = encoder(batch1)  # no state
        out1 = encoder(batch1, states=out0.states)
    s0 = out0.states[0]
    assert s0.num_tracks == Q and s0.prev_bev is not None
    assert sorted(s0.track_ids[s0.track_mask].tolist()) == list(range(Q))
    # the state changes what frame 1 sees: queries and BEV
    assert not torch.allclose(out1.agent_tokens, fresh1.agent_tokens)
    assert not torch.allclose(out1.predictions["bev"], fresh1.predictions["bev"])
    # slots carried twice keep their track id; new slots get new ids
    s1 = out1.states[0]
    both = s0.track_mask & s1.track_mask
    assert torch.equal(s1.track_ids[both], s0.track_ids[both])
    assert (s1.track_ids[s1.track_mask & ~s0.track_mask] >= Q).all()
    assert s1.next_track_id == s0.next_track_id + int((s1.track_mask & ~s0.track_mask).sum())

    # a scene change, or frame 0, resets: exactly the stateless result
    changed = dict(batch1, scene_token=["other0", "scene1"], frame_index=torch.tensor([1, 0]))
    with torch.no_grad():
        reset = encoder(changed, states=out0.states)
        stateless = encoder(changed)
    assert torch.allclose(reset.agent_tokens, stateless.agent_tokens)
    assert reset.states[0].scene_token == "other0" and reset.states[0].next_track_id == Q

    # to_dict / from_dict: plain values, identical continuation
    dicts = [s.to_dict() for s in out0.states]
    assert all(isinstance(x, (str, int, torch.Tensor)) or x is None for d in dicts for x in d.values())
    restored = [SceneState.from_dict(copy.deepcopy(d)) for d in dicts]
    with torch.no_grad():
        again = encoder(batch1, states=restored)
    assert torch.allclose(again.agent_tokens, out1.agent_tokens)
    assert torch.equal(again.predictions["track_ids"], out1.predictions["track_ids"])
    assert s0.reset().num_tracks == 0 and not s0.reset().has_memory
    with pytest.raises(ValueError, match="version"):
        SceneState.from_dict(dict(dicts[0], version=99))


def test_training_also_carries_the_matched_slots(cfg):
    torch.manual_seed(0)
    enc = VisionEncoder(cfg).train()
    batch = random_batch(cfg)  # 4 valid targets per sample, all inside the grid
    with torch.no_grad():
        out = enc(batch)
    for b, s in enumerate(out.states):  # training: exactly the slots matched to a target carry (MOTR)
        assert s.num_tracks == 4
        assert int((s.track_ids >= 0).sum()) == s.num_tracks
    # trained with states, the track-query projection (zero at init) receives gradients
    nxt = dict(random_batch(cfg, seed=5), frame_index=torch.tensor([1, 1]))
    sum(enc(nxt, states=out.states).losses.values()).backward()
    assert enc.agent_queries.track_proj[1].last.weight.grad.abs().sum() > 0
    with torch.no_grad():  # inference: confident slots only (track_birth_score)
        ev = enc.eval()(batch)
    born = (ev.predictions["scores"] >= cfg.vision.track_birth_score).sum(dim=1).tolist()
    assert [s.num_tracks for s in ev.states] == born


def test_bf16_autocast_and_bf16_weights(cfg):
    torch.manual_seed(0)
    enc = VisionEncoder(cfg)
    batch = random_batch(cfg)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = enc(batch)
        loss = sum(out.losses.values())
    loss.backward()
    assert out.predictions["bev"].dtype == torch.bfloat16  # the convolutions ran in bf16
    assert torch.isfinite(out.agent_tokens.float()).all()
    assert all(torch.isfinite(x) for x in out.losses.values())
    assert all(torch.isfinite(p.grad).all() for p in enc.parameters() if p.grad is not None)
    with torch.no_grad():
        out = enc.to(torch.bfloat16).eval()(batch, states=out.states)
    assert out.scene_tokens.dtype == torch.bfloat16 and torch.isfinite(out.scene_tokens.float()).all()
    assert out.predictions["boxes"].dtype == torch.float32


def test_gradient_checkpointing_gives_the_same_gradients(cfg):
    batch = random_batch(cfg)
    grads = []
    for ckpt in (False, True):
        torch.manual_seed(0)
        enc = VisionEncoder(dataclasses.replace(cfg, gradient_checkpointing=ckpt))
        sum(enc(batch).losses.values()).backward()
        first_trained = getattr(enc.backbone, f"layer{max(enc.backbone.frozen_stages, 0) + 1}")  # tiny freezes the first ones
        grads.append(first_trained[0].conv1.weight.grad.clone())
    assert enc.backbone.gradient_checkpointing
    assert torch.allclose(grads[0], grads[1], rtol=1e-4, atol=1e-6)


def test_training_on_one_batch_reduces_det_and_map_losses(cfg):
    torch.manual_seed(0)
    enc = VisionEncoder(cfg).train()
    batch = random_batch(cfg, seed=3)
    opt = torch.optim.AdamW(enc.parameters(), lr=2e-3)
    first = None
    for _ in range(25):
        losses = enc(batch).losses
        if first is None:
            first = {k: float(x.detach()) for k, x in losses.items()}
        opt.zero_grad()
        sum(losses.values()).backward()
        opt.step()
    with torch.no_grad():
        last = {k: float(x) for k, x in enc.eval()(batch).losses.items()}
    # measured: det 6.9 -> 2.5, map 1.9 -> 0.55 (seed 0); motion falls more slowly
    assert last["det"] < 0.6 * first["det"], (first, last)
    assert last["map"] < 0.6 * first["map"], (first, last)
    assert last["motion"] < first["motion"], (first, last)


def test_ego_pose_in_the_batch_warps_the_previous_bev_and_travels_with_the_state(cfg, encoder):
    pose0 = torch.eye(4).expand(2, 4, 4).clone()
    pose0[:, :3, 3] = torch.tensor([400.0, 1200.0, 0.0])
    pose1 = pose0.clone()
    pose1[:, 0, 3] += 6.4  # drove two cells forward
    batch0 = dict(random_batch(cfg, seed=1), ego2global=pose0)
    batch1 = dict(random_batch(cfg, seed=2), ego2global=pose1, frame_index=torch.tensor([1, 1]))
    with torch.no_grad():
        out0 = encoder(batch0)
        aligned = encoder(batch1, states=out0.states)
        unaligned = encoder({k: v for k, v in batch1.items() if k != "ego2global"}, states=out0.states)
    assert torch.equal(out0.states[0].ego2global, pose0[0])
    assert not torch.allclose(aligned.predictions["bev"], unaligned.predictions["bev"])
    restored = [SceneState.from_dict(s.to_dict()) for s in out0.states]
    assert torch.equal(restored[1].ego2global, pose0[1])
    assert restored[1].to(dtype=torch.bfloat16).ego2global.dtype == torch.float32  # poses keep full precision
    with torch.no_grad():
        again = encoder(batch1, states=restored)
    assert torch.allclose(again.predictions["bev"], aligned.predictions["bev"])


@pytest.mark.parametrize("frozen", [-1, 0, 1, 2])
def test_frozen_stages_get_no_gradient_and_keep_their_statistics(cfg, frozen):
    """``model.vision.frozen_stages`` as mmdet counts it: -1 nothing, 0 the stem, k the stem and stages 1..k. Frozen
    parts get no gradient even after a stage enables the whole encoder, and their BatchNorm statistics stay put in
    train mode; the first trained stage gets its gradient."""
    from odvla.model.vla import OpenDriveVLA
    from odvla.platform.config import load_config

    mcfg = load_config(model="tiny", overrides=[f"model.vision.frozen_stages={frozen}"]).model
    model = OpenDriveVLA(mcfg)
    model.set_trainable(["projectors", "llm", "vision"])
    model.train()
    bb = model.vision.backbone
    stages = [bb.stem, bb.layer1, bb.layer2, bb.layer3, bb.layer4]
    stats = [m.running_mean.clone() for m in bb.stem.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    model.vision(random_batch(mcfg)).losses["det"].backward()
    for k, stage in enumerate(stages):
        grads = [p.grad for p in stage.parameters()]
        if k <= frozen:
            assert all(g is None for g in grads) and not any(p.requires_grad for p in stage.parameters()), k
            assert all(not m.training for m in stage.modules()), k
        else:
            assert any(g is not None and g.abs().sum() > 0 for g in grads), k
    after = [m.running_mean for m in bb.stem.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert all(torch.equal(a, b) for a, b in zip(stats, after)) == (frozen >= 0)


def test_frozen_stages_out_of_range_names_the_key():
    from odvla.model.backbone import ImageBackbone

    with pytest.raises(ValueError, match=r"model\.vision\.frozen_stages=5"):
        ImageBackbone("resnet18", 32, frozen_stages=5)

