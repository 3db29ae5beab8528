"""A small event system for the trainer (MONAI/Ignite style): handlers attach to named events
and receive the trainer's :class:`TrainState`. The trainer knows nothing about Qt; a GUI attaches
a handler that emits a signal, a test attaches a list.append."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from typing import Any


class Events:
    STARTED = "started"
    EPOCH_STARTED = "epoch_started"
    STEP_STARTED = "step_started"            # before each optimiser step (the lr schedule)
    ITERATION_COMPLETED = "iteration_completed"
    EPOCH_COMPLETED = "epoch_completed"
    VALIDATION_COMPLETED = "validation_completed"
    CHECKPOINT_SAVED = "checkpoint_saved"
    BATCH_SIZE_REDUCED = "batch_size_reduced"
    EARLY_STOPPED = "early_stopped"
    COMPLETED = "completed"
    ALL = (STARTED, EPOCH_STARTED, STEP_STARTED, ITERATION_COMPLETED, EPOCH_COMPLETED,
           VALIDATION_COMPLETED, CHECKPOINT_SAVED, BATCH_SIZE_REDUCED, EARLY_STOPPED, COMPLETED)


class EventEmitter:
    """``on(event, handler, priority)`` attaches, ``fire(event, state)`` calls the handlers by
    priority (lower first), then in the order they were attached."""

    def __init__(self) -> None:
        self._handlers: dict[str, list[tuple[int, int, Callable[..., Any]]]] = defaultdict(list)
        self._seq = 0

    def on(self, event: str, handler: Callable[..., Any] | None = None, priority: int = 0):
        """Attach ``handler(state)`` to ``event``; usable as a decorator when handler is None."""
        if event not in Events.ALL:
            raise ValueError(f"unknown event {event!r}; events are {Events.ALL}")
        if handler is None:
            def deco(fn):
                self._add(event, fn, priority)
                return fn
            return deco
        self._add(event, handler, priority)
        return handler

    def _add(self, event: str, handler: Callable[..., Any], priority: int) -> None:
        self._seq += 1
        self._handlers[event].append((int(priority), self._seq, handler))
        self._handlers[event].sort(key=lambda t: (t[0], t[1]))

    def remove(self, event: str, handler: Callable[..., Any]) -> None:
        for i, (_p, _s, h) in enumerate(self._handlers[event]):
            if h is handler:
                del self._handlers[event][i]
                return
        raise ValueError(f"handler not attached to {event!r}")

    def fire(self, event: str, *args: Any) -> None:
        for _p, _s, h in list(self._handlers[event]):
            h(*args)
