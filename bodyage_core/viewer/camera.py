"""Display convention, layout and each view's zoom and pan (napari's ``Camera``).

:class:`CameraMixin` is one part of :class:`~bodyage_core.viewer.ViewerState`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from bodyage_core.errors import BodyageError
from bodyage_core.viewer.geometry import CONVENTIONS, PLANES

LAYOUTS = ("grid", "row", "axial", "coronal", "sagittal", "3d", "lightbox")
ZOOM_RANGE = (0.25, 40.0)


@dataclass
class ViewSettings:
    """Zoom (1 = the whole slice fits) and pan (display mm offset of the view centre)."""

    zoom: float = 1.0
    pan: tuple[float, float] = (0.0, 0.0)


def check_choice(value: str, allowed: tuple[str, ...], what: str) -> str:
    """``value`` if it is one of ``allowed``, else a BodyageError naming the choices."""
    if value not in allowed:
        raise BodyageError(f"unknown {what} {value!r}", hint=f"use one of {', '.join(allowed)}")
    return value


class CameraMixin:
    """Convention, layout, zoom and pan of a :class:`~bodyage_core.viewer.ViewerState`."""

    _convention: str
    _layout: str
    views: dict[str, ViewSettings]

    @property
    def convention(self) -> str:
        return self._convention

    def set_convention(self, convention: str) -> None:
        convention = check_choice(convention, CONVENTIONS, "convention")
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
        layout = check_choice(layout, LAYOUTS, "layout")
        if layout != self._layout:
            self._layout = layout
            self.events.layout_changed.emit(layout)

    def set_zoom(self, plane: str, zoom: float, anchor: tuple[float, float] | None = None) -> None:
        """Set the zoom of a view (clamped to 0.25..40); ``anchor`` (display mm) stays fixed."""
        vs = self.views[plane]
        zoom = float(np.clip(zoom, *ZOOM_RANGE))
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
