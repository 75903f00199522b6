"""Parts of the vision encoder: camera -> BEV geometry, Hungarian matching and losses, backbone weights."""
from __future__ import annotations

import math

import pytest
import torch
import torchvision

from odvla.model.agent_queries import BoxCoder
from odvla.model.backbone import ImageBackbone
from odvla.model.bev import BEVEncoder, BEVGrid, project_points, rigid_inverse
from odvla.model.constants import CAMERAS, DETECTION_CLASSES, MAP_CLASSES
from odvla.model.matching import hungarian, polyline_l1_cost
from odvla.model.vision_losses import AgentCriterion, MapCriterion
from test_model_vision import camera_rig


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def vcfg():
    from odvla.platform.config import load_config

    return load_config(model="tiny").model.vision


def _snap_principal_points(grid_pt: torch.Tensor, intr: torch.Tensor, s2e: torch.Tensor, hw) -> torch.Tensor:
    """Shift each camera's principal point so that ``grid_pt`` projects exactly onto a pixel centre."""
    uv, _, _ = project_points(grid_pt[None], intr, s2e, hw)  # [1, 6, 1, 2]
    intr = intr.clone()
    intr[0, :, 0:2, 2] += uv[0, :, 0].round() - uv[0, :, 0]
    return intr


@pytest.mark.parametrize("xy,cams", [((20.0, 3.0), ["CAM_FRONT"]),
                                     ((-20.0, 0.0), ["CAM_BACK"]),
                                     ((1.0, 22.0), ["CAM_FRONT_LEFT", "CAM_BACK_LEFT"])])
def test_feature_spike_lands_in_the_bev_cell_of_its_point(vcfg, xy, cams):
    grid = BEVGrid.from_config(vcfg)
    H, W = vcfg.image_height, vcfg.image_width
    i, j = grid.cell_of(*xy)
    k = 1
    p = grid.points()[i, j, k]  # the voxel centre whose projection gets the spike
    intr, s2e = camera_rig(1, (H, W))
    intr = _snap_principal_points(p, intr, s2e, (H, W))
    uv, depth, valid = project_points(p[None], intr, s2e, (H, W))
    seen = [CAMERAS[c] for c in range(6) if valid[0, c, 0]]
    assert seen == cams  # the rig geometry: which cameras see the point
    feats = torch.zeros(6, 1, H, W)
    for c in range(6):
        if valid[0, c, 0]:
            u, v = uv[0, c, 0].round().long().tolist()
            feats[c, 0, v, u] = 1.0
    enc = BEVEncoder(vcfg, in_channels=1)
    volume, count = enc.lift([feats], intr, s2e)  # [1, 1, nx, ny, nz], [1, nx, ny, nz]
    assert int(count[0, i, j, k]) == len(cams)
    assert float(volume[0, 0, i, j, k]) == pytest.approx(1.0, abs=1e-5)  # spike seen by every camera that sees p
    bev = volume[0, 0].amax(-1)  # [nx, ny]
    assert divmod(int(bev.argmax()), grid.ny) == (i, j)
    # nothing lights up on the far side of the ego vehicle
    far = bev[:grid.nx // 2 - 2] if xy[0] > 5 else bev[grid.nx // 2 + 2:] if xy[0] < -5 else bev[:, :grid.ny // 2 - 2]
    assert float(far.abs().max()) == 0.0


def test_lift_averages_over_the_cameras_that_see_a_point(vcfg):
    grid = BEVGrid.from_config(vcfg)
    H, W = vcfg.image_height, vcfg.image_width
    intr, s2e = camera_rig(1, (H, W))
    feats = torch.arange(1.0, 7.0)[:, None, None, None].expand(6, 1, H // 8, W // 8).contiguous()  # camera c: c+1
    volume, count = BEVEncoder(vcfg, in_channels=1).lift([feats], intr, s2e)
    k = 1
    front = grid.cell_of(20.0, 0.0)  # CAM_FRONT only
    overlap = grid.cell_of(15.0, 15.0)  # 45 deg left: CAM_FRONT (+-35) no, CAM_FRONT_LEFT (20..90) yes
    both = grid.cell_of(1.0, 22.0)  # CAM_FRONT_LEFT and CAM_BACK_LEFT
    assert float(volume[0, 0, front[0], front[1], k]) == pytest.approx(1.0)
    assert float(volume[0, 0, overlap[0], overlap[1], k]) == pytest.approx(3.0)
    assert int(count[0, both[0], both[1], k]) == 2
    assert float(volume[0, 0, both[0], both[1], k]) == pytest.approx((3.0 + 5.0) / 2)
    # points high above the cameras' view (top slab at 2.25 m, close range) are seen by nobody and stay zero
    assert ((count == 0) == (volume[:, 0] == 0)).all()
    # bf16 weights: the sample points and the projection stay float32-exact
    vol16, count16 = BEVEncoder(vcfg, in_channels=1).to(torch.bfloat16).lift([feats.bfloat16()], intr, s2e)
    assert torch.equal(count16, count) and torch.allclose(vol16, volume)


def test_points_behind_a_camera_are_not_seen():
    intr, s2e = camera_rig(1, (64, 112))
    pts = torch.tensor([[-10.0, 0.0, 1.6], [10.0, 0.0, 1.6]])
    uv, depth, valid = project_points(pts, intr, s2e, (64, 112))
    assert depth[0, 0, 0] < 0 and not valid[0, 0, 0]  # CAM_FRONT, point behind
    assert valid[0, 0, 1] and uv[0, 0, 1].tolist() == pytest.approx([56.0, 32.0])  # on the optical axis: centre


def test_rigid_inverse_matches_matrix_inverse():
    _, s2e = camera_rig(2, (64, 112))
    s2e[:, :, :3, 3] = torch.randn(2, 6, 3)
    assert torch.allclose(rigid_inverse(s2e), torch.linalg.inv(s2e), atol=1e-5)


def test_bev_grid_layout(vcfg):
    grid = BEVGrid.from_config(vcfg)
    assert grid.shape == (32, 32) and grid.nz == vcfg.bev_z_points
    i, j = grid.cell_of(50.0, -50.0)  # far ahead, far right
    assert (i, j) == (31, 0)
    assert grid.cell_centres()[i, j].tolist() == pytest.approx([49.6, -49.6])
    with pytest.raises(ValueError, match="outside"):
        grid.cell_of(60.0, 0.0)


# ---------------------------------------------------------------------------------------------- matching / losses
def test_hungarian_finds_the_optimum_not_the_greedy_pairs():
    cost = torch.tensor([[1.0, 2.0, 9.0], [2.0, 100.0, 9.0], [9.0, 9.0, 0.5], [3.0, 3.0, 3.0]])
    rows, cols = hungarian(cost)
    assert rows.tolist() == [0, 1, 2] and cols.tolist() == [1, 0, 2]  # greedy would take (0, 0) and pay 100
    rows, cols = hungarian(torch.zeros(4, 0))
    assert rows.numel() == 0 and cols.numel() == 0
    with pytest.raises(ValueError, match="sample-x"):
        hungarian(torch.tensor([[float("nan")]]), what="matching of sample-x")


def test_polyline_cost_is_direction_invariant():
    gt = torch.stack([torch.linspace(0, 1, 10), torch.linspace(0, 0.5, 10)], -1)[None]  # [1, 10, 2]
    pred = torch.cat([gt.flip(1), gt + 0.1])  # [2, 10, 2]: reversed copy, shifted copy
    cost, rev = polyline_l1_cost(pred, gt, direction_invariant=True)
    assert float(cost[0, 0]) == pytest.approx(0.0) and bool(rev[0, 0])
    assert float(cost[1, 0]) == pytest.approx(0.1) and not bool(rev[1, 0])
    cost, rev = polyline_l1_cost(pred, gt, direction_invariant=False)
    assert float(cost[0, 0]) > 0.2 and not rev.any()


def _agent_out(coder, code: torch.Tensor, labels: torch.Tensor) -> dict:
    K1 = len(DETECTION_CLASSES) + 1
    logits = torch.full((*labels.shape, K1), -10.0)
    logits.scatter_(-1, labels[..., None], 10.0)
    return {"cls_logits": logits, "box_code": code, "motion_offsets": torch.zeros(*labels.shape, 6, 2)}


def test_agent_matching_recovers_the_permutation_and_zeroes_the_loss(vcfg):
    coder = BoxCoder(BEVGrid.from_config(vcfg))
    gt_boxes = torch.tensor([[[10.0, 5.0, 0.0, 2.0, 4.5, 1.7, 0.3, 1.0, 0.0],
                              [-20.0, 8.0, -0.5, 0.7, 0.8, 1.8, -1.0, 0.0, 0.5],
                              [30.0, -30.0, 0.2, 2.5, 10.0, 3.0, 3.0, 5.0, 0.0],
                              [80.0, 0.0, 0.0, 2.0, 4.0, 1.5, 0.0, 0.0, 0.0],  # outside the grid: not detectable
                              [0.0, 0.0, 0.0, 1.0, 1.0, 1.0, 0.0, 0.0, 0.0]]])  # padding
    gt_labels = torch.tensor([[0, 8, 3, 0, -1]])
    Q = 6
    slots = [4, 0, 2]  # gt 0 -> slot 4, gt 1 -> slot 0, gt 2 -> slot 2
    code = coder.encode(torch.zeros(1, Q, 9) + torch.tensor([0, 0, 0, 1, 1, 1, 0, 0, 0.0]))
    labels = torch.full((1, Q), len(DETECTION_CLASSES))
    for g, s in enumerate(slots):
        code[0, s] = coder.encode(gt_boxes[0, g])
        labels[0, s] = gt_labels[0, g]
    out = _agent_out(coder, code, labels)
    future = gt_boxes[..., None, 0:2] + torch.arange(1.0, 7.0)[None, None, :, None]
    out["motion_offsets"][0, slots] = future[0, :3] - gt_boxes[0, :3, None, 0:2]
    crit = AgentCriterion(coder, len(DETECTION_CLASSES))
    losses, matches = crit(out, gt_boxes, gt_labels, future, torch.ones(1, 5, 6), ["tok"])
    rows, cols = matches[0]
    assert dict(zip(cols.tolist(), rows.tolist())) == {0: 4, 1: 0, 2: 2}
    assert float(losses["det"]) < 1e-3 and float(losses["motion"]) < 1e-6
    # decoding the code gives back the boxes (yaw wrapped to (-pi, pi])
    dec = coder.decode(code[0, slots])
    assert torch.allclose(dec[:, :6], gt_boxes[0, :3, :6], atol=1e-4)
    assert torch.allclose(dec[:, 7:], gt_boxes[0, :3, 7:], atol=1e-5)
    assert torch.allclose(torch.cos(dec[:, 6] - gt_boxes[0, :3, 6]), torch.ones(3), atol=1e-5)


def test_map_loss_accepts_either_direction(vcfg):
    grid = BEVGrid.from_config(vcfg)
    P = vcfg.map_points
    line = torch.stack([torch.linspace(-10, 10, P), torch.linspace(0, 5, P)], -1)
    gt_pts = torch.stack([line, line + torch.tensor([0.0, 20.0])])[None]  # [1, 2, P, 2]
    gt_labels = torch.tensor([[0, 2]])
    pts01 = grid.normalise_xy(torch.stack([gt_pts[0, 1].flip(0), gt_pts[0, 0], line - 30.0]))[None]  # reversed
    logits = torch.full((1, 3, len(MAP_CLASSES) + 1), -10.0)
    logits[0, 0, 2] = logits[0, 1, 0] = logits[0, 2, -1] = 10.0
    losses, matches = MapCriterion(grid, len(MAP_CLASSES))({"cls_logits": logits, "pts01": pts01}, gt_pts,
                                                           gt_labels, ["tok"])
    assert dict(zip(matches[0][1].tolist(), matches[0][0].tolist())) == {0: 1, 1: 0}
    assert float(losses["map"]) < 1e-3
    strict = MapCriterion(grid, len(MAP_CLASSES), direction_invariant=False)
    assert float(strict({"cls_logits": logits, "pts01": pts01}, gt_pts, gt_labels, ["tok"])[0]["map"]) > 0.1


def test_bad_labels_are_named(vcfg):
    coder = BoxCoder(BEVGrid.from_config(vcfg))
    out = _agent_out(coder, torch.full((1, 2, 10), 0.5), torch.zeros(1, 2, dtype=torch.long))
    with pytest.raises(ValueError, match="gt_labels of sample 'tok-9'"):
        AgentCriterion(coder, len(DETECTION_CLASSES))(out, torch.zeros(1, 1, 9), torch.tensor([[42]]), None, None,
                                                      ["tok-9"])


# ---------------------------------------------------------------------------------------------- backbone
def test_backbone_levels_and_local_weights(tmp_path):
    net = torchvision.models.resnet18(weights=None)
    path = tmp_path / "resnet18.pth"
    torch.save(net.state_dict(), path)
    bb = ImageBackbone("resnet18", out_channels=16, weights=str(path)).eval()
    assert torch.equal(bb.stem[0].weight, net.conv1.weight)
    assert torch.equal(bb.layer4[1].bn2.running_var, net.layer4[1].bn2.running_var)
    feats = bb(torch.randn(2, 3, 64, 112))
    assert [tuple(f.shape) for f in feats] == [(2, 16, 8, 14), (2, 16, 4, 7), (2, 16, 2, 4)]
    with pytest.raises(ValueError, match="resnet18.pth.*ResNet-50"):
        ImageBackbone("resnet50", weights=str(path))
    with pytest.raises(FileNotFoundError, match="backbone_weights"):
        ImageBackbone("resnet18", weights=str(tmp_path / "missing.pth"))
    with pytest.raises(ValueError, match="model.vision.backbone='resnet42'.*resnet101"):
        ImageBackbone("resnet42")


def test_each_backbone_builds_its_trunk_and_owns_its_normalisation():
    """Every registered backbone's stage channels fit its torchvision trunk (the FPN runs), and its normalisation
    maps its own mean colour to zero."""
    import numpy as np

    from odvla.model.backbone import BACKBONES

    for name, spec in BACKBONES.items():
        if spec.depth > 50:
            continue  # resnet101 has resnet50's channels; building it here would only cost time
        bb = ImageBackbone(name, out_channels=8).eval()
        with torch.no_grad():
            assert [f.shape[1] for f in bb(torch.randn(1, 3, 64, 64))] == [8, 8, 8], name
        mean_u8 = np.round(np.asarray(spec.mean) * 255).astype(np.uint8)
        x = spec.normalize(torch.from_numpy(np.broadcast_to(mean_u8[:, None, None], (2, 3, 4, 5)).copy()))
        assert tuple(x.shape) == (2, 3, 4, 5) and x.dtype == torch.float32 and x.abs().max() < 0.01, name


def _pose(x: float, y: float, yaw_deg: float) -> torch.Tensor:
    a = math.radians(yaw_deg)
    T = torch.eye(4)
    T[:2, :2] = torch.tensor([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]])
    T[:2, 3] = torch.tensor([x, y])
    return T


@pytest.mark.parametrize("motion,prev_xy,cur_xy", [((3.2, 0.0, 0.0), (11.2, 1.6), (8.0, 1.6)),  # 1 cell forward
                                                    ((0.0, 0.0, 90.0), (11.2, 1.6), (1.6, -11.2))])  # turn left
def test_previous_bev_is_warped_by_the_ego_motion(vcfg, motion, prev_xy, cur_xy):
    from odvla.model.bev import align_prev_bev

    grid = BEVGrid.from_config(vcfg)
    prev_pose = _pose(1000.0, -500.0, 30.0)  # somewhere in the global frame
    cur_pose = prev_pose @ _pose(*motion)
    prev = torch.zeros(2, grid.nx, grid.ny)
    prev[:, grid.cell_of(*prev_xy)[0], grid.cell_of(*prev_xy)[1]] = 1.0
    warped = align_prev_bev(prev, rigid_inverse(prev_pose) @ cur_pose, grid)
    i, j = grid.cell_of(*cur_xy)
    assert float(warped[0, i, j]) == pytest.approx(1.0, abs=1e-3)
    assert float(warped.sum()) == pytest.approx(2.0, abs=1e-2)  # moved, not smeared


def test_lift_samples_only_what_a_camera_sees_and_equals_the_dense_sum(vcfg):
    """Each camera samples only the grid points it sees in some sample of the batch; the volume and its gradients
    are those of sampling every point in every camera and masking the unseen ones. The two samples' rigs differ
    (the second is turned by 30 degrees), so a camera sees points in one sample that it does not see in the other."""
    import torch.nn.functional as F

    from odvla.model.bev import pixels_to_grid

    H, W = vcfg.image_height, vcfg.image_width
    intr, s2e = camera_rig(2, (H, W))
    turn = torch.eye(4)
    c, s = math.cos(math.radians(30)), math.sin(math.radians(30))
    turn[:2, :2] = torch.tensor([[c, -s], [s, c]])
    s2e[1] = turn @ s2e[1]
    g = torch.Generator().manual_seed(0)
    feats = [torch.randn(2 * 6, 3, H // st, W // st, generator=g, requires_grad=True) for st in (8, 16, 32)]
    enc = BEVEncoder(vcfg, in_channels=3)
    volume, count = enc.lift(feats, intr, s2e)
    (volume * torch.linspace(-1, 1, volume.numel()).view_as(volume)).sum().backward()
    grads = [f.grad.clone() for f in feats]

    dense = [f.detach().clone().requires_grad_(True) for f in feats]
    uv, _, valid = project_points(enc.points, intr, s2e, (H, W))  # [2, 6, N, 2], [2, 6, N]
    grid = pixels_to_grid(uv, (H, W))
    acc = 0
    for v in range(6):
        cam = sum(F.grid_sample(f.reshape(2, 6, *f.shape[1:])[:, v], grid[:, v, :, None], mode="bilinear",
                                padding_mode="border", align_corners=False)[..., 0] for f in dense)
        acc = acc + cam * valid[:, v, None].float() / len(dense)
    ref = (acc / valid.float().sum(1).clamp(min=1)[:, None]).reshape(volume.shape)
    (ref * torch.linspace(-1, 1, ref.numel()).view_as(ref)).sum().backward()

    seen_by_one_sample_only = (valid[0] != valid[1]).any(dim=1)  # [6] cameras
    assert bool(seen_by_one_sample_only.all())
    assert torch.allclose(volume, ref, atol=1e-6) and torch.equal(count, valid.float().sum(1).reshape(count.shape))
    for a, b in zip(grads, (f.grad for f in dense)):
        assert torch.allclose(a, b, atol=1e-5)
