"""Write synthetic UK Biobank-like neck-to-knee Dixon station zips (field 20201) from a Volume.

Real UK Biobank Dixon zips hold one DICOM file per slice for six axial stations (neck to knee),
each acquired as four series — in-phase, opposed-phase, fat and water — plus a ``manifest.csv``.
Series descriptions look like ``Dixon_noBH_in`` / ``Dixon_noBH_opp`` / ``Dixon_noBH_F`` /
``Dixon_noBH_W`` (free-breathing stations: neck, thighs, knees) and ``Dixon_BH_17s_W`` etc.
(breath-hold stations 2-4: chest, abdomen, pelvis). Neighbouring stations overlap by a few
slices. This module writes the same structure from a (canonical RAS, non-oblique) Volume with
``water`` and ``fat`` channels, so the stitcher, benchmarks and streaming code can be exercised
without real data. ``in`` and ``opp`` are derived as ``water + fat`` and ``|water - fat|``
unless the Volume has them.

Geometry is written the way the scanner does: ``ImageOrientationPatient = [1,0,0, 0,1,0]``
(rows run to patient Left, columns to Posterior, i.e. LPS), ``ImagePositionPatient`` per slice,
``PixelSpacing = [row spacing, column spacing]``, ``SliceThickness`` and stations ordered
head-first (station 1 = most superior).
"""

from __future__ import annotations

import datetime
import io
import zipfile
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from bodyage_core.atomic import atomic_path
from bodyage_core.volume import Volume

#: SeriesDescription suffix written for each channel (what the scanner writes).
SUFFIX = {"in": "in", "opp": "opp", "fat": "F", "water": "W"}
MR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.4"
ECHO_TIME_MS = {"in": 4.77, "opp": 2.39, "fat": 2.39, "water": 2.39}


def station_ranges(n_slices: int, n_stations: int, overlap: int) -> list[tuple[int, int]]:
    """Slice index ranges ``[start, stop)`` (numpy z order, inferior first) of each station.

    Stations are of (nearly) equal length and each overlaps the next by exactly ``overlap``
    slices.
    """
    if n_stations < 1:
        raise ValueError("n_stations must be >= 1")
    length = (n_slices + (n_stations - 1) * overlap) / n_stations
    if length <= overlap + 1:
        raise ValueError(f"{n_slices} slices are too few for {n_stations} stations "
                         f"overlapping by {overlap}")
    starts = [int(round(k * (length - overlap))) for k in range(n_stations)]
    stops = [starts[k + 1] + overlap for k in range(n_stations - 1)] + [n_slices]
    return list(zip(starts, stops))


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


def write_ukbb_zip(volume: Volume, path: str | Path, n_stations: int = 6, overlap: int = 4,
                   channels: Sequence[str] = ("in", "opp", "fat", "water"),
                   drop: Iterable[tuple[int, str | None]] = (),
                   station_gain: Sequence[float] | None = None,
                   station_step: Sequence[float] | None = None,
                   subject_id: str = "1000000", age: float | None = None,
                   sex: str | None = None, seed: int = 0) -> Path:
    """Write ``volume`` as a UK Biobank-style Dixon station zip (atomically).

    Parameters
    ----------
    volume
        Canonical RAS, non-oblique Volume with ``water`` and ``fat`` channels
        (``(C, Z, Y, X)``); its grid becomes the stations' grid.
    path
        Target ``.zip``.
    n_stations, overlap
        Number of stations (UK Biobank: 6) and slices shared by neighbouring stations.
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
    """
    if volume.is_oblique:
        raise ValueError("write_ukbb_zip needs a non-oblique volume")
    if volume.orientation != "RAS":
        raise ValueError(f"write_ukbb_zip needs a canonical RAS volume, got {volume.orientation}")
    arrays = _channel_arrays(volume, channels)
    nz, ny, nx = volume.shape
    sx, sy, sz = volume.spacing
    ranges = station_ranges(nz, n_stations, overlap)
    dropped = {(int(s), c) for s, c in drop}
    gains = list(station_gain) if station_gain is not None else [1.0] * n_stations

    # Integer-valued non-negative data are stored as is (like the scanner); other data get a
    # RescaleSlope/Intercept so that floats survive the uint16 round trip.
    lo = min(float(a.min()) for a in arrays.values()) * max(gains + [1.0])
    hi = max(float(a.max()) for a in arrays.values()) * max(gains + [1.0])
    all_int = all(np.allclose(a, np.round(a)) for a in arrays.values()) and lo >= 0 \
        and hi <= 65535 and all(float(g).is_integer() for g in gains)
    inter = 0.0 if all_int else min(lo, 0.0)
    slope = 1.0 if all_int else max((hi - inter) / 60000.0, 1e-12)

    entropy = [str(seed), subject_id]
    study_uid = generate_uid(entropy_srcs=entropy + ["study"])
    frame_uid = generate_uid(entropy_srcs=entropy + ["frame"])
    now = datetime.datetime(2016, 5, 1, 10, 0, 0)
    manifest = ["filename,patientid,studyid,aet,date,time,seriesdescription"]
    path = Path(path)
    with atomic_path(path) as tmp, zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED,
                                                  compresslevel=1) as zf:
        series_number = 1
        # Station 1 is the most superior: highest z in RAS numpy order.
        for st in range(1, n_stations + 1):
            start, stop = ranges[n_stations - st]
            for ch in channels:
                this_series = series_number
                series_number += 1
                if (st, None) in dropped or (st, ch) in dropped:
                    continue
                desc = _description(st, n_stations, ch)
                series_uid = _short_uid(entropy + [f"series{st}{ch}"])
                src = arrays[ch]
                step = sz if station_step is None else float(station_step[st - 1])
                ds = None
                # Head first: instance 1 is the most superior slice of the station.
                for inst, z in enumerate(_slice_indices(start, stop, step / sz), start=1):
                    i0 = min(int(np.floor(z)), nz - 1)
                    frac = z - i0
                    plane = src[i0] if frac < 1e-9 else \
                        (1.0 - frac) * src[i0] + frac * src[min(i0 + 1, nz - 1)]
                    # RAS (x, y) index order reversed = LPS rows/columns
                    pix = plane[::-1, ::-1] * gains[st - 1]
                    stored = np.clip(np.round((pix - inter) / slope), 0, 65535).astype(np.uint16)
                    corner_ras = volume.voxel_to_world((z, ny - 1, nx - 1))
                    ipp = [-corner_ras[0], -corner_ras[1], corner_ras[2]]
                    sop_uid = f"{series_uid}.{inst}"
                    if ds is None:
                        ds = _slice_dataset(
                            stored, ipp, (sy, sx), step, desc, this_series, inst, series_uid,
                            study_uid, frame_uid, sop_uid, subject_id, age, sex, now, ch,
                            slope, inter)
                    else:  # same series: only the slice-specific tags change
                        _next_slice(ds, stored, ipp, inst, sop_uid)
                    buf = io.BytesIO()
                    ds.save_as(buf, enforce_file_format=True)
                    name = f"{sop_uid}.dcm"
                    zf.writestr(name, buf.getvalue())
                    manifest.append(f"{name},{subject_id},{study_uid},UKB,20160501,100000,"
                                    f"{desc}")
        zf.writestr("manifest.csv", "\n".join(manifest) + "\n")
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
    ds.PixelData = np.ascontiguousarray(pixels).tobytes()


def _slice_dataset(pixels: np.ndarray, ipp, pixel_spacing_rc, thickness: float, desc: str,
                   series_number: int, instance: int, series_uid: str, study_uid: str,
                   frame_uid: str, sop_uid: str, subject_id: str, age: float | None,
                   sex: str | None, when: datetime.datetime, channel: str, slope: float,
                   inter: float) -> FileDataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = MR_IMAGE_STORAGE
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
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
    ds.StudyDate = ds.SeriesDate = ds.AcquisitionDate = when.strftime("%Y%m%d")
    ds.SeriesTime = ds.AcquisitionTime = (when + datetime.timedelta(
        seconds=30 * series_number)).strftime("%H%M%S.%f")
    ds.SeriesDescription = desc
    ds.ProtocolName = desc.rsplit("_", 1)[0]
    ds.SequenceName = "*fl3d2"
    ds.EchoTime = ECHO_TIME_MS[channel]
    ds.RepetitionTime = 6.69
    ds.SeriesNumber = series_number
    ds.InstanceNumber = instance
    ds.ImageType = ["DERIVED", "PRIMARY", "DIXON", channel.upper()]
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
