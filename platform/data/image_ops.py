"""Image helpers shared by the data pipeline, eval and serve: decode + resize, intrinsics scaling.

Images are RGB uint8 and stay channel-last, ``[H, W, 3]``, as OpenCV decodes them: a training row carries
``[6, H, W, 3]`` (each camera decoded straight into its slot, ``decode_resize(..., out=)``), and only the collated
batch presents them as the model's ``[B, 6, 3, H, W]``, a strided torch view without a copy
(``odvla.platform.data.collate.images_chw``). The vision encoder applies the normalisation its backbone owns
(``odvla.model.backbone.BackboneSpec.normalize``) on its device, so rows cross Ray's object store at one byte per
pixel and channel.
"""
from __future__ import annotations

import io
from pathlib import Path

import cv2
import numpy as np
from PIL import Image, UnidentifiedImageError

from odvla.platform.data.errors import CorruptImageError, MissingImageError

cv2.setNumThreads(1)  # one decode per Ray Data task / server thread: no OpenCV pool per process on top


REDUCED_READS = ((8, cv2.IMREAD_REDUCED_COLOR_8), (4, cv2.IMREAD_REDUCED_COLOR_4), (2, cv2.IMREAD_REDUCED_COLOR_2),
                 (1, cv2.IMREAD_COLOR))
"""OpenCV's JPEG reads at 1/8, 1/4, 1/2 and full size (libjpeg-turbo's DCT scaling: the pixels a reduced read skips
are never decoded)."""


def _reduction(src_wh: tuple[int, int], out_hw: tuple[int, int]) -> int:
    """The read flag of the largest DCT reduction whose image is still at least ``out_hw`` in both dimensions."""
    (w, h), (H, W) = src_wh, out_hw
    return next(flag for f, flag in REDUCED_READS if f == 1 or (w // f >= W and h // f >= H))


def decode_resize(src, out_hw: tuple[int, int], sample_token: str | None = None,
                  out: np.ndarray | None = None) -> np.ndarray:
    """Decode a JPEG (bytes or a path) and resize it to ``out_hw`` = (H, W): uint8 RGB ``[H, W, 3]``.

    ``out``: a C-contiguous uint8 ``[H, W, 3]`` array (e.g. one camera's slot of a row's ``[6, H, W, 3]``) that the
    final BGR -> RGB pass writes into, instead of a new array; it is also what is returned.

    OpenCV decodes at the largest DCT reduction that keeps at least ``out_hw`` (1600 x 900 -> 800 x 450 for 704 x 384),
    then resizes bilinearly (``INTER_LINEAR``, as mmcv's ``imresize`` in the UniAD / BEVFormer pipelines); the JPEG
    header's size comes from Pillow without decoding. About 4x faster than Pillow's draft + resize at that size.
    A missing file raises ``MissingImageError``, an undecodable one ``CorruptImageError`` (both name the path and
    sample).
    """
    H, W = int(out_hw[0]), int(out_hw[1])
    if out is not None and (out.shape != (H, W, 3) or out.dtype != np.uint8 or not out.flags.c_contiguous
                            or not out.flags.writeable):
        raise ValueError(f"decode_resize: out must be a writeable C-contiguous uint8 array of shape {(H, W, 3)}, "
                         f"got {out.dtype} {out.shape}")
    where = None if isinstance(src, (bytes, bytearray, memoryview)) else str(src)
    try:
        data = bytes(src) if where is None else Path(src).read_bytes()
    except FileNotFoundError:
        raise MissingImageError("camera image not found", sample_token=sample_token, path=where) from None
    try:
        with Image.open(io.BytesIO(data)) as header:  # lazy: reads the header only
            src_wh = header.size
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise CorruptImageError(f"cannot decode image: {e}", sample_token=sample_token, path=where) from None
    if data[:2] == b"\xff\xd8" and not data.rstrip(b"\x00").endswith(b"\xff\xd9"):
        # OpenCV would decode a cut-off JPEG with grey rows at the bottom: refuse it, as Pillow did
        raise CorruptImageError("camera image is not a complete JPEG (no end-of-image marker)",
                                sample_token=sample_token, path=where)
    img = cv2.imdecode(np.frombuffer(data, np.uint8), _reduction(src_wh, (H, W)))
    if img is None:
        raise CorruptImageError(f"cannot decode image: OpenCV could not decode the {src_wh[0]}x{src_wh[1]} JPEG data",
                                sample_token=sample_token, path=where)
    if img.shape[:2] != (H, W):
        img = cv2.resize(img, (W, H), interpolation=cv2.INTER_LINEAR)
    if out is None:
        return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)
    rgb = cv2.cvtColor(img, cv2.COLOR_BGR2RGB, dst=out)  # OpenCV writes into ``out`` (same size and type)
    if rgb.ctypes.data != out.ctypes.data:  # not expected; keep the contract whatever OpenCV did
        out[...] = rgb
    return out


def scale_intrinsics(K: np.ndarray, src_hw: tuple[int, int], dst_hw: tuple[int, int]) -> np.ndarray:
    """Intrinsics ``[..., 3, 3]`` of an image of size ``src_hw`` (H, W) resized to ``dst_hw``."""
    K = np.array(K, dtype=np.float32, copy=True)
    sy = float(dst_hw[0]) / float(src_hw[0])
    sx = float(dst_hw[1]) / float(src_hw[1])
    K[..., 0, :] *= sx
    K[..., 1, :] *= sy
    return K

