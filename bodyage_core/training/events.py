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
    ITERATION_COMPLETED = "iteration_completed"
    EPOCH_COMPLETED = "epoch_completed"
    VALIDATION_COMPLETED = "validation_completed"
    CHECKPOINT_SAVED = "checkpoint_saved"
    BATCH_SIZE_REDUCED = "batch_size_reduced"
    EARLY_STOPPED = "early_stopped"
    COMPLETED = "completed"
    ALL = (STARTED, EPOCH_STARTED, ITERATION_COMPLETED, EPOCH_COMPLETED, VALIDATION_COMPLETED,
           CHECKPOINT_SAVED, BATCH_SIZE_REDUCED, EARLY_STOPPED, COMPLETED)


class EventEmitter:
    """``on(event, handler)`` attaches, ``fire(event, state)`` calls handlers in order."""

    def __init__(self) -> None:
        self._handlers: dict[str, list[Callable[..., Any]]] = defaultdict(list)

    def on(self, event: str, handler: Callable[..., Any] | None = None):
        """Attach ``handler(state)`` to ``event``; usable as a decorator when handler is None."""
        if event not in Events.ALL:
            raise ValueError(f"unknown event {event!r}; events are {Events.ALL}")
        if handler is None:
            def deco(fn):
                self._handlers[event].append(fn)
                return fn
            return deco
        self._handlers[event].append(handler)
        return handler

    def remove(self, event: str, handler: Callable[..., Any]) -> None:
        self._handlers[event].remove(handler)

    def fire(self, event: str, *args: Any) -> None:
        for h in list(self._handlers[event]):
            h(*args)
