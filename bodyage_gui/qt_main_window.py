"""The main window: linked axial / coronal / sagittal views and the 3D view around one
:class:`~bodyage_core.viewer.ViewerState`, with the layer panel, colour bar, readout and
subject browser, menus, sessions, screenshots and error reporting.

Hook points for other parts of the GUI (cohort panel, prediction worker, training wizard):

* :meth:`QtMainWindow.add_panel` docks a widget (right dock area by default) and lists it in
  View > Panels; :attr:`QtMainWindow.analysis_menu` is the menu for "Predict", "Train ...",
  "Cohort ..." actions.
* :attr:`QtMainWindow.state` is the shared ViewerState; add result maps with
  :meth:`QtMainWindow.add_overlay_volume`.
* :attr:`QtMainWindow.workspace` (a :class:`bodyage_core.cohort.Workspace` or None),
  :attr:`QtMainWindow.current_subject` and the signals ``subject_changed(str)`` /
  ``workspace_changed(object)``; :meth:`QtMainWindow.open_subject` opens a subject by id (what a
  click in a cohort scatter plot calls); :meth:`QtMainWindow.refresh_subjects` re-reads the cohort
  (after a prediction run).
* :meth:`QtMainWindow.report_error` is the one place errors go (BodyageError message in a
  non-blocking dialog, ``last_error`` kept for tests); the state is never changed by a failed
  action.
* Subject space / atlas space (:mod:`bodyage_core.viewer.atlas_space`; the space shown is
  ``state.space``, part of the viewer model and of the session): :attr:`display_space`
  (``'subject'`` | ``'atlas'``), :meth:`set_display_space` / :meth:`toggle_atlas_space` (View
  menu, F6, the layer panel's check box; disabled with a tooltip naming ``bodyage atlas build``
  / ``bodyage register`` when the subject has no registration), the signal ``space_changed``,
  and :meth:`add_population_to_subject` (the group's population map warped back onto the
  subject). Maps computed on the subject's grid must be added in subject space.
* :meth:`prediction_stored` updates the subject browser after the prediction panel wrote a
  prediction to ``cohort.sqlite``.
"""

from __future__ import annotations

import concurrent.futures
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PySide6 import QtCore, QtGui, QtWidgets

from bodyage_core import display
from bodyage_core.atomic import write_bytes, write_json
from bodyage_core.errors import BodyageError, CohortError, LoadError
from bodyage_core.labels import looks_like_label_map
from bodyage_core.viewer import PLANES, ViewerState, atlas_space
from bodyage_core.viewer.files import add_map, read_map
from bodyage_core.viewer.space import DisplaySpace
from bodyage_core.viewer.windowing import default_image_range
from bodyage_core.volume import Volume
from bodyage_gui import bindings, strings
from bodyage_gui.loading import load_for_viewer, load_many
from bodyage_gui.panels.qt_analysis import install_analysis
from bodyage_gui.panels.qt_layer_panel import QtLayerPanel
from bodyage_gui.panels.qt_readout_panel import QtReadoutPanel
from bodyage_gui.panels.qt_subject_browser import QtSubjectBrowser, SubjectPreloader
from bodyage_gui.redraw import RedrawScheduler
from bodyage_gui.views.qt_colorbar import QtColorBar
from bodyage_gui.views.qt_slice_view import QtSliceView
from bodyage_gui.views.qt_volume_view import QtVolumeView

_Qt = QtCore.Qt
MAX_RECENT = 8


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
    _payload_ready = QtCore.Signal(str, object)
    _files_ready = QtCore.Signal(object, object, object, object)
    _task_ready = QtCore.Signal(object, object)   # (future, main-thread callback)
    #: ``'subject'`` or ``'atlas'`` once the display switched space
    space_changed = QtCore.Signal(str)
    workspace_changed = QtCore.Signal(object)
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
        self.workspace: Any = None
        self.current_subject: str | None = None
        self._subject_images: dict[str, dict[str, Path]] = {}
        self._subject_run: str | None = None
        self.preloader = SubjectPreloader(self._load_subject_payload)
        self._pending_subject: tuple[str, Any] | None = None
        self._payload_ready.connect(self._on_payload_ready)
        self._io_pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="open")
        self._pending_files = None
        self._files_ready.connect(self._on_files_ready)
        # what the open subject's atlas space is (or why there is none); the space shown is
        # the model's (self.state.space)
        self.atlas_link: atlas_space.AtlasLink | None = None
        self.atlas_reason: str = atlas_space.NO_WORKSPACE
        self._atlas_cache: tuple | None = None    # (key, payload) of the last warp
        self._pending_space = None
        self.state.events.space_changed.connect(self.space_changed.emit)
        self._task_ready.connect(lambda fut, then: then(fut))
        self.scheduler = RedrawScheduler(parent=self)
        self.setWindowTitle(strings.APP_NAME)
        self.resize(1400, 900)

        # views
        self.slice_views = {p: QtSliceView(self.state, p, self.scheduler) for p in PLANES}
        self.volume_view = (QtVolumeView(self.state, self.scheduler) if enable_3d
                            else _placeholder("3D view disabled"))
        self.colorbar = QtColorBar(self.state)
        self.views_widget = QtWidgets.QWidget()
        self.views_widget.setObjectName("views")
        self.views_widget.setStyleSheet("#views { background: black; }")
        self.views_widget.setMinimumSize(480, 320)
        self._grid = QtWidgets.QGridLayout()
        self._grid.setSpacing(2)
        self._grid.setContentsMargins(0, 0, 0, 0)
        outer = QtWidgets.QHBoxLayout(self.views_widget)
        outer.setContentsMargins(0, 0, 0, 0)
        outer.setSpacing(2)
        outer.addLayout(self._grid, 1)
        outer.addWidget(self.colorbar)
        self.setCentralWidget(self.views_widget)

        # panels
        self.panel_docks: dict[str, QtWidgets.QDockWidget] = {}
        self.layer_panel = QtLayerPanel(self.state)
        self.readout_panel = QtReadoutPanel(self.state)
        self.subject_browser = QtSubjectBrowser()
        self.subject_browser.subject_activated.connect(self._subject_activated)
        self._build_menus()
        self.layer_panel.space_check.clicked.connect(
            lambda on: self.set_display_space(atlas_space.ATLAS if on else atlas_space.SUBJECT))
        self._update_space_controls()
        self.add_panel("Layers", self.layer_panel, _Qt.DockWidgetArea.RightDockWidgetArea)
        self.add_panel("Cursor", self.readout_panel, _Qt.DockWidgetArea.RightDockWidgetArea)
        self.add_panel("Subjects", self.subject_browser, _Qt.DockWidgetArea.LeftDockWidgetArea)
        self.panel_docks["Subjects"].hide()
        install_analysis(self)  # Prediction and Cohort panels, Analysis menu, training wizard

        self.state.events.layout_changed.connect(self._apply_layout)
        self.state.events.cursor_changed.connect(self._status_cursor)
        self.state.events.convention_changed.connect(self._convention_changed)
        self._apply_layout(self.state.layout)
        if restore_settings:
            self._restore_settings()
        self.statusBar().showMessage(strings.NO_IMAGE if self.state.base_layer is None else "")

    def _restore_settings(self) -> None:
        """Window geometry, dock layout and (for an empty viewer) the display convention."""
        geo = self.settings.value("geometry")
        if isinstance(geo, QtCore.QByteArray) and not geo.isEmpty():
            self.restoreGeometry(geo)
        dock_state = self.settings.value("window_state")
        if isinstance(dock_state, QtCore.QByteArray) and not dock_state.isEmpty():
            self._docks_fitted = self.restoreState(dock_state)  # the user's own layout
        conv = self.settings.value("convention")
        if self.state.base_layer is None and conv in ("radiological", "neurological"):
            self.state.set_convention(conv)

    def fit_docks(self) -> None:
        """Default heights of the right-hand docks: the layer controls what they need, the
        prediction panel room for its result (not squeezed into a scroll area)."""
        docks = [self.panel_docks.get(t) for t in ("Layers", "Cursor", "Prediction")]
        if all(d is not None and d.isVisible() for d in docks):
            # the layer controls what they need, within what leaves the prediction panel 300 px
            # (they scroll below that); the prediction panel the rest
            room = sum(d.height() for d in docks)
            layers = max(120, min(self.layer_panel.preferred_height() + 40, room - 110 - 310))
            self.resizeDocks(docks, [layers, 110, max(310, room - layers - 110)],
                             _Qt.Orientation.Vertical)

    def showEvent(self, ev):  # noqa: N802
        super().showEvent(ev)
        if not getattr(self, "_docks_fitted", False):
            self._docks_fitted = True
            QtCore.QTimer.singleShot(0, self.fit_docks)  # once the docks are laid out

    def save_settings(self) -> None:
        self.settings.setValue("geometry", self.saveGeometry())
        self.settings.setValue("window_state", self.saveState())
        self.settings.setValue("convention", self.state.convention)
        self.settings.sync()

    # -- hook points ---------------------------------------------------------------------------------
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
        if self.show_dialogs:
            if self.error_box is not None:
                self.error_box.close()
            box = QtWidgets.QMessageBox(QtWidgets.QMessageBox.Icon.Warning, strings.ERROR_TITLE,
                                        msg, QtWidgets.QMessageBox.StandardButton.Ok, self)
            box.setWindowModality(_Qt.WindowModality.WindowModal)
            box.open()  # non-blocking
            self.error_box = box

    def report_warning(self, message: str) -> None:
        """Something was done, but not all of it (a session with values that did not fit):
        kept in ``warnings``, shown in the status bar and a non-blocking dialog."""
        self.warnings.append(message)
        self.statusBar().showMessage(message.replace("\n", "; "), 15000)
        if self.show_dialogs:
            if self.error_box is not None:
                self.error_box.close()
            box = QtWidgets.QMessageBox(QtWidgets.QMessageBox.Icon.Information,
                                        strings.APP_NAME, message,
                                        QtWidgets.QMessageBox.StandardButton.Ok, self)
            box.setWindowModality(_Qt.WindowModality.WindowModal)
            box.open()  # non-blocking
            self.error_box = box

    def _guard(self, fn: Callable[[], Any]) -> Any:
        """Run ``fn``; a BodyageError (or an OS error) is reported and None returned."""
        try:
            return fn()
        except BodyageError as err:
            self.report_error(err)
        except OSError as err:
            self.report_error(LoadError(str(err)))
        return None

    # -- menus -----------------------------------------------------------------------------------------
    def _build_menus(self) -> None:
        mb = self.menuBar()
        self.file_menu = mb.addMenu("&File")
        self._action(self.file_menu, "&Open files...", self._ask_open_files,
                     _key("open_files"))
        self._action(self.file_menu, "Open &DICOM folder...", self._ask_open_dicom)
        self._action(self.file_menu, "Open &workspace...", self._ask_open_workspace,
                     _key("open_workspace"))
        self._action(self.file_menu, "Add &overlay...", self._ask_add_overlay)
        self.recent_files_menu = self.file_menu.addMenu("Recent files")
        self.recent_workspaces_menu = self.file_menu.addMenu("Recent workspaces")
        self.file_menu.addSeparator()
        self._action(self.file_menu, "&Save session...", self._ask_save_session,
                     _key("save_session"))
        self._action(self.file_menu, "&Restore session...", self._ask_restore_session)
        self._action(self.file_menu, "Save screens&hot...", self._ask_screenshot,
                     _key("screenshot"))
        self.file_menu.addSeparator()
        self._action(self.file_menu, "&Quit", self.close, QtGui.QKeySequence.StandardKey.Quit)

        self.view_menu = mb.addMenu("&View")
        self.convention_action = self._action(self.view_menu, "&Radiological convention",
                                              self._toggle_convention,
                                              _key("toggle_convention"))
        self.convention_action.setCheckable(True)
        self.convention_action.setChecked(self.state.radiological)
        layout_menu = self.view_menu.addMenu("&Layout")
        group = QtGui.QActionGroup(self)
        self.layout_actions = {}
        for name in ("grid", "row", "axial", "coronal", "sagittal", "3d"):
            a = layout_menu.addAction(name)
            a.setCheckable(True)
            a.setChecked(name == self.state.layout)
            a.triggered.connect(lambda _=False, n=name: self.state.set_layout(n))
            group.addAction(a)
            self.layout_actions[name] = a
        self.atlas_action = self._action(self.view_menu, "&Atlas space (subject's group)",
                                         self.toggle_atlas_space, _key("toggle_atlas_space"))
        self.atlas_action.setCheckable(True)
        self.atlas_action.setEnabled(False)
        self.atlas_action.setToolTip(atlas_space.NO_WORKSPACE)
        self.atlas_action.setStatusTip(atlas_space.NO_WORKSPACE)
        self.view_menu.setToolTipsVisible(True)
        self.population_action = self._action(
            self.view_menu, "Add &population map on the subject",
            lambda: self.add_population_to_subject())
        self.population_action.setEnabled(False)
        self._action(self.view_menu, "Reset views (R)", self.state.reset)
        self.channel_menu = self.view_menu.addMenu("&Channel")
        self.channel_menu.aboutToShow.connect(self._fill_channel_menu)
        self.panels_menu = self.view_menu.addMenu("&Panels")

        self.subject_menu = mb.addMenu("&Subject")
        self._action(self.subject_menu, "&Next subject", self.next_subject,
                     _key("next_subject"))
        self._action(self.subject_menu, "&Previous subject", self.previous_subject,
                     _key("previous_subject"))
        #: hook: Predict / Train / Cohort actions go here
        self.analysis_menu = mb.addMenu("&Analysis")
        self.help_menu = mb.addMenu("&Help")
        self._action(self.help_menu, "&Keyboard and mouse shortcuts", self.show_shortcuts,
                     QtGui.QKeySequence.StandardKey.HelpContents)
        self._action(self.help_menu, "&About", lambda: QtWidgets.QMessageBox.about(
            self, strings.APP_NAME, strings.ABOUT))
        self._refresh_recent_menus()

    def _action(self, menu: QtWidgets.QMenu, text: str, slot: Callable,
                shortcut: Any = None) -> QtGui.QAction:
        a = menu.addAction(text)
        a.triggered.connect(lambda _=False: slot())
        if shortcut is not None:
            a.setShortcut(QtGui.QKeySequence(shortcut))
        return a

    def shortcuts_text(self) -> str:
        return "\n".join(f"{k:<22} {v}" for k, v in bindings.help_rows())

    def show_shortcuts(self) -> QtWidgets.QDialog:
        """Help > Keyboard and mouse shortcuts: a two-column table (non-modal), one row per
        binding, every description on one line."""
        box = QtWidgets.QDialog(self)
        box.setWindowTitle("Keyboard and mouse shortcuts")
        rows = bindings.help_rows()
        table = QtWidgets.QTableWidget(len(rows), 2, box)
        table.setObjectName("shortcuts_table")
        table.setHorizontalHeaderLabels(["key / mouse", "action"])
        for i, (key, what) in enumerate(rows):
            for j, t in enumerate((key, what)):
                item = QtWidgets.QTableWidgetItem(t)
                item.setFlags(_Qt.ItemFlag.ItemIsEnabled | _Qt.ItemFlag.ItemIsSelectable)
                table.setItem(i, j, item)
        table.verticalHeader().setVisible(False)
        table.setWordWrap(False)
        table.setAlternatingRowColors(True)
        table.setEditTriggers(QtWidgets.QAbstractItemView.EditTrigger.NoEditTriggers)
        table.resizeColumnsToContents()
        table.resizeRowsToContents()
        table.horizontalHeader().setStretchLastSection(True)
        buttons = QtWidgets.QDialogButtonBox(QtWidgets.QDialogButtonBox.StandardButton.Close)
        buttons.rejected.connect(box.close)
        lay = QtWidgets.QVBoxLayout(box)
        lay.addWidget(table)
        lay.addWidget(buttons)
        width = (sum(table.columnWidth(c) for c in range(2))
                 + table.verticalScrollBar().sizeHint().width() + 40)
        height = (table.horizontalHeader().height() + sum(table.rowHeight(r)
                  for r in range(len(rows))) + buttons.sizeHint().height() + 50)
        screen = self.screen().availableGeometry() if self.screen() else None
        box.resize(min(width, screen.width() if screen else width),
                   min(height, int(screen.height() * 0.9) if screen else height))
        box.open()
        self._shortcuts_box = box
        return box

    def _fill_channel_menu(self) -> None:
        self.channel_menu.clear()
        base = self.state.base_layer
        for ch in self.state.channels():
            a = self.channel_menu.addAction(ch)
            a.setCheckable(True)
            a.setChecked(base is not None and base.channel == ch)
            a.triggered.connect(lambda _=False, c=ch: self.state.set_channel(c))

    # -- layout ----------------------------------------------------------------------------------------
    def _apply_layout(self, layout: str) -> None:
        if getattr(self, "_layout_applied", None) == layout:
            return  # restoring a state re-announces its layout: nothing to move
        self._layout_applied = layout
        for w in (*self.slice_views.values(), self.volume_view):
            self._grid.removeWidget(w)
            w.hide()
        sv = self.slice_views
        place: list[tuple[QtWidgets.QWidget, int, int]]
        if layout == "grid":
            place = [(sv["coronal"], 0, 0), (sv["sagittal"], 0, 1), (sv["axial"], 1, 0),
                     (self.volume_view, 1, 1)]
        elif layout == "row":
            place = [(sv["axial"], 0, 0), (sv["coronal"], 0, 1), (sv["sagittal"], 0, 2)]
        elif layout == "3d":
            place = [(self.volume_view, 0, 0)]
        else:
            place = [(sv[layout], 0, 0)]
        for r in range(3):
            self._grid.setRowStretch(r, 0)
            self._grid.setColumnStretch(r, 0)
        for w, r, c in place:
            # sizes come from the grid's stretch only (the VTK widget's size hint is large)
            w.setSizePolicy(QtWidgets.QSizePolicy.Policy.Ignored,
                            QtWidgets.QSizePolicy.Policy.Ignored)
            self._grid.addWidget(w, r, c)
            self._grid.setRowStretch(r, 1)
            self._grid.setColumnStretch(c, 1)
            w.show()
        if layout in self.layout_actions:
            self.layout_actions[layout].setChecked(True)

    def _toggle_convention(self) -> None:
        self.state.toggle_convention()

    def _convention_changed(self, convention: str) -> None:
        self.convention_action.setChecked(convention == "radiological")

    def _status_cursor(self, _c) -> None:
        r = self.state.cursor_readout()
        if r["voxel_zyx"] is None:
            return
        x, y, z = r["world_mm"]
        vals = "  ".join(f"{v['layer']}={'-' if v['value'] is None else _short(v['value'])}"
                         for v in r["values"])
        organ = f"  [{r['organ']}]" if r["organ"] else ""
        # the file's own index (nibabel / FSLeyes / ITK-SNAP) when the image is a file
        voxel = (f"voxel i,j,k {r['file_voxel_xyz']}" if r["file_voxel_xyz"] is not None
                 else f"voxel x,y,z {r['voxel_xyz']}")
        self.statusBar().showMessage(
            f"RAS {x:.1f}, {y:.1f}, {z:.1f} mm   {voxel}   {vals}{organ}")

    # -- files -----------------------------------------------------------------------------------------
    def open_files(self, paths: Sequence[str | Path], overlays: Sequence[str | Path] = (),
                   threshold: float | None = None, wait: bool = True) -> bool:
        """Open images: the first is the base image, the others and ``overlays`` are layers on
        top. Everything is read before the state changes; on error the old view stays.

        ``wait=False`` (what the File menu uses) reads the files in a background thread and
        shows them when done, so the window stays responsive; returns True once started."""
        paths = [Path(p) for p in paths]
        overlays = [Path(p) for p in overlays]
        if not paths:
            return False
        all_paths = paths + overlays
        flags = [False] * len(paths) + [looks_like_label_map(p) for p in overlays]
        conv, layout = self.state.convention, self.state.layout

        fut = self._io_pool.submit(_build_trial, all_paths, flags, len(paths), conv, layout,
                                   threshold)
        self._pending_files = fut
        if not wait:
            self.statusBar().showMessage(f"loading {paths[0].name} ...")

            _emit_when_done(fut, lambda f: self._files_ready.emit(f, paths, overlays,
                                                                  threshold))
            return True
        fut.exception()
        return self._finish_files(fut, paths, overlays, threshold)

    def _on_files_ready(self, fut, paths, overlays, threshold) -> None:
        if fut is self._pending_files:  # else a newer open superseded it
            self._finish_files(fut, paths, overlays, threshold)

    def _finish_files(self, fut, paths: list[Path], overlays: list[Path], threshold) -> bool:
        self._pending_files = None

        def do():
            trial = fut.result()  # raised (a file, a grid) before touching self.state
            trial.set_convention(self.state.convention)
            trial.set_layout(self.state.layout)
            self._replace_layers(trial)
            self.workspace_subject(None)
            self._reset_space(None)
            for p in paths + overlays:
                self._add_recent("recent_files", str(p))
            self.setWindowTitle(f"{strings.APP_NAME} — {paths[0].name}")
            self.statusBar().showMessage(f"opened {paths[0]}", 5000)
            return True

        return bool(self._guard(do))

    @staticmethod
    def _fill(target: ViewerState, vols, ovs, threshold) -> None:
        """Qt-free: runs in the I/O thread (holds no reference to the window)."""
        for i, (p, v) in enumerate(vols):
            target.add_layer(v, path=p, kind="image" if i == 0 else None)
        for p, v in ovs:
            add_map(target, v, p, threshold)

    def _replace_layers(self, trial: ViewerState, keep_cursor: bool = False) -> None:
        """Move the layers of a fully built state into ``self.state`` (views keep following)."""
        self.state.replace_layers(trial, keep_cursor=keep_cursor)
        self.scheduler.flush()

    def add_overlay(self, path: str | Path, threshold: float | None = None,
                    colormap: str | None = None) -> bool:
        """Add a map file on top (refused with a dialog if it does not overlap the image)."""
        path = Path(path)

        def do():
            if self.state.base_layer is None:
                raise BodyageError("open an image before adding an overlay", path=path)
            add_map(self.state, read_map(path, load_for_viewer), path, threshold, colormap)
            self._add_recent("recent_files", str(path))
            return True

        return bool(self._guard(do))

    def save_session(self, path: str | Path) -> bool:
        path = Path(path)

        def do():
            d = self.state.to_dict(relative_to=path.parent)
            write_json(path, d | {"workspace": str(self.workspace.root) if self.workspace
                                  else None, "subject": self.current_subject})
            unsaved = [lay.name for lay in self.state.layers if not lay.path]
            note = (f" — not in it (computed in memory, no file): {', '.join(unsaved)}"
                    if unsaved else "")
            self.statusBar().showMessage(f"session saved: {path}{note}", 10000)
            return True

        return bool(self._guard(do))

    def restore_session(self, path: str | Path) -> bool:
        path = Path(path)

        def do():
            try:
                d = json.loads(path.read_text())
            except (OSError, ValueError) as exc:
                raise LoadError(f"not a readable session file ({exc})", path=path,
                                hint="choose a .json file saved with File > Save session") \
                    from exc
            try:
                problems = self.state.restore(d, loader=_session_loader,
                                              relative_to=path.parent)
            except (KeyError, ValueError, TypeError) as exc:  # files changed since the save
                raise LoadError(f"the session does not match its files any more ({exc})",
                                path=path, hint="open the images again and save a new "
                                "session") from exc
            except BodyageError as exc:
                if exc.path is not None:
                    raise
                raise LoadError(str(exc), path=path) from exc
            # the restored files are in their own space; back to atlas space when the session
            # was saved there for the subject open now
            saved_in_atlas = self.state.space.wanted
            subject = self.current_subject if d.get("subject") == self.current_subject \
                else None
            self._reset_space(subject)
            self.state.space.wanted = False
            self.scheduler.flush()
            self.statusBar().showMessage(f"session restored: {path}", 5000)
            if problems:
                self.report_warning(f"session {path.name}: restored; skipped what did not "
                                    "fit:\n" + "\n".join(problems))
            if saved_in_atlas and self.atlas_link is not None:
                self.set_display_space(atlas_space.ATLAS, wait=True)
            return True

        return bool(self._guard(do))

    def save_screenshot(self, path: str | Path, whole_window: bool = False) -> bool:
        """Save the views with the colour bar (or the whole window) as PNG."""
        path = Path(path)

        def do():
            img = self.grab_image(whole_window)
            buf = QtCore.QBuffer()
            buf.open(QtCore.QIODevice.OpenModeFlag.WriteOnly)
            if not img.save(buf, "PNG"):
                raise BodyageError("could not encode the screenshot", path=path)
            write_bytes(path, bytes(buf.data()))
            self.statusBar().showMessage(f"screenshot saved: {path}", 5000)
            return True

        return bool(self._guard(do))

    def grab_image(self, whole_window: bool = False) -> QtGui.QImage:
        """Render the views (with colour bar) or the window, 3D view included."""
        self.scheduler.flush()
        QtWidgets.QApplication.processEvents()
        self.scheduler.flush()
        target = self if whole_window else self.views_widget
        img = target.grab().toImage()
        vv = self.volume_view
        if isinstance(vv, QtVolumeView) and vv.available and vv.isVisible():
            shot = vv.render_image()
            if shot is not None:
                top_left = vv.vtk_widget.mapTo(target, QtCore.QPoint(0, 0))
                size = vv.vtk_widget.size()
                painter = QtGui.QPainter(img)
                painter.drawImage(QtCore.QRect(top_left, size), shot)
                painter.end()
        return img

    # -- workspace and subjects -------------------------------------------------------------------------
    def open_workspace(self, path: str | Path, open_first: bool = True,
                       wait: bool = False) -> bool:
        """Open a workspace: list its subjects (with predictions of the latest run) and open the
        first one (in the background unless ``wait``)."""
        path = Path(path)

        def do():
            from bodyage_core.cohort import Workspace

            ws = Workspace.open(path)
            rows, images = _subject_rows(ws)
            if not rows:
                raise CohortError("the workspace has no subjects", path=path,
                                  hint="import subjects with `bodyage import`")
            old = self.workspace
            self.workspace = ws
            self._subject_images = images
            self._subject_run = ws.db.latest_run()
            self.preloader.clear()
            self.subject_browser.set_subjects(rows)
            self.panel_docks["Subjects"].show()
            # every column of the table (predicted age, sigma, gap) without scrolling, within
            # reason: the views keep most of the window
            width = min(self.subject_browser.table_width(), max(260, self.width() // 4))
            self.resizeDocks([self.panel_docks["Subjects"], self.panel_docks["Layers"]],
                             [width, 400], _Qt.Orientation.Horizontal)
            self._add_recent("recent_workspaces", str(path))
            self.workspace_changed.emit(ws)
            if old is not None and old is not ws:
                old.close()
            if open_first:
                first = self.subject_browser.visible_ids()[0]
                self.subject_browser.select(first, emit=False)
                ok = self._subject_activated(first)  # False when it failed at once
                return self.wait_for_subject() if ok and wait else ok
            return True

        return bool(self._guard(do))

    def refresh_subjects(self) -> None:
        """Re-read subjects and predictions from the workspace (e.g. after a prediction run)."""
        if self.workspace is None:
            return
        rows, images = _subject_rows(self.workspace)
        self._subject_images = images
        self._subject_run = self.workspace.db.latest_run()
        self.subject_browser.set_subjects(rows)
        if self.current_subject:
            self.subject_browser.select(self.current_subject, emit=False)

    def prediction_stored(self, subject_id: str, row: dict[str, Any]) -> None:
        """A prediction was written to ``cohort.sqlite`` (by the prediction panel): update the
        subject's row in the browser, or re-read the cohort when the run shown changes (the
        browser shows the run with the latest predictions)."""
        if self.workspace is None:
            return
        run = row.get("run_id")
        if run is not None and run != self._subject_run:
            self.refresh_subjects()
            return
        predicted = row.get("corrected") if row.get("corrected") is not None else row.get("mean")
        self.subject_browser.model.update_row(subject_id, {
            "predicted": predicted, "sigma": row.get("sigma"), "gap": row.get("gap")})

    # -- subject space / atlas space ---------------------------------------------------------------
    @property
    def display_space(self) -> str:
        """``'subject'`` (the scan's grid) or ``'atlas'`` (the atlas of the subject's group)."""
        return self.state.space.name

    def _update_space_controls(self) -> None:
        """Enable the atlas-space toggle (View menu, F6, layer panel) only for a subject with a
        registration; the tooltip says what to run otherwise."""
        link = self.atlas_link
        atlas = self.display_space == atlas_space.ATLAS
        pending = self._pending_space is not None
        if link is not None:
            tip = (f"show {link.subject_id} in {link.label} (its image and maps warped with its "
                   "registration, the group's population map as it is) or back in its own "
                   "space")
            if link.population is None:
                tip += "; no population map built for this group yet (`bodyage atlas maps`)"
        else:
            tip = self.atlas_reason
        for w in (self.atlas_action, self.layer_panel.space_check):
            w.blockSignals(True)
            w.setChecked(atlas or (pending and self._pending_space[0] == atlas_space.ATLAS))
            w.setEnabled((link is not None or atlas) and not pending)
            w.setToolTip(tip)
            w.blockSignals(False)
        self.atlas_action.setStatusTip(tip)
        self.layer_panel.space_check.setText(link.label if link is not None else "atlas space")
        pop_ok = link is not None and link.population is not None and not atlas
        self.population_action.setEnabled(pop_ok and not pending)
        self.population_action.setToolTip(
            f"the population map of group {link.group} warped back onto this subject through "
            "its registration" if pop_ok else
            ("in atlas space the population map is shown as it is" if atlas else
             (tip if link is None else "no population map built for this group yet: run "
              "`bodyage atlas maps WORKSPACE --run RUN`")))

    def toggle_atlas_space(self) -> bool:
        """Switch the display between the subject's space and its group's atlas space."""
        return self.set_display_space(atlas_space.SUBJECT if self.display_space ==
                                      atlas_space.ATLAS else atlas_space.ATLAS)

    def set_display_space(self, space: str, wait: bool = False) -> bool:
        """Show the open workspace subject in ``'subject'`` space or in the ``'atlas'`` space of
        its group (see :mod:`bodyage_core.viewer.atlas_space`). Warping runs in the background unless
        ``wait``; the cursor follows the registration; on error the view stays as it was."""
        if space not in (atlas_space.SUBJECT, atlas_space.ATLAS):
            raise ValueError(f"unknown display space {space!r}")
        if space == self.display_space and self._pending_space is None:
            self._update_space_controls()
            return True
        if space == atlas_space.SUBJECT:
            self.state.space.wanted = False
            self._pending_space = None
            ok = self._back_to_subject_space()
            self._update_space_controls()
            return ok
        link = self.atlas_link
        if link is None or self.state.base_layer is None:
            self.report_error(BodyageError(self.atlas_reason))
            self._update_space_controls()
            return False
        specs = atlas_space.snapshot(self.state)
        key = (link.subject_id, link.group, str(link.population),
               tuple((sp.name, id(sp.volume)) for sp in specs))
        if self._atlas_cache is not None and self._atlas_cache[0] == key:
            fut: concurrent.futures.Future = concurrent.futures.Future()
            fut.set_result(self._atlas_cache[1])
        else:
            fut = self._io_pool.submit(atlas_space.to_atlas, link, specs)
        self._pending_space = (atlas_space.ATLAS, fut, key, specs)
        self.state.space.wanted = True
        self._update_space_controls()
        if fut.done() or wait:
            fut.exception()
            return self._finish_atlas_space(fut)
        self.statusBar().showMessage(f"warping {link.subject_id} to {link.label} ...")
        _emit_when_done(fut, lambda f: self._task_ready.emit(f, self._on_space_ready))
        return True

    def add_population_to_subject(self, wait: bool = False) -> bool:
        """Add the population map of the subject's group, warped back onto the subject through
        its registration (in the background unless ``wait``), as an overlay layer."""
        link = self.atlas_link
        base = self.state.base_layer
        if link is None or base is None or self.display_space != atlas_space.SUBJECT:
            self.report_error(BodyageError(
                self.atlas_reason if link is None else
                "the population map goes onto the subject in subject space",
                hint=None if link is None else "switch back to subject space first"))
            return False
        subject_volume = base.volume
        fut = self._io_pool.submit(atlas_space.population_to_subject, link, subject_volume)

        def then(f) -> bool:
            def do():
                vol, disp, name = f.result()
                if self.state.base_layer is None or \
                        self.state.base_layer.volume is not subject_volume:
                    return False  # another subject (or space) meanwhile
                lay = self.state.add_layer(vol, name=name, **disp)
                self.statusBar().showMessage(f"{name}: warped back through the registration",
                                             5000)
                return lay is not None

            return bool(self._guard(do))

        if wait:
            fut.exception()
            return then(fut)
        self.statusBar().showMessage(f"warping the population map of {link.group} onto "
                                     f"{link.subject_id} ...")
        _emit_when_done(fut, lambda f: self._task_ready.emit(f, then))
        return True

    def wait_for_space(self, timeout: float = 120.0) -> bool:
        """Block until a space switch in progress is shown (scripts, screenshots, tests)."""
        if self._pending_space is None:
            return True
        fut = self._pending_space[1]
        try:
            fut.exception(timeout)
        except TimeoutError:
            return False
        return self._finish_atlas_space(fut)

    def _on_space_ready(self, fut) -> None:
        if self._pending_space is not None and self._pending_space[1] is fut:
            self._finish_atlas_space(fut)

    def _finish_atlas_space(self, fut) -> bool:
        if self._pending_space is None or self._pending_space[1] is not fut:
            return self.display_space == atlas_space.ATLAS
        _, _, key, specs = self._pending_space
        self._pending_space = None
        link = self.atlas_link

        def do():
            payload = fut.result()
            self._atlas_cache = (key, payload)
            new = [sp.copy() for sp in payload["specs"]]
            remembered = self.state.space.atlas_layer_settings
            for sp in new:  # what the user set on atlas-only layers last time
                old = remembered.get(sp.name)
                if old is not None and sp.settings.get("path") == old.get("path"):
                    for k in ("colormap", "opacity", "display_range", "threshold", "visible"):
                        sp.settings[k] = old[k]
            atlas_space.carry_settings(new, self.state)
            trial = atlas_space.build_state(new, self.state.convention, self.state.layout)
            tx = payload.get("points") or payload["transform"]
            try:
                cursor = atlas_space.subject_to_atlas(tx, self.state.cursor)
            except (BodyageError, RuntimeError):
                cursor = None  # no inverse field: the cursor goes to the centre
            self._replace_layers(trial)
            self.state.reset_view()
            if cursor is not None:
                self.state.set_cursor(cursor)
            space = DisplaySpace(atlas_space.ATLAS, link.group, link.subject_id, specs, tx,
                                 wanted=True,
                                 atlas_layer_settings=self.state.space.atlas_layer_settings)
            self.setWindowTitle(f"{strings.APP_NAME} — {link.subject_id} in {link.label}")
            self.statusBar().showMessage(
                f"{link.subject_id} in {link.label}: image and maps warped with its "
                "registration" + ("" if link.population is None else
                                  f"; population map {link.population.name}"), 8000)
            self.scheduler.flush()
            self.state.set_space(space)
            return True

        ok = bool(self._guard(do))
        if not ok:
            self.state.space.wanted = False
        self._update_space_controls()
        return ok

    def _back_to_subject_space(self) -> bool:
        if self.display_space != atlas_space.ATLAS or self.state.space.subject_layers is None:
            return True

        def do():
            remembered = {lay.name: lay.settings() for lay in self.state.layers}
            trial, cursor = self.state.subject_space_state()
            self._replace_layers(trial)
            self.state.reset_view()
            if cursor is not None:
                self.state.set_cursor(cursor)
            space = DisplaySpace(atlas_layer_settings=remembered)
            sid = self.current_subject or ""
            self.setWindowTitle(f"{strings.APP_NAME} — {sid}")
            self.statusBar().showMessage(f"{sid} in its own space", 5000)
            self.scheduler.flush()
            self.state.set_space(space)
            return True

        return bool(self._guard(do))

    def _reset_space(self, subject_id: str | None) -> None:
        """A new subject or new files are shown (in their own space): find the subject's atlas
        space for the toggle."""
        old = self.state.space
        was_atlas = old.is_atlas
        space = DisplaySpace(wanted=old.wanted, atlas_layer_settings=old.atlas_layer_settings)
        with self.state.events.space_changed.blocked():
            self.state.set_space(space)
        self._pending_space = None
        if subject_id is None or self.workspace is None:
            self.atlas_link, self.atlas_reason = None, atlas_space.NO_WORKSPACE
            space.wanted = False
        else:
            try:
                self.atlas_link, self.atlas_reason = atlas_space.find_atlas_link(
                    self.workspace, subject_id, self._subject_run)
            except (BodyageError, OSError, ValueError) as err:
                self.atlas_link, self.atlas_reason = None, str(err)
        self._update_space_controls()
        if was_atlas:
            self.state.events.space_changed.emit(atlas_space.SUBJECT)

    def workspace_subject(self, subject_id: str | None) -> None:
        self.current_subject = subject_id

    def open_subject(self, subject_id: str, wait: bool = False) -> bool:
        """Open a subject of the workspace by id (what a click in a cohort plot calls).

        Shown at once when preloaded, otherwise after a background read; ``wait=True`` blocks
        until it is shown. ``subject_changed`` is emitted when it is."""
        if subject_id not in self._subject_images:
            self.report_error(CohortError(f"no subject {subject_id!r} in the open workspace"))
            return False
        self.subject_browser.select(subject_id, emit=False)
        ok = self._subject_activated(subject_id)
        return self.wait_for_subject() if ok and wait else ok

    def _subject_activated(self, subject_id: str) -> bool:
        """Start showing a subject: at once when preloaded, else when its files are read (in
        the background; the UI stays responsive and a newer request wins)."""
        fut = self.preloader.future(subject_id)
        self._pending_subject = (subject_id, fut)
        if fut.done():
            return self._finish_subject(subject_id, fut)
        self.statusBar().showMessage(f"loading {subject_id} ...")
        _emit_when_done(fut, lambda f, sid=subject_id: self._payload_ready.emit(sid, f))
        return True

    def _on_payload_ready(self, subject_id: str, fut) -> None:
        if self._pending_subject is None or self._pending_subject[1] is not fut:
            return  # a newer subject was asked for meanwhile
        self._finish_subject(subject_id, fut)

    def wait_for_subject(self, timeout: float = 60.0) -> bool:
        """Block until the subject being loaded is shown (for scripts, screenshots, tests)."""
        if self._pending_subject is None:
            return True
        subject_id, fut = self._pending_subject
        try:
            fut.exception(timeout)
        except TimeoutError:
            return False
        return self._finish_subject(subject_id, fut)

    def _finish_subject(self, subject_id: str, fut) -> bool:
        self._pending_subject = None
        self.preloader.take(subject_id)

        def do():
            payload = fut.result()
            trial = ViewerState(self.state.convention, self.state.layout)
            trial.add_layer(payload["image"], name=subject_id, path=payload["image_path"],
                            kind="image", display_range=payload.get("image_range"))
            heat = None
            for name, path, vol, kind, disp in payload["overlays"]:
                lay = trial.add_layer(vol, name=name, path=path, **disp)
                heat = lay if kind == "overlay" else heat
            trial.set_active_layer(heat or trial.base_layer)
            # same place in the next subject (a cursor in atlas space is not a subject point)
            self._replace_layers(trial, keep_cursor=self.display_space == atlas_space.SUBJECT)
            self.current_subject = subject_id
            wanted = self.state.space.wanted
            self._reset_space(subject_id)
            if wanted and self.atlas_link is not None:
                self.set_display_space(atlas_space.ATLAS)  # stays in atlas space
            self.setWindowTitle(f"{strings.APP_NAME} — {subject_id}")
            self.subject_changed.emit(subject_id)
            self.preloader.preload(self.subject_browser.neighbour(+1))
            return True

        return bool(self._guard(do))

    def next_subject(self) -> str | None:
        return self.subject_browser.select_next()

    def previous_subject(self) -> str | None:
        return self.subject_browser.select_previous()

    def _load_subject_payload(self, subject_id: str) -> dict[str, Any]:
        """Read one subject's images and work out their display settings (runs in the
        preloader thread: files and numpy only, no Qt), so that showing the subject costs the
        GUI thread little more than the first frame."""
        images = self._subject_images.get(subject_id)
        if images is None:
            raise CohortError(f"no subject {subject_id!r} in the open workspace")
        water, fat = images.get("water"), images.get("fat")
        # a streamed UK Biobank subject records one zip as both its water and its fat image
        one_file = water is not None and fat is not None and Path(water) == Path(fat)
        if water is not None:
            image_path = water
            base_paths = [water] + ([fat] if fat is not None and not one_file else [])
        else:
            kind = next((k for k in ("t1", "input", "image") if k in images), None)
            if kind is None:
                kind = next((k for k in images if not k.startswith(("gradcam", "to_atlas",
                                                                    "labels", "age_mask"))),
                            None)
            if kind is None:
                raise CohortError(f"subject {subject_id} has no image to show",
                                  hint="import its images first")
            image_path = images[kind]
            base_paths = [image_path]
        extra: list[tuple[str, Path, str]] = []
        if "labels" in images:
            extra.append(("labels", images["labels"], "labels"))
        run = self._subject_run
        cams = [k for k in images if k.startswith("gradcam")]
        cam = f"gradcam_{run}" if run and f"gradcam_{run}" in images else (cams[-1] if cams
                                                                           else None)
        if cam is not None:
            extra.append((cam, images[cam], "overlay"))
        # every file at once (gzip and numpy release the GIL)
        loaded = load_many(base_paths + [p for _, p, _ in extra],
                           [False] * len(base_paths) + [k == "labels" for _, _, k in extra])
        vol = loaded[0]
        if water is not None and fat is not None and not one_file and loaded[1].same_grid(vol):
            vol = _water_fat(vol, loaded[1])
        overlays = []
        for (name, path, kind), v in zip(extra, loaded[len(base_paths):]):
            if kind == "overlay":  # an importance map: threshold it so anatomy shows
                disp = display.importance_display(v.data[0], signed="signed" in name)
            else:
                mx = v.data[0].max() if v.data.size else 1
                disp = {"kind": "labels", "visible": False, "opacity": 0.35,
                        "display_range": (0.0, float(mx))}
            overlays.append((name, path, v, kind, disp))
        return {"image_path": image_path, "image": vol, "overlays": overlays,
                "image_range": default_image_range(vol)}

    # -- recent files / settings ---------------------------------------------------------------------------
    def _add_recent(self, key: str, value: str) -> None:
        items = [v for v in self._recent(key) if v != value]
        items.insert(0, str(Path(value).resolve()) if Path(value).exists() else value)
        self.settings.setValue(key, json.dumps(items[:MAX_RECENT]))
        self._refresh_recent_menus()

    def _recent(self, key: str) -> list[str]:
        raw = self.settings.value(key, "[]")
        try:
            items = json.loads(raw) if isinstance(raw, str) else list(raw or [])
        except ValueError:
            items = []
        return [str(i) for i in items]

    def _refresh_recent_menus(self) -> None:
        for menu, key, fn in ((self.recent_files_menu, "recent_files",
                               lambda p: self.open_files([p], wait=False)),
                              (self.recent_workspaces_menu, "recent_workspaces",
                               self.open_workspace)):
            menu.clear()
            for item in self._recent(key):
                a = menu.addAction(item)
                a.triggered.connect(lambda _=False, p=item, f=fn: f(p))
            menu.setEnabled(bool(self._recent(key)))

    # -- dialogs (interactive only) -------------------------------------------------------------------------
    def _ask_open_files(self):
        paths, _ = QtWidgets.QFileDialog.getOpenFileNames(self, "Open images", "",
                                                          strings.OPEN_FILTER)
        if paths:
            self.open_files(paths, wait=False)

    def _ask_open_dicom(self):
        path = QtWidgets.QFileDialog.getExistingDirectory(self, "Open a DICOM folder")
        if path:
            self.open_files([path], wait=False)

    def _ask_open_workspace(self):
        path = QtWidgets.QFileDialog.getExistingDirectory(self, "Open a workspace")
        if path:
            self.open_workspace(path)

    def _ask_add_overlay(self):
        path, _ = QtWidgets.QFileDialog.getOpenFileName(self, "Add an overlay", "",
                                                        strings.OPEN_FILTER)
        if path:
            self.add_overlay(path)

    def _ask_save_session(self):
        path, _ = QtWidgets.QFileDialog.getSaveFileName(self, "Save session", "session.json",
                                                        strings.SESSION_FILTER)
        if path:
            self.save_session(path)

    def _ask_restore_session(self):
        path, _ = QtWidgets.QFileDialog.getOpenFileName(self, "Restore session", "",
                                                        strings.SESSION_FILTER)
        if path:
            self.restore_session(path)

    def _ask_screenshot(self):
        path, _ = QtWidgets.QFileDialog.getSaveFileName(self, "Save screenshot", "views.png",
                                                        strings.PNG_FILTER)
        if path:
            self.save_screenshot(path)

    def closeEvent(self, ev):  # noqa: N802
        self.save_settings()
        self.preloader.shutdown()
        self._io_pool.shutdown(wait=False, cancel_futures=True)
        if isinstance(self.volume_view, QtVolumeView):
            self.volume_view.close_vtk()
        for w in (*self.slice_views.values(), self.colorbar, self.readout_panel,
                  self.layer_panel):
            w.disconnect_state()
        self.state.events.layout_changed.disconnect(self._apply_layout)
        self.state.events.cursor_changed.disconnect(self._status_cursor)
        self.state.events.convention_changed.disconnect(self._convention_changed)
        super().closeEvent(ev)


def _subject_rows(ws) -> tuple[list[dict[str, Any]], dict[str, dict[str, Path]]]:
    subjects = ws.db.subjects()
    run = ws.db.latest_run()
    preds = {p["subject_id"]: p for p in ws.db.predictions(run)} if run else {}
    rows, images = [], {}
    for s in subjects:
        p = preds.get(s.subject_id, {})
        predicted = p.get("corrected") if p.get("corrected") is not None else p.get("mean")
        rows.append({"subject_id": s.subject_id, "sex": s.sex, "bmi_group": s.bmi_group,
                     "age": s.age, "predicted": predicted, "sigma": p.get("sigma"),
                     "gap": p.get("gap")})
        images[s.subject_id] = {k: ws.resolve(v) for k, v in s.images.items()}
    return rows, images


def _emit_when_done(fut: concurrent.futures.Future,
                    emit: Callable[[concurrent.futures.Future], None]) -> None:
    """Call ``emit(fut)`` (a signal emit, which queues the work to the GUI thread) once
    ``fut`` is done, from whichever thread finishes it; a window already gone is ignored."""
    def ready(f: concurrent.futures.Future) -> None:
        try:
            emit(f)
        except RuntimeError:  # the window is gone
            pass

    fut.add_done_callback(ready)


def _build_trial(all_paths: list[Path], flags: list[bool], n_images: int, convention: str,
                 layout: str, threshold: float | None) -> ViewerState:
    """Read, check and lay out opened files in the I/O thread (Qt-free; holds no Qt object)."""
    loaded = load_many(all_paths, flags)
    trial = ViewerState(convention, layout)
    QtMainWindow._fill(trial, list(zip(all_paths[:n_images], loaded[:n_images])),
                       list(zip(all_paths[n_images:], loaded[n_images:])), threshold)
    return trial


def _water_fat(water: Volume, fat: Volume) -> Volume:
    """The first channels of a water and a fat image (same grid) as one ``water``/``fat``
    volume with the water image's provenance and metadata."""
    return Volume(np.concatenate([water.data[:1], fat.data[:1]]), water.affine,
                  ("water", "fat"), dict(water.provenance), dict(water.metadata))


def _session_loader(path: str) -> Volume:
    """A session's file. A workspace subject's water image comes back with its fat image
    (``water.nii.gz`` + ``fat.nii.gz`` beside it, as the viewer shows a subject), so a
    session saved on a subject restores its ``water``/``fat`` channel."""
    vol = load_for_viewer(path, labels=looks_like_label_map(path))
    p = Path(path)
    if p.name.startswith("water.") and vol.data.shape[0] == 1:
        fat_path = p.with_name("fat." + p.name[len("water."):])
        if fat_path.exists():
            fat = load_for_viewer(fat_path)
            if fat.same_grid(vol) and fat.data.shape[0] == 1:
                vol = _water_fat(vol, fat)
    return vol


def _placeholder(text: str) -> QtWidgets.QLabel:
    lab = QtWidgets.QLabel(text)
    lab.setAlignment(_Qt.AlignmentFlag.AlignCenter)
    lab.setStyleSheet("color: #aaaaaa; background: black;")
    return lab


_key = bindings.key_for


def _short(v: Any) -> str:
    return str(v) if isinstance(v, int) else f"{v:.4g}"
