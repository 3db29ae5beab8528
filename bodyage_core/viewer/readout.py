"""What is under the cursor, shaped like NiiVue's location event and FSLeyes' location panel.

Voxel indices: the views are cut from the base image reoriented to RAS (``voxel_zyx`` /
``voxel_xyz``, the array's indices); what a user compares with nibabel, FSLeyes or ITK-SNAP is
the index in the file as stored (``file_voxel_xyz``), so the readout shows that one as *the*
voxel index whenever the base layer is a file shown on its own grid.

:class:`ReadoutMixin` is one part of :class:`~bodyage_core.viewer.ViewerState`.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from bodyage_core.viewer.layers import Layer

_WORLD_AXIS = {"L": (0, -1), "R": (0, 1), "P": (1, -1), "A": (1, 1), "I": (2, -1), "S": (2, 1)}


def file_voxel_index(layer: Layer, zyx: tuple[int, int, int]) -> list[int] | None:
    """The index ``(i, j, k)`` in the layer's file as stored of the base-grid voxel ``zyx``
    (numpy order of the RAS-reoriented array), or None when the layer is not a file shown on
    its own grid (made in memory, resampled, warped into atlas space).

    The loaders only permute and flip axes to reach RAS (never resample) and record the file's
    axis letters (``provenance['orientation']``, e.g. ``'PSR'``): file axis ``j`` with letter
    ``P`` runs along world y, backwards, so its index is ``ny - 1 - y``.
    """
    letters = layer.volume.provenance.get("orientation")
    if not layer.path or layer.resampled or not isinstance(letters, str) or len(letters) != 3:
        return None
    xyz = list(zyx[::-1])
    n_xyz = list(layer.volume.shape[::-1])
    out = []
    for letter in letters.upper():
        if letter not in _WORLD_AXIS:
            return None
        w, sign = _WORLD_AXIS[letter]
        out.append(int(xyz[w] if sign > 0 else n_xyz[w] - 1 - xyz[w]))
    return out


class ReadoutMixin:
    """Cursor readout of a :class:`~bodyage_core.viewer.ViewerState`."""

    def cursor_readout(self) -> dict[str, Any]:
        """What is under the cursor.

        Returns
        -------
        dict
            ``world_mm`` [x, y, z] RAS; ``voxel_zyx`` and ``voxel_xyz`` (0-based, numpy and
            index order) on the base grid as shown (reoriented to RAS); ``file_voxel_xyz``: the
            index in the base layer's file as stored (None for a volume made in memory or
            resampled) and ``file_orientation`` its axis letters; ``values``: one entry per
            visible layer,
            ``{"layer", "value", "voxel_zyx", "label"}`` (``value`` None outside the layer);
            ``organ``: the name of the label under the cursor from the first label layer with a
            name table, visible or not (else None).
        """
        out: dict[str, Any] = {"world_mm": [float(v) for v in self._cursor], "voxel_zyx": None,
                               "voxel_xyz": None, "file_voxel_xyz": None,
                               "file_orientation": None, "values": [], "organ": None}
        if self._base is None:
            return out
        zyx = self.cursor_voxel()
        out["voxel_zyx"] = list(zyx)
        out["voxel_xyz"] = list(zyx[::-1])
        out["file_voxel_xyz"] = file_voxel_index(self._base, zyx)
        if out["file_voxel_xyz"] is not None:
            out["file_orientation"] = self._base.volume.provenance.get("orientation")
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
        lines = [f"world (RAS mm): {x:.1f}, {y:.1f}, {z:.1f}"]
        fv = r["file_voxel_xyz"]
        if fv is None:
            lines.append("voxel (0-based) x,y,z: {}, {}, {}; numpy z,y,x: {}, {}, {}".format(
                *r["voxel_xyz"], *r["voxel_zyx"]))
        else:
            # short lines: a narrow dock wraps between the items, not inside one
            lines.append("voxel (file, 0-based) i,j,k: {}, {}, {} ({})".format(
                *fv, r["file_orientation"]))
            lines.append("array x,y,z: {}, {}, {}; numpy z,y,x: {}, {}, {}".format(
                *r["voxel_xyz"], *r["voxel_zyx"]))
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
