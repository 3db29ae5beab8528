"""The training wizard's pages: cohort and split, model, review, run (with its live curves).

The pages only hold and check the settings; :class:`~bodyage_gui.wizard.qt_training_wizard.
QtTrainingWizard` trains. The input-grid fields always say what the chosen grid is (greyed
unless custom): the named grids' values, or the grid "from the data" gives for this workspace
(:func:`grid_values`).
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

from bodyage_core.cohort.paths import WorkspacePaths
from bodyage_core.errors import BodyageError
from bodyage_core.names import is_valid_name
from bodyage_gui.workers import analysis_strings as text

_Qt = QtCore.Qt

MODELS = (("resnet3d", "3D ResNet-18 (whole volume)"),
          ("resnet2d", "2.5D ResNet (coronal + sagittal projections)"),
          ("vgg2d", "2.5D VGG16-bn (coronal + sagittal projections)"))
LOSSES = (("l1", "L1 (mean absolute error)"), ("mse", "MSE"),
          ("meanvar", "mean-variance (Gaussian NLL: predicts sigma)"))
GRID_CHOICES = (("default", "default: 185 x 87 x 112 at 6 x 4.464 x 4.464 mm"),
                ("full", "full: 370 x 174 x 224 at 3 x 2.232 x 2.232 mm"),
                ("data", "from the data (twice the voxel size)"),
                ("custom", "custom spacing and shape"))
GRID_NOTES = {"default": "the default grid", "full": "the full-resolution grid",
              "data": "the first subject's field of view at twice its voxel size, as "
                      "`bodyage train` derives it", "custom": ""}


def grid_values(choice: str, workspace: Path | None
                ) -> tuple[tuple | None, tuple | None, str]:
    """``(spacing_zyx, shape_zyx, note)`` the grid ``choice`` gives: the named grids' own
    values, or for ``'data'`` the first subject's field of view at twice its voxel size (from
    its NIfTI header, as :func:`bodyage_core.training.workflow.make_spec` derives it)."""
    from bodyage_core.training.workflow import GRIDS

    if choice in GRIDS:
        sp, sh = GRIDS[choice]
        return tuple(sp), tuple(sh), ""
    if choice != "data":
        return None, None, ""
    note = "(from the first subject, when training starts)"
    if workspace is None:
        return None, None, note
    try:
        from bodyage_core.cohort import Workspace
        from bodyage_core.training.workflow import default_channels

        with Workspace.open(workspace) as ws:
            subjects = ws.db.subjects()
            chans = default_channels(ws, subjects)
            first = next(s for s in subjects if all(c in s.images for c in chans))
            path = ws.resolve(first.images[chans[0]])
        if not str(path).lower().endswith((".nii", ".nii.gz")):
            return None, None, note
        import numpy as np

        from bodyage_core.io.header import image_grid

        shape, affine = image_grid(path)             # the file's axes, numpy order z, y, x
        n_xyz = shape[::-1]
        cols = np.abs(np.asarray(affine, float)[:3, :3])
        spacing_xyz, size_xyz = [0.0] * 3, [0] * 3
        for j in range(3):                           # file axis j lies along world axis w
            w = int(np.argmax(cols[:, j]))
            spacing_xyz[w] = float(np.linalg.norm(affine[:3, j]))
            size_xyz[w] = int(n_xyz[j])
        sp = tuple(2.0 * spacing_xyz[w] for w in (2, 1, 0))
        sh = tuple(max(8, int(math.ceil(size_xyz[w] * spacing_xyz[w] / s - 1e-6)))
                   for w, s in zip((2, 1, 0), sp))
        return tuple(round(v, 4) for v in sp), sh, ""
    except (BodyageError, OSError, StopIteration, ValueError):
        return None, None, note


def overall_fraction(values: dict | None, fraction: float | None) -> float | None:
    """Fraction of the whole run done, from a trainer event's position fields (``fold, folds,
    member, members``, 1-based) and the member's own fraction."""
    v = values or {}
    if fraction is None or not all(isinstance(v.get(k), int) and v[k] >= 1
                                   for k in ("fold", "folds", "member", "members")):
        return None
    return ((v["fold"] - 1) * v["members"] + (v["member"] - 1) + fraction) / \
        (v["folds"] * v["members"])


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

    def __init__(self, wizard: Any):
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
        self.resume_check = QtWidgets.QCheckBox("Resume the interrupted run (its settings)")
        self.resume_check.setToolTip("continue models/<run>.partial where it stopped, with the "
                                     "settings it was started with")
        self.resume_check.setVisible(False)
        self.resume_check.toggled.connect(self._resume_toggled)
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
        form.addRow("", self.resume_check)
        form.addRow("Split", self.split_combo)
        form.addRow("Folds", self.folds_spin)
        form.addRow("Seed", self.seed_spin)
        self.workspace_edit.textChanged.connect(self._describe)
        self.run_edit.textChanged.connect(lambda _t: self._run_changed())
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
        return bool(p and run and is_valid_name(run) and WorkspacePaths(p).model_dir(run).exists())

    def partial_dir(self) -> Path | None:
        """``models/<run>.partial`` when an interrupted run of this name waits there."""
        p = self.workspace_path()
        run = self.run_edit.text().strip()
        if not (p and run and is_valid_name(run)):
            return None
        d = WorkspacePaths(p).partial_model_dir(run)
        return d if d.is_dir() else None

    def _run_changed(self) -> None:
        partial = self.partial_dir()
        self.resume_check.setVisible(partial is not None and not self.run_exists())
        if partial is None and self.resume_check.isChecked():
            self.resume_check.setChecked(False)
        self.completeChanged.emit()

    def _resume_toggled(self, on: bool) -> None:
        if on:
            self.overwrite_check.setChecked(False)
            partial = self.partial_dir()
            cfg = _read_json(partial / "config.json") if partial is not None else {}
            if cfg:
                self.wiz.apply_run_config(cfg)
        self.overwrite_check.setEnabled(not on)
        self.completeChanged.emit()

    def isComplete(self) -> bool:  # noqa: N802
        run = self.run_edit.text().strip()
        ok_name = is_valid_name(run)     # the one name rule (bodyage_core.names)
        if self.run_exists() and not self.overwrite_check.isChecked():
            self.cohort_label.setText(text.WIZARD_RUN_EXISTS.format(run=run))
            return False
        if self.partial_dir() is not None and not (self.overwrite_check.isChecked() or
                                                   self.resume_check.isChecked()):
            self.cohort_label.setText(text.WIZARD_PARTIAL_EXISTS.format(run=run))
            return False
        return self._n_subjects > 0 and ok_name


class ModelPage(QtWidgets.QWizardPage):
    """Architecture, loss, ensemble size, width, epochs, batch, grid, device."""

    def __init__(self, wizard: Any):
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
        choice = self.grid_combo.currentData()
        custom = choice == "custom"
        if not custom:              # greyed, but saying what this grid is (never another's)
            spacing, shape, note = grid_values(choice, self.wiz.cohort_page.workspace_path())
            for edit, vals in ((self.spacing_edit, spacing), (self.shape_edit, shape)):
                edit.blockSignals(True)
                edit.setText(", ".join(f"{v:g}" for v in vals) if vals else note)
                edit.blockSignals(False)
            self.spacing_edit.setToolTip(f"z, y, x mm — {GRID_NOTES[choice]}")
            self.shape_edit.setToolTip(f"z, y, x voxels — {GRID_NOTES[choice]}")
        else:
            self.spacing_edit.setToolTip("z, y, x mm")
            self.shape_edit.setToolTip("z, y, x voxels")
        self.spacing_edit.setEnabled(custom)
        self.shape_edit.setEnabled(custom)
        self.image_spin.setEnabled(self.arch_combo.currentData() != "resnet3d")
        self.width_spin.setEnabled(self.arch_combo.currentData() == "resnet3d")
        self.completeChanged.emit()

    def initializePage(self) -> None:  # noqa: N802
        self._grid_changed()                  # the workspace is known now ("from the data")

    def apply_run_config(self, cfg: dict[str, Any]) -> None:
        """The settings of a run's ``config.json`` (an interrupted run being resumed)."""
        model, train, inp = cfg.get("model", {}), cfg.get("train", {}), cfg.get("input", {})
        if model.get("arch"):
            self.arch_combo.setCurrentIndex(max(0, self.arch_combo.findData(model["arch"])))
        if model.get("width"):
            self.width_spin.setValue(int(model["width"]))
        if train.get("loss"):
            self.loss_combo.setCurrentIndex(max(0, self.loss_combo.findData(train["loss"])))
        for spin, key in ((self.epochs_spin, "epochs"), (self.batch_spin, "batch_size")):
            if train.get(key):
                spin.setValue(int(train[key]))
        if train.get("lr"):
            self.lr_edit.setText(f"{float(train['lr']):g}")
        aug = train.get("augment")
        if isinstance(aug, dict):
            self.augment_check.setChecked(any(bool(v) for v in aug.values()))
        if cfg.get("members_per_fold"):
            self.members_spin.setValue(int(cfg["members_per_fold"]))
        if inp.get("spacing_zyx") and inp.get("shape_zyx"):
            self.set_custom_grid(inp["spacing_zyx"], inp["shape_zyx"])
        if inp.get("image_hw"):
            self.image_spin.setValue(int(inp["image_hw"][0]))
        if train.get("device") in ("auto", "cpu", "cuda"):
            self.device_combo.setCurrentText(train["device"])

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
    def __init__(self, wizard: Any):
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

    def __init__(self, wizard: Any):
        super().__init__()
        self.setTitle("Training")
        self.wiz = wizard
        self.progress = QtWidgets.QProgressBar()
        self.progress.setRange(0, 1000)
        self.stage_label = QtWidgets.QLabel("")
        self.eta_label = QtWidgets.QLabel("")
        self.cancel_button = QtWidgets.QPushButton("Cancel training")
        self.cancel_button.clicked.connect(self.wiz.cancel_training)
        self.resume_button = QtWidgets.QPushButton("Resume")
        self.resume_button.setToolTip("continue the cancelled run where it stopped (its "
                                      "finished members are kept)")
        self.resume_button.clicked.connect(self.wiz.resume_training)
        self.resume_button.setVisible(False)
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
        row.addWidget(self.resume_button)
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
        self.clear_curves()
        self.wiz.start_training()

    def clear_curves(self) -> None:
        self.loss_plot.clear()
        self.mae_plot.clear()
        self.loss_curves.clear()
        self.mae_curves.clear()
        self.progress.setValue(0)
        self.eta_label.setText("")

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




def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return {}
