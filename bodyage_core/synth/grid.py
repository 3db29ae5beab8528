"""The synthetic cohort's voxel grids over the UK Biobank neck-to-knee field of view."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from bodyage_core.errors import ConfigError

#: UK Biobank neck-to-knee field of view (x, y, z) mm: 224 x 174 x 370 at 2.232 x 2.232 x 3.0.
FOV_MM = (224 * 2.232, 174 * 2.232, 370 * 3.0)
GRIDS = {
    "default": ((4.464, 4.464, 6.0), (185, 87, 112)),
    "full": ((2.232, 2.232, 3.0), (370, 174, 224)),
}


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
