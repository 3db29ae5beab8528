"""Explain the subjects of a workspace with a trained run: maps in each subject's own space.

For every subject: load its images, bring them onto the run's model grid (exactly the input the
run was trained and predicts on, plus that grid's affine), compute one map per ensemble member
and their mean, resample the mean to the grid of the subject's original image and write it as
NIfTI with that image's affine, raw float32 values, atomically::

    subjects/<id>/gradcam_<run>.nii.gz          Grad-CAM, ReLU variant
    subjects/<id>/gradcam_signed_<run>.nii.gz   Grad-CAM, signed (+ older, - younger)
    subjects/<id>/occlusion_<run>.nii.gz        occlusion sensitivity (signed, years)
    subjects/<id>/<kind>.json                   how the map was made (method, layer, members,
                                                their predictions, units, model grid)

and records the path in the cohort index under the image kind of the same name. Values are
scaled by each member's ``target_std``, so Grad-CAM is in (years per unit activation) x
activation and occlusion in years of predicted age.

Members: a subject the run held out in a cross-validation fold is explained with the members of
that fold only (the ones whose out-of-fold prediction it got); any other subject with all.

Resumable: a subject whose map exists is skipped unless ``overwrite``; a subject that fails with
a user-fixable error is recorded (``tasks`` table, stage ``explain``) and the others go on.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from bodyage_core.atomic import write_json
from bodyage_core.errors import BodyageError, ConfigError
from bodyage_core.explain.space import save_map
from bodyage_core.inference.bundle import run_source
from bodyage_core.progress import ProgressReporter, ensure_reporter
from bodyage_core.volume import Volume

METHODS = ("gradcam", "occlusion", "gradxinput")


REFERENCES = ("zero", "atlas")


def map_kind(method: str, run: str, variant: str = "relu", reference: str = "zero") -> str:
    """Image kind (and file stem) of a map: ``gradcam_<run>``, ``gradcam_signed_<run>``,
    ``occlusion_<run>``, ``gradxinput_signed_<run>``; gradient x input against the atlas
    template: ``gradxinput_signed_vs_atlas_<run>``."""
    check_reference(method, reference)
    if reference == "atlas":
        return f"gradxinput_{variant}_vs_atlas_{run}"
    if method == "gradcam":
        return f"gradcam_{run}" if variant == "relu" else f"gradcam_signed_{run}"
    if method == "occlusion":
        return f"occlusion_{run}"
    if method == "gradxinput":
        return f"gradxinput_{run}" if variant == "relu" else f"gradxinput_{variant}_{run}"
    raise ConfigError(f"unknown explanation method {method!r}; use {' or '.join(METHODS)}")


@dataclass
class ExplainSummary:
    """What :func:`explain_subjects` did."""

    run: str
    method: str
    kind: str
    written: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    no_prediction: list[str] = field(default_factory=list)
    seconds: float = 0.0
    paths: dict[str, str] = field(default_factory=dict)

    def lines(self) -> list[str]:
        out = [f"{self.kind}: {len(self.written)} written, {len(self.skipped)} skipped "
               f"(map exists; --overwrite to redo), {len(self.failed)} failed "
               f"in {self.seconds:.1f} s"]
        for sid, msg in self.failed.items():
            out.append(f"  failed {sid}: {msg}")
        if self.no_prediction:
            ids = ", ".join(self.no_prediction[:5]) + (" ..." if len(self.no_prediction) > 5
                                                       else "")
            out.append(f"  note: {len(self.no_prediction)} subject(s) have no stored prediction "
                       f"of run {self.run!r} ({ids}); the maps do not need one — run "
                       "`bodyage predict` to get their ages")
        return out


# -- the model grid and its affine ----------------------------------------------------------

def model_grid_input(volume: Volume, spec) -> Volume:
    """The subject on the run's model grid: the exact input array the run sees, with the
    affine of that grid (:func:`~bodyage_core.preprocess.spec.prepare_model_input`), so maps
    computed on it go back to the subject's space."""
    from bodyage_core.preprocess.spec import prepare_model_input

    if getattr(spec, "mode", "3d") != "3d":
        raise ConfigError("this run is a 2.5D model: its maps live on the projection images, "
                          "not in the subject's 3D space",
                          hint="use bodyage_core.explain.guided_gradcam on the projections")
    mi = prepare_model_input(volume, spec)
    vol = mi.volume()
    vol.provenance["source"] = volume.provenance.get("path")
    return vol


def subject_grid(path: Path) -> tuple[tuple[int, int, int], np.ndarray]:
    """``(shape_zyx, affine)`` of the subject's original image file
    (:func:`bodyage_core.io.header.image_grid`)."""
    from bodyage_core.io.header import image_grid

    return image_grid(path)


# -- the pipeline -----------------------------------------------------------------------------

class _Nested(ProgressReporter):
    """Forwards only cancellation of an outer reporter (inner loops stay quiet)."""

    def __init__(self, outer: ProgressReporter):
        super().__init__(None)
        self._outer = outer

    def update(self, *args: Any, **kwargs: Any) -> None:
        self._outer.check()


def explain_subjects(workspace, run: str, subject_ids: Sequence[str] | None = None,
                     method: str = "gradcam", layer: str = "layer3", variant: str = "relu",
                     device: str = "auto", reporter: ProgressReporter | None = None,
                     overwrite: bool = False, occlusion_patch: int | Sequence[int] = 8,
                     occlusion_stride: int | Sequence[int] | None = None,
                     occlusion_baseline: str | float = "zero",
                     batch_size: int = 8, save_members: bool = False,
                     kind: str | None = None, reference: str = "zero",
                     reference_group: str | None = None) -> ExplainSummary:
    """Write one explanation map per subject of ``workspace`` for the trained ``run``.

    Parameters
    ----------
    workspace
        A :class:`~bodyage_core.cohort.Workspace` or its path.
    run
        Name of a complete run under ``models/<run>/``.
    subject_ids
        Subjects to explain (default: all).
    method
        ``'gradcam'``, ``'occlusion'`` or ``'gradxinput'`` (gradient x input at the input's
        resolution, :func:`~bodyage_core.explain.gradcam.gradient_x_input`).
    layer, variant
        Grad-CAM layer (default ``'layer3'``) and ``'relu'`` or ``'signed'``.
    device
        ``'auto'`` (CUDA when available), ``'cpu'``, ``'cuda'``.
    reporter
        Progress (stage ``'explain'``, one unit per subject); can cancel between and within
        subjects.
    overwrite
        Recompute maps that exist.
    occlusion_patch, occlusion_stride, occlusion_baseline
        Occlusion settings in model-grid voxels (see :func:`occlusion_map`).
    batch_size
        Occluded copies per forward pass.
    save_members
        Also write each member's map as ``<kind>_member<k>.nii.gz`` (same grid; listed in the
        JSON sidecar, not in the cohort index).
    kind
        Image kind (and file stem) to write instead of :func:`map_kind`'s, e.g.
        ``'gradcam_layer2_<run>'`` to keep maps of several layers side by side (the population
        maps take a ``kind`` too).
    reference, reference_group
        Gradient x input against ``"zero"`` (default) or the subject's ``"atlas"`` template
        (:func:`explain_subject`).

    Returns
    -------
    ExplainSummary
    """
    from bodyage_core.cohort import Workspace

    t0 = time.perf_counter()
    check_variant(method, variant)
    kind = kind or map_kind(method, run, variant, reference)
    ref = {"reference": reference, "reference_group": reference_group}
    if isinstance(workspace, Workspace):
        return _explain(workspace, run, subject_ids, method, layer, variant, device, reporter,
                        overwrite, occlusion_patch, occlusion_stride, occlusion_baseline,
                        batch_size, save_members, kind, t0, **ref)
    with Workspace.open(workspace) as ws:
        return _explain(ws, run, subject_ids, method, layer, variant, device, reporter,
                        overwrite, occlusion_patch, occlusion_stride, occlusion_baseline,
                        batch_size, save_members, kind, t0, **ref)


def check_reference(method: str, reference: str) -> None:
    """``zero`` for every method; gradient x input also takes ``atlas`` (the subject's atlas
    template warped onto it, :func:`~bodyage_core.atlas.workspace.template_on_subject`)."""
    if reference not in REFERENCES:
        raise ConfigError(f"unknown map reference {reference!r}; use zero or atlas")
    if reference != "zero" and method != "gradxinput":
        raise ConfigError("a reference image applies to --method gradxinput only",
                          hint="Grad-CAM and occlusion have no reference (occlusion: --baseline)")


def check_variant(method: str, variant: str) -> None:
    """``relu`` or ``signed`` for every method; gradient x input also has ``abs``."""
    if variant not in ("relu", "signed") and not (method == "gradxinput" and variant == "abs"):
        raise ConfigError(f"unknown map variant {variant!r}; use relu or signed"
                          + (" (or abs)" if method == "gradxinput" else ""))


def explain_subject(ws, run: str, age_run, models, subject, kind: str, *, method: str = "gradcam",
                    layer: str = "layer3", variant: str = "relu",
                    occlusion_patch: int | Sequence[int] = 8,
                    occlusion_stride: int | Sequence[int] | None = None,
                    occlusion_baseline: str | float = "zero", batch_size: int = 8,
                    save_members: bool = False, reporter: ProgressReporter | None = None,
                    guard=None, body_only: bool = True, reference: str = "zero",
                    reference_group: str | None = None) -> dict[str, Any]:
    """One subject's map, its members' maps (``save_members``) and the JSON sidecar, written
    atomically into ``subjects/<id>/``; the database is not touched (callers record the result,
    so a Dask worker can run this). The map is computed by
    :func:`bodyage_core.inference.subject.predict_subject`, the prediction every command uses,
    with the members that give the subject its prediction.

    ``age_run`` is the loaded run ``run`` (``models``, its members, is kept for callers that
    pass them; the run holds them). ``guard(path)`` is an optional context manager around each
    file write (the cluster engine's names the file in disk errors). ``body_only`` zeroes the
    map outside the body (:func:`~bodyage_core.inference.subject.model_grid_body`).

    ``reference="atlas"`` (gradient x input): attribute against the template of the atlas the
    subject is registered to (``reference_group`` when it is registered to several), warped
    onto the subject (:func:`~bodyage_core.explain.gradcam.gradient_x_input`).

    Returns ``{"path": relative path of the map, "member_files": [...]}``."""
    import contextlib

    from bodyage_core.inference.subject import MapRequest, predict_subject
    from bodyage_core.training.data import load_subject_volume

    guard = guard or (lambda _path: contextlib.nullcontext())
    spec = age_run.spec
    sid = subject.subject_id
    vol = load_subject_volume(ws, subject, spec.channels)
    src = ws.resolve(subject.images[spec.channels[0]])
    options = {"patch": occlusion_patch, "stride": occlusion_stride,
               "baseline": occlusion_baseline, "batch_size": batch_size,
               "members": save_members}
    check_reference(method, reference)
    ref_info = None
    if reference == "atlas":
        from bodyage_core.atlas.workspace import registered_group, template_on_subject

        # workers have no database: their stage resolves the group and passes it
        group = reference_group if getattr(ws, "db", None) is None \
            else registered_group(ws, sid, reference_group)
        if group is None:
            raise BodyageError(f"subject {sid}: no atlas registration to explain against",
                               hint=f"run `bodyage register {ws.root}` first")
        options["reference"] = template_on_subject(ws, sid, (vol.shape, vol.affine), group)
        ref_info = {"kind": "atlas", "group": group,
                    "what": f"the template of atlas {group} warped onto the subject"}
    req = MapRequest(method, variant if method != "occlusion" else "signed", layer, options)
    pred = predict_subject(age_run, vol, subject_id=sid, age=subject.age, maps=[req],
                           target_grid=subject_grid(src), body_only=body_only,
                           reporter=reporter)
    info = pred.map_info[req.key]
    ws.subject_dir(sid, create=True)
    target = ws.map_file(sid, kind)
    with guard(target):
        save_map(pred.maps[req.key], target, description=f"bodyage {kind}")
    member_files = []
    for k, mp_vol in zip(pred.members_used, info["member_maps"]):
        mp = target.with_name(f"{kind}_member{k}.nii.gz")
        with guard(mp):
            save_map(mp_vol, mp, description=f"bodyage {kind} member {k}")
        member_files.append(ws.relative(mp))
    sidecar = target.with_name(f"{kind}.json")
    with guard(sidecar):
        write_json(sidecar, {
            "kind": kind, "run": run, "method": method,
            "layer": layer if method == "gradcam" else None,
            "variant": variant if method != "occlusion" else "signed",
            "members": pred.members_used, "member_files": member_files, "fold": pred.fold,
            "member_mu_years": pred.member_mu,
            "units": info["units"],
            "sign": ("relu: evidence that raises the predicted age" if
                     method != "occlusion" and variant == "relu" else
                     "abs: magnitude (either direction)" if variant == "abs" else
                     "positive = evidence for older, negative = for younger"
                     + (" than the atlas template" if ref_info else "")),
            "occlusion": info["occlusion"],
            "reference": ref_info or {"kind": "zero"},
            "subject_image": ws.relative(src), "model_grid_affine": pred.model_grid_affine,
            "model_grid_shape_zyx": list(spec.shape_zyx), "body_only": bool(body_only),
            "qc": pred.qc,
        })
    return {"path": ws.relative(target), "member_files": member_files}


def model_grid_body(x: np.ndarray, dilate: int = 1) -> np.ndarray:
    """The body mask maps are kept inside (:func:`bodyage_core.inference.subject.model_grid_body`)."""
    from bodyage_core.inference.subject import model_grid_body as body

    return body(x, dilate)


def _explain(ws, run, subject_ids, method, layer, variant, device, reporter, overwrite,
             occlusion_patch, occlusion_stride, occlusion_baseline, batch_size, save_members,
             kind, t0, reference: str = "zero",
             reference_group: str | None = None) -> ExplainSummary:
    from bodyage_core.inference.ensemble import AgeRun

    age_run = AgeRun(run_source(ws, run), device=device)
    spec = age_run.spec
    if spec.mode != "3d":
        model_grid_input(Volume(np.zeros((1, 1, 1, 1)), np.eye(4)), spec)  # raises the 2.5D error
    models = age_run.load_members()
    if method == "gradcam":
        from bodyage_core.explain.gradcam import resolve_layer

        resolve_layer(models[0], layer)  # an unknown layer fails before any subject
    subjects = ws.db.subjects(list(subject_ids)) if subject_ids else ws.db.subjects()
    if not subjects:
        raise BodyageError("the workspace has no subjects to explain", path=ws.root,
                           hint="import or synthesise a cohort first")
    predicted = {p["subject_id"] for p in ws.db.predictions(run)}
    rep = ensure_reporter(reporter)
    summary = ExplainSummary(run=run, method=method, kind=kind)
    rep.update("explain", 0, len(subjects), kind)
    for i, subj in enumerate(subjects):
        sid = subj.subject_id
        target = ws.map_file(sid, kind)
        if sid not in predicted:
            summary.no_prediction.append(sid)
        if target.exists() and not overwrite:
            summary.skipped.append(sid)
            if kind not in subj.images:
                ws.db.set_image(sid, kind, ws.relative(target))
            rep.update("explain", i + 1, len(subjects), sid)
            continue
        ws.db.set_task("explain", kind, sid, "running")
        try:
            out = explain_subject(ws, run, age_run, models, subj, kind, method=method, layer=layer,
                                  variant=variant, occlusion_patch=occlusion_patch,
                                  occlusion_stride=occlusion_stride,
                                  occlusion_baseline=occlusion_baseline,
                                  batch_size=batch_size, save_members=save_members,
                                  reporter=_Nested(rep), reference=reference,
                                  reference_group=reference_group)
            ws.db.set_image(sid, kind, out["path"])
            ws.db.set_task("explain", kind, sid, "done")
            summary.written.append(sid)
            summary.paths[sid] = out["path"]
        except BodyageError as err:
            ws.db.set_task("explain", kind, sid, "failed", str(err))
            summary.failed[sid] = str(err)
        except BaseException:
            ws.db.set_task("explain", kind, sid, "failed", "interrupted")
            raise
        rep.update("explain", i + 1, len(subjects), sid)
    summary.seconds = time.perf_counter() - t0
    return summary


def sanity_report(workspace, run: str, subject_id: str | None = None, layer: str = "layer3",
                  variant: str = "relu", mode: str = "cascading", threshold: float = 0.5,
                  device: str = "auto") -> dict[str, Any]:
    """Run the model-randomisation check (Adebayo et al. 2018) on one subject with the run's
    first member and write ``reports/explain_sanity_<run>.json``; returns the report dict (its
    ``flagged`` is True when a randomised model's Grad-CAM is too similar to the trained one's).
    """
    from bodyage_core.cohort import Workspace
    from bodyage_core.explain.sanity import randomisation_check
    from bodyage_core.inference.ensemble import AgeRun
    from bodyage_core.training.data import load_subject_volume

    own = not isinstance(workspace, Workspace)
    ws = Workspace.open(workspace) if own else workspace
    try:
        age_run = AgeRun(run_source(ws, run), device=device)
        subjects = ws.db.subjects([subject_id]) if subject_id else ws.db.subjects()
        if not subjects:
            raise BodyageError("the workspace has no subjects", path=ws.root)
        subj = subjects[0]
        mg = model_grid_input(load_subject_volume(ws, subj, age_run.spec.channels),
                              age_run.spec)
        model = age_run.load_members()[0]
        report = randomisation_check(model, mg.data[None], layer=layer, mode=mode,
                                     threshold=threshold, variant=variant)
        report.update({"run": run, "subject_id": subj.subject_id, "member": 0})
        write_json(ws.reports_dir / f"explain_sanity_{run}.json", report)
        return report
    finally:
        if own:
            ws.close()
