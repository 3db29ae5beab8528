"""The one image type every loader returns and every stage passes around.

Array convention (say it at every public boundary):

* ``Volume.data`` is a numpy array of shape ``(C, Z, Y, X)``: channel first, then the numpy
  index order ``z, y, x`` (slowest to fastest), as SimpleITK's ``GetArrayFromImage`` gives it.
* ``Volume.affine`` is a 4 x 4 matrix mapping a voxel index given as ``(x, y, z, 1)`` (0-based,
  *reversed* numpy order, i.e. the NIfTI/ITK index order) to world millimetres in **RAS+**
  (x grows to the subject's Right, y to Anterior, z to Superior).

:meth:`Volume.voxel_to_world` and :meth:`Volume.world_to_voxel` take and return numpy order
``(z, y, x)`` indices so callers never juggle the two orders themselves.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

_AXIS_LETTERS = (("L", "R"), ("P", "A"), ("I", "S"))


@dataclass
class Volume:
    """An image (one or more channels on one grid) with its geometry and provenance.

    Parameters
    ----------
    data
        ``(C, Z, Y, X)`` array. A 3D ``(Z, Y, X)`` array is accepted and gets one channel.
    affine
        4 x 4 voxel ``(x, y, z)`` to RAS mm matrix.
    channels
        One name per channel, e.g. ``("water", "fat")`` or ``("t1",)``.
    provenance
        Where it came from (``path``, ``format``, original orientation, reader notes ...).
    metadata
        Subject facts read from the file when present (``age``, ``sex`` from DICOM headers).
    """

    data: np.ndarray
    affine: np.ndarray
    channels: tuple[str, ...] = ("image",)
    provenance: dict[str, Any] = field(default_factory=dict)
    metadata: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        data = np.asarray(self.data)
        if data.ndim == 3:
            data = data[None]
        if data.ndim != 4:
            raise ValueError(f"Volume data must be (C, Z, Y, X) or (Z, Y, X), got {data.shape}")
        self.data = data
        self.affine = np.asarray(self.affine, dtype=np.float64).reshape(4, 4)
        chans = tuple(self.channels)
        if len(chans) != data.shape[0]:
            if len(chans) == 1 and data.shape[0] > 1:
                chans = tuple(f"{chans[0]}{i}" for i in range(data.shape[0]))
            else:
                raise ValueError(f"{len(chans)} channel names for {data.shape[0]} channels")
        self.channels = chans

    # -- shape and geometry -------------------------------------------------------------------
    @property
    def shape(self) -> tuple[int, int, int]:
        """Spatial shape in numpy order ``(Z, Y, X)``."""
        return tuple(int(s) for s in self.data.shape[1:])  # type: ignore[return-value]

    @property
    def n_channels(self) -> int:
        return int(self.data.shape[0])

    @property
    def spacing(self) -> tuple[float, float, float]:
        """Voxel size in mm along the index axes, in ``(x, y, z)`` index order."""
        return tuple(float(v) for v in np.linalg.norm(self.affine[:3, :3], axis=0))  # type: ignore

    @property
    def spacing_zyx(self) -> tuple[float, float, float]:
        """Voxel size in mm in numpy order ``(z, y, x)``."""
        sx, sy, sz = self.spacing
        return (sz, sy, sx)

    @property
    def orientation(self) -> str:
        """Three letters: the world direction each index axis ``(x, y, z)`` points to ('RAS')."""
        return orientation_letters(self.affine)

    @property
    def is_oblique(self) -> bool:
        """True when the index axes are rotated away from the world axes (by > 0.1 degree)."""
        m = self.affine[:3, :3] / np.linalg.norm(self.affine[:3, :3], axis=0)
        return bool(np.max(np.abs(np.abs(m).max(axis=0) - 1.0)) > 1.5e-6)

    def channel(self, name_or_index: str | int = 0) -> np.ndarray:
        """One channel as a ``(Z, Y, X)`` array (a view, not a copy)."""
        if isinstance(name_or_index, str):
            if name_or_index not in self.channels:
                raise KeyError(f"no channel {name_or_index!r}; channels are {self.channels}")
            return self.data[self.channels.index(name_or_index)]
        return self.data[name_or_index]

    @property
    def array(self) -> np.ndarray:
        """The first channel, ``(Z, Y, X)``."""
        return self.data[0]

    def voxel_to_world(self, zyx: np.ndarray | tuple) -> np.ndarray:
        """Map voxel indices in numpy order ``(..., 3)`` as ``(z, y, x)`` to RAS mm ``(..., 3)``."""
        zyx = np.asarray(zyx, dtype=np.float64)
        xyz = zyx[..., ::-1]
        return xyz @ self.affine[:3, :3].T + self.affine[:3, 3]

    def world_to_voxel(self, ras: np.ndarray | tuple) -> np.ndarray:
        """Map RAS mm ``(..., 3)`` to continuous voxel indices in numpy order ``(z, y, x)``."""
        ras = np.asarray(ras, dtype=np.float64)
        inv = np.linalg.inv(self.affine)
        xyz = ras @ inv[:3, :3].T + inv[:3, 3]
        return xyz[..., ::-1]

    def contains_voxel(self, zyx: np.ndarray | tuple) -> bool:
        idx = np.round(np.asarray(zyx, dtype=float)).astype(int)
        return bool(np.all(idx >= 0) and np.all(idx < np.array(self.shape)))

    def same_grid(self, other: Volume, atol: float = 1e-3) -> bool:
        """True when ``other`` has the same spatial shape and affine (within ``atol`` mm)."""
        return self.shape == other.shape and np.allclose(self.affine, other.affine, atol=atol)

    def with_data(self, data: np.ndarray, channels: tuple[str, ...] | None = None,
                  **provenance: Any) -> Volume:
        """A new Volume on the same grid with other data (e.g. a map computed from this one)."""
        prov = dict(self.provenance)
        prov.update(provenance)
        return replace(self, data=data, channels=channels or self.channels, provenance=prov)

    def describe(self) -> dict[str, Any]:
        """The facts ``bodyage info`` prints."""
        finite = self.data[np.isfinite(self.data)] if self.data.dtype.kind == "f" else self.data
        return {
            "shape_zyx": list(self.shape),
            "channels": list(self.channels),
            "spacing_xyz_mm": [round(s, 4) for s in self.spacing],
            "orientation": self.orientation,
            "oblique": self.is_oblique,
            "dtype": str(self.data.dtype),
            "value_range": [float(finite.min()), float(finite.max())] if finite.size else None,
            "origin_mm": [round(float(v), 3) for v in self.affine[:3, 3]],
            "metadata": dict(self.metadata),
            "provenance": {k: v for k, v in self.provenance.items() if _jsonable(v)},
        }


def orientation_letters(affine: np.ndarray) -> str:
    """Closest world direction ('R', 'A', 'S', 'L', 'P', 'I') of each index axis ``(x, y, z)``."""
    m = np.asarray(affine, dtype=float)[:3, :3]
    letters = []
    used: set[int] = set()
    norms = np.linalg.norm(m, axis=0)
    norms[norms == 0] = 1.0
    m = m / norms
    # Greedy by strength so an oblique affine still yields a permutation of the three axes.
    order = np.argsort(-np.abs(m).max(axis=0))
    result: dict[int, str] = {}
    for col in order:
        comp = np.abs(m[:, col]).copy()
        for u in used:
            comp[u] = -1
        row = int(np.argmax(comp))
        used.add(row)
        result[int(col)] = _AXIS_LETTERS[row][1 if m[row, col] > 0 else 0]
    for col in range(3):
        letters.append(result[col])
    return "".join(letters)


def _jsonable(v: Any) -> bool:
    return isinstance(v, (str, int, float, bool, type(None), list, tuple))
