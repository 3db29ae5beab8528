"""The prediction panel: the age of the subject on screen, and Predict in the background.

What predicts is chosen in the run box (:mod:`bodyage_gui.panels.qt_model_choice`):
**Automatic** (the model found by name — shipped, ``BODYAGE_MODEL_PATH``, the user's folder —
whose channels and envelope fit the scan, or a one-line reason per model why none does), a
workspace run, a model bundle, or a run / model folder.

"Predict" (Analysis menu, Ctrl+P) starts :func:`bodyage_gui.workers.prediction.predict_subject`
in a :class:`~bodyage_gui.workers.qt_worker.QtWorker`: the model is loaded and the networks run
in the worker thread; the panel shows a progress bar and a Cancel button and the window stays
responsive. Only the result crosses to the main thread: the panel shows the predicted age ± sigma
(1 SD) raw and bias-corrected, the 95 % interval, the chronological age, the gap, every member
and the QC flags (:mod:`~bodyage_gui.panels.qt_prediction_result`), and puts the Grad-CAM
(ReLU, ``heat``) and the signed Grad-CAM (``bwr``, hidden) on the viewer in place of any map of
the same name (never a second copy). For a workspace subject predicted with one of the
workspace's runs the prediction is also written to ``cohort.sqlite`` (by the worker, last, so a
cancelled run writes nothing) and the subject browser's row shows it.

**The panel follows the subject on screen.** When another subject or image is shown, the
numbers go at once: the stored prediction of the selected run for that subject (read from
``cohort.sqlite``), else one computed for it in this window, else nothing and a note to press
Predict. A prediction that finishes after the user moved on (PgDown) is kept for its subject
(and stored, where it is stored) but not shown over another subject, and its maps are not
added. Finishing while the viewer shows atlas space, the maps wait until it is back in the
subject's space. A failure goes to ``window.report_error`` and the viewer state is not touched;
so does a cancelled run.

The panel needs a *window* offering the main window's hook points: ``state``, ``workspace``,
``current_subject``, ``add_overlay_volume(volume, name, **display)``, ``report_error(err)`` and
optionally the signals ``workspace_changed`` / ``display_changed`` / ``space_changed``, the
attribute ``display_space`` and the method ``prediction_stored(subject_id, row)``.
"""

from __future__ import annotations

import json
from collections import OrderedDict
from pathlib import Path
from typing import Any

from PySide6 import QtCore, QtWidgets

from bodyage_core.errors import BodyageError
from bodyage_core.viewer.scan import model_input_volume, scan_id, scan_volume
from bodyage_gui.panels.qt_model_choice import (
    ModelChoice,
    QtModelChoice,
    complete_runs,
    default_run,
)
from bodyage_gui.panels.qt_prediction_result import QtPredictionResult, ShownPrediction
from bodyage_gui.workers import analysis_strings as text
from bodyage_gui.workers.prediction import (
    PredictionRequest,
    PredictionResult,
    gradcam_display,
    predict_subject,
)
from bodyage_gui.workers.qt_worker import QtWorker

__all__ = ["QtPredictionPanel", "complete_runs", "default_run"]

_Qt = QtCore.Qt
#: predictions computed in this window, kept per displayed subject / image and model
_KEEP_COMPUTED = 32


def model_channels(model_dir: Path) -> tuple[str, ...]:
    """The input channels of a run folder (``config.json``) or a bundle (``model.json``),
    read without loading the networks; raises BodyageError when it is neither."""
    for name in ("model.json", "config.json"):
        p = Path(model_dir) / name
        if p.is_file():
            try:
                return tuple(json.loads(p.read_text())["input"]["channels"])
            except (OSError, ValueError, KeyError, TypeError) as exc:
                raise BodyageError(f"damaged {name} ({exc})", path=p,
                                   hint="train or export the model again") from None
    raise BodyageError("not a trained run or model (no config.json or model.json)",
                       path=model_dir, hint="train it (Analysis > Train model...) or choose "
                                            "another run or model folder")


def _card_name(model_dir: Path) -> str:
    """The name a model bundle's predictions are stored under in a workspace (its card's)."""
    from bodyage_core.inference.bundle import read_card

    return str(read_card(model_dir).get("name", Path(model_dir).name))


def _header_age(volume: Any) -> float | None:
    age = (volume.metadata or {}).get("age")
    try:
        return None if age is None else float(age)
    except (TypeError, ValueError):
        return None


class QtPredictionPanel(QtWidgets.QWidget):
    """Predict the open subject with a chosen model (see the module docstring).

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
    #: whether a model can predict what is on screen (:meth:`model_applies`) changed: the
    #: window shows the Prediction dock only then
    applies_changed = QtCore.Signal(bool)

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
        self._request_key: Any = None        # the displayed subject / image it is for
        self._request_choice: str | None = None
        self._request_label = ""
        self._shown_volume: Any = None
        self._pending_result: PredictionResult | None = None
        self._maps_waiting: PredictionResult | None = None  # finished in atlas space
        self._shown_key: Any = None
        #: (display key, run box data) -> (volume kept alive, ShownPrediction)
        self._computed: OrderedDict[tuple, tuple[Any, ShownPrediction]] = OrderedDict()
        #: why Automatic chose the model of the last prediction
        self.auto_reason = ""
        #: whether a model applies to what is on screen (None: not worked out yet) and why not
        self.applies: bool | None = None
        self.applies_reason = ""
        self._applies_cache: dict[tuple, tuple[bool, str]] = {}

        self.choice = QtModelChoice()
        self.run_combo = self.choice.combo
        self.folder_button = self.choice.folder_button
        self.choice.folder_chosen.connect(self.add_run_folder)
        self.choice.changed.connect(self._on_choice_changed)
        self.predict_button = QtWidgets.QPushButton("Predict")
        self.predict_button.setToolTip("predicted age and Grad-CAM of the subject on screen "
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
        self.result_view = QtPredictionResult()
        self.values = self.result_view.values
        self.member_plot = self.result_view.member_plot
        self.member_points = self.result_view.member_points
        self.map_label = QtWidgets.QLabel("")
        self.map_label.setWordWrap(True)

        buttons = QtWidgets.QHBoxLayout()
        buttons.addWidget(self.predict_button)
        buttons.addWidget(self.cancel_button)
        lay = QtWidgets.QVBoxLayout(self)
        lay.addWidget(self.choice)
        lay.addLayout(buttons)
        lay.addWidget(self.progress)
        lay.addWidget(self.status_label)
        lay.addWidget(self.result_view)
        lay.addWidget(self.map_label)
        lay.addStretch(1)

        for sig_name, slot in (("workspace_changed", self._workspace_changed),
                               ("space_changed", self._on_space_changed),
                               ("display_changed", self.follow_display)):
            sig = getattr(window, sig_name, None)
            if sig is not None:
                sig.connect(slot)
        self.refresh_runs()

    # -- runs and models ------------------------------------------------------------------------
    @property
    def workspace(self):
        return getattr(self.window, "workspace", None)

    def refresh_runs(self, select: str | None = None) -> None:
        """Re-read the workspace's runs and the models found by name (keep chosen folders);
        select ``select`` (a run name, or an item's data) or keep / choose the default."""
        self.choice.refresh(self.workspace, select)
        self.runs_changed.emit()

    def _workspace_changed(self, ws) -> None:
        """Another workspace: its default run (the one with the latest predictions), else
        Automatic."""
        runs = complete_runs(ws)
        self.refresh_runs(select=default_run(ws, runs) or self.run_combo.currentData())

    def add_run_folder(self, path: str | Path) -> None:
        """Offer a run folder (``models/<run>/``) or a model folder and select it."""
        self.choice.add_folder(path, self.workspace)

    def run_names(self) -> list[str]:
        """The workspace's runs in the run box."""
        return self.choice.names("run")

    def model_names(self) -> list[str]:
        """The models found by name in the run box (e.g. ``wholebody-synthetic 1.0.0
        (shipped)``)."""
        return self.choice.names("model")

    def select_run(self, run: str) -> bool:
        return self.choice.select(run)

    def select_model(self, name: str) -> bool:
        return self.choice.select_model(name)

    def select_auto(self) -> bool:
        from bodyage_gui.panels.qt_model_choice import AUTO

        return self.choice.select(AUTO)

    def selected(self) -> ModelChoice | None:
        return self.choice.current(self.workspace)

    def selected_run_dir(self) -> Path | None:
        c = self.selected()
        return None if c is None else c.path

    def _on_choice_changed(self) -> None:
        self._shown_key = None          # another model: show its prediction of this subject
        self.follow_display()

    # -- following the display ------------------------------------------------------------------
    def display_key(self) -> Any:
        """Who is on screen: ``('subject', id)`` for a workspace subject (in its own or in
        atlas space), ``('image', id(base volume))`` for files, None for nothing."""
        sid = getattr(self.window, "current_subject", None)
        if sid and self.workspace is not None:
            return ("subject", sid)
        base = self.window.state.base_layer
        return None if base is None else ("image", id(base.volume))

    def model_applies(self) -> tuple[bool, str]:
        """Whether a model can predict what is on screen, and why not: a workspace run or a
        model chosen in the run box applies (the user asked for it; Predict says what does not
        fit), as does a stored prediction of the subject; Automatic applies when a model found
        by name fits the scan (:func:`bodyage_core.inference.files.choose_model`, its channels
        and envelope: not a CT, an abdomen slab or an empty window for the shipped models).
        Remembered per scan and choice (a few ms a scan)."""
        base = self.window.state.base_layer
        if base is None:
            return False, text.NO_SUBJECT
        c = self.selected()
        if c is None:
            return False, text.NO_RUN
        if c.kind != "auto":
            return True, ""
        key = self.display_key()
        cache_key = (key, id(base.volume), self.run_combo.currentData())
        if cache_key in self._applies_cache:
            return self._applies_cache[cache_key]
        if key is not None and self._stored(key) is not None:
            out = (True, "")
        else:
            from bodyage_core.inference.files import choose_model

            ws, sid = self.workspace, getattr(self.window, "current_subject", None)
            try:
                subj = ws.db.get_subject(sid) if ws is not None and sid else None
                age = subj.age if subj is not None else _header_age(base.volume)
                choose_model(scan_volume(self.window.state), age)
                out = (True, "")
            except BodyageError as err:
                out = (False, str(err))
            except Exception as err:  # noqa: BLE001 - an odd scan: Predict will say what
                out = (False, f"{type(err).__name__}: {err}")
        self._applies_cache[cache_key] = out
        while len(self._applies_cache) > _KEEP_COMPUTED:
            self._applies_cache.pop(next(iter(self._applies_cache)))
        return out

    def update_applies(self, force: bool = False) -> bool:
        """Work out :meth:`model_applies` for what is on screen; emit ``applies_changed`` when
        it changed (or ``force``)."""
        ok, why = self.model_applies()
        self.applies_reason = why
        if force or ok != self.applies:
            self.applies = ok
            self.applies_changed.emit(ok)
        return ok

    def follow_display(self, *_: Any) -> None:
        """Show the age of what is on screen now (see the module docstring); nothing stale."""
        key = self.display_key()
        if key == self._shown_key:
            return
        self._follow(key)
        self.update_applies()

    def _follow(self, key: Any) -> None:
        self._shown_key = key
        base = self.window.state.base_layer
        self._shown_volume = None if base is None else base.volume   # keeps its id unique
        if self.worker is None and self._pending_result is None:
            self.progress.setValue(0)          # the last run's "done" was another subject's
            self.status_label.setText("")
        if key is None:
            self.result_view.clear()
            return
        kept = self._computed.get((key, self.run_combo.currentData()))
        if kept is not None:
            self.result_view.show_prediction(kept[1])
            return
        stored = self._stored(key)
        if stored is not None:
            self.result_view.show_prediction(stored)
            return
        who = key[1] if key[0] == "subject" else scan_id(base)
        self.result_view.clear(text.NO_PREDICTION_YET.format(subject=who))

    def _stored(self, key: Any) -> ShownPrediction | None:
        """The stored prediction of the selected run (a model: its name; Automatic: the run
        the workspace shows by default) for the subject on screen."""
        ws = self.workspace
        if ws is None or key[0] != "subject":
            return None
        c = self.selected()
        run_id = c.run_id if c is not None else None
        auto = c is not None and c.kind == "auto"
        try:
            if auto:
                run_id = ws.db.latest_run()
            rows = ws.db.predictions(run_id, subject_id=key[1]) if run_id else []
            if not rows and auto:
                # Automatic: else the subject's latest stored prediction, of whichever model
                # (an Automatic Predict stores under the model it chose)
                rows = sorted(ws.db.predictions(None, subject_id=key[1]),
                              key=lambda r: r.get("created") or 0)[-1:]
        except Exception:  # noqa: BLE001 - a damaged or locked index: show nothing
            return None
        return ShownPrediction.from_row(rows[0], rows[0]["run_id"]) if rows else None

    def _keep(self, key: Any, data: Any, shown: ShownPrediction, volume: Any) -> None:
        self._computed[(key, data)] = (volume, shown)
        self._computed.move_to_end((key, data))
        while len(self._computed) > _KEEP_COMPUTED:
            self._computed.popitem(last=False)

    # -- prediction -----------------------------------------------------------------------------
    def is_running(self) -> bool:
        """A prediction is computing, or its maps are about to be added."""
        return self.worker is not None or self._pending_result is not None

    def _resolve(self, choice: ModelChoice, age: float | None) -> tuple[Path, str]:
        """The model folder of a choice and its label; Automatic picks the model that fits."""
        if choice.kind == "auto":
            from bodyage_core.inference.bundle import read_card
            from bodyage_core.inference.files import choose_model

            vol = scan_volume(self.window.state)
            model_dir, reason = choose_model(vol, age)
            self.auto_reason = reason
            card = read_card(model_dir)
            return Path(model_dir), f"{card['name']} {card['version']}"
        if choice.path is None:
            raise BodyageError(text.NO_RUN)
        if choice.kind == "model":
            from bodyage_core.inference.bundle import read_card

            card = read_card(choice.path)
            return choice.path, f"{card['name']} {card['version']}"
        return choice.path, choice.name

    def build_request(self) -> tuple[PredictionRequest, str]:
        """What to predict now and the model's label (read on the main thread); raises
        BodyageError when nothing can be predicted."""
        state = self.window.state
        base = state.base_layer
        if base is None:
            raise BodyageError(text.NO_SUBJECT)
        choice = self.selected()
        if choice is None:
            raise BodyageError(text.NO_RUN)
        ws = self.workspace
        sid = getattr(self.window, "current_subject", None)
        subj = ws.db.get_subject(sid) if ws is not None and sid else None
        # a plain scan's chronological age: its header's (DICOM PatientAge), when kept
        age = subj.age if subj is not None else _header_age(base.volume)
        run_dir, label = self._resolve(choice, age)
        channels = model_channels(run_dir)
        if subj is not None:
            # a model bundle (Automatic, or one chosen by name) is stored under its name, as
            # `bodyage predict WS --model NAME` stores it; a workspace run under its own
            bundle = choice.kind in ("auto", "model")
            run_id = _card_name(run_dir) if bundle else choice.run_id
            return PredictionRequest(run_dir=run_dir, subject_id=sid, workspace=ws,
                                     subject=subj, age=subj.age, device=self.device,
                                     torch_threads=self.torch_threads,
                                     run_id=run_id, add_run=bundle), label
        return PredictionRequest(run_dir=run_dir, subject_id=scan_id(base),
                                 volume=model_input_volume(state, channels), age=age,
                                 device=self.device, torch_threads=self.torch_threads), label

    def predict(self) -> bool:
        """Start predicting the subject on screen in the background. Returns False (after
        reporting why) when it cannot start."""
        if self.is_running():
            self.status_label.setText(text.BUSY)
            return False
        try:
            request, label = self.build_request()
        except BodyageError as err:
            self._report(err)
            return False
        self._request_base = self.window.state.base_layer.volume
        self._request_key = self.display_key()
        self._request_choice = self.run_combo.currentData()
        self._request_label = label
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
        why = f" (automatic: {self.auto_reason})" if str(self._request_choice).startswith(
            "auto:") else ""
        self.status_label.setText(f"predicting {request.subject_id} with {label}{why} ...")
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
        shown = ShownPrediction.from_result(result, self._request_label)
        self._keep(self._request_key, self._request_choice, shown, self._request_base)
        here = self._request_key == self.display_key()
        if here:
            self._shown_key = self._request_key
            self.result_view.show_prediction(shown)
        msg = f"{result.subject_id}: done in {result.seconds:.1f} s"
        if result.stored_row is not None:
            msg += f"; stored in cohort.sqlite (run {result.run})"
            stored = getattr(self.window, "prediction_stored", None)
            if stored is not None:
                stored(result.subject_id, result.stored_row)
        if not here:
            msg += text.FINISHED_FOR_OTHER
        self.status_label.setText(msg)
        self._pending_result = result
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

    # -- results ---------------------------------------------------------------------------------
    def values_text(self) -> dict[str, str]:
        return self.result_view.values_text()

    def _add_maps(self, r: PredictionResult) -> None:
        """Put the new Grad-CAM maps (ReLU shown, signed hidden) in place of this panel's
        previous overlays and of any map of the same name (a stored map of the same run
        opened with the subject): one layer each, never a second copy. On error nothing stays
        half-added."""
        state = self.window.state
        names = (f"gradcam_signed_{r.run}", f"gradcam_{r.run}")
        added = []
        # one change for the maps, not one per layer removed or added: every view, the layer
        # panel and its contrast controls (histogram, presets) redo their work on each, in the
        # GUI thread (the longest stall of a prediction)
        ev = state.events
        with ev.layers_changed.blocked(), ev.active_layer_changed.blocked():
            for lay in list(state.layers):
                if lay in self.layers or (lay.kind == "overlay" and lay.name in names):
                    state.remove_layer(lay)
            self.layers = []
            for vol, nm, signed, disp in (
                    (r.gradcam_signed, names[0], True, r.gradcam_signed_settings),
                    (r.gradcam, names[1], False, r.gradcam_settings)):
                disp = disp or gradcam_display(vol, signed=signed)
                lay = self.window.add_overlay_volume(vol, nm, visible=not signed, **disp)
                if lay is None:
                    for a in added:
                        state.remove_layer(a)
                    added = []
                    break
                added.append(lay)
        ev.layers_changed.emit()
        if len(added) < 2:
            ev.active_layer_changed.emit(state.active_layer)
            return
        self.layers = added
        state.set_active_layer(added[-1])
        ev.active_layer_changed.emit(added[-1])
        self.map_label.setText(
            f"Overlays: {added[-1].name} (Grad-CAM {r.layer}, ReLU, heat, transparent below "
            f"{added[-1].threshold:.3g}) and {added[0].name} (signed: red older, blue younger; "
            "hidden — tick it in Layers). Raw values, years.")
