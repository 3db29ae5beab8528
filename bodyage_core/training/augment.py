"""Data augmentation as batched torch ops (CPU or GPU), for 3D volumes ``(N, C, D, H, W)`` and
2.5D images ``(N, C, H, W)``: random translation, a small random affine (rotation, scaling) and
intensity jitter (multiplicative gain, additive offset, gamma). One resampling pass per batch;
with neither rotation nor scaling the translation is an integer shift (no resampling, fast on
CPU)."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F


@dataclass
class AugmentConfig:
    translate: float = 4.0      # max shift in voxels / pixels along each axis
    rotate_deg: float = 5.0     # max rotation about each axis (degrees)
    scale: float = 0.05         # max relative scaling
    gain: float = 0.1           # intensity x U(1-gain, 1+gain)
    offset: float = 0.05        # intensity + U(-offset, offset) * std
    gamma: float = 0.0          # |x|^U(1-gamma, 1+gamma) on non-negative images
    flip: bool = False          # random left-right flip (x axis, W); off by default

    def to_dict(self) -> dict:
        return asdict(self)

    @property
    def enabled(self) -> bool:
        return any((self.translate, self.rotate_deg, self.scale, self.gain, self.offset,
                    self.gamma, self.flip))


def _rotation_3d(angles: torch.Tensor) -> torch.Tensor:
    """(N, 3) angles in radians -> (N, 3, 3) rotation matrices (x, y, z order)."""
    a, b, c = angles[:, 0], angles[:, 1], angles[:, 2]
    one, zero = torch.ones_like(a), torch.zeros_like(a)
    rx = torch.stack([one, zero, zero, zero, a.cos(), -a.sin(), zero, a.sin(), a.cos()], 1)
    ry = torch.stack([b.cos(), zero, b.sin(), zero, one, zero, -b.sin(), zero, b.cos()], 1)
    rz = torch.stack([c.cos(), -c.sin(), zero, c.sin(), c.cos(), zero, zero, zero, one], 1)
    return rx.view(-1, 3, 3) @ ry.view(-1, 3, 3) @ rz.view(-1, 3, 3)


def _shift_flip(x: torch.Tensor, cfg: AugmentConfig, rand) -> torch.Tensor:
    """Integer shifts (zero fill) and left-right flips, per sample: no resampling, cheap."""
    n, nd = x.shape[0], x.ndim - 2
    shifts = torch.round(rand(n, nd) * cfg.translate).to(torch.int64).tolist()
    flips = (rand(n) < 0).tolist() if cfg.flip else [False] * n
    out = torch.zeros_like(x)
    for i in range(n):
        xi = torch.flip(x[i], dims=[-1]) if flips[i] else x[i]
        src, dst = [slice(None)], [slice(None)]
        for d, s in enumerate(shifts[i]):
            size = x.shape[2 + d]
            s = max(-size + 1, min(size - 1, s))
            src.append(slice(max(0, -s), size - max(0, s)))
            dst.append(slice(max(0, s), size - max(0, -s)))
        out[i][tuple(dst)] = xi[tuple(src)]
    return out


def augment_batch(x: torch.Tensor, cfg: AugmentConfig,
                  generator: torch.Generator | None = None) -> torch.Tensor:
    """Return an augmented copy of a batch ``(N, C, *spatial)`` (2 or 3 spatial dims)."""
    if not cfg.enabled:
        return x
    n, nd = x.shape[0], x.ndim - 2
    dev = x.device

    def rand(*shape):
        return torch.rand(*shape, generator=generator).to(dev) * 2 - 1  # U(-1, 1)

    spatial = list(x.shape[2:])
    if (cfg.translate or cfg.flip) and not (cfg.rotate_deg or cfg.scale):
        x = _shift_flip(x, cfg, rand)
    elif cfg.translate or cfg.rotate_deg or cfg.scale or cfg.flip:
        if nd == 3:
            rot = _rotation_3d(rand(n, 3) * math.radians(cfg.rotate_deg))
        else:
            a = rand(n) * math.radians(cfg.rotate_deg)
            rot = torch.stack([a.cos(), -a.sin(), a.sin(), a.cos()], 1).view(n, 2, 2)
        sc = 1 + rand(n, 1, 1) * cfg.scale
        mat = rot * sc
        if cfg.flip:
            flip = torch.where(rand(n) < 0, -1.0, 1.0)
            mat[:, :, 0] = mat[:, :, 0] * flip[:, None]
        # affine_grid's last coordinate axis order is (x=W, y=H[, z=D]); normalised [-1, 1].
        sizes = torch.tensor(spatial[::-1], dtype=x.dtype, device=dev)
        shift = rand(n, nd) * cfg.translate * 2 / sizes
        theta = torch.cat([mat.to(x.dtype), shift[:, :, None].to(x.dtype)], dim=2)
        grid = F.affine_grid(theta, list(x.shape), align_corners=False)
        x = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    else:
        x = x.clone()
    view = (n,) + (1,) * (x.ndim - 1)
    if cfg.gamma:
        g = (1 + rand(n) * cfg.gamma).view(view)
        x = x.clamp_min(0) ** g
    if cfg.gain:
        x = x * (1 + rand(n) * cfg.gain).view(view)
    if cfg.offset:
        std = x.flatten(1).std(dim=1).view(view)
        x = x + rand(n).view(view) * cfg.offset * std
    return x
