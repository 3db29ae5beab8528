"""The series of a UK Biobank Dixon zip grouped into stations: one per table position, repeats
resolved to the newest acquisition, channels checked for every station
(:mod:`bodyage_core.io.ukbb` loads and stitches them)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from bodyage_core.errors import LoadError
from bodyage_core.io.dicom import (
    series_key,
    stack_geometry,
)
from bodyage_core.io.ukbb_stitch import (
    StitchSettings,
)
from bodyage_core.io.ukbb_zip import (
    MISSING_HINT,
    SERIES_DESCRIPTION_HINT,
    dixon_channel,
    header_problem,
)

# -- series, stations, repeats ------------------------------------------------------------------

def seconds_of(value: Any) -> float | None:
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


def clock(seconds: float | None) -> str:
    if seconds is None:
        return "time unknown"
    s = int(round(seconds))
    return f"{s // 3600:02d}:{s // 60 % 60:02d}:{s % 60:02d}"


@dataclass
class Series:
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


def collect_series(items, path: Path, wanted: Sequence[str], settings: StitchSettings
                    ) -> tuple[list[Series], list[str]]:
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
            problem = header_problem(ds)
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
        acq = seconds_of(ds0.get("AcquisitionTime"))
        ser = seconds_of(ds0.get("SeriesTime"))
        number = int(ds0.get("SeriesNumber", 0) or 0)
        if settings.repeats == "highest_series_number":
            newness: tuple = (number,)
        else:
            newness = (str(ds0.get("AcquisitionDate", "") or ""), -1.0 if acq is None else acq,
                       str(ds0.get("SeriesDate", "") or ""), -1.0 if ser is None else ser, number)
        out.append(Series(ch, desc, number, str(uid), datasets, infos, float(min(zs)),
                           float(max(zs)), float(info_geo["slice_step"]), int(ds0.Rows),
                           int(ds0.Columns), acq if acq is not None else ser, newness,
                           aff_lps, not info_geo["nonuniform_slice_spacing"]))
    return out, sorted(found)


@dataclass
class Position:
    """One station (one table position): the acquisitions found there."""

    number: int
    by_channel: dict[str, list[Series]]          # newest first
    older: list[dict[str, Series]] = field(default_factory=list)   # complete older ones
    dropped: list[Series] = field(default_factory=list)

    @property
    def primary(self) -> dict[str, Series]:
        return {ch: lst[0] for ch, lst in self.by_channel.items()}

    def extent(self, acq: Mapping[str, Series] | None = None) -> tuple[float, float, float]:
        acq = self.primary if acq is None else acq
        return (max(s.z_lo for s in acq.values()), min(s.z_hi for s in acq.values()),
                max(s.step for s in acq.values()))


def overlap_fraction(a: tuple[float, float], b: tuple[float, float]) -> float:
    ov = min(a[1], b[1]) - max(a[0], b[0])
    short = min(a[1] - a[0], b[1] - b[0])
    return ov / short if short > 0 else 0.0


def station_positions(series: list[Series], settings: StitchSettings) -> list[Position]:
    clusters: list[tuple[tuple[float, float], list[Series]]] = []
    for s in sorted(series, key=lambda s: -(s.z_lo + s.z_hi)):
        best, frac = None, 0.0
        for c in clusters:
            f = overlap_fraction(s.slab, c[0])
            if f > frac:
                best, frac = c, f
        if best is not None and frac >= settings.repeat_overlap:
            best[1].append(s)
        else:
            clusters.append((s.slab, [s]))
    positions = []
    for _, members in clusters:
        by_ch: dict[str, list[Series]] = {}
        for s in members:
            by_ch.setdefault(s.channel, []).append(s)
        for lst in by_ch.values():
            lst.sort(key=lambda s: s.newness, reverse=True)
        positions.append(Position(0, by_ch))
    positions.sort(key=lambda p: -sum(p.extent()[:2]))
    for k, p in enumerate(positions, start=1):
        p.number = k
    return positions


def keep_channels(p: Position, channels: Sequence[str]) -> None:
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


def check_channels(positions: list[Position], series: list[Series], found: list[str],
                    channels: Sequence[str], path: Path) -> None:
    for ch in channels:
        if not any(s.channel == ch for s in series):
            raise LoadError(f"no {ch!r} series in the zip (Dixon series found: "
                            f"{', '.join(found) or 'none'})", path,
                            f"the zip is incomplete or not UK Biobank Dixon data; "
                            f"series are recognised by {SERIES_DESCRIPTION_HINT}")
    n = len(positions)
    for p in positions:
        for ch in channels:
            if ch not in p.by_channel:
                lo = min(s.z_lo for lst in p.by_channel.values() for s in lst)
                hi = max(s.z_hi for lst in p.by_channel.values() for s in lst)
                raise LoadError(f"station {p.number} of {n} (z {lo:.1f} to {hi:.1f} mm) has no "
                                f"{ch!r} series", path, MISSING_HINT)


def check_coverage(positions: list[Position], channels: Sequence[str], path: Path,
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
                        path, MISSING_HINT)
    n = len(positions)
    if expected is not None and n < expected:
        raise LoadError(f"{n} stations found, {expected} expected: a station is missing at the "
                        f"top (neck) or bottom (knees) for channels {', '.join(channels)}",
                        path, MISSING_HINT)
