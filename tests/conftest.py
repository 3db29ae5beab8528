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
