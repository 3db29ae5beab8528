"""The session file: paths, display settings, cursor, views, layout and display space; never
pixels (FSLeyes' saved layouts, napari's ``viewer.layers.save`` manifest).

:class:`SessionMixin` is one part of :class:`~bodyage_core.viewer.ViewerState`.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from bodyage_core.errors import BodyageError
from bodyage_core.viewer.camera import LAYOUTS, ViewSettings, check_choice
from bodyage_core.viewer.geometry import CONVENTIONS, PLANES
from bodyage_core.viewer.layers import Layer
from bodyage_core.viewer.space import ATLAS, SUBJECT, DisplaySpace
from bodyage_core.volume import Volume

SESSION_VERSION = 1


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

        Everything is loaded and checked *before* the state changes: if a file cannot be read the
        error propagates and the state is untouched. Layers without a path are skipped (their
        names are returned). The layers come back in their own (subject) space; a session saved
        in atlas space sets ``space.wanted`` (and ``space.group``) for the caller to switch.
        """
        from bodyage_core.viewer.state import ViewerState

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
        new = ViewerState(check_choice(d.get("convention", "radiological"), CONVENTIONS,
                                       "convention"),
                          check_choice(d.get("layout", "grid"), LAYOUTS, "layout"))
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
        self.set_space(DisplaySpace(wanted=d.get("space") == ATLAS, group=d.get("atlas_group"),
                                    atlas_layer_settings=self.space.atlas_layer_settings))
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


def _default_loader(path: str) -> Volume:
    from bodyage_core.io import load_volume

    return load_volume(path)
