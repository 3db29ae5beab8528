"""The per-subject batch stages as independent, idempotent tasks.

A :class:`Stage` splits a workspace stage into :class:`Job` s, one per subject (and atlas group
where it matters). The engine (:mod:`bodyage_core.cluster.engine`) runs each job's task on a
worker; the task reads the subject's files and writes its own result files atomically into the
workspace (never the database), and returns a small dict. The client process, the single writer
of ``cohort.sqlite``, records that dict and the job's ``tasks`` row in one transaction.

Stages (``tasks.stage`` / ``tasks.key``):

========  ====================  ===========================================================
stage     key                   task writes (under ``subjects/<id>/``)
========  ====================  ===========================================================
predict   run                   ``prediction_<run>.json`` (+ the model-grid input cache)
explain   map kind              ``<kind>.nii.gz`` + ``<kind>.json`` (``gradcam_<run>`` ...)
register  atlas group           ``atlas_<group>/`` transform files + ``quality.json``
warp      ``<group>/<kind>``    ``atlas_<group>/<kind>.nii.gz`` (a map in atlas space)
========  ====================  ===========================================================

A job is skipped when it is finished (its ``tasks`` row is ``done`` and its output is there, or,
for explain and register, when a current output exists however it was made); ``overwrite`` /
``force`` redo it.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from bodyage_core.atomic import write_json, write_text
from bodyage_core.errors import BodyageError, ConfigError
from bodyage_core.inference.bundle import run_source
from bodyage_core.names import check_name

# -- jobs and tasks -------------------------------------------------------------------------


@dataclass
class Job:
    """One unit of work: ``tasks`` row (stage, key, subject_id) and what its task needs."""

    key: str
    subject_id: str
    payload: dict[str, Any] = field(default_factory=dict)


@dataclass
class SubjectTask:
    """A picklable call ``fn(**kwargs)`` run on a worker.

    It limits the worker's compute threads (``threads``, when the engine asks), times the call
    and names the file when a write fails (an ``OSError`` without a file name gets the subject
    folder). Returns ``{"out": fn's dict, "seconds": wall, "cpu_seconds": CPU time of the
    worker process during the call (exact with one task per process), "worker": "host:pid"}``.
    """

    fn: Callable[..., dict[str, Any]]
    kwargs: dict[str, Any]
    threads: int | None = None
    folder: str | None = None

    def __call__(self) -> dict[str, Any]:
        if self.threads:
            limit_threads(self.threads)
        t0 = time.perf_counter()
        c0 = time.process_time()
        try:
            out = self.fn(**self.kwargs)
        except OSError as err:
            if err.filename is None and self.folder is not None:
                raise OSError(err.errno, err.strerror or str(err), self.folder) from err
            raise
        finally:
            if self.threads:
                limit_threads(self.threads)   # libraries the task imported
        return {"out": out, "seconds": time.perf_counter() - t0,
                "cpu_seconds": time.process_time() - c0,
                "worker": f"{socket.gethostname()}:{os.getpid()}"}


_THREADS_SET: dict[str, int] = {}
_LOCK = threading.Lock()


def limit_threads(n: int) -> None:
    """Cap the compute threads of this worker process at ``n``: environment variables for
    libraries not imported yet (OpenMP/BLAS, ITK), the setting of torch and SimpleITK when they
    are imported (each once). Never imports them itself (a cheap task stays cheap)."""
    import sys

    with _LOCK:
        if _THREADS_SET.get("env") != n:
            for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS",
                        "ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS"):
                os.environ.setdefault(var, str(n))
            _THREADS_SET["env"] = n
        torch = sys.modules.get("torch")
        if torch is not None and _THREADS_SET.get("torch") != n:
            try:
                torch.set_num_threads(n)
            except Exception:  # noqa: BLE001 - already running parallel work
                pass
            _THREADS_SET["torch"] = n
        sitk = sys.modules.get("SimpleITK")
        if sitk is not None and _THREADS_SET.get("sitk") != n:
            try:
                sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(n)
            except Exception:  # noqa: BLE001
                pass
            _THREADS_SET["sitk"] = n


def clear_stale_temporaries(path: Path) -> int:
    """Remove temporary files an earlier, killed attempt left beside ``path``
    (``.<stem>.XXXX<suffix>`` of :func:`bodyage_core.atomic.atomic_path`). Safe because one run
    holds the workspace and one task writes a subject's file at a time. Returns the count."""
    n = 0
    try:
        # a folder of transform files: every hidden file inside is a temporary
        stale = list(path.glob(".*")) if path.is_dir() else []
        stale += list(path.parent.glob(f".{path.stem}.*"))
        for p in stale:
            if p.is_file():
                p.unlink(missing_ok=True)
                n += 1
    except OSError:
        pass
    return n


@contextlib.contextmanager
def writing(path: Path) -> Iterator[None]:
    """Name ``path`` in any OSError raised while writing it (ENOSPC, EACCES, EROFS...);
    first clear the temporaries a killed attempt may have left beside it."""
    clear_stale_temporaries(Path(path))
    try:
        yield
    except OSError as err:
        if err.filename and str(err.filename) != str(path) and \
                Path(str(err.filename)).name.startswith("."):
            # the temporary file of an atomic write: report the target instead
            raise OSError(err.errno, err.strerror, str(path)) from err
        if err.filename is None:
            raise OSError(err.errno, err.strerror or str(err), str(path)) from err
        raise


def describe_error(exc: BaseException) -> str:
    """One line for the ``tasks.error`` column and the summary."""
    if isinstance(exc, BodyageError):
        return str(exc)
    name = type(exc).__name__
    if name == "KilledWorker":
        return ("the worker running this subject died (crash, out of memory or killed) — see "
                "the worker logs; the subject is retried on the next run")
    if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
        where = f" writing {exc.filename}" if exc.filename else ""
        return (f"disk full (no space left on device){where} — free space on that disk and "
                "run the stage again (finished subjects are kept)")
    if isinstance(exc, OSError) and exc.errno is not None:
        where = f": {exc.filename}" if exc.filename else ""
        return f"{exc.strerror or name}{where}"
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{name}: {text}" if text else name


def _Paths(root: str | Path):
    """The path half of a :class:`~bodyage_core.cohort.Workspace` for workers: no database
    (the client records results)."""
    from bodyage_core.cohort.paths import WorkspacePaths

    return WorkspacePaths(Path(root))


# per-worker caches of loaded runs and atlases (a worker runs many subjects)
_RUNS: dict[tuple, Any] = {}
_ATLASES: dict[tuple, Any] = {}


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return 0.0


def cached_run(run_dir: str | Path, device: str = "auto"):
    """The :class:`~bodyage_core.models.ensemble.AgeRun` of ``run_dir`` with its members
    loaded, once per worker thread (Grad-CAM hooks the networks, so threads never share one;
    reloaded when the run's config.json changes). ``auto`` and the device it stands for share
    one: a stage validating the run on the CPU in the client hands its networks to the tasks
    that run in the same thread on a machine without a GPU."""
    from bodyage_core.inference.device import resolve_device
    from bodyage_core.inference.ensemble import AgeRun

    run_dir = Path(run_dir)
    key = (str(run_dir), str(resolve_device(device)), _mtime(run_dir / "config.json"),
           threading.get_ident())
    with _LOCK:
        ar = _RUNS.get(key)
    if ar is None:
        ar = AgeRun(run_dir, device=device)
        ar.load_members()
        with _LOCK:
            if len(_RUNS) > 16:
                _RUNS.clear()
            _RUNS[key] = ar
    return ar


def cached_atlas(atlas_dir: str | Path):
    from bodyage_core.atlas.build import load_atlas

    atlas_dir = Path(atlas_dir)
    key = (str(atlas_dir), _mtime(atlas_dir / "members.json"),
           _mtime(atlas_dir / "template.nii.gz"))
    with _LOCK:
        if key not in _ATLASES:
            if len(_ATLASES) > 8:
                _ATLASES.clear()
            _ATLASES[key] = load_atlas(atlas_dir)
        return _ATLASES[key]


# -- the stage interface ----------------------------------------------------------------------


class Stage:
    """A per-subject batch stage. Subclasses set ``name`` and implement the hooks.

    Client side: :meth:`jobs` (validate, enumerate), :meth:`is_done` (skip?), :meth:`record`
    (store a task's result in the DB; called inside the transaction that marks the job done),
    :meth:`finish` (after all jobs, e.g. a CSV). Worker side: the :class:`SubjectTask` from
    :meth:`task`.
    """

    name = "stage"
    #: BodyageErrors are the input's fault: retrying cannot help, record the failure at once.
    retry_user_errors = False

    def jobs(self, ws) -> list[Job]:
        raise NotImplementedError

    def is_done(self, ws, job: Job, row: dict[str, Any] | None) -> bool:
        return row is not None and row.get("status") == "done"

    def task(self, ws, job: Job) -> SubjectTask:
        raise NotImplementedError

    def record(self, ws, job: Job, out: dict[str, Any]) -> None:
        """Store a finished task's result (client side, inside a DB transaction)."""

    def record_skipped(self, ws, job: Job) -> None:
        """Bring the DB in line with an output found on disk (client side)."""

    def finish(self, ws, summary) -> None:
        """Called once after every job ran (not on cancellation)."""

    def describe(self) -> str:
        return self.name


# -- predict ---------------------------------------------------------------------------------


def predict_one(root: str, run: str, device: str, subject,
                model_dir: str | None = None) -> dict[str, Any]:
    """Worker: predict one subject with run ``run``
    (:func:`bodyage_core.inference.subject.predict_subject` on the subject's cached model-grid
    input); writes ``subjects/<id>/prediction_<run>.json`` and returns the predictions row."""
    from bodyage_core.inference.subject import predict_subject
    from bodyage_core.training.data import cached_input

    ws = _Paths(root)
    ar = cached_run(model_dir or run_source(ws, run), device)
    arr = cached_input(ws, subject, ar.spec)
    pred = predict_subject(ar, subject_id=subject.subject_id, age=subject.age,
                           model_input=arr)
    row = pred.row()
    row.update(sex=subject.sex, bmi_group=subject.bmi_group, site=subject.site)
    ws.subject_dir(subject.subject_id, create=True)
    target = ws.prediction_file(subject.subject_id, run)
    with writing(target):
        write_json(target, dict(row, run=run))
    return {"row": row}


class PredictStage(Stage):
    """``bodyage predict`` per subject: ensemble mean, sigma, bias-corrected age and gap
    (out-of-fold for subjects the run held out), into the ``predictions`` table, the subject's
    ``prediction_<run>.json`` and ``reports/predictions_<run>.csv``."""

    name = "predict"

    def __init__(self, run: str, subject_ids: Sequence[str] | None = None,
                 device: str = "auto", overwrite: bool = False,
                 csv_path: str | Path | None = None, model_dir: str | Path | None = None):
        self.run = check_name(run, "run name")
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


# -- register --------------------------------------------------------------------------------


def register_one(root: str, group: str, subject, atlas_info: dict[str, Any],
                 registration: dict[str, Any] | None, force: bool) -> dict[str, Any]:
    """Worker: register one subject to the template of ``group`` (affine + deformable), or
    reuse its current transform; writes ``subjects/<id>/atlas_<group>/``."""
    from bodyage_core.atlas.workspace import register_or_reuse, transform_folder
    from bodyage_core.registration.register import RegistrationConfig

    ws = _Paths(root)
    rcfg = RegistrationConfig.from_dict(registration) if registration is not None else None
    q = register_or_reuse(ws, group, subject, atlas_info, rcfg, force,
                          atlas=lambda g: cached_atlas(ws.atlas_dir(g)), guard=writing)
    q["group"] = group
    q["has_transform"] = (transform_folder(ws, subject.subject_id, group)
                          / "transform.json").exists()
    return {"quality": _jsonable(q)}


def _jsonable(obj):
    return json.loads(json.dumps(obj, default=lambda o: o.tolist() if hasattr(o, "tolist")
                                 else str(o)))


class RegisterStage(Stage):
    """``bodyage register`` per subject: to the template of its built group atlas."""

    name = "register"

    def __init__(self, group: str | None = None, subject: str | None = None,
                 registration=None, force: bool = False):
        self.group = None if group is None else check_name(group, "atlas group")
        self.subject = None if subject is None else check_name(subject, "subject id")
        self.registration = registration.to_dict() if registration is not None else None
        self.force = force
        self._infos: dict[str, dict[str, Any]] = {}
        self._registered: dict[tuple[str, str], dict[str, Any]] = {}
        self.results: list[dict[str, Any]] = []

    def describe(self) -> str:
        return "register" + (f" {self.group}" if self.group else "")

    def jobs(self, ws) -> list[Job]:
        from bodyage_core.atlas.workspace import registration_jobs

        jobs = []
        for g, s, info in registration_jobs(ws, self.group, self.subject):
            # what the task needs of members.json (it travels with every job)
            self._infos[g] = {k: info.get(k) for k in ("fingerprint", "config", "by")}
            jobs.append(Job(g, s.subject_id, {"subject": s}))
        self._registered = {(r["atlas_group"], r["subject_id"]): r
                            for r in ws.db.registrations()}
        return jobs

    def is_done(self, ws, job, row) -> bool:
        from bodyage_core.atlas.workspace import transform_current, transform_folder

        if self.force or (job.key, job.subject_id) not in self._registered:
            return False
        if row is not None and row.get("status") != "done":
            return False
        return transform_current(transform_folder(ws, job.subject_id, job.key),
                                  self._infos[job.key].get("fingerprint"))

    def task(self, ws, job) -> SubjectTask:
        return SubjectTask(register_one, {
            "root": str(ws.root), "group": job.key, "subject": job.payload["subject"],
            "atlas_info": self._infos[job.key], "registration": self.registration,
            "force": self.force}, folder=str(ws.subject_dir(job.subject_id)))

    def record(self, ws, job, out) -> None:
        from bodyage_core.atlas.workspace import _record, transform_folder

        q = out["quality"]
        # the worker saw the transform folder; record what it saw
        _record(ws, job.subject_id, job.key, q, transform_folder(ws, job.subject_id, job.key),
                has_transform=bool(q.get("has_transform")))
        self.results.append(q)


# -- warp maps into atlas space (the per-subject part of `atlas maps`) ------------------------


def warp_one(root: str, group: str, subject_id: str, kind: str, src: str,
             interpolation: str) -> dict[str, Any]:
    """Worker: warp one subject map into the atlas of ``group``; cached as
    ``subjects/<id>/atlas_<group>/<kind>.nii.gz`` (what ``atlas maps`` reads)."""
    from bodyage_core.atlas.build import load_image, load_label_map, save_image
    from bodyage_core.atlas.workspace import transform_folder, warped_map_current
    from bodyage_core.registration.transform import (
        LABEL_INTERPOLATIONS,
        SubjectTransform,
        warp_map,
    )

    ws = _Paths(root)
    folder = transform_folder(ws, subject_id, group)
    cache = folder / f"{kind}.nii.gz"
    srcp = ws.resolve(src)
    if warped_map_current(cache, srcp, folder, interpolation):
        return {"path": ws.relative(cache), "reused": True}
    tx = SubjectTransform.load(folder)
    m = load_label_map(srcp) if interpolation in LABEL_INTERPOLATIONS else load_image(srcp)
    vol = warp_map(m.with_data(m.data[:1], channels=(m.channels[0],)), tx, None, interpolation)
    with writing(cache):
        save_image(vol, cache)
    return {"path": ws.relative(cache), "reused": False}


class WarpStage(Stage):
    """Warp every registered subject's map of ``kinds`` into its atlas (cached), so that
    ``atlas maps`` only averages. Kinds default to ``gradcam_<run>`` and, when subjects have
    one, ``age_mask`` (``LABEL_INTERPOLATION``)."""

    name = "warp"

    def __init__(self, run: str, groups: Sequence[str] | None = None,
                 kinds: Sequence[str] | None = None):
        self.run = check_name(run, "run name")
        self.groups = [check_name(g, "atlas group") for g in groups] if groups else None
        self.kinds = [check_name(k, "map kind") for k in kinds] if kinds else None

    def describe(self) -> str:
        return f"warp {(self.kinds or [f'gradcam_{self.run}'])[0]}"

    def jobs(self, ws) -> list[Job]:
        from bodyage_core.atlas.workspace import _registered_ok, _run_predictions, built_atlases
        from bodyage_core.errors import CohortError
        from bodyage_core.registration.transform import LABEL_INTERPOLATION

        _run_predictions(ws, self.run)   # raises when the run has none
        atlases = self.groups or built_atlases(ws)
        if not atlases:
            raise CohortError("no atlas built yet", ws.root, "run `bodyage atlas build` first")
        kinds = self.kinds or [f"gradcam_{self.run}", "age_mask"]
        jobs = []
        for g in atlases:
            ok = _registered_ok(ws, g)
            if not ok:
                continue
            for s in ws.db.subjects(ids=ok):
                for kind in kinds:
                    if kind in s.images:
                        interp = (LABEL_INTERPOLATION if kind in ("age_mask", "labels")
                                  else "linear")
                        jobs.append(Job(f"{g}/{kind}", s.subject_id,
                                        {"group": g, "kind": kind, "src": s.images[kind],
                                         "interpolation": interp}))
        return jobs

    def is_done(self, ws, job, row) -> bool:
        from bodyage_core.atlas.workspace import transform_folder, warped_map_current

        p = job.payload
        folder = transform_folder(ws, job.subject_id, p["group"])
        return warped_map_current(folder / f"{p['kind']}.nii.gz", ws.resolve(p["src"]), folder,
                                  p["interpolation"])

    def task(self, ws, job) -> SubjectTask:
        p = job.payload
        return SubjectTask(warp_one, {"root": str(ws.root), "group": p["group"],
                                      "subject_id": job.subject_id, "kind": p["kind"],
                                      "src": p["src"], "interpolation": p["interpolation"]},
                           folder=str(ws.subject_dir(job.subject_id)))
