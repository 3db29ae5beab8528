"""Measurements on the slices (Qt-free): a ruler (distance in mm) and box / ellipse regions
with the statistics of every layer inside them (ITK-SNAP's and FSLeyes' ROI statistics).

A measurement is drawn in one plane on one slice, between two points in world millimetres
(RAS). A ruler's length is the distance between them. A region covers the base-grid voxels of
that slice whose centres lie in the box (or the ellipse inscribed in it); its volume is their
number times the voxel volume, and each visible layer's mean, SD, min and max are taken over the
same voxels (a layer on another grid is sampled at their centres, nearest neighbour; voxels
outside it do not count). A ruler reads the same in every view and convention.

:class:`MeasureMixin` is one part of :class:`~bodyage_core.viewer.ViewerState`.
"""

from __future__ import annotations

import csv
import io
import itertools
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from bodyage_core.errors import BodyageError
from bodyage_core.viewer.geometry import PLANES
from bodyage_core.viewer.resample import sample_nearest

KINDS = ("ruler", "box", "ellipse")
_ids = itertools.count(1)
STAT_COLUMNS = ("measurement", "kind", "plane", "slice", "length_mm", "area_mm2", "voxels",
                "volume_ml", "layer", "channel", "n", "mean", "sd", "min", "max")


@dataclass
class Measurement:
    """A ruler or a region: ``kind``, ``plane``, the base-grid ``slice`` index and its two
    corner points ``start`` / ``end`` in world mm."""

    kind: str
    plane: str
    slice: int
    start: np.ndarray
    end: np.ndarray
    id: int = field(default_factory=lambda: next(_ids))

    @property
    def name(self) -> str:
        return f"{self.kind} {self.id}"

    @property
    def length_mm(self) -> float:
        return float(np.linalg.norm(np.asarray(self.end, float) - np.asarray(self.start,
                                                                             float)))


def region_mask(state: Any, m: Measurement) -> np.ndarray:
    """Boolean ``(Z, Y, X)`` mask on the base grid of the voxels a region covers."""
    base = state.base_layer.volume
    geom = state.geometry(m.plane)
    mask = np.zeros(base.shape, bool)
    a = base.world_to_voxel(np.asarray(m.start, float))
    b = base.world_to_voxel(np.asarray(m.end, float))
    axes = [geom.col_axis, geom.row_axis]
    lo = np.minimum(a, b)
    hi = np.maximum(a, b)
    ranges = []
    for ax in axes:
        i0 = int(np.ceil(lo[ax] - 1e-6))
        i1 = int(np.floor(hi[ax] + 1e-6))
        i0, i1 = max(i0, 0), min(i1, base.shape[ax] - 1)
        if i1 < i0:
            return mask
        ranges.append(np.arange(i0, i1 + 1))
    cc, rr = np.meshgrid(ranges[0], ranges[1], indexing="ij")
    inside = np.ones(cc.shape, bool)
    if m.kind == "ellipse":
        centre = (lo + hi) / 2
        half = np.maximum((hi - lo) / 2, 1e-6)
        inside = (((cc - centre[axes[0]]) / half[axes[0]]) ** 2
                  + ((rr - centre[axes[1]]) / half[axes[1]]) ** 2) <= 1.0 + 1e-9
    idx: list[Any] = [None, None, None]
    idx[geom.normal_axis] = np.full(int(inside.sum()), int(m.slice))
    idx[axes[0]] = cc[inside]
    idx[axes[1]] = rr[inside]
    mask[tuple(idx)] = True
    return mask


def region_statistics(state: Any, m: Measurement) -> dict[str, Any]:
    """Voxels, area, volume (ml) and per visible layer ``n, mean, sd, min, max``."""
    if m.kind == "ruler":
        raise BodyageError("a ruler has no region statistics")
    base = state.base_layer.volume
    mask = region_mask(state, m)
    n = int(mask.sum())
    voxel_mm3 = float(np.prod(base.spacing_zyx))
    geom = state.geometry(m.plane)
    layers = []
    world = None
    for lay in state.layers:
        if not lay.visible:
            continue
        if lay.resampled:
            if world is None:
                world = base.voxel_to_world(np.argwhere(mask).astype(float))
            vals = sample_nearest(lay.volume, lay.channel, world)
            vals = vals[np.isfinite(vals)]
        else:
            vals = np.asarray(lay.data[mask], float)
        entry = {"layer": lay.name, "channel": lay.channel, "n": int(vals.size)}
        if vals.size:
            entry.update(mean=float(vals.mean()), sd=float(vals.std(ddof=1)) if vals.size > 1
                         else 0.0, min=float(vals.min()), max=float(vals.max()))
        else:
            entry.update(mean=None, sd=None, min=None, max=None)
        layers.append(entry)
    return {"measurement": m.name, "kind": m.kind, "plane": m.plane, "slice": m.slice,
            "voxels": n, "area_mm2": n * geom.pixel_mm[0] * geom.pixel_mm[1],
            "volume_ml": n * voxel_mm3 / 1000.0, "layers": layers}


def statistics_rows(state: Any) -> list[dict[str, Any]]:
    """One row per ruler, and per region and visible layer (the table and the CSV)."""
    rows = []
    for m in state.measurements:
        if m.kind == "ruler":
            rows.append({"measurement": m.name, "kind": m.kind, "plane": m.plane,
                         "slice": m.slice, "length_mm": m.length_mm})
            continue
        st = region_statistics(state, m)
        for lay in st["layers"]:
            rows.append({k: st[k] for k in ("measurement", "kind", "plane", "slice", "voxels",
                                            "area_mm2", "volume_ml")} | lay)
    return rows


def statistics_csv(state: Any) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, STAT_COLUMNS, extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    for r in statistics_rows(state):
        w.writerow({k: ("" if r.get(k) is None else r.get(k)) for k in STAT_COLUMNS})
    return buf.getvalue()


class MeasureMixin:
    """The measurements of a :class:`~bodyage_core.viewer.ViewerState` (not part of a
    session: they belong to the image shown, and go when it does)."""

    measurements: list[Measurement]

    def add_measurement(self, kind: str, plane: str, start, end,
                        slice_index: int | None = None) -> Measurement:
        """A ruler or region from ``start`` to ``end`` (world mm) on the current slice of
        ``plane`` (or ``slice_index``)."""
        self._require_base()
        if kind not in KINDS:
            raise BodyageError(f"unknown measurement {kind!r}", hint=f"use {', '.join(KINDS)}")
        if plane not in PLANES:
            raise BodyageError(f"unknown plane {plane!r}")
        k = self.slice_index(plane) if slice_index is None else int(slice_index)
        m = Measurement(kind, plane, k, np.asarray(start, float).copy(),
                        np.asarray(end, float).copy())
        self.measurements.append(m)
        self.events.measurements_changed.emit()
        return m

    def update_measurement(self, m: Measurement, end) -> None:
        m.end = np.asarray(end, float).copy()
        self.events.measurements_changed.emit()

    def remove_measurement(self, m: Measurement) -> None:
        if m in self.measurements:
            self.measurements.remove(m)
            self.events.measurements_changed.emit()

    def clear_measurements(self) -> None:
        if self.measurements:
            self.measurements.clear()
            self.events.measurements_changed.emit()
