"""The lightbox (mosaic) of one plane and the display interpolation (Qt-free).

A lightbox shows ``rows x columns`` slices of one plane, every ``spacing`` slices, centred on
the cursor's slice and kept inside the volume (FSLeyes' lightbox, ITK-SNAP's thumbnails);
``spacing = 0`` spreads the tiles over the whole volume. Each tile is cut like a slice view (all
visible layers, overlays included), so the tiles and the views agree voxel for voxel.

Interpolation is how slices are *drawn*: ``'nearest'`` (each voxel a block) or ``'linear'``
(smoothed between voxel centres). Readouts and statistics always use the voxels themselves.

:class:`DisplayOptionsMixin` is one part of :class:`~bodyage_core.viewer.ViewerState`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from bodyage_core.errors import BodyageError
from bodyage_core.viewer.camera import check_choice
from bodyage_core.viewer.geometry import PLANES

INTERPOLATIONS = ("nearest", "linear")
MAX_TILES = 100


@dataclass
class LightboxSettings:
    """Plane, grid of tiles and the slice step between tiles (0: over the whole volume)."""

    plane: str = "axial"
    rows: int = 3
    columns: int = 4
    spacing: int = 0

    def checked(self) -> LightboxSettings:
        check_choice(self.plane, PLANES, "lightbox plane")
        rows, cols, spacing = int(self.rows), int(self.columns), int(self.spacing)
        if rows < 1 or cols < 1 or rows * cols > MAX_TILES:
            raise BodyageError(f"lightbox of {rows} x {cols} tiles",
                               hint=f"use 1 to {MAX_TILES} tiles in all")
        if spacing < 0:
            raise BodyageError(f"lightbox slice spacing {spacing}", hint="use 0 (whole volume) "
                               "or a step of 1 slice or more")
        return LightboxSettings(self.plane, rows, cols, spacing)

    def to_dict(self) -> dict:
        return asdict(self)


def lightbox_slices(n_slices: int, tiles: int, spacing: int, centre: int) -> list[int]:
    """The slice indices of the tiles: ``tiles`` slices ``spacing`` apart (0: spread evenly
    over ``n_slices``), centred on ``centre`` and shifted to stay within ``0..n_slices-1``;
    fewer when the volume has fewer slices than tiles."""
    n_slices = max(1, int(n_slices))
    tiles = max(1, int(tiles))
    if spacing <= 0:
        if tiles >= n_slices:
            return list(range(n_slices))
        # evenly over the volume, the first and last tile half a step from the ends
        step = n_slices / tiles
        return [int(min(n_slices - 1, np.floor((i + 0.5) * step))) for i in range(tiles)]
    step = int(spacing)
    count = min(tiles, (n_slices - 1) // step + 1)
    first = int(centre) - (count // 2) * step
    first = max(0, min(first, n_slices - 1 - (count - 1) * step))
    return [first + i * step for i in range(count)]


class DisplayOptionsMixin:
    """Interpolation and lightbox settings of a :class:`~bodyage_core.viewer.ViewerState`."""

    _interpolation: str
    lightbox: LightboxSettings

    @property
    def interpolation(self) -> str:
        return self._interpolation

    def set_interpolation(self, mode: str) -> None:
        mode = check_choice(mode, INTERPOLATIONS, "interpolation")
        if mode != self._interpolation:
            self._interpolation = mode
            self.events.interpolation_changed.emit(mode)

    def set_lightbox(self, **values) -> LightboxSettings:
        """Change the lightbox (``plane``, ``rows``, ``columns``, ``spacing``); checked."""
        new = LightboxSettings(**{**self.lightbox.to_dict(), **values}).checked()
        if new != self.lightbox:
            self.lightbox = new
            self.events.lightbox_changed.emit(new)
        return new

    def lightbox_slices(self) -> list[int]:
        """Slice indices (on the base grid) of the lightbox tiles, in reading order."""
        self._require_base()
        lb = self.lightbox
        geom = self.geometry(lb.plane)
        return lightbox_slices(geom.n_slices, lb.rows * lb.columns, lb.spacing,
                               self.slice_index(lb.plane))

    def slice_position_mm(self, plane: str, index: int) -> float:
        """The world coordinate (mm, along the plane's world axis: x, y or z) of slice
        ``index`` of ``plane``, at the cursor."""
        self._require_base()
        geom = self.geometry(plane)
        vol = self._base.volume
        zyx = np.asarray(vol.world_to_voxel(self._cursor), float)
        zyx[geom.normal_axis] = index
        axis = {"sagittal": 0, "coronal": 1, "axial": 2}[plane]
        return float(vol.voxel_to_world(zyx)[axis])
