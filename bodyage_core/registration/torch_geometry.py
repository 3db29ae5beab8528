"""Geometry between the torch engine and the :class:`SubjectTransform` files.

The engine works in ``grid_sample`` normalised coordinates (``align_corners=True``: -1 and +1
are the first and last voxel centres; components x, y, z, the Volume's voxel index order). A
subject transform maps reference points to subject points, ``T(p) = A(p + u(p))``; in
normalised terms the engine samples the subject at ``Theta (g + d(g))``, ``g`` a reference
voxel, ``d`` the displacement in reference normalised units and ``Theta`` the affine ``A``
seen from reference normalised to subject normalised coordinates. Everything here converts
between those and RAS / LPS millimetres (``p_lps = F p_ras``, ``F = diag(-1, -1, 1)``).
"""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk
import torch

from bodyage_core.registration.convert import reference_image
from bodyage_core.registration.transform import array_to_field

_F4 = np.diag([-1.0, -1.0, 1.0, 1.0])


def half_extent_voxels(shape_zyx) -> np.ndarray:
    """Voxels per normalised unit along x, y, z (``(n - 1) / 2``; 1 for a one-voxel axis,
    where any scale is as good and 0 would not invert)."""
    return np.array([max(int(n) - 1, 1) / 2.0 for n in tuple(shape_zyx)[::-1]])


def normalised_to_voxel(shape_zyx) -> np.ndarray:
    """4 x 4: normalised (x, y, z) -> voxel index (x, y, z) of a grid."""
    s = half_extent_voxels(shape_zyx)
    m = np.eye(4)
    m[:3, :3] = np.diag(s)
    m[:3, 3] = s
    return m


def normalised_to_world(shape_zyx, affine) -> np.ndarray:
    """4 x 4: normalised coordinates of a grid -> RAS mm."""
    return np.asarray(affine, dtype=np.float64) @ normalised_to_voxel(shape_zyx)


def normalised_to_mm(shape_zyx, affine) -> np.ndarray:
    """3 x 3: a normalised displacement (components x, y, z) on a grid -> RAS millimetres."""
    return np.asarray(affine, dtype=np.float64)[:3, :3] @ np.diag(half_extent_voxels(shape_zyx))


def mm_per_normalised(shape_zyx, affine) -> np.ndarray:
    """Millimetres per normalised unit along the grid's x, y, z voxel axes."""
    spacing = np.linalg.norm(np.asarray(affine, dtype=np.float64)[:3, :3], axis=0)
    return half_extent_voxels(shape_zyx) * spacing


def affine_to_itk(m_ras: np.ndarray) -> sitk.AffineTransform:
    """A 4 x 4 RAS point map (reference -> subject) as the ITK (LPS) affine of the transform
    files: ``F M F`` (``F`` is its own inverse), centre at the origin."""
    m = _F4 @ np.asarray(m_ras, dtype=np.float64) @ _F4
    tx = sitk.AffineTransform(3)
    tx.SetMatrix(tuple(m[:3, :3].ravel()))
    tx.SetTranslation(tuple(m[:3, 3]))
    return tx


def affine_from_itk(tx: sitk.AffineTransform) -> np.ndarray:
    """The 4 x 4 RAS point map of an ITK (LPS) affine (inverse of :func:`affine_to_itk`)."""
    mat = np.array(tx.GetMatrix()).reshape(3, 3)
    c = np.array(tx.GetCenter())
    m = np.eye(4)
    m[:3, :3] = mat
    m[:3, 3] = np.array(tx.GetTranslation()) + c - mat @ c
    return _F4 @ m @ _F4


def field_to_itk(disp: torch.Tensor, shape_zyx, affine) -> sitk.Image:
    """One normalised displacement ``(3, Z, Y, X)`` (components x, y, z) on the reference grid
    as the ITK vector image of the transform files (LPS mm, VectorFloat64)."""
    k = _F4[:3, :3] @ normalised_to_mm(shape_zyx, affine)
    d = disp.detach().to("cpu", torch.float64).numpy()
    lps = np.einsum("ij,jzyx->zyxi", k, d)
    return array_to_field(lps, reference_image((tuple(shape_zyx), affine)))


def field_from_itk(img: sitk.Image, shape_zyx, affine) -> np.ndarray:
    """An ITK (LPS mm) displacement on the reference grid as normalised ``(3, Z, Y, X)``."""
    k = _F4[:3, :3] @ normalised_to_mm(shape_zyx, affine)
    lps = sitk.GetArrayFromImage(img).astype(np.float64)
    return np.einsum("ij,zyxj->izyx", np.linalg.inv(k), lps)
