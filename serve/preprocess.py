"""Request -> model inputs, with the same image pipeline as training (``odvla.platform.data.image_ops``).

The ingress decodes and resizes the JPEGs (uint8, small) and scales the intrinsics to the network input size;
the model replica normalises (ImageNet mean/std) right before the forward pass, so only uint8 pixels cross the
process boundary. Every failure is a ``RequestError`` that names the field (``cameras.3.image``).
"""
from __future__ import annotations

import base64
import io

import numpy as np
from PIL import Image

from odvla.model.constants import COMMANDS, PAST_STEPS
from odvla.platform.data.image_ops import decode_resize, scale_intrinsics
from odvla.serve.schemas import SceneFields

MAX_IMAGE_PIXELS = 40_000_000
"""Largest decoded camera image (pixels) accepted: guards the replica against decompression bombs."""


class RequestError(ValueError):
    """Input that passed the schema but cannot be used; ``field`` is the dotted path, reported in the 422."""

    def __init__(self, field: str, message: str):
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


def decode_cameras(jpegs: list[bytes], cameras, out_hw: tuple[int, int], part_names: list[str]) -> dict:
    """Six JPEGs (``CAMERAS`` order) and their ``CameraCalibration`` -> ``images`` uint8 [6,H,W,3],
    ``intrinsics`` float32 [6,3,3] (pixels of the resized image), ``sensor2ego`` float32 [6,4,4].
    ``part_names[i]`` is what an error about image ``i`` names (``cameras.2.image`` or the multipart part)."""
    images, intrinsics = [], []
    for i, (raw, cam) in enumerate(zip(jpegs, cameras)):
        field = part_names[i]
        try:
            with Image.open(io.BytesIO(raw)) as im:
                fmt, (w, h) = im.format, im.size
        except Exception as e:  # PIL raises several types for garbage bytes
            raise RequestError(field, f"undecodable image ({type(e).__name__}: {e})") from None
        if fmt != "JPEG":
            raise RequestError(field, f"expected a JPEG image, got {fmt}")
        if w * h > MAX_IMAGE_PIXELS or w < 1 or h < 1:
            raise RequestError(field, f"image of {w}x{h} pixels is outside 1..{MAX_IMAGE_PIXELS} pixels")
        try:
            img = decode_resize(raw, out_hw)
        except Exception as e:
            raise RequestError(field, f"undecodable image ({type(e).__name__}: {e})") from None
        images.append(img)
        k = np.asarray(cam.intrinsics, dtype=np.float64)
        intrinsics.append(scale_intrinsics(k, (h, w), tuple(out_hw)))
    return {
        "images": np.stack(images).astype(np.uint8),
        "intrinsics": np.stack(intrinsics).astype(np.float32),
        "sensor2ego": np.asarray([c.sensor2ego for c in cameras], dtype=np.float32),
    }


def json_jpegs(req) -> list[bytes]:
    """The base64 images of a JSON request (already checked by the schema) as JPEG bytes."""
    return [base64.b64decode(cam.image) for cam in req.cameras]


def scene_item(req: SceneFields, jpegs: list[bytes], part_names: list[str], command: str, task: str,
               question: str, out_hw: tuple[int, int]) -> dict:
    """One request as a row of the model batch (numpy, no batch dim) plus text fields; see model/batch.py.
    ``req``: a JSON request or the ``request`` part of a multipart one (its ``cameras`` hold the calibration);
    ``jpegs``: the six images in ``CAMERAS`` order."""
    item = decode_cameras(jpegs, req.cameras, out_hw, part_names)
    past = np.zeros((PAST_STEPS, 2), np.float32)
    mask = np.zeros((PAST_STEPS,), np.float32)
    for i, point in enumerate(req.history or ()):
        if point is not None:
            past[i] = point
            mask[i] = 1.0
    item.update(
        ego_state=np.asarray(req.ego_state.as_list(), np.float32),
        command=int(COMMANDS.index(command)),
        past_traj=past,
        past_mask=mask,
        frame_index=int(req.frame_index or 0),
        frame_index_given=req.frame_index,
        max_new_tokens=req.max_new_tokens,
        scene_token=req.scene_token or (req.session_id or ""),
        sample_token="",
        task=task,
        question=question,
        answer="",
    )
    return item
