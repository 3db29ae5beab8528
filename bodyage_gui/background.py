"""Background loads where the newest request wins (napari's layer slicer drops stale requests
the same way).

Opening files, showing a subject, switching to atlas space and warping a population map read and
compute in a thread; the GUI thread only takes the finished result. Asked again before the first
finished (PgDown twice, a second File > Open), the older result is dropped when it arrives.
:class:`LatestRequest` is that rule, once::

    self.files = LatestRequest(self)
    self.files.start(pool.submit(read, paths), then=self._show)   # returns at once
    ...
    self.files.wait()          # scripts and tests: block until shown (or dropped)

``then(future)`` runs in the GUI thread, only for the newest request, and its return value is
what :meth:`LatestRequest.wait` returns. Worker code never touches Qt objects: the future's
done-callback only emits a queued signal.
"""

from __future__ import annotations

import concurrent.futures as cf
from collections.abc import Callable
from typing import Any

from PySide6 import QtCore


def emit_when_done(fut: cf.Future, emit: Callable[[cf.Future], None]) -> None:
    """Call ``emit(fut)`` (a signal emit, which queues the work to the GUI thread) once ``fut``
    is done, from whichever thread finishes it; a receiver already gone is ignored."""
    def ready(f: cf.Future) -> None:
        try:
            emit(f)
        except RuntimeError:  # the receiver (a window) is gone
            pass

    fut.add_done_callback(ready)


class LatestRequest(QtCore.QObject):
    """One kind of background request of which only the newest counts (see the module
    docstring). ``finished(object)`` is emitted with ``then``'s result after it ran."""

    finished = QtCore.Signal(object)
    _ready = QtCore.Signal(object)

    def __init__(self, parent: QtCore.QObject | None = None):
        super().__init__(parent)
        self._future: cf.Future | None = None
        self._then: Callable[[cf.Future], Any] | None = None
        self._info: Any = None
        self._ready.connect(self._on_ready)

    @property
    def pending(self) -> bool:
        """A request is under way (not yet handed to its ``then``)."""
        return self._future is not None

    @property
    def future(self) -> cf.Future | None:
        """The future of the request under way (None when none is)."""
        return self._future

    @property
    def info(self) -> Any:
        """What the caller attached to the request under way (``start(..., info=)``)."""
        return self._info

    def start(self, fut: cf.Future, then: Callable[[cf.Future], Any], info: Any = None,
              wait: bool = False) -> Any:
        """Make ``fut`` the newest request; ``then(fut)`` runs in the GUI thread once it is
        done (at once when it is done already, or with ``wait``). Returns ``then``'s result
        when it ran now, else True (started)."""
        self._future, self._then, self._info = fut, then, info
        if fut.done() or wait:
            return self.wait()
        emit_when_done(fut, self._ready.emit)
        return True

    def submit(self, pool: cf.Executor, fn: Callable[..., Any], *args: Any,
               then: Callable[[cf.Future], Any], info: Any = None, wait: bool = False) -> Any:
        """``start(pool.submit(fn, *args), then)``."""
        return self.start(pool.submit(fn, *args), then, info, wait)

    def wait(self, timeout: float | None = None) -> Any:
        """Block until the newest request is done and run its ``then`` now; returns its
        result (True when nothing was pending, False on timeout)."""
        fut = self._future
        if fut is None:
            return True
        try:
            fut.exception(timeout)
        except (TimeoutError, cf.TimeoutError):
            return False
        except cf.CancelledError:
            pass
        return self._take(fut)

    def drop(self) -> None:
        """Forget the request under way (its result is dropped when it arrives)."""
        self._future = self._then = self._info = None

    def _on_ready(self, fut: cf.Future) -> None:
        if fut is self._future:    # else a newer request superseded it
            self._take(fut)

    def _take(self, fut: cf.Future) -> Any:
        if fut is not self._future:
            return False
        then = self._then
        self.drop()
        out = then(fut) if then is not None else None
        self.finished.emit(out)
        return out
