"""Writing and checking model bundles (the format: :mod:`bodyage_core.inference.bundle`).

:func:`export_run` makes a bundle from a trained run (``bodyage export``); :func:`verify_model`
checks every file of one against its card and loads its networks (``bodyage models verify``).
Above :mod:`~bodyage_core.inference.ensemble`, which reads bundles through the format module.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from bodyage_core.atomic import write_json
from bodyage_core.errors import BodyageError, ConfigError
from bodyage_core.inference.bundle import CARD_FORMAT, CARD_NAME, card_sha, read_card, verify_file
from bodyage_core.inference.ensemble import AgeRun


def verify_model(model_dir: str | Path) -> list[str]:
    """Check every file of a bundle against its card and load every member network.

    Returns one line per check; raises a :class:`BodyageError` at the first failure."""
    model_dir = Path(model_dir)
    card = read_card(model_dir)
    lines = [f"card {CARD_NAME}: {card['name']} {card['version']} (sha256 "
             f"{card_sha(model_dir)[:12]}...)"]
    for m in card["members"]:
        verify_file(model_dir / m["file"], m["sha256"])
        lines.append(f"{m['file']}: sha256 ok")
    for extra in card.get("files", []):
        verify_file(model_dir / extra["file"], extra["sha256"])
        lines.append(f"{extra['file']}: sha256 ok")
    run = AgeRun(model_dir, device="cpu")
    nets = run.load_members()
    n_par = sum(p.numel() for p in nets[0].parameters())
    lines.append(f"{len(nets)} member network(s) load ({n_par:,} parameters each)")
    return lines


def add_laterality_reference(model_dir: str | Path, inputs) -> dict[str, Any]:
    """Add the QC score's laterality statistics (:mod:`bodyage_core.inference.ood`) to a
    bundle whose reference was made before they existed, without touching its weights or
    its feature statistics: ``inputs`` are model inputs of training-set subjects, prepared
    as the model prepares them (:func:`~bodyage_core.preprocess.spec.prepare_model_input`:
    arrays on RAS grids, or ``(array, affine)`` pairs). Rewrites ``ood.safetensors`` and the
    card's sha256 of it, then verifies the bundle. Returns the statistics."""
    from bodyage_core.inference import ood

    model_dir = Path(model_dir)
    card = read_card(model_dir)
    entry = next((f for f in card.get("files", []) if f["file"] == ood.FILE), None)
    if entry is None:
        raise BodyageError("the model has no QC reference to add laterality statistics to",
                           path=model_dir, hint="export it again from a run with one")
    verify_file(model_dir / ood.FILE, entry["sha256"])
    lat = ood.fit_laterality(inputs, tuple(AgeRun(model_dir, device="cpu").spec.array_shape))
    if lat is None:
        raise BodyageError(f"laterality statistics need at least {ood.LAT_MIN_SUBJECTS} "
                           f"3D model inputs", path=model_dir)
    entry["sha256"] = ood.add_laterality(model_dir / ood.FILE, lat)
    body = json.loads((model_dir / CARD_NAME).read_text())
    body["files"] = card["files"]
    write_json(model_dir / CARD_NAME, body)
    verify_model(model_dir)
    return lat


# -- exporting ------------------------------------------------------------------------------

def export_run(run_dir: str | Path, out_dir: str | Path, *, name: str | None = None,
               version: str = "1.0.0", card: Mapping[str, Any] | None = None,
               float16: bool = True, overwrite: bool = False,
               workspace=None) -> Path:
    """Write run ``run_dir`` as a model bundle in ``out_dir`` (a new folder, filled in a
    ``.partial`` sibling and renamed when complete).

    ``card`` adds or replaces card fields (description, intended_use, envelope, licence,
    attribution, metrics...). ``workspace`` (the run's own, by default the folder two levels up
    when it has a cohort index) supplies the training cohort's description and the envelope.
    """
    import shutil

    from bodyage_core.inference.weights import save_safetensors, sha256_file
    from bodyage_core.names import check_name

    run_dir, out_dir = Path(run_dir), Path(out_dir)
    run = AgeRun(run_dir, device="cpu")
    if run.kind != "run":
        raise ConfigError("already a model bundle", path=run_dir, hint="copy the folder")
    name = check_name(name or run.name, "model name")
    if out_dir.exists() and not overwrite:
        raise BodyageError("the target folder exists", path=out_dir,
                           hint="choose a new folder or use --overwrite")
    work = out_dir.with_name(f".{out_dir.name}.partial")
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    members = []
    for k, m in enumerate(run.members):
        fname = f"member_{k}.safetensors"
        sha = save_safetensors(run.member_state(k), work / fname,
                               dtype=_torch_dtype(float16),
                               # one key: safetensors writes a metadata map in no set
                               # order, and a shipped file must be byte-for-byte repeatable
                               metadata={"bodyage": f"{name} member {k}"})
        members.append({"file": fname, "sha256": sha, "bytes": (work / fname).stat().st_size,
                        "fold": m.get("fold"), "seed": m.get("seed"),
                        "target_mean": float(m["target_mean"]),
                        "target_std": float(m["target_std"]),
                        "n_train": m.get("n_train"), "n_val": m.get("n_val")})
    files = []
    for extra in run.config.get("files", []):      # e.g. an alignment template
        src = run_dir / extra
        shutil.copy2(src, work / src.name)
        files.append({"file": src.name, "sha256": sha256_file(work / src.name)})
    if run.qc_stats is not None and run.qc_stats.get("laterality") is None:
        import logging

        logging.getLogger(__name__).warning(
            "run %s: its QC reference has no laterality statistics, so the model will not "
            "notice a left-right mirrored scan; refit it (training.workflow.add_qc_reference) "
            "before exporting, or add them to the bundle (add_laterality_reference)", run.name)
    ws = workspace if workspace is not None else _run_workspace(run_dir)
    try:
        cohort, envelope = _cohort_and_envelope(run, ws)
    finally:
        if workspace is None and ws is not None:
            ws.close()
    metrics_path = run_dir / "metrics.json"
    metrics = json.loads(metrics_path.read_text()) if metrics_path.exists() else {}
    body = {
        "format": CARD_FORMAT, "name": name, "version": str(version),
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "bodyage_version": _bodyage_version(), "exported_from": {"run": run.name},
        "description": f"ensemble of {len(members)} {run.model_config.get('arch')} networks",
        "architecture": dict(run.model_config, weights=None),
        "input": run.spec.to_dict(), "preprocessing": preprocessing(run.spec),
        "channels": list(run.spec.channels), "contrast": _contrast(run.spec.channels),
        "training": {**run.config.get("train", {}), "folds": run.config.get("folds"),
                     "members_per_fold": run.config.get("members_per_fold"),
                     "split_method": run.config.get("split_method"),
                     "seed": run.config.get("seed")},
        "tta": list(run.tta),
        "training_cohort": cohort,
        "metrics": {"out_of_fold": {k: metrics.get(k) for k in ("raw", "corrected")
                                    if k in metrics},
                    "n_out_of_fold": metrics.get("n_out_of_fold")},
        "bias_correction": {"global": run.bias["global"], "folds": run.bias.get("folds", {}),
                            "method": run.bias.get("method"), "note": run.bias.get("note")},
        "calibration": {"global": run.calibration["global"],
                        "folds": run.calibration.get("folds", {}),
                        "note": run.calibration.get("note")},
        "intended_use": "research use; not a medical device",
        "envelope": envelope,
        "licence": "as the training data allow; see attribution",
        "attribution": "",
        "members": members, "files": files,
        "weights_dtype": "float16" if float16 else "float32",
    }
    for k, v in (card or {}).items():
        if isinstance(v, dict) and isinstance(body.get(k), dict):
            body[k] = {**body[k], **v}
        else:
            body[k] = v
    write_json(work / CARD_NAME, body)
    if out_dir.exists():
        shutil.rmtree(out_dir)
    work.rename(out_dir)
    verify_model(out_dir)
    return out_dir


def preprocessing(spec) -> dict[str, Any]:
    """Every parameter between a loaded image and the model input (the card's record)."""
    steps = ["load: reoriented to RAS (axes permuted/flipped, never resampled); NIfTI scaling "
             "applied; non-finite voxels set to 0 and flagged",
             f"channels: {list(spec.channels)} in this order",
             f"resample: trilinear to {list(spec.spacing_zyx)} mm (z, y, x), body centred "
             f"(Otsu body mask), cropped/padded to {list(spec.shape_zyx)} voxels",
             f"intensity: {spec.normalise} per channel"]
    if spec.mode == "2.5d":
        steps.append(f"2.5D: coronal + sagittal mean-intensity projections, layout "
                     f"{spec.projection}, {list(spec.image_hw)} pixels")
    return {"steps": steps, "resample_order": 1, "centre": "body", "normalise": spec.normalise,
            "spacing_zyx": list(spec.spacing_zyx), "shape_zyx": list(spec.shape_zyx),
            "mode": spec.mode}


def _contrast(channels) -> str:
    ch = set(channels)
    if {"water", "fat"} <= ch:
        return "Dixon MRI, water and fat images"
    if ch == {"t1"}:
        return "T1-weighted MRI"
    return " + ".join(channels)


def _torch_dtype(float16: bool):
    import torch

    return torch.float16 if float16 else None


def _bodyage_version() -> str:
    try:
        from importlib.metadata import version

        return version("bodyage")
    except Exception:  # noqa: BLE001 - running from a checkout without metadata
        return "unknown"


def _run_workspace(run_dir: Path):
    from bodyage_core.cohort import Workspace

    root = run_dir.resolve().parent.parent
    return Workspace.open(root) if Workspace.is_workspace(root) else None


def _cohort_and_envelope(run, ws) -> tuple[dict[str, Any], dict[str, Any]]:
    """The training cohort (n, ages, sex, sites) and the envelope (channels, field of view,
    voxel size, ages) from the run's subjects in its workspace."""
    spec = run.spec
    env: dict[str, Any] = {"channels": list(spec.channels), "mode": spec.mode,
                           "orientation": "any (reoriented to RAS on load)",
                           "model_spacing_zyx_mm": list(spec.spacing_zyx)}
    ids = list(run.splits.get("folds", {}))
    ids += list(run.splits.get("single_split_roles", {}))
    cohort: dict[str, Any] = {"n": int(run.config.get("subjects") or len(ids))}
    if ws is None:
        return cohort, env
    subjects = ws.db.subjects(ids) if ids else ws.db.subjects()
    ages = np.array([s.age for s in subjects if s.age is not None], dtype=float)
    sexes: dict[str, int] = {}
    sites: dict[str, int] = {}
    for s in subjects:
        sexes[str(s.sex)] = sexes.get(str(s.sex), 0) + 1
        sites[str(s.site)] = sites.get(str(s.site), 0) + 1
    cohort.update({"n": len(subjects), "sex": sexes, "sites": sites})
    if len(ages):
        cohort["age"] = {"min": float(ages.min()), "max": float(ages.max()),
                         "mean": float(ages.mean()), "sd": float(ages.std())}
        env["age_range"] = [float(np.floor(ages.min())), float(np.ceil(ages.max()))]
    fov, vox = [], []
    for s in subjects[:: max(1, len(subjects) // 40)]:
        try:
            shape, affine = _header_grid(ws.resolve(s.images[spec.channels[0]]))
        except Exception:  # noqa: BLE001 - a subject whose header cannot be read adds nothing
            continue
        from bodyage_core.inference.envelope import world_extent, world_voxel

        vox.append(world_voxel(affine))                               # world x, y, z mm
        fov.append(world_extent(shape, affine))
    if fov:
        fov_a, vox_a = np.array(fov), np.array(vox)
        env["field_of_view_xyz_mm"] = {"min": fov_a.min(0).round(1).tolist(),
                                       "max": fov_a.max(0).round(1).tolist()}
        env["voxel_xyz_mm"] = {"min": vox_a.min(0).round(3).tolist(),
                               "max": vox_a.max(0).round(3).tolist()}
    return cohort, env


def _header_grid(path: Path) -> tuple[tuple[int, int, int], np.ndarray]:
    from bodyage_core.io.header import image_grid

    return image_grid(path)
