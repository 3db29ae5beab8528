"""Painting analytic shapes into the phantom's label map, in body millimetres: z-parameterised
elliptic cylinders, ellipsoids and tubes along 3D curves (:class:`Canvas`), the profiles and
curves they are drawn from, and smooth noise for textures."""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
from scipy import ndimage
from scipy.spatial import cKDTree

from bodyage_core.synth.grid import SynthGrid

Prof = Callable[[np.ndarray], np.ndarray] | float


def profile(f: Prof, z: np.ndarray) -> np.ndarray:
    if callable(f):
        return np.asarray(f(z), dtype=np.float32) * np.ones_like(z)
    return np.full(z.shape, float(f), dtype=np.float32)


def index_range(coords: np.ndarray, lo: float, hi: float) -> slice:
    i0 = int(np.searchsorted(coords, lo, side="left"))
    i1 = int(np.searchsorted(coords, hi, side="right"))
    return slice(max(0, i0), min(len(coords), i1))


Region = tuple[tuple[slice, slice, slice], np.ndarray]


class Canvas:
    def __init__(self, grid: SynthGrid):
        self.grid = grid
        self.xs, self.ys, self.zs = grid.axes()
        self.labels = np.zeros(grid.shape, dtype=np.uint8)

    def zcyl(self, label: int | None, z0: float, z1: float, cx: Prof, cy: Prof, a: Prof,
             b_ant: Prof, b_post: Prof | None = None, only: tuple[int, ...] | None = None,
             cond: Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray] | None = None
             ) -> Region | None:
        """Elliptic cylinder along z: per slice centre (cx, cy), half-width a, half-depths
        b_ant (y > cy) and b_post (y < cy). Paints ``label`` (unless None) where inside."""
        zsl = index_range(self.zs, z0, z1)
        if zsl.stop <= zsl.start:
            return None
        z = self.zs[zsl]
        cxv, cyv, av = profile(cx, z), profile(cy, z), np.maximum(profile(a, z), 1e-3)
        bav = np.maximum(profile(b_ant, z), 1e-3)
        bpv = bav if b_post is None else np.maximum(profile(b_post, z), 1e-3)
        valid = (profile(a, z) > 0.5) & (bav > 0.5)
        if not valid.any():
            return None
        xsl = index_range(self.xs, float((cxv - av)[valid].min()), float((cxv + av)[valid].max()))
        ysl = index_range(self.ys, float((cyv - bpv)[valid].min()), float((cyv + bav)[valid].max()))
        if xsl.stop <= xsl.start or ysl.stop <= ysl.start:
            return None
        X = self.xs[xsl][None, None, :]
        Y = self.ys[ysl][None, :, None]
        u = (X - cxv[:, None, None]) / av[:, None, None]
        dy = Y - cyv[:, None, None]
        v = dy / np.where(dy >= 0, bav[:, None, None], bpv[:, None, None])
        mask = (u * u + v * v <= 1.0) & valid[:, None, None]
        sl = (zsl, ysl, xsl)
        if cond is not None:
            mask &= cond(z[:, None, None], Y, X)
        if only is not None:
            mask &= np.isin(self.labels[sl], only)
        if label is not None:
            self.labels[sl][mask] = label
        return sl, mask

    def ellipsoid(self, label: int | None, center, radii, rot: np.ndarray | None = None,
                  only: tuple[int, ...] | None = None,
                  cond: Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray] | None = None
                  ) -> Region | None:
        c = np.asarray(center, dtype=np.float32)
        r = np.asarray(radii, dtype=np.float32)
        ext = np.full(3, r.max()) if rot is not None else r
        xsl = index_range(self.xs, c[0] - ext[0], c[0] + ext[0])
        ysl = index_range(self.ys, c[1] - ext[1], c[1] + ext[1])
        zsl = index_range(self.zs, c[2] - ext[2], c[2] + ext[2])
        if min(s.stop - s.start for s in (xsl, ysl, zsl)) <= 0:
            return None
        X = self.xs[xsl][None, None, :] - c[0]
        Y = self.ys[ysl][None, :, None] - c[1]
        Z = self.zs[zsl][:, None, None] - c[2]
        if rot is None:
            q = (X / r[0]) ** 2 + (Y / r[1]) ** 2 + (Z / r[2]) ** 2
        else:
            R = np.asarray(rot, dtype=np.float32)  # columns = local axes in world
            q = 0.0
            for k in range(3):
                proj = X * R[0, k] + Y * R[1, k] + Z * R[2, k]
                q = q + (proj / r[k]) ** 2
        mask = q <= 1.0
        sl = (zsl, ysl, xsl)
        if cond is not None:
            mask &= cond(self.zs[zsl][:, None, None], self.ys[ysl][None, :, None],
                         self.xs[xsl][None, None, :])
        if only is not None:
            mask &= np.isin(self.labels[sl], only)
        if label is not None:
            self.labels[sl][mask] = label
        return sl, mask

    def tube(self, label: int | None, pts: np.ndarray, radii: np.ndarray,
             only: tuple[int, ...] | None = None) -> Region | None:
        """Tube of varying radius around a densely sampled curve ``pts`` (N, 3) xyz mm."""
        pts = np.asarray(pts, dtype=np.float64)
        radii = np.asarray(radii, dtype=np.float64) * np.ones(len(pts))
        rmax = float(radii.max())
        lo, hi = pts.min(0) - rmax, pts.max(0) + rmax
        xsl = index_range(self.xs, lo[0], hi[0])
        ysl = index_range(self.ys, lo[1], hi[1])
        zsl = index_range(self.zs, lo[2], hi[2])
        if min(s.stop - s.start for s in (xsl, ysl, zsl)) <= 0:
            return None
        Z, Y, X = np.meshgrid(self.zs[zsl], self.ys[ysl], self.xs[xsl], indexing="ij")
        q = np.stack([X.ravel(), Y.ravel(), Z.ravel()], 1)
        dist, idx = cKDTree(pts).query(q, distance_upper_bound=rmax + 1e-3)
        ok = np.isfinite(dist)
        inside = np.zeros(len(q), bool)
        inside[ok] = dist[ok] <= radii[idx[ok]]
        mask = inside.reshape(Z.shape)
        sl = (zsl, ysl, xsl)
        if only is not None:
            mask &= np.isin(self.labels[sl], only)
        if label is not None:
            self.labels[sl][mask] = label
        return sl, mask


def interp_profile(t_knots, values):
    tk = np.asarray(t_knots, dtype=np.float64)
    vk = np.asarray(values, dtype=np.float64)
    return lambda t: np.interp(t, tk, vk)


def resample_curve(pts: np.ndarray, step: float) -> np.ndarray:
    seg = np.linalg.norm(np.diff(pts, axis=0), axis=1)
    s = np.concatenate([[0], np.cumsum(seg)])
    n = max(2, int(math.ceil(s[-1] / step)) + 1)
    si = np.linspace(0, s[-1], n)
    return np.stack([np.interp(si, s, pts[:, k]) for k in range(3)], 1)


def bezier(p0, p1, p2, p3, n=200) -> np.ndarray:
    t = np.linspace(0, 1, n)[:, None]
    p0, p1, p2, p3 = (np.asarray(p, float) for p in (p0, p1, p2, p3))
    return ((1 - t) ** 3) * p0 + 3 * ((1 - t) ** 2) * t * p1 + 3 * (1 - t) * t ** 2 * p2 + t ** 3 * p3


def rot_from_axis(axis, up=(0.0, 0.0, 1.0)) -> np.ndarray:
    a = np.asarray(axis, float)
    a /= np.linalg.norm(a)
    u = np.asarray(up, float)
    b = np.cross(a, u)
    if np.linalg.norm(b) < 1e-6:
        b = np.cross(a, (1.0, 0, 0))
    b /= np.linalg.norm(b)
    c = np.cross(a, b)
    return np.stack([a, b, c], 1)


def upsample_linear(a: np.ndarray, axis: int, n: int) -> np.ndarray:
    """Linear interpolation of ``a`` along ``axis`` onto ``n`` points spanning the same extent."""
    m = a.shape[axis]
    pos = np.linspace(0.0, m - 1.0, n)
    i0 = np.minimum(pos.astype(np.int64), m - 2)
    w = (pos - i0).astype(np.float32)
    shape = [1] * a.ndim
    shape[axis] = n
    w = w.reshape(shape)
    return np.take(a, i0, axis=axis) * (1 - w) + np.take(a, i0 + 1, axis=axis) * w


def smooth_noise(rng: np.random.Generator, shape: tuple[int, int, int],
                  spacing_zyx: tuple[float, float, float], scale_mm: float) -> np.ndarray:
    """Smooth random field (zero mean, unit SD) with correlation length ~ scale_mm: a coarse
    Gaussian lattice, lightly smoothed, trilinearly upsampled (separably, so it stays cheap on
    the full grid)."""
    coarse = tuple(max(3, int(math.ceil(shape[i] * spacing_zyx[i] / scale_mm)) + 1)
                   for i in range(3))
    f = ndimage.gaussian_filter(rng.standard_normal(coarse).astype(np.float32), 0.6)
    f = (f - f.mean()) / (f.std() or 1.0)
    for ax in range(3):
        f = upsample_linear(f, ax, shape[ax])
    sd = float(f[:: max(1, shape[0] // 32), ::4, ::4].std()) or 1.0
    return f / sd
