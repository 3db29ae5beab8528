"""How the three planes of the base grid are laid out on screen (Qt-free, tested on asymmetric
volumes in both conventions).

Volumes are :class:`~bodyage_core.volume.Volume`: data ``(C, Z, Y, X)``, affine from voxel
``(x, y, z)`` to RAS mm. Voxel indices are 0-based, numpy order ``(z, y, x)`` unless a name says
``xyz``. A 2D slice is an array ``(rows, cols)``: row 0 is the top of the screen, column 0 the
left. Display coordinates ``(u, v)`` are millimetres from the top-left corner of the slice (u to
the right, v downwards); pixel ``(r, c)`` covers ``u in [c*du, (c+1)*du)``,
``v in [r*dv, (r+1)*dv)``.

Screen directions: axial and coronal views put the subject's right on the screen's left in the
radiological convention (letters ``R`` left, ``L`` right) and on the right in the neurological
one; axial has anterior at the top, coronal and sagittal superior at the top; sagittal has
anterior on the left in both conventions.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from bodyage_core.volume import Volume, orientation_letters

PLANES = ("axial", "coronal", "sagittal")
CONVENTIONS = ("radiological", "neurological")

# world axis index: 0 = x (L->R), 1 = y (P->A), 2 = z (I->S)
_NEG_POS = (("L", "R"), ("P", "A"), ("I", "S"))
# plane -> (normal world axis, horizontal world axis, vertical world axis)
_PLANE_AXES = {"axial": (2, 0, 1), "coronal": (1, 0, 2), "sagittal": (0, 1, 2)}


@dataclass(frozen=True)
class PlaneGeometry:
    """How one plane of the base grid is laid out on screen.

    Attributes
    ----------
    plane
        ``'axial'``, ``'coronal'`` or ``'sagittal'``.
    normal_axis, col_axis, row_axis
        numpy axes (0 = z, 1 = y, 2 = x of the base data) across the plane, along the screen
        columns and along the screen rows.
    flip_cols, flip_rows
        Whether the column / row index runs against the numpy index.
    shape
        ``(rows, cols)`` of the 2D slice.
    pixel_mm
        ``(row_mm, col_mm)``: pixel height and width in millimetres.
    letters
        ``{'left', 'right', 'top', 'bottom'}`` orientation letters of the screen sides.
    """

    plane: str
    normal_axis: int
    col_axis: int
    row_axis: int
    flip_cols: bool
    flip_rows: bool
    shape: tuple[int, int]
    pixel_mm: tuple[float, float]
    letters: dict[str, str] = field(hash=False, compare=False)
    n_slices: int = 1

    @property
    def aspect(self) -> float:
        """Pixel height / pixel width (what a view must keep to show true proportions)."""
        return self.pixel_mm[0] / self.pixel_mm[1]

    @property
    def extent_mm(self) -> tuple[float, float]:
        """``(width, height)`` of the slice in millimetres."""
        return (self.shape[1] * self.pixel_mm[1], self.shape[0] * self.pixel_mm[0])

    def voxel_to_pixel(self, zyx: np.ndarray | tuple) -> tuple[float, float]:
        """Continuous numpy voxel ``(z, y, x)`` -> continuous ``(row, col)`` (pixel centres at
        integers)."""
        zyx = np.asarray(zyx, dtype=float)
        c = zyx[self.col_axis]
        r = zyx[self.row_axis]
        if self.flip_cols:
            c = self.shape[1] - 1 - c
        if self.flip_rows:
            r = self.shape[0] - 1 - r
        return float(r), float(c)

    def pixel_to_voxel(self, row: float, col: float, slice_index: float) -> np.ndarray:
        """Continuous ``(row, col)`` plus the slice index -> numpy voxel ``(z, y, x)``."""
        zyx = np.zeros(3)
        zyx[self.normal_axis] = slice_index
        zyx[self.col_axis] = (self.shape[1] - 1 - col) if self.flip_cols else col
        zyx[self.row_axis] = (self.shape[0] - 1 - row) if self.flip_rows else row
        return zyx

    def pixel_to_display(self, row: float, col: float) -> tuple[float, float]:
        """Pixel centre -> display mm ``(u, v)``."""
        return ((col + 0.5) * self.pixel_mm[1], (row + 0.5) * self.pixel_mm[0])

    def display_to_pixel(self, u: float, v: float) -> tuple[float, float]:
        """Display mm ``(u, v)`` -> continuous ``(row, col)``."""
        return (v / self.pixel_mm[0] - 0.5, u / self.pixel_mm[1] - 0.5)

    def cut(self, data3: np.ndarray, index: int) -> np.ndarray:
        """The ``(rows, cols)`` slice of a ``(Z, Y, X)`` array on the base grid (a view)."""
        sl: list[Any] = [slice(None)] * 3
        sl[self.normal_axis] = int(index)
        two = data3[tuple(sl)]
        rem = [a for a in range(3) if a != self.normal_axis]
        if rem.index(self.row_axis) != 0:
            two = two.T
        if self.flip_rows:
            two = two[::-1, :]
        if self.flip_cols:
            two = two[:, ::-1]
        return two


def _world_axes(affine: np.ndarray) -> tuple[list[int], list[int]]:
    """For each world axis (x, y, z): the numpy axis that runs along it and its sign (+1 when the
    index grows towards R / A / S)."""
    letters = orientation_letters(affine)  # per index axis (x, y, z)
    np_axis = [0, 0, 0]
    sign = [1, 1, 1]
    for j, letter in enumerate(letters):
        for w, (neg, pos) in enumerate(_NEG_POS):
            if letter in (neg, pos):
                np_axis[w] = 2 - j
                sign[w] = 1 if letter == pos else -1
    return np_axis, sign


def plane_geometry(volume: Volume, plane: str, convention: str = "radiological") -> PlaneGeometry:
    """Screen layout of ``plane`` for a volume's grid in a display convention."""
    if plane not in _PLANE_AXES:
        raise ValueError(f"plane must be one of {PLANES}, got {plane!r}")
    if convention not in CONVENTIONS:
        raise ValueError(f"convention must be one of {CONVENTIONS}, got {convention!r}")
    n_w, h_w, v_w = _PLANE_AXES[plane]
    np_axis, sign = _world_axes(volume.affine)
    # screen-right world direction along h, screen-down world direction along v
    if h_w == 0:
        right_dir = -1 if convention == "radiological" else 1
    else:  # sagittal: anterior on the left, posterior on the right
        right_dir = -1
    down_dir = -1  # anterior / superior at the top
    col_axis, row_axis = np_axis[h_w], np_axis[v_w]
    flip_cols = sign[h_w] != right_dir
    flip_rows = sign[v_w] != down_dir
    shape_zyx = volume.shape
    sp = volume.spacing_zyx
    letters = {
        "right": _NEG_POS[h_w][1 if right_dir > 0 else 0],
        "left": _NEG_POS[h_w][0 if right_dir > 0 else 1],
        "bottom": _NEG_POS[v_w][0],
        "top": _NEG_POS[v_w][1],
    }
    return PlaneGeometry(plane, np_axis[n_w], col_axis, row_axis, flip_cols, flip_rows,
                         (shape_zyx[row_axis], shape_zyx[col_axis]),
                         (float(sp[row_axis]), float(sp[col_axis])), letters,
                         shape_zyx[np_axis[n_w]])


@dataclass
class SliceImage:
    """A 2D slice ready to draw: ``array`` ``(rows, cols)`` raw values (NaN outside a resampled
    layer), its :class:`PlaneGeometry` and the slice index on the base grid."""

    array: np.ndarray
    geometry: PlaneGeometry
    index: int

    @property
    def letters(self) -> dict[str, str]:
        return self.geometry.letters

    @property
    def aspect(self) -> float:
        return self.geometry.aspect

    @property
    def pixel_mm(self) -> tuple[float, float]:
        return self.geometry.pixel_mm


def world_bounds(volume: Volume) -> tuple[np.ndarray, np.ndarray]:
    """The world box (RAS mm, lower and upper corners) the volume's voxels cover."""
    s = np.array(volume.shape) - 1
    corners = np.array([[a, b, c] for a in (-0.5, s[0] + 0.5) for b in (-0.5, s[1] + 0.5)
                        for c in (-0.5, s[2] + 0.5)])
    w = volume.voxel_to_world(corners)
    return w.min(axis=0), w.max(axis=0)


def fmt_box(lo: np.ndarray, hi: np.ndarray) -> str:
    return "[" + ", ".join(f"{a:.0f}..{b:.0f}" for a, b in zip(lo, hi)) + "]"
