"""Reading a UK Biobank Dixon zip (field 20201): the DICOM members, their headers read
from the first bytes only, the Dixon channel of a series (:mod:`bodyage_core.io.ukbb` stitches
them)."""

from __future__ import annotations

import io
import zipfile
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import pydicom

from bodyage_core.errors import LoadError
from bodyage_core.io.dicom import (
    read_dataset,
)

CHANNELS = ("water", "fat", "in", "opp")
_SUFFIX_TO_CHANNEL = {
    "w": "water", "water": "water",
    "f": "fat", "fat": "fat",
    "in": "in", "ip": "in", "inphase": "in",
    "opp": "opp", "op": "opp", "out": "opp", "outphase": "opp",
}
SERIES_DESCRIPTION_HINT = "SeriesDescription ending in _W, _F, _in or _opp"
CORRUPT_HINT = "the zip is corrupt; fetch it again"
MISSING_HINT = "the zip is incomplete; download UK Biobank field 20201 for this subject again"


def dixon_channel(description: str) -> str | None:
    """Channel name for a UK Biobank Dixon SeriesDescription (``'Dixon_BH_17s_W'`` -> water)."""
    desc = str(description or "").strip()
    if "_" not in desc:
        return None
    return _SUFFIX_TO_CHANNEL.get(desc.rsplit("_", 1)[1].lower())


_HEADER_BYTES = (4096, 32768)
_NEEDED_TAGS = ("ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing", "Rows",
                "Columns", "SeriesDescription")
#: Follows PixelSpacing (0028,0030) in every image header: a prefix that holds it holds the
#: whole geometry (pydicom returns a value cut by the end of the bytes without complaint).
_SENTINEL_TAG = "BitsAllocated"
_HEADER_TAGS = [*_NEEDED_TAGS, "SeriesInstanceUID", "SeriesNumber", "SliceThickness",
                "SpacingBetweenSlices", "PatientAge", "PatientSex", "Modality", "SeriesDate",
                "SeriesTime", "AcquisitionDate", "AcquisitionTime", _SENTINEL_TAG]
_GEOMETRY_VALUES = {0x00280030: ("PixelSpacing", 2), 0x00200032: ("ImagePositionPatient", 3),
                    0x00200037: ("ImageOrientationPatient", 6)}


#: Zips up to this size are read into memory in one sequential read (fast on network file
#: systems); larger ones are read member by member from the file.
IN_MEMORY_MAX_BYTES = 2 * 1024 ** 3


def open_zip(path: Path) -> zipfile.ZipFile:
    if not path.exists():
        raise LoadError("file not found", path, "check the path")
    try:
        if path.stat().st_size <= IN_MEMORY_MAX_BYTES:
            with open(path, "rb") as fh:
                return zipfile.ZipFile(io.BytesIO(fh.read()))
        return zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as err:
        raise LoadError(f"not a readable zip file ({err})", path,
                        "the download is probably incomplete; fetch it again") from err


def read_member(zf: zipfile.ZipFile, info: zipfile.ZipInfo, path: Path,
                 size: int | None = None) -> bytes:
    try:
        if size is None:
            return zf.read(info)
        with zf.open(info) as fh:
            return fh.read(size)
    except (zipfile.BadZipFile, zlib.error, OSError, EOFError, ValueError, NotImplementedError,
            RuntimeError) as err:
        raise LoadError(f"member {info.filename} cannot be read ({type(err).__name__}: {err})",
                        path, CORRUPT_HINT) from None


def _n_values(v: Any) -> int:
    if v is None:
        return 0
    if isinstance(v, (str, bytes)):
        return 1 if v else 0
    try:
        return len(v)
    except TypeError:
        return 1


def header_problem(ds) -> str | None:
    """What makes a header unusable for stitching (None: nothing)."""
    for tag in _NEEDED_TAGS:
        if tag not in ds:
            return f"{tag} is missing"
    for tag, (kw, n) in _GEOMETRY_VALUES.items():
        v = ds[tag].value
        k = _n_values(v)
        if k != n:
            return f"{kw} has {k} value{'s' if k != 1 else ''} ({n} needed)"
        try:
            vals = [float(x) for x in v]
        except (TypeError, ValueError):
            return f"{kw} is not {n} numbers ({v!r})"
        if not all(np.isfinite(vals)):
            return f"{kw} is not finite ({v!r})"
    return None


def _read_header(zf: zipfile.ZipFile, info: zipfile.ZipInfo, path: Path):
    """The DICOM header of a member without decompressing its pixel data (when possible)."""
    for size in _HEADER_BYTES:
        if info.file_size <= size:
            break
        head = read_member(zf, info, path, size)
        try:
            ds = pydicom.dcmread(io.BytesIO(head), stop_before_pixels=True,
                                 specific_tags=_HEADER_TAGS)
        except Exception:  # a header cut mid-element: try more bytes, then the whole member
            continue
        if _SENTINEL_TAG in ds:  # the geometry tags precede it: none of them is cut
            return ds
    return read_dataset(read_member(zf, info, path), f"{path}:{info.filename}")


def read_zip(zf: zipfile.ZipFile, path: Path) -> list[tuple[zipfile.ZipInfo, Any]]:
    """Headers of the DICOM image members: ``[(ZipInfo, dataset without pixels)]``."""
    items = []
    for info in zf.infolist():
        if info.is_dir() or info.filename.lower().rsplit("/", 1)[-1].startswith("manifest"):
            continue
        ds = _read_header(zf, info, path)
        if ds is not None and "ImagePositionPatient" in ds:
            items.append((info, ds))
    if not items:
        raise LoadError("no DICOM images in the zip", path,
                        "expected a UK Biobank Dixon zip (field 20201)")
    return items
