"""Test setup: Qt runs on the offscreen platform unless a real (virtual) X display is asked for.

GUI tests use pytest-qt. Tests marked ``xvfb`` need an X server with OpenGL (the VTK 3D view);
run them with ``xvfb-run -a .venv/bin/python -m pytest -m xvfb tests``. Without a display they are
skipped. Set at import so the QApplication pytest-qt creates uses the right platform.
"""

from __future__ import annotations

import os
import sys

_WANTS_XVFB = any(a in ("xvfb", "-mxvfb") or a.startswith("xvfb") for a in sys.argv) or \
    os.environ.get("BODYAGE_TEST_XVFB") == "1"

if not (os.environ.get("DISPLAY") and _WANTS_XVFB):
    os.environ["QT_QPA_PLATFORM"] = "offscreen"

import pytest  # noqa: E402


def pytest_collection_modifyitems(config, items):
    if os.environ.get("QT_QPA_PLATFORM") == "offscreen":
        skip = pytest.mark.skip(reason="needs a display: xvfb-run -a pytest -m xvfb")
        for item in items:
            if "xvfb" in item.keywords:
                item.add_marker(skip)


@pytest.fixture(autouse=True)
def _collect_garbage_at_safe_points(request):
    """Qt objects must not be destroyed by the cyclic collector in the middle of a Qt call or in a
    worker thread (bodyage_gui._pyside_fixes explains the hang and the crash this caused): with a
    QApplication alive, automatic collection is off, and each test's garbage, closed windows
    included, is collected here, between tests, in the main thread."""
    if {"qtbot", "qapp"} & set(request.fixturenames):
        request.getfixturevalue("qapp")
        from bodyage_gui._pyside_fixes import collect_garbage_in_gui_thread

        collect_garbage_in_gui_thread()
    yield
    qt = sys.modules.get("PySide6.QtWidgets")
    app = qt.QApplication.instance() if qt is not None else None
    if app is None:
        return
    from PySide6 import QtCore

    from bodyage_gui._pyside_fixes import collect_garbage_in_gui_thread

    collect_garbage_in_gui_thread()
    QtCore.QCoreApplication.sendPostedEvents(None, QtCore.QEvent.Type.DeferredDelete)
    import gc

    gui_test = bool({"qtbot", "qapp"} & set(request.fixturenames))
    gc.collect() if gui_test else gc.collect(1)
