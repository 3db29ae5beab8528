"""Predict ages for scans on disk, no workspace needed: ``bodyage predict FILE|FOLDER ...``.

:func:`discover_scans` turns paths into scans (one image file, a DICOM series folder, a subject
folder with ``water`` and ``fat`` images, or a folder of such); :func:`predict_scans` predicts
each with a model (given, or the shipped model whose envelope fits the scan) through
:func:`~bodyage_core.inference.subject.predict_subject`, and writes one CSV row per scan, the
Grad-CAM NIfTI and a QC PNG. A scan that fails or is refused gets a row saying why; the others go
on.
"""

from __future__ import annotations

import csv
import io
import re
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bodyage_core.atomic import write_text
from bodyage_core.cohort.paths import WorkspacePaths
from bodyage_core.errors import BodyageError
from bodyage_core.models.ensemble import interval_method
from bodyage_core.progress import ProgressReporter, ensure_reporter

IMAGE_SUFFIXES = (".nii", ".nii.gz", ".nrrd", ".nhdr", ".mha", ".mhd", ".zip")
#: File names that are label maps or masks, not scans (skipped in folders).
NOT_SCANS = re.compile(r"(label|labels|seg|mask|gradcam|gradxinput|occlusion)", re.I)
CSV_COLUMNS = ("id", "status", "predicted_age", "predicted_age_raw", "sigma", "ci95_low",
               "ci95_high", "ci68_low", "ci68_high", "intervals", "chronological_age", "gap", "raw_gap", "qc_score", "qc_flags", "model",
               "model_version", "model_sha", "path", "map", "qc_png", "seconds", "message")


@dataclass
class Scan:
    """One scan to predict: an id and what to load (one path, or channel -> path)."""

    id: str
    path: Path
    channels: dict[str, Path] | None = None

    def load(self):
        from bodyage_core.io import load_channels, load_volume

        if self.channels:
            return load_channels(self.channels)
        return load_volume(self.path)


def _stem(p: Path) -> str:
    name = p.name
    for suf in IMAGE_SUFFIXES:
        if name.lower().endswith(suf):
            return name[: -len(suf)]
    return p.stem


def _is_image(p: Path) -> bool:
    return p.is_file() and p.name.lower().endswith(IMAGE_SUFFIXES)


def _dixon_pair(folder: Path) -> dict[str, Path] | None:
    found: dict[str, Path] = {}
    for p in sorted(folder.iterdir()):
        if not _is_image(p) or NOT_SCANS.search(p.name):
            continue
        s = _stem(p).lower()
        for ch in ("water", "fat"):
            if s == ch or s.endswith(("_" + ch, "-" + ch)):
                found.setdefault(ch, p)
    return found if set(found) == {"water", "fat"} else None


def _is_dicom_folder(folder: Path) -> bool:
    from bodyage_core.io import _has_dicm_magic

    for i, p in enumerate(sorted(folder.iterdir())):
        if i > 20:
            break
        if p.is_file() and (p.suffix.lower() == ".dcm" or _has_dicm_magic(p)):
            return True
    return False


def discover_scans(paths: Iterable[str | Path]) -> list[Scan]:
    """The scans named by ``paths``: files, DICOM folders, water/fat subject folders, and one
    level of such inside a folder. Ids come from the file or folder name (a DICOM series: the
    folder's name; the header's patient id is used when the series is read)."""
    scans: list[Scan] = []
    for raw in paths:
        p = Path(raw).expanduser()
        if not p.exists():
            raise BodyageError("file or folder not found", path=p, hint="check the path")
        if p.is_file():
            if p.suffix.lower() == ".dcm":
                scans.append(Scan(p.parent.name, p.parent))
            else:
                scans.append(Scan(_stem(p), p))
            continue
        if WorkspacePaths.is_workspace(p):
            raise BodyageError("this folder is a bodyage workspace", path=p,
                               hint="predict its subjects with `bodyage predict WORKSPACE "
                                    "--run RUN` (or --model NAME)")
        pair = _dixon_pair(p)
        if pair:
            scans.append(Scan(p.name, p, pair))
            continue
        if _is_dicom_folder(p):
            scans.append(Scan(p.name, p))
            continue
        inner: list[Scan] = []
        for q in sorted(p.iterdir()):
            if q.is_dir():
                pair = _dixon_pair(q)
                if pair:
                    inner.append(Scan(q.name, q, pair))
                elif _is_dicom_folder(q):
                    inner.append(Scan(q.name, q))
            elif _is_image(q) and not NOT_SCANS.search(q.name):
                inner.append(Scan(_stem(q), q))
        if not inner:
            raise BodyageError("no scans found in this folder", path=p,
                               hint="give image files (NIfTI, NRRD, MHA, UK Biobank zip), a "
                                    "DICOM folder or folders with water and fat images")
        scans += inner
    seen: dict[str, int] = {}
    for s in scans:                      # ids must be unique in one CSV
        n = seen.get(s.id, 0)
        seen[s.id] = n + 1
        if n:
            s.id = f"{s.id}-{n + 1}"
    return scans


def read_ages(path: str | Path) -> dict[str, float]:
    """``id -> age`` from a CSV with an id column (``id``, ``subject_id``, ``MRID``, ``eid``)
    and an age column (``age``, ``Age``)."""
    path = Path(path)
    try:
        rows = list(csv.DictReader(io.StringIO(path.read_text(encoding="utf-8-sig"))))
    except (OSError, UnicodeDecodeError) as exc:
        raise BodyageError(f"cannot read the ages CSV ({exc})", path=path) from None
    if not rows:
        return {}
    cols = {c.lower(): c for c in rows[0]}
    idc = next((cols[c] for c in ("id", "subject_id", "mrid", "eid", "participant_id")
                if c in cols), None)
    agec = cols.get("age")
    if idc is None or agec is None:
        raise BodyageError("the ages CSV needs an id column (id, subject_id, MRID, eid) and an "
                           f"age column (has {', '.join(rows[0])})", path=path)
    out = {}
    for r in rows:
        try:
            out[str(r[idc]).strip()] = float(r[agec])
        except (TypeError, ValueError):
            continue
    return out


def age_for(scan_id: str, ages: dict[str, float]) -> float | None:
    """The age of a scan: its id, else the longest CSV id the scan id starts with (followed
    by ``_``, ``-`` or ``.``: ``IXI013-HH-1212_T1`` -> ``IXI013-HH-1212``)."""
    if scan_id in ages:
        return ages[scan_id]
    best = None
    for k in ages:
        if scan_id.startswith(k) and scan_id[len(k):len(k) + 1] in ("_", "-", ".") and \
                (best is None or len(k) > len(best)):
            best = k
    return None if best is None else ages[best]


def choose_model(volume, age: float | None = None) -> tuple[Path, str]:
    """The model folder for a scan when none is named: among the models found by name
    (:func:`~bodyage_core.inference.bundle.list_models`) the first whose channels and envelope
    accept the scan; the reason is said. A BodyageError when none does, saying why each was
    refused."""
    from bodyage_core.inference.bundle import list_models
    from bodyage_core.inference.envelope import check_envelope, match_channels, refusals

    why = []
    for m in list_models():
        card = m.get("card")
        if card is None or m.get("shadowed"):
            continue
        vol, flags = match_channels(volume, tuple(card["input"]["channels"]))
        bad = refusals(flags) if vol is None else refusals(check_envelope(vol, card, age))
        if not bad:
            return m["dir"], (f"{card['name']} {card['version']}: its envelope fits "
                              f"({card.get('contrast', '')})")
        why.append(f"{card['name']}: {bad[0]['message']}")
    raise BodyageError("no model fits this scan: " + ("; ".join(why) or "no models found"),
                       hint="train and export a model for it (`bodyage train`, "
                            "`bodyage export`), then --model DIR")


def predict_scans(scans: Sequence[Scan], model: str | Path | None, csv_path: Path,
                  out_dir: Path | None = None, explain: bool = False, qc_png: bool = True,
                  ages: dict[str, float] | None = None, device: str = "auto",
                  reporter: ProgressReporter | None = None) -> list[dict[str, Any]]:
    """Predict every scan; write the CSV (``CSV_COLUMNS``) and, per scan, the Grad-CAM NIfTI
    (``explain``) and the QC PNG into ``out_dir`` (default: the CSV's folder). Returns the
    rows."""
    from bodyage_core.inference.bundle import find_model
    from bodyage_core.inference.ensemble import AgeRun
    from bodyage_core.inference.loader import prefetch

    rep = ensure_reporter(reporter)
    out_dir = Path(out_dir) if out_dir is not None else Path(csv_path).parent
    runs: dict[str, AgeRun] = {}
    fixed = None if model is None else find_model(model)
    rows = []
    # the next scan is read (a UK Biobank zip stitched, a DICOM series decoded) in the
    # background while this one is predicted
    loaded = prefetch(scans, lambda sc: sc.load(), depth=1 if len(scans) > 1 else 0)
    try:
        for i, (scan, vol) in enumerate(loaded):
            rep.update("predict", i, len(scans), scan.id)
            t0 = time.perf_counter()
            row: dict[str, Any] = {"id": scan.id, "path": str(scan.path)}
            try:
                if isinstance(vol, BaseException):
                    raise vol
                age = age_for(scan.id, ages) if ages else None
                if age is None and vol.metadata.get("age") is not None:
                    age = float(vol.metadata["age"])
                mdir = fixed
                if mdir is None:
                    mdir, reason = choose_model(vol, age)
                    row["message"] = f"model chosen: {reason}"
                key = str(mdir)
                if key not in runs:
                    runs[key] = AgeRun(mdir, device=device)
                run = runs[key]
                pred = _predict_one(run, vol, scan, age, out_dir, explain, qc_png, row, rep)
                row.update(_row_values(pred, run))
                row["status"] = "ok"
            except BodyageError as err:
                refused = "envelope" in str(err) or "needs" in str(err)
                row["status"] = "refused" if refused else "failed"
                row["message"] = str(err)
            row["seconds"] = round(time.perf_counter() - t0, 2)
            rows.append(row)
    finally:
        loaded.close()
    rep.update("predict", len(scans), len(scans))
    write_text(csv_path, rows_csv(rows))
    return rows


def _predict_one(run, vol, scan: Scan, age, out_dir: Path, explain: bool, qc_png: bool,
                 row: dict[str, Any], rep):
    from bodyage_core.inference.subject import MapRequest, predict_subject

    maps = [MapRequest("gradcam", "relu")] if (explain or qc_png) and run.spec.mode == "3d" \
        else []
    pred = predict_subject(run, vol, subject_id=scan.id, age=age, out_of_fold=False,
                           maps=maps, reporter=rep)
    cam = pred.maps.get("gradcam:relu")
    if explain and cam is not None:
        from bodyage_core.explain.space import save_map

        target = out_dir / f"{scan.id}_gradcam_{run.name}.nii.gz"
        save_map(cam, target, description=f"bodyage gradcam {run.name}")
        row["map"] = str(target)
    if qc_png:
        from bodyage_core.evaluation.qc_figure import qc_figure

        lo, hi = pred.interval95
        lines = [f"predicted {pred.corrected:.1f} y (raw {pred.mean:.1f}), sigma "
                 f"{pred.sigma:.1f} y (1 SD), 95 % interval {lo:.1f}-{hi:.1f} "
                 f"({interval_method(pred.interval_z)})",
                 (f"chronological {pred.age:.1f} y, gap {pred.gap:+.1f} y"
                  if pred.age is not None else "chronological age not known"),
                 f"{run.describe()}; map: Grad-CAM (ReLU), top 10 %"]
        lines += [f"QC {f['flag']}: {f['message']}" for f in pred.qc]
        shown = vol.with_data(vol.data[:1], channels=vol.channels[:1]) if vol.n_channels \
            else vol
        target = out_dir / f"{scan.id}_qc.png"
        qc_figure(shown, target, f"{scan.id}", lines, cam)
        row["qc_png"] = str(target)
    return pred


def _row_values(pred, run) -> dict[str, Any]:
    lo, hi = pred.interval95
    lo68, hi68 = pred.interval(0.683)
    card = run.card or {}
    return {"predicted_age": pred.corrected, "predicted_age_raw": pred.mean,
            "sigma": pred.sigma, "ci95_low": lo, "ci95_high": hi, "ci68_low": lo68,
            "ci68_high": hi68, "intervals": interval_method(pred.interval_z),
            "chronological_age": pred.age, "gap": pred.gap, "raw_gap": pred.raw_gap,
            "qc_score": pred.qc_score,
            "qc_flags": "; ".join(f"{f['flag']}: {f['message']}" for f in pred.qc),
            "model": run.name, "model_version": card.get("version", ""),
            "model_sha": (run.sha or "")[:12]}


def rows_csv(rows: Sequence[dict[str, Any]]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(CSV_COLUMNS)
    for r in rows:
        vals = [r.get(c) for c in CSV_COLUMNS]
        w.writerow(["" if v is None else (f"{v:.2f}" if isinstance(v, float) else v)
                    for v in vals])
    return buf.getvalue()
