"""Wire the analysis parts (prediction panel, cohort panel, training wizard) into the main window
through its hook points only: ``add_panel``, ``analysis_menu``, ``workspace``,
``workspace_changed``, ``refresh_subjects`` and ``report_error``.

``install_analysis(window)`` is the one call the main window makes; it returns an
:class:`AnalysisTools` holding the panels and actions (also kept as ``window.analysis``).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any

from PySide6 import QtCore, QtGui, QtWidgets

from bodyage_gui import bindings
from bodyage_gui.panels.qt_cohort_panel import QtCohortPanel
from bodyage_gui.panels.qt_prediction_panel import QtPredictionPanel
from bodyage_gui.workers import analysis_strings as text

_Qt = QtCore.Qt


@dataclass
class AnalysisTools:
    """What :func:`install_analysis` added to a window."""

    window: Any
    prediction_panel: QtPredictionPanel
    cohort_panel: QtCohortPanel
    actions: dict[str, QtGui.QAction] = field(default_factory=dict)
    wizard: Any = None
    #: set once the prediction's libraries are imported (see :func:`warm_up_imports`)
    warmed_up: threading.Event = field(default_factory=threading.Event)
    close_guard: Any = None
    warm_up_timer: Any = None

    def start_warm_up(self) -> threading.Thread:
        """Import torch and the prediction modules in a background thread."""
        from bodyage_gui.workers.prediction import warm_up_imports

        def run():
            try:
                warm_up_imports()
            finally:
                self.warmed_up.set()

        th = threading.Thread(target=run, name="bodyage-warm-up", daemon=True)
        th.start()
        return th

    def open_training_wizard(self):
        """Show the training wizard (non-modal); returns it."""
        from bodyage_gui.wizard.qt_training_wizard import QtTrainingWizard

        if self.wizard is not None and self.wizard.isVisible():
            self.wizard.raise_()
            return self.wizard
        wiz = QtTrainingWizard(self.window.workspace, parent=self.window)
        wiz.setWindowFlag(_Qt.WindowType.Window, True)
        wiz.run_finished.connect(self.on_run_finished)
        self.wizard = wiz
        wiz.show()
        return wiz

    def on_run_finished(self, run: str) -> None:
        """A new run exists: offer it for prediction (selected) and in the cohort panel."""
        self.prediction_panel.refresh_runs(select=run)
        self.cohort_panel.refresh_runs()
        refresh = getattr(self.window, "refresh_subjects", None)
        if refresh is not None:
            refresh()

    def show_cohort(self) -> None:
        dock = getattr(self.window, "panel_docks", {}).get(text.COHORT_PANEL)
        if dock is not None:
            dock.show()
            dock.raise_()
            self.fit_cohort()
        self.cohort_panel.refresh_runs()

    def fit_cohort(self) -> None:
        """Give the cohort panel, brought forward (Analysis > Cohort panel, or its tab), most
        of the right-hand column and the width of its tables: its scatter plot is read, not
        glimpsed (at the layer panel's height it was ~130 px, the axis title cut off)."""
        dock = getattr(self.window, "panel_docks", {}).get(text.COHORT_PANEL)
        if dock is not None and dock.isVisible():
            self._cohort_fitted = True
            # its scatter plot and tables get most of the right-hand column (the layer
            # controls it is tabbed with need far less)
            docks = getattr(self.window, "panel_docks", {})
            pred = docks.get(text.PREDICTION_PANEL)
            if isinstance(self.window, QtWidgets.QMainWindow) and pred is not None \
                    and pred.isVisible() and not dock.isFloating():
                h = max(self.window.height(), 600)
                self.window.resizeDocks([dock, pred], [int(h * 0.75), int(h * 0.1)],
                                        _Qt.Orientation.Vertical)
                # wide enough for the tables' columns (they were cut off at the default
                # size), within what leaves the views half the window
                need = self.cohort_panel.needed_width()
                self.window.resizeDocks([dock], [min(need, self.window.width() // 2)],
                                        _Qt.Orientation.Horizontal)

    def _tab_changed(self, title: str, visible: bool) -> None:
        """The Cohort tab brought forward by a click gets its room as from the menu; the
        Layers tab brought back refits the column for the layer and prediction panels."""
        if not visible:
            return
        ctx = self.window if isinstance(self.window, QtCore.QObject) else None
        if ctx is None:
            return
        if title == text.COHORT_PANEL:   # (the window as context: no call once it is gone)
            QtCore.QTimer.singleShot(0, ctx, self.fit_cohort)
        elif getattr(self, "_cohort_fitted", False):
            self._cohort_fitted = False
            fit = getattr(self.window, "fit_docks", None)
            if fit is not None:
                QtCore.QTimer.singleShot(0, ctx, fit)

    def shutdown(self, wait_ms: int = 30000) -> None:
        """Stop background work (prediction, training) before the window goes away: cancel,
        then wait for the threads to end at their next progress point."""
        for owner in (self.prediction_panel, self.wizard):
            worker = getattr(owner, "worker", None) if owner is not None else None
            if worker is not None:
                worker.cancel()
                worker.wait(wait_ms)

    def on_prediction(self, _result) -> None:
        dock = getattr(self.window, "panel_docks", {}).get(text.PREDICTION_PANEL)
        if dock is not None:
            dock.show()
            dock.raise_()


class _CloseGuard(QtCore.QObject):
    """Event filter on the main window: on Close, stop the analysis threads first (a QThread
    destroyed while running aborts the process)."""

    def __init__(self, tools: AnalysisTools):
        super().__init__(tools.window)
        self.tools = tools

    def eventFilter(self, obj, ev) -> bool:  # noqa: N802
        if ev.type() == QtCore.QEvent.Type.Close:
            self.tools.shutdown()
        return False


def install_analysis(window: Any, warm_up_ms: int | None = 1500) -> AnalysisTools:
    """Dock the Prediction and Cohort panels and add Analysis menu actions: Predict (Ctrl+P),
    Cancel prediction, Train model..., Cohort panel, Population maps....

    ``warm_up_ms``: import torch and the prediction modules in a background thread this long
    after the event loop starts (None: not at all; the first prediction then imports them and
    the window stutters for up to ~0.5 s while torch loads).

    Idempotent: a window that has them already (``window.analysis``) gets the same tools back.
    """
    existing = getattr(window, "analysis", None)
    if isinstance(existing, AnalysisTools):
        return existing
    right = _Qt.DockWidgetArea.RightDockWidgetArea
    pred = QtPredictionPanel(window)
    cohort = QtCohortPanel(window)
    pred.setObjectName("prediction_panel")
    cohort.setObjectName("cohort_panel")
    scroll = QtWidgets.QScrollArea()          # a crowded dock scrolls instead of squashing
    scroll.setWidgetResizable(True)
    scroll.setFrameShape(QtWidgets.QFrame.Shape.NoFrame)
    scroll.setWidget(pred)
    pred_dock = window.add_panel(text.PREDICTION_PANEL, scroll, right)
    dock_args = {"tabify_with": "Layers"} if "Layers" in getattr(window, "panel_docks", {}) \
        else {}
    # (not in a scroll area: its word-wrapped labels make QScrollArea size it to its full
    # preferred height, a scroll bar over the plot; its minimum height is kept small instead
    # so that, tabbed with the layer panel, it does not squeeze the prediction panel below)
    try:
        window.add_panel(text.COHORT_PANEL, cohort, right, **dock_args)
    except TypeError:  # an add_panel without tabify_with
        window.add_panel(text.COHORT_PANEL, cohort, right)
    if isinstance(window, QtWidgets.QMainWindow) and "Layers" in window.panel_docks:
        # the right docks as narrow as the cohort panel allows: room for the views
        window.resizeDocks([window.panel_docks["Layers"]], [400], _Qt.Orientation.Horizontal)
        # the layer controls are the tab in front (the cohort panel comes forward from
        # Analysis > Cohort panel)
        window.panel_docks["Layers"].raise_()
        # (the heights: QtMainWindow.fit_docks, once the window is shown)
    tools = AnalysisTools(window, pred, cohort)
    for title in (text.COHORT_PANEL, "Layers"):
        dock = getattr(window, "panel_docks", {}).get(title)
        if isinstance(dock, QtWidgets.QDockWidget):
            dock.visibilityChanged.connect(lambda vis, t=title: tools._tab_changed(t, vis))
    menu: QtWidgets.QMenu = window.analysis_menu

    def action(name: str, label: str, slot, shortcut=None, tip: str = "") -> QtGui.QAction:
        a = menu.addAction(label)
        a.triggered.connect(lambda _=False: slot())
        if shortcut:
            a.setShortcut(QtGui.QKeySequence(shortcut))
            a.setShortcutContext(_Qt.ShortcutContext.ApplicationShortcut)
        if tip:
            a.setStatusTip(tip)
        tools.actions[name] = a
        return a

    def predict() -> None:
        if isinstance(pred_dock, QtWidgets.QDockWidget):
            pred_dock.show()          # asked for: the panel says what it did, or why not
        pred.predict()

    action("predict", "&Predict open subject", predict, bindings.key_for("predict"),
           "ensemble prediction and Grad-CAM of the open subject in the background")
    if isinstance(pred_dock, QtWidgets.QDockWidget):
        # a calmer window: the Prediction dock only while a model can predict what is on
        # screen (a workspace run, a model chosen, or one found by name that fits the scan);
        # Predict (Ctrl+P) and View > Panels still bring it
        pred.applies_changed.connect(pred_dock.setVisible)
        first = QtCore.QTimer(pred)        # once the window is built (settings restored)
        first.setSingleShot(True)
        first.timeout.connect(lambda: pred.update_applies(force=True))
        first.start(0)
    cancel = action("cancel_prediction", "&Cancel prediction", pred.cancel)
    cancel.setEnabled(False)
    pred.prediction_started.connect(lambda _s: cancel.setEnabled(True))
    for sig in (pred.prediction_finished, pred.prediction_failed, pred.prediction_cancelled):
        sig.connect(lambda *_: cancel.setEnabled(False))
    pred.prediction_finished.connect(tools.on_prediction)
    menu.addSeparator()
    action("train", "&Train model...", tools.open_training_wizard, bindings.key_for("train"),
           "train an age model on the open workspace (wizard)")
    menu.addSeparator()
    action("cohort", "C&ohort panel", tools.show_cohort)
    action("gap_maps", "Population &maps (accelerated vs decelerated)...",
           lambda: cohort.show_gap_maps())
    if isinstance(window, QtCore.QObject):
        tools.close_guard = _CloseGuard(tools)
        window.installEventFilter(tools.close_guard)
    if warm_up_ms is not None and isinstance(window, QtCore.QObject):
        timer = QtCore.QTimer(window)
        timer.setSingleShot(True)
        timer.timeout.connect(tools.start_warm_up)
        timer.start(int(warm_up_ms))
        tools.warm_up_timer = timer     # stop() it to skip the warm-up (benchmarks)
    window.analysis = tools
    return tools
