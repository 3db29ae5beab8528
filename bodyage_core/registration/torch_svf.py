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


def pyramid(img: torch.Tensor, shrinks) -> dict[int, torch.Tensor]:
    """:func:`downsample` of ``img`` by each shrink factor, as a cascade: each level is
    smoothed and resampled from the finest level already made whose factor divides its own
    (the Gaussians add up to the same ``shrink / 2`` voxels of the full grid), so that the full
    grid is smoothed once, at the finest level's sigma (a 2 x, 4 x and 8 x pyramid costs 1/3
    of three direct ones on the CPU)."""
    full = tuple(img.shape[2:])
    out: dict[int, torch.Tensor] = {1: img}
    for s in sorted({int(v) for v in shrinks}):
        if s in out:
            continue
        base = max(b for b in out if s % b == 0)
        sigma = 0.5 * math.sqrt(s * s - base * base) / base     # voxels of the base level
        out[s] = F.interpolate(gaussian_smooth(out[base], sigma), size=level_size(full, s),
                               mode="trilinear", align_corners=True)
    return {int(v): out[int(v)] for v in shrinks}


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


def spatial_gradient(img: torch.Tensor) -> torch.Tensor:
    """``(N, C, D, H, W)`` -> ``(N, C, 3, D + 2, H + 2, W + 2)``: the derivatives along x, y, z
    of every channel per *normalised* unit of the image's grid, by central differences of the
    image extended by zeros (``grid_sample``'s ``zeros`` padding), on the grid grown by one
    voxel on every side: there the interpolated image falls to zero (a body cut by the field
    of view has an edge there), and :func:`sample_image` needs its slope too."""
    x = F.pad(img, (2, 2, 2, 2, 2, 2))
    out = []
    for dim in (4, 3, 2):                       # x, y, z
        n = x.shape[dim]
        half = (img.shape[dim] - 1) / 2.0       # voxels per normalised unit
        d = 0.5 * half * (x.narrow(dim, 2, n - 2) - x.narrow(dim, 0, n - 2))
        keep = [slice(None)] * 5
        for other in (2, 3, 4):
            if other != dim:
                keep[other] = slice(1, -1)
        out.append(d[tuple(keep)])
    return torch.stack(out, 2)


class _SampleCentral(torch.autograd.Function):
    """``grid_sample`` of a constant image whose gradient with respect to the sampling points
    is the image's central-difference gradient (:func:`spatial_gradient`), trilinearly
    interpolated there.

    The gradient of trilinear interpolation itself jumps at every voxel centre (the forward
    difference on one side, the backward one on the other). The engine samples the
    pre-warped subject at exactly those points wherever the displacement is still zero, so
    the last bit of the coordinates' rounding chose the side: float32 and float64 took
    different first steps, and Adam (which scales every coefficient's step to about its
    learning rate) turned that into fields up to 5.5 mm apart after 15 iterations.
    """

    @staticmethod
    def forward(ctx, img, grad_img, grid):
        ctx.save_for_backward(grad_img, grid)
        return sample(img, grid)

    @staticmethod
    def backward(ctx, grad_out):
        grad_img, grid = ctx.saved_tensors
        n, c = grad_img.shape[:2]
        # normalised coordinates of the grid grown by one voxel on every side
        size = torch.tensor([grad_img.shape[5], grad_img.shape[4], grad_img.shape[3]],
                            dtype=grid.dtype, device=grid.device)
        g = sample(grad_img.flatten(1, 2), grid * ((size - 3) / (size - 1)))
        grad_grid = (grad_out.unsqueeze(2) * g.unflatten(1, (c, 3))).sum(1)
        return None, None, grad_grid.permute(0, 2, 3, 4, 1)


def sample_image(img: torch.Tensor, grid: torch.Tensor,
                 grad_img: torch.Tensor | None = None) -> torch.Tensor:
    """``sample(img, grid)`` (zeros outside) whose gradient with respect to ``grid`` is that
    of :class:`_SampleCentral` (``grad_img``: :func:`spatial_gradient` of ``img``, computed
    when not given); an image that itself needs a gradient is sampled plainly."""
    if img.requires_grad or not grid.requires_grad:
        return sample(img, grid)
    if grad_img is None:
        grad_img = spatial_gradient(img)
    if grad_img.shape[0] != grid.shape[0]:
        grad_img = grad_img.expand(grid.shape[0], *grad_img.shape[1:])
        img = img.expand(grid.shape[0], *img.shape[1:])
    return _SampleCentral.apply(img, grad_img, grid)


def warp(img: torch.Tensor, disp: torch.Tensor, ident: torch.Tensor,
         grad_img: torch.Tensor | None = None) -> torch.Tensor:
    """``img(x + disp(x))`` (zeros outside; gradient as :func:`sample_image`)."""
    return sample_image(img, ident + as_grid(disp), grad_img)


# -- similarity and regularisation -----------------------------------------------------------
def _box(x: torch.Tensor, w: int) -> torch.Tensor:
    """Mean over a ``w``-voxel box, shrunk at the edges (``avg_pool3d`` with
    ``count_include_pad=False``), separably: along each axis the sum of ``w`` shifted views of
    the zero-padded tensor. No running sums: their float32 rounding grows with the length of
    the axis and comes back doubled in the local variances (``E[a^2] - E[a]^2``); this is as
    fast on the CPU (and both about twice as fast as a gather of cumulative sums, five times
    the 3D pool)."""
    r = w // 2
    for d in (2, 3, 4):
        n = x.shape[d]
        pad = [0] * 6
        pad[2 * (4 - d)] = pad[2 * (4 - d) + 1] = r
        xp = F.pad(x, pad)
        s = xp.narrow(d, 0, n)
        for k in range(1, 2 * r + 1):
            s = s + xp.narrow(d, k, n)
        idx = torch.arange(n, device=x.device)
        count = (idx + r + 1).clamp_max(n) - (idx - r).clamp_min(0)
        shape = [1] * x.ndim
        shape[d] = n
        x = s / count.to(x.dtype).view(shape)
    return x


def lncc_reference(b: torch.Tensor, window: int = 5) -> tuple[torch.Tensor, ...]:
    """The fixed image's part of :func:`lncc_loss` (``b``, its local means and variances),
    computed once per pyramid level instead of at every iteration."""
    w = int(window) | 1
    with torch.no_grad():
        mb, mbb = _box(torch.cat([b, b * b], 1), w).chunk(2, 1)
        return b, mb, (mbb - mb * mb).clamp_min(0)


def lncc_loss(a: torch.Tensor, b: torch.Tensor | None = None, window: int = 5,
              eps: float = 1e-4, reference: tuple[torch.Tensor, ...] | None = None
              ) -> torch.Tensor:
    """``1 - mean(local squared correlation)`` per batch item ``(N,)`` over box windows of
    ``window`` voxels (odd); ``reference``: :func:`lncc_reference` of ``b`` (then ``b`` may be
    None)."""
    w = int(window) | 1
    b, mb, vb = reference if reference is not None else lncc_reference(b, w)
    if b.shape[0] != a.shape[0]:
        b, mb, vb = (t.expand(a.shape[0], *t.shape[1:]) for t in (b, mb, vb))
    # one pass of the box filter over the moving image's three local moments
    ma, maa, mab = _box(torch.cat([a, a * a, a * b], 1), w).chunk(3, 1)
    va = (maa - ma * ma).clamp_min(0)
    cov = mab - ma * mb
    cc = cov * cov / (va * vb + eps)
    return 1 - cc.flatten(1).mean(1)


def mse_loss(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return ((a - b) ** 2).flatten(1).mean(1)


def similarity(a: torch.Tensor, b: torch.Tensor, name: str, window: int,
               reference: tuple[torch.Tensor, ...] | None = None, eps: float = 1e-4
               ) -> torch.Tensor:
    """LNCC or MSE loss ``(N,)``; ``reference``: :func:`lncc_reference` of ``b`` for LNCC."""
    if name == "lncc":
        return lncc_loss(a, b, window, eps, reference)
    return mse_loss(a, b)


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
