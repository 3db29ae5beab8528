"""The viewer model (Qt-free): one evented :class:`ViewerState` that the slice views, the 3D
view and the panels follow and write back through, split by concern as napari splits its
viewer model:

==================  ===========================================================================
``events``          :class:`Event`, :class:`ViewerEvents`
``layers``          :class:`Layer` (one volume and its display settings), display defaults
``geometry``        :class:`PlaneGeometry`, :func:`plane_geometry`, :class:`SliceImage`
``resample``        nearest-neighbour resampling onto the base grid (:func:`sample_nearest`)
``layer_list``      adding / removing / ordering layers, base and active layer
``cursor``          the cursor in world mm, slice stepping
``camera``          convention, layout, zoom and pan
``slicing``         the 2D slices the views draw, display mm <-> world
``readout``         what is under the cursor
``space``           the display space (subject / atlas) and layer specs
``atlas_space``     finding a subject's atlas space, warping its layers, mapping points
``session``         the session file (:meth:`ViewerState.to_dict` / ``restore``), its schema
``windowing``       default window (CT soft tissue), presets, window/level, histogram
``files``           opening a map file on top (command line and File > Add overlay)
``lightbox``        the lightbox (mosaic) of one plane and the display interpolation
``measure``         rulers (mm) and box / ellipse regions with every layer's statistics
``compose``         one slice of all visible layers composited (views and lightbox tiles)
``scan``            the scan shown, as a model's input (what Predict hands to a model)
``dicom_series``    the patients, studies and series of a DICOM folder (the series browser)
``linked``          two viewers side by side: one cursor in world mm or through atlas space
``state``           :class:`ViewerState`, assembled from the parts above
==================  ===========================================================================

Geometry conventions are in :mod:`bodyage_core.viewer.geometry`.
"""

from bodyage_core.viewer.camera import LAYOUTS, ViewSettings
from bodyage_core.viewer.events import Event, ViewerEvents
from bodyage_core.viewer.geometry import (
    CONVENTIONS,
    PLANES,
    PlaneGeometry,
    SliceImage,
    plane_geometry,
)
from bodyage_core.viewer.layers import KINDS, Layer
from bodyage_core.viewer.resample import resample_slice, sample_nearest
from bodyage_core.viewer.session import SESSION_VERSION
from bodyage_core.viewer.space import ATLAS, SUBJECT, DisplaySpace, LayerSpec
from bodyage_core.viewer.state import ViewerState

__all__ = [
    "ATLAS", "CONVENTIONS", "KINDS", "LAYOUTS", "PLANES", "SESSION_VERSION", "SUBJECT",
    "DisplaySpace", "Event", "Layer", "LayerSpec", "PlaneGeometry", "SliceImage",
    "ViewSettings", "ViewerEvents", "ViewerState", "plane_geometry", "resample_slice",
    "sample_nearest",
]
