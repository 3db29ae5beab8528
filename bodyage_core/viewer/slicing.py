"""Cutting the 2D slices the views draw, on the base grid, and the mapping between a view's
display millimetres and the world (napari's layer slicing).

:class:`SlicingMixin` is one part of :class:`~bodyage_core.viewer.ViewerState`; it keeps the
plane geometries and the last resampled slices of layers on other grids in caches.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from bodyage_core.viewer.geometry import PlaneGeometry, SliceImage, plane_geometry
from bodyage_core.viewer.layers import Layer
from bodyage_core.viewer.resample import resample_slice

#: Resampled slices kept per state (oldest dropped first).
RESAMPLE_CACHE_SIZE = 64


class SlicingMixin:
    """Plane geometry and slices of a :class:`~bodyage_core.viewer.ViewerState`."""

    _geom_cache: dict[tuple[str, str, int], PlaneGeometry]
    _resample_cache: dict[tuple, np.ndarray]

    def geometry(self, plane: str) -> PlaneGeometry:
        """The :class:`PlaneGeometry` of ``plane`` on the base grid in the current convention."""
        self._require_base()
        key = (plane, self._convention, self._base.id)
        g = self._geom_cache.get(key)
        if g is None:
            g = plane_geometry(self._base.volume, plane, self._convention)
            self._geom_cache[key] = g
        return g

    def slice_for_view(self, layer: Layer, plane: str,
                       cursor: Iterable[float] | None = None) -> SliceImage:
        """The 2D slice of ``layer`` in ``plane`` through ``cursor`` (default: the state's).

        Returns raw values ``(rows, cols)`` oriented for display (row 0 at the top), on the base
        grid; a layer on another grid is resampled (nearest neighbour) with NaN outside it.
        """
        self._require_base()
        geom = self.geometry(plane)
        if cursor is None:
            k = self.slice_index(plane)
        else:
            zyx = self._base.volume.world_to_voxel(np.asarray(list(cursor), dtype=float))
            k = int(np.clip(round(zyx[geom.normal_axis]), 0, geom.n_slices - 1))
        if not layer.resampled:
            return SliceImage(geom.cut(layer.data, k), geom, k)
        key = (layer.id, layer.channel, plane, self._convention, k)
        arr = self._resample_cache.get(key)
        if arr is None:
            arr = self._resample_slice(layer, geom, k)
            if len(self._resample_cache) > RESAMPLE_CACHE_SIZE:
                self._resample_cache.pop(next(iter(self._resample_cache)))
            self._resample_cache[key] = arr
        return SliceImage(arr, geom, k)

    def _resample_slice(self, layer: Layer, geom: PlaneGeometry, k: int) -> np.ndarray:
        return resample_slice(self._base.volume, layer.volume, layer.channel, geom, k)

    def display_to_world(self, plane: str, u: float, v: float) -> np.ndarray:
        """Display mm ``(u, v)`` in ``plane`` (at the current slice) -> world mm RAS."""
        geom = self.geometry(plane)
        row, col = geom.display_to_pixel(u, v)
        zyx = geom.pixel_to_voxel(row, col, self.slice_index(plane))
        return self._base.volume.voxel_to_world(zyx)

    def world_to_display(self, plane: str, ras: Iterable[float]) -> tuple[float, float]:
        """World mm -> display mm ``(u, v)`` in ``plane``."""
        geom = self.geometry(plane)
        zyx = self._base.volume.world_to_voxel(np.asarray(list(ras), dtype=float))
        row, col = geom.voxel_to_pixel(zyx)
        return geom.pixel_to_display(row, col)
