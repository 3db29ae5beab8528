"""Work-arounds for bugs of the installed Qt binding, applied once when ``bodyage_gui`` is
imported (before any widget exists).

PySide6 6.12 on CPython 3.11 returns the singletons ``None`` and ``True`` without taking a
reference: every call of a method returning ``void`` (``setText``, ``update``, ``resize``,
``processEvents`` ...) drops one reference to ``None`` and every ``signal.emit()`` one reference to
``True``. CPython >= 3.12 makes these singletons immortal, which hides the bug; on 3.11 the
reference count reaches zero after some ten thousand calls and CPython aborts with "Fatal Python
error: none_dealloc / bool_dealloc: deallocating None / True" (at once, or at interpreter exit when
the garbage collector runs). We give ``None``, ``True`` and ``False`` the same effectively-immortal
reference count once: they are static objects that are never freed anyway, so this changes nothing
else. ``tests/gui/test_gui_viewer.py`` checks the leak is neutralised. The real fix is upstream (or
Python >= 3.12, where the singletons are immortal).
"""

from __future__ import annotations

import ctypes
import sys

_IMMORTAL = 1 << 40
_SINGLETONS = (None, True, False)


def singleton_leaks() -> dict[str, int]:
    """How many references to None / True calls into PySide6 lose (0, 0 when the binding is
    sound): 20 void calls and 20 signal emissions."""
    from PySide6 import QtCore

    class _Probe(QtCore.QObject):
        sig = QtCore.Signal()

    probe = _Probe()
    none0, true0 = sys.getrefcount(None), sys.getrefcount(True)
    for _ in range(20):
        probe.setObjectName("probe")  # returns void
        probe.sig.emit()  # returns bool
    return {"None": none0 - sys.getrefcount(None), "True": true0 - sys.getrefcount(True)}


def _immortal(obj: object) -> bool:
    return sys.getrefcount(obj) > _IMMORTAL // 2


def apply() -> bool:
    """Make None/True/False effectively immortal on CPython < 3.12 when the bug is present."""
    if sys.version_info >= (3, 12) or sys.implementation.name != "cpython":
        return False
    if all(_immortal(o) for o in _SINGLETONS):
        return True  # already applied
    try:
        leaks = singleton_leaks()
    except ImportError:  # pragma: no cover - no PySide6
        return False
    if leaks["None"] <= 0 and leaks["True"] <= 0:
        return False
    for obj in _SINGLETONS:
        if not _immortal(obj):
            ctypes.c_ssize_t.from_address(id(obj)).value += _IMMORTAL
    return True


APPLIED = apply()


# -- garbage collection only at safe points in the GUI thread ---------------------------------------
#
# CPython's cyclic collector runs whenever enough objects were allocated, in whatever thread is
# allocating, and may then destroy Qt objects caught in reference cycles (a closed window, its
# menus and actions). Inside a Qt call that holds one of Qt's internal locks (a signal
# disconnect, for instance) the destructor waits for that same lock and the program hangs; from a
# worker thread (a training run allocating tensors) it destroys widgets outside the GUI thread and
# the program crashes. Both were seen here (a hang in QObject::disconnect and a segfault during a
# background training). So while Qt runs, automatic collection is off and a timer collects in the
# GUI thread's event loop, where no Qt lock is held: the approach of pyqtgraph's
# GarbageCollector, which we use, owned by the application so it lives as long as Qt does.

_collector = None


def collect_garbage_in_gui_thread(interval_s: float = 1.0) -> bool:
    """Turn automatic garbage collection off and collect from a timer in the GUI thread instead.

    Idempotent; needs a QApplication. Returns whether the guard is active."""
    global _collector
    from PySide6 import QtCore

    app = QtCore.QCoreApplication.instance()
    if app is None:
        return False
    if _collector is None or _collector.timer.thread() is not app.thread():
        from pyqtgraph.util.garbage_collector import GarbageCollector

        _collector = GarbageCollector(interval=interval_s)
        _collector.timer.moveToThread(app.thread())
        app.aboutToQuit.connect(_collector.timer.stop)
    import gc

    gc.disable()  # again: somebody (a test, a library) may have turned it back on
    return True
