"""The hover probe: what is under the mouse, in the status bar, without clicking (FSLeyes'
and ITK-SNAP's location readout under the pointer); and the cursor's line of the status bar.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from PySide6 import QtCore, QtWidgets


def _short(v: Any) -> str:
    return str(v) if isinstance(v, int) else f"{v:.4g}"


def values_text(state: Any, ras) -> str:
    """``layer=value`` of every visible layer at world point ``ras`` (``-`` outside it), and
    the organ under it."""
    parts = []
    organ = None
    for lay in state.layers:
        vz = np.round(lay.volume.world_to_voxel(np.asarray(ras, float))).astype(int)
        inside = bool(np.all(vz >= 0) and np.all(vz < np.array(lay.volume.shape)))
        if lay.kind == "labels" and inside and organ is None:
            iv = int(round(float(lay.data[tuple(vz)])))
            organ = lay.label_names.get(iv) if iv else None
        if not lay.visible:
            continue
        if not inside:
            parts.append(f"{lay.name}=-")
            continue
        raw = lay.data[tuple(vz)]
        value = int(raw) if lay.data.dtype.kind in "iub" else float(raw)
        parts.append(f"{lay.name}={_short(value)}")
    return "  ".join(parts) + (f"  [{organ}]" if organ else "")


def cursor_status(state: Any) -> str:
    """The status bar's line for the cursor: RAS mm, the file's voxel index, the values."""
    if state.base_layer is None:
        return ""
    r = state.cursor_readout()
    if r["voxel_zyx"] is None:
        return ""
    x, y, z = r["world_mm"]
    vals = "  ".join(f"{v['layer']}={'-' if v['value'] is None else _short(v['value'])}"
                     for v in r["values"])
    organ = f"  [{r['organ']}]" if r["organ"] else ""
    # the file's own index (nibabel / FSLeyes / ITK-SNAP) when the image is a file
    voxel = (f"voxel i,j,k {r['file_voxel_xyz']}" if r["file_voxel_xyz"] is not None
             else f"voxel x,y,z {r['voxel_xyz']}")
    return f"RAS {x:.1f}, {y:.1f}, {z:.1f} mm   {voxel}   {vals}{organ}"


def hover_text(state: Any, ras) -> str:
    """The probe's text for the point under the mouse."""
    if ras is None or state.base_layer is None:
        return ""
    x, y, z = (float(v) for v in ras)
    return f"under mouse: RAS {x:.1f}, {y:.1f}, {z:.1f} mm   {values_text(state, ras)}"


class HoverProbe(QtCore.QObject):
    """A permanent label in the window's status bar showing :func:`hover_text` for the slice
    view under the mouse (cleared when the mouse leaves the views)."""

    def __init__(self, window: Any):
        super().__init__(window)
        self.window = window
        self.label = QtWidgets.QLabel("")
        self.label.setObjectName("hover_probe")
        self.label.setMinimumWidth(120)
        window.statusBar().addPermanentWidget(self.label)
        for v in window.slice_views.values():
            v.hovered.connect(self.show_at)

    def show_at(self, ras) -> None:
        self.label.setText(hover_text(self.window.state, ras))

    def text(self) -> str:
        return self.label.text()
