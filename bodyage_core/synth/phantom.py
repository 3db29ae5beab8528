"""The analytic neck-to-knee Dixon phantom: one synthetic subject on a chosen grid.

The body is painted into a label map from analytic shapes, in body millimetres (RAS: x to the
subject's Right, y Anterior, z Superior; voxel centres of the grid):

* z-parameterised elliptic cylinders (per-slice centre and semi-axes from profiles along the
  body): trunk, legs, arms, skin / subcutaneous fat / lean layers, cavities, lungs, back muscles,
  the vertebral column following a spine curve (lordosis, kyphosis), psoas;
* ellipsoids: heart, pericardial fat, liver, kidneys, thyroid, knee condyles;
* tubes along sampled 3D curves: aorta (root, arch, descending), trachea, femur.

The water and fat images are the organs' Dixon signals (``anatomy.TISSUE_SIGNAL``) modulated per
subject (muscle and marrow fat fractions, disc hydration, textures), with sub-voxel partial volume
of discs and the knee joint space computed analytically (so a 1 mm disc height change shows at
6 mm slices), a slight blur (point-spread), a smooth multiplicative bias field with per-station
gain steps, and Rician noise.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy import ndimage, special
from scipy.spatial import cKDTree

from bodyage_core.errors import ConfigError
from bodyage_core.synth.anatomy import INTENSITY_SCALE, LABEL_IDS, TISSUE_SIGNAL
from bodyage_core.synth.effects import EFFECTS
from bodyage_core.synth.params import SITES, SubjectParams, noise_rng
from bodyage_core.volume import Volume

#: UK Biobank neck-to-knee field of view (x, y, z) mm: 224 x 174 x 370 at 2.232 x 2.232 x 3.0.
FOV_MM = (224 * 2.232, 174 * 2.232, 370 * 3.0)
GRIDS = {
    "default": ((4.464, 4.464, 6.0), (185, 87, 112)),
    "full": ((2.232, 2.232, 3.0), (370, 174, 224)),
}

L = LABEL_IDS


@dataclass(frozen=True)
class SynthGrid:
    """A voxel grid over the neck-to-knee field of view.

    ``spacing`` is ``(x, y, z)`` mm; ``shape`` is numpy order ``(Z, Y, X)``. The affine maps voxel
    ``(x, y, z)`` to RAS mm with the field of view centred on the origin.
    """

    spacing: tuple[float, float, float]
    shape: tuple[int, int, int]

    @classmethod
    def resolve(cls, grid: SynthGrid | str | float | tuple | list | None = "default") -> SynthGrid:
        """``'default'`` (4.464 x 4.464 x 6 mm, 112 x 87 x 185), ``'full'`` (UK Biobank,
        2.232 x 2.232 x 3 mm, 224 x 174 x 370), a spacing ``(sx, sy, sz)`` or one number (mm)
        covering the same field of view, or a SynthGrid."""
        if grid is None:
            grid = "default"
        if isinstance(grid, SynthGrid):
            return grid
        if isinstance(grid, str):
            if grid in GRIDS:
                sp, sh = GRIDS[grid]
                return cls(sp, sh)
            try:
                parts = [float(v) for v in grid.replace("x", ",").split(",") if v.strip()]
            except ValueError:
                raise ConfigError(f"unknown grid {grid!r}",
                                  hint="use default, full or a spacing like 6,6,8") from None
            grid = parts
        if isinstance(grid, (int, float)):
            grid = (float(grid),) * 3
        sp = tuple(float(v) for v in grid)
        if len(sp) == 1:
            sp = sp * 3
        if len(sp) != 3 or min(sp) <= 0:
            raise ConfigError(f"grid spacing must be three positive numbers, got {grid!r}")
        shape = tuple(max(8, int(round(FOV_MM[i] / sp[i]))) for i in (2, 1, 0))
        return cls(sp, shape)  # type: ignore[arg-type]

    @property
    def affine(self) -> np.ndarray:
        sx, sy, sz = self.spacing
        nz, ny, nx = self.shape
        aff = np.diag([sx, sy, sz, 1.0])
        aff[:3, 3] = [-(nx - 1) / 2 * sx, -(ny - 1) / 2 * sy, -(nz - 1) / 2 * sz]
        return aff

    def axes(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """World coordinates (mm) of voxel centres along x, y, z."""
        aff = self.affine
        nz, ny, nx = self.shape
        xs = (aff[0, 3] + aff[0, 0] * np.arange(nx)).astype(np.float32)
        ys = (aff[1, 3] + aff[1, 1] * np.arange(ny)).astype(np.float32)
        zs = (aff[2, 3] + aff[2, 2] * np.arange(nz)).astype(np.float32)
        return xs, ys, zs

    def to_dict(self) -> dict[str, Any]:
        return {"spacing_xyz": list(self.spacing), "shape_zyx": list(self.shape)}


@dataclass
class SyntheticSubject:
    """One generated subject: images, organ labels, age-effect mask and the ground truth."""

    params: SubjectParams
    water: Volume
    fat: Volume
    labels: Volume      # uint8 organ ids (anatomy.LABELS)
    age_mask: Volume    # uint8 effect ids (effects.EFFECTS), 0 = no age effect
    truth: dict[str, Any] = field(default_factory=dict)

    @property
    def subject_id(self) -> str:
        return self.params.subject_id


# ------------------------------------------------------------------------------------------
# Painting helpers
# ------------------------------------------------------------------------------------------
Prof = Callable[[np.ndarray], np.ndarray] | float


def _ev(f: Prof, z: np.ndarray) -> np.ndarray:
    if callable(f):
        return np.asarray(f(z), dtype=np.float32) * np.ones_like(z)
    return np.full(z.shape, float(f), dtype=np.float32)


def _index_range(coords: np.ndarray, lo: float, hi: float) -> slice:
    i0 = int(np.searchsorted(coords, lo, side="left"))
    i1 = int(np.searchsorted(coords, hi, side="right"))
    return slice(max(0, i0), min(len(coords), i1))


Region = tuple[tuple[slice, slice, slice], np.ndarray]


class _Canvas:
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
        zsl = _index_range(self.zs, z0, z1)
        if zsl.stop <= zsl.start:
            return None
        z = self.zs[zsl]
        cxv, cyv, av = _ev(cx, z), _ev(cy, z), np.maximum(_ev(a, z), 1e-3)
        bav = np.maximum(_ev(b_ant, z), 1e-3)
        bpv = bav if b_post is None else np.maximum(_ev(b_post, z), 1e-3)
        valid = (_ev(a, z) > 0.5) & (bav > 0.5)
        if not valid.any():
            return None
        xsl = _index_range(self.xs, float((cxv - av)[valid].min()), float((cxv + av)[valid].max()))
        ysl = _index_range(self.ys, float((cyv - bpv)[valid].min()), float((cyv + bav)[valid].max()))
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
        xsl = _index_range(self.xs, c[0] - ext[0], c[0] + ext[0])
        ysl = _index_range(self.ys, c[1] - ext[1], c[1] + ext[1])
        zsl = _index_range(self.zs, c[2] - ext[2], c[2] + ext[2])
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
        xsl = _index_range(self.xs, lo[0], hi[0])
        ysl = _index_range(self.ys, lo[1], hi[1])
        zsl = _index_range(self.zs, lo[2], hi[2])
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


def _interp(t_knots, values):
    tk = np.asarray(t_knots, dtype=np.float64)
    vk = np.asarray(values, dtype=np.float64)
    return lambda t: np.interp(t, tk, vk)


def _resample_curve(pts: np.ndarray, step: float) -> np.ndarray:
    seg = np.linalg.norm(np.diff(pts, axis=0), axis=1)
    s = np.concatenate([[0], np.cumsum(seg)])
    n = max(2, int(math.ceil(s[-1] / step)) + 1)
    si = np.linspace(0, s[-1], n)
    return np.stack([np.interp(si, s, pts[:, k]) for k in range(3)], 1)


def _bezier(p0, p1, p2, p3, n=200) -> np.ndarray:
    t = np.linspace(0, 1, n)[:, None]
    p0, p1, p2, p3 = (np.asarray(p, float) for p in (p0, p1, p2, p3))
    return ((1 - t) ** 3) * p0 + 3 * ((1 - t) ** 2) * t * p1 + 3 * (1 - t) * t ** 2 * p2 + t ** 3 * p3


def _rot_from_axis(axis, up=(0.0, 0.0, 1.0)) -> np.ndarray:
    a = np.asarray(axis, float)
    a /= np.linalg.norm(a)
    u = np.asarray(up, float)
    b = np.cross(a, u)
    if np.linalg.norm(b) < 1e-6:
        b = np.cross(a, (1.0, 0, 0))
    b /= np.linalg.norm(b)
    c = np.cross(a, b)
    return np.stack([a, b, c], 1)


def _upsample_linear(a: np.ndarray, axis: int, n: int) -> np.ndarray:
    """Linear interpolation of ``a`` along ``axis`` onto ``n`` points spanning the same extent."""
    m = a.shape[axis]
    pos = np.linspace(0.0, m - 1.0, n)
    i0 = np.minimum(pos.astype(np.int64), m - 2)
    w = (pos - i0).astype(np.float32)
    shape = [1] * a.ndim
    shape[axis] = n
    w = w.reshape(shape)
    return np.take(a, i0, axis=axis) * (1 - w) + np.take(a, i0 + 1, axis=axis) * w


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, int, int],
                  spacing_zyx: tuple[float, float, float], scale_mm: float) -> np.ndarray:
    """Smooth random field (zero mean, unit SD) with correlation length ~ scale_mm: a coarse
    Gaussian lattice, lightly smoothed, trilinearly upsampled (separably, so it stays cheap on
    the full grid)."""
    coarse = tuple(max(3, int(math.ceil(shape[i] * spacing_zyx[i] / scale_mm)) + 1)
                   for i in range(3))
    f = ndimage.gaussian_filter(rng.standard_normal(coarse).astype(np.float32), 0.6)
    f = (f - f.mean()) / (f.std() or 1.0)
    for ax in range(3):
        f = _upsample_linear(f, ax, shape[ax])
    sd = float(f[:: max(1, shape[0] // 32), ::4, ::4].std()) or 1.0
    return f / sd


# ------------------------------------------------------------------------------------------
# The body
# ------------------------------------------------------------------------------------------
class _Spine:
    """Sagittal spine curve from L5/S1 upward: lordosis, kyphosis, cervical lordosis; the disc
    and vertebra intervals along the arc length ``s``."""

    def __init__(self, z_s1: float, y_s1: float, hs: float, dhf: float, levels: list[float],
                 lordosis: float, kyphosis: float):
        heights = []  # (disc_h, vert_h, region)
        for i in range(5):  # L5..L1
            heights.append((9.5 * dhf * levels[i], 25.0, 0))
        for i in range(12):  # T12..T1
            heights.append((4.8 * dhf * levels[5 + i], 22.0 - 6.0 * i / 11.0, 1))
        for i in range(6):  # C7..C2
            heights.append((4.5 * dhf * levels[17 + i], 12.5, 2))
        knots_s = [0.0]
        knots_d = [0.0]
        s = 0.0
        d = 0.0
        self.region_s = [0.0]
        last_region = 0
        for dh, vh, reg in heights:
            dh *= hs
            vh *= hs
            if reg != last_region:
                self.region_s.append(s)
                last_region = reg
            s += dh
            d += dh
            knots_s.append(s)
            knots_d.append(d)
            s += vh
            knots_s.append(s)
            knots_d.append(d)
        self.region_s.append(s)
        self.length = s
        self.knots_s = np.asarray(knots_s)
        self.knots_d = np.asarray(knots_d)
        s_l, s_t = self.region_s[1], self.region_s[2]
        # tangent angle from vertical (degrees, + = heading anterior when going up)
        phi_s = [0.0, s_l, s_l + 1e-3, s_t, s_t + 1e-3, s]
        phi_v = [lordosis / 2, -lordosis / 2, -kyphosis / 2, kyphosis / 2, kyphosis / 2, -12.0]
        ss = np.arange(0.0, s + 1.0, 1.0)
        phi = np.radians(np.interp(ss, phi_s, phi_v))
        zc = z_s1 + np.concatenate([[0], np.cumsum(np.cos(phi[:-1]))])
        yc = y_s1 + np.concatenate([[0], np.cumsum(np.sin(phi[:-1]))])
        self.ss, self.zc, self.yc, self.phi = ss, zc, yc, phi
        self.z_top = float(zc[-1])
        self.z_s1 = z_s1
        self.y_s1 = y_s1
        # vertebral body semi-axes (x, y), canal radius, back-muscle semi-axes per region
        rs = [0.0, s_l, s_t, s]
        self._av = _interp(rs, [24 * hs, 19 * hs, 14 * hs, 11 * hs])
        self._bv = _interp(rs, [17 * hs, 15 * hs, 13 * hs, 8 * hs])

    def z_of_s(self, s):
        return np.interp(s, self.ss, self.zc)

    def s_of_z(self, z):
        return np.interp(z, self.zc, self.ss)

    def y(self, z):
        return np.interp(z, self.zc, self.yc, left=self.yc[0], right=self.yc[-1])

    def phi_z(self, z):
        return np.interp(z, self.zc, self.phi)

    def av(self, z):
        return self._av(self.s_of_z(z))

    def bv(self, z):
        return self._bv(self.s_of_z(z))

    def disc_cum(self, s):
        return np.interp(s, self.knots_s, self.knots_d)

    def level_z(self, level: str) -> float:
        """z of the centre of a vertebra, e.g. 'L1', 'T7', 'L4'."""
        region, num = level[0], int(level[1:])
        idx = {"L": 5 - num, "T": 5 + 12 - num, "C": 5 + 12 + 7 - num}[region]
        s0, s1 = self.knots_s[2 * idx + 1], self.knots_s[2 * idx + 2]
        return float(self.z_of_s(0.5 * (s0 + s1)))


def _signal(name: str, jitter: float) -> tuple[float, float]:
    w, f = TISSUE_SIGNAL[name]
    return w * (1 + jitter), f * (1 + jitter)


def generate_subject(params: SubjectParams, grid: SynthGrid | str | tuple | None = "default"
                     ) -> SyntheticSubject:
    """Generate one synthetic subject on ``grid``.

    Parameters
    ----------
    params
        From :func:`bodyage_core.synth.params.sample_subject` (age, sex, BMI, anatomy, effect
        baselines and strengths).
    grid
        ``'default'``, ``'full'``, a spacing ``(sx, sy, sz)`` mm or a :class:`SynthGrid`.

    Returns
    -------
    SyntheticSubject
        ``water`` and ``fat`` Volumes (``(1, Z, Y, X)`` float32, RAS affine), ``labels`` (uint8
        organ ids), ``age_mask`` (uint8 effect ids) and ``truth`` (the effect parameters).
    """
    g = SynthGrid.resolve(grid)
    p = params
    an = p.anatomy
    ev = p.effect_values
    rng = noise_rng(p)
    cv = _Canvas(g)
    xs, ys, zs = cv.xs, cv.ys, cv.zs
    male = p.sex == "M"
    hs = p.stature
    wf = an["width"] * hs ** 0.5
    df = an["depth"] * hs ** 0.5
    bmi = p.bmi
    lean = an["muscle"] * (1 + 0.008 * (bmi - 25))
    fat_f = an["fat"] * max(0.25, (bmi - 15) / 10) ** 1.3
    vis_f = an["visceral"] * max(0.2, (bmi - 17) / 8) ** 1.2 * (1.3 if male else 0.75)

    z_top = float(zs[-1]) + g.spacing[2] / 2
    Lk = 990.0 * hs                           # knee joint to chin
    z_chin = z_top - an["top_mm"]
    z_knee = z_chin - Lk

    def T(z):
        return (np.asarray(z, np.float64) - z_knee) / Lk

    def zt(t):
        return z_knee + t * Lk

    # -- spine ------------------------------------------------------------------------------
    sp_e = ev["spine"]
    sp_b = p.baselines["spine"]
    # The actual (aged) spine moves only the vertebral column; every other organ is placed
    # relative to the unaged spine, so the spine effect stays inside the spine's mask.
    spine_args = dict(z_s1=zt(0.475), y_s1=an["sacrum_y_mm"] * df, hs=hs,
                      levels=[an[f"disc_{i}"] for i in range(23)], lordosis=an["lordosis_deg"])
    spine_aged = _Spine(dhf=sp_e["disc_height_factor"], kyphosis=sp_e["kyphosis_deg"],
                        **spine_args)
    spine = _Spine(dhf=sp_b["disc_height_factor"], kyphosis=sp_b["kyphosis_deg"], **spine_args)
    bm_e = ev["back_muscle"]
    bm_base = p.baselines["back_muscle"]["csa_factor"]
    sexm = 1.0 if male else 0.85
    bm_a_base = _interp([0.0, spine.region_s[1], spine.region_s[2], spine.length],
                        [30 * sexm * hs, 24 * sexm * hs, 17 * sexm * hs, 14 * sexm * hs])
    bm_b_base = _interp([0.0, spine.region_s[1], spine.region_s[2], spine.length],
                        [27 * sexm * hs, 21 * sexm * hs, 15 * sexm * hs, 13 * sexm * hs])

    def bm_a(z, f=1.0):
        return bm_a_base(spine.s_of_z(z)) * math.sqrt(f * lean)

    def bm_b(z, f=1.0):
        return bm_b_base(spine.s_of_z(z)) * math.sqrt(f * lean)

    def y_spine(z):
        return spine.y(z)

    # Posterior lean depth follows the spine (+ muscles at their unaged size) in the trunk.
    def spine_post(z):
        return -y_spine(z) + spine.bv(z) + 8 + 2 * bm_b(z, bm_base) + 4

    # -- trunk profiles (t from knee=0 to chin=1) ------------------------------------------------
    tk = [0.29, 0.34, 0.40, 0.47, 0.55, 0.62, 0.70, 0.80, 0.88, 0.915, 0.94, 0.958, 0.975, 1.2]
    if male:
        a_l = [60, 138, 150, 146, 134, 134, 146, 152, 158, 160, 150, 62, 55, 55]
        b_a = [30, 72, 85, 85, 88, 92, 98, 108, 95, 80, 65, 45, 40, 40]
        post = [30, 85, 112, 100, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]
        fat_k = [14, 14, 16, 18, 22, 20, 14, 11, 10, 9, 8, 6, 6, 6]
    else:
        a_l = [60, 146, 158, 154, 124, 120, 130, 136, 142, 142, 132, 54, 48, 48]
        b_a = [30, 75, 88, 84, 80, 84, 92, 100, 90, 75, 60, 40, 36, 36]
        post = [30, 90, 115, 102, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]
        fat_k = [26, 26, 28, 26, 24, 21, 17, 15, 13, 11, 10, 7, 7, 7]
    a_lean_t = _interp(tk, np.asarray(a_l) * wf * math.sqrt(lean))
    b_ant_t = _interp(tk, np.asarray(b_a) * df * math.sqrt(lean))
    post_t = _interp(tk, np.asarray(post) * df * math.sqrt(lean))
    fat_t = _interp(tk, np.asarray(fat_k) * fat_f)
    belly = max(0.0, bmi - 24) * 3.0 * (1.3 if male else 0.7) * an["visceral"] ** 0.5
    belly_t = _interp([0.42, 0.5, 0.58, 0.66, 0.72], [0, belly * 0.6, belly, belly * 0.7, 0])
    spine_lo = zt(0.40)
    spine_hi = spine.z_top

    def a_lean(z):
        return a_lean_t(T(z))

    def b_ant_lean(z):
        return b_ant_t(T(z)) + belly_t(T(z))

    def b_post_lean(z):
        z = np.asarray(z, np.float64)
        sp = np.where((z > spine_lo) & (z < spine_hi), spine_post(np.clip(z, spine_lo, spine_hi)), 0)
        return np.maximum(post_t(T(z)), sp)

    def fat(z):
        return fat_t(T(z))

    skin = max(2.5, 0.6 * min(g.spacing))

    # -- legs -------------------------------------------------------------------------------
    lk = [-0.40, -0.15, -0.05, 0.0, 0.05, 0.12, 0.22, 0.30, 0.36, 0.40]
    r_leg = np.array([32, 44, 40, 42, 44, 50, 56, 62, 66, 66]) * (1.0 if male else 0.93)
    r_leg = r_leg * hs ** 0.5 * math.sqrt(lean) * an["width"]
    fat_leg = np.array([5, 7, 8, 8, 10, 12, 13, 14, 14, 14]) * (1.0 if male else 1.8) * fat_f
    r_leg_t = _interp(lk, r_leg)
    fat_leg_t = _interp(lk, fat_leg)
    knee_gap = 4.0
    xk = float(r_leg_t(0.0) + fat_leg_t(0.0) + skin + knee_gap)
    x_thigh = max(xk + 20, 0.5 * float(a_lean_t(0.36)))
    xleg_t = _interp([-0.4, 0.0, 0.36, 0.40], [xk - 5, xk, x_thigh, x_thigh])
    yleg_t = _interp([-0.4, 0.0, 0.36, 0.40], [-15, 0, -8, -8])
    thigh = ev["thigh_muscle"]
    th_base = p.baselines["thigh_muscle"]["csa_factor"]
    z_leg0, z_leg1 = float(zs[0]) - 10, zt(0.40)
    z_thigh_top = zt(0.42)
    taper = _interp([0.33, 0.42], [1.0, 0.3])

    def r_thigh(z, f):
        """Thigh-muscle radius (tapering into the gluteal region above the crotch)."""
        t = T(z)
        return r_leg_t(t) * math.sqrt(f) * taper(t)

    for sgn in (+1.0, -1.0):
        def cx(z, s=sgn):
            return s * xleg_t(T(z))

        def cy(z):
            return yleg_t(T(z))

        def rl(z, f=1.0):
            t = T(z)
            return r_leg_t(t) * np.sqrt(np.where(t > 0.06, f, 1.0))

        def rout(z):
            return rl(z, th_base) + fat_leg_t(T(z)) + skin

        cv.zcyl(L["skin"], z_leg0, z_leg1, cx, cy, rout, rout)
        cv.zcyl(L["subcutaneous_fat"], z_leg0, z_leg1, cx, cy,
                lambda z: rout(z) - skin, lambda z: rout(z) - skin)
        cv.zcyl(L["other_muscle"], z_leg0, z_leg1, cx, cy, rl, rl)
        cv.zcyl(L["thigh_muscles"], zt(0.06), zt(0.33), cx, cy,
                lambda z: rl(z, thigh["csa_factor"]), lambda z: rl(z, thigh["csa_factor"]))

    # -- trunk ------------------------------------------------------------------------------
    z_tr0, z_tr1 = zt(0.29), z_top + 10

    bg, sk, sf = L["background"], L["skin"], L["subcutaneous_fat"]
    cv.zcyl(sk, z_tr0, z_tr1, 0.0, 0.0,
            lambda z: a_lean(z) + fat(z) + skin, lambda z: b_ant_lean(z) + fat(z) + skin,
            lambda z: b_post_lean(z) + fat(z) + skin, only=(bg,))
    cv.zcyl(sf, z_tr0, z_tr1, 0.0, 0.0,
            lambda z: a_lean(z) + fat(z), lambda z: b_ant_lean(z) + fat(z),
            lambda z: b_post_lean(z) + fat(z), only=(bg, sk))
    cv.zcyl(L["other_muscle"], z_tr0, z_tr1, 0.0, 0.0, a_lean, b_ant_lean, b_post_lean,
            only=(bg, sk, sf))
    # upper thighs inside the pelvis outline
    for sgn in (+1.0, -1.0):
        cv.zcyl(L["thigh_muscles"], zt(0.33) - 1, z_thigh_top, lambda z, s=sgn: s * xleg_t(T(z)),
                lambda z: yleg_t(T(z)),
                lambda z: r_thigh(z, thigh["csa_factor"]), lambda z: r_thigh(z, thigh["csa_factor"]),
                only=(L["other_muscle"],))

    # -- arms (alongside the trunk) ----------------------------------------------------------
    ak = [0.28, 0.36, 0.45, 0.62, 0.75, 0.88, 0.94, 0.96]
    r_arm = np.array([22, 26, 30, 32, 38, 42, 40, 0]) * (1.0 if male else 0.88) * hs ** 0.5
    r_arm *= math.sqrt(lean)
    fat_arm_t = _interp(ak, np.array([4, 6, 8, 9, 10, 10, 9, 0]) * (1.0 if male else 1.6) * fat_f)
    r_arm_t = _interp(ak, r_arm)

    def arm_r(z):
        return r_arm_t(T(z)) + fat_arm_t(T(z)) + skin

    def trunk_out(z):
        t = T(z)
        tt = np.minimum(t, 0.935)
        zz = zt(tt)
        return np.where(t < 0.36, xleg_t(np.minimum(t, 0.4)) + r_leg_t(np.minimum(t, 0.4))
                        + fat_leg_t(np.minimum(t, 0.4)), a_lean(zz) + fat(zz))

    for sgn in (+1.0, -1.0):
        def acx(z, s=sgn):
            return s * (trunk_out(z) + skin + an["arms_mm"] + arm_r(z))

        def acy(z):
            return _interp([0.28, 0.62, 0.94], [25, -5, -15])(T(z))

        bg = (L["background"],)
        cv.zcyl(L["skin"], zt(0.28), zt(0.955), acx, acy, arm_r, arm_r, only=bg)
        cv.zcyl(L["subcutaneous_fat"], zt(0.28), zt(0.955), acx, acy,
                lambda z: arm_r(z) - skin, lambda z: arm_r(z) - skin, only=(L["skin"],))
        cv.zcyl(L["other_muscle"], zt(0.28), zt(0.955), acx, acy,
                lambda z: r_arm_t(T(z)), lambda z: r_arm_t(T(z)), only=(L["subcutaneous_fat"],))
        cv.zcyl(L["other_bone"], zt(0.36), zt(0.93), acx, acy, 9.0, 9.0,
                only=(L["other_muscle"],))

    # -- body cavities ----------------------------------------------------------------------
    wall_lat = 16.0 * math.sqrt(lean)
    z_cav0, z_apex = zt(0.40), zt(0.955)
    cav_k = [0.40, 0.45, 0.70, 0.80, 0.90, 0.935, 0.955]
    cav_a_f = _interp(cav_k, [0.55, 0.85, 0.88, 0.85, 0.75, 0.45, 0.25])

    def cav_a(z):
        return np.maximum(0, a_lean(z) * cav_a_f(T(z)) - wall_lat * 0.3)

    def cav_b_ant(z):
        return np.maximum(0, b_ant_lean(z) - 18)

    def cav_b_post(z):
        t = T(z)
        thor = -y_spine(z) + spine.bv(z) * np.where(t > 0.7, 1.0, 0.3)
        return np.maximum(5, thor)

    cv.zcyl(L["soft_tissue"], z_cav0, z_apex, 0.0, 0.0, cav_a, cav_b_ant, cav_b_post,
            only=(L["other_muscle"], L["thigh_muscles"]))
    # diaphragm domes
    z_dome_r = zt(0.745) + 8 * (an["lung"] - 1) * 100 / 4
    z_dome_l = z_dome_r - 15
    a_mid = float(cav_a(zt(0.72)))

    def z_dia(z, y, x):
        top = np.where(x > 0, z_dome_r, z_dome_l)
        lat = np.clip((np.abs(x) - 45) / max(a_mid, 1), 0, None)
        bpost = np.clip(-(y - 0) / 120.0, 0, None)
        return top - 60 * lat ** 2 - 55 * bpost ** 2

    # lungs: thoracic cavity minus mediastinum, above the diaphragm
    med_t = _interp([0.70, 0.86, 0.92, 0.955], [24, 20, 16, 10])
    lung_lab = {+1.0: L["lung_right"], -1.0: L["lung_left"]}
    for sgn in (+1.0, -1.0):
        def lcond(z, y, x, s=sgn):
            return (s * x > med_t(T(z))) & (z > z_dia(z, y, x))

        cv.zcyl(lung_lab[sgn], zt(0.62), z_apex, 0.0, 0.0, cav_a, cav_b_ant, cav_b_post,
                only=(L["soft_tissue"],), cond=lcond)

    # visceral fat marbling in the abdominal cavity (below the diaphragm)
    tex_v = _smooth_noise(rng, g.shape, (g.spacing[2], g.spacing[1], g.spacing[0]), 22.0)
    # a fixed threshold of the (unit-variance) texture: the fat share does not depend on which
    # voxels other organs took, so ageing elsewhere never moves the visceral fat
    frac = float(np.clip(0.2 * vis_f, 0.05, 0.7))
    thr = float(special.ndtri(1 - frac))
    abd = (cv.labels == L["soft_tissue"]) & (zs[:, None, None] < zt(0.74))
    if abd.any():
        vf = abd & (tex_v >= thr)
        cv.labels[vf] = L["visceral_fat"]

    # -- abdominal organs ---------------------------------------------------------------------
    inside_abd = (L["soft_tissue"], L["visceral_fat"])
    lv = an["liver"] * hs * (1.0 if male else 0.92)
    z_liver = z_dome_r - 62 * lv

    def below_dia(z, y, x):
        return z < z_dia(z, y, x) - 4

    cv.ellipsoid(L["liver"], (62 * wf, 8, z_liver), (95 * lv, 80 * lv, 72 * lv),
                 only=inside_abd + (L["lung_right"],), cond=below_dia)
    cv.ellipsoid(L["liver"], (-15 * wf, 45, z_liver + 18), (55 * lv, 35 * lv, 35 * lv),
                 only=inside_abd + (L["lung_left"],), cond=below_dia)
    z_l1 = spine.level_z("L1")
    for sgn, lab in ((+1.0, L["kidney_right"]), (-1.0, L["kidney_left"])):
        zc = z_l1 - (12 if sgn > 0 else -5) + an["kidney_shift_mm"]
        kc = (sgn * (58 * wf), float(y_spine(zc)) + 2, zc)
        rot = _rot_from_axis((sgn * -0.25, 0.1, 1.0))
        cv.ellipsoid(L["visceral_fat"], kc, (62 * hs, 38, 34), rot=rot,
                     only=inside_abd + (L["other_muscle"],))
        cv.ellipsoid(lab, kc, (52 * hs, 27, 24), rot=rot, only=inside_abd + (L["other_muscle"],))

    # psoas muscles along the lumbar spine
    z_t12, z_hip = spine.level_z("T12"), zt(0.41)
    for sgn in (+1.0, -1.0):
        def pcx(z, s=sgn):
            return s * (spine.av(np.clip(z, spine.z_s1, None)) + _interp([0, 1], [8, 30])(
                (z_t12 - z) / (z_t12 - z_hip)))

        def pr(z):
            return _interp([0, 0.5, 1], [7, 22, 24])((z_t12 - z) / (z_t12 - z_hip)) * math.sqrt(lean)

        cv.zcyl(L["other_muscle"], z_hip, z_t12, pcx,
                lambda z: y_spine(np.clip(z, spine.z_s1, None)) + 5, pr, pr,
                only=inside_abd + (L["other_muscle"],))

    # -- thorax: heart, aorta, airway, thyroid ---------------------------------------------------
    hf = an["heart"] * hs * (1.0 if male else 0.9)
    he = ev["heart"]
    y_mid_th = float(b_ant_lean(zt(0.78))) * 0.25
    heart_c = np.array([-22.0 * wf, y_mid_th + 10, z_dome_r + 22 * hf])
    h_axis = np.array([-0.55, 0.55, -0.45])
    h_rot = _rot_from_axis(h_axis)
    h_rad = np.array([62, 46, 48]) * hf
    pf = he["pericardial_fat_mm"]
    pf_base = p.baselines["heart"]["pericardial_fat_mm"]
    heart_only = (L["soft_tissue"], L["lung_left"], L["lung_right"], L["liver"],
                  L["visceral_fat"])
    cv.ellipsoid(L["pericardial_fat"], heart_c, h_rad + pf, rot=h_rot, only=heart_only)
    cv.ellipsoid(L["heart"], heart_c, h_rad, rot=h_rot,
                 only=heart_only + (L["pericardial_fat"],))
    pool = cv.ellipsoid(None, heart_c, h_rad * 0.62, rot=h_rot)

    ae = ev["aorta"]
    root = heart_c + h_rot[:, 0] * (-0.55 * h_rad[0]) + np.array([10.0, 0.0, 0.0])
    x_desc = -18.0 * wf + an["aorta_x_mm"]
    d_ao0 = p.baselines["aorta"]["diameter_mm"]
    arch_h0 = p.baselines["aorta"]["arch_height_mm"]

    def y_desc(z):
        # the descending aorta lies left-anterior of the spine (placed for the unaged diameter)
        return y_spine(z) + spine.bv(z) + d_ao0 * 0.4 + 3

    def aorta_path(d_ao: float, arch_h: float) -> tuple[np.ndarray, np.ndarray]:
        z_desc_top = root[2] + 0.45 * arch_h0
        p3 = np.array([x_desc, float(y_desc(z_desc_top)), z_desc_top])
        arch = _bezier(root, root + np.array([8, 5, 1.25 * arch_h]),
                       np.array([x_desc, p3[1] + 10, root[2] + 1.25 * arch_h]), p3, 300)
        z_bif = spine.level_z("L4")
        zd = np.arange(z_desc_top, z_bif, -1.5)
        desc = np.stack([np.linspace(x_desc, -5, len(zd)), y_desc(zd), zd], 1)
        pts = np.concatenate([arch, desc[1:]])
        r = np.concatenate([np.linspace(d_ao / 2, 0.85 * d_ao / 2, len(arch)),
                            np.linspace(0.85 * d_ao / 2, 0.65 * d_ao / 2, len(desc) - 1)])
        pts = _resample_curve(pts, 0.4 * min(g.spacing))
        r = np.interp(np.linspace(0, 1, len(pts)), np.linspace(0, 1, len(r)), r)
        return pts, r

    ao_only = heart_only + (L["other_muscle"], L["pericardial_fat"], L["airway"])
    aorta_base_region = cv.tube(None, *aorta_path(d_ao0, arch_h0))
    cv.tube(L["aorta"], *aorta_path(ae["diameter_mm"], ae["arch_height_mm"]), only=ao_only)
    arch_h = arch_h0

    # trachea and main bronchi; thyroid lobes
    z_carina = root[2] + 0.6 * arch_h
    zt_ = np.arange(z_top + 10, z_carina, -1.5)

    def y_tr(z):
        return y_spine(z) + spine.bv(z) + 20

    tr = np.stack([np.zeros_like(zt_) + 2, y_tr(zt_), zt_], 1)
    air_only = (L["soft_tissue"], L["other_muscle"], L["lung_left"], L["lung_right"])
    cv.tube(L["airway"], _resample_curve(tr, 1.0), 8.0 * hs, only=air_only)
    car = tr[-1]
    for sgn in (+1.0, -1.0):
        br = np.stack([np.linspace(car[0], sgn * 45, 30), np.full(30, car[1] - 3),
                       np.linspace(car[2], car[2] - 35, 30)], 1)
        cv.tube(L["airway"], br, 5.5, only=air_only)
    z_thy = zt(0.955)
    for sgn in (+1.0, -1.0):
        cv.ellipsoid(L["thyroid"], (sgn * 17 + 2, float(y_tr(z_thy)) + 3, z_thy), (9, 9, 22),
                     only=(L["other_muscle"], L["soft_tissue"]))

    # -- pelvis and femur -------------------------------------------------------------------------
    bone_only = (L["other_muscle"], L["thigh_muscles"], L["soft_tissue"], L["visceral_fat"],
                 L["subcutaneous_fat"])
    z_s1 = spine.z_s1
    for sgn in (+1.0, -1.0):
        def iwx(z, s=sgn):
            return s * _interp([zt(0.44), zt(0.53)], [0.42, 0.62])(z) * a_lean(z)

        def iwy(z):
            return _interp([zt(0.44), zt(0.53)], [spine.y_s1 + 10, spine.y_s1 + 25])(z)

        cv.zcyl(L["pelvis"], zt(0.44), zt(0.53), iwx, iwy, 9.0, 48.0, only=bone_only)
    femoral = []
    for sgn in (+1.0, -1.0):
        xh = sgn * 0.52 * float(a_lean(z_hip))
        hip = np.array([xh, 5.0, z_hip])
        cv.ellipsoid(L["pelvis"], hip, (32, 32, 32), only=bone_only)
        troch = np.array([sgn * (abs(xh) + 38), -2.0, z_hip - 18])
        kc = np.array([sgn * xk, 0.0, z_knee + 45])
        shaft0 = np.array([sgn * (abs(xh) + 30), 0.0, z_hip - 70])
        femoral.append((hip, troch, shaft0, kc, sgn))
        cv.zcyl(L["pelvis"], z_hip - 35, z_hip - 5, sgn * 28.0, float(b_ant_lean(z_hip)) - 28,
                12.0, 14.0, only=bone_only)
    marrow_regions = []
    for hip, troch, shaft0, kc, _sgn in femoral:
        pts = _resample_curve(np.stack([hip, troch, shaft0, kc]), 1.0)
        rad = np.interp(np.arange(len(pts)), [0, 20, len(pts) - 1], [16, 15, 14])
        cv.ellipsoid(L["femur"], hip, (24, 24, 24), only=bone_only + (L["pelvis"],))
        cv.tube(L["femur"], pts, rad, only=bone_only + (L["pelvis"],))
        marrow_regions.append(cv.ellipsoid(None, hip, (20, 20, 20)))
        marrow_regions.append(cv.tube(None, pts, rad - 4.5))

    # -- knees ------------------------------------------------------------------------------------
    ke = ev["knee"]
    js = ke["joint_space_mm"]
    knee_only = (L["other_muscle"], L["thigh_muscles"], L["subcutaneous_fat"], L["femur"])
    joint_regions = []
    for sgn in (+1.0, -1.0):
        kx, ky = sgn * xk, 0.0
        js0 = p.baselines["knee"]["joint_space_mm"]
        cv.ellipsoid(L["knee"], (kx, ky - 4, z_knee + js0 / 2 + 24), (40, 30, 24), only=knee_only)
        cv.ellipsoid(L["knee"], (kx, ky - 4, z_knee - js0 / 2 - 22), (38, 30, 22), only=knee_only)
        cv.ellipsoid(L["knee"], (kx, ky + 36, z_knee + 28), (19, 9, 20), only=knee_only)
        jr = cv.zcyl(L["knee"], z_knee - 12, z_knee + 12, kx, ky - 4, 38.0, 28.0,
                     only=knee_only + (L["knee"],))
        joint_regions.append(jr)
        tib = np.stack([np.full(20, kx), np.full(20, ky - 2),
                        np.linspace(z_knee - 40, float(zs[0]) - 20, 20)], 1)
        cv.tube(L["other_bone"], _resample_curve(tib, 1.0), 14.0,
                only=(L["other_muscle"], L["subcutaneous_fat"]))

    # -- spine, back muscles ----------------------------------------------------------------------
    z_sp1 = spine.z_top
    in_trunk = (L["other_muscle"], L["soft_tissue"], L["visceral_fat"], L["subcutaneous_fat"],
                L["lung_left"], L["lung_right"], L["kidney_left"], L["kidney_right"],
                L["thigh_muscles"], L["pelvis"], L["aorta"], L["liver"], L["airway"])
    bm_regions = []

    def zb(z):
        return np.clip(z, spine.z_s1, None)

    def mcy(z, f):
        return y_spine(z) - spine.bv(z) - 5 - bm_b(z, f)

    z_bm0 = spine.z_s1 - 50
    f_act = bm_e["csa_factor"]
    for sgn in (+1.0, -1.0):
        def mcx(z, f, s=sgn):
            return s * (6 + bm_a(z, f))

        for lab, f in ((L["subcutaneous_fat"], bm_base), (L["back_muscles"], f_act)):
            reg = cv.zcyl(lab, z_bm0, z_sp1 - 10,
                          lambda z, f=f, mcx=mcx: mcx(zb(z), f),
                          lambda z, f=f: mcy(zb(z), f),
                          lambda z, f=f: bm_a(zb(z), f), lambda z, f=f: bm_b(zb(z), f),
                          only=in_trunk)
            if lab == L["subcutaneous_fat"]:
                bm_regions.append(reg)

    sp_only = in_trunk + (L["back_muscles"], L["heart"], L["pericardial_fat"])

    def paint_column(sp: _Spine, paint: bool) -> tuple[Region | None, list[Region | None]]:
        z0, z1 = sp.z_s1 - 2, sp.z_top

        def col_b(z):
            return sp.bv(z) / np.cos(sp.phi_z(z))

        def canal_r(z):
            return 0.45 * sp.av(z)

        def canal_y(z):
            return sp.y(z) - sp.bv(z) - canal_r(z) - 1

        def lab(name):
            return L[name] if paint else None

        def only(extra=()):
            return sp_only + tuple(extra) if paint else None

        column = cv.zcyl(lab("vertebrae"), z0, z1, 0.0, sp.y, sp.av, col_b, only=only())
        regs = [column]
        regs.append(cv.zcyl(lab("vertebrae"), z0, z1, 0.0, lambda z: canal_y(z) - canal_r(z) - 7,
                            lambda z: 0.55 * sp.av(z), 9.0, 9.0,
                            only=only((L["subcutaneous_fat"],))))
        regs.append(cv.zcyl(lab("vertebrae"), z0, z1, 0.0, canal_y, lambda z: canal_r(z) + 5,
                            lambda z: canal_r(z) + 4, only=only()))
        regs.append(cv.zcyl(lab("spinal_canal"), z0 + 40, z1 + 30, 0.0, canal_y,
                            lambda z: canal_r(z) * 1.1, canal_r, only=only((L["vertebrae"],))))
        return column, regs

    _, spine_base_regions = paint_column(spine, paint=False)
    column, _ = paint_column(spine_aged, paint=True)
    # sacrum (not aged)
    sac_len = 95 * hs
    cv.zcyl(L["vertebrae"], z_s1 - sac_len, z_s1, 0.0,
            lambda z: spine.y_s1 - 8 - 40 * (z_s1 - z) / sac_len,
            lambda z: 45 - 30 * (z_s1 - z) / sac_len, 13.0, 13.0, only=sp_only)

    # discs: analytic partial volume along the spine axis
    disc_frac = None
    if column is not None:
        sl, cmask = column
        zc = zs[sl[0]][:, None, None].astype(np.float64)
        yc = ys[sl[1]][None, :, None].astype(np.float64)
        sa = spine_aged
        phi = sa.phi_z(zc)
        s_vox = sa.s_of_z(zc) + (yc - sa.y(zc)) * np.sin(phi)
        h = g.spacing[1] * np.abs(np.sin(phi)) + g.spacing[2] * np.cos(phi)
        frac = (sa.disc_cum(s_vox + h / 2) - sa.disc_cum(s_vox - h / 2)) / h
        frac = np.broadcast_to(frac, cmask.shape)
        in_col = cmask & (cv.labels[sl] == L["vertebrae"])
        disc_frac = (sl, np.where(in_col, frac, 0.0).astype(np.float32))
        lab = cv.labels[sl]
        lab[in_col & (frac >= 0.5)] = L["intervertebral_discs"]

    # ------------------------------------------------------------------------------------------
    # Images
    # ------------------------------------------------------------------------------------------
    jit = an["signal"]
    lut_w = np.zeros(256, np.float32)
    lut_f = np.zeros(256, np.float32)
    for name, i in L.items():
        w, f = _signal(name, jit)
        lut_w[i], lut_f[i] = w, f
    labels = cv.labels
    water = lut_w[labels]
    fatimg = lut_f[labels]
    spc_zyx = (g.spacing[2], g.spacing[1], g.spacing[0])
    tex_m = _smooth_noise(rng, g.shape, spc_zyx, 12.0)

    def set_ff(mask, ff, w_pure, f_pure=0.95, hetero=0.6):
        ffl = np.clip(ff * (1 + hetero * tex_m[mask]), 0.0, 0.95)
        water[mask] = w_pure * (1 + jit) * (1 - ffl)
        fatimg[mask] = f_pure * (1 + jit) * ffl

    other_ff = 0.04 + 0.002 * (bmi - 25) + 0.01 * (p.sex == "F")
    set_ff(labels == L["other_muscle"], max(other_ff, 0.02), 0.6)
    set_ff(labels == L["back_muscles"], bm_e["ff"], 0.6)
    set_ff(labels == L["thigh_muscles"], thigh["ff"], 0.6)
    set_ff(labels == L["vertebrae"], sp_e["marrow_ff"], 0.6, hetero=0.15)
    set_ff(labels == L["pelvis"], 0.6, 0.55, hetero=0.1)
    liv_ff = ev["liver"]["ff"]
    set_ff(labels == L["liver"], liv_ff, 0.47, hetero=0.1)
    soft = labels == L["soft_tissue"]
    water[soft] *= 1 + 0.25 * tex_m[soft]
    fatimg[soft] *= np.clip(1 + 0.8 * tex_m[soft], 0.2, None)
    # heart blood pool
    if pool is not None:
        sl, m = pool
        m = m & (labels[sl] == L["heart"])
        water[sl][m] = 0.72 * (1 + jit)
    # femur marrow (fatty)
    for reg in marrow_regions:
        if reg is None:
            continue
        sl, m = reg
        m = m & (labels[sl] == L["femur"])
        water[sl][m] = 0.08
        fatimg[sl][m] = 0.82
    # knee: fatty condyle marrow, water-bright joint space with partial volume along z
    kmask = labels == L["knee"]
    water[kmask] = 0.55 * 0.2
    fatimg[kmask] = 0.95 * 0.8
    for reg in joint_regions:
        if reg is None:
            continue
        sl, m = reg
        m = m & (labels[sl] == L["knee"])
        zc = zs[sl[0]].astype(np.float64)
        dz = g.spacing[2]
        ov = np.clip(np.minimum(zc + dz / 2, z_knee + js / 2) - np.maximum(zc - dz / 2,
                                                                          z_knee - js / 2), 0, None)
        fj = np.broadcast_to((ov / dz)[:, None, None], m.shape)
        wv, fv = water[sl], fatimg[sl]
        wv[m] = (fj * 0.62 + (1 - fj) * wv)[m]
        fv[m] = (fj * 0.04 + (1 - fj) * fv)[m]
    # discs: water-bright, dehydrating with age, partial volume with the vertebral marrow
    if disc_frac is not None:
        sl, fr = disc_frac
        m = fr > 0
        wd = 0.85 * sp_e["disc_water_factor"] * (1 + jit)
        fd = 0.02
        wv, fv = water[sl], fatimg[sl]
        marrow_w = 0.6 * (1 + jit) * (1 - sp_e["marrow_ff"])
        marrow_f = 0.95 * (1 + jit) * sp_e["marrow_ff"]
        wv[m] = (fr * wd + (1 - fr) * marrow_w)[m]
        fv[m] = (fr * fd + (1 - fr) * marrow_f)[m]

    # point spread, bias field with station steps, Rician noise
    sig = (0.45, 0.5, 0.5)
    water = ndimage.gaussian_filter(water, sig, mode="nearest")
    fatimg = ndimage.gaussian_filter(fatimg, sig, mode="nearest")
    noise_sd, bias_sd = SITES[p.site]
    c = rng.normal(0.0, bias_sd, 8)
    xn = (xs / 250.0)[None, None, :]
    yn = (ys / 200.0)[None, :, None]
    zn = (zs / 555.0)[:, None, None]
    logb = (c[0] * xn + c[1] * yn + c[2] * zn + c[3] * xn * xn + c[4] * yn * yn
            + c[5] * zn * zn + c[6] * xn * zn + c[7] * yn * zn).astype(np.float32)
    # six acquisition stations (as UK Biobank), each with its own gain, blended at overlaps
    st_edges = np.linspace(zs[0], zs[-1], 7)
    st_mid = 0.5 * (st_edges[:-1] + st_edges[1:])
    gains = rng.normal(0.0, 0.04, 6)
    logb = logb + np.interp(zs, st_mid, gains).astype(np.float32)[:, None, None]
    bias = np.exp(logb)
    sd = noise_sd
    out = []
    for img in (water, fatimg):
        img = img * bias
        n1 = rng.standard_normal(img.shape, dtype=np.float32)
        n2 = rng.standard_normal(img.shape, dtype=np.float32)
        img = np.sqrt((img + sd * n1) ** 2 + (sd * n2) ** 2)
        # integer-valued like scanner data (stored as uint16 on disk, float32 in memory)
        out.append(np.clip(np.rint(img * INTENSITY_SCALE), 0, 65535).astype(np.float32))
    water, fatimg = out

    # ------------------------------------------------------------------------------------------
    # Age-effect mask
    # ------------------------------------------------------------------------------------------
    age_mask = np.zeros(g.shape, np.uint8)
    strengths = p.effects
    for name, spec in EFFECTS.items():
        if strengths.strength(name) <= 0:
            continue
        ids = [L[o] for o in spec.organs]
        age_mask[np.isin(labels, ids)] = spec.id
    if strengths.strength("spine") > 0:
        # where the unaged column was (kyphosis and disc-height loss move the column)
        for reg in spine_base_regions:
            if reg is not None:
                sl, m = reg
                am = age_mask[sl]
                am[m & (am == 0)] = EFFECTS["spine"].id
    if strengths.strength("aorta") > 0 and aorta_base_region is not None:
        sl, m = aorta_base_region
        am = age_mask[sl]
        am[m & (am == 0)] = EFFECTS["aorta"].id
    if strengths.strength("back_muscle") > 0:
        for reg in bm_regions:
            if reg is not None:
                sl, m = reg
                am = age_mask[sl]
                am[m & (am == 0)] = EFFECTS["back_muscle"].id
    if strengths.strength("thigh_muscle") > 0:
        # the unaged thigh muscle compartment (fat fills where the muscle has shrunk)
        for sgn in (+1.0, -1.0):
            reg = cv.zcyl(None, zt(0.06), z_thigh_top, lambda z, s=sgn: s * xleg_t(T(z)),
                          lambda z: yleg_t(T(z)),
                          lambda z: r_thigh(z, th_base), lambda z: r_thigh(z, th_base),
                          only=(L["thigh_muscles"], L["subcutaneous_fat"], L["other_muscle"]))
            if reg is not None:
                sl, m = reg
                am = age_mask[sl]
                am[m & (am == 0)] = EFFECTS["thigh_muscle"].id

    aff = g.affine
    prov = {"generator": "bodyage_core.synth", "subject_id": p.subject_id, "seed": p.seed,
            "index": p.index}
    meta = {"age": round(p.age, 3), "sex": p.sex}
    vol = lambda a, ch: Volume(a[None], aff, (ch,), dict(prov), dict(meta))  # noqa: E731
    truth = p.to_dict()
    truth["grid"] = g.to_dict()
    truth["measured"] = {
        "kyphosis_deg": sp_e["kyphosis_deg"],
        "spine_length_mm": float(spine_aged.length),
        "disc_total_mm": float(spine_aged.knots_d[-1]),
        "z_knee_mm": float(z_knee),
        "pericardial_fat_base_mm": pf_base,
    }
    return SyntheticSubject(params=p, water=vol(water, "water"), fat=vol(fatimg, "fat"),
                            labels=vol(labels, "labels"), age_mask=vol(age_mask, "age_mask"),
                            truth=truth)
