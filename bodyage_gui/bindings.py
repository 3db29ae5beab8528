"""Mouse and key bindings as data (napari / FSLeyes interaction profiles).

Qt widgets only translate events into a gesture ``(kind, button, modifiers)`` or a key name and
look the action up here; the table also feeds Help > Keyboard shortcuts. Qt-free.
"""

from __future__ import annotations

from dataclasses import dataclass

#: Slices per wheel notch with Shift held.
FAST_SLICE_STEP = 5
#: Zoom factor per wheel notch (120 units of angle delta).
ZOOM_STEP = 1.2


@dataclass(frozen=True)
class Gesture:
    """``kind``: 'wheel' | 'click' | 'double' (double click) | 'drag'; ``button``: 'left' | 'right' | 'middle' | None;
    ``modifiers``: a frozenset of 'shift', 'ctrl', 'alt'."""

    kind: str
    button: str | None = None
    modifiers: frozenset[str] = frozenset()


def _g(kind: str, button: str | None = None, *mods: str) -> Gesture:
    return Gesture(kind, button, frozenset(mods))


#: gesture -> action name
MOUSE_BINDINGS: dict[Gesture, str] = {
    _g("wheel"): "slice",
    _g("wheel", None, "shift"): "slice_fast",
    _g("wheel", None, "ctrl"): "zoom",
    _g("click", "left"): "set_cursor",
    _g("drag", "left"): "set_cursor",
    _g("drag", "right"): "window_level",
    _g("drag", "middle"): "pan",
    _g("drag", "left", "shift"): "pan",
    _g("drag", "left", "ctrl"): "window_level",
    _g("double", "left"): "maximise",
}

#: key name (Qt's QKeySequence text) -> action name, for the slice views
KEY_BINDINGS: dict[str, str] = {
    "R": "reset",
    "Up": "slice_up",
    "Down": "slice_down",
    "Shift+Up": "slice_up_fast",
    "Shift+Down": "slice_down_fast",
    "+": "zoom_in",
    "=": "zoom_in",
    "-": "zoom_out",
}

#: Window-wide shortcuts handled by the main window (key -> action)
WINDOW_KEYS: dict[str, str] = {
    "PgDown": "next_subject",
    "PgUp": "previous_subject",
    "Ctrl+O": "open_files",
    "Ctrl+Shift+O": "open_workspace",
    "Ctrl+S": "save_session",
    "Ctrl+Shift+S": "screenshot",
    "Ctrl+P": "predict",
    "Ctrl+T": "train",
    "F5": "toggle_convention",
    "F6": "toggle_atlas_space",
    "Ctrl+D": "open_dicom",
    "Ctrl+1": "layout_grid",
    "Ctrl+2": "layout_row",
    "Ctrl+3": "layout_axial",
    "Ctrl+4": "layout_coronal",
    "Ctrl+5": "layout_sagittal",
    "Ctrl+6": "layout_3d",
    "Ctrl+7": "layout_lightbox",
    "Ctrl+I": "toggle_interpolation",
    "Ctrl+M": "tool_ruler",
    "Ctrl+B": "tool_box",
    "Ctrl+E": "tool_ellipse",
    "Esc": "tool_none",
    "Ctrl+L": "label_region",
}

ACTION_HELP: dict[str, str] = {
    "slice": "change slice", "slice_fast": f"change slice x{FAST_SLICE_STEP}",
    "zoom": "zoom about the mouse", "set_cursor": "move the cursor (all views follow)",
    "window_level": "window / level of the selected layer", "pan": "pan",
    "reset": "reset zoom, pan and cursor", "slice_up": "next slice", "slice_down":
    "previous slice", "slice_up_fast": f"{FAST_SLICE_STEP} slices up",
    "slice_down_fast": f"{FAST_SLICE_STEP} slices down", "zoom_in": "zoom in",
    "zoom_out": "zoom out", "next_subject": "next subject (preloaded)",
    "previous_subject": "previous subject", "open_files": "open image files",
    "open_workspace": "open a workspace", "save_session": "save the session",
    "screenshot": "save a screenshot (PNG)",
    "predict": "predict the open subject (ensemble + Grad-CAM, in the background)",
    "train": "train a model (wizard)",
    "toggle_convention": "radiological / neurological convention",
    "toggle_atlas_space": "subject space / atlas space of the subject's group (needs its "
                          "registration)",
    "maximise": "this view alone / back to the layout before",
    "open_dicom": "browse a DICOM folder (patients, studies, series)",
    "layout_grid": "layout: three planes and 3D", "layout_row": "layout: three planes in a row",
    "layout_axial": "layout: axial alone", "layout_coronal": "layout: coronal alone",
    "layout_sagittal": "layout: sagittal alone", "layout_3d": "layout: 3D alone",
    "layout_lightbox": "layout: lightbox (mosaic of one plane)",
    "toggle_interpolation": "nearest / linear interpolation (display only)",
    "tool_ruler": "ruler: left-drag measures a distance (mm)",
    "tool_box": "box region: left-drag draws it; statistics in the Measurements panel",
    "tool_ellipse": "ellipse region: left-drag draws it; statistics in the Measurements panel",
    "tool_none": "back to moving the cursor with the left button",
    "label_region": "label region: the label under the cursor (3D), in the Measurements panel",
}


def key_for(action: str) -> str | None:
    """The window-wide key of an action (one table for menus and the Help listing)."""
    return next((k for k, a in WINDOW_KEYS.items() if a == action), None)


def mouse_action(kind: str, button: str | None, modifiers: frozenset[str] | set[str]) -> str | None:
    """The action bound to a gesture, or None. Extra modifiers fall back to the plain gesture
    only for 'click' (so a Shift+click still moves the cursor)."""
    g = Gesture(kind, button, frozenset(modifiers))
    if g in MOUSE_BINDINGS:
        return MOUSE_BINDINGS[g]
    if kind in ("click", "double"):
        return MOUSE_BINDINGS.get(Gesture(kind, button, frozenset()))
    return None


def describe(g: Gesture) -> str:
    mods = "+".join(m.capitalize() for m in sorted(g.modifiers))
    what = {"wheel": "wheel", "click": f"{g.button} click", "drag": f"{g.button} drag",
            "double": f"{g.button} double-click"}[g.kind]
    return f"{mods}+{what}" if mods else what


def help_rows() -> list[tuple[str, str]]:
    """``(gesture or key, what it does)`` for the Help menu."""
    rows = [(describe(g).capitalize(), ACTION_HELP.get(a, a)) for g, a in MOUSE_BINDINGS.items()]
    rows += [(k, ACTION_HELP.get(a, a)) for k, a in KEY_BINDINGS.items()]
    rows += [(k, ACTION_HELP.get(a, a)) for k, a in WINDOW_KEYS.items()]
    return rows
