"""What a folder of DICOM files holds, for the viewer's series browser (Qt-free): patients,
their studies and the series of each study, read from the headers only (no pixel data).

Each :class:`DicomSeries` names its description, modality, number of slices, the patient's age
(``PatientAge``, in years) and sex, and the files; :meth:`DicomSeries.first_file` is what the
loader (:func:`bodyage_core.io.load_volume`) is given to read exactly that series (a file
selects its own series in its folder). Series are grouped as the loader groups them
(:func:`bodyage_core.io.dicom.series_key`), so the browser and the loader agree on what one
series is, including a series without a ``SeriesInstanceUID``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bodyage_core.errors import LoadError

#: How deep below the folder the browser looks, and how many files at most.
SCAN_DEPTH = 4
SCAN_FILES = 20000
_SKIP = {"dicomdir", "manifest.csv", "manifest.cvs"}


@dataclass
class DicomSeries:
    """One series: what the browser shows and the files that hold it."""

    key: str
    uid: str | None
    number: int | None
    description: str
    modality: str
    files: list[Path] = field(default_factory=list)
    patient_id: str = ""
    patient_name: str = ""
    patient_age: float | None = None
    patient_age_text: str = ""
    patient_sex: str | None = None
    study_uid: str = ""
    study_description: str = ""
    study_date: str = ""
    rows: int | None = None
    columns: int | None = None

    @property
    def n_slices(self) -> int:
        return len(self.files)

    @property
    def label(self) -> str:
        """``#2 t1_mpr_tra_gk_v4`` or, without a number, the description alone."""
        desc = self.description or "(no description)"
        return f"#{self.number} {desc}" if self.number is not None else desc

    def first_file(self) -> Path:
        return sorted(self.files)[0]

    def summary(self) -> str:
        """One line: label, modality, slices, matrix."""
        size = f", {self.columns} x {self.rows}" if self.rows and self.columns else ""
        return f"{self.label} ({self.modality or '?'}, {self.n_slices} slices{size})"


def _text(ds, key: str) -> str:
    v = ds.get(key)
    return "" if v is None else str(v).strip()


def _int(v: Any) -> int | None:
    try:
        return int(str(v).strip())
    except (TypeError, ValueError):
        return None


def candidate_files(folder: Path, depth: int = SCAN_DEPTH,
                    max_files: int = SCAN_FILES) -> list[Path]:
    """Files in ``folder`` and its sub-folders (``depth`` levels), hidden ones skipped."""
    folder = Path(folder)
    out: list[Path] = []
    base = len(folder.parts)
    for dirpath, dirnames, filenames in os.walk(folder):
        here = Path(dirpath)
        dirnames[:] = sorted(d for d in dirnames if not d.startswith(".")) \
            if len(here.parts) - base < depth else []
        for name in sorted(filenames):
            if name.startswith(".") or name.lower() in _SKIP:
                continue
            out.append(here / name)
            if len(out) > max_files:
                raise LoadError(f"more than {max_files} files below the folder: not a DICOM "
                                "study folder", folder, "choose the folder of one study or "
                                "series")
    return out


def scan_folder(folder: str | Path, max_files: int = SCAN_FILES) -> list[DicomSeries]:
    """The image series of a folder (and its sub-folders), in patient / study / series
    number order. Files that are not DICOM images are skipped."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    from bodyage_core.io.dicom import parse_age, parse_sex, series_key

    folder = Path(folder)
    if not folder.is_dir():
        raise LoadError("not a folder", folder, "choose a folder of DICOM files")
    series: dict[str, DicomSeries] = {}
    for f in candidate_files(folder, max_files=max_files):
        try:
            ds = pydicom.dcmread(str(f), stop_before_pixels=True)
        except (InvalidDicomError, OSError, ValueError, TypeError, AttributeError,
                EOFError, KeyError):
            continue
        if "ImagePositionPatient" not in ds or ("Rows" not in ds and "Columns" not in ds):
            continue                      # not an image slice (a report, a DICOMDIR ...)
        key = series_key(ds)
        s = series.get(key)
        if s is None:
            age_text = _text(ds, "PatientAge")
            s = DicomSeries(
                key=key, uid=_text(ds, "SeriesInstanceUID") or None,
                number=_int(ds.get("SeriesNumber")),
                description=_text(ds, "SeriesDescription"), modality=_text(ds, "Modality"),
                patient_id=_text(ds, "PatientID"), patient_name=_text(ds, "PatientName"),
                patient_age=parse_age(age_text or None), patient_age_text=age_text,
                patient_sex=parse_sex(ds.get("PatientSex")),
                study_uid=_text(ds, "StudyInstanceUID"),
                study_description=_text(ds, "StudyDescription"),
                study_date=_text(ds, "StudyDate"), rows=_int(ds.get("Rows")),
                columns=_int(ds.get("Columns")))
            series[key] = s
        s.files.append(f)
    return sorted(series.values(), key=lambda s: (s.patient_id, s.study_uid,
                                                  s.number if s.number is not None else 1 << 30,
                                                  s.description))


def tree(series: list[DicomSeries]) -> dict[str, dict[str, list[DicomSeries]]]:
    """``patient -> study -> series`` (insertion order: that of ``series``). Patients are
    named ``id (name)``, studies ``description date`` (or the study UID)."""
    out: dict[str, dict[str, list[DicomSeries]]] = {}
    for s in series:
        patient = s.patient_id or "(no patient id)"
        if s.patient_name and s.patient_name != s.patient_id:
            patient += f" ({s.patient_name})"
        study = " ".join(x for x in (s.study_description, s.study_date) if x) or \
            (s.study_uid or "(no study)")
        out.setdefault(patient, {}).setdefault(study, []).append(s)
    return out
