"""What one slice looks like: every visible layer of a plane's slice composited (numpy, integer
LUT arithmetic: :func:`bodyage_core.display.composite_bgra32`) into one opaque image, with the
key that says when it must be redrawn. The slice views and the lightbox tiles both draw this, so
they agree pixel for pixel. Qt-free."""

from __future__ import annotations

from typing import Any

import numpy as np

from bodyage_core import display


def composite_key(state: Any, plane: str, k: int) -> tuple:
    """Changes exactly when the composite of slice ``k`` of ``plane`` does (every layer is cut
    at the base grid's slice index, so a cursor move within the slice is a cache hit)."""
    visible = [lay for lay in state.layers if lay.visible]
    return (id(state.base_layer), state.convention, plane, int(k),
            *((lay.id, id(lay.volume), lay.channel, lay.colormap, lay.vmin, lay.vmax,
               lay.threshold, lay.opacity, lay.outline,
               lay.label_style()[0] if lay.kind == "labels" else None) for lay in visible))


def composite_slice(state: Any, plane: str, k: int | None = None) -> np.ndarray:
    """``(rows, cols)`` uint32 ``0xFFRRGGBB`` of slice ``k`` (default: the cursor's) of
    ``plane``, all visible layers bottom first."""
    geom = state.geometry(plane)
    cursor = None
    if k is not None:
        vol = state.base_layer.volume
        zyx = np.asarray(vol.world_to_voxel(state.cursor), float)
        zyx[geom.normal_axis] = int(k)
        cursor = vol.voxel_to_world(zyx)
    items = []
    for lay in state.layers:
        if not lay.visible:
            continue
        sl = state.slice_for_view(lay, plane, cursor)
        if lay.kind == "labels":   # label colours, hidden labels, outline
            _, slots, lut = lay.label_style()
            items.append(display.SliceLayer(display.label_slots(sl.array, slots, lay.outline),
                                            "labels", opacity=lay.opacity, lut=lut))
            continue
        # one contiguous copy per slice (sagittal cuts are strided), then integer LUT work
        items.append(display.SliceLayer(np.ascontiguousarray(sl.array), lay.colormap,
                                        lay.vmin, lay.vmax, lay.threshold, lay.opacity))
    return display.composite_bgra32(items, geom.shape)
