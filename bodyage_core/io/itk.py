"""NRRD (.nrrd, .nhdr) and MetaImage (.mha, .mhd) through SimpleITK.

ITK geometry is LPS; it is converted to RAS and the array reoriented to canonical RAS.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import SimpleITK as sitk

from bodyage_core.errors import LoadError
from bodyage_core.io._geometry import make_volume, sitk_affine_ras
from bodyage_core.io.nifti import smallest_int_dtype
from bodyage_core.qc.image_checks import check_allocation
from bodyage_core.volume import Volume

ITK_SUFFIXES = (".nrrd", ".nhdr", ".mha", ".mhd")


def read_sitk(path: Path):
    """``sitk.ReadImage`` with errors turned into :class:`LoadError`."""
    if not path.exists():
        raise LoadError("file not found", path, "check the path")
    try:
        reader = sitk.ImageFileReader()
        reader.SetFileName(str(path))
        reader.ReadImageInformation()     # the header alone: refuse an absurd size first
        size = list(reader.GetSize()) + [reader.GetNumberOfComponents()]
        check_allocation(size, 8 + 4, path)
        return reader.Execute()
    except RuntimeError as err:
        first = str(err).strip().splitlines()
        detail = next((ln for ln in first if "ERROR" in ln or "rror" in ln), first[-1] if first else "")
        raise LoadError(f"could not read the image ({detail.strip()[:200]})", path,
                        "the file may be truncated, or its data file (.raw/.zraw) missing") from err


def sitk_to_xyz(image, path: Path, labels: bool) -> tuple[np.ndarray, list[str]]:
    """Array in index order ``(X, Y, Z[, C])`` from a 2D/3D, scalar or vector SimpleITK image."""
    dim = image.GetDimension()
    if dim == 4:
        # 4D (e.g. time): SimpleITK array is (T, Z, Y, X); use T as channels
        arr = sitk.GetArrayFromImage(image)
        xyz = np.transpose(arr, (3, 2, 1, 0))
        names = [f"image{i}" for i in range(arr.shape[0])]
    elif dim in (2, 3):
        arr = sitk.GetArrayFromImage(image)  # (Z, Y, X[, C]) or (Y, X[, C])
        n_comp = image.GetNumberOfComponentsPerPixel()
        if dim == 2:
            arr = arr[None]
        if n_comp > 1:
            xyz = np.transpose(arr, (2, 1, 0, 3))
            names = [f"image{i}" for i in range(n_comp)]
        else:
            xyz = np.transpose(arr, (2, 1, 0))
            names = ["image"]
    else:
        raise LoadError(f"{dim}D images are not supported", path, "pass a 3D image")
    if labels:
        if xyz.dtype.kind == "f":
            rounded = np.rint(xyz)
            if xyz.size and np.max(np.abs(rounded - xyz)) > 1e-3:
                raise LoadError("not a label map: values are not integers", path,
                                "use load_volume for intensity images")
            xyz = rounded.astype(smallest_int_dtype(rounded))
    else:
        xyz = xyz.astype(np.float32, copy=False)
    return xyz, names


def sitk_affine_3d(image) -> np.ndarray:
    if image.GetDimension() == 3:
        return sitk_affine_ras(image)
    if image.GetDimension() == 2:
        sp = image.GetSpacing()
        og = image.GetOrigin()
        d = np.asarray(image.GetDirection()).reshape(2, 2)
        aff = np.eye(4)
        aff[:2, :2] = d * np.asarray(sp)[None]
        aff[:2, 3] = og
        return np.diag([-1.0, -1.0, 1.0, 1.0]) @ aff
    sub = sitk.Extract(image, list(image.GetSize()[:3]) + [0], [0, 0, 0, 0])
    return sitk_affine_ras(sub)


def load_itk(path: str | Path, labels: bool = False) -> Volume:
    """Read NRRD/MetaImage as a canonical-RAS :class:`Volume`."""
    path = Path(path)
    image = read_sitk(path)
    xyz, names = sitk_to_xyz(image, path, labels)
    affine = sitk_affine_3d(image)
    fmt = "nrrd" if path.suffix.lower() in (".nrrd", ".nhdr") else "metaimage"
    prov = {"path": str(path), "format": fmt,
            "disk_dtype": image.GetPixelIDTypeAsString()}
    return make_volume(xyz, affine, tuple(names), prov)
