"""The prediction panel: ensemble inference and Grad-CAM of the open subject in the background.

"Predict" (Analysis menu, Ctrl+P) starts :func:`bodyage_gui.workers.prediction.predict_subject`
in a :class:`~bodyage_gui.workers.qt_worker.QtWorker`: the run is loaded and the networks run in
the worker thread; the panel shows a progress bar and a Cancel button and the window stays
responsive. Only the result crosses to the main thread: the panel then shows the predicted age
+- sigma (raw and bias-corrected), the chronological age, the age gap and every member's
prediction, and adds the Grad-CAM (ReLU, ``heat``) and the signed Grad-CAM (``bwr``, hidden) as
overlay layers of the viewer. For a workspace subject predicted with one of the workspace's
runs, the prediction (run, members, mean, sigma, bias-corrected age, gap) is also written to
``cohort.sqlite`` as ``bodyage predict`` writes it (by the worker thread, last, so a cancelled
run writes nothing) and the subject browser's row shows it. Finishing while the viewer shows
atlas space, the maps wait until it is back in the subject's space. A failure (missing run,
image without the run's channels) goes to ``window.report_error`` and the viewer state is not
touched; so does a cancelled run.

The panel needs a *window* offering the main window's hook points: ``state``, ``workspace``,
``current_subject``, ``add_overlay_volume(volume, name, **display)``, ``report_error(err)`` and
optionally the signals ``workspace_changed`` / ``subject_changed`` / ``space_changed``, the
attribute ``display_space`` and the method ``prediction_stored(subject_id, row)``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pyqtgraph as pg
from PySide6 import QtCore, QtWidgets

from bodyage_core.errors import BodyageError
from bodyage_core.volume import Volume
from bodyage_gui.workers import analysis_strings as text
from bodyage_gui.workers.prediction import (
    PredictionRequest,
    PredictionResult,
    gradcam_display,
    predict_subject,
)
from bodyage_gui.workers.qt_worker import QtWorker

_Qt = QtCore.Qt
_FOLDER_ITEM = "folder:"


def complete_runs(ws) -> list[str]:
    """Names of the workspace's complete runs that exist on disk, oldest first."""
    if ws is None:
        return []
    out = []
    for r in ws.db.runs():
        if r.get("status") == "complete" and (ws.model_dir(r["run_id"]) / "config.json").exists():
            out.append(r["run_id"])
    return out


def default_run(ws, runs: list[str]) -> str | None:
    """The run the viewer shows by default: the one with the latest predictions, else the
    newest complete run."""
    if not runs:
        return None
    latest = ws.db.latest_run() if ws is not None else None
    return latest if latest in runs else runs[-1]


class QtPredictionPanel(QtWidgets.QWidget):
    """Predict the open subject with a chosen run (see the module docstring).

    Parameters
    ----------
    window
        The main window (or any object with its hook points).
    device
        Torch device for inference (``'auto'``, ``'cpu'``, ``'cuda'``).
    torch_threads
        Intra-op threads for torch while predicting (default: all cores but one, so the GUI
        keeps a core on a small machine).
    """

    prediction_started = QtCore.Signal(str)
    prediction_finished = QtCore.Signal(object)   # PredictionResult
    prediction_failed = QtCore.Signal(str)
    prediction_cancelled = QtCore.Signal()
    runs_changed = QtCore.Signal()

    def __init__(self, window: Any, device: str = "auto", torch_threads: int | None = None,
                 parent: QtWidgets.QWidget | None = None):
        super().__init__(parent)
        self.window = window
        self.device = device
        if torch_threads is None:
            import os

            torch_threads = max(1, (os.cpu_count() or 2) - 1)
        self.torch_threads = torch_threads
        self.worker: QtWorker | None = None
        self.result: PredictionResult | None = None
        self.layers: list[Any] = []          # the overlay layers this panel added last
        self._request_base: Any = None       # base volume when the prediction started
        self._folder_runs: list[Path] = []
        self._pending_result: PredictionResult | None = None

        self.run_combo = QtWidgets.QComboBox()
        self.run_combo.setToolTip("trained run used for the prediction (models/<run>/)")
        self.run_combo.setSizeAdjustPolicy(
            QtWidgets.QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon)
        self.run_combo.setMinimumContentsLength(12)
        self.folder_button = QtWidgets.QPushButton("Folder...")
        self.folder_button.setToolTip("predict with a run folder (models/<run>/), e.g. for an "
                                      "image opened without a workspace")
        self.folder_button.clicked.connect(self._ask_run_folder)
        self.predict_button = QtWidgets.QPushButton("Predict")
        self.predict_button.setToolTip("ensemble prediction and Grad-CAM of the open subject "
                                       "(Ctrl+P)")
        self.predict_button.clicked.connect(self.predict)
        self.cancel_button = QtWidgets.QPushButton("Cancel")
        self.cancel_button.setEnabled(False)
        self.cancel_button.clicked.connect(self.cancel)
        self.progress = QtWidgets.QProgressBar()
        self.progress.setRange(0, 100)
        self.progress.setValue(0)
        self.progress.setTextVisible(True)
        self.status_label = QtWidgets.QLabel("")
        self.status_label.setWordWrap(True)
        self.status_label.setStyleSheet("color: #666;")

        self.values: dict[str, QtWidgets.QLabel] = {}
        form = QtWidgets.QFormLayout()
        form.setLabelAlignment(_Qt.AlignmentFlag.AlignRight)
        for key, label in (("subject", "Subject"), ("run", "Run"),
                           ("raw", "Predicted (raw)"), ("corrected", "Bias-corrected"),
                           ("age", "Chronological"), ("gap", "Age gap"),
                           ("members", "Members")):
            lab = QtWidgets.QLabel("–")
            lab.setTextInteractionFlags(_Qt.TextInteractionFlag.TextSelectableByMouse)
            self.values[key] = lab
            form.addRow(label, lab)
        self.values["corrected"].setStyleSheet("font-weight: bold;")

        self.member_plot = pg.PlotWidget()
        self.member_plot.setBackground("w")
        self.member_plot.setMinimumHeight(130)
        self.member_plot.setMaximumHeight(180)
        self.member_plot.setMouseEnabled(False, False)
        self.member_plot.hideButtons()
        pi = self.member_plot.getPlotItem()
        pi.setLabel("bottom", "member")
        pi.setLabel("left", "age (y)")
        pi.setTitle("ensemble members: mu ± sigma", size="8pt")
        self.member_plot.setToolTip("each member's predicted age mu ± sigma; solid line: the "
                                    "ensemble mean; dashed line: chronological age")
        # no empty axes before there is a prediction: shown with the first result
        self.member_plot.setVisible(False)
        self.member_points = pg.ScatterPlotItem(size=8, brush=pg.mkBrush(40, 90, 200),
                                                pen=pg.mkPen("k"))
        self.member_errors = pg.ErrorBarItem(pen=pg.mkPen(40, 90, 200), beam=0.2)
        self.mean_line = pg.InfiniteLine(angle=0, pen=pg.mkPen((40, 90, 200), width=1))
        self.age_line = pg.InfiniteLine(angle=0, pen=pg.mkPen((0, 0, 0), width=1,
                                                              style=_Qt.PenStyle.DashLine))
        for item in (self.member_errors, self.member_points, self.mean_line, self.age_line):
            pi.addItem(item)
        self.mean_line.hide()
        self.age_line.hide()
        self.map_label = QtWidgets.QLabel("")
        self.map_label.setWordWrap(True)

        run_row = QtWidgets.QHBoxLayout()
        run_row.addWidget(QtWidgets.QLabel("Run"))
        run_row.addWidget(self.run_combo, 1)
        run_row.addWidget(self.folder_button)
        buttons = QtWidgets.QHBoxLayout()
        buttons.addWidget(self.predict_button)
        buttons.addWidget(self.cancel_button)
        lay = QtWidgets.QVBoxLayout(self)
        lay.addLayout(run_row)
        lay.addLayout(buttons)
        lay.addWidget(self.progress)
        lay.addWidget(self.status_label)
        lay.addLayout(form)
        lay.addWidget(self.member_plot)
        lay.addWidget(self.map_label)
        lay.addStretch(1)

        self._maps_waiting: PredictionResult | None = None  # finished in atlas space
        for sig_name, slot in (("workspace_changed", lambda _ws: self.refresh_runs()),
                               ("space_changed", self._on_space_changed)):
            sig = getattr(window, sig_name, None)
            if sig is not None:
                sig.connect(slot)
        self.refresh_runs()

    # -- runs --------------------------------------------------------------------------------------
    @property
    def workspace(self):
        return getattr(self.window, "workspace", None)

    def refresh_runs(self, select: str | None = None) -> None:
        """Re-read the workspace's complete runs (and keep chosen run folders); select
        ``select`` (a run name) or the default run."""
        current = self.run_combo.currentData()
        ws = self.workspace
        runs = complete_runs(ws)
        self.run_combo.blockSignals(True)
        self.run_combo.clear()
        for r in runs:
            self.run_combo.addItem(r, r)
        for p in self._folder_runs:
            self.run_combo.addItem(f"{p.name} (folder)", _FOLDER_ITEM + str(p))
        want = select if select is not None else (
            current if current is not None and self.run_combo.findData(current) >= 0
            else default_run(ws, runs))
        idx = self.run_combo.findData(want) if want is not None else -1
        if idx < 0 and self.run_combo.count():
            idx = 0
        self.run_combo.setCurrentIndex(idx)
        self.run_combo.blockSignals(False)
        self.runs_changed.emit()

    def add_run_folder(self, path: str | Path) -> None:
        """Offer a run folder (``models/<run>/``) in the combo and select it."""
        p = Path(path)
        if p not in self._folder_runs:
            self._folder_runs.append(p)
        self.refresh_runs(select=_FOLDER_ITEM + str(p))

    def run_names(self) -> list[str]:
        return [self.run_combo.itemText(i) for i in range(self.run_combo.count())]

    def select_run(self, run: str) -> bool:
        idx = self.run_combo.findData(run)
        if idx >= 0:
            self.run_combo.setCurrentIndex(idx)
        return idx >= 0

    def selected_run_dir(self) -> Path | None:
        data = self.run_combo.currentData()
        if data is None:
            return None
        if str(data).startswith(_FOLDER_ITEM):
            return Path(str(data)[len(_FOLDER_ITEM):])
        ws = self.workspace
        return ws.model_dir(str(data)) if ws is not None else None

    def _ask_run_folder(self) -> None:
        path = QtWidgets.QFileDialog.getExistingDirectory(self, text.RUN_FOLDER_FILTER)
        if path:
            self.add_run_folder(path)

    # -- prediction ----------------------------------------------------------------------------------
    def is_running(self) -> bool:
        """A prediction is computing, or its maps are about to be added."""
        return self.worker is not None or self._pending_result is not None

    def build_request(self) -> PredictionRequest:
        """What to predict now (read on the main thread); raises BodyageError when nothing can
        be predicted."""
        state = self.window.state
        base = state.base_layer
        if base is None:
            raise BodyageError(text.NO_SUBJECT)
        run_dir = self.selected_run_dir()
        if run_dir is None:
            raise BodyageError(text.NO_RUN)
        if not (run_dir / "config.json").exists():
            raise BodyageError("not a trained run (no config.json)", path=run_dir,
                               hint="train it (Analysis > Train model...) or choose another "
                                    "run folder")
        ws = self.workspace
        sid = getattr(self.window, "current_subject", None)
        if ws is not None and sid:
            subj = ws.db.get_subject(sid)
            data = self.run_combo.currentData()
            run_id = None if str(data).startswith(_FOLDER_ITEM) else str(data)
            return PredictionRequest(run_dir=run_dir, subject_id=sid, workspace=ws,
                                     subject=subj, age=subj.age, device=self.device,
                                     torch_threads=self.torch_threads, run_id=run_id)
        from bodyage_core.inference.ensemble import AgeRun

        channels = tuple(AgeRun(run_dir).spec.channels)
        return PredictionRequest(run_dir=run_dir, subject_id=base.name,
                                 volume=_image_volume(state, channels), device=self.device,
                                 torch_threads=self.torch_threads)

    def predict(self) -> bool:
        """Start predicting the open subject in the background. Returns False (after
        reporting why) when it cannot start."""
        if self.is_running():
            self.status_label.setText(text.BUSY)
            return False
        try:
            request = self.build_request()
        except BodyageError as err:
            self._report(err)
            return False
        self._request_base = self.window.state.base_layer.volume
        worker = QtWorker(lambda rep: predict_subject(request, rep), parent=self)
        worker.progress_changed.connect(self._on_progress)
        worker.finished.connect(self._on_finished)
        worker.failed.connect(self._on_failed)
        worker.cancelled.connect(self._on_cancelled)
        worker.done.connect(self._on_done)
        self.worker = worker
        self.predict_button.setEnabled(False)
        self.cancel_button.setEnabled(True)
        self.progress.setValue(0)
        self.status_label.setText(f"predicting {request.subject_id} with "
                                  f"{request.run_dir.name} ...")
        self.prediction_started.emit(request.subject_id)
        worker.start()
        return True

    def cancel(self) -> None:
        if self.worker is not None:
            self.worker.cancel()
            self.status_label.setText("cancelling ...")

    _STAGE_SPAN = {"load": (0, 15), "predict": (15, 45), "gradcam": (45, 95),
                   "resample": (95, 99), "store": (99, 100)}

    def _on_progress(self, ev) -> None:
        lo, hi = self._STAGE_SPAN.get(ev.stage, (0, 100))
        f = ev.fraction if ev.fraction is not None else 0.0
        self.progress.setValue(int(lo + (hi - lo) * f))
        msg = f"{ev.stage}: {ev.message}" if ev.message else ev.stage
        self.status_label.setText(msg)

    #: ms between showing the numbers and adding the maps: two short event-loop turns (each
    #: with its repaint) instead of one long one
    MAPS_DELAY_MS = 25

    def _on_finished(self, result: PredictionResult) -> None:
        self.result = result
        self.progress.setValue(100)
        self._show_values(result)
        self.status_label.setText(f"{result.subject_id}: done in {result.seconds:.1f} s")
        self._pending_result = result
        if result.stored_row is not None:
            self.status_label.setText(f"{result.subject_id}: done in {result.seconds:.1f} s; "
                                      f"stored in cohort.sqlite (run {result.run})")
            stored = getattr(self.window, "prediction_stored", None)
            if stored is not None:
                stored(result.subject_id, result.stored_row)
        QtCore.QTimer.singleShot(self.MAPS_DELAY_MS, self._finish_maps)

    def _finish_maps(self) -> None:
        result, self._pending_result = self._pending_result, None
        if result is None:
            return
        base = self.window.state.base_layer
        if getattr(self.window, "display_space", "subject") == "atlas" and \
                result.gradcam is not None:
            # the maps are on the subject's grid: shown when the view is back in its space
            self._maps_waiting = result
            self.map_label.setText("Grad-CAM computed in the subject's space: switch back to "
                                   "subject space (View > Atlas space, F6) to see it")
        elif base is None or base.volume is not self._request_base:
            self.map_label.setText(text.SUBJECT_CHANGED)
        elif result.gradcam is not None:
            self._add_maps(result)
        else:
            self.map_label.setText("; ".join(result.notes))
        self.prediction_finished.emit(result)

    def _on_space_changed(self, space: str) -> None:
        if self._maps_waiting is None or space != "subject":
            return  # nothing waits, or still in atlas space: keep waiting
        result, self._maps_waiting = self._maps_waiting, None
        base = self.window.state.base_layer
        if base is not None and base.volume is self._request_base:
            self._add_maps(result)

    def _on_failed(self, message: str) -> None:
        self.progress.setValue(0)
        self.status_label.setText("failed")
        self._report(message)
        self.prediction_failed.emit(message)

    def _on_cancelled(self) -> None:
        self.progress.setValue(0)
        self.status_label.setText(text.CANCELLED)
        self.prediction_cancelled.emit()

    def _on_done(self) -> None:
        w, self.worker = self.worker, None
        self.predict_button.setEnabled(True)
        self.cancel_button.setEnabled(False)
        if w is not None:
            w.deleteLater()

    def _report(self, err: BaseException | str) -> None:
        rep = getattr(self.window, "report_error", None)
        if rep is not None:
            rep(err)
        else:
            self.status_label.setText(str(err))

    # -- results -------------------------------------------------------------------------------------
    def _show_values(self, r: PredictionResult) -> None:
        v = self.values
        v["subject"].setText(r.subject_id)
        v["run"].setText(f"{r.run}" + (f"  (fold {r.fold + 1}, out of fold)" if r.fold is not None
                                       else ""))
        v["raw"].setText(f"{r.mean:.1f} ± {r.sigma:.1f} y")
        v["corrected"].setText(f"{r.corrected:.1f} ± {r.sigma:.1f} y")
        v["age"].setText("–" if r.age is None else f"{r.age:.1f} y")
        if r.gap is None:
            v["gap"].setText("– (no chronological age)")
        else:
            v["gap"].setText(f"{r.gap:+.1f} y corrected  ({r.raw_gap:+.1f} y raw)")
        spread = float(np.std(r.member_mu)) if len(r.member_mu) > 1 else 0.0
        v["members"].setText(f"{len(r.member_mu)}: " +
                             ", ".join(f"{m:.1f}" for m in r.member_mu) +
                             (f"  (sd {spread:.1f} y)" if len(r.member_mu) > 1 else ""))
        x = np.arange(1, len(r.member_mu) + 1, dtype=float)
        mu = np.asarray(r.member_mu, float)
        sd = np.nan_to_num(np.asarray(r.member_sigma, float))
        self.member_points.setData(x=x, y=mu)
        self.member_plot.setVisible(True)
        self.member_errors.setData(x=x, y=mu, height=2 * sd)
        self.mean_line.setValue(r.mean)
        self.mean_line.show()
        if r.age is not None:
            self.age_line.setValue(r.age)
            self.age_line.show()
        else:
            self.age_line.hide()
        ys = [*mu - sd, *mu + sd, r.mean] + ([r.age] if r.age is not None else [])
        lo, hi = float(np.nanmin(ys)), float(np.nanmax(ys))
        pad = max(1.0, 0.15 * (hi - lo))
        self.member_plot.setXRange(0.5, len(mu) + 0.5, padding=0)
        step = max(1, len(mu) // 10)
        self.member_plot.getPlotItem().getAxis("bottom").setTicks(
            [[(float(i), str(i)) for i in range(1, len(mu) + 1, step)]])
        self.member_plot.setYRange(lo - pad, hi + pad, padding=0)

    def values_text(self) -> dict[str, str]:
        return {k: lab.text() for k, lab in self.values.items()}

    def _add_maps(self, r: PredictionResult) -> None:
        """Replace this panel's previous overlays by the new Grad-CAM maps (ReLU shown, signed
        hidden); on error nothing stays half-added."""
        state = self.window.state
        for lay in self.layers:
            if lay in state.layers:
                state.remove_layer(lay)
        self.layers = []
        name = f"gradcam_{r.run}"
        added = []
        for vol, nm, signed, disp in (
                (r.gradcam_signed, f"gradcam_signed_{r.run}", True, r.gradcam_signed_settings),
                (r.gradcam, name, False, r.gradcam_settings)):
            disp = disp or gradcam_display(vol, signed=signed)
            for lay in list(state.layers):     # the stored map of the same run, if shown
                if lay.name == nm and lay.kind == "overlay":
                    lay.visible = False
            lay = self.window.add_overlay_volume(vol, nm, visible=not signed, **disp)
            if lay is None:
                for a in added:
                    state.remove_layer(a)
                return
            added.append(lay)
        self.layers = added
        state.set_active_layer(added[-1])
        self.map_label.setText(
            f"Overlays: {added[-1].name} (Grad-CAM {r.layer}, ReLU, heat, transparent below "
            f"{added[-1].threshold:.3g}) and {added[0].name} (signed: red older, blue younger; "
            "hidden — tick it in Layers). Raw values, years.")


def _image_volume(state, channels: tuple[str, ...]) -> Volume:
    """The input for a run from what the viewer shows (no workspace): the base image when it
    has the run's channels (by name, or by count), else the layers on the base grid named like
    the run's channels (a ``water`` and a ``fat`` file opened together)."""
    base = state.base_layer
    bv = base.volume
    if all(c in bv.channels for c in channels) or bv.n_channels == len(channels):
        return bv
    by_name = {}
    for lay in state.layers:
        if lay.kind == "labels" or not lay.volume.same_grid(bv):
            continue
        for c in channels:
            if c not in by_name and (lay.name == c or c in lay.volume.channels):
                by_name[c] = lay.volume.channel(c) if c in lay.volume.channels \
                    else lay.volume.data[0]
    if all(c in by_name for c in channels):
        return Volume(np.stack([by_name[c] for c in channels]), bv.affine, tuple(channels),
                      dict(bv.provenance), dict(bv.metadata))
    return bv  # predict_subject explains what is missing
