"""The main window: a shell that builds the views, docks and menus around one
:class:`~bodyage_core.viewer.ViewerState` and hands the work to its components.

Components (each its own module): the views and their layout (:mod:`.views.qt_view_grid`),
opening files and drag and drop (:mod:`.actions.files`, :mod:`.actions.drop`), recent files,
sessions and screenshots (:mod:`.actions`), the workspace's subjects
(:mod:`.subjects`), subject / atlas space (:mod:`.space_switch`), the measuring tools and the
hover probe (:mod:`.tools`), the DICOM series browser (:mod:`.panels.qt_dicom_browser`) and the
menus (:mod:`.menus`). Background loads go through one "newest request wins" helper
(:mod:`.background`).

Hook points for other parts of the GUI (cohort panel, prediction worker, training wizard):

* :meth:`QtMainWindow.add_panel` docks a widget and lists it in View > Panels;
  :attr:`QtMainWindow.analysis_menu` is the menu for the analysis actions.
* :attr:`QtMainWindow.state` is the shared ViewerState; add result maps with
  :meth:`QtMainWindow.add_overlay_volume`.
* :attr:`QtMainWindow.workspace`, :attr:`QtMainWindow.current_subject` and the signals
  ``subject_changed(str)``, ``workspace_changed(object)`` and ``display_changed()`` (something
  else is on screen: a subject, files, a session, another space); :meth:`open_subject`,
  :meth:`refresh_subjects`, :meth:`prediction_stored`.
* :meth:`QtMainWindow.report_error` is the one place errors go (non-blocking dialog,
  ``last_error`` kept for tests); the state is never changed by a failed action.
* Subject / atlas space: :attr:`display_space`, :meth:`set_display_space`,
  :meth:`toggle_atlas_space`, ``space_changed``, :meth:`add_population_to_subject`.
"""

from __future__ import annotations

import concurrent.futures
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from PySide6 import QtCore, QtWidgets

from bodyage_core.errors import BodyageError, LoadError
from bodyage_core.viewer import PLANES, ViewerState, atlas_space
from bodyage_core.volume import Volume
from bodyage_gui import strings
from bodyage_gui.actions import screenshot, session
from bodyage_gui.actions.drop import FileDrop
from bodyage_gui.actions.files import FileActions
from bodyage_gui.actions.recent import RecentFiles
from bodyage_gui.actions.shortcuts import shortcuts_text, show_shortcuts
from bodyage_gui.menus import build_menus
from bodyage_gui.panels.qt_analysis import install_analysis
from bodyage_gui.panels.qt_layer_panel import QtLayerPanel
from bodyage_gui.panels.qt_readout_panel import QtReadoutPanel
from bodyage_gui.panels.qt_subject_browser import QtSubjectBrowser
from bodyage_gui.redraw import RedrawScheduler
from bodyage_gui.space_switch import DisplaySpaceSwitch
from bodyage_gui.subjects import SubjectNavigator
from bodyage_gui.tools import MeasureTools
from bodyage_gui.views.qt_colorbar import QtColorBar
from bodyage_gui.views.qt_lightbox import QtLightboxView
from bodyage_gui.views.qt_slice_view import QtSliceView
from bodyage_gui.views.qt_view_grid import QtViewGrid
from bodyage_gui.views.qt_volume_view import QtVolumeView

_Qt = QtCore.Qt
#: the right-hand docks' heights: the readout's lines, the prediction panel's minimum
READOUT_HEIGHT = 110
PREDICTION_MIN = 310


class QtMainWindow(QtWidgets.QMainWindow):
    """The viewer window.

    Parameters
    ----------
    state
        The state to follow (a new empty one when None).
    show_dialogs
        Show error dialogs (non-blocking). Errors are always kept in ``last_error``/``errors``.
    enable_3d
        Create the 3D view (it falls back to a placeholder where VTK cannot run anyway).
    settings
        QSettings for recent files/workspaces (default: organisation "bodyage", app "viewer").
    restore_settings
        Restore window geometry, docks and convention from ``settings`` (off for reproducible
        screenshots).
    """

    subject_changed = QtCore.Signal(str)
    #: ``'subject'`` or ``'atlas'`` once the display switched space
    space_changed = QtCore.Signal(str)
    workspace_changed = QtCore.Signal(object)
    #: something else is on screen (a subject, files, a session, another space)
    display_changed = QtCore.Signal()
    error_reported = QtCore.Signal(str)

    def __init__(self, state: ViewerState | None = None, show_dialogs: bool = True,
                 enable_3d: bool = True, settings: QtCore.QSettings | None = None,
                 restore_settings: bool = True, parent: QtWidgets.QWidget | None = None):
        super().__init__(parent)
        self.state = state if state is not None else ViewerState()
        self.show_dialogs = show_dialogs
        self.settings = settings or QtCore.QSettings(strings.ORG_NAME, "viewer")
        self.last_error: str | None = None
        self.errors: list[str] = []
        self.warnings: list[str] = []
        self.error_box: QtWidgets.QMessageBox | None = None
        self._io_pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="open")
        self.state.events.space_changed.connect(self.space_changed.emit)
        self.scheduler = RedrawScheduler(parent=self)
        self.setWindowTitle(strings.APP_NAME)
        self.resize(1400, 900)

        # views
        self.slice_views = {p: QtSliceView(self.state, p, self.scheduler) for p in PLANES}
        self.volume_view = (QtVolumeView(self.state, self.scheduler) if enable_3d
                            else _placeholder("3D view disabled"))
        self.lightbox_view = QtLightboxView(self.state, self.scheduler)
        self.colorbar = QtColorBar(self.state)
        self.view_grid = QtViewGrid(self.state, {**self.slice_views, "3d": self.volume_view,
                                                 "lightbox": self.lightbox_view})
        for v in self.slice_views.values():
            v.maximise_requested.connect(self.view_grid.toggle_maximise)
        self.views_widget = QtWidgets.QWidget()
        self.views_widget.setObjectName("views")
        self.views_widget.setStyleSheet("#views { background: black; }")
        self.views_widget.setMinimumSize(480, 320)
        outer = QtWidgets.QHBoxLayout(self.views_widget)
        outer.setContentsMargins(0, 0, 0, 0)
        outer.setSpacing(2)
        outer.addWidget(self.view_grid, 1)
        outer.addWidget(self.colorbar)
        self.setCentralWidget(self.views_widget)

        # panels and components
        self.panel_docks: dict[str, QtWidgets.QDockWidget] = {}
        self.layer_panel = QtLayerPanel(self.state)
        self.readout_panel = QtReadoutPanel(self.state)
        self.subject_browser = QtSubjectBrowser()
        self.recent = RecentFiles(self.settings, self)
        self.files = FileActions(self, self._io_pool)
        self.navigator = SubjectNavigator(self)
        self.preloader = self.navigator.preloader
        self.space_switch = DisplaySpaceSwitch(self, self._io_pool)
        self.tools = MeasureTools(self)
        self.drop = FileDrop(self)
        build_menus(self)
        self.layer_panel.space_check.clicked.connect(
            lambda on: self.set_display_space(atlas_space.ATLAS if on else atlas_space.SUBJECT))
        self.space_switch.update_controls()
        self.add_panel("Layers", self.layer_panel, _Qt.DockWidgetArea.RightDockWidgetArea)
        self.add_panel("Cursor", self.readout_panel, _Qt.DockWidgetArea.RightDockWidgetArea)
        self.add_panel("Subjects", self.subject_browser, _Qt.DockWidgetArea.LeftDockWidgetArea)
        self.panel_docks["Subjects"].hide()
        install_analysis(self)  # Prediction and Cohort panels, Analysis menu, training wizard

        ev = self.state.events
        self._subs = ((ev.layout_changed, self._layout_changed),
                      (ev.cursor_changed, self._status_cursor),
                      (ev.convention_changed, self._convention_changed),
                      (ev.interpolation_changed, self._interpolation_changed))
        for e, fn in self._subs:
            e.connect(fn)
        self._layout_changed(self.state.layout)
        #: geometry and docks are remembered only for a window that restored them (a
        #: screenshot or test window must not overwrite the user's layout when it closes)
        self.persist_settings = restore_settings
        if restore_settings:
            self._restore_settings()
        self.statusBar().showMessage(strings.NO_IMAGE if self.state.base_layer is None else "")

    # -- settings and docks ------------------------------------------------------------------
    def _restore_settings(self) -> None:
        """Window geometry, dock layout and (for an empty viewer) the display convention."""
        geo = self.settings.value("geometry")
        if isinstance(geo, QtCore.QByteArray) and not geo.isEmpty():
            self.restoreGeometry(geo)
        dock_state = self.settings.value("window_state")
        if isinstance(dock_state, QtCore.QByteArray) and not dock_state.isEmpty():
            self._docks_fitted = self.restoreState(dock_state)  # the user's own layout
            # ... less what belongs to a workspace: its subject list (shown when one opens)
            # and the cohort panel in front of the layer controls (a DICOM folder or a file
            # opened after a workspace session showed an empty subject table and "open a
            # workspace to see the cohort")
            self.panel_docks["Subjects"].hide()
            if "Layers" in self.panel_docks:
                self.panel_docks["Layers"].raise_()
        conv = self.settings.value("convention")
        if self.state.base_layer is None and conv in ("radiological", "neurological"):
            self.state.set_convention(conv)

    def fit_docks(self) -> None:
        """Default heights of the right-hand docks: the layer controls what they need, the
        readout its lines, the prediction panel room for its result."""
        docks = [self.panel_docks.get(t) for t in ("Layers", "Cursor", "Prediction")]
        if all(d is not None and d.isVisible() for d in docks):
            room = sum(d.height() for d in docks)
            readout = max(READOUT_HEIGHT, self.readout_panel.needed_height())
            layers = max(120, min(self.layer_panel.preferred_height() + 40,
                                  room - readout - PREDICTION_MIN))
            self.resizeDocks(docks, [layers, readout, max(PREDICTION_MIN,
                                                          room - layers - readout)],
                             _Qt.Orientation.Vertical)

    def fit_docks_if_cramped(self) -> None:
        """Refit the right-hand docks when the prediction panel has too little room to show
        its result: a layout restored from a session in which it was hidden or squeezed (a
        scan no model applied to) would otherwise leave the age below a scroll bar."""
        pred = self.panel_docks.get("Prediction")
        if pred is not None and pred.isVisible() and pred.height() < 0.8 * PREDICTION_MIN:
            self.fit_docks()

    def showEvent(self, ev):  # noqa: N802
        super().showEvent(ev)
        if not getattr(self, "_docks_fitted", False):
            self._docks_fitted = True
            QtCore.QTimer.singleShot(0, self.fit_docks)  # once the docks are laid out
        else:
            QtCore.QTimer.singleShot(0, self.fit_docks_if_cramped)

    def save_settings(self) -> None:
        self.settings.setValue("geometry", self.saveGeometry())
        self.settings.setValue("window_state", self.saveState())
        self.settings.setValue("convention", self.state.convention)
        self.settings.sync()

    def show_subjects_dock(self) -> None:
        """Show the subject browser wide enough for every column (sigma and gap included),
        within reason: the views keep most of the window."""
        self.panel_docks["Subjects"].show()
        width = min(self.subject_browser.table_width(), max(300, self.width() // 3))
        self.resizeDocks([self.panel_docks["Subjects"], self.panel_docks["Layers"]],
                         [width, 400], _Qt.Orientation.Horizontal)

    # -- hook points ------------------------------------------------------------------------
    def add_panel(self, title: str, widget: QtWidgets.QWidget,
                  area: QtCore.Qt.DockWidgetArea = _Qt.DockWidgetArea.RightDockWidgetArea,
                  tabify_with: str | None = None) -> QtWidgets.QDockWidget:
        """Dock ``widget`` under ``title`` (and list it in View > Panels); returns the dock."""
        dock = QtWidgets.QDockWidget(title, self)
        dock.setObjectName(f"dock_{title}")
        dock.setWidget(widget)
        self.addDockWidget(area, dock)
        if tabify_with and tabify_with in self.panel_docks:
            self.tabifyDockWidget(self.panel_docks[tabify_with], dock)
        self.panel_docks[title] = dock
        self.panels_menu.addAction(dock.toggleViewAction())
        if title == "Prediction":   # shown later, when a model applies: give it room then
            dock.visibilityChanged.connect(
                lambda vis: vis and QtCore.QTimer.singleShot(0, self.fit_docks_if_cramped))
        return dock

    def add_overlay_volume(self, volume: Volume, name: str, **display: Any):
        """Add a map computed in memory (e.g. a Grad-CAM from the prediction worker) as a layer.
        Returns the layer, or None after reporting the error (state unchanged)."""
        try:
            return self.state.add_layer(volume, name, **display)
        except BodyageError as err:
            self.report_error(err)
            return None

    def report_error(self, err: BaseException | str) -> None:
        """The one place errors go: kept in ``last_error`` and shown in a non-blocking dialog."""
        msg = str(err)
        self.last_error = msg
        self.errors.append(msg)
        self.statusBar().showMessage(msg, 10000)
        self.error_reported.emit(msg)
        self._message_box(QtWidgets.QMessageBox.Icon.Warning, strings.ERROR_TITLE, msg)

    def report_warning(self, message: str) -> None:
        """Something was done, but not all of it (a session with values that did not fit):
        kept in ``warnings``, shown in the status bar and a non-blocking dialog."""
        self.warnings.append(message)
        self.statusBar().showMessage(message.replace("\n", "; "), 15000)
        self._message_box(QtWidgets.QMessageBox.Icon.Information, strings.APP_NAME, message)

    def _message_box(self, icon, title: str, message: str) -> None:
        if not self.show_dialogs:
            return
        if self.error_box is not None:
            self.error_box.close()
        box = QtWidgets.QMessageBox(icon, title, message,
                                    QtWidgets.QMessageBox.StandardButton.Ok, self)
        box.setWindowModality(_Qt.WindowModality.WindowModal)
        box.open()  # non-blocking
        self.error_box = box

    def guard(self, fn: Callable[[], Any]) -> Any:
        """Run ``fn``; a BodyageError (or an OS error) is reported and None returned."""
        try:
            return fn()
        except BodyageError as err:
            self.report_error(err)
        except OSError as err:
            self.report_error(LoadError(str(err)))
        return None

    _guard = guard

    def replace_layers(self, trial: ViewerState, keep_cursor: bool = False) -> None:
        """Move the layers of a fully built state into ``self.state`` (views keep following)."""
        self.state.replace_layers(trial, keep_cursor=keep_cursor)
        self.scheduler.flush()

    # -- files, sessions, screenshots (actions) ---------------------------------------------
    def open_files(self, paths: Sequence[str | Path], overlays: Sequence[str | Path] = (),
                   threshold: float | None = None, wait: bool = True) -> bool:
        return self.files.open_files(paths, overlays, threshold, wait)

    def add_overlay(self, path: str | Path, threshold: float | None = None,
                    colormap: str | None = None) -> bool:
        return self.files.add_overlay(path, threshold, colormap)

    def open_dicom_browser(self, folder: str | Path | None = None):
        from bodyage_gui.panels.qt_dicom_browser import open_browser

        return open_browser(self, folder)

    def save_session(self, path: str | Path) -> bool:
        return session.save_session(self, path)

    def restore_session(self, path: str | Path) -> bool:
        return session.restore_session(self, path)

    def save_screenshot(self, path: str | Path, whole_window: bool = False) -> bool:
        return screenshot.save_screenshot(self, path, whole_window)

    def grab_image(self, whole_window: bool = False):
        return screenshot.grab_image(self, whole_window)

    def shortcuts_text(self) -> str:
        return shortcuts_text()

    def show_shortcuts(self) -> QtWidgets.QDialog:
        self._shortcuts_box = show_shortcuts(self)
        return self._shortcuts_box

    # -- workspace and subjects (SubjectNavigator) ------------------------------------------
    @property
    def workspace(self) -> Any:
        return self.navigator.workspace

    @property
    def current_subject(self) -> str | None:
        return self.navigator.current

    def open_workspace(self, path: str | Path, open_first: bool = True,
                       wait: bool = False) -> bool:
        return self.navigator.open_workspace(path, open_first, wait)

    def open_subject(self, subject_id: str, wait: bool = False) -> bool:
        return self.navigator.open_subject(subject_id, wait)

    def wait_for_subject(self, timeout: float = 60.0) -> bool:
        return self.navigator.wait(timeout)

    def next_subject(self) -> str | None:
        return self.navigator.next()

    def previous_subject(self) -> str | None:
        return self.navigator.previous()

    def refresh_subjects(self) -> None:
        self.navigator.refresh()

    def prediction_stored(self, subject_id: str, row: dict[str, Any]) -> None:
        self.navigator.prediction_stored(subject_id, row)

    # -- subject space / atlas space (DisplaySpaceSwitch) -----------------------------------
    @property
    def display_space(self) -> str:
        """``'subject'`` (the scan's grid) or ``'atlas'`` (the atlas of the subject's group)."""
        return self.space_switch.name

    @property
    def atlas_link(self):
        return self.space_switch.link

    @property
    def atlas_reason(self) -> str:
        return self.space_switch.reason

    def toggle_atlas_space(self) -> bool:
        return self.space_switch.toggle()

    def set_display_space(self, space: str, wait: bool = False) -> bool:
        return self.space_switch.set(space, wait)

    def add_population_to_subject(self, wait: bool = False) -> bool:
        return self.space_switch.add_population_to_subject(wait)

    def wait_for_space(self, timeout: float = 120.0) -> bool:
        return self.space_switch.wait(timeout)

    # -- view -------------------------------------------------------------------------------
    def _layout_changed(self, layout: str) -> None:
        self.view_grid.apply(layout)
        if layout in getattr(self, "layout_actions", {}):
            self.layout_actions[layout].setChecked(True)

    def _convention_changed(self, convention: str) -> None:
        self.convention_action.setChecked(convention == "radiological")

    def toggle_interpolation(self) -> None:
        self.state.set_interpolation("nearest" if self.state.interpolation == "linear"
                                     else "linear")

    def _interpolation_changed(self, mode: str) -> None:
        self.interpolation_action.setChecked(mode == "linear")

    def show_lightbox_settings(self):
        from bodyage_gui.views.qt_lightbox import QtLightboxSettings

        self._lightbox_settings = QtLightboxSettings(self.state, self)
        self._lightbox_settings.show()
        if self.state.layout != "lightbox":
            self.state.set_layout("lightbox")
        return self._lightbox_settings

    def open_side_by_side(self, subject_id: str | None = None):
        from bodyage_gui.views.qt_side_by_side import open_side_by_side

        return open_side_by_side(self, subject_id)

    def fill_channel_menu(self) -> None:
        self.channel_menu.clear()
        base = self.state.base_layer
        for ch in self.state.channels():
            a = self.channel_menu.addAction(ch)
            a.setCheckable(True)
            a.setChecked(base is not None and base.channel == ch)
            a.triggered.connect(lambda _=False, c=ch: self.state.set_channel(c))

    def _status_cursor(self, _c) -> None:
        from bodyage_gui.tools.hover import cursor_status

        text = cursor_status(self.state)
        if text:
            self.statusBar().showMessage(text)

    def dragEnterEvent(self, ev):  # noqa: N802
        self.drop.enter(ev)

    def dragMoveEvent(self, ev):  # noqa: N802
        self.drop.enter(ev)

    def dropEvent(self, ev):  # noqa: N802
        self.drop.event(ev)

    def closeEvent(self, ev):  # noqa: N802
        if self.persist_settings:
            self.save_settings()
        self.navigator.shutdown()
        self._io_pool.shutdown(wait=False, cancel_futures=True)
        if isinstance(self.volume_view, QtVolumeView):
            self.volume_view.close_vtk()
        for w in (*self.slice_views.values(), self.lightbox_view, self.colorbar,
                  self.readout_panel, self.layer_panel):
            w.disconnect_state()
        self.tools.disconnect_state()
        for e, fn in self._subs:
            e.disconnect(fn)
        super().closeEvent(ev)


def _placeholder(text: str) -> QtWidgets.QLabel:
    lab = QtWidgets.QLabel(text)
    lab.setAlignment(_Qt.AlignmentFlag.AlignCenter)
    lab.setStyleSheet("color: #aaaaaa; background: black;")
    return lab
