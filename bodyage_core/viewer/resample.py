"""Nearest-neighbour resampling of a layer on another grid onto the base grid: single points
(:func:`sample_nearest`) and whole view slices (:func:`resample_slice`), with a separable fast
path when the two grids' axes are parallel."""

from __future__ import annotations

from typing import Any

import numpy as np

from bodyage_core.viewer.geometry import PlaneGeometry
from bodyage_core.volume import Volume


def sample_nearest(volume: Volume, channel: str, world: np.ndarray) -> np.ndarray:
    """Nearest-neighbour values of ``volume``'s ``channel`` at world points ``(..., 3)``; NaN
    outside (float32 result; label ids stay exact up to 2**24)."""
    data = volume.channel(channel)
    zyx = np.rint(volume.world_to_voxel(world)).astype(np.int64)
    shape = np.array(data.shape)
    inside = np.all((zyx >= 0) & (zyx < shape), axis=-1)
    out = np.full(world.shape[:-1], np.nan, dtype=np.float32)
    idx = zyx[inside]
    out[inside] = data[idx[:, 0], idx[:, 1], idx[:, 2]]
    return out


_AXIS_PLANS: dict[bytes, Any] = {}


def _axis_plan(base_affine: np.ndarray, affine: np.ndarray
               ) -> dict[int, tuple[int, float, float]] | None:
    """For grids with parallel axes: base numpy axis -> (overlay numpy axis, a, b) with
    ``overlay index = a * base index + b``; None when the grids are rotated (cached)."""
    key = np.asarray(base_affine, np.float64).tobytes() + np.asarray(affine,
                                                                     np.float64).tobytes()
    if key in _AXIS_PLANS:
        return _AXIS_PLANS[key]
    m = np.linalg.inv(affine) @ base_affine  # base voxel xyz -> overlay voxel xyz
    lin = m[:3, :3]
    strong = np.abs(lin) > 1e-6 * np.abs(lin).max()
    plan: dict[int, tuple[int, float, float]] | None = None
    if (strong.sum(axis=1) == 1).all() and (strong.sum(axis=0) == 1).all():
        plan = {}
        for j in range(3):  # overlay xyz axis j (numpy axis 2 - j)
            i = int(np.argmax(np.abs(lin[j])))  # base xyz axis i (numpy axis 2 - i)
            plan[2 - i] = (2 - j, float(lin[j, i]), float(m[j, 3]))
    if len(_AXIS_PLANS) > 256:
        _AXIS_PLANS.clear()
    _AXIS_PLANS[key] = plan
    return plan


def _resample_axis_aligned(base: Volume, data: np.ndarray, affine: np.ndarray,
                           geom: PlaneGeometry, k: int) -> np.ndarray | None:
    """Nearest-neighbour slice of ``data`` (on ``affine``) on the base grid when the two grids'
    axes are parallel (each overlay axis follows one base axis): one 1D index vector per
    screen axis and two ``take`` gathers from a view of the overlay slice, instead of a matrix
    product per pixel (the index plan is cached per pair of grids). None when the grids are rotated."""
    plan = _axis_plan(base.affine, affine)
    if plan is None:
        return None
    shape = data.shape

    def along(base_axis: int, base_idx: np.ndarray) -> tuple[int, np.ndarray, np.ndarray]:
        o, a, b = plan[base_axis]
        v = np.rint(a * base_idx + b).astype(np.int64)
        ok = (v >= 0) & (v < shape[o])
        return o, np.clip(v, 0, shape[o] - 1), ok

    rows, cols = geom.shape
    r = np.arange(rows)
    c = np.arange(cols)
    o_n, kk, ok_n = along(geom.normal_axis, np.array([k]))
    o_r, rv, ok_r = along(geom.row_axis, (rows - 1 - r) if geom.flip_rows else r)
    o_c, cv, ok_c = along(geom.col_axis, (cols - 1 - c) if geom.flip_cols else c)
    sl: list[Any] = [slice(None)] * 3
    sl[o_n] = int(kk[0])
    two = data[tuple(sl)]  # a view: the two remaining overlay axes in numpy order
    if o_r > o_c:
        two = two.T
    out = two.take(rv, axis=0).take(cv, axis=1).astype(np.float32, copy=False)
    if not ok_n[0]:
        out[...] = np.nan
        return out
    if not ok_r.all():
        out[~ok_r, :] = np.nan
    if not ok_c.all():
        out[:, ~ok_c] = np.nan
    return out


def resample_slice(base: Volume, volume: Volume, channel: str, geom: PlaneGeometry,
                   k: int) -> np.ndarray:
    """Slice ``k`` of plane ``geom`` of the base grid, sampled from ``volume``'s ``channel``
    (on another grid) by nearest neighbour; NaN outside it."""
    fast = _resample_axis_aligned(base, volume.channel(channel), volume.affine, geom, k)
    if fast is not None:
        return fast
    rows, cols = geom.shape
    r, c = np.meshgrid(np.arange(rows), np.arange(cols), indexing="ij")
    zyx = np.empty((rows, cols, 3))
    zyx[..., geom.normal_axis] = k
    zyx[..., geom.col_axis] = (cols - 1 - c) if geom.flip_cols else c
    zyx[..., geom.row_axis] = (rows - 1 - r) if geom.flip_rows else r
    world = base.voxel_to_world(zyx)
    return sample_nearest(volume, channel, world)
