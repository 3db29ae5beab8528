"""Qt-free progress reporting with cancellation.

Long work in core (training, inference, Grad-CAM, registration, atlas building, import) takes a
``reporter``. Every call to :meth:`ProgressReporter.update` is a progress point *and* a
cancellation point: if the reporter was asked to cancel, ``update`` raises :class:`Cancelled`.
The GUI subclasses nothing: it passes a reporter whose callback emits a Qt signal; the CLI passes
:class:`TerminalProgress`.
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from bodyage_core.errors import Cancelled


@dataclass
class ProgressEvent:
    """One progress report: ``done`` of ``total`` units of ``stage``, plus free-form values."""

    stage: str
    done: float
    total: float | None = None
    message: str = ""
    values: dict[str, Any] = field(default_factory=dict)
    elapsed: float = 0.0

    @property
    def fraction(self) -> float | None:
        if not self.total:
            return None
        return max(0.0, min(1.0, self.done / self.total))

    @property
    def eta(self) -> float | None:
        """Seconds left, extrapolated linearly from the elapsed time; None when unknown."""
        f = self.fraction
        if f is None or f <= 0:
            return None
        return self.elapsed * (1.0 - f) / f


class ProgressReporter:
    """Collects progress events and answers cancellation requests (thread safe).

    Parameters
    ----------
    callback
        Called with every :class:`ProgressEvent`, from the thread doing the work.
    """

    def __init__(self, callback: Callable[[ProgressEvent], None] | None = None):
        self._callback = callback
        self._cancel = threading.Event()
        self._t0 = time.perf_counter()
        self.last: ProgressEvent | None = None

    def cancel(self) -> None:
        """Ask the work to stop at its next progress point."""
        self._cancel.set()

    @property
    def cancelled(self) -> bool:
        return self._cancel.is_set()

    def check(self) -> None:
        """Raise :class:`Cancelled` if cancellation was requested."""
        if self._cancel.is_set():
            raise Cancelled()

    def update(self, stage: str, done: float, total: float | None = None, message: str = "",
               **values: Any) -> None:
        """Report progress; raises :class:`Cancelled` if the user asked to stop."""
        event = ProgressEvent(stage, done, total, message, values,
                              time.perf_counter() - self._t0)
        self.last = event
        if self._callback is not None:
            self._callback(event)
        self.check()


class NullProgress(ProgressReporter):
    """A reporter that reports nowhere and never cancels."""


def ensure_reporter(reporter: ProgressReporter | None) -> ProgressReporter:
    return reporter if reporter is not None else NullProgress()


class TerminalProgress(ProgressReporter):
    """A one-line terminal progress bar on stderr (used by the CLI)."""

    def __init__(self, stream=None, width: int = 30, min_interval: float = 0.1):
        super().__init__(self._draw)
        self._stream = stream if stream is not None else sys.stderr
        self._width = width
        self._min_interval = min_interval
        self._last_draw = 0.0
        self._stage = None

    def _draw(self, ev: ProgressEvent) -> None:
        now = time.perf_counter()
        final = ev.total is not None and ev.done >= ev.total
        if not final and now - self._last_draw < self._min_interval and ev.stage == self._stage:
            return
        if self._stage is not None and ev.stage != self._stage:
            self._stream.write("\n")
        self._stage = ev.stage
        self._last_draw = now
        f = ev.fraction
        if f is not None:
            n = int(round(f * self._width))
            bar = "#" * n + "-" * (self._width - n)
            count = f"{ev.done:g}/{ev.total:g}"
            eta = ev.eta
            eta_s = f" ETA {_fmt_seconds(eta)}" if eta is not None and not final else ""
            line = f"\r{ev.stage:<12} [{bar}] {count}{eta_s}"
        else:
            line = f"\r{ev.stage:<12} {ev.done:g}"
        extra = " ".join(f"{k}={_fmt_value(v)}" for k, v in ev.values.items())
        if ev.message:
            extra = f"{ev.message} {extra}".strip()
        if extra:
            line += f"  {extra}"
        self._stream.write(line[:160].ljust(80))
        if final:
            self._stream.write("\n")
            self._stage = None
        self._stream.flush()


def _fmt_seconds(s: float) -> str:
    s = int(round(s))
    if s >= 3600:
        return f"{s // 3600}h{(s % 3600) // 60:02d}m"
    if s >= 60:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s}s"


def _fmt_value(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)
