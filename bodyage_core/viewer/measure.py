"""Measurements on the slices (Qt-free): a ruler (distance in mm), box / ellipse regions and
label regions, with the statistics of every layer inside them (ITK-SNAP's and FSLeyes' ROI
statistics).

A label region is every voxel of one label of a label map, in 3D (``plane`` ``'3d'``, no slice):
its volume is their number times the label map's voxel volume, and each visible layer is
sampled at their centres (nearest neighbour) — the liver's volume, mean and SD in one step.

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
LABEL = "label"
_ids = itertools.count(1)
STAT_COLUMNS = ("measurement", "kind", "plane", "slice", "length_mm", "area_mm2", "voxels",
                "volume_ml", "layer", "channel", "n", "mean", "sd", "min", "max")


@dataclass
class Measurement:
    """A ruler or a region: ``kind``, ``plane``, the base-grid ``slice`` index and its two
    corner points ``start`` / ``end`` in world mm."""

    kind: str
    plane: str
    slice: int | None
    start: np.ndarray
    end: np.ndarray
    id: int = field(default_factory=lambda: next(_ids))
    #: a label region: the label map's layer name, the label id and its name ('' unnamed)
    label_layer: str = ""
    label: int | None = None
    label_name: str = ""

    @property
    def name(self) -> str:
        if self.kind == LABEL:
            what = f"{self.label} {self.label_name}".strip()
            return f"label {self.id} ({self.label_layer}: {what})"
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


def _label_grid_and_mask(state: Any, m: Measurement) -> tuple[Any, np.ndarray]:
    """The label map's volume and the mask of a label region's voxels on its own grid."""
    try:
        lab = state.layer(m.label_layer)
    except KeyError:
        raise BodyageError(f"the label map {m.label_layer!r} of {m.name} is no longer open",
                           hint="delete the measurement") from None
    return lab.volume, np.asarray(lab.data) == m.label


def region_statistics(state: Any, m: Measurement) -> dict[str, Any]:
    """Voxels, area, volume (ml) and per visible layer ``n, mean, sd, min, max``."""
    if m.kind == "ruler":
        raise BodyageError("a ruler has no region statistics")
    base = state.base_layer.volume
    if m.kind == LABEL:     # every voxel of the label, on the label map's grid
        grid, mask = _label_grid_and_mask(state, m)
        area = None
    else:
        grid, mask = base, region_mask(state, m)
        geom = state.geometry(m.plane)
    n = int(mask.sum())
    voxel_mm3 = float(np.prod(grid.spacing_zyx))
    if m.kind != LABEL:
        area = n * geom.pixel_mm[0] * geom.pixel_mm[1]
    layers = []
    world = None
    for lay in state.layers:
        if not lay.visible:
            continue
        if not lay.volume.same_grid(grid):
            if world is None:
                world = grid.voxel_to_world(np.argwhere(mask).astype(float))
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
            "voxels": n, "area_mm2": area, "volume_ml": n * voxel_mm3 / 1000.0,
            "layers": layers}


def statistics_rows(state: Any) -> list[dict[str, Any]]:
    """One row per ruler, and per region and visible layer (the table and the CSV)."""
    rows = []
    for m in state.measurements:
        if m.kind == "ruler":
            rows.append({"measurement": m.name, "kind": m.kind, "plane": m.plane,
                         "slice": m.slice, "length_mm": m.length_mm})
            continue
        try:
            st = region_statistics(state, m)
        except BodyageError:        # a label region whose label map was closed
            rows.append({"measurement": m.name, "kind": m.kind, "plane": m.plane})
            continue
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

    def add_label_region(self, layer: Any = None, label: int | None = None) -> Measurement:
        """A label region: every voxel of ``label`` in the label map ``layer`` (a Layer or a
        name; default the active layer when it is a label map, else the top visible one), and
        by default the label under the cursor. Its statistics: volume (ml) and the mean, SD,
        min and max of every visible layer over those voxels."""
        self._require_base()
        if layer is None:
            act = self.active_layer
            cands = [act] if act is not None and act.kind == "labels" else []
            cands += [x for x in reversed(self.layers) if x.kind == "labels" and x.visible]
            cands += [x for x in reversed(self.layers) if x.kind == "labels"]
            if not cands:
                raise BodyageError("no label map is open",
                                   hint="File > Add overlay: a label map (integer ids)")
            lay = cands[0]
        else:
            lay = layer if not isinstance(layer, str) else self.layer(layer)
        if lay.kind != "labels":
            raise BodyageError(f"{lay.name} is not a label map")
        if label is None:
            v = sample_nearest(lay.volume, lay.channel, np.asarray([self.cursor], float))
            label = int(v[0]) if v.size and np.isfinite(v[0]) else 0
            if label == 0:
                raise BodyageError(f"no label of {lay.name} under the cursor",
                                   hint="click inside an organ (or label) first")
        label = int(label)
        if not np.any(np.asarray(lay.data) == label):
            raise BodyageError(f"{lay.name} has no voxel of label {label}")
        c = np.asarray(self.cursor, float).copy()
        m = Measurement(LABEL, "3d", None, c, c.copy(), label_layer=lay.name, label=label,
                        label_name=str((lay.label_names or {}).get(label, "")))
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
