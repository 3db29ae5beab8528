"""Workspace-level entry point behind ``bodyage train`` (prediction: :mod:`bodyage_core.inference`)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from bodyage_core.errors import BodyageError, Cancelled, CohortError, ConfigError
from bodyage_core.models.factory import is_3d, model_config
from bodyage_core.progress import ProgressReporter, ensure_reporter
from bodyage_core.training.data import (
    InputSpec,
    load_subject_volume,
    records_from_workspace,
)
from bodyage_core.training.run import RunResult, train_run
from bodyage_core.training.trainer import TrainConfig

#: Named model grids (spacing z, y, x in mm; shape z, y, x): half and full UK Biobank
#: neck-to-knee resolution (Langner's fused grid is 2.232 x 2.232 x 3.0 mm).
GRIDS: dict[str, tuple[tuple[float, float, float], tuple[int, int, int]]] = {
    "default": ((6.0, 4.464, 4.464), (185, 87, 112)),
    "full": ((3.0, 2.232, 2.232), (370, 174, 224)),
}


def default_channels(ws, subjects=None) -> tuple[str, ...]:
    """Water + fat when the cohort has both, else T1, else the first image kind."""
    subjects = subjects if subjects is not None else ws.db.subjects()
    if not subjects:
        raise CohortError("the cohort has no subjects", ws.root,
                          "import subjects first (`bodyage import` or `bodyage synth`)")
    kinds = subjects[0].images
    if "water" in kinds and "fat" in kinds:
        return ("water", "fat")
    if "water" in kinds:
        return ("water",)
    if "t1" in kinds:
        return ("t1",)
    base = sorted(k for k in kinds if k not in ("labels", "age_mask") and
                  not k.startswith(("gradcam_", "to_atlas_")))
    if not base:
        raise CohortError(f"subject {subjects[0].subject_id} has no image to train on", ws.root,
                          "import its water/fat or t1 image")
    return (base[0],)


def make_spec(ws, arch: str = "resnet3d", channels: Sequence[str] | None = None,
              grid: str | None = None, spacing: Sequence[float] | None = None,
              shape: Sequence[int] | None = None, image_hw: Sequence[int] = (256, 256),
              normalise: str = "foreground_mean", align: str = "none",
              reporter: ProgressReporter | None = None) -> InputSpec:
    """The input config of a new run. Without ``grid``/``shape`` the grid is derived from the
    first subject: its field of view at ``spacing`` (default: twice its voxel size).

    ``align="template"``: the cohort's template is built (or read from the workspace cache,
    :func:`alignment_template`) and travels with the spec; the grid then covers the template's
    box at ``spacing`` (default twice the template's voxel size)."""
    subjects = ws.db.subjects()
    chans = tuple(channels) if channels else default_channels(ws, subjects)
    mode = "3d" if is_3d(model_config({"arch": arch})) else "2.5d"
    if grid:
        if grid not in GRIDS:
            raise ConfigError(f"unknown grid {grid!r}", hint=f"use one of {sorted(GRIDS)}")
        sp, sh = GRIDS[grid]
        spacing = spacing or sp
        shape = shape or sh
    template = None
    if align == "template":
        template = alignment_template(ws, chans, reporter)
    if shape is None or spacing is None:
        if template is not None:
            vol = template
        else:
            leave = set(getattr(ws, "train_exclude", ()) or ())
            with_imgs = [s for s in subjects if all(c in s.images for c in chans)
                         and not s.excluded and s.subject_id not in leave]
            if not with_imgs:
                raise CohortError(f"no subject has the images {list(chans)}", ws.root,
                                  "import them or choose --channels")
            vol, first_err = None, None
            for subj in with_imgs[:20]:       # the first subject whose images load
                try:
                    vol = load_subject_volume(ws, subj, chans)
                    break
                except BodyageError as err:
                    first_err = first_err or err
            if vol is None:
                raise first_err
        if spacing is None:
            spacing = tuple(2.0 * s for s in vol.spacing_zyx)
        if shape is None:
            extent = [n * s for n, s in zip(vol.shape, vol.spacing_zyx)]
            shape = tuple(max(8, int(math.ceil(e / sp - 1e-6)))
                          for e, sp in zip(extent, spacing))
    spec = InputSpec(channels=chans, mode=mode, spacing_zyx=tuple(spacing),
                     shape_zyx=tuple(shape), normalise=normalise, image_hw=tuple(image_hw),
                     align=align)
    if template is not None:
        from bodyage_core.preprocess.align import template_sha

        spec.template = template
        spec.template_sha256 = template_sha(template)
    return spec


def alignment_template(ws, channels: Sequence[str], reporter: ProgressReporter | None = None,
                       rounds: int = 2):
    """The cohort template of the workspace's subjects that have ``channels`` and are not
    excluded (built from the first channel's images only: no ages), cached as
    ``cache/templates/<key>.nii.gz`` (the key names the subjects, their image files' sizes and
    times, and the settings), so a resumed or repeated run reuses it."""
    import hashlib
    import json

    from bodyage_core.io import load_volume, save_volume
    from bodyage_core.preprocess.align import build_template

    rep = ensure_reporter(reporter)
    subjects = [s for s in ws.db.subjects() if all(c in s.images for c in channels)
                and not getattr(s, "excluded", False)]
    if len(subjects) < 2:
        raise CohortError(f"a cohort template needs at least 2 subjects with {list(channels)}",
                          ws.root, "import more subjects or train without --align")
    key_items = []
    for s in subjects:
        p = ws.resolve(s.images[channels[0]])
        st = p.stat()
        key_items.append([s.subject_id, str(p), st.st_size, int(st.st_mtime)])
    key = hashlib.sha1(json.dumps([key_items, rounds, "v1"]).encode()).hexdigest()[:16]
    path = ws.root / "cache" / "templates" / f"{channels[0]}_{key}.nii.gz"
    if path.is_file():
        rep.update("align", 1, 1, f"cohort template {path.name} (cached)")
        return load_volume(path)
    vols = []
    for i, s in enumerate(subjects):
        vols.append(load_volume(ws.resolve(s.images[channels[0]])))
        rep.update("load", i + 1, len(subjects), s.subject_id)
    template = build_template(vols, rounds=rounds, reporter=rep)
    save_volume(template, path)
    return load_volume(path)


def train_workspace(ws, run: str, spec: InputSpec, model: dict[str, Any],
                    train: TrainConfig, folds: int = 5, members: int = 1,
                    split_method: str = "stratified", seed: int = 0, resume: bool = False,
                    overwrite: bool = False,
                    reporter: ProgressReporter | None = None, dist=None,
                    val_fraction: float = 0.15, test_fraction: float = 0.15,
                    init=None) -> RunResult:
    """Train run ``run`` on the workspace cohort; registers it in ``cohort.sqlite`` and stores
    the out-of-fold predictions there (split ``oof``).

    ``dist`` (a :class:`~bodyage_core.training.distributed.DistContext`) trains under torchrun;
    only rank 0 touches ``cohort.sqlite``.
    """
    rep = ensure_reporter(reporter)
    main_rank = dist is None or dist.is_main
    leave = set(getattr(ws, "train_exclude", ()) or ())
    all_subjects = [s for s in ws.db.subjects() if not s.excluded and s.subject_id not in leave]
    if not all_subjects:
        raise CohortError("the cohort is empty", ws.root,
                          "import subjects first (`bodyage import` or `bodyage synth`)")
    nan_age = [s.subject_id for s in all_subjects if s.age is None or not np.isfinite(s.age)]
    if nan_age:
        raise CohortError(f"{len(nan_age)} subject(s) have no age: "
                          f"{', '.join(nan_age[:5])}{' ...' if len(nan_age) > 5 else ''}",
                          ws.root, "set their ages (re-import the cohort CSV) or remove them")
    missing = [s.subject_id for s in all_subjects if any(c not in s.images for c in spec.channels)]
    if missing:
        raise CohortError(f"{len(missing)} subject(s) lack the image(s) {list(spec.channels)}: "
                          f"{', '.join(missing[:5])}", ws.root,
                          "import the images or choose other --channels")
    records = records_from_workspace(ws, spec, reporter=rep)
    run_dir = ws.model_dir(run)
    mcfg = model_config(model)
    started = False
    try:
        result = train_run(records, run_dir, spec, mcfg, train, folds, members, split_method,
                           val_fraction=val_fraction, test_fraction=test_fraction, init=init,
                           seed=seed, resume=resume, overwrite=overwrite, reporter=rep,
                           _on_start=lambda: _register(ws, run, mcfg, spec, train, folds,
                                                       members), dist=dist)
        started = True
    except Cancelled:
        if main_rank:
            _set_status(ws, run, "interrupted")
        raise
    except BodyageError:
        raise
    except Exception:
        if main_rank:
            _set_status(ws, run, "failed")
        raise
    if started and main_rank:
        ws.db.add_run(run, mcfg["arch"], _run_db_config(mcfg, spec, train, folds, members),
                      status="complete")
        ws.db.add_predictions(run, result.oof)
    return result


def _run_db_config(mcfg, spec, train, folds, members) -> dict[str, Any]:
    return {"model": mcfg, "input": spec.to_dict(), "train": train.to_dict(), "folds": folds,
            "members_per_fold": members}


def _register(ws, run, mcfg, spec, train, folds, members) -> None:
    ws.db.add_run(run, mcfg["arch"], _run_db_config(mcfg, spec, train, folds, members),
                  status="training")


def _set_status(ws, run: str, status: str) -> None:
    if any(r["run_id"] == run for r in ws.db.runs()):
        ws.db.set_run_status(run, status)


def add_qc_reference(ws, run: str) -> int:
    """Fit (again) the QC score's reference of a finished run of ``ws`` on the subjects each
    member never trained on (its fold's validation and held-out subjects), as training now
    does; for runs trained before it. Returns the number of reference subjects."""
    import json

    from bodyage_core.atomic import write_json
    from bodyage_core.inference import ood
    from bodyage_core.inference.ensemble import AgeRun
    from bodyage_core.training.data import AgeDataset

    run_dir = ws.model_dir(run)
    ar = AgeRun(run_dir)
    records = records_from_workspace(ws, ar.spec, require_age=False)
    pos = {r.subject_id: i for i, r in enumerate(records)}
    ds = AgeDataset(records)
    folds = ar.splits.get("folds", {})
    val = ar.splits.get("val", {})
    unseen = []
    for m in ar.members:
        f = m.get("fold")
        ids = [s for s, ff in folds.items() if ff == f] + list(val.get(str(f), []))
        unseen.append(np.array(sorted({pos[s] for s in ids if s in pos}), dtype=int))
    stats = ood.fit(ar.load_members(), ds.batch, unseen)
    ood.save(stats, run_dir / ood.FILE)
    cfg_path = run_dir / "config.json"
    cfg = json.loads(cfg_path.read_text())
    if ood.FILE not in cfg.get("files", []):
        cfg["files"] = [*cfg.get("files", []), ood.FILE]
        write_json(cfg_path, cfg)
    return int(stats["n"])
