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


def test_garbage_is_collected_in_the_gui_thread_while_a_worker_runs(qtbot):
    """A worker thread allocating (a training run) must never trigger the cyclic collector: it
    would destroy Qt objects outside the GUI thread. Collection happens on the GUI thread's timer."""
    import gc
    import threading
    import weakref

    gc.enable()  # as a library user might have left it
    seen_in: list[str] = []

    class Cycle:
        def __init__(self):
            self.me = self

        def __del__(self):
            seen_in.append(threading.current_thread().name)

    def allocate_cycles(reporter):
        for i in range(20):
            for _ in range(2000):  # far past gc's generation-0 threshold of 700 allocations
                Cycle()
            reporter.update("alloc", i + 1, 20)
        return "done"

    w = QtWorker(allocate_cycles)
    with qtbot.waitSignal(w.finished, timeout=20000):
        w.start()
    assert not gc.isenabled()
    # nothing collected in the worker; the GUI thread's timer may already have collected some
    # of its garbage (it fires while the worker runs)
    assert set(seen_in) <= {threading.main_thread().name}, set(seen_in)
    probe = Cycle()
    ref = weakref.ref(probe)
    del probe
    qtbot.waitUntil(lambda: ref() is None, timeout=5000)  # the GUI thread's timer collected it
    assert seen_in and set(seen_in) == {threading.main_thread().name}
    assert w.wait(2000)
