"""Image helpers shared by the data pipeline, eval and serve: decode + resize, intrinsics scaling, normalisation.

Images are RGB; ``[H, W, 3]`` uint8 after decoding, ``[3, H, W]`` float32 normalised for the network by the
normalisation its backbone owns (``odvla.model.backbone.BackboneSpec.normalize``).
"""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from odvla.model.backbone import backbone_spec
from odvla.platform.data.errors import CorruptImageError, MissingImageError


def decode_resize(src, out_hw: tuple[int, int], sample_token: str | None = None) -> np.ndarray:
    """Decode a JPEG (bytes or a path) and resize it to ``out_hw`` = (H, W): uint8 ``[H, W, 3]``.

    Uses the JPEG decoder's DCT scaling (``draft``) when shrinking a lot, then bilinear resampling. A missing file
    raises ``MissingImageError``, an undecodable one ``CorruptImageError`` (both name the path and sample).
    """
    H, W = int(out_hw[0]), int(out_hw[1])
    where = None if isinstance(src, (bytes, bytearray, memoryview)) else str(src)
    try:
        f = io.BytesIO(bytes(src)) if where is None else open(Path(src), "rb")
    except FileNotFoundError:
        raise MissingImageError("camera image not found", sample_token=sample_token, path=where) from None
    try:
        with f, Image.open(f) as img:
            img.draft("RGB", (W, H))
            img = img.convert("RGB")
            if img.size != (W, H):
                img = img.resize((W, H), Image.BILINEAR)
            return np.asarray(img, dtype=np.uint8)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise CorruptImageError(f"cannot decode image: {e}", sample_token=sample_token, path=where) from None


def scale_intrinsics(K: np.ndarray, src_hw: tuple[int, int], dst_hw: tuple[int, int]) -> np.ndarray:
    """Intrinsics ``[..., 3, 3]`` of an image of size ``src_hw`` (H, W) resized to ``dst_hw``."""
    K = np.array(K, dtype=np.float32, copy=True)
    sy = float(dst_hw[0]) / float(src_hw[0])
    sx = float(dst_hw[1]) / float(src_hw[1])
    K[..., 0, :] *= sx
    K[..., 1, :] *= sy
    return K


def normalize(images: np.ndarray, backbone: str = "resnet18") -> np.ndarray:
    """uint8 ``[..., H, W, 3]`` -> float32 ``[..., 3, H, W]``, normalised as ``model.vision.backbone`` expects."""
    return backbone_spec(backbone).normalize(images)
