"""Events of the viewer model: plain callback lists, synchronous, Qt-free (napari's
``EmitterGroup`` in miniature)."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import contextmanager
from typing import Any


class Event:
    """A list of callbacks: ``connect(fn)``, ``disconnect(fn)``, ``emit(*args)``.

    Callbacks run synchronously in the emitting thread, in connection order. ``blocked()`` is a
    context manager that suppresses emission.
    """

    def __init__(self, name: str):
        self.name = name
        self._callbacks: list[Callable[..., Any]] = []
        self._blocked = 0

    def connect(self, fn: Callable[..., Any]) -> Callable[..., Any]:
        if fn not in self._callbacks:
            self._callbacks.append(fn)
        return fn

    def disconnect(self, fn: Callable[..., Any] | None = None) -> None:
        if fn is None:
            self._callbacks.clear()
        elif fn in self._callbacks:
            self._callbacks.remove(fn)

    def emit(self, *args: Any) -> None:
        if self._blocked:
            return
        for fn in list(self._callbacks):
            fn(*args)

    @contextmanager
    def blocked(self):
        self._blocked += 1
        try:
            yield
        finally:
            self._blocked -= 1

    def __len__(self) -> int:
        return len(self._callbacks)


class ViewerEvents:
    """The events of a :class:`~bodyage_core.viewer.ViewerState` (all plain :class:`Event`
    objects).

    * ``cursor_changed(cursor_ras: ndarray)``
    * ``convention_changed(convention: str)``
    * ``layers_changed()`` — a layer was added, removed or reordered, or the base changed
    * ``layer_changed(layer: Layer, keys: set[str])`` — display settings of one layer
    * ``active_layer_changed(layer: Layer | None)``
    * ``view_changed(plane: str)`` — zoom / pan of one view
    * ``layout_changed(layout: str)``
    * ``space_changed(space: str)`` — the display space (``'subject'`` / ``'atlas'``)
    * ``interpolation_changed(mode: str)`` — ``'nearest'`` / ``'linear'`` drawing
    * ``lightbox_changed(settings: LightboxSettings)`` — plane, tiles, slice spacing
    * ``measurements_changed()`` — a ruler or region added, changed or removed
    """

    NAMES = ("cursor_changed", "convention_changed", "layers_changed", "layer_changed",
             "active_layer_changed", "view_changed", "layout_changed", "space_changed",
             "interpolation_changed", "lightbox_changed", "measurements_changed")

    def __init__(self):
        for n in self.NAMES:
            setattr(self, n, Event(n))

    def all(self) -> list[Event]:
        return [getattr(self, n) for n in self.NAMES]
