"""The evented viewer state that every view follows (Qt-free).

One :class:`ViewerState` holds everything the desktop viewer shows: the cursor in world
millimetres (RAS+), the display convention (radiological by default), the layers with their
display settings, the zoom and pan of each view, the layout and the display space. Views
subscribe to its events and write back only through its methods, so "linked views" costs
nothing: every view follows the same cursor. The same object is the session file
(:meth:`~SessionMixin.to_dict` / :meth:`~SessionMixin.from_dict`) and what
``bodyage gui FILE --overlay MAP --threshold T`` parses into.

Each concern lives in its own module as one part (mixin) of the class: layers
(:mod:`.layer_list`), cursor (:mod:`.cursor`), convention / layout / zoom (:mod:`.camera`),
slicing (:mod:`.slicing`), readout (:mod:`.readout`), display space (:mod:`.space`),
interpolation and lightbox (:mod:`.lightbox`), rulers and regions (:mod:`.measure`) and
sessions (:mod:`.session`). This module only holds the state's fields.
"""

from __future__ import annotations

import numpy as np

from bodyage_core.viewer.camera import LAYOUTS, CameraMixin, ViewSettings, check_choice
from bodyage_core.viewer.cursor import CursorMixin
from bodyage_core.viewer.events import ViewerEvents
from bodyage_core.viewer.geometry import CONVENTIONS, PLANES, PlaneGeometry
from bodyage_core.viewer.layer_list import LayerListMixin
from bodyage_core.viewer.layers import Layer
from bodyage_core.viewer.lightbox import DisplayOptionsMixin, LightboxSettings
from bodyage_core.viewer.measure import MeasureMixin
from bodyage_core.viewer.readout import ReadoutMixin
from bodyage_core.viewer.session import SessionMixin
from bodyage_core.viewer.slicing import SlicingMixin
from bodyage_core.viewer.space import DisplaySpace, SpaceMixin


class ViewerState(LayerListMixin, CursorMixin, CameraMixin, SlicingMixin, ReadoutMixin,
                  SpaceMixin, DisplayOptionsMixin, MeasureMixin, SessionMixin):
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
        self._convention = check_choice(convention, CONVENTIONS, "convention")
        self._layout = check_choice(layout, LAYOUTS, "layout")
        self.views: dict[str, ViewSettings] = {p: ViewSettings() for p in PLANES}
        self.link_views = True
        self.label_names: dict[int, str] = {}
        self.space = DisplaySpace()
        self._interpolation = "nearest"
        self.lightbox = LightboxSettings()
        self.measurements = []
        self._geom_cache: dict[tuple[str, str, int], PlaneGeometry] = {}
        self._cursor_voxel_cache: tuple | None = None
        self._resample_cache: dict[tuple, np.ndarray] = {}
