"""Is a scan one the model was made for? Its envelope (channels and contrast, body region and
field of view, voxel size, age range) against what the scan is.

:func:`check_envelope` returns QC flags (``{"flag", "message", "severity"}``, the
``provenance["qc"]`` form with a severity): ``"refuse"`` for a scan the model cannot give a
meaningful age for (another contrast, another body region), ``"warning"`` for one it can, with a
caveat the prediction row keeps. :func:`match_channels` gives the scan the model's channel
names (a single unnamed image is taken as the single channel the model needs).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from bodyage_core.volume import Volume

#: Outside [min / REFUSE_FOV, max * REFUSE_FOV] of the training field of view: another body
#: region (a brain given to the whole-body model, a whole body to the brain model).
REFUSE_FOV = 1.6
#: Outside [min / WARN_FOV, max * WARN_FOV]: a field of view the model has not seen.
WARN_FOV = 1.15
#: MR intensities are non-negative; this many voxels below -500 mean Hounsfield units (CT).
CT_FRACTION = 0.05


def world_extent(shape_zyx, affine) -> np.ndarray:
    """Extent in mm along the world axes x, y, z (R, A, S) of a grid of ``shape_zyx`` voxels
    with ``affine`` (voxel (x, y, z) -> mm), whatever the order its index axes are stored in."""
    n = np.asarray(tuple(shape_zyx)[::-1], dtype=float)             # index x, y, z
    return np.abs(np.asarray(affine, dtype=float)[:3, :3]) @ n


def world_voxel(affine) -> np.ndarray:
    """Voxel size in mm along the world axes x, y, z (for an oblique grid, the largest
    contribution of any index axis)."""
    a = np.abs(np.asarray(affine, dtype=float)[:3, :3])
    return a.max(axis=1)


def flag(name: str, message: str, severity: str = "warning") -> dict[str, str]:
    return {"flag": name, "message": message, "severity": severity}


def match_channels(volume: Volume, channels: tuple[str, ...]) -> tuple[Volume | None,
                                                                       list[dict[str, str]]]:
    """The scan with the model's channels (in the model's order), or None and a ``refuse``
    flag when it does not have them."""
    have = tuple(volume.channels)
    need = tuple(channels)
    if all(c in have for c in need):
        data = np.stack([volume.channel(c) for c in need])
        return Volume(data, volume.affine, need, dict(volume.provenance),
                      dict(volume.metadata)), []
    named = {c for c in have if c in ("water", "fat", "t1", "t2", "in", "opp", "ct")}
    if len(have) == len(need) and not named:
        vol = Volume(np.asarray(volume.data), volume.affine, need, dict(volume.provenance),
                     dict(volume.metadata))
        what = " and ".join(need)
        return vol, [flag("channels_assumed", f"the scan's {len(have)} unnamed image(s) were "
                                              f"taken as {what}, as the model needs", "info")]
    want = _contrast_words(need)
    got = (f"{len(have)} image(s) named {', '.join(have)}" if named else
           f"{len(have)} image(s)")
    return None, [flag("contrast", f"the model needs {want}; the scan has {got}", "refuse")]


def _contrast_words(channels) -> str:
    ch = tuple(channels)
    if set(ch) == {"water", "fat"}:
        return "a Dixon water and fat pair"
    if ch == ("t1",):
        return "one T1-weighted image"
    return " + ".join(ch)


def check_envelope(volume: Volume, card_or_spec: dict[str, Any] | None,
                   age: float | None = None) -> list[dict[str, str]]:
    """Flags for ``volume`` (already with the model's channels) against a model card's
    ``envelope`` (None: a workspace run without a card: nothing to compare but the contrast)."""
    flags: list[dict[str, str]] = []
    data = np.asarray(volume.data)
    sample = data[:, ::4, ::4, ::4] if data.size > 1e6 else data
    if float(np.mean(sample < -500)) > CT_FRACTION:
        flags.append(flag("ct_values", "the scan has many values below -500, as CT in "
                                       "Hounsfield units has; the model is for MRI", "refuse"))
    env = (card_or_spec or {}).get("envelope") or {}
    fov_env = env.get("field_of_view_xyz_mm")
    spacing = world_voxel(volume.affine)                                  # x, y, z mm
    fov = world_extent(volume.shape, volume.affine)                      # x, y, z mm
    if fov_env:
        lo, hi = np.asarray(fov_env["min"], float), np.asarray(fov_env["max"], float)
        axis = "head-foot (z)"
        if fov[2] < lo[2] / REFUSE_FOV or fov[2] > hi[2] * REFUSE_FOV:
            flags.append(flag("body_region", f"field of view {fov[2]:.0f} mm {axis}; the "
                                             f"model was trained on {lo[2]:.0f}-{hi[2]:.0f} mm "
                                             f"({env.get('body_region', 'its body region')})",
                              "refuse"))
        else:
            out = [f"{'xyz'[i]} {fov[i]:.0f} mm (trained {lo[i]:.0f}-{hi[i]:.0f})"
                   for i in range(3) if fov[i] < lo[i] / WARN_FOV or fov[i] > hi[i] * WARN_FOV]
            if out:
                flags.append(flag("field_of_view", "field of view outside the training "
                                                   "range: " + "; ".join(out)))
    grid = env.get("model_spacing_zyx_mm")
    if grid:
        g = np.asarray(grid, float)[::-1]                                 # x, y, z
        coarse = [f"{'xyz'[i]} {spacing[i]:.1f} mm" for i in range(3) if spacing[i] > 1.5 * g[i]]
        if coarse:
            flags.append(flag("coarse_voxels", "voxels coarser than the model's input grid "
                                               f"({', '.join(coarse)}; grid "
                                               f"{' x '.join(f'{v:g}' for v in g)} mm)"))
    ages = env.get("age_range")
    if ages and age is not None and np.isfinite(age) and not ages[0] <= age <= ages[1]:
        flags.append(flag("age_range", f"chronological age {age:.1f} is outside the training "
                                       f"ages {ages[0]:g}-{ages[1]:g}"))
    return flags


def refusals(flags: list[dict[str, str]]) -> list[dict[str, str]]:
    return [f for f in flags if f.get("severity") == "refuse"]
