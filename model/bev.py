"""BEV encoder: lift multi-camera image features into a bird's-eye-view grid with the real camera geometry.

The grid covers ``bev_x_range`` x ``bev_y_range`` (nuScenes ego frame: x forward, y left, metres) in square cells of
``bev_resolution`` metres, with ``bev_z_points`` sample heights spread over ``bev_z_range``. Every 3D point
(cell centre x, y at each height z) is projected into every camera (``sensor2ego`` inverted rigidly, then the
intrinsics of the resized image), image features are sampled bilinearly with ``grid_sample`` at all FPN levels,
and averaged over the cameras that see the point (depth > 0 and inside the image). The height axis is collapsed by
a learned 1x1 convolution over (channels x heights); a small conv block refines the map, and the previous frame's
BEV (from the scene state) can be fused in.

BEV tensor layout everywhere: ``bev[b, c, i, j]`` with ``i`` indexing x (forward) and ``j`` indexing y (left); cell
``(i, j)`` has centre ``(x0 + (i + 0.5) * res, y0 + (j + 0.5) * res)``. Geometry is computed in float32 whatever
the autocast / weight dtype (bf16 pixel coordinates would be off by pixels).
"""
from __future__ import annotations

import math
from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

MIN_DEPTH = 1e-2
"""Metres in front of the camera plane below which a point counts as not seen."""


class BEVGrid:
    """Cell and sample-point geometry of the BEV grid (pure function of the vision config)."""

    def __init__(self, x_range: Sequence[float], y_range: Sequence[float], z_range: Sequence[float],
                 resolution: float, z_points: int):
        self.x_range = (float(x_range[0]), float(x_range[1]))
        self.y_range = (float(y_range[0]), float(y_range[1]))
        self.z_range = (float(z_range[0]), float(z_range[1]))
        self.resolution = float(resolution)
        if resolution <= 0 or z_points < 1:
            raise ValueError(f"BEV grid: bev_resolution={resolution} must be > 0, bev_z_points={z_points} >= 1")
        self.nx = int(round((self.x_range[1] - self.x_range[0]) / self.resolution))
        self.ny = int(round((self.y_range[1] - self.y_range[0]) / self.resolution))
        self.nz = int(z_points)
        if self.nx < 1 or self.ny < 1:
            raise ValueError(f"BEV grid: ranges {self.x_range} x {self.y_range} at {resolution} m give no cells")

    @classmethod
    def from_config(cls, vcfg) -> "BEVGrid":
        return cls(vcfg.bev_x_range, vcfg.bev_y_range, vcfg.bev_z_range, vcfg.bev_resolution, vcfg.bev_z_points)

    @property
    def shape(self) -> tuple[int, int]:
        return self.nx, self.ny

    def z_levels(self) -> torch.Tensor:
        """[nz] sample heights (metres): centres of nz equal slabs of z_range."""
        z0, z1 = self.z_range
        return z0 + (torch.arange(self.nz, dtype=torch.float32) + 0.5) * (z1 - z0) / self.nz

    def cell_centres(self) -> torch.Tensor:
        """[nx, ny, 2] (x, y) centre of every cell, metres."""
        xs = self.x_range[0] + (torch.arange(self.nx, dtype=torch.float32) + 0.5) * self.resolution
        ys = self.y_range[0] + (torch.arange(self.ny, dtype=torch.float32) + 0.5) * self.resolution
        gx, gy = torch.meshgrid(xs, ys, indexing="ij")
        return torch.stack([gx, gy], dim=-1)

    def points(self) -> torch.Tensor:
        """[nx, ny, nz, 3] ego-frame sample points (x, y, z), metres."""
        c = self.cell_centres()[:, :, None, :].expand(self.nx, self.ny, self.nz, 2)
        z = self.z_levels()[None, None, :, None].expand(self.nx, self.ny, self.nz, 1)
        return torch.cat([c, z], dim=-1)

    def cell_of(self, x: float, y: float) -> tuple[int, int]:
        """(i, j) index of the cell holding ego point (x, y); raises ValueError outside the grid."""
        i = math.floor((x - self.x_range[0]) / self.resolution)
        j = math.floor((y - self.y_range[0]) / self.resolution)
        if not (0 <= i < self.nx and 0 <= j < self.ny):
            raise ValueError(f"point ({x}, {y}) m lies outside the BEV grid {self.x_range} x {self.y_range}")
        return i, j

    def normalise_xy(self, xy: torch.Tensor) -> torch.Tensor:
        """Ego (x, y) metres [..., 2] -> [0, 1] over the grid ranges."""
        lo = xy.new_tensor([self.x_range[0], self.y_range[0]])
        span = xy.new_tensor([self.x_range[1] - self.x_range[0], self.y_range[1] - self.y_range[0]])
        return (xy - lo) / span

    def denormalise_xy(self, xy01: torch.Tensor) -> torch.Tensor:
        """[0, 1] grid coordinates [..., 2] -> ego (x, y) metres."""
        lo = xy01.new_tensor([self.x_range[0], self.y_range[0]])
        span = xy01.new_tensor([self.x_range[1] - self.x_range[0], self.y_range[1] - self.y_range[0]])
        return xy01 * span + lo


def rigid_inverse(T: torch.Tensor) -> torch.Tensor:
    """Inverse of rigid transforms [..., 4, 4] (R^T, -R^T t), exact and dtype-agnostic (no linalg.inv)."""
    R = T[..., :3, :3]
    t = T[..., :3, 3:]
    Rt = R.transpose(-1, -2)
    out = torch.zeros_like(T)
    out[..., :3, :3] = Rt
    out[..., :3, 3:] = -Rt @ t
    out[..., 3, 3] = 1.0
    return out


def project_points(points: torch.Tensor, intrinsics: torch.Tensor, sensor2ego: torch.Tensor,
                   image_hw: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Project ego-frame points into cameras.

    points [N, 3] ego metres; intrinsics [B, V, 3, 3] (pixels of the ``image_hw`` image, OpenCV convention: pixel
    centres at integer coordinates); sensor2ego [B, V, 4, 4] camera -> ego.
    Returns (uv [B, V, N, 2] pixels, depth [B, V, N] metres along the optical axis,
    valid [B, V, N] bool: depth > MIN_DEPTH and the pixel inside the image). All float32.
    """
    H, W = image_hw
    with torch.autocast(device_type=points.device.type, enabled=False):
        K = intrinsics.float()
        ego2cam = rigid_inverse(sensor2ego.float())  # [B, V, 4, 4]
        p = points.float()
        cam = torch.einsum("bvij,nj->bvni", ego2cam[..., :3, :3], p) + ego2cam[..., None, :3, 3]  # [B, V, N, 3]
        depth = cam[..., 2]
        pix = torch.einsum("bvij,bvnj->bvni", K, cam)
        uv = pix[..., :2] / depth.clamp(min=MIN_DEPTH)[..., None]
        valid = (depth > MIN_DEPTH) & (uv[..., 0] >= -0.5) & (uv[..., 0] <= W - 0.5) \
            & (uv[..., 1] >= -0.5) & (uv[..., 1] <= H - 0.5)
    return uv, depth, valid


def align_prev_bev(prev_bev: torch.Tensor, cur2prev: torch.Tensor, grid: BEVGrid) -> torch.Tensor:
    """Resample the previous keyframe's BEV [C, nx, ny] into the current ego frame.

    ``cur2prev`` [4, 4] maps current-ego points to previous-ego points (``inv(prev_ego2global) @ ego2global``).
    Each current cell takes the bilinear sample of ``prev_bev`` at its centre seen from the previous frame; cells
    the previous grid did not cover become zero.
    """
    with torch.autocast(device_type=prev_bev.device.type, enabled=False):
        c = grid.cell_centres().to(prev_bev.device)  # [nx, ny, 2]
        T = cur2prev.to(device=prev_bev.device, dtype=torch.float32)
        p = c @ T[:2, :2].T + T[:2, 3]  # [nx, ny, 2] previous-ego (x, y); heights ignored (planar motion)
        n = grid.normalise_xy(p) * 2 - 1  # [-1, 1] over the grid, align_corners=False convention
        g = torch.stack([n[..., 1], n[..., 0]], dim=-1)[None]  # grid_sample: x -> W (j, y axis), y -> H (i, x)
        out = F.grid_sample(prev_bev[None].float(), g, mode="bilinear", padding_mode="zeros", align_corners=False)
    return out[0].to(prev_bev.dtype)


def pixels_to_grid(uv: torch.Tensor, image_hw: tuple[int, int]) -> torch.Tensor:
    """Pixel coordinates [..., 2] -> ``grid_sample`` coordinates in [-1, 1] (align_corners=False).

    Normalised coordinates do not depend on the feature map's resolution, so one grid serves every FPN level.
    """
    H, W = image_hw
    scale = uv.new_tensor([2.0 / W, 2.0 / H])
    return (uv + 0.5) * scale - 1.0


def sine_positional_encoding(grid: BEVGrid, channels: int, temperature: float = 10000.0) -> torch.Tensor:
    """[nx * ny, channels] fixed sine/cosine encoding of the cell indices (i, j) (Transformer style: highest
    frequency one radian per cell, lowest ``1/temperature``); half the channels for i, half for j."""
    i, j = torch.meshgrid(torch.arange(grid.nx, dtype=torch.float32), torch.arange(grid.ny, dtype=torch.float32),
                          indexing="ij")
    idx = torch.stack([i.reshape(-1), j.reshape(-1)], dim=-1)  # [N, 2]
    n_freq = max(channels // 4, 1)
    freqs = temperature ** (-torch.arange(n_freq, dtype=torch.float32) / n_freq)
    parts = []
    for a in range(2):
        ang = idx[:, a:a + 1] * freqs[None, :]
        parts += [ang.sin(), ang.cos()]
    pe = torch.cat(parts, dim=-1)
    if pe.shape[1] < channels:
        pe = F.pad(pe, (0, channels - pe.shape[1]))
    return pe[:, :channels].contiguous()


def _norm(c: int) -> nn.GroupNorm:
    return nn.GroupNorm(math.gcd(c, 8) if c % 8 else 8, c)


class BEVEncoder(nn.Module):
    """Camera features -> BEV features.

    forward(feats, intrinsics [B, 6, 3, 3], sensor2ego [B, 6, 4, 4], prev_bev)
        -> (bev [B, C_out, nx, ny], lifted [B, C_out, nx, ny])
      feats: list of FPN levels [B*6, C_in, h_l, w_l] (cameras folded, ``CAMERAS`` order)
      prev_bev: None or list (length B) of [C_out, nx, ny] | None — the previous keyframe's ``lifted`` map of each
        sample's scene, already in the current ego frame (``align_prev_bev``). Samples without one fuse with their
        own ``lifted`` map, which is what training without states sees; keeping the pre-fusion map in the state
        (not the final ``bev``) gives the fusion layer the same kind of input at inference.
    """

    def __init__(self, vcfg, in_channels: int):
        super().__init__()
        self.grid = BEVGrid.from_config(vcfg)
        self.image_hw = (int(vcfg.image_height), int(vcfg.image_width))
        self.in_channels = in_channels
        self.out_channels = int(vcfg.bev_channels)
        self.register_buffer("points", self.grid.points().reshape(-1, 3), persistent=False)  # [N, 3]
        c, nz = self.out_channels, self.grid.nz
        self.collapse = nn.Sequential(nn.Conv2d(in_channels * nz, c, 1, bias=False), _norm(c), nn.ReLU(inplace=True))
        self.fuse = (nn.Sequential(nn.Conv2d(2 * c, c, 1, bias=False), _norm(c), nn.ReLU(inplace=True))
                     if vcfg.fuse_prev_bev else None)
        self.refine = nn.Sequential(nn.Conv2d(c, c, 3, padding=1, bias=False), _norm(c), nn.ReLU(inplace=True),
                                    nn.Conv2d(c, c, 3, padding=1))

    def lift(self, feats: list[torch.Tensor], intrinsics: torch.Tensor, sensor2ego: torch.Tensor
             ) -> tuple[torch.Tensor, torch.Tensor]:
        """Sample image features at the projected grid points and average over the cameras that see them.

        Returns (volume [B, C_in, nx, ny, nz] float32, count [B, nx, ny, nz] number of cameras seeing each point).
        Features of all FPN levels are averaged at each point.
        """
        B, V = intrinsics.shape[:2]
        points = self.points
        if points.dtype != torch.float32:  # weights cast to bf16 took the buffer along: rebuild it exactly
            points = self.grid.points().reshape(-1, 3).to(points.device)
        uv, _, valid = project_points(points, intrinsics, sensor2ego, self.image_hw)  # [B,V,N,2], [B,V,N]
        grid = pixels_to_grid(uv, self.image_hw)  # [B, V, N, 2] float32
        acc = feats[0].new_zeros((B, self.in_channels, points.shape[0]), dtype=torch.float32)  # [B, C, N]
        for v in range(V):  # one camera at a time keeps the peak at ~2x the output size
            # Only the points this camera sees in some sample of the batch are sampled (about a fifth of the grid for
            # a ring of six cameras); the others would be multiplied by a zero mask, so the sum is the same.
            idx = valid[:, v].any(dim=0).nonzero().squeeze(1)  # [n_v]
            if idx.numel() == 0:
                continue
            g = grid[:, v, idx, None, :]  # [B, n_v, 1, 2]
            cam_sum = None
            for lvl in feats:
                f = lvl.reshape(B, V, *lvl.shape[1:])[:, v].float()  # [B, C, h, w]
                s = F.grid_sample(f, g, mode="bilinear", padding_mode="border", align_corners=False)[..., 0]
                cam_sum = s if cam_sum is None else cam_sum + s
            # border padding: a point inside the image but within half a feature cell of its edge is not dimmed
            cam = cam_sum * (valid[:, v, None, idx].float() / len(feats))  # [B, C, n_v]
            acc = acc.index_add(2, idx, cam)
        count = valid.float().sum(dim=1)  # [B, N]
        volume = acc / count.clamp(min=1.0)[:, None, :]
        nx, ny, nz = self.grid.nx, self.grid.ny, self.grid.nz
        return volume.reshape(B, -1, nx, ny, nz), count.reshape(B, nx, ny, nz)

    def forward(self, feats: list[torch.Tensor], intrinsics: torch.Tensor, sensor2ego: torch.Tensor,
                prev_bev: Optional[list[Optional[torch.Tensor]]] = None) -> tuple[torch.Tensor, torch.Tensor]:
        volume, _ = self.lift(feats, intrinsics, sensor2ego)
        B, C, nx, ny, nz = volume.shape
        dtype = feats[0].dtype
        x = volume.permute(0, 1, 4, 2, 3).reshape(B, C * nz, nx, ny).to(dtype)  # heights stacked into channels
        lifted = bev = self.collapse(x)
        if self.fuse is not None:
            prev = []
            for b in range(B):
                p = None if prev_bev is None else prev_bev[b]
                if p is not None and tuple(p.shape) != tuple(bev.shape[1:]):
                    raise ValueError(f"scene state prev_bev has shape {tuple(p.shape)}, this model makes BEV "
                                     f"{tuple(bev.shape[1:])} (state from another config?)")
                prev.append(lifted[b] if p is None else p.to(device=bev.device, dtype=bev.dtype))
            bev = self.fuse(torch.cat([lifted, torch.stack(prev)], dim=1))
        return self.refine(bev) + bev, lifted
