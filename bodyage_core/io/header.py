"""The voxel grid of an image file without reading its voxels (where the format allows)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from bodyage_core.errors import LoadError


def image_grid(path: str | Path) -> tuple[tuple[int, int, int], np.ndarray]:
    """``(shape_zyx, affine)`` of an image: for NIfTI the file's own voxel grid, read from the
    header (affine voxel (x, y, z) -> RAS mm); otherwise the grid the loader returns."""
    path = Path(path)
    name = path.name.lower()
    if name.endswith((".nii", ".nii.gz")) and path.is_file():
        import nibabel as nib

        try:
            img = nib.load(str(path))
            shape = tuple(int(s) for s in img.shape[:3])
            return (shape[2], shape[1], shape[0]), np.asarray(img.affine, float)
        except Exception as err:  # noqa: BLE001 - any header problem is a load error
            raise LoadError(f"cannot read the image header ({err})", path) from err
    from bodyage_core.io import load_volume

    vol = load_volume(path)
    return vol.shape, vol.affine
