"""QtWorker runs real core-style work in a thread: progress, result, error, cancel."""

from __future__ import annotations

import time

import pytest

pytest.importorskip("PySide6")

from bodyage_core.errors import LoadError  # noqa: E402
from bodyage_gui.workers.qt_worker import QtWorker  # noqa: E402


def _count(reporter, n=5, delay=0.01):
    total = 0
    for i in range(n):
        time.sleep(delay)
        total += i
        reporter.update("count", i + 1, n)
    return total


def test_worker_reports_progress_and_result(qtbot):
    w = QtWorker(lambda r: _count(r))
    seen = []
    w.progress_changed.connect(lambda ev: seen.append(ev.done))
    with qtbot.waitSignal(w.finished, timeout=5000) as blocker:
        w.start()
    assert blocker.args == [10]
    qtbot.waitUntil(lambda: seen == [1, 2, 3, 4, 5], timeout=2000)
    assert w.wait(2000)


def test_worker_cancel_stops_at_next_progress_point(qtbot):
    w = QtWorker(lambda r: _count(r, n=1000, delay=0.005))
    seen = []
    w.progress_changed.connect(lambda ev: seen.append(ev.done))
    with qtbot.waitSignal(w.cancelled, timeout=5000):
        w.start()
        qtbot.waitUntil(lambda: len(seen) >= 3, timeout=3000)
        w.cancel()
    assert w.wait(2000)
    qtbot.wait(50)
    assert len(seen) < 1000


def test_worker_user_error_becomes_message(qtbot, tmp_path):
    def fail(reporter):
        raise LoadError("truncated gzip stream", tmp_path / "x.nii.gz", "re-export the file")

    w = QtWorker(fail)
    with qtbot.waitSignal(w.failed, timeout=5000) as blocker:
        w.start()
    assert "x.nii.gz" in blocker.args[0] and "re-export" in blocker.args[0]
    assert w.wait(2000)
