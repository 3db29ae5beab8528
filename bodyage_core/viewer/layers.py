"""One volume shown in the viewer with its display settings (:class:`Layer`), and the display
defaults a new layer gets from its values."""

from __future__ import annotations

import itertools
from contextlib import contextmanager
from typing import Any

import numpy as np

from bodyage_core import display
from bodyage_core.volume import Volume

KINDS = ("image", "overlay", "labels")
#: opacity of a layer on top of the image (an overlay, a label map, an importance map) by
#: default: the anatomy stays visible through it (one value, :data:`display.OVERLAY_OPACITY`)
OVERLAY_OPACITY = display.OVERLAY_OPACITY


def importance_overlay(array: np.ndarray, signed: bool = False, tested: bool = False) -> dict:
    """The one display rule of a map drawn on top of the anatomy (Grad-CAM, a population map,
    a map opened with ``--overlay``): :func:`bodyage_core.display.importance_display` (values
    below a threshold on the map's upper quantiles transparent: at most the top fifth of the map
    drawn) at :data:`OVERLAY_OPACITY`; ``kind`` is ``'overlay'``.

    ``tested=True``: a map whose voxels already passed a statistical test (NaN or 0 where they
    did not: an FWE-masked difference, a p-thresholded age trend) shows every kept voxel (no
    threshold, that would hide significant voxels); its range is the 95th percentile of the kept
    ``|v|`` (a sparse map whose 99.5th percentile would leave most kept voxels near white),
    symmetric for a signed map."""
    if not tested:
        return {**display.importance_display(array, signed=signed), "opacity": OVERLAY_OPACITY}
    a = display.sample_values(array, 1_000_000)
    a = np.abs(a[np.isfinite(a) & (a != 0)]).astype(np.float64)
    hi = float(np.percentile(a, 95.0)) if a.size else 0.0
    hi = hi if hi > 0 else 1.0
    return {"kind": "overlay", "colormap": "bwr" if signed else "heat",
            "display_range": (-hi, hi) if signed else (0.0, hi), "threshold": None,
            "opacity": OVERLAY_OPACITY}


def upper_quantile_threshold(volume: Volume, channel: str | None = None) -> float | None:
    """The default threshold of a map opened on top (``--overlay``, File > Add overlay): the
    rule of :func:`importance_overlay` — values (``|v|`` for a signed map) below
    ``max(0.25 * p99.5, min(p80, 0.9 * p99.5))`` of the non-zero ``|v|`` are transparent, so
    that at most the top fifth of the map covers the anatomy. None for a map without non-zero
    values."""
    arr = volume.channel(channel or volume.channels[0])
    if not np.any(np.isfinite(arr) & (arr != 0)):
        return None
    return float(display.importance_display(arr)["threshold"])

_DISPLAY_KEYS = ("name", "colormap", "opacity", "vmin", "vmax", "threshold", "visible",
                 "channel", "label_colors", "hidden_labels", "outline")
#: the display settings only label layers have (and only their sessions carry)
LABEL_KEYS = ("label_colors", "hidden_labels", "outline")
_layer_ids = itertools.count(1)
_MISSING = object()


class Layer:
    """One volume shown in the viewer, with its display settings.

    Setting a display attribute (``colormap, opacity, vmin, vmax, threshold, visible, channel,
    name``; for label maps ``label_colors`` {id: (r, g, b)}, ``hidden_labels`` (ids not drawn)
    and ``outline`` (draw only each label's boundary)) notifies the owning state
    (``layer_changed``). Use :meth:`set` to change several at once with one notification.

    ``label_names`` (id -> name) and ``label_source`` (where they came from, in words; empty
    when the map has no table and shows numbers only) belong to the map, not to its display.
    """

    def __init__(self, volume: Volume, name: str, kind: str = "image", colormap: str = "grey",
                 opacity: float = 1.0, vmin: float = 0.0, vmax: float = 1.0,
                 threshold: float | None = None, visible: bool = True,
                 channel: str | None = None, path: str | None = None,
                 label_names: dict[int, str] | None = None,
                 label_colors: dict[int, tuple[int, int, int]] | None = None,
                 hidden_labels: Any = (), outline: bool = False, label_source: str = ""):
        object.__setattr__(self, "_listeners", [])
        if kind not in KINDS:
            raise ValueError(f"layer kind must be one of {KINDS}, got {kind!r}")
        self.id = next(_layer_ids)
        self.volume = volume
        self.kind = kind
        self.path = None if path is None else str(path)
        self.label_names = dict(label_names) if label_names else {}
        self.label_source = str(label_source or "")
        self.resampled = False  # True when shown resampled onto the base grid
        self._label_style: tuple | None = None  # (key, slot map, LUT) of the last draw
        with self._silent():
            self.name = name
            self.colormap = display.canonical_name(colormap)
            self.opacity = float(opacity)
            self.vmin = float(vmin)
            self.vmax = float(vmax)
            self.threshold = None if threshold is None else float(threshold)
            self.visible = bool(visible)
            self.channel = channel if channel is not None else volume.channels[0]
            self.label_colors = label_colors or {}
            self.hidden_labels = hidden_labels
            self.outline = outline

    # notification plumbing
    @contextmanager
    def _silent(self):
        object.__setattr__(self, "_quiet", True)
        try:
            yield
        finally:
            object.__setattr__(self, "_quiet", False)

    def __setattr__(self, key: str, value: Any) -> None:
        if key in _DISPLAY_KEYS:
            value = self._validate(key, value)
            old = self.__dict__.get(key, _MISSING)
            object.__setattr__(self, key, value)
            if not self.__dict__.get("_quiet") and not _equal(old, value):
                self._notify({key})
        else:
            object.__setattr__(self, key, value)

    def _notify(self, keys: set[str]) -> None:
        for fn in list(self._listeners):
            fn(self, keys)

    def set(self, **values: Any) -> None:
        """Change several display settings with one ``layer_changed`` notification."""
        changed = set()
        with self._silent():
            for k, v in values.items():
                if k not in _DISPLAY_KEYS:
                    raise AttributeError(f"{k!r} is not a display setting of a layer")
                if k == "display_range":
                    continue
                old = getattr(self, k)
                setattr(self, k, v)
                if not _equal(old, getattr(self, k)):
                    changed.add(k)
        if changed:
            self._notify(changed)

    def _validate(self, key: str, value: Any) -> Any:
        if key == "colormap":
            return display.canonical_name(str(value))
        if key == "opacity":
            return float(np.clip(float(value), 0.0, 1.0))
        if key in ("vmin", "vmax"):
            return float(value)
        if key == "threshold":
            return None if value is None else float(value)
        if key == "visible":
            return bool(value)
        if key == "channel":
            vol = self.__dict__.get("volume")
            if vol is not None and value not in vol.channels:
                raise KeyError(f"layer {self.__dict__.get('name')!r} has no channel {value!r}; "
                               f"channels: {vol.channels}")
            return value
        if key == "label_colors":
            return {int(k): tuple(int(min(max(int(c), 0), 255)) for c in rgb[:3])
                    for k, rgb in dict(value or {}).items()}
        if key == "hidden_labels":
            return frozenset(int(v) for v in (value or ()))
        if key == "outline":
            return bool(value)
        return value

    # conveniences
    @property
    def display_range(self) -> tuple[float, float]:
        return (self.vmin, self.vmax)

    @display_range.setter
    def display_range(self, rng: tuple[float, float]) -> None:
        self.set(vmin=float(rng[0]), vmax=float(rng[1]))

    @property
    def data(self) -> np.ndarray:
        """The shown channel, ``(Z, Y, X)``."""
        return self.volume.channel(self.channel)

    def settings(self) -> dict[str, Any]:
        """Display settings and provenance as JSON-able values (no pixels)."""
        out = {
            "name": self.name, "path": self.path, "kind": self.kind, "colormap": self.colormap,
            "opacity": self.opacity, "display_range": [self.vmin, self.vmax],
            "threshold": self.threshold, "visible": self.visible, "channel": self.channel,
        }
        if self.kind == "labels":
            out["label_colors"] = {str(k): list(v) for k, v in sorted(self.label_colors.items())}
            out["hidden_labels"] = sorted(self.hidden_labels)
            out["outline"] = self.outline
        return out

    def label_style(self) -> tuple[tuple, np.ndarray, np.ndarray]:
        """How a label map is drawn: ``(key, slots, lut)``. ``slots[id]`` is the LUT entry of
        label ``id`` (uint8; 0 = not drawn: background and hidden labels), ``lut`` the
        ``(256, 4)`` RGBA table with the layer's label colours (the default label colours for
        the rest); ``key`` changes whenever the drawing does. Cached per setting."""
        key = (tuple(sorted(self.label_colors.items())), self.hidden_labels)
        if self._label_style is not None and self._label_style[0] == key:
            return self._label_style
        data = self.volume.channel(self.channel)
        top = int(np.nanmax(data)) if data.size else 0
        ids = set(self.label_names) | set(self.label_colors)
        top = max([top, *ids]) if ids else top
        top = max(top, 0)
        default = display.lut("labels")
        idx = np.arange(top + 1)
        if top <= 255:
            slots = idx.astype(np.uint8)
        else:  # more ids than LUT entries: the ids present, in order, cycle through 1..255
            present = np.unique(np.asarray(data, np.int64))
            present = present[present > 0]
            slots = np.zeros(top + 1, np.uint8)
            slots[present] = (np.arange(present.size) % 255 + 1).astype(np.uint8)
        slots[0] = 0
        lut = np.zeros((256, 4), np.uint8)
        for i in np.flatnonzero(slots):
            s = slots[i]
            rgb = self.label_colors.get(int(i))
            lut[s] = (*rgb, 255) if rgb is not None else default[(i - 1) % 255 + 1]
        for i in self.hidden_labels:
            if 0 < i <= top:
                slots[i] = 0
        self._label_style = (key, slots, lut)
        return self._label_style

    def __repr__(self) -> str:
        return (f"Layer({self.name!r}, kind={self.kind}, cmap={self.colormap}, "
                f"range=({self.vmin:g}, {self.vmax:g}), threshold={self.threshold}, "
                f"visible={self.visible})")


def _equal(a: Any, b: Any) -> bool:
    try:
        return bool(a == b)
    except Exception:  # pragma: no cover - arrays etc.
        return a is b


def default_kind(volume: Volume, first: bool) -> str:
    """``'image'`` for the first layer, ``'labels'`` for an integer volume, else
    ``'overlay'``."""
    if first:
        return "image"
    return "labels" if volume.data.dtype.kind in "iub" else "overlay"


def default_display(arr: np.ndarray, kind: str, colormap: str | None,
                    display_range: tuple[float, float] | None,
                    volume: Volume | None = None, channel: str | None = None
                    ) -> tuple[str, tuple[float, float]]:
    """The colour map and display range a new layer gets where none is given.

    Grey for an image (1-99.5 % of its values; a CT the soft-tissue window, see
    :func:`bodyage_core.viewer.windowing.default_image_range`), the label colours for a label map (0 to the
    largest id), and for an overlay heat over the range of its non-zero values, or ``bwr`` with
    a symmetric range when the map has clearly signed values.
    """
    nz_cache: list[np.ndarray] = []

    def nonzero() -> np.ndarray:  # sampled once per layer
        if not nz_cache:
            nz_cache.append(nonzero_values(arr))
        return nz_cache[0]

    if colormap is None:
        if kind == "image":
            colormap = "grey"
        elif kind == "labels":
            colormap = "labels"
        else:
            lo, hi = display.robust_range(nonzero(), 0.5, 99.5)
            signed = lo < 0 < hi and min(-lo, hi) > 0.2 * max(-lo, hi)
            colormap = "bwr" if signed else "heat"
    if display_range is None:
        if kind == "labels":
            display_range = (0.0, float(arr.max() if arr.dtype.kind in "iub"
                                        else np.nanmax(arr)) if arr.size else 1.0)
        elif display.is_diverging(colormap):
            display_range = display.robust_range(nonzero(), upper=99.5, symmetric=True)
        elif kind == "overlay":
            # heat maps are mostly zero: take the range of the non-zero values, from 0
            lo, hi = display.robust_range(nonzero(), 0.5, 99.5)
            display_range = (min(0.0, lo), hi)
        elif volume is not None:
            from bodyage_core.viewer.windowing import default_image_range

            display_range = default_image_range(volume, channel)
        else:
            display_range = display.robust_range(arr, 1.0, 99.5)
    return colormap, display_range


def nonzero_values(arr: np.ndarray, max_samples: int = 500_000) -> np.ndarray:
    """The non-zero finite values of ``arr`` (subsampled), or ``arr`` itself if all are zero."""
    flat = display.sample_values(arr, max_samples)
    nz = flat[(flat != 0) & np.isfinite(flat)]
    return nz if nz.size else flat
