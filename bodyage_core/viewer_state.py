"""The evented viewer state that every view follows (Qt-free).

One :class:`ViewerState` holds everything the desktop viewer shows: the cursor in world
millimetres (RAS+), the display convention (radiological by default), the layers with their
display settings, the zoom and pan of each view and the layout. Views subscribe to its events
and write back only through its methods, so "linked views" costs nothing: every view follows the
same cursor. The same object is the session file (:meth:`ViewerState.to_dict` /
:meth:`ViewerState.from_dict`: paths, settings, cursor, layout; never pixels) and what
``bodyage gui FILE --overlay MAP --threshold T`` parses into.

Geometry conventions
--------------------
* Volumes are :class:`~bodyage_core.volume.Volume`: data ``(C, Z, Y, X)``, affine from voxel
  ``(x, y, z)`` to RAS mm. Voxel indices here are 0-based, numpy order ``(z, y, x)`` unless a name
  says ``xyz`` (the NIfTI / ITK index order).
* The *base* layer defines the grid the three planes are cut from. Layers on another grid are
  resampled onto it through world coordinates (nearest neighbour), or refused with a
  :class:`~bodyage_core.errors.LoadError` when they do not overlap it.
* A 2D view slice is an array ``(rows, cols)``: row 0 is the top of the screen, column 0 the left.
  Display coordinates ``(u, v)`` are millimetres from the top-left corner of the slice (u to the
  right, v downwards); pixel ``(r, c)`` covers ``u in [c*du, (c+1)*du)``, ``v in [r*dv, (r+1)*dv)``.
* Screen directions: axial and coronal views put the subject's right on the screen's left in the
  radiological convention (letters ``R`` left, ``L`` right) and on the right in the neurological
  one; axial has anterior at the top, coronal and sagittal superior at the top; sagittal has
  anterior on the left in both conventions.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from bodyage_core import display
from bodyage_core.errors import BodyageError, LoadError
from bodyage_core.volume import Volume, orientation_letters

SESSION_VERSION = 1
PLANES = ("axial", "coronal", "sagittal")
CONVENTIONS = ("radiological", "neurological")
LAYOUTS = ("grid", "row", "axial", "coronal", "sagittal", "3d")
KINDS = ("image", "overlay", "labels")

# world axis index: 0 = x (L->R), 1 = y (P->A), 2 = z (I->S)
_NEG_POS = (("L", "R"), ("P", "A"), ("I", "S"))
# plane -> (normal world axis, horizontal world axis, vertical world axis)
_PLANE_AXES = {"axial": (2, 0, 1), "coronal": (1, 0, 2), "sagittal": (0, 1, 2)}


# -- events -----------------------------------------------------------------------------------
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
    """The events of a :class:`ViewerState` (all plain :class:`Event` objects).

    * ``cursor_changed(cursor_ras: ndarray)``
    * ``convention_changed(convention: str)``
    * ``layers_changed()`` — a layer was added, removed or reordered, or the base changed
    * ``layer_changed(layer: Layer, keys: set[str])`` — display settings of one layer
    * ``active_layer_changed(layer: Layer | None)``
    * ``view_changed(plane: str)`` — zoom / pan of one view
    * ``layout_changed(layout: str)``
    """

    NAMES = ("cursor_changed", "convention_changed", "layers_changed", "layer_changed",
             "active_layer_changed", "view_changed", "layout_changed")

    def __init__(self):
        for n in self.NAMES:
            setattr(self, n, Event(n))

    def all(self) -> list[Event]:
        return [getattr(self, n) for n in self.NAMES]


# -- layers -----------------------------------------------------------------------------------
_DISPLAY_KEYS = ("name", "colormap", "opacity", "vmin", "vmax", "threshold", "visible",
                 "channel")
_layer_ids = itertools.count(1)


class Layer:
    """One volume shown in the viewer, with its display settings.

    Setting a display attribute (``colormap, opacity, vmin, vmax, threshold, visible, channel,
    name``) notifies the owning state (``layer_changed``). Use :meth:`set` to change several at
    once with one notification.
    """

    def __init__(self, volume: Volume, name: str, kind: str = "image", colormap: str = "grey",
                 opacity: float = 1.0, vmin: float = 0.0, vmax: float = 1.0,
                 threshold: float | None = None, visible: bool = True,
                 channel: str | None = None, path: str | None = None,
                 label_names: dict[int, str] | None = None):
        object.__setattr__(self, "_listeners", [])
        if kind not in KINDS:
            raise ValueError(f"layer kind must be one of {KINDS}, got {kind!r}")
        self.id = next(_layer_ids)
        self.volume = volume
        self.kind = kind
        self.path = None if path is None else str(path)
        self.label_names = dict(label_names) if label_names else {}
        self.resampled = False  # True when shown resampled onto the base grid
        with self._silent():
            self.name = name
            self.colormap = display.canonical_name(colormap)
            self.opacity = float(opacity)
            self.vmin = float(vmin)
            self.vmax = float(vmax)
            self.threshold = None if threshold is None else float(threshold)
            self.visible = bool(visible)
            self.channel = channel if channel is not None else volume.channels[0]

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
                for fn in list(self._listeners):
                    fn(self, {key})
        else:
            object.__setattr__(self, key, value)

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
            for fn in list(self._listeners):
                fn(self, changed)

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
        return {
            "name": self.name, "path": self.path, "kind": self.kind, "colormap": self.colormap,
            "opacity": self.opacity, "display_range": [self.vmin, self.vmax],
            "threshold": self.threshold, "visible": self.visible, "channel": self.channel,
        }

    def __repr__(self) -> str:
        return (f"Layer({self.name!r}, kind={self.kind}, cmap={self.colormap}, "
                f"range=({self.vmin:g}, {self.vmax:g}), threshold={self.threshold}, "
                f"visible={self.visible})")


_MISSING = object()


def _equal(a: Any, b: Any) -> bool:
    try:
        return bool(a == b)
    except Exception:  # pragma: no cover - arrays etc.
        return a is b


# -- geometry ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class PlaneGeometry:
    """How one plane of the base grid is laid out on screen.

    Attributes
    ----------
    plane
        ``'axial'``, ``'coronal'`` or ``'sagittal'``.
    normal_axis, col_axis, row_axis
        numpy axes (0 = z, 1 = y, 2 = x of the base data) across the plane, along the screen
        columns and along the screen rows.
    flip_cols, flip_rows
        Whether the column / row index runs against the numpy index.
    shape
        ``(rows, cols)`` of the 2D slice.
    pixel_mm
        ``(row_mm, col_mm)``: pixel height and width in millimetres.
    letters
        ``{'left', 'right', 'top', 'bottom'}`` orientation letters of the screen sides.
    """

    plane: str
    normal_axis: int
    col_axis: int
    row_axis: int
    flip_cols: bool
    flip_rows: bool
    shape: tuple[int, int]
    pixel_mm: tuple[float, float]
    letters: dict[str, str] = field(hash=False, compare=False)
    n_slices: int = 1

    @property
    def aspect(self) -> float:
        """Pixel height / pixel width (what a view must keep to show true proportions)."""
        return self.pixel_mm[0] / self.pixel_mm[1]

    @property
    def extent_mm(self) -> tuple[float, float]:
        """``(width, height)`` of the slice in millimetres."""
        return (self.shape[1] * self.pixel_mm[1], self.shape[0] * self.pixel_mm[0])

    def voxel_to_pixel(self, zyx: np.ndarray | tuple) -> tuple[float, float]:
        """Continuous numpy voxel ``(z, y, x)`` -> continuous ``(row, col)`` (pixel centres at
        integers)."""
        zyx = np.asarray(zyx, dtype=float)
        c = zyx[self.col_axis]
        r = zyx[self.row_axis]
        if self.flip_cols:
            c = self.shape[1] - 1 - c
        if self.flip_rows:
            r = self.shape[0] - 1 - r
        return float(r), float(c)

    def pixel_to_voxel(self, row: float, col: float, slice_index: float) -> np.ndarray:
        """Continuous ``(row, col)`` plus the slice index -> numpy voxel ``(z, y, x)``."""
        zyx = np.zeros(3)
        zyx[self.normal_axis] = slice_index
        zyx[self.col_axis] = (self.shape[1] - 1 - col) if self.flip_cols else col
        zyx[self.row_axis] = (self.shape[0] - 1 - row) if self.flip_rows else row
        return zyx

    def pixel_to_display(self, row: float, col: float) -> tuple[float, float]:
        """Pixel centre -> display mm ``(u, v)``."""
        return ((col + 0.5) * self.pixel_mm[1], (row + 0.5) * self.pixel_mm[0])

    def display_to_pixel(self, u: float, v: float) -> tuple[float, float]:
        """Display mm ``(u, v)`` -> continuous ``(row, col)``."""
        return (v / self.pixel_mm[0] - 0.5, u / self.pixel_mm[1] - 0.5)

    def cut(self, data3: np.ndarray, index: int) -> np.ndarray:
        """The ``(rows, cols)`` slice of a ``(Z, Y, X)`` array on the base grid (a view)."""
        sl: list[Any] = [slice(None)] * 3
        sl[self.normal_axis] = int(index)
        two = data3[tuple(sl)]
        rem = [a for a in range(3) if a != self.normal_axis]
        if rem.index(self.row_axis) != 0:
            two = two.T
        if self.flip_rows:
            two = two[::-1, :]
        if self.flip_cols:
            two = two[:, ::-1]
        return two


def _world_axes(affine: np.ndarray) -> tuple[list[int], list[int]]:
    """For each world axis (x, y, z): the numpy axis that runs along it and its sign (+1 when the
    index grows towards R / A / S)."""
    letters = orientation_letters(affine)  # per index axis (x, y, z)
    np_axis = [0, 0, 0]
    sign = [1, 1, 1]
    for j, letter in enumerate(letters):
        for w, (neg, pos) in enumerate(_NEG_POS):
            if letter in (neg, pos):
                np_axis[w] = 2 - j
                sign[w] = 1 if letter == pos else -1
    return np_axis, sign


def plane_geometry(volume: Volume, plane: str, convention: str = "radiological") -> PlaneGeometry:
    """Screen layout of ``plane`` for a volume's grid in a display convention."""
    if plane not in _PLANE_AXES:
        raise ValueError(f"plane must be one of {PLANES}, got {plane!r}")
    if convention not in CONVENTIONS:
        raise ValueError(f"convention must be one of {CONVENTIONS}, got {convention!r}")
    n_w, h_w, v_w = _PLANE_AXES[plane]
    np_axis, sign = _world_axes(volume.affine)
    # screen-right world direction along h, screen-down world direction along v
    if h_w == 0:
        right_dir = -1 if convention == "radiological" else 1
    else:  # sagittal: anterior on the left, posterior on the right
        right_dir = -1
    down_dir = -1  # anterior / superior at the top
    col_axis, row_axis = np_axis[h_w], np_axis[v_w]
    flip_cols = sign[h_w] != right_dir
    flip_rows = sign[v_w] != down_dir
    shape_zyx = volume.shape
    sp = volume.spacing_zyx
    letters = {
        "right": _NEG_POS[h_w][1 if right_dir > 0 else 0],
        "left": _NEG_POS[h_w][0 if right_dir > 0 else 1],
        "bottom": _NEG_POS[v_w][0],
        "top": _NEG_POS[v_w][1],
    }
    return PlaneGeometry(plane, np_axis[n_w], col_axis, row_axis, flip_cols, flip_rows,
                         (shape_zyx[row_axis], shape_zyx[col_axis]),
                         (float(sp[row_axis]), float(sp[col_axis])), letters,
                         shape_zyx[np_axis[n_w]])


@dataclass
class SliceImage:
    """A 2D slice ready to draw: ``array`` ``(rows, cols)`` raw values (NaN outside a resampled
    layer), its :class:`PlaneGeometry` and the slice index on the base grid."""

    array: np.ndarray
    geometry: PlaneGeometry
    index: int

    @property
    def letters(self) -> dict[str, str]:
        return self.geometry.letters

    @property
    def aspect(self) -> float:
        return self.geometry.aspect

    @property
    def pixel_mm(self) -> tuple[float, float]:
        return self.geometry.pixel_mm


@dataclass
class ViewSettings:
    """Zoom (1 = the whole slice fits) and pan (display mm offset of the view centre)."""

    zoom: float = 1.0
    pan: tuple[float, float] = (0.0, 0.0)


# -- the state --------------------------------------------------------------------------------
class ViewerState:
    """Everything the viewer shows, evented and Qt-free.

    Examples
    --------
    >>> state = ViewerState()
    >>> layer = state.add_layer(volume, name="water")            # doctest: +SKIP
    >>> state.events.cursor_changed.connect(print)               # doctest: +SKIP
    >>> state.set_cursor_voxel((10, 20, 30))                     # doctest: +SKIP
    """

    def __init__(self, convention: str = "radiological", layout: str = "grid"):
        self.events = ViewerEvents()
        self.layers: list[Layer] = []
        self._base: Layer | None = None
        self._active: Layer | None = None
        self._cursor = np.zeros(3)
        self._convention = _check(convention, CONVENTIONS, "convention")
        self._layout = _check(layout, LAYOUTS, "layout")
        self.views: dict[str, ViewSettings] = {p: ViewSettings() for p in PLANES}
        self.link_views = True
        self.label_names: dict[int, str] = {}
        self._geom_cache: dict[tuple[str, str, int], PlaneGeometry] = {}
        self._cursor_voxel_cache: tuple | None = None
        self._resample_cache: dict[tuple, np.ndarray] = {}

    # -- layers --------------------------------------------------------------------------------
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
                  label_names: dict[int, str] | None = None) -> Layer:
        """Add a volume as a layer on top and return it.

        The first layer becomes the base (its grid defines the views; the cursor goes to its
        centre). ``kind`` defaults to ``'image'`` for the first layer, ``'labels'`` for an
        integer volume and ``'overlay'`` otherwise. Default colour maps: grey (image), heat
        (overlay; ``bwr`` with a symmetric range when the map has clearly signed values), labels.

        Raises
        ------
        LoadError
            If the volume lies on another grid that does not overlap the base at all.
        """
        if name is None:
            name = Path(str(path)).name.split(".")[0] if path else f"layer{len(self.layers) + 1}"
        name = self._unique_name(name)
        if kind is None:
            if not self.layers:
                kind = "image"
            elif volume.data.dtype.kind in "iub":
                kind = "labels"
            else:
                kind = "overlay"
        if self._base is not None and not volume.same_grid(self._base.volume):
            self._check_overlap(volume, name, path)
        ch = channel if channel is not None else volume.channels[0]
        arr = volume.channel(ch)
        signed = False
        nz_cache: list[np.ndarray] = []

        def nonzero() -> np.ndarray:  # sampled once per layer
            if not nz_cache:
                nz_cache.append(_nonzero(arr))
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
            else:
                display_range = display.robust_range(arr, 1.0, 99.5)
        if opacity is None:
            opacity = 1.0 if kind == "image" or not self.layers else 0.7
        if label_names is None and kind == "labels":
            label_names = self.label_names or _default_label_names()
        layer = Layer(volume, name, kind, colormap, opacity, display_range[0], display_range[1],
                      threshold, visible, ch, None if path is None else str(path), label_names)
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
        lo_a, hi_a = _world_bounds(self._base.volume)
        lo_b, hi_b = _world_bounds(volume)
        if np.any(hi_b < lo_a) or np.any(hi_a < lo_b):
            raise LoadError(
                f"the map {name!r} (world box {_fmt_box(lo_b, hi_b)} mm) does not overlap the "
                f"image {self._base.name!r} ({_fmt_box(lo_a, hi_a)} mm)",
                path=path,
                hint="open the map that belongs to this subject, or the subject in the map's "
                     "space (atlas space)")

    # -- cursor --------------------------------------------------------------------------------
    @property
    def cursor(self) -> np.ndarray:
        """Cursor position in world mm (RAS), a copy."""
        return self._cursor.copy()

    def set_cursor(self, ras: Iterable[float]) -> None:
        """Move the cursor to world mm ``(x, y, z)`` RAS, clamped to the base volume."""
        ras = np.asarray(list(ras), dtype=float).reshape(3)
        if self._base is not None:
            vol = self._base.volume
            zyx = vol.world_to_voxel(ras)
            clamped = np.clip(zyx, 0, np.array(vol.shape) - 1)
            if not np.allclose(clamped, zyx):
                ras = vol.voxel_to_world(clamped)
        if np.allclose(ras, self._cursor, atol=1e-9):
            return
        self._cursor = ras
        self.events.cursor_changed.emit(self.cursor)

    def set_cursor_voxel(self, zyx: Iterable[float]) -> None:
        """Move the cursor to a voxel ``(z, y, x)`` (0-based, numpy order) of the base grid."""
        self._require_base()
        self.set_cursor(self._base.volume.voxel_to_world(np.asarray(list(zyx), dtype=float)))

    def cursor_voxel(self) -> tuple[int, int, int]:
        """Nearest base-grid voxel ``(z, y, x)`` of the cursor."""
        self._require_base()
        key = (self._base.id, tuple(self._cursor))
        if self._cursor_voxel_cache is not None and self._cursor_voxel_cache[0] == key:
            return self._cursor_voxel_cache[1]
        zyx = np.round(self._base.volume.world_to_voxel(self._cursor)).astype(int)
        zyx = np.clip(zyx, 0, np.array(self._base.volume.shape) - 1)
        out = tuple(int(v) for v in zyx)
        self._cursor_voxel_cache = (key, out)
        return out  # type: ignore[return-value]

    def slice_index(self, plane: str) -> int:
        """Index of the slice shown in ``plane`` (along its numpy normal axis)."""
        return self.cursor_voxel()[self.geometry(plane).normal_axis]

    def step_slice(self, plane: str, steps: int) -> None:
        """Move the cursor ``steps`` slices along the plane normal (towards S / A / L-or-R as
        the index grows), clamped to the volume."""
        self._require_base()
        geom = self.geometry(plane)
        zyx = self._base.volume.world_to_voxel(self._cursor)
        k = int(np.clip(round(zyx[geom.normal_axis]) + int(steps), 0, geom.n_slices - 1))
        zyx[geom.normal_axis] = k
        self.set_cursor(self._base.volume.voxel_to_world(zyx))

    def _require_base(self) -> None:
        if self._base is None:
            raise BodyageError("no image is open", hint="open a NIfTI file or a workspace first")

    @staticmethod
    def _centre(volume: Volume) -> np.ndarray:
        return volume.voxel_to_world((np.array(volume.shape) - 1) // 2)

    # -- convention, views, layout ---------------------------------------------------------------
    @property
    def convention(self) -> str:
        return self._convention

    def set_convention(self, convention: str) -> None:
        convention = _check(convention, CONVENTIONS, "convention")
        if convention == self._convention:
            return
        self._convention = convention
        # pan is in display mm; mirror the horizontal pan of the planes that flip
        for p in ("axial", "coronal"):
            vs = self.views[p]
            vs.pan = (-vs.pan[0], vs.pan[1])
        self.events.convention_changed.emit(convention)

    def toggle_convention(self) -> str:
        self.set_convention("neurological" if self._convention == "radiological"
                            else "radiological")
        return self._convention

    @property
    def radiological(self) -> bool:
        return self._convention == "radiological"

    @property
    def layout(self) -> str:
        return self._layout

    def set_layout(self, layout: str) -> None:
        layout = _check(layout, LAYOUTS, "layout")
        if layout != self._layout:
            self._layout = layout
            self.events.layout_changed.emit(layout)

    def set_zoom(self, plane: str, zoom: float, anchor: tuple[float, float] | None = None) -> None:
        """Set the zoom of a view (clamped to 0.25..40); ``anchor`` (display mm) stays fixed."""
        vs = self.views[plane]
        zoom = float(np.clip(zoom, 0.25, 40.0))
        if anchor is not None and self._base is not None:
            w, h = self.geometry(plane).extent_mm
            cx, cy = w / 2 + vs.pan[0], h / 2 + vs.pan[1]
            f = vs.zoom / zoom
            ncx = anchor[0] + (cx - anchor[0]) * f
            ncy = anchor[1] + (cy - anchor[1]) * f
            vs.pan = (ncx - w / 2, ncy - h / 2)
        vs.zoom = zoom
        self.events.view_changed.emit(plane)

    def set_pan(self, plane: str, pan: tuple[float, float]) -> None:
        self.views[plane].pan = (float(pan[0]), float(pan[1]))
        self.events.view_changed.emit(plane)

    def reset_view(self, plane: str | None = None) -> None:
        """Zoom 1 and no pan for one view or (``None``) all views."""
        for p in PLANES if plane is None else (plane,):
            self.views[p] = ViewSettings()
            self.events.view_changed.emit(p)

    def reset(self) -> None:
        """Reset all views and put the cursor back in the centre of the base volume."""
        self.reset_view()
        if self._base is not None:
            self.set_cursor(self._centre(self._base.volume))

    # -- geometry and slicing --------------------------------------------------------------------
    def geometry(self, plane: str) -> PlaneGeometry:
        """The :class:`PlaneGeometry` of ``plane`` on the base grid in the current convention."""
        self._require_base()
        key = (plane, self._convention, self._base.id)
        g = self._geom_cache.get(key)
        if g is None:
            g = plane_geometry(self._base.volume, plane, self._convention)
            self._geom_cache[key] = g
        return g

    def slice_for_view(self, layer: Layer, plane: str,
                       cursor: Iterable[float] | None = None) -> SliceImage:
        """The 2D slice of ``layer`` in ``plane`` through ``cursor`` (default: the state's).

        Returns raw values ``(rows, cols)`` oriented for display (row 0 at the top), on the base
        grid; a layer on another grid is resampled (nearest neighbour) with NaN outside it.
        """
        self._require_base()
        geom = self.geometry(plane)
        if cursor is None:
            k = self.slice_index(plane)
        else:
            zyx = self._base.volume.world_to_voxel(np.asarray(list(cursor), dtype=float))
            k = int(np.clip(round(zyx[geom.normal_axis]), 0, geom.n_slices - 1))
        if not layer.resampled:
            return SliceImage(geom.cut(layer.data, k), geom, k)
        key = (layer.id, layer.channel, plane, self._convention, k)
        arr = self._resample_cache.get(key)
        if arr is None:
            arr = self._resample_slice(layer, geom, k)
            if len(self._resample_cache) > 64:
                self._resample_cache.pop(next(iter(self._resample_cache)))
            self._resample_cache[key] = arr
        return SliceImage(arr, geom, k)

    def _resample_slice(self, layer: Layer, geom: PlaneGeometry, k: int) -> np.ndarray:
        fast = _resample_axis_aligned(self._base.volume, layer.volume.channel(layer.channel),
                                      layer.volume.affine, geom, k)
        if fast is not None:
            return fast
        rows, cols = geom.shape
        r, c = np.meshgrid(np.arange(rows), np.arange(cols), indexing="ij")
        zyx = np.empty((rows, cols, 3))
        zyx[..., geom.normal_axis] = k
        zyx[..., geom.col_axis] = (cols - 1 - c) if geom.flip_cols else c
        zyx[..., geom.row_axis] = (rows - 1 - r) if geom.flip_rows else r
        world = self._base.volume.voxel_to_world(zyx)
        return sample_nearest(layer.volume, layer.channel, world)

    def display_to_world(self, plane: str, u: float, v: float) -> np.ndarray:
        """Display mm ``(u, v)`` in ``plane`` (at the current slice) -> world mm RAS."""
        geom = self.geometry(plane)
        row, col = geom.display_to_pixel(u, v)
        zyx = geom.pixel_to_voxel(row, col, self.slice_index(plane))
        return self._base.volume.voxel_to_world(zyx)

    def world_to_display(self, plane: str, ras: Iterable[float]) -> tuple[float, float]:
        """World mm -> display mm ``(u, v)`` in ``plane``."""
        geom = self.geometry(plane)
        zyx = self._base.volume.world_to_voxel(np.asarray(list(ras), dtype=float))
        row, col = geom.voxel_to_pixel(zyx)
        return geom.pixel_to_display(row, col)

    # -- readout ---------------------------------------------------------------------------------
    def cursor_readout(self) -> dict[str, Any]:
        """What is under the cursor, shaped like NiiVue's location event / FSLeyes' location
        panel.

        Returns
        -------
        dict
            ``world_mm`` [x, y, z] RAS; ``voxel_zyx`` and ``voxel_xyz`` (0-based, numpy and
            NIfTI order) on the base grid; ``values``: one entry per visible layer,
            ``{"layer", "value", "voxel_zyx", "label"}`` (``value`` None outside the layer);
            ``organ``: the name of the label under the cursor from the first label layer with a
            name table, visible or not (else None).
        """
        out: dict[str, Any] = {"world_mm": [float(v) for v in self._cursor], "voxel_zyx": None,
                               "voxel_xyz": None, "values": [], "organ": None}
        if self._base is None:
            return out
        zyx = self.cursor_voxel()
        out["voxel_zyx"] = list(zyx)
        out["voxel_xyz"] = list(zyx[::-1])
        for lay in self.layers:
            if not lay.visible:
                if lay.kind == "labels" and out["organ"] is None:
                    out["organ"] = self._organ_at(lay)
                continue
            vz = np.round(lay.volume.world_to_voxel(self._cursor)).astype(int)
            inside = bool(np.all(vz >= 0) and np.all(vz < np.array(lay.volume.shape)))
            value = None
            label = None
            if inside:
                raw = lay.data[tuple(vz)]
                value = int(raw) if lay.data.dtype.kind in "iub" else float(raw)
                if lay.kind == "labels":
                    iv = int(round(float(raw)))
                    label = lay.label_names.get(iv)
                    if out["organ"] is None and iv != 0 and label is not None:
                        out["organ"] = label
            out["values"].append({"layer": lay.name, "value": value,
                                  "voxel_zyx": [int(v) for v in vz] if inside else None,
                                  "label": label, "channel": lay.channel})
        return out

    def _organ_at(self, lay: Layer) -> str | None:
        vz = np.round(lay.volume.world_to_voxel(self._cursor)).astype(int)
        if not (np.all(vz >= 0) and np.all(vz < np.array(lay.volume.shape))):
            return None
        iv = int(round(float(lay.data[tuple(vz)])))
        return lay.label_names.get(iv) if iv != 0 else None

    def readout_text(self) -> str:
        """The readout as a few lines of text (what the readout panel and the status bar show)."""
        r = self.cursor_readout()
        if r["voxel_zyx"] is None:
            return "no image"
        x, y, z = r["world_mm"]
        lines = [f"world (RAS mm): {x:.1f}, {y:.1f}, {z:.1f}",
                 "voxel (0-based) x,y,z: {}, {}, {}   numpy z,y,x: {}, {}, {}".format(
                     *r["voxel_xyz"], *r["voxel_zyx"])]
        for v in r["values"]:
            val = "outside" if v["value"] is None else _fmt_val(v["value"])
            if v["label"]:
                val += f" ({v['label']})"
            lines.append(f"{v['layer']}: {val}")
        if r["organ"]:
            lines.append(f"organ: {r['organ']}")
        return "\n".join(lines)

    # -- sessions --------------------------------------------------------------------------------
    def to_dict(self, relative_to: str | Path | None = None) -> dict[str, Any]:
        """The session: paths, display settings, cursor, views, layout. Never pixels.

        ``relative_to`` (the session file's folder) stores paths relative to it when possible.
        """
        layers = []
        for lay in self.layers:
            s = lay.settings()
            if s["path"] and relative_to is not None:
                try:
                    s["path"] = str(Path(s["path"]).resolve().relative_to(
                        Path(relative_to).resolve()))
                except ValueError:
                    pass
            s["base"] = lay is self._base
            s["active"] = lay is self._active
            layers.append(s)
        return {
            "bodyage_session": SESSION_VERSION,
            "convention": self._convention,
            "layout": self._layout,
            "cursor_mm": [float(v) for v in self._cursor],
            "views": {p: {"zoom": vs.zoom, "pan": list(vs.pan)} for p, vs in self.views.items()},
            "layers": layers,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any], loader: Callable[[str], Volume] | None = None,
                  relative_to: str | Path | None = None) -> ViewerState:
        """A new state from a session dict (see :meth:`restore`)."""
        state = cls()
        state.restore(d, loader, relative_to)
        return state

    def restore(self, d: dict[str, Any], loader: Callable[[str], Volume] | None = None,
                relative_to: str | Path | None = None) -> list[str]:
        """Replace this state's contents with a session dict; volumes come from ``loader(path)``
        (default :func:`bodyage_core.io.load_volume`).

        Everything is loaded and checked *before* the state changes: if a file cannot be read the
        error propagates and the state is untouched. Layers without a path are skipped (their
        names are returned).
        """
        if not isinstance(d, dict) or "layers" not in d:
            raise BodyageError("not a bodyage session (no 'layers')",
                               hint="choose a .json file saved with File > Save session")
        if int(d.get("bodyage_session", 1)) > SESSION_VERSION:
            raise BodyageError(f"session version {d.get('bodyage_session')} is newer than this "
                               f"viewer ({SESSION_VERSION})", hint="update bodyage")
        loader = loader or _default_loader
        loaded = []
        skipped = []
        for s in d["layers"]:
            if not s.get("path"):
                skipped.append(s.get("name", "?"))
                continue
            p = Path(s["path"])
            if relative_to is not None and not p.is_absolute():
                p = Path(relative_to) / p
            loaded.append((s, loader(str(p)), str(p)))
        if not loaded:
            raise BodyageError("the session names no files that can be reopened",
                               hint="layers created in memory are not saved in sessions")
        # base first so overlays are checked against it; then back to the saved order
        order = sorted(range(len(loaded)), key=lambda i: not loaded[i][0].get("base", False))
        new = ViewerState(_check(d.get("convention", "radiological"), CONVENTIONS, "convention"),
                          _check(d.get("layout", "grid"), LAYOUTS, "layout"))
        new.label_names = self.label_names
        made: dict[int, Layer] = {}
        for i in order:
            s, vol, path = loaded[i]
            rng = s.get("display_range")
            made[i] = new.add_layer(vol, s.get("name"), s.get("kind"), s.get("colormap"),
                                    tuple(rng) if rng else None, s.get("threshold"),
                                    s.get("opacity"), bool(s.get("visible", True)),
                                    s.get("channel"), path)
        # swap contents in place so everyone connected to self.events keeps following
        for lay in self.layers:
            lay._listeners.clear()
        self.layers = [made[i] for i in range(len(loaded))]
        for lay in self.layers:
            lay._listeners.clear()
            lay._listeners.append(self._on_layer_changed)
        self._base = new._base
        self._active = next((made[i] for i in range(len(loaded)) if loaded[i][0].get("active")),
                            self.layers[-1])
        self._geom_cache.clear()
        self._resample_cache.clear()
        self._convention = new._convention
        self._layout = new._layout
        for p in PLANES:
            v = d.get("views", {}).get(p, {})
            self.views[p] = ViewSettings(float(v.get("zoom", 1.0)),
                                         tuple(v.get("pan", (0.0, 0.0))))
        self.events.layers_changed.emit()
        self.events.convention_changed.emit(self._convention)
        self.events.layout_changed.emit(self._layout)
        for p in PLANES:
            self.events.view_changed.emit(p)
        self.events.active_layer_changed.emit(self._active)
        cur = d.get("cursor_mm")
        self._cursor = np.array([np.nan] * 3)
        self.set_cursor(cur if cur is not None else self._centre(self._base.volume))
        return skipped


# -- helpers ----------------------------------------------------------------------------------
def sample_nearest(volume: Volume, channel: str, world: np.ndarray) -> np.ndarray:
    """Nearest-neighbour values of ``volume``'s ``channel`` at world points ``(..., 3)``; NaN
    outside (float32 result; label ids stay exact up to 2**24)."""
    data = volume.channel(channel)
    zyx = np.rint(volume.world_to_voxel(world)).astype(np.int64)
    shape = np.array(data.shape)
    inside = np.all((zyx >= 0) & (zyx < shape), axis=-1)
    out = np.full(world.shape[:-1], np.nan, dtype=np.float32)
    idx = zyx[inside]
    out[inside] = data[idx[:, 0], idx[:, 1], idx[:, 2]]
    return out


def _nonzero(arr: np.ndarray, max_samples: int = 500_000) -> np.ndarray:
    """The non-zero finite values of ``arr`` (subsampled), or ``arr`` itself if all are zero."""
    flat = display.sample_values(arr, max_samples)
    nz = flat[(flat != 0) & np.isfinite(flat)]
    return nz if nz.size else flat


_AXIS_PLANS: dict[bytes, Any] = {}


def _axis_plan(base_affine: np.ndarray, affine: np.ndarray
               ) -> dict[int, tuple[int, float, float]] | None:
    """For grids with parallel axes: base numpy axis -> (overlay numpy axis, a, b) with
    ``overlay index = a * base index + b``; None when the grids are rotated (cached)."""
    key = np.asarray(base_affine, np.float64).tobytes() + np.asarray(affine,
                                                                     np.float64).tobytes()
    if key in _AXIS_PLANS:
        return _AXIS_PLANS[key]
    m = np.linalg.inv(affine) @ base_affine  # base voxel xyz -> overlay voxel xyz
    lin = m[:3, :3]
    strong = np.abs(lin) > 1e-6 * np.abs(lin).max()
    plan: dict[int, tuple[int, float, float]] | None = None
    if (strong.sum(axis=1) == 1).all() and (strong.sum(axis=0) == 1).all():
        plan = {}
        for j in range(3):  # overlay xyz axis j (numpy axis 2 - j)
            i = int(np.argmax(np.abs(lin[j])))  # base xyz axis i (numpy axis 2 - i)
            plan[2 - i] = (2 - j, float(lin[j, i]), float(m[j, 3]))
    if len(_AXIS_PLANS) > 256:
        _AXIS_PLANS.clear()
    _AXIS_PLANS[key] = plan
    return plan


def _resample_axis_aligned(base: Volume, data: np.ndarray, affine: np.ndarray,
                           geom: PlaneGeometry, k: int) -> np.ndarray | None:
    """Nearest-neighbour slice of ``data`` (on ``affine``) on the base grid when the two grids'
    axes are parallel (each overlay axis follows one base axis): one 1D index vector per
    screen axis and two ``take`` gathers from a view of the overlay slice, instead of a matrix
    product per pixel (the index plan is cached per pair of grids). None when the grids are rotated."""
    plan = _axis_plan(base.affine, affine)
    if plan is None:
        return None
    shape = data.shape

    def along(base_axis: int, base_idx: np.ndarray) -> tuple[int, np.ndarray, np.ndarray]:
        o, a, b = plan[base_axis]
        v = np.rint(a * base_idx + b).astype(np.int64)
        ok = (v >= 0) & (v < shape[o])
        return o, np.clip(v, 0, shape[o] - 1), ok

    rows, cols = geom.shape
    r = np.arange(rows)
    c = np.arange(cols)
    o_n, kk, ok_n = along(geom.normal_axis, np.array([k]))
    o_r, rv, ok_r = along(geom.row_axis, (rows - 1 - r) if geom.flip_rows else r)
    o_c, cv, ok_c = along(geom.col_axis, (cols - 1 - c) if geom.flip_cols else c)
    sl: list[Any] = [slice(None)] * 3
    sl[o_n] = int(kk[0])
    two = data[tuple(sl)]  # a view: the two remaining overlay axes in numpy order
    if o_r > o_c:
        two = two.T
    out = two.take(rv, axis=0).take(cv, axis=1).astype(np.float32, copy=False)
    if not ok_n[0]:
        out[...] = np.nan
        return out
    if not ok_r.all():
        out[~ok_r, :] = np.nan
    if not ok_c.all():
        out[:, ~ok_c] = np.nan
    return out


def _world_bounds(volume: Volume) -> tuple[np.ndarray, np.ndarray]:
    s = np.array(volume.shape) - 1
    corners = np.array([[a, b, c] for a in (-0.5, s[0] + 0.5) for b in (-0.5, s[1] + 0.5)
                        for c in (-0.5, s[2] + 0.5)])
    w = volume.voxel_to_world(corners)
    return w.min(axis=0), w.max(axis=0)


def _fmt_box(lo: np.ndarray, hi: np.ndarray) -> str:
    return "[" + ", ".join(f"{a:.0f}..{b:.0f}" for a, b in zip(lo, hi)) + "]"


def _fmt_val(v: Any) -> str:
    if isinstance(v, int):
        return str(v)
    return f"{v:.6g}"


def _check(value: str, allowed: tuple[str, ...], what: str) -> str:
    if value not in allowed:
        raise BodyageError(f"unknown {what} {value!r}", hint=f"use one of {', '.join(allowed)}")
    return value


def _default_label_names() -> dict[int, str]:
    """Organ names of the synthetic cohort when that module exists (else empty)."""
    try:
        from bodyage_core.synth.anatomy import LABELS  # type: ignore[import-not-found]
    except Exception:
        return {}
    return {int(k): str(v) for k, v in dict(LABELS).items()}


def _default_loader(path: str) -> Volume:
    try:
        from bodyage_core.io import load_volume  # type: ignore[attr-defined]
    except ImportError as exc:  # pragma: no cover - until io lands
        raise BodyageError("no image loader is available (bodyage_core.io.load_volume)",
                           path=path) from exc
    return load_volume(path)
