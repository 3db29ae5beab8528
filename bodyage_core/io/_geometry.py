"""Geometry helpers shared by the loaders: canonical (RAS) reorientation and LPS <-> RAS.

Arrays here are in *index order* ``(x, y, z[, c])`` unless a name says ``zyx``; the public
loaders transpose to the :class:`~bodyage_core.volume.Volume` numpy order ``(C, Z, Y, X)``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from nibabel import orientations as nio

from bodyage_core.qc.image_checks import check_affine
from bodyage_core.volume import Volume, orientation_letters

#: Flip x and y: turns an LPS (DICOM/ITK) affine into an RAS one and back.
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


def canonical_xyz(data_xyz: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Reorient an index-order array to the closest canonical RAS+ frame.

    Same semantics as :func:`nibabel.as_closest_canonical`: axes are only permuted and flipped
    (no resampling), so an oblique image keeps its rotation in the returned affine.

    Parameters
    ----------
    data_xyz
        Array of shape ``(X, Y, Z)`` or ``(X, Y, Z, C)`` (index order).
    affine
        4 x 4 voxel ``(x, y, z)`` -> RAS mm.

    Returns
    -------
    (data_xyz, affine) in RAS+ orientation. ``data_xyz`` may be a view.
    """
    affine = np.asarray(affine, dtype=np.float64)
    ornt = nio.io_orientation(affine)
    if np.array_equal(ornt, [[0, 1], [1, 1], [2, 1]]):
        return data_xyz, affine
    target = nio.axcodes2ornt(("R", "A", "S"))
    transform = nio.ornt_transform(ornt, target)
    shape3 = data_xyz.shape[:3]
    new_data = nio.apply_orientation(data_xyz, transform)
    new_affine = affine @ nio.inv_ornt_aff(transform, shape3)
    return new_data, new_affine


def xyz_to_volume_data(data_xyz: np.ndarray) -> np.ndarray:
    """``(X, Y, Z)`` or ``(X, Y, Z, C)`` -> contiguous ``(C, Z, Y, X)``."""
    if data_xyz.ndim == 3:
        data_xyz = data_xyz[..., None]
    return np.ascontiguousarray(np.transpose(data_xyz, (3, 2, 1, 0)))


def make_volume(data_xyz: np.ndarray, affine_ras: np.ndarray, channels: tuple[str, ...],
                provenance: dict[str, Any], metadata: dict[str, Any] | None = None) -> Volume:
    """Reorient to canonical RAS and wrap as a Volume; records the file's own orientation."""
    check_affine(affine_ras, provenance.get("path"))
    prov = dict(provenance)
    prov.setdefault("orientation", orientation_letters(affine_ras))
    data_xyz, affine = canonical_xyz(data_xyz, affine_ras)
    return Volume(xyz_to_volume_data(data_xyz), affine, channels, prov, dict(metadata or {}))


def sitk_affine_ras(image) -> np.ndarray:
    """Voxel ``(x, y, z)`` -> RAS mm affine of a 3D SimpleITK image (ITK geometry is LPS)."""
    direction = np.asarray(image.GetDirection(), dtype=np.float64).reshape(3, 3)
    spacing = np.asarray(image.GetSpacing(), dtype=np.float64)
    origin = np.asarray(image.GetOrigin(), dtype=np.float64)
    aff = np.eye(4)
    aff[:3, :3] = direction * spacing[None, :]
    aff[:3, 3] = origin
    return LPS_TO_RAS @ aff
