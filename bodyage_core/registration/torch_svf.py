"""Torch building blocks of the registration engine: pyramids, cubic B-spline control grids,
stationary velocity fields (scaling and squaring), similarity and regularisation terms.

Tensors are torch ``(N, C, D, H, W)`` (D = z, H = y, W = x). Displacements and velocities are in
*normalised* coordinates of the reference grid (``grid_sample`` with ``align_corners=True``:
-1 and +1 are the first and last voxel centres along each axis), channels ordered ``x, y, z``
like ``grid_sample``'s last dimension; they do not depend on the pyramid level.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


# -- grids and resampling ---------------------------------------------------------------------
def identity_grid(size: tuple[int, int, int], device, dtype) -> torch.Tensor:
    """``(1, D, H, W, 3)`` normalised coordinates (x, y, z) of every voxel of a grid."""
    theta = torch.eye(3, 4, device=device, dtype=dtype)[None]
    return F.affine_grid(theta, (1, 1, *size), align_corners=True)


def sample(img: torch.Tensor, grid: torch.Tensor, padding: str = "zeros") -> torch.Tensor:
    return F.grid_sample(img, grid, mode="bilinear", padding_mode=padding, align_corners=True)


def gaussian_smooth(img: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian of ``sigma`` voxels on ``(N, C, D, H, W)`` (edges replicated)."""
    if sigma <= 0:
        return img
    r = max(1, int(math.ceil(3 * sigma)))
    x = torch.arange(-r, r + 1, device=img.device, dtype=img.dtype)
    k = torch.exp(-0.5 * (x / sigma) ** 2)
    k = k / k.sum()
    c = img.shape[1]
    out = img
    for dim in range(3):
        shape = [1, 1, 1]
        shape[dim] = 2 * r + 1
        w = k.view(1, 1, *shape).repeat(c, 1, 1, 1, 1)
        pad = [0] * 6
        pad[2 * (2 - dim)] = pad[2 * (2 - dim) + 1] = r
        out = F.conv3d(F.pad(out, pad, mode="replicate"), w, groups=c)
    return out


def level_size(size: tuple[int, int, int], shrink: int) -> tuple[int, int, int]:
    if shrink <= 1:
        return tuple(size)
    return tuple(max(4, int(round(s / shrink))) for s in size)


def downsample(img: torch.Tensor, shrink: int) -> torch.Tensor:
    """Smooth (sigma ``shrink / 2`` voxels) and resample so first/last voxel centres stay."""
    if shrink <= 1:
        return img
    size = level_size(tuple(img.shape[2:]), shrink)
    return F.interpolate(gaussian_smooth(img, 0.5 * shrink), size=size, mode="trilinear",
                         align_corners=True)


def resize_field(field: torch.Tensor, size: tuple[int, int, int]) -> torch.Tensor:
    """A normalised-coordinate field (N, 3, D, H, W) on another grid size (same extent)."""
    if tuple(field.shape[2:]) == tuple(size):
        return field
    return F.interpolate(field, size=size, mode="trilinear", align_corners=True)


# -- cubic B-spline control grids --------------------------------------------------------------
def _bspline_kernel(stride: int, device, dtype) -> torch.Tensor:
    """Cubic B-spline sampled every 1/stride of a control spacing, length 4 * stride."""
    t = (torch.arange(4 * stride, device=device, dtype=dtype) - 2 * stride) / stride
    a = t.abs()
    return torch.where(a < 1, 2 / 3 - a ** 2 + 0.5 * a ** 3,
                       torch.where(a < 2, (2 - a) ** 3 / 6, torch.zeros_like(a)))


def control_grid_shape(size: tuple[int, int, int], stride_zyx: tuple[int, int, int]
                       ) -> tuple[int, int, int]:
    """Control points per axis: point ``j`` sits at voxel ``(j - 1) * stride``."""
    return tuple((n - 1) // s + 4 for n, s in zip(size, stride_zyx))


def bspline_dense(coef: torch.Tensor, stride_zyx: tuple[int, int, int],
                  size: tuple[int, int, int]) -> torch.Tensor:
    """Dense field ``(N, C, *size)`` of cubic B-spline coefficients ``(N, C, *control)``:
    separable transposed convolutions, control point ``j`` at voxel ``(j - 1) * stride``."""
    out = coef
    c = coef.shape[1]
    for dim, (s, n) in enumerate(zip(stride_zyx, size)):
        k = _bspline_kernel(s, coef.device, coef.dtype)
        shape = [1, 1, 1]
        shape[dim] = k.numel()
        strides = [1, 1, 1]
        strides[dim] = s
        w = k.view(1, 1, *shape).repeat(c, 1, 1, 1, 1)
        out = F.conv_transpose3d(out, w, stride=tuple(strides), groups=c)
        out = out.narrow(2 + dim, 3 * s, n)
    return out


def control_points_from_dense(dense: torch.Tensor, stride_zyx: tuple[int, int, int],
                              size: tuple[int, int, int]) -> torch.Tensor:
    """Coefficients on the control grid of ``size`` / ``stride`` approximating a dense
    normalised field (sampled at the control points; used to start a finer level)."""
    shape = control_grid_shape(size, stride_zyx)
    axes = []
    for n, s, m in zip(size, stride_zyx, shape):
        pos = (torch.arange(m, device=dense.device, dtype=dense.dtype) - 1) * s
        axes.append(2 * pos / max(n - 1, 1) - 1)
    zz, yy, xx = torch.meshgrid(*axes, indexing="ij")
    grid = torch.stack([xx, yy, zz], -1)[None].expand(dense.shape[0], -1, -1, -1, -1)
    return sample(dense, grid, padding="border")


# -- stationary velocity fields ------------------------------------------------------------------
def as_grid(field: torch.Tensor) -> torch.Tensor:
    """``(N, 3, D, H, W)`` -> ``(N, D, H, W, 3)``."""
    return field.permute(0, 2, 3, 4, 1)


def compose_add(disp: torch.Tensor, ident: torch.Tensor) -> torch.Tensor:
    """``d + d o (id + d)``: one squaring step."""
    return disp + sample(disp, ident + as_grid(disp), padding="border")


def exp_velocity(v: torch.Tensor, steps: int, ident: torch.Tensor | None = None) -> torch.Tensor:
    """Displacement ``exp(v) - id`` of a stationary velocity field by scaling and squaring."""
    if ident is None:
        ident = identity_grid(tuple(v.shape[2:]), v.device, v.dtype)
    d = v / (2 ** steps)
    for _ in range(steps):
        d = compose_add(d, ident)
    return d


def warp(img: torch.Tensor, disp: torch.Tensor, ident: torch.Tensor) -> torch.Tensor:
    """``img(x + disp(x))`` (zeros outside)."""
    return sample(img, ident + as_grid(disp))


# -- similarity and regularisation -----------------------------------------------------------
def _box(x: torch.Tensor, w: int) -> torch.Tensor:
    """Mean over a ``w``-voxel box, shrunk at the edges (``avg_pool3d`` with
    ``count_include_pad=False``), as differences of running sums along each axis in turn: 3
    passes of O(1) a voxel, forward and backward, where the 3D pool costs ``w ** 3`` (five
    times slower fwd+bwd on the CPU at ``w = 5``)."""
    r = w // 2
    for d in (2, 3, 4):
        n = x.shape[d]
        c = F.pad(x.cumsum(d).movedim(d, -1), (1, 0)).movedim(-1, d)
        idx = torch.arange(n, device=x.device)
        lo, hi = (idx - r).clamp_min(0), (idx + r + 1).clamp_max(n)
        shape = [1] * x.ndim
        shape[d] = n
        x = (c.index_select(d, hi) - c.index_select(d, lo)) / (hi - lo).to(x.dtype).view(shape)
    return x


def lncc_loss(a: torch.Tensor, b: torch.Tensor, window: int = 5, eps: float = 1e-4
              ) -> torch.Tensor:
    """``1 - mean(local squared correlation)`` per batch item ``(N,)`` over box windows of
    ``window`` voxels (odd)."""
    w = int(window) | 1
    c = a.shape[1]
    # one pass of the box filter over the five local moments
    ma, mb, maa, mbb, mab = _box(torch.cat([a, b, a * a, b * b, a * b], 1), w).split(c, 1)
    va = (maa - ma * ma).clamp_min(0)
    vb = (mbb - mb * mb).clamp_min(0)
    cov = mab - ma * mb
    cc = cov * cov / (va * vb + eps)
    return 1 - cc.flatten(1).mean(1)


def mse_loss(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return ((a - b) ** 2).flatten(1).mean(1)


def similarity(a: torch.Tensor, b: torch.Tensor, name: str, window: int) -> torch.Tensor:
    return lncc_loss(a, b, window) if name == "lncc" else mse_loss(a, b)


def bending_energy(coef_cp: torch.Tensor, spacing: tuple[float, float, float] | None = None
                   ) -> torch.Tensor:
    """Bending energy ``(N,)`` of a field by finite differences on its control grid (second
    derivatives squared, mixed terms twice). Derivatives are per control spacing, or per unit of
    ``spacing`` (the control spacing along z, y, x in the caller's units, e.g. normalised
    coordinates as deepali measures it) when given."""
    h = (1.0, 1.0, 1.0) if spacing is None else tuple(float(v) for v in spacing)

    def d2(x, dim):
        n = x.shape[dim]
        return x.narrow(dim, 2, n - 2) - 2 * x.narrow(dim, 1, n - 2) + x.narrow(dim, 0, n - 2)

    def d1(x, dim):
        n = x.shape[dim]
        return 0.5 * (x.narrow(dim, 2, n - 2) - x.narrow(dim, 0, n - 2))

    total = 0
    for i in range(2, 5):
        total = total + (d2(coef_cp, i) ** 2).flatten(1).mean(1) / h[i - 2] ** 4
        for j in range(i + 1, 5):
            total = total + 2 * (d1(d1(coef_cp, i), j) ** 2).flatten(1).mean(1) \
                / (h[i - 2] * h[j - 2]) ** 2
    return total
