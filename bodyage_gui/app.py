"""Starting the viewer: the QApplication, the main window from a ViewerState, screenshots."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

from bodyage_core.viewer import ViewerState


def ensure_platform() -> None:
    """Use the offscreen Qt platform when there is no display (headless screenshots)."""
    if sys.platform.startswith("linux") and not os.environ.get("DISPLAY") \
            and not os.environ.get("WAYLAND_DISPLAY"):
        os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")


def application(argv: list[str] | None = None):
    """The QApplication (created once)."""
    ensure_platform()
    from PySide6 import QtWidgets

    from bodyage_gui import strings

    app = QtWidgets.QApplication.instance()
    if app is None:
        app = QtWidgets.QApplication(argv or [strings.APP_NAME])
        app.setOrganizationName(strings.ORG_NAME)
        app.setApplicationName("viewer")
    if app.windowIcon().isNull():
        from PySide6 import QtGui

        from bodyage_core.resources import icon_path

        if icon_path().is_file():
            app.setWindowIcon(QtGui.QIcon(str(icon_path())))
    from bodyage_gui._pyside_fixes import collect_garbage_in_gui_thread

    collect_garbage_in_gui_thread()
    return app


def open_window(state: ViewerState | None = None, workspace: str | Path | None = None,
                dicom_folder: str | Path | None = None, size: tuple[int, int] = (1400, 900),
                interactive: bool = True, settings: Any = None, wait: bool = False):
    """The main window for what the command line gave: ``state`` (its files go to File >
    Recent files, as if opened from the menu), a workspace, or a DICOM folder of several
    series (the series browser opens on it)."""
    application()
    from bodyage_gui.actions.recent import FILES
    from bodyage_gui.qt_main_window import QtMainWindow

    win = QtMainWindow(state, show_dialogs=interactive, restore_settings=interactive,
                       settings=settings)
    win.resize(*size)
    for lay in win.state.layers if interactive else ():   # not a screenshot's files
        if lay.path:
            win.recent.add(FILES, lay.path)
    base = win.state.base_layer
    if base is not None and base.path:
        win.setWindowTitle(f"{win.windowTitle()} — {Path(base.path).name}")
    if workspace is not None:
        win.open_workspace(workspace, wait=wait)
    if dicom_folder is not None:
        win.open_dicom_browser(dicom_folder)
    return win


def run_viewer(state: ViewerState | None = None, workspace: str | Path | None = None,
               session: str | Path | None = None, screenshot: str | Path | None = None,
               size: tuple[int, int] = (1400, 900), whole_window: bool = False,
               exec_loop: bool = True, dicom_folder: str | Path | None = None) -> int:
    """Show the viewer for ``state`` (and/or a workspace, a session file, a DICOM folder).

    With ``screenshot`` the window is rendered (offscreen or under xvfb), saved as PNG and the
    function returns without entering the event loop. Returns an exit code.
    """
    app = application()
    win = open_window(state, workspace, dicom_folder, size, interactive=screenshot is None,
                      wait=screenshot is not None)
    session_ok = win.restore_session(session) if session is not None else True
    win.show()
    if screenshot is not None:
        for text in win.warnings:
            print(f"bodyage gui: {text}", file=sys.stderr)
        if not session_ok:
            print(f"bodyage gui: error: {win.last_error}", file=sys.stderr)
            win.close()
            return 2
        for _ in range(5):
            app.processEvents()
        ok = win.save_screenshot(screenshot, whole_window=whole_window)
        if not ok:
            print(f"bodyage gui: error: {win.last_error}", file=sys.stderr)
        win.close()
        return 0 if ok else 2
    if win.last_error and not exec_loop:
        return 2
    if not exec_loop:
        return 0
    _quit_on_signals(app, win)
    return int(app.exec())


def _quit_on_signals(app, win) -> None:
    """Ctrl+C in the terminal or a SIGTERM closes the window (the analysis threads stop
    first, the close guard waits for them) instead of being ignored while Qt's event loop
    runs: Python runs signal handlers only between bytecodes, so a timer wakes it."""
    import signal
    import threading

    from PySide6 import QtCore

    if threading.current_thread() is not threading.main_thread():
        return
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: QtCore.QTimer.singleShot(0, win.close))
    timer = QtCore.QTimer(win)
    timer.timeout.connect(lambda: None)
    timer.start(250)


def main(argv: list[str] | None = None) -> Any:  # pragma: no cover - convenience
    from bodyage_core.cli.main import main as cli_main

    return cli_main(["gui", *(argv if argv is not None else sys.argv[1:])])
