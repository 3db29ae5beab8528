"""UK Biobank neck-to-knee Dixon station zips (field 20201), stitched into one Volume.

A zip holds single-slice DICOM files for six axial stations (neck to knee), each acquired as
four series. Series are identified by the **last underscore-separated token of
SeriesDescription** (case-insensitive):

=================================  =========
description ends with              channel
=================================  =========
``_W`` (``_water``)                ``water``
``_F`` (``_fat``)                  ``fat``
``_in`` (``_ip``, ``_inphase``)    ``in``
``_opp`` (``_op``, ``_outphase``)  ``opp``
=================================  =========

so ``Dixon_BH_17s_W``, ``Dixon_noBH_F``, ``Dixon_noBH_in`` and ``Dixon_BH_17s_opp`` all map;
other series (localisers, ``..._W_stitched`` derived images) are ignored. Descriptions do not
name the station, so series are grouped into stations by their z extent (from
ImagePositionPatient); stations are numbered 1 (most superior, neck) to 6 (knees). When a
station was acquired twice for a channel, the series with the highest SeriesNumber (the repeat)
is used.

Stitching: every station is placed on one common RAS grid spanning all stations (by default the
stations' own in-plane spacing and the smallest slice step; or ``spacing_xyz``), resampled
(trilinear) only where the grids differ, and overlapping slices are blended linearly: each
station's weight falls off linearly towards its own z edges (feathering), so the transition
across an overlap is a linear cross-fade without a seam.

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
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from scipy import ndimage

from bodyage_core.errors import LoadError
from bodyage_core.io._geometry import canonical_xyz
from bodyage_core.io.dicom import (
    read_dataset,
    series_key,
    stack_geometry,
    stack_series,
    subject_metadata,
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


def dixon_channel(description: str) -> str | None:
    """Channel name for a UK Biobank Dixon SeriesDescription (``'Dixon_BH_17s_W'`` -> water)."""
    desc = str(description or "").strip()
    if "_" not in desc:
        return None
    return _SUFFIX_TO_CHANNEL.get(desc.rsplit("_", 1)[1].lower())


@dataclass
class _Series:
    channel: str
    description: str
    number: int
    datasets: list
    names: list  # zip members (ZipInfo), one per slice
    z_lo: float = 0.0
    z_hi: float = 0.0
    step: float = 0.0


@dataclass
class _Station:
    z_lo: float
    z_hi: float
    series: dict[str, _Series] = field(default_factory=dict)
    repeats: list[str] = field(default_factory=list)


_HEADER_BYTES = (4096, 32768)
_NEEDED_TAGS = ("ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing", "Rows",
                "Columns", "SeriesDescription")
_HEADER_TAGS = [*_NEEDED_TAGS, "SeriesInstanceUID", "SeriesNumber", "SliceThickness",
                "SpacingBetweenSlices", "PatientAge", "PatientSex", "Modality"]


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
    except (zipfile.BadZipFile, OSError, EOFError, ValueError) as err:
        raise LoadError(f"member {info.filename} cannot be read ({err})", path,
                        "the zip is corrupt; fetch it again") from err


def _read_header(zf: zipfile.ZipFile, info: zipfile.ZipInfo, path: Path):
    """The DICOM header of a member without decompressing its pixel data (when possible)."""
    name = f"{path}:{info.filename}"
    for size in _HEADER_BYTES:
        if info.file_size <= size:
            break
        head = _read_member(zf, info, path, size)
        try:
            ds = pydicom.dcmread(io.BytesIO(head), stop_before_pixels=True,
                                 specific_tags=_HEADER_TAGS)
            if all(t in ds for t in _NEEDED_TAGS):
                return ds
        except Exception:  # a header cut mid-element: try more bytes, then the whole member
            pass
    ds = read_dataset(_read_member(zf, info, path), name)
    return ds


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


def _collect_series(items, path: Path) -> list[_Series]:
    groups: dict[str, list] = {}
    for info, ds in items:
        groups.setdefault(series_key(ds), []).append((info, ds))
    out = []
    for members in groups.values():
        ds0 = members[0][1]
        desc = str(ds0.get("SeriesDescription", "") or "")
        ch = dixon_channel(desc)
        if ch is None:
            continue
        infos = [m[0] for m in members]
        datasets = [m[1] for m in members]
        _, _, info = stack_geometry(datasets, f"{path} (series {desc})")
        zs = [float(d.ImagePositionPatient[2]) for d in datasets]  # LPS z = RAS z
        s = _Series(ch, desc, int(ds0.get("SeriesNumber", 0) or 0), datasets, infos,
                    float(min(zs)), float(max(zs)), float(info["slice_step"]))
        out.append(s)
    return out


def _group_stations(series: list[_Series], channels: Sequence[str], path: Path
                    ) -> list[_Station]:
    wanted = [s for s in series if s.channel in channels]
    for ch in channels:
        if not any(s.channel == ch for s in wanted):
            found = sorted({s.description for s in series}) or ["none"]
            raise LoadError(f"no {ch!r} series in the zip (Dixon series found: "
                            f"{', '.join(found)})", path,
                            f"the zip is incomplete or not UK Biobank Dixon data; "
                            f"series are recognised by {_SERIES_DESCRIPTION_HINT}")
    stations: list[_Station] = []
    for s in sorted(wanted, key=lambda s: -(s.z_lo + s.z_hi)):
        tol = max(2.0, 0.5 * s.step)
        for st in stations:
            if abs(st.z_lo - s.z_lo) <= tol and abs(st.z_hi - s.z_hi) <= tol:
                break
        else:
            st = _Station(s.z_lo, s.z_hi)
            stations.append(st)
        prev = st.series.get(s.channel)
        if prev is not None:
            keep, other = (s, prev) if s.number > prev.number else (prev, s)
            st.repeats.append(f"{other.description} #{other.number} replaced by "
                              f"#{keep.number}")
            st.series[s.channel] = keep
        else:
            st.series[s.channel] = s
    stations.sort(key=lambda st: -(st.z_lo + st.z_hi))  # station 1 = most superior
    return stations


def _check_stations(stations: list[_Station], channels: Sequence[str], path: Path,
                    expected: int | None) -> None:
    hint = "the zip is incomplete; download UK Biobank field 20201 for this subject again"
    for k, st in enumerate(stations, start=1):
        for ch in channels:
            if ch not in st.series:
                raise LoadError(f"station {k} of {len(stations)} (z {st.z_lo:.1f} to "
                                f"{st.z_hi:.1f} mm) has no {ch!r} series", path, hint)
    for k in range(len(stations) - 1):
        upper, lower = stations[k], stations[k + 1]
        step = max(s.step for s in list(upper.series.values()) + list(lower.series.values()))
        if upper.z_lo - lower.z_hi > 1.5 * step:
            raise LoadError(f"gap in z coverage between station {k + 1} (z {upper.z_lo:.1f} to "
                            f"{upper.z_hi:.1f} mm) and station {k + 2} (z {lower.z_lo:.1f} to "
                            f"{lower.z_hi:.1f} mm): a station is missing (stations numbered from the neck down as found)", path, hint)
    if expected is not None and len(stations) < expected:
        raise LoadError(f"{len(stations)} stations found, {expected} expected: a station is "
                        f"missing at the top (neck) or bottom (knees) for channels "
                        f"{', '.join(channels)}", path, hint)


def _station_image(zf: zipfile.ZipFile, s: _Series, path: Path
                   ) -> tuple[np.ndarray, np.ndarray]:
    names = [f"{path}:{info.filename}" for info in s.names]
    full = []
    for info, name in zip(s.names, names):
        ds = read_dataset(_read_member(zf, info, path), name)
        if ds is None:
            raise LoadError(f"member {info.filename} has no pixel data", path,
                            "the zip is corrupt; fetch it again")
        full.append(ds)
    xyz, affine, _ = stack_series(full, names, path)
    return canonical_xyz(xyz, affine)


def load_ukbb_zip(path: str | Path, channels: Sequence[str] | str = ("water", "fat"),
                  expected_stations: int | None = 6,
                  spacing_xyz: Sequence[float] | None = None) -> Volume:
    """Stitch a UK Biobank Dixon zip into one Volume with one channel per Dixon series.

    Parameters
    ----------
    path
        The subject's field-20201 zip.
    channels
        Any of ``'water', 'fat', 'in', 'opp'``, in the order wanted.
    expected_stations
        Stations a complete zip has (6 for UK Biobank; None to accept any number).
    spacing_xyz
        Output voxel size in mm ``(x, y, z)``; default: the stations' in-plane spacing and the
        smallest slice step (no resampling for the usual UK Biobank geometry).

    Returns
    -------
    Volume
        ``(C, Z, Y, X)`` float32 on a canonical RAS grid spanning all stations.
    """
    path = Path(path)
    if isinstance(channels, str):
        channels = (channels,)
    channels = tuple(channels)
    bad = [c for c in channels if c not in CHANNELS]
    if bad:
        raise LoadError(f"unknown Dixon channel(s) {bad}", path,
                        f"choose from {', '.join(CHANNELS)}")
    with _open_zip(path) as zf:
        items = _read_zip(zf, path)
        series = _collect_series(items, path)
        stations = _group_stations(series, channels, path)
        _check_stations(stations, channels, path, expected_stations)
        # Station images on their own canonical RAS grids (pixels of the wanted series only).
        images = [{ch: _station_image(zf, st.series[ch], path) for ch in channels}
                  for st in stations]
    ref_xyz, ref_aff = images[0][channels[0]]
    rot = ref_aff[:3, :3] / np.linalg.norm(ref_aff[:3, :3], axis=0)
    if spacing_xyz is None:
        steps = [np.linalg.norm(img[ch][1][:3, 2]) for img in images for ch in channels]
        spacing = np.array([np.linalg.norm(ref_aff[:3, 0]), np.linalg.norm(ref_aff[:3, 1]),
                            min(steps)])
    else:
        spacing = np.asarray(spacing_xyz, dtype=np.float64)
    # Bounds of all stations in the output frame (rotation of the first station).
    lo = np.full(3, np.inf)
    hi = np.full(3, -np.inf)
    for img in images:
        for xyz, aff in img.values():
            n = np.array(xyz.shape[:3]) - 1
            corners = np.array([[i, j, k] for i in (0, n[0]) for j in (0, n[1]) for k in (0, n[2])])
            world = corners @ aff[:3, :3].T + aff[:3, 3]
            local = world @ rot  # coordinates along the output axes
            lo = np.minimum(lo, local.min(axis=0))
            hi = np.maximum(hi, local.max(axis=0))
    shape_xyz = np.floor((hi - lo) / spacing + 1e-3).astype(int) + 1
    out_aff = np.eye(4)
    out_aff[:3, :3] = rot * spacing[None, :]
    out_aff[:3, 3] = rot @ lo
    out_z = lo[2] + spacing[2] * np.arange(shape_xyz[2])  # z coordinate of output slices

    data = np.zeros((len(channels), *shape_xyz[::-1]), dtype=np.float32)  # (C, Z, Y, X)
    weight_sum = np.zeros(tuple(shape_xyz[::-1]), dtype=np.float32)
    for img in images:
        first_xyz, first_aff = img[channels[0]]
        n = np.array(first_xyz.shape[:3]) - 1
        corners = np.array([[i, j, k] for i in (0, n[0]) for j in (0, n[1]) for k in (0, n[2])])
        local = (corners @ first_aff[:3, :3].T + first_aff[:3, 3]) @ rot
        s_lo, s_hi = local.min(axis=0), local.max(axis=0)
        eps = 1e-3 * spacing
        i_lo = np.ceil((s_lo - lo) / spacing - 1e-3).astype(int)
        i_hi = np.floor((s_hi - lo) / spacing + 1e-3).astype(int)
        i_lo = np.clip(i_lo, 0, shape_xyz - 1)
        i_hi = np.clip(i_hi, 0, shape_xyz - 1)
        box = tuple(slice(a, b + 1) for a, b in zip(i_lo[::-1], i_hi[::-1]))  # (z, y, x)
        z = out_z[i_lo[2]:i_hi[2] + 1]
        wz = np.minimum(z - s_lo[2], s_hi[2] - z) + 0.5 * spacing[2]
        wz = np.where((z >= s_lo[2] - eps[2]) & (z <= s_hi[2] + eps[2]), np.maximum(wz, 1e-6), 0)
        w = wz.astype(np.float32)[:, None, None]
        weight_sum[box] += w
        sub_aff = out_aff.copy()
        sub_aff[:3, 3] = out_aff[:3, :3] @ i_lo + out_aff[:3, 3]
        sub_shape = tuple(int(b - a + 1) for a, b in zip(i_lo, i_hi))
        for c, ch in enumerate(channels):
            xyz, aff = img[ch]
            data[c][box] += w * _resample_into(xyz, aff, sub_aff, sub_shape)
    np.divide(data, weight_sum[None], out=data, where=weight_sum[None] > 0)

    ds0 = stations[0].series[channels[0]].datasets[0]
    prov: dict[str, Any] = {
        "path": str(path),
        "format": "ukbb_zip",
        "orientation": orientation_letters(
            np.diag([-1.0, -1.0, 1.0, 1.0]) @ stack_geometry(
                stations[0].series[channels[0]].datasets, path)[1]),
        "n_stations": len(stations),
        "stations": [
            {"station": k, "z_mm": [round(st.z_lo, 3), round(st.z_hi, 3)],
             "series": {ch: f"{st.series[ch].description} #{st.series[ch].number}"
                        for ch in channels}}
            for k, st in enumerate(stations, start=1)
        ],
        "blend": "linear feathering along z over station overlaps",
    }
    repeats = [r for st in stations for r in st.repeats]
    if repeats:
        prov["repeated_series"] = repeats
    return Volume(data, out_aff, channels, prov, subject_metadata(ds0))


def _resample_into(xyz: np.ndarray, aff: np.ndarray, out_aff: np.ndarray,
                   out_shape_xyz: tuple[int, ...]) -> np.ndarray:
    """Sample a station ``(X, Y, Z)`` array on an output sub-grid; returns ``(Z, Y, X)``."""
    m = np.linalg.inv(aff) @ out_aff  # output index -> station index
    shift = m[:3, 3]
    if np.allclose(m[:3, :3], np.eye(3), atol=1e-4) and np.allclose(shift, np.round(shift),
                                                                    atol=1e-3):
        start = np.round(shift).astype(int)
        stop = start + np.asarray(out_shape_xyz)
        if np.all(start >= 0) and np.all(stop <= np.array(xyz.shape[:3])):
            sub = xyz[start[0]:stop[0], start[1]:stop[1], start[2]:stop[2]]
            return np.transpose(sub, (2, 1, 0)).astype(np.float32, copy=False)
    # General case: trilinear; reverse axes so the work is in (z, y, x) C order.
    src = np.ascontiguousarray(np.transpose(xyz, (2, 1, 0)), dtype=np.float32)
    rev = np.eye(4)[[2, 1, 0, 3]]
    m_zyx = rev @ m @ rev
    return ndimage.affine_transform(src, m_zyx[:3, :3], offset=m_zyx[:3, 3],
                                    output_shape=tuple(out_shape_xyz[::-1]), order=1,
                                    mode="nearest", prefilter=False).astype(np.float32)


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
