"""Ensemble inference and Grad-CAM for one subject, run in the background.

:func:`predict_subject` is the work itself. It is Qt-free (numpy / torch / files only), takes a
:class:`~bodyage_core.progress.ProgressReporter` (every report is also a cancellation point) and
returns a :class:`PredictionResult` holding plain numbers and in-memory maps; the prediction
panel runs it in a :class:`~bodyage_gui.workers.qt_worker.QtWorker` so that model loading and
compute happen off the main thread and only the result crosses to it.

What it computes is the core's one prediction
(:func:`bodyage_core.inference.subject.predict_subject`, as ``bodyage predict`` and ``bodyage
explain``): a subject the run held out in a cross-validation fold gets its out-of-fold prediction
(that fold's members, calibration and bias correction) and the Grad-CAM of the same members; any
other subject (or a plain file opened without a workspace) gets all members and the global fits.
Maps are resampled to the grid of the subject image (the viewer's base layer) and keep raw
values: (d age / d activation) x activation, in years.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bodyage_core.errors import BodyageError
from bodyage_core.progress import ProgressReporter, ensure_reporter
from bodyage_core.volume import Volume

#: Grad-CAM layer of the 3D ResNet used by default (Starck et al.).
DEFAULT_LAYER = "layer3"


@dataclass
class PredictionRequest:
    """What to predict.

    Attributes
    ----------
    run_dir
        The run folder (``workspace/models/<run>/``).
    subject_id
        Id of the subject (shown in the panel; used for the out-of-fold lookup with a workspace).
    workspace, subject
        The open :class:`~bodyage_core.cohort.Workspace` and the subject's
        :class:`~bodyage_core.cohort.database.Subject` record (read on the main thread); None for
        a plain file.
    volume
        The image to predict when there is no workspace (the viewer's base layer volume).
    age
        Chronological age in years, when known.
    gradcam
        Also compute the Grad-CAM maps (ReLU and signed) of a 3D run.
    layer, device
        Grad-CAM layer and torch device (``'auto'``, ``'cpu'``, ``'cuda'``).
    torch_threads
        Intra-op threads for torch during the call (None: leave torch's setting). One thread
        leaves a core to the GUI on small machines.
    run_id
        The run's id in the workspace's cohort index (None for a run folder outside it).
    store
        Write the prediction into ``cohort.sqlite`` (``predictions`` table) when the subject is
        a workspace subject and ``run_id`` a run of that workspace: the same rows
        (:meth:`~bodyage_core.inference.subject.SubjectPrediction.row`) and the same
        :meth:`~bodyage_core.cohort.database.CohortDB.add_predictions` as ``bodyage predict``.
        Written last, from the
        worker thread over its own connection, holding the workspace lock
        (:class:`~bodyage_core.cluster.lock.WorkspaceLock`, as every writer does), so a
        cancelled prediction writes nothing. A workspace another run holds for longer than
        :data:`STORE_LOCK_WAIT_S` is not written (the result says so in its notes).
    """

    run_dir: Path
    subject_id: str
    workspace: Any = None
    subject: Any = None
    volume: Volume | None = None
    age: float | None = None
    gradcam: bool = True
    layer: str = DEFAULT_LAYER
    device: str = "auto"
    torch_threads: int | None = None
    run_id: str | None = None
    store: bool = True
    #: ``run_id`` names a model bundle (Automatic, a model found by name): add it to the
    #: workspace's runs when it is not one yet, as ``bodyage predict WS --model NAME`` does
    add_run: bool = False


@dataclass
class PredictionResult:
    """The outcome of :func:`predict_subject` (ages in years).

    ``mean``/``sigma`` are the raw ensemble mean and its calibrated predictive standard
    deviation, ``corrected`` the bias-corrected age, ``gap = corrected - age`` (None without an
    age). ``member_mu``/``member_sigma`` are the members that made the prediction. The maps are
    one-channel Volumes on the subject image's grid (None for a 2.5D run or when not asked for).
    """

    subject_id: str
    run: str
    run_dir: Path
    mean: float
    sigma: float
    corrected: float
    age: float | None
    gap: float | None
    member_mu: list[float]
    member_sigma: list[float]
    members_used: list[int]
    fold: int | None
    split: str
    gradcam: Volume | None = None
    gradcam_signed: Volume | None = None
    gradcam_settings: dict[str, Any] = field(default_factory=dict)
    gradcam_signed_settings: dict[str, Any] = field(default_factory=dict)
    layer: str | None = None
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0
    #: the row written to ``cohort.sqlite`` (None when not stored)
    stored_row: dict[str, Any] | None = None
    #: QC flags of the input and the model's envelope (``{"flag", "message", "severity"}``)
    qc: list[dict[str, str]] = field(default_factory=list)
    #: the model's multipliers of sigma per coverage (None: Gaussian)
    interval_z: dict[str, float] | None = None

    @property
    def raw_gap(self) -> float | None:
        return None if self.age is None else self.mean - self.age


def predict_subject(request: PredictionRequest,
                    reporter: ProgressReporter | None = None) -> PredictionResult:
    """Predict one subject's age with an ensemble (a workspace run or a model bundle) and
    compute its Grad-CAM maps, through the core's one prediction function
    (:func:`bodyage_core.inference.subject.predict_subject`).

    Runs in a worker thread: touches no Qt object. Progress stages: ``load`` (run and image),
    ``prepare``, ``predict`` (one unit per member), ``explain`` (one unit per map).
    Cancelling (through the reporter) stops at the next of these points and raises
    :class:`~bodyage_core.errors.Cancelled`.

    Raises
    ------
    BodyageError
        A missing or incomplete run, an image without the run's channels, a scan outside the
        model's envelope.
    """
    import torch

    from bodyage_core.inference.ensemble import AgeRun
    from bodyage_core.inference.subject import MapRequest
    from bodyage_core.inference.subject import predict_subject as core_predict

    rep = ensure_reporter(reporter)
    t0 = time.perf_counter()
    old_threads = torch.get_num_threads()
    if request.torch_threads:
        torch.set_num_threads(max(1, int(request.torch_threads)))
    try:
        rep.update("load", 0, 2, "reading the model")
        run_dir = Path(request.run_dir)
        if not run_dir.is_dir():
            raise BodyageError("no such run folder", path=run_dir,
                               hint="train a run (Analysis > Train) or choose another run")
        age_run = AgeRun(run_dir, device=request.device)
        spec = age_run.spec
        age_run.load_members()
        rep.update("load", 1, 2, "reading the image")
        if request.workspace is not None and request.subject is not None:
            from bodyage_core.training.data import load_subject_volume

            vol = load_subject_volume(request.workspace, request.subject, spec.channels)
            oof = True
        elif request.volume is not None:
            vol = request.volume
            oof = False
        else:
            raise BodyageError("nothing to predict: open a subject or an image first")
        rep.update("load", 2, 2)
        notes: list[str] = []
        maps = []
        if request.gradcam and spec.mode == "3d":
            maps = [MapRequest("gradcam", "relu", request.layer),
                    MapRequest("gradcam", "signed", request.layer)]
        elif spec.mode != "3d":
            notes.append("2.5D run: its maps live on the projection images; no 3D Grad-CAM")
        pred = core_predict(age_run, vol, subject_id=request.subject_id, age=request.age,
                            out_of_fold=oof, maps=maps, target_grid=(vol.shape, vol.affine),
                            reporter=rep)
        notes += [f["message"] for f in pred.qc]
        result = PredictionResult(
            subject_id=request.subject_id, run=age_run.name, run_dir=run_dir,
            mean=pred.mean, sigma=pred.sigma, corrected=pred.corrected, age=pred.age,
            gap=pred.gap, member_mu=pred.member_mu, member_sigma=pred.member_sigma,
            members_used=pred.members_used, fold=pred.fold, split=pred.split, notes=notes,
            qc=pred.qc, interval_z=pred.interval_z)
        if maps:
            prov = {"run": age_run.name, "subject": request.subject_id,
                    "layer": request.layer, "members": pred.members_used,
                    "units": "(d age / d activation) x activation, years"}
            cam, signed = pred.maps["gradcam:relu"], pred.maps["gradcam:signed"]
            result.gradcam = Volume(cam.data, cam.affine, ("gradcam",),
                                    dict(prov, variant="relu"))
            result.gradcam_signed = Volume(signed.data, signed.affine, ("gradcam_signed",),
                                           dict(prov, variant="signed"))
            result.layer = request.layer
            # display settings need percentiles of ~10^6 voxels: computed here, off the GUI
            result.gradcam_settings = gradcam_display(result.gradcam)
            result.gradcam_signed_settings = gradcam_display(result.gradcam_signed, signed=True)
        if _should_store(request):
            rep.update("store", 0, 1, "writing the prediction to cohort.sqlite")
            from bodyage_core.cluster.lock import WorkspaceLockedError

            try:
                result.stored_row = store_prediction(
                    request.workspace, request.run_id, pred.row(), request.subject,
                    age_run if request.add_run else None)
            except WorkspaceLockedError as err:
                result.notes.append(f"not stored in cohort.sqlite: {err}")
            rep.update("store", 1, 1)
        result.seconds = time.perf_counter() - t0
        return result
    finally:
        if request.torch_threads:
            torch.set_num_threads(old_threads)


def _should_store(request: PredictionRequest) -> bool:
    return bool(request.store and request.workspace is not None
                and request.subject is not None and request.run_id)


#: seconds the viewer waits for another writer's workspace lock before it gives up storing
STORE_LOCK_WAIT_S = 20.0


def store_prediction(ws, run_id: str, row: dict[str, Any], subject: Any = None,
                     age_run: Any = None) -> dict[str, Any] | None:
    """Write one prediction into the workspace as ``bodyage predict`` does (the cluster's
    predict stage, :mod:`bodyage_core.cluster.model_stages`): the subject's sex, BMI group and
    site added to the row, ``CohortDB.add_predictions`` and
    ``subjects/<id>/prediction_<run>.json``, holding the workspace lock (waits up to
    :data:`STORE_LOCK_WAIT_S`, then raises
    :class:`~bodyage_core.cluster.lock.WorkspaceLockedError`). With ``age_run`` (the loaded
    model bundle of a model chosen by name or by Automatic), ``run_id`` is added to the
    workspace's runs when missing, as ``PredictStage`` adds ``--model NAME``. Opens its own
    connection (callable from a worker thread; the database is in WAL mode); returns the row
    as stored (with ``gap``), or None when ``run_id`` is not a run of the workspace."""
    from bodyage_core.atomic import write_json
    from bodyage_core.cluster.lock import WorkspaceLock
    from bodyage_core.cohort.database import CohortDB

    row = dict(row)
    if subject is not None:
        row.update(sex=subject.sex, bmi_group=subject.bmi_group, site=subject.site)
    lock = WorkspaceLock(ws.root, f"bodyage gui: store the prediction of {row['subject_id']}",
                         wait=True, timeout=STORE_LOCK_WAIT_S, poll=0.2, reentrant=True)
    with lock:
        db = CohortDB.open(ws.db.path)
        try:
            if not any(r["run_id"] == run_id for r in db.runs()):
                if age_run is None:
                    return None
                db.add_run(run_id, age_run.model_config.get("arch"),
                           {"model": age_run.model_config, "input": age_run.spec.to_dict()},
                           status="complete")
            db.add_predictions(run_id, [row])
            stored = next(iter(db.predictions(run_id, subject_id=row["subject_id"])), row)
        finally:
            db.close()
        target = ws.prediction_file(row["subject_id"], run_id)
        target.parent.mkdir(parents=True, exist_ok=True)
        write_json(target, dict(row, run=run_id))
    return dict(stored)


#: Modules the prediction imports lazily (torch's import alone holds the GIL for ~0.5 s).
WARM_UP_MODULES = ("torch", "scipy.ndimage", "bodyage_core.io", "bodyage_core.models.factory",
                   "bodyage_core.models.ensemble", "bodyage_core.inference.ensemble",
                   "bodyage_core.inference.subject", "bodyage_core.training.data",
                   "bodyage_core.explain.gradcam", "bodyage_core.explain.space")


def warm_up_imports() -> float:
    """Import what :func:`predict_subject` needs (seconds taken). The viewer calls it in a
    background thread shortly after start-up, so that importing torch (which holds the GIL
    for long stretches) does not stall the window during the first prediction."""
    import importlib

    t0 = time.perf_counter()
    for name in WARM_UP_MODULES:
        try:
            importlib.import_module(name)
        except Exception:  # noqa: BLE001 - a warm-up only: the prediction imports (and
            # reports) for itself. A torch import that failed half way is dropped from
            # sys.modules, so the prediction's own import starts afresh.
            break
    return time.perf_counter() - t0


def gradcam_display(volume: Volume, signed: bool = False) -> dict[str, Any]:
    """Display settings for a Grad-CAM overlay (raw values kept; normalised only for display):
    the viewer's rule for importance maps, :func:`bodyage_core.viewer.layers.importance_overlay`
    (``heat`` / ``bwr``, at most the top fifth of the map above the threshold, opacity 0.5)."""
    from bodyage_core.viewer.layers import importance_overlay

    return importance_overlay(volume.data[0], signed=signed)
