"""Stitching UK Biobank Dixon stations onto one grid, with the choices of the people who had the data.

Every choice is a field of :class:`StitchSettings`; the defaults follow the public code that
fused the real UK Biobank stations (docs/UKBB.md says which reference each one follows):

=========================  ==========================  ===============================================
setting                    default                     reference
=========================  ==========================  ===============================================
``spacing_xyz``            2.23214293 x 2.23214293 x   Langner's ``convertDicoms.py`` /
                           3.0 mm (the seeds' 2.232 x  ``c_out_pixel_spacing`` (500 mm / 224 columns;
                           2.232 x 3 mm grid)          the stations' own in-plane spacing, so only the
                                                       4.5 mm breath-hold stations are resampled)
``trim_volume_ends``       4 slices at each end        Langner ``c_trim_axial_slices`` (fold-over)
``trim_station_ends``      0                           Glocker's ``stitching --margin`` (slices of
                                                       *every* station dropped at both its ends)
``max_blend_slices``       8                           Langner ``c_max_overlap``: a longer overlap is
                                                       cut symmetrically (the upper station loses the
                                                       floor of the excess, the lower the ceiling)
``intensity_correction``   on                          Langner ``correctOverlapIntensity``: each
                                                       blended slice's mean is scaled onto the line
                                                       between the means of the first slices outside
                                                       the overlap
``repeats``                ``"newest"``                Langner / ukb_mimir: "choosing most recently
                                                       imaged" (AcquisitionTime, then SeriesTime)
=========================  ==========================  ===============================================

Blending is a linear cross-fade: in an overlap of ``n`` slices the upper station's weight rises
``1/(n+1) ... n/(n+1)`` and the lower station's falls by the same amount (Langner's
``fadeStationEdges``; weights never reach 0 or 1 inside the overlap). Stations are resampled
(trilinear; a z-only linear interpolation when the in-plane grids agree) only where their grid is
off the output grid by more than :data:`GRID_TOLERANCE` voxels (Langner's
``c_resample_tolerance``, 0.01, is just too tight for 224 columns written with 8 digits).

The module is Qt-free and knows nothing of DICOM: :mod:`bodyage_core.io.ukbb` gives it station
geometries and a loader.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

import numpy as np
from nibabel import orientations as nio
from scipy import ndimage

from bodyage_core.errors import ConfigError

#: UK Biobank in-plane pixel spacing as Langner's fusion code has it (500 mm / 224 columns; the
#: seeds round it to 2.232 mm).
UKBB_IN_PLANE_MM = 2.23214293
#: Output slice step of the fused UK Biobank volume (Langner; Starck resample to the same grid).
UKBB_SLICE_MM = 3.0
UKBB_SPACING_XYZ = (UKBB_IN_PLANE_MM, UKBB_IN_PLANE_MM, UKBB_SLICE_MM)
#: Off-grid distance (output voxels) below which a station is copied, not interpolated.
GRID_TOLERANCE = 0.02
#: Intensity-correction factors are kept within this range (a guard against an empty slice).
CORRECTION_LIMITS = (0.5, 2.0)

_REPEAT_RULES = ("newest", "highest_series_number")
_SWAP_MODES = ("fix", "flag", "off")


@dataclass(frozen=True)
class StitchSettings:
    """How the stations of a UK Biobank zip are put together (defaults: the references').

    Attributes
    ----------
    spacing_xyz
        Output voxel size in mm ``(x, y, z)``; None: the stations' own grid (station 1's in-plane
        spacing and the smallest slice step).
    trim_volume_ends
        Slices dropped at the top and at the bottom of the fused volume (fold-over at the neck
        and knees); Langner: 4.
    trim_station_ends
        Native slices dropped at both ends of every station before stitching (fold-over inside
        the overlaps too); Glocker's ``--margin``; 0 = off.
    max_blend_slices
        Longest blend zone (output slices); a longer overlap is cut symmetrically first.
        None: blend over the whole overlap.
    intensity_correction
        Scale the blended slices so their means run linearly across each overlap.
    repeats
        A station acquired more than once: ``"newest"`` (AcquisitionTime, then SeriesTime, then
        SeriesNumber) or ``"highest_series_number"`` (the older rule). The older
        acquisition is used only where the kept one leaves a gap.
    repeat_overlap
        Two series are the same station (a repeat, or water and fat of one station) when their
        z extents (slabs) overlap by at least this fraction (0.7) of the shorter one;
        neighbouring UK Biobank stations overlap by about a tenth, a repeat at the same table
        position by all of it. A repeat shifted further is stitched in as an extra station.
    swap_check
        Fat/water swap test per station (:mod:`bodyage_core.io.dixon_swap`): ``"fix"`` swaps a
        confidently detected swap back, ``"flag"`` only records it, ``"off"`` skips the test.
    swap_fix_below, swap_suspect_below
        Fat fraction of the subcutaneous-fat shell below which a station is swapped (and fixed,
        when the inside of the body is fattier than the shell) / suspected.
    leg_stations
        The most inferior stations (this many) are also judged leg by leg (the recoh pipeline's
        per-leg classifiers for stations 5 and 6).
    """

    spacing_xyz: tuple[float, float, float] | None = UKBB_SPACING_XYZ
    trim_volume_ends: int = 4
    trim_station_ends: int = 0
    max_blend_slices: int | None = 8
    intensity_correction: bool = True
    repeats: str = "newest"
    repeat_overlap: float = 0.7
    swap_check: str = "fix"
    swap_fix_below: float = 0.3
    swap_suspect_below: float = 0.5
    leg_stations: int = 2

    def __post_init__(self) -> None:
        if self.spacing_xyz is not None:
            sp = tuple(float(v) for v in self.spacing_xyz)
            if len(sp) != 3 or not all(math.isfinite(v) and v > 0 for v in sp):
                raise ConfigError(f"spacing_xyz must be three positive mm values, got "
                                  f"{self.spacing_xyz!r}")
            object.__setattr__(self, "spacing_xyz", sp)
        for name in ("trim_volume_ends", "trim_station_ends", "leg_stations"):
            v = getattr(self, name)
            if int(v) != v or v < 0:
                raise ConfigError(f"{name} must be a whole number >= 0, got {v!r}")
            object.__setattr__(self, name, int(v))
        if self.max_blend_slices is not None:
            if int(self.max_blend_slices) != self.max_blend_slices or self.max_blend_slices < 1:
                raise ConfigError(f"max_blend_slices must be >= 1 or None, got "
                                  f"{self.max_blend_slices!r}")
            object.__setattr__(self, "max_blend_slices", int(self.max_blend_slices))
        if self.repeats not in _REPEAT_RULES:
            raise ConfigError(f"repeats must be one of {', '.join(_REPEAT_RULES)}, got "
                              f"{self.repeats!r}")
        if self.swap_check not in _SWAP_MODES:
            raise ConfigError(f"swap_check must be one of {', '.join(_SWAP_MODES)}, got "
                              f"{self.swap_check!r}")
        if not 0.0 < float(self.repeat_overlap) <= 1.0:
            raise ConfigError(f"repeat_overlap must be in (0, 1], got {self.repeat_overlap!r}")
        if not 0.0 <= self.swap_fix_below <= self.swap_suspect_below <= 1.0:
            raise ConfigError("need 0 <= swap_fix_below <= swap_suspect_below <= 1")

    @classmethod
    def plain(cls, **overrides: Any) -> StitchSettings:
        """The simplest fusion: the stations' own grid, nothing trimmed, a cross-fade over
        the whole overlap, no intensity correction (repeats and swaps as the defaults)."""
        base = dict(spacing_xyz=None, trim_volume_ends=0, trim_station_ends=0,
                    max_blend_slices=None, intensity_correction=False)
        base.update(overrides)
        return cls(**base)

    def updated(self, **overrides: Any) -> StitchSettings:
        """A copy with some fields changed (unknown names are a ConfigError)."""
        known = {f.name for f in fields(self)}
        bad = sorted(set(overrides) - known)
        if bad:
            raise ConfigError(f"unknown stitch setting(s) {', '.join(bad)}; known: "
                              f"{', '.join(sorted(known))}")
        return replace(self, **overrides)

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        if d["spacing_xyz"] is not None:
            d["spacing_xyz"] = [float(v) for v in d["spacing_xyz"]]
        return d


def resolve_settings(stitch: StitchSettings | Mapping[str, Any] | None,
                     overrides: Mapping[str, Any]) -> StitchSettings:
    """``stitch`` (settings, a mapping of fields, or None for the defaults) with ``overrides``."""
    if stitch is None:
        settings = StitchSettings()
    elif isinstance(stitch, StitchSettings):
        settings = stitch
    elif isinstance(stitch, Mapping):
        settings = StitchSettings().updated(**dict(stitch))
    else:
        raise ConfigError(f"stitch must be StitchSettings or a mapping, got {type(stitch).__name__}")
    return settings.updated(**dict(overrides)) if overrides else settings


# -- geometry -------------------------------------------------------------------------------------

@dataclass
class StationGeometry:
    """One acquisition of one station, geometry only (pixels come from the loader).

    ``channels`` maps a channel to ``(shape_xyz, affine)`` (voxel ``(x, y, z)`` -> RAS mm, any
    axis order). ``group`` is the station number (1 = most superior); ``role`` is ``"primary"``
    (the acquisition used) or ``"older"`` (a repeat's older acquisition, used only to fill a gap).
    """

    label: str
    group: int
    channels: dict[str, tuple[tuple[int, int, int], np.ndarray]]
    role: str = "primary"
    native_step: float = 0.0
    key: Any = None


def canonical_affine(shape_xyz: Sequence[int], affine: np.ndarray) -> np.ndarray:
    """The affine of the array reoriented to the closest canonical RAS frame (no resampling)."""
    affine = np.asarray(affine, dtype=np.float64)
    ornt = nio.io_orientation(affine)
    transform = nio.ornt_transform(ornt, nio.axcodes2ornt(("R", "A", "S")))
    return affine @ nio.inv_ornt_aff(transform, tuple(int(s) for s in shape_xyz[:3]))


def _corners_local(shape_xyz, affine, rot) -> np.ndarray:
    n = np.asarray(shape_xyz[:3], dtype=np.float64) - 1
    corners = np.array([[i, j, k] for i in (0, n[0]) for j in (0, n[1]) for k in (0, n[2])])
    world = corners @ affine[:3, :3].T + affine[:3, 3]
    return world @ rot


@dataclass
class _Placed:
    geom: StationGeometry
    lo: np.ndarray            # common extent of its channels, output frame (mm)
    hi: np.ndarray
    i_lo: np.ndarray          # inclusive output index box (x, y, z) on the full grid
    i_hi: np.ndarray
    mismatch: dict[str, Any] | None = None
    weights: np.ndarray | None = None   # along z of the full grid


@dataclass
class _Piece:
    st: int                   # index into placed
    k0: int
    k1: int
    filler: bool = False


@dataclass
class StitchPlan:
    settings: StitchSettings
    channels: tuple[str, ...]
    rot: np.ndarray
    spacing: np.ndarray
    origin_local: np.ndarray
    shape_xyz: np.ndarray     # full grid, before the volume-end trim
    placed: list[_Placed]
    pieces: list[_Piece]
    keep: tuple[int, int]     # kept z range of the full grid [k0, k1]
    overlaps: list[dict[str, Any]] = field(default_factory=list)
    bridged: list[dict[str, Any]] = field(default_factory=list)

    @property
    def out_affine(self) -> np.ndarray:
        aff = np.eye(4)
        aff[:3, :3] = self.rot * self.spacing[None, :]
        origin = self.origin_local.copy()
        origin[2] += self.keep[0] * self.spacing[2]
        aff[:3, 3] = self.rot @ origin
        return aff


def plan_stitch(stations: Sequence[StationGeometry], channels: Sequence[str],
                settings: StitchSettings) -> StitchPlan:
    """Output grid, station boxes, blend zones and weights (no pixels are touched)."""
    channels = tuple(channels)
    first = stations[0]
    shape0, aff0 = first.channels[channels[0]]
    can0 = canonical_affine(shape0, aff0)
    rot = can0[:3, :3] / np.linalg.norm(can0[:3, :3], axis=0)
    if settings.spacing_xyz is None:
        steps = [float(g.native_step) for g in stations if g.role == "primary" and g.native_step]
        if not steps:
            steps = [float(np.linalg.norm(can0[:3, 2]))]
        spacing = np.array([np.linalg.norm(can0[:3, 0]), np.linalg.norm(can0[:3, 1]), min(steps)])
    else:
        spacing = np.asarray(settings.spacing_xyz, dtype=np.float64)

    placed: list[_Placed] = []
    for g in stations:
        los, his, shapes = {}, {}, {}
        for ch in channels:
            shp, aff = g.channels[ch]
            loc = _corners_local(shp, np.asarray(aff, np.float64), rot)
            los[ch], his[ch], shapes[ch] = loc.min(axis=0), loc.max(axis=0), tuple(shp)
        lo = np.max(np.stack(list(los.values())), axis=0)
        hi = np.min(np.stack(list(his.values())), axis=0)
        mismatch = None
        if len(channels) > 1:
            tol = 0.5 * spacing
            if any(np.any(np.abs(los[c] - lo) > tol) or np.any(np.abs(his[c] - hi) > tol)
                   for c in channels):
                mismatch = {"shapes": {c: [int(v) for v in shapes[c]] for c in channels},
                            "common_mm": [round(float(v), 3) for v in (hi - lo)]}
        placed.append(_Placed(g, lo, hi, np.zeros(3, int), np.zeros(3, int), mismatch))

    prim = [p for p in placed if p.geom.role == "primary"]
    g_lo = np.min(np.stack([p.lo for p in prim]), axis=0)
    g_hi = np.max(np.stack([p.hi for p in prim]), axis=0)
    shape_xyz = np.floor((g_hi - g_lo) / spacing + GRID_TOLERANCE).astype(int) + 1
    for p in placed:
        i_lo = np.ceil((p.lo - g_lo) / spacing - GRID_TOLERANCE).astype(int)
        i_hi = np.floor((p.hi - g_lo) / spacing + GRID_TOLERANCE).astype(int)
        p.i_lo = np.clip(i_lo, 0, shape_xyz - 1)
        p.i_hi = np.clip(i_hi, 0, shape_xyz - 1)

    nz = int(shape_xyz[2])
    cap = settings.max_blend_slices
    pieces = [_Piece(i, int(p.i_lo[2]), int(p.i_hi[2])) for i, p in enumerate(placed)
              if p.geom.role == "primary" and p.i_hi[2] >= p.i_lo[2]]
    covered = np.zeros(nz, bool)
    for pc in pieces:
        covered[pc.k0:pc.k1 + 1] = True
    ext = cap if cap is not None else 8
    for i, p in enumerate(placed):   # an older acquisition fills only what the kept ones leave
        if p.geom.role == "primary" or p.i_hi[2] < p.i_lo[2]:
            continue
        k0, k1 = int(p.i_lo[2]), int(p.i_hi[2])
        run_start = None
        for k in range(k0, k1 + 2):
            free = k <= k1 and not covered[k]
            if free and run_start is None:
                run_start = k
            elif not free and run_start is not None:
                pieces.append(_Piece(i, max(k0, run_start - ext), min(k1, k - 1 + ext), True))
                run_start = None
    pieces.sort(key=lambda pc: (pc.k0 + pc.k1, pc.k0))
    plan = StitchPlan(settings, channels, rot, spacing, g_lo, shape_xyz, placed, pieces,
                      (0, nz - 1))

    # Cut overlaps to the blend cap, bridge small gaps.
    for a, b in zip(pieces[:-1], pieces[1:]):   # a below b
        n = a.k1 - b.k0 + 1
        entry: dict[str, Any] = {"stations": [placed[a.st].geom.label, placed[b.st].geom.label],
                                 "slices": int(max(n, 0))}
        if n > 0 and cap is not None and n > cap:
            excess = n - cap
            same = placed[a.st].geom.group == placed[b.st].geom.group
            if same and a.filler and not b.filler:
                a.k1 -= excess
            elif same and b.filler and not a.filler:
                b.k0 += excess
            else:
                b.k0 += excess // 2          # the upper station loses the floor of the excess
                a.k1 -= excess - excess // 2  # the lower station the ceiling (Langner)
            entry["cut"] = int(excess)
        elif n <= 0:
            gap = -n
            if gap > 0:
                a.k1 += (gap + 1) // 2
                b.k0 -= gap // 2
            plan.bridged.append({"stations": entry["stations"], "gap_slices": int(gap)})
        entry["blended"] = int(max(a.k1 - b.k0 + 1, 0))
        plan.overlaps.append(entry)

    # Linear cross-fade weights.
    for p in placed:
        p.weights = np.zeros(nz, np.float32)
    ramps: list[np.ndarray] = []
    for pc in pieces:
        w = np.zeros(nz, np.float32)
        w[pc.k0:pc.k1 + 1] = 1.0
        ramps.append(w)
    for ia in range(len(pieces) - 1):
        a, b = pieces[ia], pieces[ia + 1]
        n = a.k1 - b.k0 + 1
        for j in range(max(n, 0)):
            k = b.k0 + j
            ramps[ia + 1][k] = min(ramps[ia + 1][k], (j + 1) / (n + 1))
            ramps[ia][k] = min(ramps[ia][k], (n - j) / (n + 1))
    for pc, w in zip(pieces, ramps):
        placed[pc.st].weights += w

    t = settings.trim_volume_ends
    if nz - 2 * t < 1:
        raise ConfigError(f"trimming {t} slices at each end of a {nz}-slice volume leaves "
                          f"nothing; lower trim_volume_ends")
    plan.keep = (t, nz - 1 - t)
    return plan


# -- pixels -------------------------------------------------------------------------------------

def resample_into(xyz: np.ndarray, aff: np.ndarray, out_aff: np.ndarray,
                  out_shape_xyz: Sequence[int]) -> np.ndarray:
    """Sample a station ``(X, Y, Z)`` array on an output sub-grid; returns ``(Z, Y, X)`` float32.

    A copy where the grids agree within :data:`GRID_TOLERANCE`, a linear interpolation along z
    where only z differs (the 4.5 mm breath-hold stations), trilinear otherwise; outside the
    station its edge values are repeated (only for gaps of under a slice that were bridged).
    """
    out_shape = np.asarray(out_shape_xyz, dtype=int)
    m = np.linalg.inv(np.asarray(aff, np.float64)) @ np.asarray(out_aff, np.float64)
    a, shift = m[:3, :3], m[:3, 3]
    src_shape = np.asarray(xyz.shape[:3])
    n = out_shape - 1
    inplane_ok = (abs(a[0, 0] - 1) < 1e-3 and abs(a[1, 1] - 1) < 1e-3
                  and abs(a[0, 1]) * max(n[1], 1) < GRID_TOLERANCE
                  and abs(a[0, 2]) * max(n[2], 1) < GRID_TOLERANCE
                  and abs(a[1, 0]) * max(n[0], 1) < GRID_TOLERANCE
                  and abs(a[1, 2]) * max(n[2], 1) < GRID_TOLERANCE
                  and abs(a[2, 0]) * max(n[0], 1) < GRID_TOLERANCE
                  and abs(a[2, 1]) * max(n[1], 1) < GRID_TOLERANCE)
    if inplane_ok:
        ends = np.array([shift[:2], shift[:2] + np.array([a[0, 0], a[1, 1]]) * n[:2]])
        if np.all(np.abs(ends - np.round(ends)) < GRID_TOLERANCE):
            x0, y0 = (int(round(shift[0])), int(round(shift[1])))
            x1, y1 = x0 + out_shape[0], y0 + out_shape[1]
            if x0 >= 0 and y0 >= 0 and x1 <= src_shape[0] and y1 <= src_shape[1]:
                src = xyz[x0:x1, y0:y1]
                zsrc = shift[2] + a[2, 2] * np.arange(out_shape[2])
                zi = np.round(zsrc)
                if abs(a[2, 2] - 1) < 1e-3 and np.all(np.abs(zsrc - zi) < GRID_TOLERANCE):
                    idx = np.clip(zi.astype(int), 0, src_shape[2] - 1)
                    if idx[0] + out_shape[2] - 1 == idx[-1] and np.all(np.diff(idx) == 1):
                        sub = src[:, :, idx[0]:idx[-1] + 1]
                    else:
                        sub = src[:, :, idx]
                    return np.ascontiguousarray(np.transpose(sub, (2, 1, 0)), dtype=np.float32)
                zc = np.clip(zsrc, 0, src_shape[2] - 1)
                z0 = np.clip(np.floor(zc).astype(int), 0, max(src_shape[2] - 2, 0))
                z1 = np.minimum(z0 + 1, src_shape[2] - 1)
                f = (zc - z0).astype(np.float32)
                out = np.empty((out_shape[2], out_shape[1], out_shape[0]), np.float32)
                for k in range(out_shape[2]):
                    lo = src[:, :, z0[k]].T
                    if f[k] < 1e-6:
                        out[k] = lo
                    else:
                        out[k] = lo * (1 - f[k]) + src[:, :, z1[k]].T * f[k]
                return out
    src = np.ascontiguousarray(np.transpose(xyz, (2, 1, 0)), dtype=np.float32)
    rev = np.eye(4)[[2, 1, 0, 3]]
    m_zyx = rev @ m @ rev
    return ndimage.affine_transform(src, m_zyx[:3, :3], offset=m_zyx[:3, 3],
                                    output_shape=tuple(int(v) for v in out_shape[::-1]), order=1,
                                    mode="nearest", prefilter=False).astype(np.float32)


StationLoader = Callable[[StationGeometry], Mapping[str, tuple[np.ndarray, np.ndarray]]]
StationHook = Callable[[StationGeometry, dict, np.ndarray], None]


def run_stitch(plan: StitchPlan, load: StationLoader, on_station: StationHook | None = None
               ) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """Fuse the stations of ``plan``.

    ``load(geom)`` returns ``{channel: (xyz, affine)}`` of one acquisition; ``on_station(geom,
    arrays, sub_affine)`` may change its ``(Z, Y, X)`` arrays in place before they are blended
    (the fat/water swap test). Returns ``(data (C, Z, Y, X) float32, affine, report)``.
    """
    channels = plan.channels
    k_lo, k_hi = plan.keep
    nx, ny = int(plan.shape_xyz[0]), int(plan.shape_xyz[1])
    nzk = k_hi - k_lo + 1
    data = np.zeros((len(channels), nzk, ny, nx), dtype=np.float32)
    wsum = np.zeros((nzk, ny, nx), dtype=np.float32)
    base_aff = np.eye(4)
    base_aff[:3, :3] = plan.rot * plan.spacing[None, :]
    base_aff[:3, 3] = plan.rot @ plan.origin_local
    used: list[str] = []
    for p in plan.placed:
        w = p.weights.copy()
        w[:k_lo] = 0
        w[k_hi + 1:] = 0
        nzw = np.nonzero(w > 0)[0]
        if nzw.size == 0:
            continue
        z0, z1 = int(nzw[0]), int(nzw[-1])
        i_lo = np.array([p.i_lo[0], p.i_lo[1], z0])
        sub_shape = (int(p.i_hi[0] - p.i_lo[0] + 1), int(p.i_hi[1] - p.i_lo[1] + 1), z1 - z0 + 1)
        if min(sub_shape) < 1:
            continue
        sub_aff = base_aff.copy()
        sub_aff[:3, 3] = base_aff[:3, :3] @ i_lo + base_aff[:3, 3]
        images = load(p.geom)
        arrays = {ch: resample_into(images[ch][0], images[ch][1], sub_aff, sub_shape)
                  for ch in images}
        del images
        if on_station is not None:
            on_station(p.geom, arrays, sub_aff)
        wz = w[z0:z1 + 1][:, None, None]
        box = (slice(z0 - k_lo, z1 - k_lo + 1), slice(int(p.i_lo[1]), int(p.i_hi[1]) + 1),
               slice(int(p.i_lo[0]), int(p.i_hi[0]) + 1))
        wsum[box] += wz
        for c, ch in enumerate(channels):
            arr = arrays[ch]
            arr *= wz
            data[c][box] += arr
        used.append(p.geom.label)
    np.divide(data, wsum[None], out=data, where=wsum[None] > 0)
    report: dict[str, Any] = {"used": used}
    if plan.settings.intensity_correction:
        report["intensity_correction"] = _correct_overlaps(plan, data)
    return data, plan.out_affine, report


def _correct_overlaps(plan: StitchPlan, data: np.ndarray) -> list[dict[str, Any]]:
    """Langner's overlap intensity correction on the fused data (in place)."""
    k_lo, k_hi = plan.keep
    out = []
    lo_f, hi_f = CORRECTION_LIMITS
    for a, b in zip(plan.pieces[:-1], plan.pieces[1:]):
        n = a.k1 - b.k0 + 1
        pa, pb = plan.placed[a.st], plan.placed[b.st]
        entry: dict[str, Any] = {"stations": [pa.geom.label, pb.geom.label], "slices": int(max(n, 0))}
        out.append(entry)
        ea, eb = b.k0 - 1, a.k1 + 1
        if n < 1 or ea < max(a.k0, k_lo) or eb > min(b.k1, k_hi):
            entry["skipped"] = "no overlap" if n < 1 else "an edge slice is outside the volume"
            continue
        ys = slice(int(max(pa.i_lo[1], pb.i_lo[1])), int(min(pa.i_hi[1], pb.i_hi[1])) + 1)
        xs = slice(int(max(pa.i_lo[0], pb.i_lo[0])), int(min(pa.i_hi[0], pb.i_hi[0])) + 1)
        if ys.stop <= ys.start or xs.stop <= xs.start:
            entry["skipped"] = "the stations share no in-plane area"
            continue
        factors = {}
        for c, ch in enumerate(plan.channels):
            m_a = float(data[c, ea - k_lo, ys, xs].mean(dtype=np.float64))
            m_b = float(data[c, eb - k_lo, ys, xs].mean(dtype=np.float64))
            fs = []
            for j in range(n):
                k = b.k0 + j - k_lo
                cur = float(data[c, k, ys, xs].mean(dtype=np.float64))
                target = m_a + (m_b - m_a) * (j + 1) / (n + 1)
                f = target / cur if cur > 1e-12 and target > 0 else 1.0
                f = float(min(max(f, lo_f), hi_f))
                if f != 1.0:
                    data[c, k] *= np.float32(f)
                fs.append(round(f, 4))
            factors[ch] = fs
        entry["factors"] = factors
    return out
