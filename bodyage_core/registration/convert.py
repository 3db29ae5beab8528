"""Conversions between :class:`~bodyage_core.volume.Volume` (RAS, numpy ``(C, Z, Y, X)``) and
SimpleITK images (LPS, index ``(x, y, z)``), plus small NIfTI read/write helpers.

Geometry
--------
``Volume.affine`` maps a voxel ``(x, y, z)`` to RAS mm. ITK describes the same grid in LPS:
``p_lps = F @ p_ras`` with ``F = diag(-1, -1, 1)``. So the ITK direction is ``F @ M / spacing``
(``M`` the 3 x 3 part of the affine), the ITK origin is ``F @ t``. The numpy array of an ITK image
(``GetArrayFromImage``) is already in ``(z, y, x)`` order, the Volume's order, so no transposes.

Transforms and displacement fields produced by this package follow ITK conventions: they live in
LPS millimetres and map points of the *fixed* (reference / atlas) space to the moving (subject)
space.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import SimpleITK as sitk

from bodyage_core.atomic import atomic_path
from bodyage_core.errors import LoadError
from bodyage_core.volume import Volume

_FLIP = np.diag([-1.0, -1.0, 1.0])


# -- geometry ---------------------------------------------------------------------------------
def affine_to_itk_geometry(affine: np.ndarray) -> tuple[tuple, tuple, tuple]:
    """``(origin, spacing, direction)`` in ITK (LPS) terms for a voxel(x,y,z)->RAS affine."""
    a = np.asarray(affine, dtype=np.float64)
    m = a[:3, :3]
    spacing = np.linalg.norm(m, axis=0)
    if np.any(spacing <= 0):
        raise ValueError(f"degenerate affine (zero voxel size): {a.tolist()}")
    direction = _FLIP @ (m / spacing)
    origin = _FLIP @ a[:3, 3]
    return tuple(origin.tolist()), tuple(spacing.tolist()), tuple(direction.ravel().tolist())


def itk_geometry_to_affine(origin, spacing, direction) -> np.ndarray:
    """Inverse of :func:`affine_to_itk_geometry`: a 4 x 4 voxel(x,y,z)->RAS affine."""
    d = np.asarray(direction, dtype=np.float64).reshape(3, 3)
    a = np.eye(4)
    a[:3, :3] = _FLIP @ d @ np.diag(np.asarray(spacing, dtype=np.float64))
    a[:3, 3] = _FLIP @ np.asarray(origin, dtype=np.float64)
    return a


def _apply_geometry(img: sitk.Image, affine: np.ndarray) -> sitk.Image:
    origin, spacing, direction = affine_to_itk_geometry(affine)
    img.SetOrigin(origin)
    img.SetSpacing(spacing)
    img.SetDirection(direction)
    return img


def array_to_sitk(array: np.ndarray, affine: np.ndarray, dtype=None) -> sitk.Image:
    """A ``(Z, Y, X)`` numpy array on the grid of ``affine`` as a SimpleITK image."""
    arr = np.asarray(array)
    if dtype is not None:
        arr = arr.astype(dtype, copy=False)
    elif arr.dtype == np.float16 or arr.dtype == bool:
        arr = arr.astype(np.float32 if arr.dtype == np.float16 else np.uint8)
    img = sitk.GetImageFromArray(np.ascontiguousarray(arr))
    return _apply_geometry(img, affine)


def volume_to_sitk(volume: Volume, channel: str | int | None = 0, dtype=None) -> sitk.Image:
    """One channel of ``volume`` (default the first) as a SimpleITK image in LPS.

    ``channel=None`` returns all channels as a vector image (component = channel).
    """
    if channel is None:
        arr = np.moveaxis(np.asarray(volume.data), 0, -1)
        if dtype is not None:
            arr = arr.astype(dtype, copy=False)
        img = sitk.GetImageFromArray(np.ascontiguousarray(arr), isVector=True)
        return _apply_geometry(img, volume.affine)
    return array_to_sitk(volume.channel(channel), volume.affine, dtype=dtype)


def sitk_affine(img: sitk.Image) -> np.ndarray:
    """The voxel(x,y,z)->RAS affine of a SimpleITK image."""
    return itk_geometry_to_affine(img.GetOrigin(), img.GetSpacing(), img.GetDirection())


def sitk_to_volume(img: sitk.Image | list[sitk.Image],
                   channels: tuple[str, ...] | None = None, **provenance) -> Volume:
    """A SimpleITK image (scalar, vector, or a list of scalar images on one grid) as a Volume."""
    imgs = img if isinstance(img, (list, tuple)) else [img]
    arrays = []
    for im in imgs:
        a = sitk.GetArrayFromImage(im)
        if im.GetNumberOfComponentsPerPixel() > 1:
            arrays.extend(np.moveaxis(a, -1, 0))
        else:
            arrays.append(a)
    data = np.stack(arrays, axis=0)
    if channels is None:
        channels = ("image",) if data.shape[0] == 1 else tuple(f"c{i}" for i in range(len(data)))
    return Volume(data, sitk_affine(imgs[0]), channels=tuple(channels),
                  provenance=dict(provenance))


def grid_of(obj) -> tuple[tuple[int, int, int], np.ndarray]:
    """``(shape_zyx, affine)`` of a Volume, a SimpleITK image or a ``(shape, affine)`` pair."""
    if isinstance(obj, Volume):
        return obj.shape, obj.affine
    if isinstance(obj, sitk.Image):
        return tuple(int(s) for s in obj.GetSize()[::-1]), sitk_affine(obj)
    shape, affine = obj
    return tuple(int(s) for s in shape), np.asarray(affine, dtype=np.float64)


def reference_image(grid) -> sitk.Image:
    """An empty SimpleITK image with the grid of ``grid`` (see :func:`grid_of`)."""
    shape, affine = grid_of(grid)
    img = sitk.Image([int(s) for s in shape[::-1]], sitk.sitkUInt8)
    return _apply_geometry(img, affine)


# -- NIfTI I/O --------------------------------------------------------------------------------
def read_nifti(path: str | Path, channels: tuple[str, ...] | None = None,
               labels: bool = False) -> Volume:
    """Read a NIfTI (3D, or 4D with channels last) as a Volume, keeping the file's affine.

    Floats become float32; with ``labels=True`` integers are kept (rounded if stored as floats).
    """
    import nibabel as nib

    path = Path(path)
    if not path.exists():
        raise LoadError("file not found", path=path,
                        hint="run the stage that writes it first, or fix the path in the cohort")
    try:
        img = nib.load(str(path))
        arr = np.asanyarray(img.dataobj)
    except Exception as exc:  # noqa: BLE001 - turned into a user-facing error
        raise LoadError(f"cannot read as NIfTI ({exc})", path=path,
                        hint="check the file is a complete .nii/.nii.gz") from exc
    while arr.ndim > 4 and arr.shape[3] == 1:
        arr = arr[:, :, :, 0]
    if arr.ndim == 3:
        arr = arr[..., None]
    if arr.ndim != 4:
        raise LoadError(f"expected a 3D or 4D image, got shape {arr.shape}", path=path)
    data = np.transpose(arr, (3, 2, 1, 0))
    if labels:
        if data.dtype.kind == "f":
            data = np.rint(data).astype(np.int32)
    else:
        data = data.astype(np.float32, copy=False)
    if channels is None or len(channels) != data.shape[0]:
        channels = ("image",) if data.shape[0] == 1 else tuple(f"c{i}" for i in range(len(data)))
    return Volume(np.ascontiguousarray(data), img.affine, channels=tuple(channels),
                  provenance={"path": str(path), "format": "nifti"})


def write_nifti(volume: Volume | np.ndarray, path: str | Path,
                affine: np.ndarray | None = None) -> Path:
    """Write a Volume (or a ``(Z,Y,X)`` / ``(C,Z,Y,X)`` array with ``affine``) atomically.

    Several channels go to a 4D NIfTI with channels last (``X, Y, Z, C``).
    """
    import nibabel as nib

    if isinstance(volume, Volume):
        data, affine = volume.data, volume.affine
    else:
        data = np.asarray(volume)
        if data.ndim == 3:
            data = data[None]
    arr = np.transpose(data, (3, 2, 1, 0))
    if arr.shape[3] == 1:
        arr = arr[..., 0]
    if arr.dtype == bool:
        arr = arr.astype(np.uint8)
    if arr.dtype == np.float64:
        arr = arr.astype(np.float32)
    img = nib.Nifti1Image(np.ascontiguousarray(arr), np.asarray(affine, dtype=np.float64))
    img.set_qform(img.affine, code=1)
    img.set_sform(img.affine, code=1)
    path = Path(path)
    with atomic_path(path) as tmp:
        nib.save(img, str(tmp))
    return path


def write_sitk(img: sitk.Image, path: str | Path) -> Path:
    """``sitk.WriteImage`` through :func:`atomic_path` (compressed)."""
    path = Path(path)
    with atomic_path(path) as tmp:
        sitk.WriteImage(img, str(tmp), True)
    return path


def read_sitk(path: str | Path, pixel_type=sitk.sitkUnknown) -> sitk.Image:
    path = Path(path)
    if not path.exists():
        raise LoadError("file not found", path=path, hint="re-run the registration")
    try:
        return sitk.ReadImage(str(path), pixel_type)
    except RuntimeError as exc:
        raise LoadError(f"cannot read ({str(exc).splitlines()[0][:200]})", path=path,
                        hint="delete it and re-run the registration") from exc
