"""The main window's menus: each entry calls an action object (:mod:`bodyage_gui.actions`) or a
window hook; keys come from the one table in :mod:`bodyage_gui.bindings`."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from PySide6 import QtGui, QtWidgets

from bodyage_core.viewer import LAYOUTS, atlas_space
from bodyage_gui import bindings, strings
from bodyage_gui.actions import screenshot, session
from bodyage_gui.actions.recent import FILES, WORKSPACES
from bodyage_gui.actions.shortcuts import show_shortcuts

_key = bindings.key_for


def add_action(menu: QtWidgets.QMenu, text: str, slot: Callable, shortcut: Any = None,
               tip: str = "") -> QtGui.QAction:
    a = menu.addAction(text)
    a.triggered.connect(lambda _=False: slot())
    if shortcut is not None:
        a.setShortcut(QtGui.QKeySequence(shortcut))
    if tip:
        a.setStatusTip(tip)
        a.setToolTip(tip)
    return a


def build_menus(win: Any) -> None:
    """File, View, Tools, Subject, Analysis (a hook: filled by the analysis tools) and Help."""
    mb = win.menuBar()
    f = win.file_menu = mb.addMenu("&File")
    add_action(f, "&Open files...", win.files.ask_open_files, _key("open_files"))
    add_action(f, "Open &DICOM folder...", win.files.ask_open_dicom, _key("open_dicom"),
               "browse a folder's DICOM patients, studies and series and open one")
    add_action(f, "Open &workspace...", win.files.ask_open_workspace, _key("open_workspace"))
    add_action(f, "Add &overlay...", win.files.ask_add_overlay)
    win.recent_files_menu = f.addMenu("Recent files")
    win.recent_workspaces_menu = f.addMenu("Recent workspaces")
    win.recent.attach(FILES, win.recent_files_menu, lambda p: win.open_files([p], wait=False))
    win.recent.attach(WORKSPACES, win.recent_workspaces_menu, win.open_workspace)
    f.addSeparator()
    add_action(f, "&Save session...", lambda: session.ask_save_session(win),
               _key("save_session"))
    add_action(f, "&Restore session...", lambda: session.ask_restore_session(win))
    add_action(f, "Save screens&hot...", lambda: screenshot.ask_screenshot(win),
               _key("screenshot"))
    add_action(f, "Export ROI &statistics...", win.tools.ask_export_statistics)
    f.addSeparator()
    add_action(f, "&Quit", win.close, QtGui.QKeySequence.StandardKey.Quit)

    v = win.view_menu = mb.addMenu("&View")
    win.convention_action = add_action(v, "&Radiological convention", win.state.toggle_convention,
                                       _key("toggle_convention"))
    win.convention_action.setCheckable(True)
    win.convention_action.setChecked(win.state.radiological)
    layout_menu = v.addMenu("&Layout")
    group = QtGui.QActionGroup(win)
    win.layout_actions = {}
    for name in LAYOUTS:
        a = add_action(layout_menu, name, lambda n=name: win.state.set_layout(n),
                       _key(f"layout_{name}"))
        a.setCheckable(True)
        a.setChecked(name == win.state.layout)
        group.addAction(a)
        win.layout_actions[name] = a
    win.lightbox_settings_action = add_action(
        v, "Lightbox &settings...", win.show_lightbox_settings,
        tip="rows, columns and slice spacing of the lightbox")
    win.interpolation_action = add_action(
        v, "&Linear interpolation", win.toggle_interpolation, _key("toggle_interpolation"),
        "draw the slices smoothly interpolated (display only; readouts and statistics use "
        "the voxels)")
    win.interpolation_action.setCheckable(True)
    win.interpolation_action.setChecked(win.state.interpolation == "linear")
    win.atlas_action = add_action(v, "&Atlas space (subject's group)", win.toggle_atlas_space,
                                  _key("toggle_atlas_space"))
    win.atlas_action.setCheckable(True)
    win.atlas_action.setEnabled(False)
    win.atlas_action.setToolTip(atlas_space.NO_WORKSPACE)
    win.atlas_action.setStatusTip(atlas_space.NO_WORKSPACE)
    v.setToolTipsVisible(True)
    win.population_action = add_action(v, "Add &population map on the subject",
                                       lambda: win.add_population_to_subject())
    win.population_action.setEnabled(False)
    add_action(v, "Side by side...", win.open_side_by_side, _key("side_by_side"),
               "a second subject or the atlas in linked views beside this one")
    add_action(v, "Reset views (R)", win.state.reset)
    win.channel_menu = v.addMenu("&Channel")
    win.channel_menu.aboutToShow.connect(win.fill_channel_menu)
    win.panels_menu = v.addMenu("&Panels")

    t = win.tools_menu = mb.addMenu("&Tools")
    win.tools.install(t)

    s = win.subject_menu = mb.addMenu("&Subject")
    add_action(s, "&Next subject", win.next_subject, _key("next_subject"))
    add_action(s, "&Previous subject", win.previous_subject, _key("previous_subject"))
    #: hook: Predict / Train / Cohort actions go here
    win.analysis_menu = mb.addMenu("&Analysis")
    h = win.help_menu = mb.addMenu("&Help")
    add_action(h, "&Keyboard and mouse shortcuts", win.show_shortcuts,
               QtGui.QKeySequence.StandardKey.HelpContents)
    add_action(h, "&About", lambda: QtWidgets.QMessageBox.about(win, strings.APP_NAME,
                                                                strings.ABOUT))


__all__ = ["add_action", "build_menus", "show_shortcuts"]
