"""UK Biobank neck-to-knee Dixon station zips (field 20201), read and stitched into one Volume.

A zip holds single-slice DICOM files (explicit or implicit VR) for six axial stations (neck to
knee), each acquired as four series, and a manifest (``manifest.cvs`` in the real zips; it is
ignored). Series are identified by the **last underscore-separated token of SeriesDescription**
(case-insensitive):

=================================  =========
description ends with              channel
=================================  =========
``_W`` (``_water``)                ``water``
``_F`` (``_fat``)                  ``fat``
``_in`` (``_ip``, ``_inphase``)    ``in``
``_opp`` (``_op``, ``_outphase``)  ``opp``
=================================  =========

so ``Dixon_BH_17s_W``, ``Dixon_noBH_F``, ``Dixon_noBH_in`` and ``Dixon_BH_17s_opp`` all map;
other series (localisers, ``..._W_stitched`` derived images) are ignored.

What real zips do, and what the reader does about it (docs/UKBB.md names the reference for each):

* **Stations differ in matrix and origin** (224 x 168 x 64, 224 x 174 x 44 at 4.5 mm for the
  breath-hold stations 2-4, 224 x 162 x 72, 224 x 156 x 64; origins shift in y). Descriptions
  do not name the station: series are grouped into stations by their z extent (two series are
  one station when their extents overlap by at least ``repeat_overlap``, 70 % of the shorter);
  stations are numbered 1 (most superior, neck) to 6 (knees). The output grid spans all of them.
* **Water and fat of one station can differ in size** (rarely even in spacing): the station is
  used on the common extent of its channels in patient coordinates (QC flag
  ``water_fat_size_mismatch``); nothing is filled by edge replication.
* **Repeated stations**: the newest acquisition (AcquisitionTime, then SeriesTime, then
  SeriesNumber) is used; an older one only fills a z gap the newest leaves (QC flags
  ``repeat_resolved`` / ``repeat_filled_gap``). More stations than expected (a shifted repeat
  that overlaps too little to be one) are stitched in with the flag ``extra_stations``.
* **Folded end slices and intensity steps** are handled by the stitcher's settings
  (:class:`~bodyage_core.io.ukbb_stitch.StitchSettings`: end-slice trimming, an 8-slice blend cap,
  overlap intensity correction, the 2.232 x 2.232 x 3.0 mm grid of the seeds).
* **Fat/water swaps** per station (and per leg in the two lowest stations) are detected from the
  fat fraction of the subcutaneous fat (:mod:`bodyage_core.io.dixon_swap`), swapped back when
  confident (``fat_water_swap_fixed``) and flagged when not (``fat_water_swap_suspected``).
* **Header reads**: the reader decodes a member's header from its first 4 kB when that prefix
  holds the whole geometry (checked with a tag that follows PixelSpacing, so a value cut in half
  is never used), else from more bytes; a header with a wrong number of PixelSpacing,
  ImagePositionPatient or ImageOrientationPatient values, a corrupt member (a zlib or CRC error)
  or a truncated DICOM file is a :class:`LoadError` naming the zip and the member.

QC flags go to ``provenance["qc"]`` as ``{"flag": name, "message": one line}`` dicts (one per
name; several stations share a message), the details to ``provenance["ukbb"]``.

A zip without a station (fewer than ``expected_stations``, or a gap in z between two stations)
or a station without one of the requested channels is a :class:`LoadError` naming the zip and
the station/channel.

Streaming a cohort: :class:`UKBBFolderIndex` indexes a folder of UK Biobank bulk files (any
number, nested folders allowed) by their names alone (``<eid>_<field>_<instance>_<array>.zip``,
e.g. ``1234567_20201_2_0.zip``), without opening them; a zip is read only when its subject is
loaded, in one sequential read into memory (members are decompressed from memory, nothing is
extracted to disk).
"""

from __future__ import annotations

import io
import os
import re
import zipfile
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pydicom

from bodyage_core.errors import LoadError
from bodyage_core.io import dixon_swap
from bodyage_core.io._geometry import LPS_TO_RAS, canonical_xyz
from bodyage_core.io.dicom import (
    read_dataset,
    series_key,
    stack_geometry,
    stack_series,
    subject_metadata,
)
from bodyage_core.io.ukbb_stitch import (
    UKBB_SPACING_XYZ,
    StationGeometry,
    StitchSettings,
    plan_stitch,
    resolve_settings,
    run_stitch,
)
from bodyage_core.volume import Volume, orientation_letters

CHANNELS = ("water", "fat", "in", "opp")
_SUFFIX_TO_CHANNEL = {
    "w": "water", "water": "water",
    "f": "fat", "fat": "fat",
    "in": "in", "ip": "in", "inphase": "in",
    "opp": "opp", "op": "opp", "out": "opp", "outphase": "opp",
}
_SERIES_DESCRIPTION_HINT = "SeriesDescription ending in _W, _F, _in or _opp"
_CORRUPT_HINT = "the zip is corrupt; fetch it again"
_MISSING_HINT = "the zip is incomplete; download UK Biobank field 20201 for this subject again"


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


def _open_zip(path: Path) -> zipfile.ZipFile:
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


def _read_member(zf: zipfile.ZipFile, info: zipfile.ZipInfo, path: Path,
                 size: int | None = None) -> bytes:
    try:
        if size is None:
            return zf.read(info)
        with zf.open(info) as fh:
            return fh.read(size)
    except (zipfile.BadZipFile, zlib.error, OSError, EOFError, ValueError, NotImplementedError,
            RuntimeError) as err:
        raise LoadError(f"member {info.filename} cannot be read ({type(err).__name__}: {err})",
                        path, _CORRUPT_HINT) from None


def _n_values(v: Any) -> int:
    if v is None:
        return 0
    if isinstance(v, (str, bytes)):
        return 1 if v else 0
    try:
        return len(v)
    except TypeError:
        return 1


def _header_problem(ds) -> str | None:
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
        head = _read_member(zf, info, path, size)
        try:
            ds = pydicom.dcmread(io.BytesIO(head), stop_before_pixels=True,
                                 specific_tags=_HEADER_TAGS)
        except Exception:  # a header cut mid-element: try more bytes, then the whole member
            continue
        if _SENTINEL_TAG in ds:  # the geometry tags precede it: none of them is cut
            return ds
    return read_dataset(_read_member(zf, info, path), f"{path}:{info.filename}")


def _read_zip(zf: zipfile.ZipFile, path: Path) -> list[tuple[zipfile.ZipInfo, Any]]:
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


# -- series, stations, repeats ------------------------------------------------------------------

def _seconds(value: Any) -> float | None:
    """DICOM TM (``'100230.5'``, old ``'10:02:30'``) -> seconds after midnight."""
    s = str(value or "").strip().replace(":", "")
    if len(s) < 2 or not s[:2].isdigit():
        return None
    try:
        hh = int(s[0:2])
        mm = int(s[2:4]) if len(s) >= 4 else 0
        ss = float(s[4:]) if len(s) > 4 else 0.0
    except ValueError:
        return None
    return hh * 3600 + mm * 60 + ss


def _clock(seconds: float | None) -> str:
    if seconds is None:
        return "time unknown"
    s = int(round(seconds))
    return f"{s // 3600:02d}:{s // 60 % 60:02d}:{s % 60:02d}"


@dataclass
class _Series:
    channel: str
    description: str
    number: int
    uid: str
    datasets: list        # headers sorted along the slice normal (inferior first)
    infos: list           # zip members, same order
    z_lo: float
    z_hi: float
    step: float
    rows: int
    cols: int
    acq_time: float | None
    newness: tuple
    aff_lps: np.ndarray = None        # voxel (x, y, z) of the sorted slices -> LPS mm
    uniform: bool = True

    @property
    def label(self) -> str:
        return f"{self.description} #{self.number}"

    @property
    def slab(self) -> tuple[float, float]:
        half = 0.5 * (self.step or 1.0)
        return self.z_lo - half, self.z_hi + half


def _collect_series(items, path: Path, wanted: Sequence[str], settings: StitchSettings
                    ) -> tuple[list[_Series], list[str]]:
    groups: dict[str, list] = {}
    for info, ds in items:
        groups.setdefault(series_key(ds), []).append((info, ds))
    out, found = [], set()
    for uid, members in groups.items():
        ds0 = members[0][1]
        desc = str(ds0.get("SeriesDescription", "") or "")
        ch = dixon_channel(desc)
        if ch is None:
            continue
        found.add(desc)
        if ch not in wanted:
            continue
        for info, ds in members:
            problem = _header_problem(ds)
            if problem:
                raise LoadError(f"member {info.filename} (series {desc}): DICOM header "
                                f"{problem}", path, "the zip is corrupt or not UK Biobank "
                                "Dixon data; fetch it again")
        datasets = [m[1] for m in members]
        try:
            order, aff_lps, info_geo = stack_geometry(datasets, f"{path} (series {desc})")
        except (IndexError, TypeError, ValueError, AttributeError) as err:
            raise LoadError(f"series {desc}: DICOM geometry tags invalid ({err})", path,
                            "the zip is corrupt or not UK Biobank Dixon data") from None
        datasets = [datasets[i] for i in order]
        infos = [members[i][0] for i in order]
        zs = [float(d.ImagePositionPatient[2]) for d in datasets]  # LPS z = RAS z
        acq = _seconds(ds0.get("AcquisitionTime"))
        ser = _seconds(ds0.get("SeriesTime"))
        number = int(ds0.get("SeriesNumber", 0) or 0)
        if settings.repeats == "highest_series_number":
            newness: tuple = (number,)
        else:
            newness = (str(ds0.get("AcquisitionDate", "") or ""), -1.0 if acq is None else acq,
                       str(ds0.get("SeriesDate", "") or ""), -1.0 if ser is None else ser, number)
        out.append(_Series(ch, desc, number, str(uid), datasets, infos, float(min(zs)),
                           float(max(zs)), float(info_geo["slice_step"]), int(ds0.Rows),
                           int(ds0.Columns), acq if acq is not None else ser, newness,
                           aff_lps, not info_geo["nonuniform_slice_spacing"]))
    return out, sorted(found)


@dataclass
class _Position:
    """One station (one table position): the acquisitions found there."""

    number: int
    by_channel: dict[str, list[_Series]]          # newest first
    older: list[dict[str, _Series]] = field(default_factory=list)   # complete older ones
    dropped: list[_Series] = field(default_factory=list)

    @property
    def primary(self) -> dict[str, _Series]:
        return {ch: lst[0] for ch, lst in self.by_channel.items()}

    def extent(self, acq: Mapping[str, _Series] | None = None) -> tuple[float, float, float]:
        acq = self.primary if acq is None else acq
        return (max(s.z_lo for s in acq.values()), min(s.z_hi for s in acq.values()),
                max(s.step for s in acq.values()))


def _overlap_fraction(a: tuple[float, float], b: tuple[float, float]) -> float:
    ov = min(a[1], b[1]) - max(a[0], b[0])
    short = min(a[1] - a[0], b[1] - b[0])
    return ov / short if short > 0 else 0.0


def _positions(series: list[_Series], settings: StitchSettings) -> list[_Position]:
    clusters: list[tuple[tuple[float, float], list[_Series]]] = []
    for s in sorted(series, key=lambda s: -(s.z_lo + s.z_hi)):
        best, frac = None, 0.0
        for c in clusters:
            f = _overlap_fraction(s.slab, c[0])
            if f > frac:
                best, frac = c, f
        if best is not None and frac >= settings.repeat_overlap:
            best[1].append(s)
        else:
            clusters.append((s.slab, [s]))
    positions = []
    for _, members in clusters:
        by_ch: dict[str, list[_Series]] = {}
        for s in members:
            by_ch.setdefault(s.channel, []).append(s)
        for lst in by_ch.values():
            lst.sort(key=lambda s: s.newness, reverse=True)
        positions.append(_Position(0, by_ch))
    positions.sort(key=lambda p: -sum(p.extent()[:2]))
    for k, p in enumerate(positions, start=1):
        p.number = k
    return positions


def _keep_channels(p: _Position, channels: Sequence[str]) -> None:
    """Keep only ``channels`` and sort the older series into complete older acquisitions
    (the r-th newest of every channel) and dropped ones."""
    p.by_channel = {c: p.by_channel[c] for c in channels}
    p.older, p.dropped = [], []
    depth = max(len(v) for v in p.by_channel.values())
    for r in range(1, depth):
        acq = {c: lst[r] for c, lst in p.by_channel.items() if len(lst) > r}
        if len(acq) == len(channels):
            p.older.append(acq)
        else:
            p.dropped.extend(acq.values())


def _check_channels(positions: list[_Position], series: list[_Series], found: list[str],
                    channels: Sequence[str], path: Path) -> None:
    for ch in channels:
        if not any(s.channel == ch for s in series):
            raise LoadError(f"no {ch!r} series in the zip (Dixon series found: "
                            f"{', '.join(found) or 'none'})", path,
                            f"the zip is incomplete or not UK Biobank Dixon data; "
                            f"series are recognised by {_SERIES_DESCRIPTION_HINT}")
    n = len(positions)
    for p in positions:
        for ch in channels:
            if ch not in p.by_channel:
                lo = min(s.z_lo for lst in p.by_channel.values() for s in lst)
                hi = max(s.z_hi for lst in p.by_channel.values() for s in lst)
                raise LoadError(f"station {p.number} of {n} (z {lo:.1f} to {hi:.1f} mm) has no "
                                f"{ch!r} series", path, _MISSING_HINT)


def _check_coverage(positions: list[_Position], channels: Sequence[str], path: Path,
                    expected: int | None) -> None:
    """The z coverage of every complete acquisition (an older one fills a gap too): a hole
    between two stations, or fewer stations than expected, is a missing station."""
    spans = sorted([p.extent(a) for p in positions for a in [p.primary, *p.older]])
    merged: list[list[float]] = []
    for lo, hi, step in spans:
        if merged and lo - merged[-1][1] <= 1.5 * max(step, merged[-1][2]):
            merged[-1][1] = max(merged[-1][1], hi)
            merged[-1][2] = max(merged[-1][2], step)
        else:
            merged.append([lo, hi, step])
    for below, above in zip(merged[:-1], merged[1:]):
        upper = min((p for p in positions if p.extent()[0] >= above[0] - 1e-3),
                    key=lambda p: p.extent()[0], default=positions[0])
        lower = max((p for p in positions if p.extent()[1] <= below[1] + 1e-3),
                    key=lambda p: p.extent()[1], default=positions[-1])
        ul, uh, _ = upper.extent()
        ll, lh, _ = lower.extent()
        raise LoadError(f"gap in z coverage between station {upper.number} (z {ul:.1f} to "
                        f"{uh:.1f} mm) and station {lower.number} (z {ll:.1f} to {lh:.1f} mm): "
                        f"a station is missing (stations numbered from the neck down as found)",
                        path, _MISSING_HINT)
    n = len(positions)
    if expected is not None and n < expected:
        raise LoadError(f"{n} stations found, {expected} expected: a station is missing at the "
                        f"top (neck) or bottom (knees) for channels {', '.join(channels)}",
                        path, _MISSING_HINT)


# -- loading ------------------------------------------------------------------------------------

class _Flags:
    """QC flags, one per name (messages of several stations joined)."""

    def __init__(self) -> None:
        self._msgs: dict[str, list[str]] = {}

    def add(self, flag: str, message: str) -> None:
        self._msgs.setdefault(flag, []).append(message)

    def as_list(self) -> list[dict[str, str]]:
        return [{"flag": f, "message": "; ".join(m)} for f, m in self._msgs.items()]


def _trimmed(s: _Series, margin: int, path: Path) -> tuple[list, list]:
    if margin <= 0:
        return s.datasets, s.infos
    if len(s.datasets) - 2 * margin < 2:
        raise LoadError(f"series {s.label} has {len(s.datasets)} slices; trimming "
                        f"{margin} at each end leaves too few", path,
                        "lower trim_station_ends")
    return s.datasets[margin:-margin], s.infos[margin:-margin]


def _affine_ras(s: _Series, margin: int) -> np.ndarray:
    aff = np.array(s.aff_lps, dtype=np.float64)
    aff[:3, 3] += margin * aff[:3, 2]
    return LPS_TO_RAS @ aff


def _geometry(acq: Mapping[str, _Series], margin: int, path: Path
              ) -> dict[str, tuple[tuple[int, int, int], np.ndarray]]:
    out = {}
    for ch, s in acq.items():
        datasets, _ = _trimmed(s, margin, path)
        out[ch] = ((s.cols, s.rows, len(datasets)), _affine_ras(s, margin))
    return out


def _pixels(ds, info: zipfile.ZipInfo, rows: int, cols: int, path: Path) -> np.ndarray:
    try:
        arr = np.asarray(ds.pixel_array)
    except Exception as err:  # pydicom raises many types for truncated / undecodable data
        raise LoadError(f"member {info.filename}: cannot decode the pixel data "
                        f"({type(err).__name__}: {err})", path,
                        "the member is truncated or corrupt; fetch the zip again") from None
    if arr.shape != (rows, cols):
        raise LoadError(f"member {info.filename}: a {arr.shape} slice in a {rows} x {cols} "
                        "series", path, _CORRUPT_HINT)
    out = arr.astype(np.float32)
    slope = float(ds.get("RescaleSlope", 1.0) or 1.0)
    inter = float(ds.get("RescaleIntercept", 0.0) or 0.0)
    if slope != 1.0:
        out *= np.float32(slope)
    if inter != 0.0:
        out += np.float32(inter)
    return out


def _load_series(zf: zipfile.ZipFile, s: _Series, margin: int, path: Path
                 ) -> tuple[np.ndarray, np.ndarray]:
    """One series' pixels as a canonical ``(X, Y, Z)`` array and its RAS affine."""
    datasets, infos = _trimmed(s, margin, path)
    names = [f"{path}:{info.filename}" for info in infos]
    full = []
    for info, name in zip(infos, names):
        ds = read_dataset(_read_member(zf, info, path), name)
        if ds is None or "PixelData" not in ds:
            raise LoadError(f"member {info.filename} has no pixel data", path, _CORRUPT_HINT)
        full.append(ds)
    if not s.uniform:  # a missing slice: the DICOM reader resamples to an even step
        xyz, affine, _ = stack_series(full, names, path)
        return canonical_xyz(xyz, affine)
    data = np.empty((len(full), s.rows, s.cols), dtype=np.float32)
    for k, (ds, info) in enumerate(zip(full, infos)):
        data[k] = _pixels(ds, info, s.rows, s.cols, path)
    return canonical_xyz(np.transpose(data, (2, 1, 0)), _affine_ras(s, margin))


def _grid_text(settings: StitchSettings, spacing: np.ndarray) -> str:
    sp = " x ".join(f"{v:.4g}" for v in spacing)
    if settings.spacing_xyz is None:
        return f"the stations' own grid ({sp} mm: station 1's in-plane spacing, smallest slice step)"
    if tuple(settings.spacing_xyz) == tuple(UKBB_SPACING_XYZ):
        return ("UK Biobank default grid 2.232 x 2.232 x 3.0 mm (the seeds' fused volume; "
                "Langner's 2.23214293 x 2.23214293 x 3.0 mm)")
    return f"requested grid {sp} mm"


def _blend_text(settings: StitchSettings) -> str:
    cap = settings.max_blend_slices
    parts = ["linear cross-fade over " + ("the whole overlap" if cap is None else
                                         f"at most {cap} slices (longer overlaps cut "
                                         "symmetrically)")]
    if settings.intensity_correction:
        parts.append("slice-mean intensity correction across each overlap")
    if settings.trim_volume_ends:
        parts.append(f"{settings.trim_volume_ends} slices trimmed at each end of the volume")
    if settings.trim_station_ends:
        parts.append(f"{settings.trim_station_ends} slices trimmed at both ends of every station")
    return ", ".join(parts)


def _jsonable(v: Any) -> Any:
    if isinstance(v, dict):
        return {str(k): _jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    if isinstance(v, np.generic):
        return v.item()
    if isinstance(v, np.ndarray):
        return v.tolist()
    return v


def load_ukbb_zip(path: str | Path, channels: Sequence[str] | str = ("water", "fat"),
                  expected_stations: int | None = 6,
                  spacing_xyz: Sequence[float] | str | None = "ukbb",
                  stitch: StitchSettings | Mapping[str, Any] | None = None,
                  **settings: Any) -> Volume:
    """Stitch a UK Biobank Dixon zip into one Volume with one channel per Dixon series.

    Parameters
    ----------
    path
        The subject's field-20201 zip.
    channels
        Any of ``'water', 'fat', 'in', 'opp'``, in the order wanted.
    expected_stations
        Stations a complete zip has (6 for UK Biobank; None to accept any number). Fewer is a
        LoadError, more a QC flag (``extra_stations``).
    spacing_xyz
        Output voxel size in mm ``(x, y, z)``; ``"ukbb"`` (default): the settings' grid, by
        default the seeds' 2.232 x 2.232 x 3.0 mm; None or ``"native"``: the stations' own grid
        (station 1's in-plane spacing and the smallest slice step).
    stitch
        :class:`~bodyage_core.io.ukbb_stitch.StitchSettings` (or a mapping of its fields); the
        defaults follow the references (docs/UKBB.md). ``StitchSettings.plain()`` is the reader
        before issue 17.
    settings
        Single settings by name (``trim_volume_ends=0``, ``intensity_correction=False`` ...),
        applied on top of ``stitch``.

    Returns
    -------
    Volume
        ``(C, Z, Y, X)`` float32 on a canonical RAS grid spanning all stations;
        ``provenance["qc"]`` holds the QC flags, ``provenance["ukbb"]`` the details.
    """
    path = Path(path)
    if isinstance(channels, str):
        channels = (channels,)
    channels = tuple(channels)
    bad = [c for c in channels if c not in CHANNELS]
    if bad:
        raise LoadError(f"unknown Dixon channel(s) {bad}", path,
                        f"choose from {', '.join(CHANNELS)}")
    try:
        if isinstance(spacing_xyz, str):
            if spacing_xyz == "native":
                settings["spacing_xyz"] = None
            elif spacing_xyz != "ukbb":
                raise LoadError(f"unknown spacing_xyz {spacing_xyz!r}", path,
                                "give (x, y, z) in mm, 'ukbb' or 'native'")
        else:
            settings["spacing_xyz"] = None if spacing_xyz is None else tuple(spacing_xyz)
        cfg = resolve_settings(stitch, settings)
    except LoadError:
        raise
    except Exception as err:  # ConfigError, a malformed value
        raise LoadError(f"stitch settings: {err}", path, "see docs/UKBB.md for the settings") \
            from None
    swap_on = cfg.swap_check != "off" and bool({"water", "fat"} & set(channels))
    flags = _Flags()
    with _open_zip(path) as zf:
        items = _read_zip(zf, path)
        wanted = tuple(dict.fromkeys([*channels, "water", "fat"])) if swap_on else channels
        series, found = _collect_series(items, path, wanted, cfg)
        positions = _positions(series, cfg)
        _check_channels(positions, series, found, channels, path)
        # The swap test needs both water and fat at every station; else it is skipped.
        stitched = channels
        if swap_on:
            extra = [c for c in ("water", "fat") if c not in channels]
            if all(c in p.by_channel for p in positions for c in extra):
                stitched = (*channels, *extra)
            else:
                swap_on = False
        for p in positions:
            _keep_channels(p, stitched)
        _check_coverage(positions, channels, path, expected_stations)
        n_pos = len(positions)
        if expected_stations is not None and n_pos > expected_stations:
            zs = ", ".join(f"{p.number}: z {p.extent()[0]:.0f} to {p.extent()[1]:.0f}"
                           for p in positions)
            flags.add("extra_stations", f"{n_pos} stations found, {expected_stations} "
                                        f"expected (a shifted repeat or an extra station; "
                                        f"all stitched in): {zs} mm")

        margin = cfg.trim_station_ends
        geoms: list[StationGeometry] = []
        acq_of: dict[str, Mapping[str, _Series]] = {}
        for p in positions:
            g = StationGeometry(f"station {p.number}", p.number,
                                _geometry(p.primary, margin, path), "primary",
                                min(s.step for s in p.primary.values()))
            geoms.append(g)
            acq_of[g.label] = p.primary
            for r, acq in enumerate(p.older, start=1):
                og = StationGeometry(f"station {p.number} (older acquisition {r})", p.number,
                                     _geometry(acq, margin, path), "older",
                                     min(s.step for s in acq.values()))
                geoms.append(og)
                acq_of[og.label] = acq
        try:
            plan = plan_stitch(geoms, stitched, cfg)
        except Exception as err:
            if isinstance(err, LoadError):
                raise
            raise LoadError(f"cannot stitch the stations ({err})", path,
                            "see docs/UKBB.md for the stitch settings") from None

        swaps: list[dict[str, Any]] = []
        spacing_zyx = tuple(float(v) for v in plan.spacing[::-1])

        def load(geom: StationGeometry):
            acq = acq_of[geom.label]
            return {ch: _load_series(zf, acq[ch], margin, path) for ch in stitched}

        def check_swap(geom: StationGeometry, arrays: dict, _aff) -> None:
            if not swap_on:
                return
            per_leg = geom.group > n_pos - cfg.leg_stations
            results, split = dixon_swap.check_station(
                arrays["water"], arrays["fat"], spacing_zyx, cfg.swap_fix_below,
                cfg.swap_suspect_below)
            part, why = dixon_swap.plan_fix(results, per_leg)
            entry = {"station": geom.label, "per_leg": per_leg,
                     "results": [r.as_dict() for r in results], "swapped_part": part}
            swaps.append(entry)
            where = geom.label if part in (None, "whole") else f"{geom.label}, {part} leg"
            if part is not None:
                stats = ", ".join(r.describe() for r in why)
                if cfg.swap_check == "fix":
                    dixon_swap.swap_back(arrays["water"], arrays["fat"], part, split)
                    entry["fixed"] = True
                    flags.add("fat_water_swap_fixed",
                              f"{where}: fat and water swapped back ({stats})")
                else:
                    flags.add("fat_water_swap_detected",
                              f"{where}: fat and water look swapped ({stats}); not fixed "
                              "(swap_check='flag')")
            elif why:
                r = why[0]
                side = geom.label if r.part == "whole" else f"{geom.label}, {r.part} side"
                flags.add("fat_water_swap_suspected",
                          f"{side}: fat and water may be swapped ({r.describe()}; "
                          f"{r.reason}); left as they are")

        data, affine, report = run_stitch(plan, load, check_swap)

    # provenance and QC
    repeats = []
    for p in positions:
        n_acq = max(len(v) for v in p.by_channel.values())
        if n_acq < 2:
            continue
        prim = p.primary
        older = [s for lst in p.by_channel.values() for s in lst[1:]]
        when = _clock(next(iter(prim.values())).acq_time)
        fillers = [u for u in report["used"] if u.startswith(f"station {p.number} (older")]
        repeats.append({"station": p.number, "acquisitions": n_acq,
                        "used": {c: s.label for c, s in prim.items()},
                        "older": [s.label for s in older], "older_used_for_gap": fillers})
        rule = "highest SeriesNumber" if cfg.repeats == "highest_series_number" else "newest"
        flags.add("repeat_resolved",
                  f"station {p.number} acquired {n_acq} times: the {rule} ({when}, series "
                  f"{', '.join('#' + str(s.number) for s in prim.values())}) used, older "
                  f"{', '.join('#' + str(s.number) for s in older)} "
                  + ("used only where the newest leaves a gap" if fillers else "dropped"))
        for f in fillers:
            pl = next(x for x in plan.placed if x.geom.label == f)
            ks = np.nonzero(pl.weights >= 0.999)[0]
            z0 = plan.origin_local[2] + plan.spacing[2] * (ks.min() if ks.size else 0)
            z1 = plan.origin_local[2] + plan.spacing[2] * (ks.max() if ks.size else 0)
            flags.add("repeat_filled_gap",
                      f"station {p.number}: the newest acquisition leaves z {z0:.1f} to "
                      f"{z1:.1f} mm uncovered; the older acquisition fills it")
    mismatches = []
    for pl in plan.placed:
        if pl.mismatch is None or pl.geom.label not in report["used"]:
            continue
        shapes = pl.mismatch["shapes"]
        mismatches.append({"station": pl.geom.label, **pl.mismatch})
        desc = " and ".join(f"{c} {' x '.join(map(str, s))}" for c, s in shapes.items())
        flags.add("water_fat_size_mismatch",
                  f"{pl.geom.label}: {desc} voxels (x, y, z); every channel used on their "
                  f"common extent only")
    for b in plan.bridged:
        flags.add("stations_not_overlapping",
                  f"{b['stations'][0]} and {b['stations'][1]} do not overlap"
                  + (f" (a gap of {b['gap_slices']} slice(s) filled with their edge slices)"
                     if b["gap_slices"] else ""))
    corr = {tuple(e["stations"]): e for e in report.get("intensity_correction", [])}
    overlaps = []
    for e in plan.overlaps:
        e2 = dict(e)
        c = corr.get(tuple(e["stations"]))
        if c is not None:
            e2["intensity_factors"] = c.get("factors")
            if "skipped" in c:
                e2["intensity_correction_skipped"] = c["skipped"]
        overlaps.append(e2)

    first = positions[0].primary[stitched[0]]
    ds0 = first.datasets[0]
    prim_stations = []
    for p in positions:
        lo, hi, _ = p.extent()
        prim_stations.append({
            "station": p.number, "z_mm": [round(lo, 3), round(hi, 3)],
            "series": {ch: p.primary[ch].label for ch in channels},
            "matrix_xyz": {ch: [p.primary[ch].cols, p.primary[ch].rows,
                                len(p.primary[ch].datasets)] for ch in channels},
            "slice_step_mm": round(max(p.primary[ch].step for ch in channels), 4),
            "acquired": _clock(p.primary[channels[0]].acq_time)})
    idx = [stitched.index(c) for c in channels]
    if idx != list(range(len(stitched))):
        data = np.ascontiguousarray(data[idx])
    prov: dict[str, Any] = {
        "path": str(path),
        "format": "ukbb_zip",
        "orientation": orientation_letters(LPS_TO_RAS @ first.aff_lps),
        "n_stations": n_pos,
        "stations": prim_stations,
        "grid": _grid_text(cfg, plan.spacing),
        "blend": _blend_text(cfg),
        "qc": flags.as_list(),
        "ukbb": _jsonable({
            "settings": cfg.as_dict(),
            "spacing_mm": [round(float(v), 8) for v in plan.spacing],
            "stitched": report["used"],
            "overlaps": overlaps,
            "trimmed": {"volume_end_slices": cfg.trim_volume_ends,
                        "station_end_slices": cfg.trim_station_ends},
            "repeats": repeats,
            "dropped_series": [s.label for p in positions for s in p.dropped],
            "water_fat_mismatch": mismatches,
            "swaps": swaps,
        }),
    }
    return Volume(data, affine, channels, prov, subject_metadata(ds0))


# -- a folder of UK Biobank bulk files, indexed by name ------------------------------------------

#: UK Biobank field of the neck-to-knee Dixon station zips.
DIXON_FIELD = 20201
_BULK_NAME = re.compile(r"^(\d+)_(\d+)_(\d+)_(\d+)\.zip$", re.IGNORECASE)


@dataclass(frozen=True)
class UKBBFile:
    """One bulk file: participant ``eid``, data ``field``, ``instance`` (2 = first imaging
    visit, 3 = repeat imaging) and ``array`` index, parsed from its name."""

    eid: str
    field: int
    instance: int
    array: int
    path: Path


def parse_bulk_name(name: str) -> tuple[str, int, int, int] | None:
    """``'1234567_20201_2_0.zip'`` -> ``('1234567', 20201, 2, 0)``; None for other names."""
    m = _BULK_NAME.match(name)
    if not m:
        return None
    return m.group(1), int(m.group(2)), int(m.group(3)), int(m.group(4))


class UKBBFolderIndex:
    """Lazy index of a folder of UK Biobank bulk zips: participant id -> files by field.

    The index is built on first use by scanning directory entries (``os.scandir``, names only,
    sub-folders included); no zip is opened. Files whose names do not follow UK Biobank's
    ``<eid>_<field>_<instance>_<array>.zip`` pattern are listed in :attr:`skipped`.
    """

    def __init__(self, folder: str | Path, recursive: bool = True):
        self.folder = Path(folder).expanduser()
        self.recursive = recursive
        self._files: dict[str, list[UKBBFile]] | None = None
        self._skipped: list[str] = []

    def _build(self) -> dict[str, list[UKBBFile]]:
        if self._files is not None:
            return self._files
        if not self.folder.is_dir():
            raise LoadError("UK Biobank folder not found", self.folder,
                            "give the folder holding the <eid>_20201_<instance>_0.zip files")
        files: dict[str, list[UKBBFile]] = {}
        skipped: list[str] = []
        stack = [self.folder]
        while stack:
            d = stack.pop()
            try:
                it = os.scandir(d)
            except OSError as err:
                raise LoadError(f"cannot list the folder ({err.strerror})", d,
                                "check its permissions") from None
            with it:
                for e in it:
                    if e.name.startswith("."):
                        continue
                    if e.is_dir(follow_symlinks=True):
                        if self.recursive:
                            stack.append(Path(e.path))
                        continue
                    if not e.name.lower().endswith(".zip"):
                        continue
                    parsed = parse_bulk_name(e.name)
                    if parsed is None:
                        skipped.append(e.name)
                        continue
                    eid, fld, inst, arr = parsed
                    files.setdefault(eid, []).append(UKBBFile(eid, fld, inst, arr, Path(e.path)))
        for lst in files.values():
            lst.sort(key=lambda f: (f.field, f.instance, f.array))
        self._files, self._skipped = files, sorted(skipped)
        return files

    @property
    def skipped(self) -> list[str]:
        """Zip names that are not UK Biobank bulk file names."""
        self._build()
        return list(self._skipped)

    def __len__(self) -> int:
        return len(self._build())

    def __contains__(self, eid: object) -> bool:
        return str(eid) in self._build()

    def subjects(self, field: int | None = DIXON_FIELD) -> list[str]:
        """Participant ids with at least one file of ``field`` (None: any field), sorted."""
        files = self._build()
        ids = [e for e, lst in files.items() if field is None or any(f.field == field
                                                                     for f in lst)]
        return sorted(ids, key=lambda e: (len(e), e))

    def files(self, eid: str, field: int | None = None) -> list[UKBBFile]:
        """The files of participant ``eid`` (of ``field`` when given)."""
        return [f for f in self._build().get(str(eid), []) if field is None or f.field == field]

    def zip_for(self, eid: str, field: int = DIXON_FIELD, instance: int | None = None
                ) -> UKBBFile | None:
        """The file of ``eid`` for ``field``: ``instance`` when given, else the earliest
        instance present (array 0 first); None when there is none."""
        cands = [f for f in self.files(eid, field) if instance is None or f.instance == instance]
        return cands[0] if cands else None
