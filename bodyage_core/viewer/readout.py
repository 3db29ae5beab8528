"""What is under the cursor, shaped like NiiVue's location event and FSLeyes' location panel.

:class:`ReadoutMixin` is one part of :class:`~bodyage_core.viewer.ViewerState`.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from bodyage_core.viewer.layers import Layer


class ReadoutMixin:
    """Cursor readout of a :class:`~bodyage_core.viewer.ViewerState`."""

    def cursor_readout(self) -> dict[str, Any]:
        """What is under the cursor.

        Returns
        -------
        dict
            ``world_mm`` [x, y, z] RAS; ``voxel_zyx`` and ``voxel_xyz`` (0-based, numpy and
            NIfTI order) on the base grid; ``values``: one entry per visible layer,
            ``{"layer", "value", "voxel_zyx", "label"}`` (``value`` None outside the layer);
            ``organ``: the name of the label under the cursor from the first label layer with a
            name table, visible or not (else None).
        """
        out: dict[str, Any] = {"world_mm": [float(v) for v in self._cursor], "voxel_zyx": None,
                               "voxel_xyz": None, "values": [], "organ": None}
        if self._base is None:
            return out
        zyx = self.cursor_voxel()
        out["voxel_zyx"] = list(zyx)
        out["voxel_xyz"] = list(zyx[::-1])
        for lay in self.layers:
            if not lay.visible:
                if lay.kind == "labels" and out["organ"] is None:
                    out["organ"] = self._organ_at(lay)
                continue
            vz = np.round(lay.volume.world_to_voxel(self._cursor)).astype(int)
            inside = bool(np.all(vz >= 0) and np.all(vz < np.array(lay.volume.shape)))
            value = None
            label = None
            if inside:
                raw = lay.data[tuple(vz)]
                value = int(raw) if lay.data.dtype.kind in "iub" else float(raw)
                if lay.kind == "labels":
                    iv = int(round(float(raw)))
                    label = lay.label_names.get(iv)
                    if out["organ"] is None and iv != 0 and label is not None:
                        out["organ"] = label
            out["values"].append({"layer": lay.name, "value": value,
                                  "voxel_zyx": [int(v) for v in vz] if inside else None,
                                  "label": label, "channel": lay.channel})
        return out

    def _organ_at(self, lay: Layer) -> str | None:
        vz = np.round(lay.volume.world_to_voxel(self._cursor)).astype(int)
        if not (np.all(vz >= 0) and np.all(vz < np.array(lay.volume.shape))):
            return None
        iv = int(round(float(lay.data[tuple(vz)])))
        return lay.label_names.get(iv) if iv != 0 else None

    def readout_text(self) -> str:
        """The readout as a few lines of text (what the readout panel and the status bar show)."""
        r = self.cursor_readout()
        if r["voxel_zyx"] is None:
            return "no image"
        x, y, z = r["world_mm"]
        lines = [f"world (RAS mm): {x:.1f}, {y:.1f}, {z:.1f}",
                 "voxel (0-based) x,y,z: {}, {}, {}   numpy z,y,x: {}, {}, {}".format(
                     *r["voxel_xyz"], *r["voxel_zyx"])]
        for v in r["values"]:
            val = "outside" if v["value"] is None else fmt_value(v["value"])
            if v["label"]:
                val += f" ({v['label']})"
            lines.append(f"{v['layer']}: {val}")
        if r["organ"]:
            lines.append(f"organ: {r['organ']}")
        return "\n".join(lines)


def fmt_value(v: Any) -> str:
    if isinstance(v, int):
        return str(v)
    return f"{v:.6g}"
