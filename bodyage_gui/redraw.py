"""Coalesced redraws: views mark themselves dirty; one flush per frame redraws them all."""

from __future__ import annotations

import time

from PySide6 import QtCore


class RedrawScheduler(QtCore.QObject):
    """Collects redraw requests and flushes them at most once per ``min_interval_ms``.

    A dragged crosshair produces many state changes per frame; each view is re-sliced and
    repainted once per flush (FSLeyes ``idle(skipIfQueued=True)``).
    """

    flushed = QtCore.Signal()

    def __init__(self, min_interval_ms: int = 16, parent: QtCore.QObject | None = None):
        super().__init__(parent)
        self._min = min_interval_ms / 1000.0
        self._pending: dict[int, object] = {}
        self._last = 0.0
        self._timer = QtCore.QTimer(self)
        self._timer.setSingleShot(True)
        self._timer.timeout.connect(self.flush)
        self.n_flushes = 0

    def request(self, view: object) -> None:
        self._pending[id(view)] = view
        if not self._timer.isActive():
            wait = max(0.0, self._min - (time.perf_counter() - self._last))
            self._timer.start(int(wait * 1000))

    @property
    def pending(self) -> bool:
        return bool(self._pending)

    def flush(self) -> None:
        """Redraw every view that asked, now."""
        self._timer.stop()
        views, self._pending = list(self._pending.values()), {}
        for v in views:
            v.flush()  # type: ignore[attr-defined]
        self._last = time.perf_counter()
        self.n_flushes += 1
        if views:
            self.flushed.emit()
