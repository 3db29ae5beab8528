"""The cursor: one point in world millimetres (RAS) that every view follows, clamped to the base
volume, and stepping it slice by slice (FSLeyes' ``DisplayContext.location``).

:class:`CursorMixin` is one part of :class:`~bodyage_core.viewer.ViewerState`.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from bodyage_core.errors import BodyageError
from bodyage_core.volume import Volume


class CursorMixin:
    """Cursor of a :class:`~bodyage_core.viewer.ViewerState`."""

    _cursor: np.ndarray

    @property
    def cursor(self) -> np.ndarray:
        """Cursor position in world mm (RAS), a copy."""
        return self._cursor.copy()

    def set_cursor(self, ras: Iterable[float]) -> None:
        """Move the cursor to world mm ``(x, y, z)`` RAS, clamped to the base volume."""
        ras = np.asarray(list(ras), dtype=float).reshape(3)
        if self._base is not None:
            vol = self._base.volume
            zyx = vol.world_to_voxel(ras)
            clamped = np.clip(zyx, 0, np.array(vol.shape) - 1)
            if not np.allclose(clamped, zyx):
                ras = vol.voxel_to_world(clamped)
        if np.allclose(ras, self._cursor, atol=1e-9):
            return
        self._cursor = ras
        self.events.cursor_changed.emit(self.cursor)

    def set_cursor_voxel(self, zyx: Iterable[float]) -> None:
        """Move the cursor to a voxel ``(z, y, x)`` (0-based, numpy order) of the base grid."""
        self._require_base()
        self.set_cursor(self._base.volume.voxel_to_world(np.asarray(list(zyx), dtype=float)))

    def cursor_voxel(self) -> tuple[int, int, int]:
        """Nearest base-grid voxel ``(z, y, x)`` of the cursor."""
        self._require_base()
        key = (self._base.id, tuple(self._cursor))
        if self._cursor_voxel_cache is not None and self._cursor_voxel_cache[0] == key:
            return self._cursor_voxel_cache[1]
        zyx = np.round(self._base.volume.world_to_voxel(self._cursor)).astype(int)
        zyx = np.clip(zyx, 0, np.array(self._base.volume.shape) - 1)
        out = tuple(int(v) for v in zyx)
        self._cursor_voxel_cache = (key, out)
        return out  # type: ignore[return-value]

    def slice_index(self, plane: str) -> int:
        """Index of the slice shown in ``plane`` (along its numpy normal axis)."""
        return self.cursor_voxel()[self.geometry(plane).normal_axis]

    def step_slice(self, plane: str, steps: int) -> None:
        """Move the cursor ``steps`` slices along the plane normal (towards S / A / L-or-R as
        the index grows), clamped to the volume."""
        self._require_base()
        geom = self.geometry(plane)
        zyx = self._base.volume.world_to_voxel(self._cursor)
        k = int(np.clip(round(zyx[geom.normal_axis]) + int(steps), 0, geom.n_slices - 1))
        zyx[geom.normal_axis] = k
        self.set_cursor(self._base.volume.voxel_to_world(zyx))

    def _require_base(self) -> None:
        if self._base is None:
            raise BodyageError("no image is open", hint="open a NIfTI file or a workspace first")

    @staticmethod
    def _centre(volume: Volume) -> np.ndarray:
        return volume.voxel_to_world((np.array(volume.shape) - 1) // 2)
