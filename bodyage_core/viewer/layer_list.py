"""The viewer's layers: adding, removing, reordering, the base layer (whose grid the views are
cut from) and the active layer (what the layer panel edits), as napari's ``LayerList``.

:class:`LayerListMixin` is one part of :class:`~bodyage_core.viewer.ViewerState`; it uses the
state's ``layers``, ``_base``, ``_active``, ``events``, ``label_names`` and caches.
"""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from bodyage_core import display
from bodyage_core.errors import LoadError
from bodyage_core.labels import find_label_table
from bodyage_core.viewer.geometry import fmt_box, world_bounds
from bodyage_core.viewer.layers import OVERLAY_OPACITY, Layer, default_display, default_kind
from bodyage_core.volume import Volume

if TYPE_CHECKING:  # pragma: no cover
    from bodyage_core.viewer.state import ViewerState


class LayerListMixin:
    """Layers of a :class:`~bodyage_core.viewer.ViewerState`."""

    layers: list[Layer]
    _base: Layer | None
    _active: Layer | None

    @property
    def base_layer(self) -> Layer | None:
        """The layer whose grid the views are cut from (the first image layer by default)."""
        return self._base

    @property
    def active_layer(self) -> Layer | None:
        """The layer the layer panel edits and window/level acts on."""
        return self._active

    def layer(self, name_or_index: str | int) -> Layer:
        if isinstance(name_or_index, int):
            return self.layers[name_or_index]
        for lay in self.layers:
            if lay.name == name_or_index:
                return lay
        raise KeyError(f"no layer named {name_or_index!r}")

    def add_layer(self, volume: Volume, name: str | None = None, kind: str | None = None,
                  colormap: str | None = None,
                  display_range: tuple[float, float] | None = None,
                  threshold: float | None = None, opacity: float | None = None,
                  visible: bool = True, channel: str | None = None,
                  path: str | Path | None = None,
                  label_names: dict[int, str] | None = None,
                  label_colors: dict[int, tuple[int, int, int]] | None = None,
                  hidden_labels: Any = (), outline: bool = False,
                  label_source: str | None = None) -> Layer:
        """Add a volume as a layer on top and return it.

        The first layer becomes the base (its grid defines the views; the cursor goes to its
        centre). ``kind`` defaults to ``'image'`` for the first layer, ``'labels'`` for an
        integer volume and ``'overlay'`` otherwise. Default colour maps: grey (image), heat
        (overlay; ``bwr`` with a symmetric range when the map has clearly signed values), labels.

        A label map's names (and colours) come from ``label_names`` / ``label_colors`` when
        given, else from the map's own table (:func:`bodyage_core.labels.find_label_table` on
        ``path``: its header, a table beside it), else it shows numbers only.

        Raises
        ------
        LoadError
            If the volume lies on another grid that does not overlap the base at all.
        """
        if name is None:
            name = Path(str(path)).name.split(".")[0] if path else f"layer{len(self.layers) + 1}"
        name = self._unique_name(name)
        if kind is None:
            kind = default_kind(volume, first=not self.layers)
        if self._base is not None and not volume.same_grid(self._base.volume):
            self._check_overlap(volume, name, path)
        ch = channel if channel is not None else volume.channels[0]
        colormap, display_range = default_display(volume.channel(ch), kind, colormap,
                                                  display_range, volume, ch)
        if opacity is None:
            opacity = 1.0 if kind == "image" or not self.layers else OVERLAY_OPACITY
        if kind == "labels" and label_names is None:
            table = find_label_table(path) if path is not None else None
            if table is not None:
                label_names = table.names
                label_colors = {**table.colors, **(label_colors or {})}
                label_source = table.source if label_source is None else label_source
            else:
                label_names = dict(self.label_names)
        layer = Layer(volume, name, kind, colormap, opacity, display_range[0], display_range[1],
                      threshold, visible, ch, None if path is None else str(path), label_names,
                      label_colors, hidden_labels, outline, label_source or "")
        layer.resampled = self._base is not None and not volume.same_grid(self._base.volume)
        layer._listeners.append(self._on_layer_changed)
        self.layers.append(layer)
        if self._base is None:
            self._base = layer
            self._geom_cache.clear()
            self._cursor = self._centre(volume)
        self.events.layers_changed.emit()
        if self._base is layer:
            self.events.cursor_changed.emit(self.cursor)
        self.set_active_layer(layer)
        return layer

    def remove_layer(self, layer: Layer | str | int) -> None:
        lay = layer if isinstance(layer, Layer) else self.layer(layer)
        self.layers.remove(lay)
        lay._listeners.clear()
        self._resample_cache = {k: v for k, v in self._resample_cache.items() if k[0] != lay.id}
        if self._base is lay:
            self._base = next((x for x in self.layers if x.kind == "image"),
                              self.layers[0] if self.layers else None)
            self._geom_cache.clear()
            for lay2 in self.layers:
                lay2.resampled = not lay2.volume.same_grid(self._base.volume)
        self.events.layers_changed.emit()
        if self._active is lay:
            self.set_active_layer(self.layers[-1] if self.layers else None)

    def clear(self) -> None:
        """Remove every layer (views keep their settings)."""
        for lay in self.layers:
            lay._listeners.clear()
        self.layers.clear()
        self.clear_measurements()
        self._base = None
        self._active = None
        self._geom_cache.clear()
        self._resample_cache.clear()
        self.events.layers_changed.emit()
        self.events.active_layer_changed.emit(None)

    def move_layer(self, layer: Layer, index: int) -> None:
        self.layers.remove(layer)
        self.layers.insert(index, layer)
        self.events.layers_changed.emit()

    def set_base_layer(self, layer: Layer) -> None:
        if layer not in self.layers:
            raise ValueError("not a layer of this state")
        self._base = layer
        self._geom_cache.clear()
        self._resample_cache.clear()
        for lay in self.layers:
            lay.resampled = not lay.volume.same_grid(layer.volume)
        self.events.layers_changed.emit()
        self.set_cursor(self._cursor)

    def set_active_layer(self, layer: Layer | None) -> None:
        if layer is self._active:
            return
        self._active = layer
        self.events.active_layer_changed.emit(layer)

    def set_channel(self, channel: str) -> list[Layer]:
        """Show ``channel`` (e.g. ``'water'`` / ``'fat'``) in every layer that has it."""
        changed = []
        for lay in self.layers:
            if channel in lay.volume.channels and lay.channel != channel:
                lay.channel = channel
                if lay.kind == "image":
                    lay.set(**dict(zip(("vmin", "vmax"),
                                       display.robust_range(lay.data, 1.0, 99.5))))
                changed.append(lay)
        return changed

    def channels(self) -> tuple[str, ...]:
        """Channels of the base layer (what a water/fat switch offers)."""
        return self._base.volume.channels if self._base else ()

    def replace_layers(self, other: ViewerState, keep_cursor: bool = False) -> None:
        """Take the layers of a fully built state (base, active, order, display settings) in
        place of this state's, keeping this state's views, convention and layout and everyone
        connected to its events; the cursor stays where it is with ``keep_cursor`` (clamped to
        the new base) and goes to the new base's centre otherwise."""
        cursor = self.cursor if keep_cursor and self._base is not None else None
        for lay in self.layers:
            lay._listeners.clear()
        self.layers = list(other.layers)
        for lay in self.layers:
            lay._listeners.clear()
            lay._listeners.append(self._on_layer_changed)
        self._base = other._base
        self._active = other._active if other._active in self.layers else (
            self.layers[-1] if self.layers else None)
        for lay in self.layers:
            lay.resampled = self._base is not None and not lay.volume.same_grid(
                self._base.volume)
        other.layers = []
        other._base = other._active = None
        self.clear_measurements()         # drawn on the old image
        self._geom_cache.clear()
        self._resample_cache.clear()
        self.events.layers_changed.emit()
        for p in self.views:
            self.events.view_changed.emit(p)
        self.events.active_layer_changed.emit(self._active)
        self._cursor = np.array([np.nan] * 3)
        if self._base is not None:
            self.set_cursor(cursor if cursor is not None else self._centre(self._base.volume))

    def _on_layer_changed(self, layer: Layer, keys: set[str]) -> None:
        self.events.layer_changed.emit(layer, keys)

    def _unique_name(self, name: str) -> str:
        names = {lay.name for lay in self.layers}
        if name not in names:
            return name
        for i in itertools.count(2):
            cand = f"{name} ({i})"
            if cand not in names:
                return cand
        raise AssertionError  # pragma: no cover

    def _check_overlap(self, volume: Volume, name: str, path: Any) -> None:
        lo_a, hi_a = world_bounds(self._base.volume)
        lo_b, hi_b = world_bounds(volume)
        if np.any(hi_b < lo_a) or np.any(hi_a < lo_b):
            raise LoadError(
                f"the map {name!r} (world box {fmt_box(lo_b, hi_b)} mm) does not overlap the "
                f"image {self._base.name!r} ({fmt_box(lo_a, hi_a)} mm)",
                path=path,
                hint="open the map that belongs to this subject, or the subject in the map's "
                     "space (atlas space)")
