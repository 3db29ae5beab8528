"""The training wizard (QWizard): cohort and split, model, review, run.

The run page trains in a :class:`~bodyage_gui.workers.qt_worker.QtWorker` through
:func:`bodyage_core.training.workflow.train_workspace` (the same call as ``bodyage train``), in
its own :class:`~bodyage_core.cohort.Workspace` connection. The trainer knows nothing of Qt: it
reports through a :class:`~bodyage_core.progress.ProgressReporter` (stage ``train``, one unit per
mini-batch of the current member, message ``"fold i/F member j/M"``, values ``epoch, step, loss,
val_mae, lr``), and the page turns those events into a live training-loss curve, a validation-MAE
curve (the value reported during epoch e+1 is the MAE after epoch e; the final epochs are read
from the run's ``metrics.json`` when it is done), an overall progress bar and an ETA. Cancel stops
at the next mini-batch (the run stays resumable as ``models/<run>.partial``). On success the
wizard emits :attr:`QtTrainingWizard.run_finished` with the run name; the prediction and cohort
panels listen to it, so the new run is selectable for prediction at once.
"""

from __future__ import annotations

import json
import math
import re
import time
from pathlib import Path
from typing import Any

import pyqtgraph as pg
from PySide6 import QtCore, QtWidgets

from bodyage_core.errors import BodyageError, ConfigError
from bodyage_core.names import is_valid_name
from bodyage_gui.workers import analysis_strings as text
from bodyage_gui.workers.qt_worker import QtWorker

_Qt = QtCore.Qt
_LABEL_RE = re.compile(r"fold (\d+)/(\d+) member (\d+)/(\d+)")

MODELS = (("resnet3d", "3D ResNet-18 (whole volume)"),
          ("resnet2d", "2.5D ResNet (coronal + sagittal projections)"),
          ("vgg2d", "2.5D VGG16-bn (coronal + sagittal projections)"))
LOSSES = (("l1", "L1 (mean absolute error)"), ("mse", "MSE"),
          ("meanvar", "mean-variance (Gaussian NLL: predicts sigma)"))
GRID_CHOICES = (("default", "default: 185 x 87 x 112 at 6 x 4.464 x 4.464 mm"),
                ("full", "full: 370 x 174 x 224 at 3 x 2.232 x 2.232 mm"),
                ("data", "from the data (twice the voxel size)"),
                ("custom", "custom spacing and shape"))


def overall_fraction(message: str, fraction: float | None) -> float | None:
    """Fraction of the whole run done, from a trainer event's ``"fold i/F member j/M"``."""
    m = _LABEL_RE.search(message or "")
    if m is None or fraction is None:
        return None
    fi, nf, mj, nm = (int(g) for g in m.groups())
    return ((fi - 1) * nm + (mj - 1) + fraction) / (nf * nm)


def _triple(textval: str, kind=float) -> tuple | None:
    parts = [p for p in re.split(r"[,\sx]+", textval.strip()) if p]
    if len(parts) == 1:
        parts = parts * 3
    if len(parts) != 3:
        return None
    try:
        return tuple(kind(p) for p in parts)
    except ValueError:
        return None


# -- pages ------------------------------------------------------------------------------------------

class CohortPage(QtWidgets.QWizardPage):
    """Workspace, run name, split method and folds."""

    def __init__(self, wizard: QtTrainingWizard):
        super().__init__()
        self.setTitle("Cohort and split")
        self.setSubTitle("The workspace whose cohort trains the model, and how it is split "
                         "into cross-validation folds.")
        self.wiz = wizard
        self.workspace_edit = QtWidgets.QLineEdit()
        browse = QtWidgets.QPushButton("Browse...")
        browse.clicked.connect(self._browse)
        self.cohort_label = QtWidgets.QLabel("")
        self.cohort_label.setWordWrap(True)
        self.run_edit = QtWidgets.QLineEdit(time.strftime("run_%Y%m%d_%H%M"))
        self.overwrite_check = QtWidgets.QCheckBox("Overwrite a run of the same name")
        self.split_combo = QtWidgets.QComboBox()
        for key, label in (("stratified", "stratified by age, sex and BMI group"),
                           ("random", "random"), ("site", "by site (no site in two folds)")):
            self.split_combo.addItem(label, key)
        self.folds_spin = QtWidgets.QSpinBox()
        self.folds_spin.setRange(1, 10)
        self.folds_spin.setValue(5)
        self.folds_spin.setToolTip("k-fold cross-validation (every subject gets an "
                                   "out-of-fold prediction); 1 = one train/validation/test split")
        self.seed_spin = QtWidgets.QSpinBox()
        self.seed_spin.setRange(0, 2 ** 31 - 1)
        row = QtWidgets.QHBoxLayout()
        row.addWidget(self.workspace_edit, 1)
        row.addWidget(browse)
        form = QtWidgets.QFormLayout(self)
        form.addRow("Workspace", row)
        form.addRow("", self.cohort_label)
        form.addRow("Run name", self.run_edit)
        form.addRow("", self.overwrite_check)
        form.addRow("Split", self.split_combo)
        form.addRow("Folds", self.folds_spin)
        form.addRow("Seed", self.seed_spin)
        self.workspace_edit.textChanged.connect(self._describe)
        self.run_edit.textChanged.connect(lambda _t: self.completeChanged.emit())
        self.overwrite_check.toggled.connect(lambda _t: self.completeChanged.emit())
        self._n_subjects = 0

    def _browse(self) -> None:
        path = QtWidgets.QFileDialog.getExistingDirectory(self, "Workspace")
        if path:
            self.workspace_edit.setText(path)

    def workspace_path(self) -> Path | None:
        t = self.workspace_edit.text().strip()
        return Path(t) if t else None

    def _describe(self) -> None:
        from bodyage_core.cohort import Workspace

        p = self.workspace_path()
        self._n_subjects = 0
        if p is None or not Workspace.is_workspace(p):
            self.cohort_label.setText(text.WIZARD_NO_WORKSPACE)
        else:
            try:
                with Workspace.open(p) as ws:
                    subs = ws.db.subjects()
                    kinds = sorted({k for s in subs for k in s.images
                                    if not k.startswith(("gradcam", "to_atlas", "occlusion"))})
                    self._n_subjects = len(subs)
                    self.cohort_label.setText(f"{len(subs)} subjects; images: "
                                              f"{', '.join(kinds) or 'none'}")
            except BodyageError as err:
                self.cohort_label.setText(str(err))
        self.completeChanged.emit()

    def run_exists(self) -> bool:
        p = self.workspace_path()
        run = self.run_edit.text().strip()
        return bool(p and run and (p / "models" / run).exists())

    def isComplete(self) -> bool:  # noqa: N802
        run = self.run_edit.text().strip()
        ok_name = is_valid_name(run)     # the one name rule (bodyage_core.names)
        if self.run_exists() and not self.overwrite_check.isChecked():
            self.cohort_label.setText(text.WIZARD_RUN_EXISTS.format(run=run))
            return False
        return self._n_subjects > 0 and ok_name


class ModelPage(QtWidgets.QWizardPage):
    """Architecture, loss, ensemble size, width, epochs, batch, grid, device."""

    def __init__(self, wizard: QtTrainingWizard):
        super().__init__()
        self.setTitle("Model")
        self.setSubTitle("Network, loss and optimisation (defaults follow DESIGN.md; smaller "
                         "width and grid train faster on a CPU).")
        self.wiz = wizard
        self.arch_combo = QtWidgets.QComboBox()
        for key, label in MODELS:
            self.arch_combo.addItem(label, key)
        self.loss_combo = QtWidgets.QComboBox()
        for key, label in LOSSES:
            self.loss_combo.addItem(label, key)
        self.members_spin = QtWidgets.QSpinBox()
        self.members_spin.setRange(1, 10)
        self.members_spin.setValue(3)
        self.members_spin.setToolTip("ensemble members per fold (different seeds); the "
                                     "ensemble of a k-fold run has k x members networks")
        self.width_spin = QtWidgets.QSpinBox()
        self.width_spin.setRange(2, 256)
        self.width_spin.setToolTip("channels of the first stage (3D ResNet; 64 in Starck; "
                                   "8 trains in minutes on a CPU)")
        self.epochs_spin = QtWidgets.QSpinBox()
        self.epochs_spin.setRange(1, 1000)
        self.batch_spin = QtWidgets.QSpinBox()
        self.batch_spin.setRange(1, 256)
        self.lr_edit = QtWidgets.QLineEdit()
        self._apply_defaults("3d")
        self.augment_check = QtWidgets.QCheckBox("augment (random shifts, flips, intensity)")
        self.augment_check.setChecked(True)
        self.grid_combo = QtWidgets.QComboBox()
        for key, label in GRID_CHOICES:
            self.grid_combo.addItem(label, key)
        self.spacing_edit = QtWidgets.QLineEdit("6, 4.464, 4.464")
        self.shape_edit = QtWidgets.QLineEdit("185, 87, 112")
        self.spacing_edit.setToolTip("z, y, x mm")
        self.shape_edit.setToolTip("z, y, x voxels")
        self.image_spin = QtWidgets.QSpinBox()
        self.image_spin.setRange(16, 1024)
        self.image_spin.setValue(256)
        self.image_spin.setToolTip("2.5D: height and width of the projection image")
        self.device_combo = QtWidgets.QComboBox()
        self.device_combo.addItems(["auto", "cpu", "cuda"])
        form = QtWidgets.QFormLayout(self)
        form.addRow("Model", self.arch_combo)
        form.addRow("Loss", self.loss_combo)
        form.addRow("Ensemble members per fold", self.members_spin)
        form.addRow("Width", self.width_spin)
        form.addRow("Epochs", self.epochs_spin)
        form.addRow("Batch size", self.batch_spin)
        form.addRow("Learning rate", self.lr_edit)
        form.addRow("", self.augment_check)
        form.addRow("Input grid", self.grid_combo)
        form.addRow("  spacing (z, y, x mm)", self.spacing_edit)
        form.addRow("  shape (z, y, x)", self.shape_edit)
        form.addRow("2.5D image size", self.image_spin)
        form.addRow("Device", self.device_combo)
        self.grid_combo.currentIndexChanged.connect(self._grid_changed)
        self.arch_combo.currentIndexChanged.connect(self._grid_changed)
        self.arch_combo.currentIndexChanged.connect(
            lambda _i: self._apply_defaults("3d" if self.arch_combo.currentData() == "resnet3d"
                                            else "2.5d"))
        self.spacing_edit.textChanged.connect(lambda _t: self.completeChanged.emit())
        self.shape_edit.textChanged.connect(lambda _t: self.completeChanged.emit())
        self.lr_edit.textChanged.connect(lambda _t: self.completeChanged.emit())
        self._grid_changed()

    def _apply_defaults(self, mode: str) -> None:
        """The values ``bodyage train`` would use (one source: training.presets)."""
        from bodyage_core.training.presets import defaults_for

        d = defaults_for(mode)
        self.loss_combo.setCurrentIndex(self.loss_combo.findData(d.train["loss"]))
        self.width_spin.setValue(d.width_cpu)
        self.epochs_spin.setValue(d.train["epochs"])
        self.batch_spin.setValue(d.train["batch_size"])
        self.lr_edit.setText(f"{d.train['lr']:g}")

    def _grid_changed(self) -> None:
        custom = self.grid_combo.currentData() == "custom"
        self.spacing_edit.setEnabled(custom)
        self.shape_edit.setEnabled(custom)
        self.image_spin.setEnabled(self.arch_combo.currentData() != "resnet3d")
        self.width_spin.setEnabled(self.arch_combo.currentData() == "resnet3d")
        self.completeChanged.emit()

    def set_custom_grid(self, spacing_zyx, shape_zyx) -> None:
        self.grid_combo.setCurrentIndex(self.grid_combo.findData("custom"))
        self.spacing_edit.setText(", ".join(f"{v:g}" for v in spacing_zyx))
        self.shape_edit.setText(", ".join(str(int(v)) for v in shape_zyx))

    def lr(self) -> float | None:
        try:
            v = float(self.lr_edit.text())
        except ValueError:
            return None
        return v if v > 0 and math.isfinite(v) else None

    def isComplete(self) -> bool:  # noqa: N802
        if self.lr() is None:
            return False
        if self.grid_combo.currentData() == "custom":
            return (_triple(self.spacing_edit.text()) is not None and
                    _triple(self.shape_edit.text(), int) is not None)
        return True


class ReviewPage(QtWidgets.QWizardPage):
    def __init__(self, wizard: QtTrainingWizard):
        super().__init__()
        self.setTitle("Review")
        self.setSubTitle("Check the settings; Next starts training.")
        self.wiz = wizard
        self.summary = QtWidgets.QPlainTextEdit()
        self.summary.setReadOnly(True)
        self.summary.setStyleSheet("font-family: monospace;")
        lay = QtWidgets.QVBoxLayout(self)
        lay.addWidget(self.summary)

    def initializePage(self) -> None:  # noqa: N802
        self.summary.setPlainText(self.wiz.summary_text())


class RunPage(QtWidgets.QWizardPage):
    """Trains in the background with live curves, ETA and Cancel."""

    def __init__(self, wizard: QtTrainingWizard):
        super().__init__()
        self.setTitle("Training")
        self.wiz = wizard
        self.progress = QtWidgets.QProgressBar()
        self.progress.setRange(0, 1000)
        self.stage_label = QtWidgets.QLabel("")
        self.eta_label = QtWidgets.QLabel("")
        self.cancel_button = QtWidgets.QPushButton("Cancel training")
        self.cancel_button.clicked.connect(self.wiz.cancel_training)
        self.loss_plot = pg.PlotWidget()
        self.mae_plot = pg.PlotWidget()
        for p, title, ylab, xlab in ((self.loss_plot, "training loss (mini-batches)", "loss",
                                      "step"),
                                     (self.mae_plot, "validation MAE", "years", "epoch")):
            p.setBackground("w")
            p.setMinimumHeight(160)
            p.showGrid(x=True, y=True, alpha=0.2)
            p.setTitle(title, size="9pt")
            p.setLabel("left", ylab)
            p.setLabel("bottom", xlab)
            p.addLegend(offset=(-5, 5), labelTextSize="7pt", verSpacing=-6)
        row = QtWidgets.QHBoxLayout()
        row.addWidget(self.stage_label, 1)
        row.addWidget(self.eta_label)
        row.addWidget(self.cancel_button)
        plots = QtWidgets.QHBoxLayout()
        plots.addWidget(self.loss_plot)
        plots.addWidget(self.mae_plot)
        lay = QtWidgets.QVBoxLayout(self)
        lay.addWidget(self.progress)
        lay.addLayout(row)
        lay.addLayout(plots, 1)
        self.loss_curves: dict[str, tuple[pg.PlotDataItem, list, list]] = {}
        self.mae_curves: dict[str, tuple[pg.PlotDataItem, list, list]] = {}

    def initializePage(self) -> None:  # noqa: N802
        self.loss_plot.clear()
        self.mae_plot.clear()
        self.loss_curves.clear()
        self.mae_curves.clear()
        self.progress.setValue(0)
        self.eta_label.setText("")
        self.wiz.start_training()

    def isComplete(self) -> bool:  # noqa: N802
        return self.wiz.outcome == "finished"

    def _curve(self, store, plot, member: str):
        if member not in store:
            colour = pg.intColor(len(store), hues=9, maxValue=220)
            item = plot.plot([], [], pen=pg.mkPen(colour, width=1.5),
                             symbol="o" if plot is self.mae_plot else None, symbolSize=5,
                             symbolBrush=colour, symbolPen=colour, name=member)
            store[member] = (item, [], [])
        return store[member]

    def add_loss(self, member: str, step: float, loss: float) -> None:
        item, xs, ys = self._curve(self.loss_curves, self.loss_plot, member)
        xs.append(step)
        ys.append(loss)
        item.setData(xs, ys)

    def set_mae(self, member: str, epochs: list[float], maes: list[float]) -> None:
        item, xs, ys = self._curve(self.mae_curves, self.mae_plot, member)
        xs[:] = epochs
        ys[:] = maes
        item.setData(xs, ys)


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
            root = getattr(workspace, "root", workspace)
            self.cohort_page.workspace_edit.setText(str(root))

    # -- settings -------------------------------------------------------------------------------------
    def settings(self) -> dict[str, Any]:
        """Everything the run needs, from the pages (plain values)."""
        c, m = self.cohort_page, self.model_page
        grid = m.grid_combo.currentData()
        arch = m.arch_combo.currentData()
        out = {
            "workspace": str(c.workspace_path()), "run": c.run_edit.text().strip(),
            "overwrite": c.overwrite_check.isChecked(),
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
            f"run            {s['run']}{'  (overwrite)' if s['overwrite'] else ''}",
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
    def start_training(self) -> bool:
        s = self.settings()
        self.outcome = "running"
        self.message = ""
        self.events = []
        self._train_t0 = None
        self._mae_seen = {}
        self.button(QtWidgets.QWizard.WizardButton.BackButton).setEnabled(False)
        self.run_page.cancel_button.setEnabled(True)
        self.run_page.stage_label.setText("starting ...")
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
        overall = overall_fraction(member, ev.fraction)
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
        self.button(QtWidgets.QWizard.WizardButton.BackButton).setEnabled(True)

    def _on_cancelled(self) -> None:
        self.outcome = "cancelled"
        self.run_page.stage_label.setText(
            "cancelled — the partial run stays in models/<run>.partial (resume with "
            "`bodyage train --resume`)")
        self.run_page.eta_label.setText("")
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
                    overwrite=s["overwrite"], reporter=reporter)
