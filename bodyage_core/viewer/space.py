"""The display space: a workspace subject shown in its own space (the scan's grid) or in the
atlas space of its group (see :mod:`bodyage_core.viewer.atlas_space`), as part of the viewer
model and of the session.

While the atlas space is shown, the state keeps the subject's own layers
(:attr:`DisplaySpace.subject_layers`) and the point mapping of its registration
(:attr:`DisplaySpace.points`), so that going back, or saving a session, gives the subject's own
files with the display settings set meanwhile and the cursor on the same anatomy.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from bodyage_core.volume import Volume

SUBJECT, ATLAS = "subject", "atlas"
SPACES = (SUBJECT, ATLAS)
#: The display settings a layer keeps when it goes from one space to the other.
CARRIED_KEYS = ("colormap", "opacity", "display_range", "threshold", "visible", "channel",
                "label_colors", "hidden_labels", "outline")


@dataclass
class LayerSpec:
    """A layer to (re)build: its volume and display settings (``Layer.settings()`` keys)."""

    volume: Volume
    settings: dict[str, Any]
    label_names: dict[int, str] = field(default_factory=dict)
    base: bool = False
    active: bool = False
    label_source: str = ""

    @property
    def name(self) -> str:
        return str(self.settings.get("name"))

    def copy(self) -> LayerSpec:
        """The same layer with its settings and label names copied (the volume shared)."""
        return LayerSpec(self.volume, dict(self.settings), dict(self.label_names), self.base,
                         self.active, self.label_source)


@dataclass
class DisplaySpace:
    """Where the layers of a :class:`~bodyage_core.viewer.ViewerState` live.

    Attributes
    ----------
    name
        ``'subject'`` (the files' own space) or ``'atlas'``.
    group
        The atlas group shown (``F_healthy`` ...) in atlas space, else None.
    subject_id
        The workspace subject shown in atlas space.
    subject_layers
        In atlas space: the subject's own layers, to go back to and to save in sessions.
    points
        In atlas space: maps single points, ``to_subject(ras)`` / ``to_atlas(ras)``
        (a :class:`~bodyage_core.viewer.atlas_space.PointMapper`).
    wanted
        Stay in (or go back to) atlas space when the next subject opens or a session saved in
        atlas space is restored.
    atlas_layer_settings
        What the user set last time on the layers that exist only in atlas space (template,
        population map), by layer name.
    """

    name: str = SUBJECT
    group: str | None = None
    subject_id: str | None = None
    subject_layers: list[LayerSpec] | None = None
    points: Any = None
    wanted: bool = False
    atlas_layer_settings: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def is_atlas(self) -> bool:
        return self.name == ATLAS


def snapshot(state: Any) -> list[LayerSpec]:
    """The layers of a ViewerState as specs (volumes shared, settings copied)."""
    return [LayerSpec(lay.volume, dict(lay.settings()), dict(lay.label_names),
                      lay is state.base_layer, lay is state.active_layer, lay.label_source)
            for lay in state.layers]


def carry_settings(specs: list[LayerSpec], state: Any,
                   keys: tuple[str, ...] = CARRIED_KEYS) -> None:
    """Give specs the display settings of the same-named layers of ``state`` (what the user
    changed in the other space follows the layer)."""
    now = {lay.name: lay.settings() for lay in state.layers}
    for s in specs:
        cur = now.get(s.name)
        if cur is None:
            continue
        for k in keys:
            if k not in cur or k == "channel" and cur.get(k) not in s.volume.channels:
                continue
            s.settings[k] = cur[k]


def label_display(settings: dict[str, Any]) -> dict[str, Any]:
    """The label display settings of a layer's settings dict (``Layer.settings()`` or a
    session's), as :meth:`~bodyage_core.viewer.ViewerState.add_layer` arguments."""
    out: dict[str, Any] = {}
    if settings.get("label_colors"):
        out["label_colors"] = {int(k): tuple(v) for k, v in settings["label_colors"].items()}
    if settings.get("hidden_labels"):
        out["hidden_labels"] = settings["hidden_labels"]
    if settings.get("outline"):
        out["outline"] = True
    return out


def build_state(specs: list[LayerSpec], convention: str, layout: str, state_type: type) -> Any:
    """A new ``state_type`` (a :class:`~bodyage_core.viewer.ViewerState`: passed in, this module
    being one of its parts) holding ``specs`` (base first so the others are checked against it;
    then the saved order)."""
    st = state_type(convention, layout)
    order = sorted(range(len(specs)), key=lambda i: not specs[i].base)
    made = {}
    for i in order:
        s = specs[i].settings
        rng = s.get("display_range")
        made[i] = st.add_layer(specs[i].volume, s.get("name"), s.get("kind"), s.get("colormap"),
                               tuple(rng) if rng else None, s.get("threshold"),
                               s.get("opacity"), bool(s.get("visible", True)),
                               s.get("channel") if s.get("channel") in specs[i].volume.channels
                               else None, s.get("path"), specs[i].label_names or None,
                               label_source=specs[i].label_source or None,
                               **label_display(s))
    st.layers = [made[i] for i in range(len(specs))]
    active = next((made[i] for i in range(len(specs)) if specs[i].active), None)
    st.set_active_layer(active or st.layers[-1])
    return st


class SpaceMixin:
    """Display space of a :class:`~bodyage_core.viewer.ViewerState`."""

    space: DisplaySpace

    @property
    def display_space(self) -> str:
        """``'subject'`` or ``'atlas'``."""
        return self.space.name

    def set_space(self, space: DisplaySpace) -> None:
        """Record the space the layers are now shown in; ``space_changed`` when it changed."""
        if space.name not in SPACES:
            raise ValueError(f"unknown display space {space.name!r}")
        old = self.space.name
        self.space = space
        if space.name != old:
            self.events.space_changed.emit(space.name)

    def subject_space_state(self) -> tuple[Any, Any]:
        """In atlas space: a new state with the subject's own layers (and the display settings
        set meanwhile), and the cursor mapped back onto the subject (None without a usable
        registration). ``(None, None)`` in subject space."""
        from bodyage_core.errors import BodyageError

        if not self.space.is_atlas or self.space.subject_layers is None:
            return None, None
        specs = [sp.copy() for sp in self.space.subject_layers]
        carry_settings(specs, self)
        st = build_state(specs, self.convention, self.layout, type(self))
        try:
            cursor = self.space.points.to_subject(self.cursor)
        except (BodyageError, RuntimeError, AttributeError):
            cursor = None
        return st, cursor
