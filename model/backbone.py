"""Image backbone: a named torchvision trunk (``model.vision.backbone``: resnet18 / 34 / 50 / 101) +
torchvision FeaturePyramidNetwork.

Backbones are entries of ``BACKBONES``: each ``BackboneSpec`` builds its trunk and owns the normalisation its
weights expect (``spec.normalize``, applied by the vision encoder to the uint8 images it is given), so adding a
backbone is one entry here. All cameras of a batch go through in one pass as ``[B*6, 3, H, W]``; the FPN returns
three levels (strides 8, 16, 32 of the input) with ``fpn_channels`` channels each. Weights optionally come from a
local file holding a torchvision ResNet state dict (e.g. ``resnet101-cd907fc2.pth``); the classification head
(``fc.*``) is ignored.
"""
from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint
from torchvision.models import resnet18, resnet34, resnet50, resnet101
from torchvision.ops import FeaturePyramidNetwork

STRIDES = (8, 16, 32)
"""Input strides of the returned feature levels (ResNet stages 2, 3, 4)."""

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
"""RGB mean / std of the ImageNet training images (torchvision's classification weights expect them)."""


@dataclass(frozen=True)
class BackboneSpec:
    """A named trunk: its torchvision constructor, its depth, the channels of stages 2-4 (what the FPN reads) and
    the RGB mean / std of the input normalisation its weights were trained with."""

    name: str
    build: Callable[..., nn.Module]
    depth: int
    stage_channels: tuple[int, int, int]
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 ``[..., 3, H, W]`` RGB -> float32 ``[..., 3, H, W]``: ``(x / 255 - mean) / std``, on the tensor's
        device. The data pipeline and the server hand the model raw uint8 images (a quarter of float32's bytes
        through Ray's object store and host-to-device copies); the encoder normalises them here."""
        shape = (3, 1, 1)
        mean = torch.tensor(self.mean, dtype=torch.float32, device=images.device).view(shape)
        std = torch.tensor(self.std, dtype=torch.float32, device=images.device).view(shape)
        return (images.to(torch.float32) / 255.0 - mean) / std


BACKBONES = {s.name: s for s in (
    BackboneSpec("resnet18", resnet18, 18, (128, 256, 512)),
    BackboneSpec("resnet34", resnet34, 34, (128, 256, 512)),
    BackboneSpec("resnet50", resnet50, 50, (512, 1024, 2048)),
    BackboneSpec("resnet101", resnet101, 101, (512, 1024, 2048)),
)}
"""``model.vision.backbone`` -> its spec."""


def backbone_spec(name: str) -> BackboneSpec:
    """The spec of ``name``; an unknown name is a ValueError naming ``model.vision.backbone`` and the choices."""
    if name not in BACKBONES:
        raise ValueError(f"model.vision.backbone={name!r}: choose one of {', '.join(BACKBONES)}")
    return BACKBONES[name]


def load_resnet_weights(net: nn.Module, path: str | Path, depth: int) -> None:
    """Load a torchvision ResNet state dict from ``path`` into ``net`` (``fc.*`` ignored).

    Raises FileNotFoundError when the file is missing and ValueError when its keys or shapes do not fit a
    ResNet-``depth`` (both messages name the file and ``model.vision.backbone_weights``).
    """
    path = Path(path)
    where = f"model.vision.backbone_weights={str(path)!r}"
    if not path.is_file():
        raise FileNotFoundError(f"ResNet-{depth} weights not found: {where} is not a file")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # corrupt / not a torch file
        raise ValueError(f"cannot read ResNet-{depth} weights from {where}: {exc}") from exc
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{where} does not hold a state dict of tensors")
    state = {k: v for k, v in state.items() if not k.startswith("fc.")}
    own = {k: v for k, v in net.state_dict().items() if not k.startswith("fc.")}
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    bad_shape = sorted(k for k in set(own) & set(state) if own[k].shape != state[k].shape)
    if missing or unexpected or bad_shape:
        detail = []
        if missing:
            detail.append(f"{len(missing)} missing keys (e.g. {missing[:3]})")
        if unexpected:
            detail.append(f"{len(unexpected)} unexpected keys (e.g. {unexpected[:3]})")
        if bad_shape:
            k = bad_shape[0]
            detail.append(f"{len(bad_shape)} shape mismatches (e.g. {k}: file {tuple(state[k].shape)} vs "
                          f"model {tuple(own[k].shape)})")
        raise ValueError(f"{where} is not a torchvision ResNet-{depth} state dict: " + "; ".join(detail))
    net.load_state_dict(state, strict=False)


class ImageBackbone(nn.Module):
    """Trunk (``BACKBONES[name]``) + FPN.

    forward(images [N, 3, H, W]) -> list of 3 tensors [N, C, ceil(H/s), ceil(W/s)] for s in ``STRIDES``,
    C = ``out_channels``. ``N`` is ``B * 6`` (cameras folded into the batch).
    """

    def __init__(self, name: str = "resnet18", out_channels: int = 32, weights: Optional[str] = None,
                 gradient_checkpointing: bool = False, frozen_stages: int = -1):
        super().__init__()
        if not -1 <= frozen_stages <= 4:
            raise ValueError(f"model.vision.frozen_stages={frozen_stages}: expected -1 (none) .. 4")
        self.frozen_stages = int(frozen_stages)
        self.spec = backbone_spec(name)
        net = self.spec.build(weights=None)
        if weights:
            load_resnet_weights(net, weights, self.spec.depth)
        self.depth = self.spec.depth
        self.stem = nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool)
        self.layer1, self.layer2, self.layer3, self.layer4 = net.layer1, net.layer2, net.layer3, net.layer4
        self.fpn = FeaturePyramidNetwork(list(self.spec.stage_channels), out_channels)
        self.out_channels = out_channels
        self.gradient_checkpointing = gradient_checkpointing
        self.freeze_stages()

    def frozen_modules(self) -> list[nn.Module]:
        """The stem (``frozen_stages >= 0``) and ResNet stages 1..``frozen_stages``, as mmdet's ResNet freezes them
        (UniAD and BEVFormer train their ResNet-101 with ``frozen_stages=1``): no gradient, BatchNorm statistics
        fixed. Backward then stops at the first trained stage, so the largest feature maps cost no backward."""
        return [self.stem, self.layer1, self.layer2, self.layer3, self.layer4][:self.frozen_stages + 1]

    def freeze_stages(self) -> None:
        """Turn off gradients of ``frozen_modules`` (after a caller enabled the whole model) and put them in eval
        mode when the backbone trains."""
        for m in self.frozen_modules():
            m.requires_grad_(False)
            m.eval()

    def train(self, mode: bool = True):
        super().train(mode)
        for m in self.frozen_modules():
            m.eval()
        return self

    def _run(self, module: nn.Module, x: torch.Tensor) -> torch.Tensor:
        if self.gradient_checkpointing and self.training and torch.is_grad_enabled():
            return checkpoint(module, x, use_reentrant=False)
        return module(x)

    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        # channels-last activations: oneDNN's (and cuDNN's) faster convolution layout; measured 8 % of a tiny
        # stage3 step on the CPU (docs/performance.md)
        x = self._run(self.stem, images.contiguous(memory_format=torch.channels_last))
        x = self._run(self.layer1, x)
        c3 = self._run(self.layer2, x)
        c4 = self._run(self.layer3, c3)
        c5 = self._run(self.layer4, c4)
        feats = self.fpn(OrderedDict([("c3", c3), ("c4", c4), ("c5", c5)]))
        return list(feats.values())
