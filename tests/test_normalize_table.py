"""Images travel as uint8 and the vision encoder normalises them: the backbone's normalisation gives exactly
``(x / 255 - mean) / std`` in float32, and the encoder's output for uint8 images equals its output for the same
images normalised beforehand (the float contract it keeps for already-normalised batches)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from odvla.model.backbone import BACKBONES
from odvla.platform.data.collate import images_chw

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.mark.parametrize("name", sorted(BACKBONES))
def test_normalize_equals_the_formula(name):
    spec = BACKBONES[name]
    x = np.random.default_rng(0).integers(0, 256, (2, 6, 3, 17, 23), dtype=np.uint8)
    mean = np.asarray(spec.mean, np.float32)[:, None, None]
    std = np.asarray(spec.std, np.float32)[:, None, None]
    ref = (x.astype(np.float32) / np.float32(255.0) - mean) / std
    out = spec.normalize(torch.from_numpy(x))
    assert out.dtype == torch.float32 and tuple(out.shape) == (2, 6, 3, 17, 23)
    np.testing.assert_allclose(out.numpy(), ref, rtol=1e-6, atol=1e-6)


def test_images_chw_is_a_uint8_view_of_the_channel_last_rows():
    x = np.random.default_rng(1).integers(0, 256, (2, 6, 5, 7, 3), dtype=np.uint8)
    out = images_chw(x)
    assert out.dtype == torch.uint8 and tuple(out.shape) == (2, 6, 3, 5, 7) and not out.is_contiguous()
    assert out.data_ptr() == x.ctypes.data  # no copy
    assert np.array_equal(out[1, 2, 1].numpy(), x[1, 2, :, :, 1])
    assert np.array_equal(out.contiguous().numpy(), np.ascontiguousarray(x.transpose(0, 1, 4, 2, 3)))
    with pytest.raises(ValueError, match="channel-last"):
        images_chw(np.zeros((2, 6, 3, 5, 7), np.uint8))  # channel-first rows are refused


def test_encoder_normalises_uint8_images_itself():
    from odvla.model.backbone import backbone_spec
    from odvla.model.vision_encoder import VisionEncoder
    from odvla.platform.config import load_config
    from test_model_vision import random_batch

    cfg = load_config(model="tiny").model
    torch.manual_seed(0)
    enc = VisionEncoder(cfg).eval()
    batch = random_batch(cfg, B=1)
    raw = torch.randint(0, 256, batch["images"].shape, dtype=torch.uint8, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        a = enc({**batch, "images": raw}, compute_losses=False)
        b = enc({**batch, "images": backbone_spec(cfg.vision.backbone).normalize(raw)}, compute_losses=False)
        c = enc({**batch, "images": raw.float()}, compute_losses=False)  # not normalised: a different input
        # collated batches are strided views of channel-last rows (collate.images_chw): the same picture
        view = images_chw(raw.permute(0, 1, 3, 4, 2).contiguous())
        assert torch.equal(view, raw) and not view.is_contiguous()
        d = enc({**batch, "images": view}, compute_losses=False)
    assert torch.equal(a.scene_tokens, b.scene_tokens) and torch.equal(a.predictions["bev"], b.predictions["bev"])
    # float rounding only: conv2d runs channels_last on the strided view
    torch.testing.assert_close(d.scene_tokens, a.scene_tokens, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(d.predictions["bev"], a.predictions["bev"], rtol=1e-4, atol=1e-4)
    assert not torch.allclose(a.scene_tokens, c.scene_tokens)
