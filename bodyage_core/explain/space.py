"""Maps from the model grid back to the subject's own image grid, and writing them as NIfTI.

The network sees the subject resampled/cropped onto a *model grid* (``subjects/<id>/input``);
its explanation maps live on that grid. :func:`map_to_subject_space` resamples a map onto the
grid of the subject's original image through world (RAS mm) coordinates, so the map overlays that
image in any viewer; :func:`save_map` writes it with that image's affine, raw float32 values,
atomically.

Conventions: maps are numpy ``(Z, Y, X)``; affines map voxel ``(x, y, z, 1)`` to RAS mm
(:mod:`bodyage_core.volume`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from scipy import ndimage

from bodyage_core.atomic import atomic_path
from bodyage_core.errors import BodyageError
from bodyage_core.volume import Volume

_REVERSE = np.eye(4)[[2, 1, 0, 3]]  # (x, y, z, 1) <-> (z, y, x, 1)


def zyx_voxel_transform(from_affine: np.ndarray, to_affine: np.ndarray) -> np.ndarray:
    """4 x 4 matrix taking a voxel index ``(z, y, x, 1)`` of the ``from`` grid to the continuous
    voxel index ``(z, y, x, 1)`` of the ``to`` grid (both affines voxel ``xyz`` -> RAS mm)."""
    xyz = np.linalg.inv(np.asarray(to_affine, float)) @ np.asarray(from_affine, float)
    return _REVERSE @ xyz @ _REVERSE


def resample_map(map_zyx: np.ndarray, map_affine: np.ndarray, target_shape_zyx: tuple,
                 target_affine: np.ndarray, order: int = 1, cval: float = 0.0) -> np.ndarray:
    """Resample a ``(Z, Y, X)`` map on one grid onto another grid (through world coordinates).

    ``order=1`` is trilinear, ``0`` nearest neighbour; voxels of the target grid outside the map's
    grid get ``cval``. Returns float32 ``target_shape_zyx``.
    """
    data = np.asarray(map_zyx, dtype=np.float32)
    if data.ndim != 3:
        raise ValueError(f"map must be (Z, Y, X), got shape {data.shape}")
    m = zyx_voxel_transform(target_affine, map_affine)   # target voxel -> map voxel
    shape = tuple(int(s) for s in target_shape_zyx)
    # Interpolate with edge values, then keep only target voxels whose centre lies within the
    # map grid's voxel extent [-0.5, n - 0.5) per axis (robust to 1e-16 round-off at the edges).
    out = ndimage.affine_transform(data, m[:3, :3], offset=m[:3, 3], output_shape=shape,
                                   order=order, mode="nearest", prefilter=order > 1)
    inside = ndimage.affine_transform(np.ones(data.shape, np.uint8), m[:3, :3], offset=m[:3, 3],
                                      output_shape=shape, order=0, mode="grid-constant", cval=0)
    out[inside == 0] = cval
    return out.astype(np.float32, copy=False)


def map_to_subject_space(map_zyx: np.ndarray, model_affine: np.ndarray,
                         subject_volume: Volume | tuple, order: int = 1) -> Volume:
    """Resample a map on the model grid to the grid of the subject's original image.

    Parameters
    ----------
    map_zyx
        ``(Z, Y, X)`` map on the model grid (numpy order), raw values.
    model_affine
        4 x 4 voxel ``(x, y, z)`` -> RAS mm affine of the model grid (the input's affine).
    subject_volume
        The subject's image (:class:`~bodyage_core.volume.Volume`) or ``(shape_zyx, affine)``.
    order
        Interpolation order (1 = trilinear). Outside the model grid the map is 0.

    Returns
    -------
    Volume
        One channel ``'map'``, float32 ``(1, Z, Y, X)`` on the subject grid with its affine.
    """
    if isinstance(subject_volume, Volume):
        shape, affine = subject_volume.shape, subject_volume.affine
    else:
        shape, affine = subject_volume
    data = resample_map(map_zyx, model_affine, tuple(shape), np.asarray(affine, float),
                        order=order)
    return Volume(data, np.asarray(affine, float), channels=("map",),
                  provenance={"resampled_from_model_grid": True})


def save_map(map_or_volume: Volume | np.ndarray, path: str | Path,
             affine: np.ndarray | None = None, description: str = "") -> Path:
    """Write a ``(Z, Y, X)`` map (or a one-channel Volume) as float32 NIfTI, atomically.

    The affine (the Volume's when not given) becomes both the sform and the qform (code 1,
    scanner RAS), so other viewers place the map where the image it belongs to lies.
    """
    import nibabel as nib

    if isinstance(map_or_volume, Volume):
        data = map_or_volume.data[0]
        affine = map_or_volume.affine if affine is None else affine
    else:
        data = np.asarray(map_or_volume)
        if data.ndim == 4 and data.shape[0] == 1:
            data = data[0]
    if affine is None:
        raise ValueError("save_map needs an affine for a plain array")
    if data.ndim != 3:
        raise ValueError(f"a map to save must be (Z, Y, X), got shape {data.shape}")
    path = Path(path)
    if not (path.name.endswith(".nii.gz") or path.name.endswith(".nii")):
        raise BodyageError("maps are written as NIfTI", path=path,
                           hint="use a .nii.gz file name")
    affine = np.asarray(affine, dtype=np.float64)
    img = nib.Nifti1Image(np.ascontiguousarray(data.astype(np.float32).transpose(2, 1, 0)),
                          affine)
    img.set_sform(affine, code=1)
    img.set_qform(affine, code=1)
    img.header.set_xyzt_units("mm")
    if description:
        img.header["descrip"] = description.encode()[:79]
    with atomic_path(path) as tmp:
        nib.save(img, str(tmp))
    return path


def load_map(path: str | Path) -> Volume:
    """Read a map written by :func:`save_map` as a one-channel Volume (no reorientation)."""
    import nibabel as nib

    try:
        img = nib.load(str(path))
        data = np.asarray(img.dataobj, dtype=np.float32)
    except Exception as err:  # noqa: BLE001 - any reader failure is a user-facing load error
        raise BodyageError(f"cannot read map: {err}", path=path) from err
    if data.ndim != 3:
        raise BodyageError(f"a map must be 3D, got shape {data.shape}", path=path)
    return Volume(data.transpose(2, 1, 0), img.affine, channels=("map",),
                  provenance={"path": str(path)})
