"""Opening a map file on top of the image: one rule for the command line (``bodyage gui IMAGE
--overlay MAP``), File > Add overlay and File > Open with overlays.

A file is read as a label map when :func:`bodyage_core.labels.looks_like_label_map` says so
(its name, or a label table of its own); an integer result becomes a ``labels`` layer, whose
names come from the map's own table (:meth:`ViewerState.add_layer`), anything else an
``overlay``.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from bodyage_core.labels import looks_like_label_map
from bodyage_core.viewer.layers import OVERLAY_OPACITY, Layer, upper_quantile_threshold
from bodyage_core.volume import Volume


def read_map(path: str | Path, loader: Callable[..., Volume] | None = None) -> Volume:
    """Read a map file: as a label map (integers) when it looks like one, else as an image.
    ``loader(path, labels=bool)`` defaults to :func:`bodyage_core.io.load_labels` /
    :func:`~bodyage_core.io.load_volume`."""
    labels = looks_like_label_map(path)
    if loader is not None:
        return loader(path, labels=labels)
    from bodyage_core.io import load_labels, load_volume

    return load_labels(path) if labels else load_volume(path)


def add_map(state: Any, volume: Volume, path: str | Path | None,
            threshold: float | None = None, colormap: str | None = None,
            **display: Any) -> Layer:
    """Add a map on top of ``state``'s image: a ``labels`` layer for integer ids (colour map,
    threshold ignored), an ``overlay`` otherwise; both at :data:`OVERLAY_OPACITY` unless told.
    An overlay given no threshold gets one on its upper quantiles
    (:func:`upper_quantile_threshold`: at most its top fifth is drawn), so that a map opened
    on top does not hide the anatomy; the layer panel's threshold box turns it off."""
    display.setdefault("opacity", OVERLAY_OPACITY)
    if volume.data.dtype.kind in "iub":
        return state.add_layer(volume, path=path, kind="labels", **display)
    if threshold is None:
        threshold = upper_quantile_threshold(volume, display.get("channel"))
    return state.add_layer(volume, path=path, kind="overlay", threshold=threshold,
                           colormap=colormap, **display)
