"""Write synthetic UK Biobank-like neck-to-knee Dixon station zips (field 20201) from a Volume.

Real UK Biobank Dixon zips hold one DICOM file per slice for six axial stations (neck to knee),
each acquired as four series — in-phase, opposed-phase, fat and water — plus a manifest named
``manifest.cvs`` (sic). Series descriptions look like ``Dixon_noBH_in`` / ``Dixon_noBH_opp`` /
``Dixon_noBH_F`` / ``Dixon_noBH_W`` (free-breathing stations: neck, thighs, knees) and
``Dixon_BH_17s_W`` etc. (breath-hold stations 2-4: chest, abdomen, pelvis). Neighbouring
stations overlap by a few slices. This module writes the same structure from a (canonical RAS,
non-oblique) Volume with ``water`` and ``fat`` channels, so the stitcher, benchmarks and
streaming code can be exercised without real data. ``in`` and ``opp`` are derived as
``water + fat`` and ``|water - fat|`` unless the Volume has them.

Geometry is written the way the scanner does: ``ImageOrientationPatient = [1,0,0, 0,1,0]``
(rows run to patient Left, columns to Posterior, i.e. LPS), ``ImagePositionPatient`` per slice,
``PixelSpacing = [row spacing, column spacing]``, ``SliceThickness`` and stations ordered
head-first (station 1 = most superior).

Real-data traits, each off unless asked for (the reader's tests load every one):

=============================  =================================================================
argument                       what real zips do
=============================  =================================================================
``station_slices``             stations of different lengths (64, 44, 44, 44, 72, 64 slices)
``station_step``               the breath-hold stations 2-4 at 4.5 mm, the others at 3 mm
``station_rows``,              different matrices (224 x 168, 224 x 174 (x3), 224 x 162,
``station_row_offset``         224 x 156) whose origins shift in y (:data:`REAL_STATIONS`,
                               :func:`real_layout`)
``size_mismatch``              the water and fat series of one station differ in size
``repeats``                    a station acquired again (:class:`Repeat`), maybe at a shifted
                               position, maybe numbered lower than the older acquisition
``swaps``                      fat and water swapped in a station, or in one leg of it
``fold_slices``                fold-over (wrap-around) artefact in the end slices of every
                               station
``end_falloff``                signal loss in the outermost slices of every station
``station_gain``               intensity steps between stations
``implicit_vr``                implicit VR little endian files
``private_header_bytes``       a large private (Siemens-like) block before the geometry tags,
                               so the geometry lies past the reader's first 4 kB
``manifest_name``              ``manifest.cvs`` (default, as in real zips) or ``manifest.csv``
=============================  =================================================================
"""

from __future__ import annotations

import datetime
import io
import zipfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian, generate_uid

from bodyage_core.atomic import atomic_path
from bodyage_core.volume import Volume

#: SeriesDescription suffix written for each channel (what the scanner writes).
SUFFIX = {"in": "in", "opp": "opp", "fat": "F", "water": "W"}
MR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.4"
ECHO_TIME_MS = {"in": 4.77, "opp": 2.39, "fat": 2.39, "water": 2.39}
#: The real protocol's stations: (columns, rows, slices, slice step mm), station 1 first
#: (the recoh pipeline's SERIES_DIM; the breath-hold stations 2-4 at 4.5 mm).
REAL_STATIONS = ((224, 168, 64, 3.0), (224, 174, 44, 4.5), (224, 174, 44, 4.5),
                 (224, 174, 44, 4.5), (224, 162, 72, 3.0), (224, 156, 64, 3.0))


def station_ranges(n_slices: int, n_stations: int, overlap: int,
                   lengths: Sequence[int] | None = None) -> list[tuple[int, int]]:
    """Slice index ranges ``[start, stop)`` (numpy z order, inferior first) of each station.

    Without ``lengths`` the stations are of (nearly) equal length and each overlaps the next by
    exactly ``overlap`` slices. ``lengths`` gives each station's length in volume slices,
    station 1 (most superior) first; they must add up to ``n_slices + (n_stations - 1) *
    overlap``.
    """
    if n_stations < 1:
        raise ValueError("n_stations must be >= 1")
    if lengths is not None:
        lengths = [int(v) for v in lengths]
        if len(lengths) != n_stations:
            raise ValueError(f"{len(lengths)} station lengths for {n_stations} stations")
        if sum(lengths) - (n_stations - 1) * overlap != n_slices:
            raise ValueError(f"station lengths {lengths} overlapping by {overlap} cover "
                             f"{sum(lengths) - (n_stations - 1) * overlap} slices, not "
                             f"{n_slices}")
        if min(lengths) <= overlap:
            raise ValueError("every station must be longer than the overlap")
        out, start = [], 0
        for ln in reversed(lengths):   # inferior first
            out.append((start, start + ln))
            start += ln - overlap
        return out
    length = (n_slices + (n_stations - 1) * overlap) / n_stations
    if length <= overlap + 1:
        raise ValueError(f"{n_slices} slices are too few for {n_stations} stations "
                         f"overlapping by {overlap}")
    starts = [int(round(k * (length - overlap))) for k in range(n_stations)]
    stops = [starts[k + 1] + overlap for k in range(n_stations - 1)] + [n_slices]
    return list(zip(starts, stops))


def real_layout(n_slices: int, n_rows: int, overlap: int = 4) -> dict:
    """``write_ukbb_zip`` arguments that give a volume of ``n_slices`` (3 mm) x ``n_rows`` the
    real protocol's station layout, scaled: station lengths in proportion to 64/44/44/44/72/64
    slices (the breath-hold ones at 4.5 mm), rows in proportion to 168/174/174/174/162/156 with
    origins shifted in y, steps 3 / 4.5 mm."""
    mm = np.array([n * step for _, _, n, step in REAL_STATIONS], dtype=float)
    total = n_slices + 5 * overlap
    lengths = np.maximum(np.round(mm / mm.sum() * total).astype(int), overlap + 2)
    lengths[4] += total - int(lengths.sum())
    rows = [max(2, int(round(r / 174 * n_rows))) for _, r, _, _ in REAL_STATIONS]
    rows = [min(r, n_rows) for r in rows]
    shift = [0, 0, 0, 0, 1, -1]
    offsets = [int(np.clip((n_rows - r) // 2 + s, 0, n_rows - r)) for r, s in zip(rows, shift)]
    return {"n_stations": 6, "overlap": overlap, "station_slices": [int(v) for v in lengths],
            "station_rows": rows, "station_row_offset": offsets,
            "station_step": [step for *_, step in REAL_STATIONS]}


@dataclass(frozen=True)
class Repeat:
    """A station acquired a second time.

    The original acquisition becomes the older one (its data scaled by ``older_gain``, like the
    motion-spoilt acquisition that made the radiographer repeat it); the repeat is written
    ``minutes_later``, shifted by ``shift_slices`` volume slices (positive = superior), with
    series numbers after all others or from ``series_number`` (to number it *below* the older
    one).
    """

    station: int
    shift_slices: int = 0
    minutes_later: float = 5.0
    series_number: int | None = None
    older_gain: float = 0.5


def body_phantom(nz: int = 60, ny: int = 24, nx: int = 32,
                 spacing_xyz: Sequence[float] = (2.23214293, 2.23214293, 3.0),
                 legs_below: float = 0.3, sat_mm: float = 5.0, seed: int = 0) -> Volume:
    """A small Dixon body: a trunk above ``legs_below`` of the height and two legs below it, each
    a lean core (water 300, fat 30) inside a subcutaneous-fat shell ``sat_mm`` thick (water 40,
    fat 400), with a smooth texture along z and a little noise; water/fat ``(C, Z, Y, X)``."""
    rng = np.random.default_rng(seed)
    sx, sy, sz = (float(v) for v in spacing_xyz)
    z, y, x = np.mgrid[:nz, :ny, :nx].astype(np.float64)
    sat_y, sat_x = sat_mm / sy, sat_mm / sx

    def ellipse(cy, cx, ay, ax):
        outer = ((y - cy) / ay) ** 2 + ((x - cx) / ax) ** 2 < 1.0
        inner = ((y - cy) / max(ay - sat_y, 0.5)) ** 2 + ((x - cx) / max(ax - sat_x, 0.5)) ** 2 < 1.0
        return outer, inner

    legs = z < legs_below * nz
    t_out, t_in = ellipse(ny / 2 - 0.5, nx / 2 - 0.5, 0.40 * ny, 0.42 * nx)
    l_out, l_in = ellipse(ny / 2 - 0.5, nx / 2 - 0.5 - 0.22 * nx, 0.32 * ny, 0.18 * nx)
    r_out, r_in = ellipse(ny / 2 - 0.5, nx / 2 - 0.5 + 0.22 * nx, 0.32 * ny, 0.18 * nx)
    body = np.where(legs, l_out | r_out, t_out)
    lean = np.where(legs, l_in | r_in, t_in)
    fat_tissue = body & ~lean
    texture = 1.0 + 0.15 * np.sin(2 * np.pi * z / 17.0 + x / 7.0)
    water = (300.0 * lean + 40.0 * fat_tissue) * texture
    fat = (30.0 * lean + 400.0 * fat_tissue) * texture
    water = np.abs(water + rng.normal(0, 2.0, water.shape))
    fat = np.abs(fat + rng.normal(0, 2.0, fat.shape))
    aff = np.diag([sx, sy, sz, 1.0])
    aff[:3, 3] = [-(nx - 1) * sx / 2, -(ny - 1) * sy / 2, -1000.0]
    return Volume(np.stack([water, fat]).astype(np.float32), aff, ("water", "fat"))


def _description(station: int, n_stations: int, channel: str) -> str:
    breath_hold = n_stations >= 3 and 2 <= station <= min(4, n_stations - 1)
    prefix = "Dixon_BH_17s" if breath_hold else "Dixon_noBH"
    return f"{prefix}_{SUFFIX[channel]}"


def _channel_arrays(volume: Volume, channels: Sequence[str]) -> dict[str, np.ndarray]:
    have = set(volume.channels)
    if not {"water", "fat"} <= have and not set(channels) <= have:
        raise ValueError(f"volume needs 'water' and 'fat' channels, has {volume.channels}")
    out = {}
    for ch in channels:
        if ch in have:
            out[ch] = np.asarray(volume.channel(ch), dtype=np.float64)
        elif ch == "in":
            out[ch] = np.asarray(volume.channel("water"), np.float64) + volume.channel("fat")
        elif ch == "opp":
            out[ch] = np.abs(np.asarray(volume.channel("water"), np.float64)
                             - volume.channel("fat"))
        else:
            raise ValueError(f"unknown Dixon channel {ch!r}; use in, opp, fat, water")
    return out


@dataclass
class _Acq:
    station: int
    start: int
    stop: int
    when: datetime.datetime
    gain: float
    tag: str
    series_number: int | None = None


def write_ukbb_zip(volume: Volume, path: str | Path, n_stations: int = 6, overlap: int = 4,
                   channels: Sequence[str] = ("in", "opp", "fat", "water"),
                   drop: Iterable[tuple[int, str | None]] = (),
                   station_gain: Sequence[float] | None = None,
                   station_step: Sequence[float] | None = None,
                   subject_id: str = "1000000", age: float | None = None,
                   sex: str | None = None, seed: int = 0, *,
                   station_slices: Sequence[int] | None = None,
                   station_rows: Sequence[int] | None = None,
                   station_row_offset: Sequence[int] | None = None,
                   size_mismatch: Mapping[tuple[int, str], tuple[int, int, int]] | None = None,
                   repeats: Iterable[Repeat] = (),
                   swaps: Mapping[int, str] | None = None,
                   fold_slices: int = 0, fold_strength: float = 0.6,
                   end_falloff: Sequence[float] = (),
                   implicit_vr: bool = False,
                   private_header_bytes: int = 0,
                   manifest_name: str = "manifest.cvs") -> Path:
    """Write ``volume`` as a UK Biobank-style Dixon station zip (atomically).

    Parameters
    ----------
    volume
        Canonical RAS, non-oblique Volume with ``water`` and ``fat`` channels
        (``(C, Z, Y, X)``); its grid becomes the stations' grid.
    path
        Target ``.zip``.
    n_stations, overlap
        Number of stations (UK Biobank: 6) and volume slices shared by neighbouring stations.
    channels
        Which Dixon series to write per station.
    drop
        ``(station, channel)`` pairs to leave out (station numbers 1-based, 1 = most superior;
        ``channel=None`` drops the whole station) — for testing incomplete zips.
    station_gain
        Optional intensity factor per station (1-based order) to mimic station-to-station
        intensity differences.
    station_step
        Optional slice step (mm) per station, to mimic stations acquired with different slice
        thickness: the station's z extent is re-sampled (linear along z) at that step, starting
        from its top slice. Default: the volume's own slices.
    subject_id, age, sex
        Written to PatientID / PatientAge / PatientSex (age and sex only when given).
    seed
        Makes the generated UIDs deterministic.
    station_slices
        Length of each station in volume slices (station 1 first); they must cover the volume
        with ``overlap`` slices between neighbours. Default: equal lengths.
    station_rows, station_row_offset
        Rows (y size) of each station and the first volume row (numpy y index, posterior
        first) it starts at; default: all rows. The origins follow.
    size_mismatch
        ``{(station, channel): (fewer_slices, fewer_rows, fewer_columns)}``: that series is
        written smaller (its most inferior slices, most posterior rows, patient-left columns
        left out; its origin unchanged).
    repeats
        Stations acquired twice (:class:`Repeat`).
    swaps
        ``{station: "whole" | "left" | "right"}``: fat and water exchanged in the whole station
        or in the patient's left (x below the centre) / right half of it.
    fold_slices, fold_strength
        Fold-over in the ``fold_slices`` outermost slices at both ends of every station: the
        anatomy just beyond the opposite end wraps in, up to ``fold_strength`` of it.
    end_falloff
        Factors for the outermost slices at both ends of every station (signal loss), e.g.
        ``(0.7, 0.85)``.
    implicit_vr
        Write implicit VR little endian files (real zips hold them) instead of explicit VR.
    private_header_bytes
        Size of a private (Siemens-like) block before the geometry tags.
    manifest_name
        ``manifest.cvs`` as in real zips, or ``manifest.csv``.
    """
    if volume.is_oblique:
        raise ValueError("write_ukbb_zip needs a non-oblique volume")
    if volume.orientation != "RAS":
        raise ValueError(f"write_ukbb_zip needs a canonical RAS volume, got {volume.orientation}")
    swaps = dict(swaps or {})
    for st, part in swaps.items():
        if part not in ("whole", "left", "right"):
            raise ValueError(f"swap of station {st} must be whole, left or right, got {part!r}")
    sources = list(dict.fromkeys([*channels, *(("water", "fat") if swaps else ())]))
    arrays = _channel_arrays(volume, sources)
    nz, ny, nx = volume.shape
    sx, sy, sz = volume.spacing
    ranges = station_ranges(nz, n_stations, overlap, station_slices)
    dropped = {(int(s), c) for s, c in drop}
    gains = list(station_gain) if station_gain is not None else [1.0] * n_stations
    rows_of = list(station_rows) if station_rows is not None else [ny] * n_stations
    off_of = (list(station_row_offset) if station_row_offset is not None
              else [(ny - r) // 2 for r in rows_of])
    for r, o in zip(rows_of, off_of):
        if r < 1 or o < 0 or o + r > ny:
            raise ValueError(f"station rows {r} from row {o} do not fit {ny} rows")
    mismatch = dict(size_mismatch or {})
    falloff = [float(v) for v in end_falloff]

    # Acquisitions in time order: stations 1..n, then the repeats.
    base = datetime.datetime(2016, 5, 1, 10, 0, 0)
    acqs: list[_Acq] = []
    for st in range(1, n_stations + 1):
        start, stop = ranges[n_stations - st]
        acqs.append(_Acq(st, start, stop, base + datetime.timedelta(seconds=90 * (st - 1)),
                         float(gains[st - 1]), f"s{st}"))
    older_gains = []
    for k, rep in enumerate(repeats):
        orig = next(a for a in acqs if a.station == rep.station and a.tag == f"s{rep.station}")
        orig.gain *= float(rep.older_gain)
        older_gains.append(orig.gain)
        start = int(np.clip(orig.start + rep.shift_slices, 0, nz - 2))
        stop = int(np.clip(orig.stop + rep.shift_slices, start + 2, nz))
        acqs.append(_Acq(rep.station, start, stop,
                         orig.when + datetime.timedelta(minutes=rep.minutes_later),
                         float(gains[rep.station - 1]), f"r{k}", rep.series_number))
    acqs.sort(key=lambda a: a.when)

    # Integer-valued non-negative data are stored as is (like the scanner); other data get a
    # RescaleSlope/Intercept so that floats survive the uint16 round trip.
    g_max = max(gains + older_gains + [1.0])
    boost = (1.0 + fold_strength) if fold_slices else 1.0
    lo = min(float(a.min()) for a in arrays.values()) * g_max
    hi = max(float(a.max()) for a in arrays.values()) * g_max * boost
    all_int = (all(np.allclose(a, np.round(a)) for a in arrays.values()) and lo >= 0
               and hi <= 65535 and all(float(g).is_integer() for g in gains + older_gains)
               and not fold_slices and not falloff)
    inter = 0.0 if all_int else min(lo, 0.0)
    slope = 1.0 if all_int else max((hi - inter) / 60000.0, 1e-12)

    def plane(ch: str, z: float, st: int) -> np.ndarray:
        """The (y, x) plane of channel ``ch`` at volume index ``z`` for station ``st``."""
        z = float(np.clip(z, 0, nz - 1))
        i0 = min(int(np.floor(z)), nz - 1)
        frac = z - i0

        def at(src: np.ndarray) -> np.ndarray:
            return src[i0] if frac < 1e-9 else (1.0 - frac) * src[i0] + frac * src[
                min(i0 + 1, nz - 1)]

        part = swaps.get(st)
        if part is None or ch not in ("water", "fat"):
            return at(arrays[ch])
        mine, other = at(arrays[ch]), at(arrays["fat" if ch == "water" else "water"])
        if part == "whole":
            return other
        out = mine.copy()
        half = slice(0, nx // 2) if part == "left" else slice(nx // 2, None)
        out[:, half] = other[:, half]
        return out

    entropy = [str(seed), subject_id]
    study_uid = generate_uid(entropy_srcs=entropy + ["study"])
    frame_uid = generate_uid(entropy_srcs=entropy + ["frame"])
    manifest = ["filename,patientid,studyid,aet,date,time,seriesdescription"]
    path = Path(path)
    with atomic_path(path) as tmp, zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED,
                                                  compresslevel=1) as zf:
        series_number = 1
        for acq in acqs:
            st = acq.station
            number = acq.series_number
            for c_index, ch in enumerate(channels):
                if number is not None:
                    this_series = number + c_index
                else:
                    this_series = series_number
                    series_number += 1
                if (st, None) in dropped or (st, ch) in dropped:
                    continue
                desc = _description(st, n_stations, ch)
                series_uid = _short_uid(entropy + [f"series{acq.tag}{ch}"])
                step = sz if station_step is None else float(station_step[st - 1])
                step_index = step / sz
                zs = _slice_indices(acq.start, acq.stop, step_index)
                d_sl, d_rows, d_cols = (int(v) for v in mismatch.get((st, ch), (0, 0, 0)))
                rows, y0 = int(rows_of[st - 1]), int(off_of[st - 1])
                n_all = len(zs)
                when = acq.when + datetime.timedelta(seconds=2 * c_index)
                ds = None
                # Head first: instance 1 is the most superior slice of the station.
                for inst, z in enumerate(zs[:n_all - d_sl] if d_sl else zs, start=1):
                    k_top, k_bot = inst - 1, n_all - inst
                    pl = plane(ch, z, st)
                    if fold_slices and k_top < fold_slices:
                        pl = pl + fold_strength * (fold_slices - k_top) / fold_slices * plane(
                            ch, acq.start - 1 - k_top * step_index, st)
                    if fold_slices and k_bot < fold_slices:
                        pl = pl + fold_strength * (fold_slices - k_bot) / fold_slices * plane(
                            ch, acq.stop + k_bot * step_index, st)
                    factor = acq.gain
                    if k_top < len(falloff):
                        factor *= falloff[k_top]
                    if k_bot < len(falloff):
                        factor *= falloff[k_bot]
                    # RAS (x, y) index order reversed = LPS rows/columns
                    pix = pl[y0:y0 + rows][::-1, ::-1] * factor
                    pix = pix[:rows - d_rows, :nx - d_cols]
                    stored = np.clip(np.round((pix - inter) / slope), 0, 65535).astype(np.uint16)
                    corner_ras = volume.voxel_to_world((z, y0 + rows - 1, nx - 1))
                    ipp = [-corner_ras[0], -corner_ras[1], corner_ras[2]]
                    sop_uid = f"{series_uid}.{inst}"
                    if ds is None:
                        ds = _slice_dataset(
                            stored, ipp, (sy, sx), step, desc, this_series, inst, series_uid,
                            study_uid, frame_uid, sop_uid, subject_id, age, sex, acq.when, ch,
                            slope, inter, series_time=when, implicit_vr=implicit_vr,
                            private_header_bytes=private_header_bytes)
                    else:  # same series: only the slice-specific tags change
                        _next_slice(ds, stored, ipp, inst, sop_uid)
                    buf = io.BytesIO()
                    ds.save_as(buf, enforce_file_format=True)
                    name = f"{sop_uid}.dcm"
                    zf.writestr(name, buf.getvalue())
                    manifest.append(f"{name},{subject_id},{study_uid},UKB,"
                                    f"{acq.when:%Y%m%d},{when:%H%M%S},{desc}")
        zf.writestr(manifest_name, "\n".join(manifest) + "\n")
    return path


def _slice_indices(start: int, stop: int, step_index: float) -> list[float]:
    """Slice positions (numpy z index, may be fractional) from the top of ``[start, stop)``."""
    if abs(step_index - 1.0) < 1e-9:
        return [float(z) for z in range(stop - 1, start - 1, -1)]
    n = int(np.floor((stop - 1 - start) / step_index + 1e-6)) + 1
    return [stop - 1 - k * step_index for k in range(n)]


def _short_uid(entropy: list[str]) -> str:
    """A deterministic UID short enough to append ``.<instance>`` (<= 64 characters)."""
    return generate_uid(entropy_srcs=entropy)[:54]


def _next_slice(ds: FileDataset, pixels: np.ndarray, ipp, instance: int, sop_uid: str) -> None:
    ds.SOPInstanceUID = sop_uid
    ds.file_meta.MediaStorageSOPInstanceUID = sop_uid
    ds.InstanceNumber = instance
    ds.ImagePositionPatient = [f"{v:.6f}" for v in ipp]
    ds.SliceLocation = f"{ipp[2]:.6f}"
    ds.Rows, ds.Columns = int(pixels.shape[0]), int(pixels.shape[1])
    ds.PixelData = np.ascontiguousarray(pixels).tobytes()


def _slice_dataset(pixels: np.ndarray, ipp, pixel_spacing_rc, thickness: float, desc: str,
                   series_number: int, instance: int, series_uid: str, study_uid: str,
                   frame_uid: str, sop_uid: str, subject_id: str, age: float | None,
                   sex: str | None, when: datetime.datetime, channel: str, slope: float,
                   inter: float, series_time: datetime.datetime | None = None,
                   implicit_vr: bool = False, private_header_bytes: int = 0) -> FileDataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = MR_IMAGE_STORAGE
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ImplicitVRLittleEndian if implicit_vr else ExplicitVRLittleEndian
    meta.ImplementationClassUID = pydicom.uid.PYDICOM_IMPLEMENTATION_UID
    ds = FileDataset(None, {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID = MR_IMAGE_STORAGE
    ds.SOPInstanceUID = sop_uid
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.FrameOfReferenceUID = frame_uid
    ds.Modality = "MR"
    ds.Manufacturer = "SIEMENS"
    ds.ManufacturerModelName = "Aera"
    ds.MagneticFieldStrength = 1.5
    ds.PatientID = subject_id
    ds.PatientName = "anonymous"
    if age is not None:
        ds.PatientAge = f"{int(round(age)):03d}Y"
    if sex is not None:
        ds.PatientSex = sex
    series_time = when if series_time is None else series_time
    ds.StudyDate = ds.SeriesDate = ds.AcquisitionDate = when.strftime("%Y%m%d")
    ds.AcquisitionTime = when.strftime("%H%M%S.%f")
    ds.SeriesTime = series_time.strftime("%H%M%S.%f")
    ds.SeriesDescription = desc
    ds.ProtocolName = desc.rsplit("_", 1)[0]
    ds.SequenceName = "*fl3d2"
    ds.EchoTime = ECHO_TIME_MS[channel]
    ds.RepetitionTime = 6.69
    ds.SeriesNumber = series_number
    ds.InstanceNumber = instance
    ds.ImageType = ["DERIVED", "PRIMARY", "DIXON", channel.upper()]
    if private_header_bytes:
        block = ds.private_block(0x0019, "SIEMENS MR HEADER", create=True)
        block.add_new(0x10, "OB", bytes(int(private_header_bytes)))
    ds.ImagePositionPatient = [f"{v:.6f}" for v in ipp]
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    ds.SliceLocation = f"{ipp[2]:.6f}"
    ds.PixelSpacing = [f"{pixel_spacing_rc[0]:.8g}", f"{pixel_spacing_rc[1]:.8g}"]
    ds.SliceThickness = f"{thickness:.6g}"
    ds.Rows, ds.Columns = int(pixels.shape[0]), int(pixels.shape[1])
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 0
    if slope != 1.0 or inter != 0.0:
        ds.RescaleSlope = f"{slope:.10g}"
        ds.RescaleIntercept = f"{inter:.10g}"
    ds.PixelData = np.ascontiguousarray(pixels).tobytes()
    return ds


def write_dicom_series(volume: Volume, folder: str | Path, channel: str | int = 0,
                       description: str = "bodyage_synthetic", series_number: int = 1,
                       subject_id: str = "1000000", age: float | None = None,
                       sex: str | None = None, seed: int = 0) -> list[Path]:
    """Write one channel of a canonical RAS, non-oblique Volume as a DICOM series folder.

    One single-frame MR slice per file (``IM_0001.dcm`` ...), LPS geometry as a scanner writes
    it. Returns the written paths. Used by tests and the load benchmark.
    """
    if volume.is_oblique or volume.orientation != "RAS":
        raise ValueError("write_dicom_series needs a canonical RAS, non-oblique volume")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    arr = np.asarray(volume.channel(channel), dtype=np.float64)
    nz, ny, nx = volume.shape
    sx, sy, sz = volume.spacing
    lo, hi = float(arr.min()), float(arr.max())
    all_int = lo >= 0 and hi <= 65535 and np.allclose(arr, np.round(arr))
    inter = 0.0 if all_int else min(lo, 0.0)
    slope = 1.0 if all_int else max((hi - inter) / 60000.0, 1e-12)
    entropy = [str(seed), subject_id, description]
    study_uid = generate_uid(entropy_srcs=entropy + ["study"])
    frame_uid = generate_uid(entropy_srcs=entropy + ["frame"])
    series_uid = _short_uid(entropy + ["series", str(series_number)])
    when = datetime.datetime(2016, 5, 1, 10, 0, 0)
    paths = []
    ds = None
    for inst, z in enumerate(range(nz - 1, -1, -1), start=1):
        pix = arr[z][::-1, ::-1]
        stored = np.clip(np.round((pix - inter) / slope), 0, 65535).astype(np.uint16)
        corner = volume.voxel_to_world((z, ny - 1, nx - 1))
        ipp = [-corner[0], -corner[1], corner[2]]
        sop_uid = f"{series_uid}.{inst}"
        if ds is None:
            ds = _slice_dataset(stored, ipp, (sy, sx), sz, description, series_number, inst,
                                series_uid, study_uid, frame_uid, sop_uid, subject_id, age,
                                sex, when, "water", slope, inter)
        else:
            _next_slice(ds, stored, ipp, inst, sop_uid)
        target = folder / f"IM_{inst:04d}.dcm"
        with atomic_path(target) as tmp:
            ds.save_as(tmp, enforce_file_format=True)
        paths.append(target)
    return paths
