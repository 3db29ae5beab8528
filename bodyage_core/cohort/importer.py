"""Import a cohort from a folder of images plus a CSV of subject facts.

The CSV's columns are found by name (case-insensitive, common aliases such as IXI's ``MRID``,
UK Biobank's ``eid``) or given explicitly. Images are matched to CSV rows by file or folder name:
an entry belongs to subject ``ID`` when its name without extension is ``ID`` or starts with
``ID`` followed by a separator (``IXI013-HH-1212_T1.nii.gz`` -> ``IXI013-HH-1212``). Images are
recorded where they lie (never copied). The whole import is one transaction.

:func:`import_ukbb_folder` registers a folder of UK Biobank bulk zips (``<eid>_20201_2_0.zip``)
by name alone: each participant's Dixon zip is recorded as its ``water`` and ``fat`` image (the
same zip; both channels are stitched from it, in memory, when the subject is loaded), nothing is
opened or extracted at import time.

What a row must hold (each failure is a :class:`CohortError` naming the CSV, the row and the
fix; nothing is written):

* a subject id that follows the name rule of :mod:`bodyage_core.names` (it becomes the
  subject's folder name), unique also when letter case is ignored (``Sub1`` and ``sub1`` would
  share a folder on macOS and Windows);
* an age that is missing (imported, not trainable) or a finite number in the plausible range
  ``AgeRange`` (default ``0 < age <= 120`` years; ``--min-age`` / ``--max-age`` of ``bodyage
  import`` change it, e.g. for a fetal or a veterinary cohort);
* optionally an ``excluded`` column (``1``/``yes``/``true`` or a reason; empty/``0``/``no``
  includes the subject again): subjects left out of training.

``check=True`` (``bodyage import --check``) opens every matched image once: subjects whose image
cannot be read or fails the model-input checks are imported flagged ``excluded`` with the reason
(listed as warnings); load-time quality flags (non-finite voxels, missing DICOM slices) are kept
in the subject's ``meta["qc"]``.
"""

from __future__ import annotations

import csv
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from bodyage_core.cohort.database import _float_or_none, normalise_sex
from bodyage_core.cohort.workspace import Workspace
from bodyage_core.errors import BodyageError, CohortError, ConfigError
from bodyage_core.names import NAME_RULE, fold_key, is_valid_name
from bodyage_core.progress import ProgressReporter, ensure_reporter

IMAGE_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd", ".zip")
COLUMN_ALIASES = {
    "id": ("subject_id", "id", "mrid", "eid", "subject", "participant_id", "participant", "ixi_id"),
    "age": ("age", "age_years", "age_at_scan", "chronological_age"),
    "sex": ("sex", "gender"),
    "bmi": ("bmi", "body_mass_index"),
    "site": ("site", "scanner", "centre", "center"),
    "excluded": ("excluded", "exclude"),
}
_TRUE = ("1", "yes", "y", "true", "x", "excluded", "exclude")
_FALSE = ("", "0", "no", "n", "false", "included", "include")


@dataclass(frozen=True)
class AgeRange:
    """Plausible ages in years: ``low < age <= high`` (default 0 < age <= 120)."""

    low: float = 0.0
    high: float = 120.0

    def __post_init__(self) -> None:
        if not (math.isfinite(self.low) and math.isfinite(self.high)) or self.low >= self.high:
            raise ConfigError(f"age range ({self.low:g}, {self.high:g}] is empty or not finite",
                              hint="give --min-age below --max-age, both numbers")

    def check(self, age: float | None) -> str | None:
        """Why ``age`` is refused (one phrase), or None when it is fine or missing."""
        if age is None:
            return None
        if not math.isfinite(age):
            return f"age {age!r} is not a finite number"
        if not self.low < age <= self.high:
            return (f"age {age:g} is outside the plausible range {self.low:g} < age <= "
                    f"{self.high:g} years")
        return None
_SEPARATORS = re.compile(r"[_\-. ]")


@dataclass
class ColumnMap:
    """CSV column names; ``None`` means "find it by its usual names"."""

    id: str | None = None
    age: str | None = None
    sex: str | None = None
    bmi: str | None = None
    site: str | None = None
    excluded: str | None = None


@dataclass
class ImportSummary:
    imported: int = 0
    rows_without_image: list[str] = field(default_factory=list)
    images_without_row: list[str] = field(default_factory=list)
    ambiguous: list[str] = field(default_factory=list)
    without_age: list[str] = field(default_factory=list)
    skipped_names: list[str] = field(default_factory=list)   # zips not named like UKB files
    failed_check: dict[str, str] = field(default_factory=dict)   # id -> why (import --check)
    qc: dict[str, list[str]] = field(default_factory=dict)       # id -> load-time QC messages
    checked: int = 0

    @property
    def warnings(self) -> list[str]:
        out = []
        if self.rows_without_image:
            out.append(f"{len(self.rows_without_image)} CSV row(s) with no image, skipped: "
                       + _preview(self.rows_without_image))
        if self.images_without_row:
            out.append(f"{len(self.images_without_row)} image(s) with no CSV row, skipped: "
                       + _preview(self.images_without_row))
        if self.ambiguous:
            out.append(f"{len(self.ambiguous)} subject(s) matched several images, skipped: "
                       + _preview(self.ambiguous))
        if self.without_age:
            out.append(f"{len(self.without_age)} subject(s) have no age (imported; they can be "
                       "predicted but not trained on): " + _preview(self.without_age))
        if self.skipped_names:
            out.append(f"{len(self.skipped_names)} zip(s) not named <eid>_<field>_<instance>_"
                       "<array>.zip, skipped: " + _preview(self.skipped_names))
        for sid, why in self.failed_check.items():
            out.append(f"subject {sid}: image check failed, imported as excluded from "
                       f"training: {why}")
        for sid, msgs in self.qc.items():
            for m in msgs:
                out.append(f"subject {sid}: {m}")
        return out

    def to_dict(self) -> dict:
        return {"imported": self.imported, "rows_without_image": self.rows_without_image,
                "images_without_row": self.images_without_row, "ambiguous": self.ambiguous,
                "without_age": self.without_age, "skipped_names": self.skipped_names,
                "failed_check": self.failed_check, "qc": self.qc, "checked": self.checked}


def read_subject_csv(csv_path: str | Path, columns: ColumnMap | None = None,
                     ages: AgeRange | None = None) -> list[dict]:
    """Rows of a subject CSV as dicts with keys subject_id, age, sex, bmi, site (and
    ``excluded`` when the CSV has that column).

    Raises :class:`CohortError` naming the file for a missing file, an empty table, a missing id
    or age column, duplicate ids (also ids equal but for letter case), an id that breaks the
    name rule, an age outside ``ages`` (default :class:`AgeRange`) or not finite, or an
    unparseable value (with its row number).
    """
    path = Path(csv_path)
    columns = columns or ColumnMap()
    ages = ages or AgeRange()
    if not path.is_file():
        raise CohortError("CSV file not found", path, "check the path given with --csv")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as err:
        raise CohortError(f"cannot read the CSV ({err})", path, "save it as UTF-8 text") from None
    if not text.strip():
        raise CohortError("the CSV is empty", path, "it needs a header row and one row per subject")
    try:
        dialect = csv.Sniffer().sniff(text.splitlines()[0], delimiters=",;\t")
    except csv.Error:
        dialect = csv.excel
    reader = csv.DictReader(text.splitlines(), dialect=dialect)
    header = [h for h in (reader.fieldnames or []) if h is not None]
    resolved = {key: _find_column(header, getattr(columns, key), key, path)
                for key in ("id", "age", "sex", "bmi", "site", "excluded")}
    for key in ("id", "age"):
        if resolved[key] is None:
            opt = "--id-column" if key == "id" else "--age-column"
            raise CohortError(
                f"no {key} column (columns are: {', '.join(header) or 'none'})", path,
                f"rename the column or name it with {opt}")
    rows, seen, dups = [], set(), []
    folded: dict[str, tuple[int, str]] = {}
    for lineno, raw in enumerate(reader, start=2):
        sid = (raw.get(resolved["id"]) or "").strip()
        if not sid:
            continue
        if sid in seen:
            dups.append(sid)
            continue
        seen.add(sid)
        if not is_valid_name(sid):
            raise CohortError(f"row {lineno}: subject id {sid!r} cannot be a folder name",
                              path, f"subject ids must use {NAME_RULE}; rename it in the CSV "
                                    "(and its image)")
        other = folded.get(fold_key(sid))
        if other is not None:
            raise CohortError(f"row {lineno}: subject id {sid!r} and row {other[0]}: "
                              f"{other[1]!r} differ only in letter case and would share one "
                              "folder on a case-insensitive file system", path,
                              "make the ids differ in more than case")
        folded[fold_key(sid)] = (lineno, sid)
        try:
            row = {"subject_id": sid, "age": _float_or_none(raw.get(resolved["age"]))}
            row["sex"] = normalise_sex(raw.get(resolved["sex"])) if resolved["sex"] else None
            row["bmi"] = _float_or_none(raw.get(resolved["bmi"])) if resolved["bmi"] else None
            row["site"] = (raw.get(resolved["site"]) or None) if resolved["site"] else None
            if resolved["excluded"]:
                row["excluded"] = _excluded_value(raw.get(resolved["excluded"]))
        except (ValueError, CohortError) as err:
            msg = err.args[0] if isinstance(err, CohortError) else str(err)
            raise CohortError(f"row {lineno} (subject {sid}): {msg}", path,
                              "fix the value in the CSV") from None
        why = ages.check(row["age"])
        if why:
            raise CohortError(f"row {lineno} (subject {sid}): {why}", path,
                              "fix the age in the CSV, leave it empty if unknown, or widen the "
                              "range with --min-age/--max-age")
        if row["bmi"] is not None and not (math.isfinite(row["bmi"]) and 5 <= row["bmi"] <= 150):
            raise CohortError(f"row {lineno} (subject {sid}): BMI {row['bmi']:g} is not a "
                              "plausible body-mass index (5 to 150 kg/m2)", path,
                              "fix the value in the CSV or leave it empty")
        rows.append(row)
    if dups:
        raise CohortError(f"duplicate subject ids: {_preview(sorted(set(dups)))}", path,
                          "each subject may appear once")
    if not rows:
        raise CohortError("the CSV has a header but no subject rows", path)
    return rows


def find_images(folder: str | Path) -> dict[str, Path]:
    """Image entries of a folder by name without extension (files and sub-folders)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise CohortError("image folder not found", folder, "check the path given with --images")
    out: dict[str, Path] = {}
    with os.scandir(folder) as it:
        for entry in it:
            if entry.name.startswith("."):
                continue
            if entry.is_dir():
                out[entry.name] = Path(entry.path)
                continue
            low = entry.name.lower()
            for suf in IMAGE_SUFFIXES:
                if low.endswith(suf):
                    out[entry.name[: -len(suf)]] = Path(entry.path)
                    break
    return out


def match_images(ids: list[str], images: dict[str, Path]) -> tuple[dict[str, list[Path]],
                                                                    list[str]]:
    """Assign image entries to ids: exact name, else the longest id prefix before a separator."""
    idset = set(ids)
    matched: dict[str, list[Path]] = {}
    unmatched: list[str] = []
    for stem, path in sorted(images.items()):
        owner = stem if stem in idset else None
        if owner is None:
            for m in reversed(list(_SEPARATORS.finditer(stem))):
                if stem[: m.start()] in idset:
                    owner = stem[: m.start()]
                    break
        if owner is None:
            unmatched.append(path.name)
        else:
            matched.setdefault(owner, []).append(path)
    return matched, unmatched


def import_cohort(workspace: Workspace | str | Path, images: str | Path, csv_path: str | Path,
                  kind: str = "image", columns: ColumnMap | None = None,
                  reporter: ProgressReporter | None = None, ages: AgeRange | None = None,
                  check: bool = False) -> ImportSummary:
    """Import subjects from ``csv_path`` with images in ``images`` into the workspace.

    Subjects already in the index are updated (re-import is idempotent). CSV rows without an
    image and images without a row are skipped and listed in the returned summary. The CSV and
    the folder are read before the workspace is created, so a bad CSV leaves nothing behind.
    ``ages``: the plausible range (default :class:`AgeRange`). ``check``: open every image
    once (see the module docstring).
    """
    from bodyage_core.names import check_name

    reporter = ensure_reporter(reporter)
    check_name(kind, "image kind")
    rows = read_subject_csv(csv_path, columns, ages)
    reporter.update("import", 0, 3, "reading")
    entries = find_images(images)
    reporter.update("import", 1, 3, "matching")
    matched, unmatched = match_images([r["subject_id"] for r in rows], entries)
    summary = ImportSummary(images_without_row=unmatched)
    records = []
    for row in rows:
        paths = matched.get(row["subject_id"], [])
        if not paths:
            summary.rows_without_image.append(row["subject_id"])
            continue
        if len(paths) > 1:
            summary.ambiguous.append(row["subject_id"])
            continue
        if row["age"] is None:
            summary.without_age.append(row["subject_id"])
        records.append({**row, "images": {kind: paths[0]}})
    if not records:
        raise CohortError(f"no CSV row matches an image in {images}", Path(csv_path),
                          "subject ids must be the image names or their prefix before '_'/'-'")
    ws = workspace if isinstance(workspace, Workspace) else Workspace.create(workspace)
    for rec in records:
        rec["images"] = {k: ws.relative(p) for k, p in rec["images"].items()}
    return _write(ws, records, summary, reporter, check)


def _write(ws: Workspace, records: list[dict], summary: ImportSummary,
           reporter: ProgressReporter, check: bool) -> ImportSummary:
    """Refuse ids that collide (ignoring case) with subjects already in the index, check the
    images when asked, and write every record in one transaction."""
    existing = {fold_key(i): i for i in ws.db.subject_ids()}
    for rec in records:
        other = existing.get(fold_key(rec["subject_id"]))
        if other is not None and other != rec["subject_id"]:
            raise CohortError(f"subject id {rec['subject_id']!r} differs only in letter case "
                              f"from {other!r}, already in the cohort; they would share one "
                              "folder", ws.root / "cohort.sqlite",
                              "use the existing spelling or an id that differs in more than "
                              "case")
    if check:
        _check_images(ws, records, summary, reporter)
    reporter.update("import", 2, 3, "writing")
    summary.imported = ws.db.add_subjects(records)
    reporter.update("import", 3, 3, f"{summary.imported} subjects")
    return summary


def _check_images(ws: Workspace, records: list[dict], summary: ImportSummary,
                  reporter: ProgressReporter) -> None:
    """``import --check``: load every record's images once (as training will); a subject whose
    images fail is flagged excluded with the reason, load-time QC flags go to ``meta["qc"]``."""
    from bodyage_core.io import load_channels
    from bodyage_core.qc.image_checks import check_model_input

    for i, rec in enumerate(records):
        sid = rec["subject_id"]
        reporter.update("check", i, len(records), sid)
        paths = {k: ws.resolve(p) for k, p in rec["images"].items()}
        try:
            vol = load_channels(paths)
            flags = list(vol.provenance.get("qc") or [])
            flags += [f for f in check_model_input(vol, f"subject {sid}") if f not in flags]
        except BodyageError as err:
            summary.failed_check[sid] = str(err)
            rec["excluded"] = f"image check failed: {err}"
            continue
        except (MemoryError, OSError, ValueError, RuntimeError) as err:   # a reader's own bug
            why = f"{type(err).__name__}: {str(err).strip().splitlines()[0] if str(err) else ''}"
            summary.failed_check[sid] = why
            rec["excluded"] = f"image check failed: {why}"
            continue
        finally:
            summary.checked += 1
        if flags:
            rec["meta"] = dict(rec.get("meta") or {}, qc=flags)
            summary.qc[sid] = [f["message"] for f in flags]
    reporter.update("check", len(records), len(records), "images checked")


def import_ukbb_folder(workspace: Workspace | str | Path, folder: str | Path,
                       csv_path: str | Path | None = None, field: int | None = None,
                       instance: int | None = None, columns: ColumnMap | None = None,
                       kinds: tuple[str, ...] = ("water", "fat"),
                       reporter: ProgressReporter | None = None, ages: AgeRange | None = None,
                       check: bool = False) -> ImportSummary:
    """Register the participants of a folder of UK Biobank bulk zips without extracting them.

    Parameters
    ----------
    folder
        Folder (sub-folders included) of ``<eid>_<field>_<instance>_<array>.zip`` files; indexed
        by name (:class:`~bodyage_core.io.ukbb_bulk.UKBBFolderIndex`), no zip is opened.
    csv_path
        Optional subject CSV (id column = the UK Biobank ``eid``): ages, sex, BMI, site. Without
        it every participant with a zip is imported without an age (predictable, not
        trainable).
    field
        Bulk field of the zips (default 20201, neck-to-knee Dixon).
    instance
        Imaging visit to use (2 = first, 3 = repeat); default: each participant's earliest.
    kinds
        Image kinds recorded for the zip (Dixon channels stitched from it when loaded).
    """
    from bodyage_core.io.ukbb_bulk import DIXON_FIELD, UKBBFolderIndex

    reporter = ensure_reporter(reporter)
    field = DIXON_FIELD if field is None else int(field)
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise CohortError("UK Biobank folder not found", folder,
                          "check the path given with --ukbb-folder")
    rows = read_subject_csv(csv_path, columns, ages) if csv_path is not None else None
    reporter.update("import", 0, 3, "indexing zips by name")
    index = UKBBFolderIndex(folder)
    eids = index.subjects(field)
    chosen = {}
    for eid in eids:
        f = index.zip_for(eid, field, instance)
        if f is not None:
            chosen[eid] = f
    if not chosen:
        what = f"field {field}" + ("" if instance is None else f", instance {instance}")
        raise CohortError(f"no UK Biobank zip of {what} in the folder "
                          f"({len(index)} participant(s) with other files; "
                          f"{len(index.skipped)} zip(s) with other names)", folder,
                          "files must be named <eid>_<field>_<instance>_<array>.zip, e.g. "
                          "1234567_20201_2_0.zip")
    reporter.update("import", 1, 3, f"{len(chosen)} participants")
    summary = ImportSummary()
    if rows is None:
        rows = [{"subject_id": eid, "age": None, "sex": None, "bmi": None, "site": None}
                for eid in chosen]
    else:
        in_csv = {r["subject_id"] for r in rows}
        summary.images_without_row = [chosen[e].path.name for e in chosen if e not in in_csv]
    records = []
    for row in rows:
        f = chosen.get(row["subject_id"])
        if f is None:
            summary.rows_without_image.append(row["subject_id"])
            continue
        if row["age"] is None:
            summary.without_age.append(row["subject_id"])
        records.append({**row, "images": {k: f.path for k in kinds},
                        "meta": {"ukbb": {"field": f.field, "instance": f.instance,
                                          "array": f.array}}})
    if not records:
        raise CohortError(f"no CSV row matches a participant with a zip in {folder}",
                          Path(csv_path) if csv_path else folder,
                          "the CSV's id column must hold the UK Biobank eid (the number the "
                          "zip names start with)")
    bad = [r["subject_id"] for r in records if not is_valid_name(r["subject_id"])]
    if bad:
        raise CohortError(f"participant id(s) {_preview(bad)} cannot be folder names",
                          Path(csv_path) if csv_path else folder, f"ids must use {NAME_RULE}")
    summary.skipped_names = index.skipped
    ws = workspace if isinstance(workspace, Workspace) else Workspace.create(workspace)
    for rec in records:
        rec["images"] = {k: ws.relative(p) for k, p in rec["images"].items()}
    return _write(ws, records, summary, reporter, check)


def _find_column(header: list[str], wanted: str | None, key: str, path: Path) -> str | None:
    lower = {h.strip().lower(): h for h in header}
    if wanted is not None:
        if wanted in header:
            return wanted
        if wanted.lower() in lower:
            return lower[wanted.lower()]
        raise CohortError(f"no column {wanted!r} (columns are: {', '.join(header)})", path,
                          f"check the name given for the {key} column")
    for alias in COLUMN_ALIASES[key]:
        if alias in lower:
            return lower[alias]
    return None


def _excluded_value(value) -> str | None:
    """The ``excluded`` column: None (included) or the reason for leaving the subject out."""
    text = "" if value is None else str(value).strip()
    if text.lower() in _FALSE:
        return None
    if text.lower() in _TRUE:
        return "excluded in the import CSV"
    return text[:500]


def _preview(items: list[str], n: int = 5) -> str:
    head = ", ".join(items[:n])
    return head + (f" ... (+{len(items) - n} more)" if len(items) > n else "")
