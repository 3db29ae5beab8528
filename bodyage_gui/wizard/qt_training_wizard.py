"""The training wizard (QWizard): cohort and split, model, review, run.

The run page trains in a :class:`~bodyage_gui.workers.qt_worker.QtWorker` through
:func:`bodyage_core.training.workflow.train_workspace` (the same call as ``bodyage train``), in
its own :class:`~bodyage_core.cohort.Workspace` connection. The trainer knows nothing of Qt: it
reports through a :class:`~bodyage_core.progress.ProgressReporter` (stage ``train``, one unit per
mini-batch of the current member, message ``"fold i/F member j/M"``, values ``epoch, step, loss,
val_mae, lr``), and the page turns those events into a live training-loss curve, a validation-MAE
curve (the value reported during epoch e+1 is the MAE after epoch e; the final epochs are read
from the run's ``metrics.json`` when it is done), an overall progress bar and an ETA. Cancel stops
at the next mini-batch (the run stays resumable as ``models/<run>.partial``; Resume on the run
page, or "Resume the interrupted run" on the first page, continues it with its settings). On success the
wizard emits :attr:`QtTrainingWizard.run_finished` with the run name; the prediction and cohort
panels listen to it, so the new run is selectable for prediction at once.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from PySide6 import QtCore, QtWidgets

from bodyage_core.errors import ConfigError
from bodyage_gui.wizard.qt_wizard_pages import (  # noqa: F401 (overall_fraction: public)
    LOSSES,
    MODELS,
    CohortPage,
    ModelPage,
    ReviewPage,
    RunPage,
    _triple,
    overall_fraction,
)
from bodyage_gui.workers import analysis_strings as text
from bodyage_gui.workers.qt_worker import QtWorker

# -- the wizard ---------------------------------------------------------------------------------------

class QtTrainingWizard(QtWidgets.QWizard):
    """Train a run on a workspace cohort (see the module docstring).

    Parameters
    ----------
    workspace
        The open workspace (its folder is pre-filled) or a path, or None.
    """

    run_finished = QtCore.Signal(str)
    training_failed = QtCore.Signal(str)

    def __init__(self, workspace: Any = None, parent: QtWidgets.QWidget | None = None):
        super().__init__(parent)
        self.setWindowTitle(text.WIZARD_TITLE)
        self.setWizardStyle(QtWidgets.QWizard.WizardStyle.ClassicStyle)
        self.setOption(QtWidgets.QWizard.WizardOption.NoBackButtonOnLastPage, True)
        self.resize(820, 600)
        self.worker: QtWorker | None = None
        self.outcome: str | None = None   # None | running | finished | failed | cancelled
        self.message = ""
        self.result_run: str | None = None
        self.events: list[Any] = []
        self._train_t0: tuple[float, float] | None = None
        self._mae_seen: dict[str, dict[int, float]] = {}
        self.cohort_page = CohortPage(self)
        self.model_page = ModelPage(self)
        self.review_page = ReviewPage(self)
        self.run_page = RunPage(self)
        for p in (self.cohort_page, self.model_page, self.review_page, self.run_page):
            self.addPage(p)
        if workspace is not None:
            # a Workspace, or its folder (a Path has a ``root`` too: '/')
            root = workspace if isinstance(workspace, (str, Path)) else workspace.root
            self.cohort_page.workspace_edit.setText(str(root))

    # -- settings -------------------------------------------------------------------------------------
    def settings(self) -> dict[str, Any]:
        """Everything the run needs, from the pages (plain values)."""
        c, m = self.cohort_page, self.model_page
        grid = m.grid_combo.currentData()
        arch = m.arch_combo.currentData()
        out = {
            "workspace": str(c.workspace_path()), "run": c.run_edit.text().strip(),
            "overwrite": c.overwrite_check.isChecked() and not c.resume_check.isChecked(),
            "resume": c.resume_check.isChecked(),
            "split_method": c.split_combo.currentData(), "folds": c.folds_spin.value(),
            "seed": c.seed_spin.value(), "arch": arch, "loss": m.loss_combo.currentData(),
            "members": m.members_spin.value(), "width": m.width_spin.value(),
            "epochs": m.epochs_spin.value(), "batch_size": m.batch_spin.value(),
            "lr": m.lr(), "augment": m.augment_check.isChecked(), "grid": grid,
            "spacing": _triple(m.spacing_edit.text()) if grid == "custom" else None,
            "shape": _triple(m.shape_edit.text(), int) if grid == "custom" else None,
            "image_hw": (m.image_spin.value(),) * 2, "device": m.device_combo.currentText(),
        }
        return out

    def summary_text(self) -> str:
        s = self.settings()
        folds = s["folds"]
        n_nets = max(folds, 1) * s["members"]
        grid = {"default": "default (185 x 87 x 112 at 6 x 4.464 x 4.464 mm)",
                "full": "full (370 x 174 x 224 at 3 x 2.232 x 2.232 mm)",
                "data": "from the data (twice the voxel size)",
                "custom": f"spacing {s['spacing']} mm, shape {s['shape']}"}[s["grid"]]
        lines = [
            f"workspace      {s['workspace']}",
            f"run            {s['run']}{'  (overwrite)' if s['overwrite'] else ''}"
            f"{'  (resume the interrupted run)' if s['resume'] else ''}",
            f"split          {s['split_method']}, "
            + (f"{folds}-fold cross-validation" if folds > 1 else "one split"),
            f"model          {dict(MODELS)[s['arch']]}"
            + (f", width {s['width']}" if s["arch"] == "resnet3d" else
               f", image {s['image_hw'][0]} x {s['image_hw'][1]}"),
            f"loss           {dict(LOSSES)[s['loss']]}",
            f"ensemble       {s['members']} per fold -> {n_nets} network(s)",
            f"optimisation   {s['epochs']} epochs, batch {s['batch_size']}, Adam lr {s['lr']:g}, "
            f"augmentation {'on' if s['augment'] else 'off'}",
            f"input grid     {grid}",
            f"device         {s['device']}",
            "",
            f"writes         {s['workspace']}/models/{s['run']}/ and the run's out-of-fold "
            "predictions in cohort.sqlite",
        ]
        return "\n".join(lines)

    # -- training --------------------------------------------------------------------------------------
    def apply_run_config(self, cfg: dict[str, Any]) -> None:
        """Fill the pages with a run's settings (resuming it)."""
        c = self.cohort_page
        if cfg.get("split_method"):
            c.split_combo.setCurrentIndex(max(0, c.split_combo.findData(cfg["split_method"])))
        if cfg.get("folds"):
            c.folds_spin.setValue(int(cfg["folds"]))
        if cfg.get("seed") is not None:
            c.seed_spin.setValue(int(cfg["seed"]))
        self.model_page.apply_run_config(cfg)

    def partial_path(self) -> Path:
        s = self.settings()
        from bodyage_core.cohort.paths import WorkspacePaths

        return WorkspacePaths(s["workspace"]).partial_model_dir(s["run"])

    def resume_training(self) -> bool:
        """Continue the cancelled (or failed) run from its partial folder."""
        if self.worker is not None:
            return False
        self.cohort_page.resume_check.setVisible(True)
        self.cohort_page.resume_check.blockSignals(True)
        self.cohort_page.resume_check.setChecked(True)
        self.cohort_page.resume_check.blockSignals(False)
        self.run_page.resume_button.setVisible(False)
        return self.start_training()

    def start_training(self) -> bool:
        s = self.settings()
        self.outcome = "running"
        self.message = ""
        self.events = []
        self._train_t0 = None
        self._mae_seen = {}
        self.button(QtWidgets.QWizard.WizardButton.BackButton).setEnabled(False)
        self.run_page.cancel_button.setEnabled(True)
        self.run_page.resume_button.setVisible(False)
        self.run_page.stage_label.setText("resuming ..." if s.get("resume") else "starting ...")
        worker = QtWorker(lambda rep: _train(s, rep), parent=self)
        worker.progress_changed.connect(self._on_progress)
        worker.finished.connect(self._on_finished)
        worker.failed.connect(self._on_failed)
        worker.cancelled.connect(self._on_cancelled)
        worker.done.connect(self._on_done)
        self.worker = worker
        worker.start()
        return True

    def cancel_training(self) -> None:
        if self.worker is not None:
            self.worker.cancel()
            self.run_page.stage_label.setText("cancelling at the next mini-batch ...")

    def is_running(self) -> bool:
        return self.worker is not None

    def _on_progress(self, ev) -> None:
        self.events.append(ev)
        page = self.run_page
        if ev.stage != "train":
            f = ev.fraction
            page.stage_label.setText(f"{ev.stage} {ev.message}".strip() +
                                     (f" {100 * f:.0f}%" if f is not None else ""))
            return
        member = ev.message or "member"
        vals = ev.values or {}
        overall = overall_fraction(vals, ev.fraction)
        if overall is not None:
            page.progress.setValue(int(1000 * overall))
            if self._train_t0 is None:
                self._train_t0 = (ev.elapsed, overall)
            else:
                t0, f0 = self._train_t0
                if overall > f0:
                    eta = (ev.elapsed - t0) * (1 - overall) / (overall - f0)
                    page.eta_label.setText(f"ETA {_fmt_seconds(eta)}")
        epoch = vals.get("epoch")
        page.stage_label.setText(f"{member}, epoch {epoch}" if epoch else member)
        loss = vals.get("loss")
        if loss is not None and math.isfinite(loss):
            page.add_loss(member, float(ev.done), float(loss))
        mae = vals.get("val_mae")
        if epoch is not None and mae is not None and math.isfinite(mae) and epoch > 1:
            seen = self._mae_seen.setdefault(member, {})
            if seen.get(epoch - 1) != mae:
                seen[epoch - 1] = float(mae)
                ks = sorted(seen)
                page.set_mae(member, ks, [seen[k] for k in ks])

    def _on_finished(self, run: str) -> None:
        self.outcome = "finished"
        self.result_run = run
        self._final_curves(run)
        page = self.run_page
        page.progress.setValue(1000)
        page.eta_label.setText("")
        page.stage_label.setText(f"run {run!r} trained — it is now selectable for prediction")
        page.completeChanged.emit()
        self.run_finished.emit(run)

    def _final_curves(self, run: str) -> None:
        """The complete validation-MAE histories from the run's metrics.json."""
        try:
            ws_root = Path(self.settings()["workspace"])
            metrics = json.loads((ws_root / "models" / run / "metrics.json").read_text())
            cfg = json.loads((ws_root / "models" / run / "config.json").read_text())
        except (OSError, ValueError):
            return
        labels = {}
        members = cfg.get("members", [])
        per_fold: dict[Any, int] = {}
        for m in members:
            per_fold[m.get("fold")] = per_fold.get(m.get("fold"), 0) + 1
        seen: dict[Any, int] = {}
        n_f = len(per_fold)
        for m in members:
            f = m.get("fold")
            seen[f] = seen.get(f, 0) + 1
            fi = (f if isinstance(f, int) else 0) + 1
            labels[m["file"]] = f"fold {fi}/{n_f} member {seen[f]}/{per_fold[f]}"
        for file, hist in metrics.get("histories", {}).items():
            pts = [(h["epoch"], h["val_mae"]) for h in hist
                   if h.get("val_mae") is not None and math.isfinite(h["val_mae"])]
            if pts:
                self.run_page.set_mae(labels.get(file, file), [p[0] for p in pts],
                                      [p[1] for p in pts])

    def _on_failed(self, message: str) -> None:
        self.outcome = "failed"
        self.message = message
        self.run_page.stage_label.setText(f"failed: {message}")
        self.run_page.eta_label.setText("")
        parent = self.parent()
        rep = getattr(parent, "report_error", None)
        if rep is not None:
            rep(message)
        self.training_failed.emit(message)
        self.run_page.resume_button.setVisible(self.partial_path().is_dir())
        self.button(QtWidgets.QWizard.WizardButton.BackButton).setEnabled(True)

    def _on_cancelled(self) -> None:
        self.outcome = "cancelled"
        s = self.settings()
        self.run_page.stage_label.setText(text.WIZARD_CANCELLED.format(
            partial=self.partial_path(), workspace=s["workspace"], run=s["run"]))
        self.run_page.eta_label.setText("")
        self.run_page.resume_button.setVisible(self.partial_path().is_dir())
        self.button(QtWidgets.QWizard.WizardButton.BackButton).setEnabled(True)

    def _on_done(self) -> None:
        w, self.worker = self.worker, None
        self.run_page.cancel_button.setEnabled(False)
        if w is not None:
            w.deleteLater()

    def reject(self) -> None:
        """Closing while training cancels it first; the wizard closes once the thread has
        ended (at the next mini-batch), without blocking the window meanwhile."""
        if self.worker is not None:
            self.cancel_training()
            self.worker.done.connect(lambda: QtWidgets.QWizard.reject(self))
            return
        super().reject()


def _fmt_seconds(s: float) -> str:
    s = max(0.0, float(s))
    if s < 90:
        return f"{s:.0f} s"
    if s < 5400:
        return f"{s / 60:.0f} min"
    return f"{s / 3600:.1f} h"


def _train(s: dict[str, Any], reporter) -> str:
    """The worker's job: train run ``s['run']`` with its own workspace connection."""
    from bodyage_core.cluster.lock import workspace_writer
    from bodyage_core.cohort import Workspace
    from bodyage_core.errors import Cancelled
    from bodyage_core.names import check_name

    if not s.get("workspace") or s["workspace"] == "None":
        raise ConfigError(text.WIZARD_NO_WORKSPACE)
    check_name(s.get("run") or "", "run name")
    reporter.update("prepare", 0, 1, "opening the workspace")
    # the workspace lock, as `bodyage train` holds it: a second trainer (or a CLI command
    # writing the workspace) is refused naming the holder, and this one is refused while
    # another holds it
    with Workspace.open(s["workspace"]) as ws, \
            workspace_writer(ws.root, f"bodyage gui: training wizard (run {s['run']})"):
        ws.progress = reporter
        try:
            _train_locked(ws, s, reporter)
        except BaseException as exc:
            ws.db.end_run(s["run"], "interrupted" if isinstance(exc, (Cancelled,
                                                                      KeyboardInterrupt))
                          else "failed")
            raise
    return s["run"]


def _train_locked(ws, s: dict[str, Any], reporter) -> None:
    from bodyage_core.training.presets import train_config
    from bodyage_core.training.workflow import make_spec, train_workspace

    grid = s["grid"] if s["grid"] in ("default", "full") else None
    spec = make_spec(ws, s["arch"], grid=grid, spacing=s.get("spacing"),
                     shape=s.get("shape"), image_hw=s["image_hw"])
    cfg = train_config(spec.mode, augment=s["augment"], epochs=s["epochs"],
                       batch_size=s["batch_size"], lr=s["lr"], loss=s["loss"],
                       device=s["device"], seed=s["seed"])
    model = {"arch": s["arch"]}
    if s["arch"] == "resnet3d":
        model["width"] = s["width"]
    reporter.update("prepare", 1, 1, "loading the cohort")
    train_workspace(ws, s["run"], spec, model, cfg, folds=s["folds"], members=s["members"],
                    split_method=s["split_method"], seed=s["seed"],
                    resume=bool(s.get("resume")), overwrite=s["overwrite"], reporter=reporter)
