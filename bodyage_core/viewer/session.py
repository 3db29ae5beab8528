"""The session file: paths, display settings, cursor, views, layout and display space; never
pixels (FSLeyes' saved layouts, napari's ``viewer.layers.save`` manifest).

A session is read through a schema (:data:`LAYER_SCHEMA`, :data:`VIEW_SCHEMA`,
:data:`TOP_SCHEMA`) before anything is loaded: a value of the wrong type or out of range
(``display_range: [5]``, ``zoom: "NaN"``, a layer that is a string, a layer without a file) is
dropped and reported, and its default is used; only a file that is not a session at all, or one
from a newer viewer, is an error (:func:`validate_session`).

Versions: 1 (the first), 2 (adds ``space`` in subject space too). Both are read.

:class:`SessionMixin` is one part of :class:`~bodyage_core.viewer.ViewerState`.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from bodyage_core import display
from bodyage_core.errors import BodyageError
from bodyage_core.viewer.camera import LAYOUTS, ZOOM_RANGE, ViewSettings
from bodyage_core.viewer.geometry import CONVENTIONS, PLANES
from bodyage_core.viewer.layers import KINDS, Layer
from bodyage_core.viewer.lightbox import INTERPOLATIONS, LightboxSettings
from bodyage_core.viewer.space import ATLAS, SPACES, SUBJECT, DisplaySpace, label_display
from bodyage_core.volume import Volume

SESSION_VERSION = 2
NOT_A_SESSION_HINT = "choose a .json file saved with File > Save session"


# -- the schema -------------------------------------------------------------------------------
class _Odd(ValueError):
    """A value that does not fit its field (the message says what was expected)."""


def _number(v: Any) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        raise _Odd("a finite number")
    return float(v)


def _numbers(n: int) -> Callable[[Any], list[float]]:
    def check(v: Any) -> list[float]:
        if not isinstance(v, (list, tuple)) or len(v) != n:
            raise _Odd(f"{n} numbers")
        try:
            return [_number(x) for x in v]
        except _Odd:
            raise _Odd(f"{n} finite numbers") from None
    return check


def _between(lo: float, hi: float) -> Callable[[Any], float]:
    def check(v: Any) -> float:
        try:
            x = _number(v)
        except _Odd:
            x = math.nan
        if not lo <= x <= hi:
            raise _Odd(f"a number from {lo:g} to {hi:g}")
        return x
    return check


def _choice(allowed: tuple[str, ...]) -> Callable[[Any], str]:
    def check(v: Any) -> str:
        if v not in allowed:
            raise _Odd("one of " + ", ".join(allowed))
        return v
    return check


def _text(v: Any) -> str:
    if not isinstance(v, str) or not v:
        raise _Odd("a text")
    return v


def _optional(check: Callable[[Any], Any]) -> Callable[[Any], Any]:
    def opt(v: Any) -> Any:
        return None if v is None else check(v)
    return opt


def _flag(v: Any) -> bool:
    if not isinstance(v, bool):
        raise _Odd("true or false")
    return v


def _colormap(v: Any) -> str:
    try:
        return display.canonical_name(_text(v))
    except (KeyError, _Odd):
        raise _Odd("one of " + ", ".join(display.COLORMAPS)) from None


def _display_range(v: Any) -> list[float]:
    lo, hi = _numbers(2)(v)
    if lo > hi:
        raise _Odd("two numbers, low to high")
    return [lo, hi]


def _label_colors(v: Any) -> dict[str, list[int]]:
    if not isinstance(v, dict):
        raise _Odd("a table of label id -> [r, g, b]")
    out = {}
    for k, rgb in v.items():
        if not (isinstance(k, str) and k.lstrip("-").isdigit()) or not isinstance(
                rgb, (list, tuple)) or len(rgb) != 3 or not all(
                isinstance(c, int) and not isinstance(c, bool) and 0 <= c <= 255 for c in rgb):
            raise _Odd("a table of label id -> [r, g, b] (0-255)")
        out[k] = list(rgb)
    return out


def _label_ids(v: Any) -> list[int]:
    if not isinstance(v, list) or not all(isinstance(i, int) and not isinstance(i, bool)
                                          for i in v):
        raise _Odd("a list of label ids")
    return list(v)


def _zoom(v: Any) -> float:
    return _between(*ZOOM_RANGE)(v)


def _lightbox(v: Any) -> dict[str, Any]:
    if not isinstance(v, dict):
        raise _Odd("a table of plane, rows, columns and spacing")
    try:
        return LightboxSettings(**{k: v[k] for k in ("plane", "rows", "columns", "spacing")
                                   if k in v}).checked().to_dict()
    except (BodyageError, TypeError, ValueError) as exc:
        raise _Odd("a lightbox of 1-100 tiles over a plane") from exc


#: field -> check; a check returns the clean value or raises ``_Odd(what was expected)``.
TOP_SCHEMA: dict[str, Callable[[Any], Any]] = {
    "convention": _choice(CONVENTIONS), "layout": _choice(LAYOUTS),
    "cursor_mm": _numbers(3), "space": _choice(SPACES), "atlas_group": _optional(_text),
    "workspace": _optional(_text), "subject": _optional(_text),
    "interpolation": _choice(INTERPOLATIONS), "lightbox": _lightbox,
}
LAYER_SCHEMA: dict[str, Callable[[Any], Any]] = {
    "name": _text, "path": _optional(_text), "kind": _choice(KINDS), "colormap": _colormap,
    "opacity": _between(0.0, 1.0), "display_range": _display_range,
    "threshold": _optional(_number), "visible": _flag, "channel": _text, "base": _flag,
    "active": _flag, "label_colors": _label_colors, "hidden_labels": _label_ids,
    "outline": _flag,
}
VIEW_SCHEMA: dict[str, Callable[[Any], Any]] = {"zoom": _zoom, "pan": _numbers(2)}


def _short(v: Any) -> str:
    text = json.dumps(v, default=str, allow_nan=True)
    return text if len(text) <= 40 else text[:37] + "..."


def _checked(table: dict[str, Any], schema: dict[str, Callable[[Any], Any]], where: str,
             problems: list[str]) -> dict[str, Any]:
    out = {}
    for key, check in schema.items():
        if key not in table:
            continue
        try:
            out[key] = check(table[key])
        except _Odd as odd:
            problems.append(f"{where}{key}: {_short(table[key])} is not {odd} (default used)")
    return out


def validate_session(d: Any) -> tuple[dict[str, Any], list[str]]:
    """Check a session dict against the schema.

    Returns
    -------
    (clean, problems)
        ``clean`` holds only the fields that fit (a layer that is not a table, or names no
        file, is left out); ``problems`` says, one line each, what was skipped and why.

    Raises
    ------
    BodyageError
        When ``d`` is not a session (not a table, no list of layers, a version that is not a
        number) or comes from a newer viewer.
    """
    if not isinstance(d, dict) or "layers" not in d:
        raise BodyageError("not a bodyage session (no 'layers')", hint=NOT_A_SESSION_HINT)
    version = d.get("bodyage_session", 1)
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise BodyageError(f"not a bodyage session (version {_short(version)})",
                           hint=NOT_A_SESSION_HINT)
    if version > SESSION_VERSION:
        raise BodyageError(f"session version {version} is newer than this viewer "
                           f"({SESSION_VERSION})", hint="update bodyage")
    if not isinstance(d["layers"], list):
        raise BodyageError("not a bodyage session ('layers' is not a list)",
                           hint=NOT_A_SESSION_HINT)
    problems: list[str] = []
    clean = _checked(d, TOP_SCHEMA, "", problems)
    clean["bodyage_session"] = version
    views = d.get("views", {})
    clean["views"] = {}
    if not isinstance(views, dict):
        problems.append(f"views: {_short(views)} is not a table of views (defaults used)")
        views = {}
    for plane in PLANES:
        if plane not in views:
            continue
        v = views[plane]
        if not isinstance(v, dict):
            problems.append(f"views.{plane}: {_short(v)} is not a table of zoom and pan "
                            "(default used)")
            continue
        good = _checked(v, VIEW_SCHEMA, f"views.{plane}.", problems)
        if good:
            clean["views"][plane] = good
    clean["layers"] = []
    for i, s in enumerate(d["layers"], start=1):
        if not isinstance(s, dict):
            problems.append(f"layer {i}: {_short(s)} is not a table of layer settings "
                            "(skipped)")
            continue
        name = s.get("name") if isinstance(s.get("name"), str) else f"layer {i}"
        good = _checked(s, LAYER_SCHEMA, f"layer {name!r}: ", problems)
        if not good.get("path"):
            problems.append(f"layer {name!r}: no file (computed in memory?); skipped")
            continue
        clean["layers"].append(good)
    return clean, problems


class SessionMixin:
    """Session of a :class:`~bodyage_core.viewer.ViewerState`."""

    def to_dict(self, relative_to: str | Path | None = None) -> dict[str, Any]:
        """The session: paths, display settings, cursor, views, layout, display space. Never
        pixels.

        ``relative_to`` (the session file's folder) stores paths relative to it when possible.
        In atlas space the layers are the subject's own files with the current display settings
        and ``"space": "atlas"`` (restoring warps them again), since the warped layers exist
        only in memory.
        """
        if self.space.is_atlas and self.space.subject_layers is not None:
            st, cursor = self.subject_space_state()
            if cursor is not None:
                st.set_cursor(cursor)
            d = st._session_dict(relative_to)
            d["space"] = ATLAS
            if self.space.group is not None:
                d["atlas_group"] = self.space.group
            return d
        return self._session_dict(relative_to) | {"space": SUBJECT}

    def _views_dict(self) -> dict[str, Any]:
        return {p: {"zoom": vs.zoom, "pan": list(vs.pan)} for p, vs in self.views.items()}

    def _session_dict(self, relative_to: str | Path | None) -> dict[str, Any]:
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
            "views": self._views_dict(),
            "layers": layers,
            "interpolation": self._interpolation,
            "lightbox": self.lightbox.to_dict(),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any], loader: Callable[[str], Volume] | None = None,
                  relative_to: str | Path | None = None):
        """A new state from a session dict (see :meth:`restore`)."""
        state = cls()
        state.restore(d, loader, relative_to)
        return state

    def restore(self, d: dict[str, Any], loader: Callable[[str], Volume] | None = None,
                relative_to: str | Path | None = None) -> list[str]:
        """Replace this state's contents with a session dict; volumes come from ``loader(path)``
        (default :func:`bodyage_core.io.load_volume`).

        The dict is first checked against the schema (:func:`validate_session`): odd values
        are dropped (their defaults used) and layers that are not tables or name no file are
        skipped; the returned list says what, one line each. Everything is then loaded and
        checked *before* the state changes: if a file cannot be read the error propagates and
        the state is untouched. The layers come back in their own (subject) space; a session
        saved in atlas space sets ``space.wanted`` (and ``space.group``) for the caller to
        switch.
        """
        d, problems = validate_session(d)
        loader = loader or _default_loader
        loaded = []
        for s in d["layers"]:
            p = Path(s["path"])
            if relative_to is not None and not p.is_absolute():
                p = Path(relative_to) / p
            loaded.append((s, loader(str(p)), str(p)))
        if not loaded:
            raise BodyageError("the session names no files that can be reopened"
                               + (f" ({problems[0]})" if problems else ""),
                               hint="layers created in memory are not saved in sessions")
        # base first so overlays are checked against it; then back to the saved order
        order = sorted(range(len(loaded)), key=lambda i: not loaded[i][0].get("base", False))
        new = type(self)(d.get("convention", "radiological"), d.get("layout", "grid"))
        new.label_names = self.label_names
        made: dict[int, Layer] = {}
        for i in order:
            s, vol, path = loaded[i]
            rng = s.get("display_range")
            made[i] = new.add_layer(vol, s.get("name"), s.get("kind"), s.get("colormap"),
                                    tuple(rng) if rng else None, s.get("threshold"),
                                    s.get("opacity"), s.get("visible", True),
                                    s.get("channel"), path, **label_display(s))
        # swap contents in place so everyone connected to self.events keeps following
        self.clear_measurements()
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
            v = d["views"].get(p, {})
            self.views[p] = ViewSettings(v.get("zoom", 1.0), tuple(v.get("pan", (0.0, 0.0))))
        self._interpolation = d.get("interpolation", self._interpolation)
        if "lightbox" in d:
            self.lightbox = LightboxSettings(**d["lightbox"])
        self.set_space(DisplaySpace(wanted=d.get("space") == ATLAS, group=d.get("atlas_group"),
                                    atlas_layer_settings=self.space.atlas_layer_settings))
        self.events.layers_changed.emit()
        self.events.convention_changed.emit(self._convention)
        self.events.layout_changed.emit(self._layout)
        for p in PLANES:
            self.events.view_changed.emit(p)
        self.events.active_layer_changed.emit(self._active)
        self.events.interpolation_changed.emit(self._interpolation)
        self.events.lightbox_changed.emit(self.lightbox)
        cur = d.get("cursor_mm")
        self._cursor = np.array([np.nan] * 3)
        self.set_cursor(cur if cur is not None else self._centre(self._base.volume))
        return problems


def _default_loader(path: str) -> Volume:
    from bodyage_core.io import load_volume

    return load_volume(path)
