"""DICOM series (a folder of single-frame slices) read with pydicom.

* Slices are sorted by their position along the slice normal (``ImageOrientationPatient``
  cross product), and the slice step comes from ``ImagePositionPatient`` of the first and last
  slice (never from ``SliceThickness``, which is the slab width and often differs from the step).
  A tilted gantry or oblique stack keeps its true geometry (the third affine column is the
  actual position step).
* Pixel values get ``RescaleSlope`` / ``RescaleIntercept`` per slice.
* DICOM patient space is LPS; the affine is converted to RAS and the array reoriented to
  canonical RAS.
* ``PatientAge`` (``'060Y'``, ``'018M'``, ``'003W'``, ``'010D'``) -> ``metadata['age']`` in years,
  ``PatientSex`` -> ``metadata['sex']`` (``'M'``/``'F'``).
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from pydicom.errors import InvalidDicomError

from bodyage_core.cohort.paths import WorkspacePaths
from bodyage_core.errors import LoadError
from bodyage_core.io._geometry import LPS_TO_RAS, make_volume
from bodyage_core.qc.image_checks import check_allocation
from bodyage_core.volume import Volume

_SKIP_NAMES = {"dicomdir", "manifest.csv", "manifest.cvs"}


def parse_age(value: Any) -> float | None:
    """DICOM ``AS`` value (``'060Y'``, ``'018M'``, ``'003W'``, ``'010D'``) -> years, or None."""
    if value is None:
        return None
    s = str(value).strip().upper()
    if not s:
        return None
    unit = s[-1]
    num = s[:-1] if unit.isalpha() else s
    try:
        n = float(num)
    except ValueError:
        return None
    factor = {"Y": 1.0, "M": 1.0 / 12.0, "W": 7.0 / 365.25, "D": 1.0 / 365.25}.get(
        unit if unit.isalpha() else "Y")
    if factor is None:
        return None
    return round(n * factor, 4)


def parse_sex(value: Any) -> str | None:
    s = str(value or "").strip().upper()[:1]
    return s if s in ("M", "F") else None


def subject_metadata(ds) -> dict[str, Any]:
    """Age and sex from a DICOM header, when present."""
    meta: dict[str, Any] = {}
    age = parse_age(ds.get("PatientAge"))
    if age is not None:
        meta["age"] = age
    sex = parse_sex(ds.get("PatientSex"))
    if sex is not None:
        meta["sex"] = sex
    return meta


def read_dataset(source: Path | bytes, name: str | Path) -> pydicom.Dataset | None:
    """Read one DICOM file (path or bytes); None when it is not DICOM image data."""
    try:
        fp = io.BytesIO(source) if isinstance(source, bytes) else str(source)
        ds = pydicom.dcmread(fp)
    except InvalidDicomError:
        return None
    except Exception as err:  # pydicom raises many types on corrupt input
        if isinstance(err, LoadError):
            raise
        raise LoadError(f"unreadable DICOM file ({err})", name,
                        "the file is probably truncated or corrupt; re-export the series") from err
    if "PixelData" not in ds or "ImagePositionPatient" not in ds:
        return None
    return ds


def _candidate_files(folder: Path) -> list[Path]:
    files = [p for p in sorted(folder.iterdir()) if p.is_file()
             and not p.name.startswith(".") and p.name.lower() not in _SKIP_NAMES]
    return files


def read_folder(folder: Path) -> list[tuple[Path, pydicom.Dataset]]:
    """All DICOM image slices in ``folder`` (sub-folders are searched if the top has none)."""
    out = []
    for f in _candidate_files(folder):
        ds = read_dataset(f, f)
        if ds is not None:
            out.append((f, ds))
    if not out:
        for f in _nested_files(folder):
            ds = read_dataset(f, f)
            if ds is not None:
                out.append((f, ds))
    return out


#: How far below a folder the DICOM search looks (levels, files looked at): a slip such as
#: ``bodyage info /`` must not walk the whole file system.
SEARCH_DEPTH = 3
SEARCH_FILES = 20000


def _nested_files(folder: Path) -> list[Path]:
    """Files in the sub-folders of ``folder``, at most :data:`SEARCH_DEPTH` levels down and
    :data:`SEARCH_FILES` files (a LoadError past that: the folder is not a series folder)."""
    import os

    out: list[Path] = []
    base = len(folder.parts)
    for dirpath, dirnames, filenames in os.walk(folder):
        here = Path(dirpath)
        depth = len(here.parts) - base
        dirnames[:] = sorted(d for d in dirnames if not d.startswith(".")) \
            if depth < SEARCH_DEPTH else []
        if depth == 0:
            continue
        for name in sorted(filenames):
            if name.startswith(".") or name.lower() in _SKIP_NAMES:
                continue
            out.append(here / name)
            if len(out) > SEARCH_FILES:
                raise LoadError(f"no DICOM slices directly in the folder, and more than "
                                f"{SEARCH_FILES} files below it: not a DICOM series folder",
                                folder, "pass the folder that holds the slices of one series")
    return out


def series_key(ds) -> str:
    uid = ds.get("SeriesInstanceUID")
    if uid:
        return str(uid)
    return f"series-{ds.get('SeriesNumber', '?')}-{ds.get('SeriesDescription', '')}"


def group_series(items: Iterable[tuple[Any, pydicom.Dataset]]) -> dict[str, list]:
    groups: dict[str, list] = {}
    for item in items:
        groups.setdefault(series_key(item[1]), []).append(item)
    return groups


def describe_series(groups: dict[str, list]) -> str:
    parts = []
    for uid, items in groups.items():
        ds = items[0][1]
        desc = str(ds.get("SeriesDescription", "") or "").strip()
        num = ds.get("SeriesNumber", "")
        label = ", ".join(x for x in (f"#{num}" if num != "" else "", desc,
                                      f"{len(items)} files") if x)
        parts.append(f"{uid} ({label})")
    return "; ".join(parts)


def _slice_pixels(ds, name) -> np.ndarray:
    try:
        arr = ds.pixel_array
    except Exception as err:  # pydicom raises many types for bad/undecodable pixel data
        raise LoadError(f"cannot decode the pixel data ({type(err).__name__}: {err})", name,
                        "the file may be truncated, or compressed with a codec that is not "
                        "installed (try pylibjpeg / python-gdcm)") from err
    arr = np.asarray(arr)
    if arr.ndim != 2:
        raise LoadError(f"expected single-frame 2D slices, got pixel array {arr.shape}", name,
                        "multi-frame / colour DICOM is not supported; convert to NIfTI first")
    slope = float(ds.get("RescaleSlope", 1.0) or 1.0)
    inter = float(ds.get("RescaleIntercept", 0.0) or 0.0)
    out = arr.astype(np.float32)
    if slope != 1.0:
        out *= np.float32(slope)
    if inter != 0.0:
        out += np.float32(inter)
    return out


def stack_geometry(datasets: Sequence[pydicom.Dataset], where: str | Path
                   ) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """Sort slices and compute the LPS affine.

    Returns
    -------
    order
        Indices of ``datasets`` sorted along the slice normal (ascending).
    affine_lps
        4 x 4 voxel ``(x, y, z)`` -> LPS mm.
    info
        ``slice_step`` (mm), ``slice_thickness`` (header), ``nonuniform`` flag.
    """
    first = datasets[0]
    try:
        iop = np.asarray([float(v) for v in first.ImageOrientationPatient], dtype=np.float64)
        ps = [float(v) for v in first.PixelSpacing]
        pos = np.asarray([[float(v) for v in ds.ImagePositionPatient] for ds in datasets])
    except (AttributeError, ValueError, TypeError) as err:
        raise LoadError(f"DICOM geometry tags missing or invalid ({err})", where,
                        "ImageOrientationPatient, ImagePositionPatient and PixelSpacing are needed") from err
    row, col = iop[:3], iop[3:]
    normal = np.cross(row, col)
    for ds in datasets[1:]:
        other = np.asarray([float(v) for v in ds.ImageOrientationPatient])
        if not np.allclose(other, iop, atol=1e-4):
            raise LoadError("slices of the series have different orientations", where,
                            "the series mixes stacks (e.g. a localiser); pass one stack")
        if (ds.Rows, ds.Columns) != (first.Rows, first.Columns):
            raise LoadError("slices of the series have different sizes", where,
                            "the series mixes stacks; pass one stack")
    proj = pos @ normal
    order = np.argsort(proj, kind="stable")
    proj_sorted = proj[order]
    steps = np.diff(proj_sorted)
    if steps.size and np.min(steps) < 1e-3:
        n_dup = int(np.sum(steps < 1e-3))
        raise LoadError(f"{n_dup} slices share a position with another slice", where,
                        "the series holds several echoes, phases or time points; "
                        "split it by echo/temporal position first")
    thickness = first.get("SliceThickness")
    if len(datasets) > 1:
        zcol = (pos[order[-1]] - pos[order[0]]) / (len(datasets) - 1)
        step = float(np.mean(steps))
        nonuniform = bool(np.max(np.abs(steps - step)) > 0.05 * step)
        if nonuniform:  # a missing slice or a variable step: resampled in stack_series
            zcol = zcol * (float(np.median(steps)) / step)
            step = float(np.median(steps))
    else:
        t = float(first.get("SpacingBetweenSlices", thickness or 1.0) or 1.0)
        zcol = normal * t
        step = t
        nonuniform = False
    aff = np.eye(4)
    aff[:3, 0] = row * ps[1]   # x index runs along a row (column number), PixelSpacing[1]
    aff[:3, 1] = col * ps[0]   # y index runs down a column (row number), PixelSpacing[0]
    aff[:3, 2] = zcol
    aff[:3, 3] = pos[order[0]]
    info = {
        "slice_step": step,
        "slice_thickness": None if thickness in (None, "") else float(thickness),
        "nonuniform_slice_spacing": nonuniform,
        "n_slices": len(datasets),
    }
    return order, aff, info


def stack_series(datasets: Sequence[pydicom.Dataset], names: Sequence[Any], where: str | Path
                 ) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """Sorted slices as an index-order ``(X, Y, Z)`` float32 array + RAS affine + info."""
    order, aff_lps, info = stack_geometry(datasets, where)
    first = datasets[0]
    check_allocation((len(datasets), int(first.Rows), int(first.Columns)), 8, where,
                     "the DICOM headers")
    data = np.empty((len(datasets), int(first.Rows), int(first.Columns)), dtype=np.float32)
    for k, i in enumerate(order):
        data[k] = _slice_pixels(datasets[i], names[i])
    if info["nonuniform_slice_spacing"]:
        data = _uniform_slices(data, datasets, order, info["slice_step"])
        info["resampled_to_uniform_step"] = True
        warnings.warn(f"{where}: slice positions are not evenly spaced (a slice missing?); "
                      f"resampled to a uniform {info['slice_step']} mm step", stacklevel=2)
    xyz = np.transpose(data, (2, 1, 0))
    return xyz, LPS_TO_RAS @ aff_lps, info


def _uniform_slices(data: np.ndarray, datasets, order, step: float) -> np.ndarray:
    """Linear interpolation of sorted slices onto an even ``step`` along the slice normal."""
    iop = np.asarray([float(v) for v in datasets[0].ImageOrientationPatient])
    normal = np.cross(iop[:3], iop[3:])
    proj = np.asarray([np.dot([float(v) for v in datasets[i].ImagePositionPatient], normal)
                       for i in order])
    n = int(np.floor((proj[-1] - proj[0]) / step + 1e-6)) + 1
    target = proj[0] + step * np.arange(n)
    out = np.empty((n, *data.shape[1:]), dtype=np.float32)
    for k, t in enumerate(target):
        j = int(np.clip(np.searchsorted(proj, t, side="right") - 1, 0, len(proj) - 2))
        frac = float(np.clip((t - proj[j]) / (proj[j + 1] - proj[j]), 0.0, 1.0))
        out[k] = (1.0 - frac) * data[j] + frac * data[j + 1]
    return out


def load_dicom_series(path: str | Path, series_uid: str | None = None,
                      labels: bool = False) -> Volume:
    """Read a DICOM series from a folder (or the series one given file belongs to).

    Parameters
    ----------
    path
        A folder of DICOM slices, or one slice file (its folder's series with the same UID).
    series_uid
        Which series to read when the folder holds several.
    labels
        Keep integer values (e.g. a segmentation stored as DICOM images).
    """
    path = Path(path)
    if not path.exists():
        raise LoadError("file or folder not found", path, "check the path")
    if path.is_dir() and WorkspacePaths.is_workspace(path):
        raise LoadError("this folder is a bodyage workspace, not an image", path,
                        "give one image file or DICOM series folder; open a workspace with "
                        "`bodyage gui WORKSPACE`")
    if path.is_file():
        ds = read_dataset(path, path)
        if ds is None:
            raise LoadError("not a DICOM image file", path, "pass a DICOM slice or its folder")
        series_uid = series_uid or series_key(ds)
        folder = path.parent
    else:
        folder = path
    items = read_folder(folder)
    if not items:
        others = sorted(p.name for p in folder.iterdir() if p.name.lower().endswith(
            (".nii", ".nii.gz", ".nrrd", ".nhdr", ".mha", ".mhd", ".zip")))
        hint = (f"the folder holds {', '.join(others[:5])}; pass one of those files"
                if others else "pass a folder that contains the slices of one DICOM series")
        raise LoadError("no DICOM image files found in the folder", folder, hint)
    groups = group_series(items)
    if series_uid is not None:
        if series_uid not in groups:
            raise LoadError(f"no series {series_uid} in the folder; it holds "
                            f"{describe_series(groups)}", folder, "pass one of those UIDs")
        chosen = groups[series_uid]
    elif len(groups) > 1:
        raise LoadError(f"the folder holds {len(groups)} DICOM series: {describe_series(groups)}",
                        folder, "pass one: load_dicom_series(folder, series_uid=UID), "
                        "`--series UID` on the command line, or one file of that series")
    else:
        series_uid, chosen = next(iter(groups.items()))
    files = [f for f, _ in chosen]
    datasets = [d for _, d in chosen]
    xyz, affine, info = stack_series(datasets, files, folder)
    if labels:
        rounded = np.rint(xyz)
        from bodyage_core.io.nifti import smallest_int_dtype
        xyz = rounded.astype(smallest_int_dtype(rounded))
    first = datasets[0]
    prov: dict[str, Any] = {
        "path": str(path),
        "format": "dicom",
        "series_uid": series_uid,
        "series_description": str(first.get("SeriesDescription", "") or ""),
        "modality": str(first.get("Modality", "") or ""),
        **info,
    }
    if info.get("resampled_to_uniform_step"):
        from bodyage_core.qc.image_checks import add_flag

        add_flag(prov, "dicom_gaps", f"slice positions of {len(datasets)} slices are not "
                                     "evenly spaced (a slice missing?); resampled to a uniform "
                                     f"{info['slice_step']:g} mm step")
    return make_volume(xyz, affine, ("image",), prov, subject_metadata(first))
