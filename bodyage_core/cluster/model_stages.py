"""The model stages: ``predict`` (ensemble age, sigma, gap per subject) and ``explain`` (a
saliency map per subject), as :class:`~bodyage_core.cluster.tasks.Stage` s (see that module for
the job and task protocol)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from bodyage_core.atomic import write_json, write_text
from bodyage_core.cluster.tasks import Job, Stage, SubjectTask, _Paths, cached_run, writing
from bodyage_core.errors import BodyageError, ConfigError
from bodyage_core.inference.bundle import run_source
from bodyage_core.names import check_name

# -- predict ---------------------------------------------------------------------------------


def predict_one(root: str, run: str, device: str, subject,
                model_dir: str | None = None) -> dict[str, Any]:
    """Worker: predict one subject with run ``run`` (:func:`predict_group` of one subject);
    writes ``subjects/<id>/prediction_<run>.json`` and returns the predictions row."""
    (_s, out), = _predict(root, run, device, [subject], model_dir, 1)
    if isinstance(out, BaseException):
        raise out
    return out


def predict_group(root: str, run: str, device: str, subjects: Sequence[Any],
                  model_dir: str | None = None, batch_size: int | None = None
                  ) -> dict[str, Any]:
    """Worker: predict several subjects with run ``run`` through
    :func:`bodyage_core.inference.subject.predict_subjects` (their cached model-grid inputs
    read in the background, ``batch_size`` of them at a time on the device, all members on each
    batch); each subject's ``prediction_<run>.json`` is written as :func:`predict_one` writes
    it. Returns ``{"results": [...]}`` in the form :meth:`Stage.group_task` describes."""
    from bodyage_core.cluster.tasks import describe_error

    results = []
    for _s, out in _predict(root, run, device, subjects, model_dir, batch_size):
        if isinstance(out, BaseException):
            results.append({"error": describe_error(out),
                            "user_error": isinstance(out, BodyageError)})
        else:
            results.append({"out": out})
    return {"results": results}


def _predict(root: str, run: str, device: str, subjects: Sequence[Any],
             model_dir: str | None, batch_size: int | None) -> list[tuple[Any, Any]]:
    """``(subject, {"row": ...} or the exception)`` per subject."""
    from bodyage_core.inference.subject import CohortInput, predict_subjects
    from bodyage_core.training.data import cached_input

    ws = _Paths(root)
    ar = cached_run(model_dir or run_source(ws, run), device)
    inputs = [CohortInput(s.subject_id, (lambda s=s: cached_input(ws, s, ar.spec)), s.age,
                          load_into=(lambda row, s=s: cached_input(ws, s, ar.spec, out=row)))
              for s in subjects]
    b = batch_size or len(inputs)
    preds = predict_subjects(ar, inputs, batch_size=b, prefetch_depth=2 if len(inputs) > b else 0)
    out: list[tuple[Any, Any]] = []
    for s, pred in zip(subjects, preds):
        if isinstance(pred, BaseException):
            out.append((s, pred))
            continue
        try:
            row = pred.row()
            row.update(sex=s.sex, bmi_group=s.bmi_group, site=s.site)
            ws.subject_dir(s.subject_id, create=True)
            target = ws.prediction_file(s.subject_id, run)
            with writing(target):
                write_json(target, dict(row, run=run))
            out.append((s, {"row": row}))
        except Exception as exc:  # noqa: BLE001 - that subject's failure
            out.append((s, exc))
    return out


#: Subjects per batch on a CUDA device when ``--batch-size`` is not given (on a CPU one subject
#: per task: the workers share the cores instead).
GPU_BATCH = 16
#: Batches per predict task: the next batch's inputs are read while one runs on the device
TASK_BATCHES = 4


class PredictStage(Stage):
    """``bodyage predict`` per subject: ensemble mean, sigma, bias-corrected age and gap
    (out-of-fold for subjects the run held out), into the ``predictions`` table, the subject's
    ``prediction_<run>.json`` and ``reports/predictions_<run>.csv``."""

    name = "predict"

    def __init__(self, run: str, subject_ids: Sequence[str] | None = None,
                 device: str = "auto", overwrite: bool = False,
                 csv_path: str | Path | None = None, model_dir: str | Path | None = None,
                 batch_size: int | None = None):
        self.run = check_name(run, "run name")
        #: subjects per task and per batch on the device (None: :data:`GPU_BATCH` with CUDA,
        #: else 1)
        if batch_size is not None and int(batch_size) < 1:
            raise ConfigError(f"--batch-size must be at least 1, got {batch_size}")
        self.batch_size = None if batch_size is None else int(batch_size)
        #: a model bundle to predict with instead of the workspace's run ``run`` (its name)
        self.model_dir = None if model_dir is None else str(model_dir)
        self.subject_ids = list(subject_ids) if subject_ids else None
        self.device = device
        self.overwrite = overwrite
        self.csv_path = csv_path
        self.csv_written: Path | None = None
        self._predicted: set[str] = set()

    def describe(self) -> str:
        return f"predict {self.run}"

    def jobs(self, ws) -> list[Job]:
        from bodyage_core.errors import CohortError

        # a damaged run fails here, once, not on every subject; loaded through the tasks'
        # cache, so that tasks run in this thread (in-process) need not load it again
        ar = cached_run(self.model_dir or run_source(ws, self.run), "cpu")
        subjects = ws.db.subjects(self.subject_ids) if self.subject_ids else ws.db.subjects()
        if not subjects:
            raise CohortError("no subjects to predict", ws.root, "import subjects first")
        if not any(x["run_id"] == self.run for x in ws.db.runs()):
            ws.db.add_run(self.run, ar.model_config.get("arch"),
                          {"model": ar.model_config, "input": ar.spec.to_dict()},
                          status="complete")
        self._predicted = {p["subject_id"] for p in ws.db.predictions(self.run)}
        return [Job(self.run, s.subject_id, {"subject": s}) for s in subjects]

    def is_done(self, ws, job, row) -> bool:
        return (not self.overwrite and super().is_done(ws, job, row)
                and job.subject_id in self._predicted)

    def task(self, ws, job) -> SubjectTask:
        return SubjectTask(predict_one, {"root": str(ws.root), "run": self.run,
                                         "device": self.device,
                                         "subject": job.payload["subject"],
                                         "model_dir": self.model_dir},
                           folder=str(ws.subject_dir(job.subject_id)))

    def device_batch(self) -> int:
        """Subjects per batch on the device: ``batch_size``, else :data:`GPU_BATCH` with a
        CUDA device (``auto`` looks at this machine), else 1."""
        if self.batch_size is not None:
            return self.batch_size
        dev = str(self.device or "auto")
        if dev.startswith("cuda"):
            return GPU_BATCH
        if dev == "auto":
            import torch

            return GPU_BATCH if torch.cuda.is_available() else 1
        return 1

    def group_size(self) -> int:
        b = self.device_batch()
        return 1 if b == 1 else b * TASK_BATCHES

    def group_task(self, ws, jobs) -> SubjectTask:
        return SubjectTask(predict_group, {"root": str(ws.root), "run": self.run,
                                           "device": self.device,
                                           "subjects": [j.payload["subject"] for j in jobs],
                                           "model_dir": self.model_dir,
                                           "batch_size": self.device_batch()})

    def record(self, ws, job, out) -> None:
        ws.db.add_predictions(self.run, [out["row"]])

    def finish(self, ws, summary) -> None:
        from bodyage_core.training.run import predictions_csv

        wanted = set(self.subject_ids) if self.subject_ids else None
        rows = [r for r in ws.db.predictions(self.run)
                if wanted is None or r["subject_id"] in wanted]
        out = Path(self.csv_path) if self.csv_path else \
            ws.predictions_csv(self.run)
        with writing(out):
            # a --csv the user named may lie anywhere; the default one stays in the workspace
            write_text(out, predictions_csv(rows), within=None if self.csv_path else ws.root)
        self.csv_written = out
        summary.rows = rows


# -- explain ---------------------------------------------------------------------------------


def explain_one(root: str, run: str, subject, kind: str, method: str, layer: str,
                variant: str, device: str, occlusion_patch, occlusion_stride,
                occlusion_baseline, batch_size: int, save_members: bool,
                reference: str = "zero", reference_group: str | None = None,
                reference_error: str | None = None) -> dict[str, Any]:
    """Worker: one subject's explanation map in its own space
    (:func:`bodyage_core.explain.pipeline.explain_subject`, the run's networks loaded once per
    worker). ``reference_error``: why the stage found no atlas for the subject's reference."""
    from bodyage_core.explain.pipeline import explain_subject

    if reference_error:
        raise BodyageError(reference_error)

    age_run = cached_run(run_source(_Paths(root), run), device)
    return explain_subject(_Paths(root), run, age_run, age_run.load_members(), subject, kind,
                           method=method, layer=layer, variant=variant,
                           occlusion_patch=occlusion_patch, occlusion_stride=occlusion_stride,
                           occlusion_baseline=occlusion_baseline, batch_size=batch_size,
                           save_members=save_members, guard=writing, reference=reference,
                           reference_group=reference_group)


class ExplainStage(Stage):
    """``bodyage explain`` per subject (Grad-CAM or occlusion, in subject space)."""

    name = "explain"

    def __init__(self, run: str, subject_ids: Sequence[str] | None = None,
                 method: str = "gradcam", layer: str = "layer3", variant: str = "relu",
                 device: str = "auto", overwrite: bool = False, occlusion_patch=8,
                 occlusion_stride=None, occlusion_baseline="zero", batch_size: int = 8,
                 save_members: bool = False, kind: str | None = None,
                 reference: str = "zero", reference_group: str | None = None):
        from bodyage_core.explain.pipeline import METHODS, check_reference, check_variant, map_kind

        if method not in METHODS:
            raise ConfigError(f"unknown explanation method {method!r}; use "
                              f"{' or '.join(METHODS)}")
        check_variant(method, variant)
        check_reference(method, reference)
        self.reference = reference
        self.reference_group = (None if reference_group is None
                                else check_name(reference_group, "atlas group"))
        self.run = check_name(run, "run name")
        self.subject_ids = list(subject_ids) if subject_ids else None
        self.method, self.layer, self.variant, self.device = method, layer, variant, device
        self.overwrite = overwrite
        self.occlusion = (occlusion_patch, occlusion_stride, occlusion_baseline)
        self.batch_size = batch_size
        self.save_members = save_members
        self.kind = check_name(kind or map_kind(method, run, variant, reference), "map kind")
        self.no_prediction: list[str] = []

    def describe(self) -> str:
        return f"explain {self.kind}"

    def jobs(self, ws) -> list[Job]:
        from bodyage_core.explain.pipeline import model_grid_input
        from bodyage_core.inference.ensemble import AgeRun
        from bodyage_core.volume import Volume

        age_run = AgeRun(run_source(ws, self.run), device="cpu")
        if age_run.spec.mode != "3d":
            model_grid_input(Volume(np.zeros((1, 1, 1, 1)), np.eye(4)), age_run.spec)
        if self.method == "gradcam":
            from bodyage_core.explain.gradcam import resolve_layer

            # an unknown layer fails here, once, not on every subject (through the tasks'
            # cache, as for predict)
            resolve_layer(cached_run(run_source(ws, self.run), "cpu").load_members()[0],
                          self.layer)
        subjects = ws.db.subjects(self.subject_ids) if self.subject_ids else ws.db.subjects()
        if not subjects:
            raise BodyageError("the workspace has no subjects to explain", path=ws.root,
                               hint="import or synthesise a cohort first")
        predicted = {p["subject_id"] for p in ws.db.predictions(self.run)}
        self.no_prediction = [s.subject_id for s in subjects if s.subject_id not in predicted]
        return [Job(self.kind, s.subject_id, {"subject": s, **self._group(ws, s)})
                for s in subjects]

    def _group(self, ws, subject) -> dict[str, str | None]:
        """The atlas of an atlas-referenced map (workers have no database to look it up); a
        subject without one fails in its task, with the reason the lookup gave."""
        if self.reference != "atlas":
            return {}
        from bodyage_core.atlas.workspace import registered_group

        try:
            return {"group": registered_group(ws, subject.subject_id, self.reference_group)}
        except BodyageError as err:
            return {"group_error": str(err)}

    def _target(self, ws, sid: str) -> Path:
        return ws.map_file(sid, self.kind)

    def is_done(self, ws, job, row) -> bool:
        # the map on disk is what counts (as for explain_subjects' resume)
        return not self.overwrite and self._target(ws, job.subject_id).exists()

    def record_skipped(self, ws, job) -> None:
        if self.kind not in job.payload["subject"].images:
            ws.db.set_image(job.subject_id, self.kind,
                            ws.relative(self._target(ws, job.subject_id)))

    def task(self, ws, job) -> SubjectTask:
        patch, stride, baseline = self.occlusion
        return SubjectTask(explain_one, {
            "root": str(ws.root), "run": self.run, "subject": job.payload["subject"],
            "kind": self.kind, "method": self.method, "layer": self.layer,
            "variant": self.variant, "device": self.device, "occlusion_patch": patch,
            "occlusion_stride": stride, "occlusion_baseline": baseline,
            "batch_size": self.batch_size, "save_members": self.save_members,
            "reference": self.reference, "reference_group": job.payload.get("group"),
            "reference_error": job.payload.get("group_error")},
            folder=str(ws.subject_dir(job.subject_id)))

    def record(self, ws, job, out) -> None:
        ws.db.set_image(job.subject_id, self.kind, out["path"])

