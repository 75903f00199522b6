"""Heatmap proposals of the agent queries (``model.vision.agent_query_init: heatmap``): CenterNet targets and focal
loss, peak picking, and how the vision encoder seeds free and tracked slots from them."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from odvla.model.agent_proposals import SIGMA_CELLS, centre_targets, focal_loss, peaks
from odvla.model.bev import BEVGrid
from odvla.model.config import ModelConfig
from odvla.model.scene_state import SceneState
from odvla.model.vision_encoder import VisionEncoder
from odvla.platform.bench.bench_model import synthetic_batch

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def grid() -> BEVGrid:
    return BEVGrid((-8.0, 8.0), (-4.0, 4.0), (-3.0, 3.0), 2.0, 1)  # 8 x 4 cells of 2 m


def test_centre_targets_peak_at_the_centre_cell_and_fall_off_as_a_gaussian():
    g = grid()
    t = centre_targets(g, [torch.tensor([[1.0, 1.0]]), torch.zeros(0, 2)], "cpu")
    assert t.shape == (2, 8, 4) and float(t[1].abs().sum()) == 0.0
    # (1, 1) m lies in cell i = floor((1 + 8) / 2) = 4, j = floor((1 + 4) / 2) = 2, whose centre is also (1, 1)
    assert float(t[0, 4, 2]) == 1.0 and int(t[0].eq(1.0).sum()) == 1
    # the cell one step along x has its centre 2 m = 1 cell away: exp(-1 / (2 sigma^2))
    assert float(t[0, 5, 2]) == pytest.approx(math.exp(-1 / (2 * SIGMA_CELLS ** 2)), rel=1e-6)
    assert float(t[0, 5, 3]) == pytest.approx(math.exp(-2 / (2 * SIGMA_CELLS ** 2)), rel=1e-6)
    # a centre off the cell centre still sets its own cell to 1 (CenterNet's integer peak)
    t2 = centre_targets(g, [torch.tensor([[1.9, 1.1]])], "cpu")
    assert float(t2[0, 4, 2]) == 1.0


def test_focal_loss_is_centernets_penalty_reduced_focal_loss():
    target = torch.tensor([[[1.0, 0.5], [0.0, 0.0]]])
    logits = torch.tensor([[[0.0, 1.0], [-2.0, 3.0]]])
    p = torch.sigmoid(logits)[0]
    pos = -(1 - p[0, 0]) ** 2 * torch.log(p[0, 0])
    neg = sum(-(1 - target[0, i, j]) ** 4 * p[i, j] ** 2 * torch.log(1 - p[i, j])
              for i, j in ((0, 1), (1, 0), (1, 1)))
    assert float(focal_loss(logits, target)) == pytest.approx(float(pos + neg), rel=1e-5)  # one centre
    assert float(focal_loss(torch.full_like(target, -9.0), torch.zeros_like(target))) < 1e-6


def _focal_by_hand(logits, target) -> tuple[float, int]:
    """CenterNet's terms cell by cell: (sum of the positive and negative terms, number of centres)."""
    p = torch.sigmoid(logits)
    total, n = 0.0, 0
    for idx in np.ndindex(*target.shape):
        q, t = float(p[idx]), float(target[idx])
        if t == 1.0:
            total, n = total - (1 - q) ** 2 * math.log(q), n + 1
        else:
            total -= (1 - t) ** 4 * q ** 2 * math.log(1 - q)
    return total, n


def test_focal_loss_divides_by_the_centres_of_the_whole_batch():
    """CenterNet's ``_neg_loss``: the positive and negative terms of every cell of the batch, summed, over the number
    of centres in the batch (3 here: two in the first sample, one in the second), not per sample."""
    g = torch.Generator().manual_seed(0)
    target = torch.rand(2, 4, 5, generator=g) * 0.9
    for b, i, j in ((0, 0, 0), (0, 3, 4), (1, 2, 1)):
        target[b, i, j] = 1.0
    logits = torch.randn(2, 4, 5, generator=g)
    total, n = _focal_by_hand(logits, target)
    assert n == 3 and float(focal_loss(logits, target)) == pytest.approx(total / 3, rel=1e-5)
    target[1, 2, 1] = 0.99  # one centre fewer: that cell becomes a negative, and the sum is divided by 2
    total2, n2 = _focal_by_hand(logits, target)
    assert n2 == 2 and float(focal_loss(logits, target)) == pytest.approx(total2 / 2, rel=1e-5)


def test_peaks_are_local_maxima_by_descending_score():
    h = torch.full((1, 8, 4), -5.0)
    h[0, 1, 1], h[0, 1, 2], h[0, 6, 3] = 3.0, 2.0, 1.0  # (1, 2) neighbours the higher (1, 1): not a peak
    idx, centre = peaks(h, 2)
    assert idx.tolist() == [[1 * 4 + 1, 6 * 4 + 3]]
    assert torch.allclose(centre[0], torch.tensor([[1.5 / 8, 1.5 / 4], [6.5 / 8, 3.5 / 4]]))


def heatmap_cfg() -> ModelConfig:
    cfg = ModelConfig()
    cfg.vision.image_height, cfg.vision.image_width = 32, 64
    cfg.vision.agent_query_init = "heatmap"
    return cfg


def test_tracked_slots_take_the_peak_where_they_predict_their_agent_and_free_slots_the_rest():
    """Slot 3 tracks an agent last seen at (10, 2) m moving 4 m/s along x, and the ego drove 5 m forward: it
    predicts (7, 2) m and takes the peak in that cell, though a higher peak exists. Slot 5 predicts (-30, -30) m,
    where no peak lies: its reference is the prediction and it takes no proposal. Free slots take the other peaks
    in score order."""
    torch.manual_seed(0)
    enc = VisionEncoder(heatmap_cfg()).eval()
    Q, C = enc.agent_queries.num_queries, enc.out_channels
    nx, ny = enc.grid.shape
    heat = torch.rand(1, nx, ny) - 5.0
    i, j = enc.grid.cell_of(7.0, 2.0)
    heat[0, i, j] = 2.0
    heat[0, 0, 0] = 3.0  # the highest peak, far from both tracks
    i5, j5 = enc.grid.cell_of(-30.0, -30.0)
    heat[0, i5 - 2:i5 + 3, j5 - 2:j5 + 3] = -10.0  # no peak within 2 cells of slot 5's prediction
    memory = torch.randn(1, nx * ny, C)
    mask = torch.zeros(1, Q, dtype=torch.bool)
    mask[0, [3, 5]] = True
    boxes = torch.zeros(Q, 9)
    boxes[3, 0:2], boxes[3, 7:9] = torch.tensor([10.0, 2.0]), torch.tensor([4.0, 0.0])  # 2 m in 0.5 s
    boxes[5, 0:2] = torch.tensor([-25.0, -30.0])
    prev_pose, cur_pose = torch.eye(4), torch.eye(4)
    cur_pose[0, 3] = 5.0
    state = SceneState(scene_token="s", frame_index=0, sample_token="a", track_boxes=boxes,
                       track_mask=mask[0], ego2global=prev_pose)
    idx, centre = peaks(heat, 2 * Q)
    with torch.no_grad():
        embed, ref = enc._proposals(heat, memory, mask, [state], cur_pose[None])
        feats = enc.proposal_proj(torch.gather(memory, 1, idx[..., None].expand(-1, -1, C)))
    k3 = int((idx[0] == i * ny + j).nonzero()[0, 0])
    assert k3 == 1  # the second-highest peak
    assert torch.allclose(ref[0, 3], centre[0, k3]) and torch.allclose(embed[0, 3], feats[0, k3])
    assert torch.allclose(ref[0, 5], enc.grid.normalise_xy(torch.tensor([-30.0, -30.0])))
    assert float(embed[0, 5].abs().sum()) == 0.0
    free = [q for q in range(Q) if q not in (3, 5)]
    rest = [k for k in range(2 * Q) if k != k3][:len(free)]
    assert torch.allclose(ref[0, free], centre[0, rest]) and torch.allclose(embed[0, free], feats[0, rest])


def test_heatmap_head_trains_through_the_det_loss_and_a_bad_mode_names_the_key():
    torch.manual_seed(0)
    cfg = heatmap_cfg()
    enc = VisionEncoder(cfg).train()
    b = synthetic_batch(cfg.vision, 2, seed=3)
    out = enc(b)
    out.losses["det"].backward()
    assert float(enc.centre_heatmap.net[0].weight.grad.abs().sum()) > 0
    assert float(enc.proposal_proj[1].weight.grad.abs().sum()) > 0
    cfg.vision.agent_query_init = "anchors"
    with pytest.raises(ValueError, match="model.vision.agent_query_init='anchors'"):
        VisionEncoder(cfg)
