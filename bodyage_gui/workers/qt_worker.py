"""Run long core work in a background thread and talk to the GUI only through signals.

Core functions take a Qt-free :class:`~bodyage_core.progress.ProgressReporter`; this module
wraps one such call in a ``QThread``: the reporter's callback emits ``progress_changed`` (queued
to the main thread), ``cancel()`` sets the reporter's cancel flag so the work stops at its next
progress point, and the outcome arrives as exactly one of ``finished`` (result), ``failed``
(message, with the BodyageError text for user errors) or ``cancelled``.
"""

from __future__ import annotations

import traceback
from collections.abc import Callable
from typing import Any

from PySide6.QtCore import QObject, Qt, QThread, Signal

from bodyage_core.errors import BodyageError, Cancelled
from bodyage_core.progress import ProgressEvent, ProgressReporter
from bodyage_gui._pyside_fixes import collect_garbage_in_gui_thread


class _Runner(QObject):
    progress_changed = Signal(object)
    finished = Signal(object)
    failed = Signal(str)
    cancelled = Signal()

    def __init__(self, fn: Callable[[ProgressReporter], Any]):
        super().__init__()
        self._fn = fn
        self.reporter = ProgressReporter(self._emit)

    def _emit(self, event: ProgressEvent) -> None:
        self.progress_changed.emit(event)

    def run(self) -> None:
        try:
            result = self._fn(self.reporter)
        except Cancelled:
            self.cancelled.emit()
        except BodyageError as err:
            self.failed.emit(str(err))
        except MemoryError:
            self.failed.emit("out of memory — close other programs or use a smaller batch")
        except Exception as err:  # a bug: keep the traceback for the log, show the message
            traceback.print_exc()
            self.failed.emit(f"{type(err).__name__}: {err}")
        else:
            self.finished.emit(result)


class QtWorker(QObject):
    """One background job. Create, connect signals, :meth:`start`; :meth:`cancel` to stop.

    Parameters
    ----------
    fn
        ``fn(reporter) -> result``: the core call, taking the reporter it must report through.
    """

    progress_changed = Signal(object)  # ProgressEvent
    finished = Signal(object)  # the result of fn
    failed = Signal(str)  # a one-line message for the user
    cancelled = Signal()
    done = Signal()  # after any of the three outcomes, once the thread has ended

    def __init__(self, fn: Callable[[ProgressReporter], Any], parent: QObject | None = None):
        super().__init__(parent)
        self._thread = QThread()
        self._runner = _Runner(fn)
        self._runner.moveToThread(self._thread)
        self._thread.started.connect(self._runner.run)
        self._runner.progress_changed.connect(self.progress_changed)
        self._runner.finished.connect(self.finished)
        self._runner.failed.connect(self.failed)
        self._runner.cancelled.connect(self.cancelled)
        # Direct: quit() is thread safe, and the thread must end even if the main loop is not
        # running (a caller blocking in wait() right after the outcome signal).
        for sig in (self._runner.finished, self._runner.failed, self._runner.cancelled):
            sig.connect(self._thread.quit, Qt.ConnectionType.DirectConnection)
        self._thread.finished.connect(self.done)

    def start(self) -> None:
        # the run allocates in its own thread: the collector must not destroy Qt objects there
        collect_garbage_in_gui_thread()
        self._thread.start()

    def cancel(self) -> None:
        self._runner.reporter.cancel()

    def is_running(self) -> bool:
        return self._thread.isRunning()

    def wait(self, msecs: int = 30000) -> bool:
        return self._thread.wait(msecs)
