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

The parts: :mod:`~bodyage_core.io.ukbb_zip` (members, headers, Dixon channels),
:mod:`~bodyage_core.io.ukbb_series` (series to stations, repeats), this module (loading),
:mod:`~bodyage_core.io.ukbb_stitch` (the fused volume).

Streaming a cohort: :class:`~bodyage_core.io.ukbb_bulk.UKBBFolderIndex` indexes a folder of UK Biobank bulk files (any
number, nested folders allowed) by their names alone (``<eid>_<field>_<instance>_<array>.zip``,
e.g. ``1234567_20201_2_0.zip``), without opening them; a zip is read only when its subject is
loaded, in one sequential read into memory (members are decompressed from memory, nothing is
extracted to disk).
"""

from __future__ import annotations

import zipfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from bodyage_core.errors import LoadError
from bodyage_core.io._geometry import LPS_TO_RAS, canonical_xyz
from bodyage_core.io.dicom import (
    read_dataset,
    stack_series,
    subject_metadata,
)
from bodyage_core.io.dixon_swap import check_station, plan_fix, swap_back
from bodyage_core.io.ukbb_series import (
    Series,
    check_channels,
    check_coverage,
    clock,
    collect_series,
    keep_channels,
    station_positions,
)
from bodyage_core.io.ukbb_stitch import (
    UKBB_SPACING_XYZ,
    StationGeometry,
    StitchSettings,
    plan_stitch,
    resolve_settings,
    run_stitch,
)
from bodyage_core.io.ukbb_zip import CHANNELS, CORRUPT_HINT, open_zip, read_member, read_zip
from bodyage_core.volume import Volume, orientation_letters

# -- loading ------------------------------------------------------------------------------------

class _Flags:
    """QC flags, one per name (messages of several stations joined)."""

    def __init__(self) -> None:
        self._msgs: dict[str, list[str]] = {}

    def add(self, flag: str, message: str) -> None:
        self._msgs.setdefault(flag, []).append(message)

    def as_list(self) -> list[dict[str, str]]:
        return [{"flag": f, "message": "; ".join(m)} for f, m in self._msgs.items()]


def _trimmed(s: Series, margin: int, path: Path) -> tuple[list, list]:
    if margin <= 0:
        return s.datasets, s.infos
    if len(s.datasets) - 2 * margin < 2:
        raise LoadError(f"series {s.label} has {len(s.datasets)} slices; trimming "
                        f"{margin} at each end leaves too few", path,
                        "lower trim_station_ends")
    return s.datasets[margin:-margin], s.infos[margin:-margin]


def _affine_ras(s: Series, margin: int) -> np.ndarray:
    aff = np.array(s.aff_lps, dtype=np.float64)
    aff[:3, 3] += margin * aff[:3, 2]
    return LPS_TO_RAS @ aff


def _geometry(acq: Mapping[str, Series], margin: int, path: Path
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
                        "series", path, CORRUPT_HINT)
    out = arr.astype(np.float32)
    slope = float(ds.get("RescaleSlope", 1.0) or 1.0)
    inter = float(ds.get("RescaleIntercept", 0.0) or 0.0)
    if slope != 1.0:
        out *= np.float32(slope)
    if inter != 0.0:
        out += np.float32(inter)
    return out


def _load_series(zf: zipfile.ZipFile, s: Series, margin: int, path: Path
                 ) -> tuple[np.ndarray, np.ndarray]:
    """One series' pixels as a canonical ``(X, Y, Z)`` array and its RAS affine."""
    datasets, infos = _trimmed(s, margin, path)
    names = [f"{path}:{info.filename}" for info in infos]
    full = []
    for info, name in zip(infos, names):
        ds = read_dataset(read_member(zf, info, path), name)
        if ds is None or "PixelData" not in ds:
            raise LoadError(f"member {info.filename} has no pixel data", path, CORRUPT_HINT)
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
        defaults follow the references (docs/UKBB.md). ``StitchSettings.plain()`` is the simplest
        fusion (no trimming, no intensity correction).
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
    with open_zip(path) as zf:
        items = read_zip(zf, path)
        wanted = tuple(dict.fromkeys([*channels, "water", "fat"])) if swap_on else channels
        series, found = collect_series(items, path, wanted, cfg)
        positions = station_positions(series, cfg)
        check_channels(positions, series, found, channels, path)
        # The swap test needs both water and fat at every station; else it is skipped.
        stitched = channels
        if swap_on:
            extra = [c for c in ("water", "fat") if c not in channels]
            if all(c in p.by_channel for p in positions for c in extra):
                stitched = (*channels, *extra)
            else:
                swap_on = False
        for p in positions:
            keep_channels(p, stitched)
        check_coverage(positions, channels, path, expected_stations)
        n_pos = len(positions)
        if expected_stations is not None and n_pos > expected_stations:
            zs = ", ".join(f"{p.number}: z {p.extent()[0]:.0f} to {p.extent()[1]:.0f}"
                           for p in positions)
            flags.add("extra_stations", f"{n_pos} stations found, {expected_stations} "
                                        f"expected (a shifted repeat or an extra station; "
                                        f"all stitched in): {zs} mm")

        margin = cfg.trim_station_ends
        geoms: list[StationGeometry] = []
        acq_of: dict[str, Mapping[str, Series]] = {}
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
            results, split = check_station(
                arrays["water"], arrays["fat"], spacing_zyx, cfg.swap_fix_below,
                cfg.swap_suspect_below)
            part, why = plan_fix(results, per_leg)
            entry = {"station": geom.label, "per_leg": per_leg,
                     "results": [r.as_dict() for r in results], "swapped_part": part}
            swaps.append(entry)
            where = geom.label if part in (None, "whole") else f"{geom.label}, {part} leg"
            if part is not None:
                stats = ", ".join(r.describe() for r in why)
                if cfg.swap_check == "fix":
                    swap_back(arrays["water"], arrays["fat"], part, split)
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
        when = clock(next(iter(prim.values())).acq_time)
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
            "acquired": clock(p.primary[channels[0]].acq_time)})
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
