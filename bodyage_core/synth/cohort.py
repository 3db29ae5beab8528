"""Generate a synthetic cohort into a workspace and register it in the cohort index.

Layout written (paths relative to the workspace root)::

    synth.json                         the generator settings (seed, grid, effects, n; the
                                       acquisition / accelerate settings when given)
    participants.csv                   subject_id, age, sex, bmi, bmi_group, site
    subjects/<id>/water.nii.gz         Dixon water (integer values stored as uint16, no scaling)
    subjects/<id>/fat.nii.gz           Dixon fat (same)
    subjects/<id>/labels.nii.gz        uint8 organ ids (bodyage_core.labels.synthetic.LABELS)
    subjects/<id>/labels.json          the organ table beside them (id -> name), for viewers
    subjects/<id>/age_mask.nii.gz      uint8 age-effect ids (bodyage_core.synth.effects.EFFECTS)
    subjects/<id>/truth.json           all subject parameters and realised effect values

NIfTI arrays are stored in (x, y, z) index order with the voxel (x, y, z) -> RAS mm affine (the
``Volume`` (Z, Y, X) data transposed). Every file is written atomically; a subject whose files all
exist (made with the same settings) is skipped, so an interrupted run resumes.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

from bodyage_core.atomic import write_bytes, write_json, write_text
from bodyage_core.errors import CohortError
from bodyage_core.names import check_name
from bodyage_core.progress import ProgressReporter, ensure_reporter
from bodyage_core.synth.acceleration import Acceleration
from bodyage_core.synth.acquisition import Acquisition
from bodyage_core.synth.effects import AgeEffects
from bodyage_core.synth.params import BIO_GAP_SD, SubjectParams, check_gap_sd, sample_subject
from bodyage_core.synth.phantom import SynthGrid, generate_subject
from bodyage_core.volume import Volume

IMAGE_KINDS = ("water", "fat", "labels", "age_mask")
#: On-disk types: the Dixon images are integer-valued (like scanner data), labels/mask uint8.
DISK_DTYPES = {"water": np.uint16, "fat": np.uint16, "labels": np.uint8, "age_mask": np.uint8}
TRUTH_NAME = "truth.json"
CONFIG_NAME = "synth.json"
CSV_NAME = "participants.csv"
CSV_COLUMNS = ("subject_id", "age", "sex", "bmi", "bmi_group", "site")
GENERATOR_VERSION = 1


def save_nifti(volume: Volume, path: str | Path, dtype: Any = None) -> Path:
    """Write one channel of a Volume as NIfTI (x, y, z order, RAS affine), atomically.

    ``dtype`` (e.g. ``np.uint16`` for the integer-valued Dixon images) stores the values as that
    type without scaling; by default the array's own dtype is kept.
    """
    arr = np.ascontiguousarray(volume.data[0].transpose(2, 1, 0))
    if dtype is not None:
        arr = arr.astype(dtype)
    img = nib.Nifti1Image(arr, volume.affine)
    img.header.set_xyzt_units("mm", "sec")
    img.set_sform(volume.affine, code=1)
    img.set_qform(volume.affine, code=1)
    path = Path(path)
    data = img.to_bytes()
    if path.name.endswith(".gz"):
        data = gzip.compress(data, compresslevel=1, mtime=0)
    write_bytes(path, data)
    return path


def subject_files(subject_dir: Path) -> dict[str, Path]:
    files = {k: subject_dir / f"{k}.nii.gz" for k in IMAGE_KINDS}
    files["truth"] = subject_dir / TRUTH_NAME
    return files


def cohort_params(n: int, seed: int = 0, effects: AgeEffects | dict | str | None = None,
                  start: int = 0, balanced: bool = True,
                  acquisition: Acquisition | str | None = None,
                  accelerate: Acceleration | str | None = None,
                  gap_sd: float | None = None) -> list[SubjectParams]:
    """Parameters of subjects ``start .. start+n-1`` of cohort ``seed`` (no images)."""
    eff = AgeEffects.from_dict(effects)
    acq, acc = Acquisition.parse(acquisition), Acceleration.parse(accelerate)
    return [sample_subject(seed, i, effects=eff, balanced=balanced, acquisition=acq,
                           accelerate=acc, gap_sd=gap_sd) for i in range(start, start + n)]


def _config(n: int, seed: int, grid: SynthGrid, effects: AgeEffects, balanced: bool,
            acquisition: Acquisition | None = None, accelerate: Acceleration | None = None,
            gap_sd: float | None = None) -> dict[str, Any]:
    cfg = {"generator": "bodyage_core.synth", "version": GENERATOR_VERSION, "seed": int(seed),
           "grid": grid.to_dict(), "effects": effects.to_dict(), "balanced": balanced, "n": n}
    # only when given: a cohort made without them keeps its settings (and files) as before
    if acquisition:
        cfg["acquisition"] = acquisition.to_dict()
    if accelerate:
        cfg["accelerate"] = accelerate.to_dict()
    if gap_sd is not None and float(gap_sd) != BIO_GAP_SD:
        cfg["gap_sd"] = float(gap_sd)
    return cfg


_SETTINGS = ("version", "seed", "grid", "effects", "balanced", "acquisition", "accelerate",
             "gap_sd")


def _same_settings(a: dict[str, Any], b: dict[str, Any]) -> bool:
    return all(json.dumps(a.get(k), sort_keys=True) == json.dumps(b.get(k), sort_keys=True)
               for k in _SETTINGS)


def _fmt(v: Any) -> str:
    if isinstance(v, dict) and "spacing_xyz" in v:
        return "x".join(f"{s:g}" for s in v["spacing_xyz"]) + " mm"
    if isinstance(v, dict):
        return ",".join(f"{k}={x:g}" if isinstance(x, (int, float)) else f"{k}={x}"
                        for k, x in v.items())
    return str(v)


def subject_record(params: SubjectParams, root: Path, subject_dir: Path,
                   truth: dict[str, Any] | None = None) -> dict[str, Any]:
    """The cohort-index record of one subject (image paths relative to ``root``)."""
    rel = subject_dir.relative_to(root)
    truth = truth or params.to_dict()
    meta = {
        "synthetic": True,
        "bio_age": truth.get("bio_age"),
        "bio_gap": truth.get("bio_gap"),
        "effect_strengths": truth.get("strengths"),
        "effects": truth.get("effect_values"),
        "stature": truth.get("stature"),
        "seed": params.seed,
        "index": params.index,
    }
    if truth.get("acceleration") is not None:
        meta["acceleration"] = truth["acceleration"]
        meta["organ_bio_age"] = truth.get("organ_bio_age", {})
    if truth.get("acquisition") is not None:
        meta["acquisition"] = truth["acquisition"]
        meta["acquisition_degraded"] = len(truth["acquisition"])
    return {
        "subject_id": params.subject_id, "age": round(params.age, 3), "sex": params.sex,
        "bmi": round(params.bmi, 2), "bmi_group": params.bmi_group, "site": params.site,
        "images": {k: str(rel / f"{k}.nii.gz") for k in IMAGE_KINDS},
        "meta": meta,
    }


def register_subjects(workspace_root: Path, records: Sequence[dict[str, Any]]) -> int:
    """Register subject records in the workspace's cohort index (creating it if needed)."""
    if not records:
        return 0
    from bodyage_core.cohort import Workspace

    ws = Workspace.create(workspace_root)
    try:
        return ws.db.add_subjects(records)
    finally:
        ws.close()


def write_participants_csv(path: Path, params: Sequence[SubjectParams]) -> Path:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(CSV_COLUMNS)
    for p in params:
        w.writerow([p.subject_id, f"{p.age:.2f}", p.sex, f"{p.bmi:.2f}", p.bmi_group, p.site])
    write_text(path, buf.getvalue())
    return path


def generate_cohort(workspace_path: str | Path, n: int, seed: int = 0,
                    grid: SynthGrid | str | tuple | None = "default",
                    effects: AgeEffects | dict | str | None = None,
                    reporter: ProgressReporter | None = None, overwrite: bool = False,
                    start: int = 0, balanced: bool = True, register: bool = True,
                    acquisition: Acquisition | str | None = None,
                    accelerate: Acceleration | str | None = None,
                    gap_sd: float | None = None) -> list[str]:
    """Generate ``n`` synthetic subjects into the workspace and register them.

    Parameters
    ----------
    workspace_path
        Workspace folder (created when missing).
    n, seed, start
        Subjects ``start .. start+n-1`` of the cohort with this seed (subject ``i`` of seed ``s``
        is always the same person).
    grid
        ``'default'`` (4.464 x 4.464 x 6 mm), ``'full'`` (2.232 x 2.232 x 3 mm) or a spacing.
    effects
        :class:`AgeEffects`, a dict of strengths or a string like ``"spine=1,back_muscle=0"``.
    reporter
        Progress (one update per subject; cancellation honoured between subjects).
    overwrite
        Regenerate subjects whose files exist; also needed to change the settings of a
        workspace that already holds a synthetic cohort.
    register
        Add the subjects to the workspace's cohort index (``cohort.sqlite``).
    acquisition
        Acquisition degradations (:mod:`bodyage_core.synth.acquisition`), e.g.
        ``"noise=0.3@2,ghost=0.2,swap=0.05"``; off by default.
    accelerate
        Organ-specific accelerated ageing (:mod:`bodyage_core.synth.acceleration`), e.g.
        ``"heart=+10@0.15"``; off by default.
    gap_sd
        SD (years) of the whole-body biological-age gap (default 2.5; 0: none, so planted
        organ ageing is the only ageing that differs between subjects of one age).

    Returns
    -------
    list of str
        The subject ids, in order.
    """
    if n < 1:
        raise CohortError(f"number of subjects must be at least 1, got {n}")
    root = Path(workspace_path).expanduser().resolve()
    if root.exists() and not root.is_dir():
        raise CohortError("exists and is not a folder", root, "choose another workspace path")
    g = SynthGrid.resolve(grid)
    eff = AgeEffects.from_dict(effects)
    acq, acc = Acquisition.parse(acquisition), Acceleration.parse(accelerate)
    rep = ensure_reporter(reporter)
    root.mkdir(parents=True, exist_ok=True)
    (root / "subjects").mkdir(exist_ok=True)
    cfg_path = root / CONFIG_NAME
    if gap_sd is not None:
        gap_sd = check_gap_sd(gap_sd)
    cfg = _config(start + n, seed, g, eff, balanced, acq, acc, gap_sd)
    if cfg_path.exists():
        try:
            old = json.loads(cfg_path.read_text())
        except (OSError, ValueError):
            old = {}
        if not _same_settings(old, cfg) and not overwrite:
            diff = [f"{k} {_fmt(old.get(k))} (asked {_fmt(cfg.get(k))})" for k in _SETTINGS
                    if json.dumps(old.get(k), sort_keys=True) != json.dumps(cfg.get(k),
                                                                           sort_keys=True)]
            raise CohortError(
                "holds a synthetic cohort made with other settings: " + "; ".join(diff),
                cfg_path, "use --overwrite to regenerate, or another workspace")
        cfg["n"] = max(int(old.get("n", 0)) if _same_settings(old, cfg) else 0, start + n)
    write_json(cfg_path, cfg)

    all_params = cohort_params(cfg["n"], seed, eff, 0, balanced, acq, acc, gap_sd)
    todo = all_params[start:start + n]
    ids = [check_name(p.subject_id, "subject id") for p in todo]
    pending: list[dict[str, Any]] = []
    rep.update("synth", 0, n, message="generating")
    try:
        for k, p in enumerate(todo):
            sdir = root / "subjects" / p.subject_id
            files = subject_files(sdir)
            if not overwrite and all(f.exists() for f in files.values()) and \
                    _truth_matches(files["truth"], cfg):
                truth = json.loads(files["truth"].read_text())
                _write_label_table(files["labels"])
                pending.append(subject_record(p, root, sdir, truth))
                rep.update("synth", k + 1, n, message=f"{p.subject_id} (exists)")
                continue
            subj = generate_subject(p, g)
            sdir.mkdir(parents=True, exist_ok=True)
            for kind in IMAGE_KINDS:
                save_nifti(getattr(subj, kind), files[kind], dtype=DISK_DTYPES.get(kind))
            _write_label_table(files["labels"], force=True)
            truth = dict(subj.truth)
            truth["settings"] = {k2: cfg[k2] for k2 in _SETTINGS if k2 in cfg}
            write_json(files["truth"], truth)
            pending.append(subject_record(p, root, sdir, truth))
            if register and len(pending) >= 16:
                register_subjects(root, pending)
                pending = []
            rep.update("synth", k + 1, n, message=p.subject_id, age=round(p.age, 1), sex=p.sex)
    finally:
        if register and pending:
            register_subjects(root, pending)
        # the CSV lists every complete subject of this cohort (also after a cancel)
        done = [q for q in all_params
                if all(f.exists() for f in subject_files(root / "subjects" / q.subject_id).values())]
        write_participants_csv(root / CSV_NAME, done)
    return ids


def _write_label_table(labels_path: Path, force: bool = False) -> None:
    """The organ table beside a subject's label map (``labels.json``), so that any viewer
    reads the organ names from the map's own table."""
    from bodyage_core.labels import synthetic_table, write_sidecar
    from bodyage_core.labels.tables import sidecar_candidates

    if force or not sidecar_candidates(labels_path)[0].exists():
        write_sidecar(labels_path, synthetic_table())


def _truth_matches(path: Path, cfg: dict[str, Any]) -> bool:
    try:
        settings = json.loads(path.read_text()).get("settings", {})
    except (OSError, ValueError):
        return False
    return _same_settings(settings, cfg)


def read_truth(subject_dir: str | Path) -> dict[str, Any]:
    """The ground-truth JSON of a generated subject."""
    path = Path(subject_dir) / TRUTH_NAME
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise CohortError("no synthetic ground truth here", path,
                          "generate the cohort with `bodyage synth`") from None
