"""The table-driven input normalisation gives exactly ``(x / 255 - mean) / std`` in float32, channel first."""
from __future__ import annotations

import numpy as np
import pytest

from odvla.model.backbone import BACKBONES


@pytest.mark.parametrize("name", sorted(BACKBONES))
def test_normalize_equals_the_formula(name):
    spec = BACKBONES[name]
    x = np.random.default_rng(0).integers(0, 256, (2, 6, 17, 23, 3), dtype=np.uint8)
    mean, std = np.asarray(spec.mean, np.float32), np.asarray(spec.std, np.float32)
    ref = np.moveaxis((x.astype(np.float32) / 255.0 - mean) / std, -1, -3)
    out = spec.normalize(x)
    assert out.dtype == np.float32 and out.shape == (2, 6, 3, 17, 23) and out.flags.c_contiguous
    assert np.array_equal(out, ref)
