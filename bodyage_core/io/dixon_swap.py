"""Fat/water swap test for one Dixon station: the fat fraction of tissue whose fat content is known.

A Dixon reconstruction sometimes labels the fat image "water" and the other way round, for a
whole station or for one leg of the lower stations (the recoh pipeline detects and swaps them
back per station, and per leg in stations 5 and 6). A swap turns every voxel's fat fraction
``F / (W + F)`` into ``1 - FF``, so the fraction alone cannot tell; *where* the fat sits can:

* the outer shell of the body (the first two voxel layers under the skin) is subcutaneous fat,
  fat fraction about 0.9 in everybody, and
* the inside of the body (at least half the body's depth from the skin in that slice: muscle,
  organs, in the legs the thigh muscles) is leaner than the shell.

A station is **swapped** when the shell's median fat fraction is below ``fix_below`` (0.3) and
the inside is fattier than the shell (by 0.1 or more); a shell between ``fix_below`` and
``suspect_below`` (0.5), or a lean shell around an equally lean inside, is **suspected** (flagged,
not fixed). The test needs a body that lies inside the field of view (the shell would otherwise
be the image edge) and is skipped ("undetermined") when it does not. Only a few slices of each
station are looked at (:data:`MAX_SLICES`).

Arrays here are numpy ``(Z, Y, X)`` of one station on a canonical RAS grid (x grows to the
patient's right, so the patient's left leg has the smaller x).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

#: Slices of a station the test looks at (evenly spread).
MAX_SLICES = 10
#: In-plane sizes from this many voxels up are looked at every second voxel.
COARSEN_FROM = 96
#: Depth of the subcutaneous-fat shell, in in-plane voxels.
SHELL_VOXELS = 2.0
#: The inside is at least this fraction of the slice's largest depth from the skin.
INSIDE_DEPTH = 0.5
#: A slice whose border is more than this fraction body does not hold the whole body.
MAX_BORDER_CONTACT = 0.5
#: Fewest voxels for a median.
MIN_VOXELS = 20
#: The inside must be this much fattier than a lean shell for a swap to be fixed.
MIN_CONTRAST = 0.1

_SLICE_2D = np.zeros((3, 3, 3), bool)
_SLICE_2D[1] = ndimage.generate_binary_structure(2, 1)


@dataclass
class SwapResult:
    """The test on one part of a station (``part``: ``"whole"``, ``"left"`` or ``"right"``)."""

    part: str
    shell_ff: float | None
    inside_ff: float | None
    decision: str   # "normal" | "swapped" | "suspected" | "undetermined"
    reason: str = ""

    def as_dict(self) -> dict:
        return {"part": self.part,
                "shell_fat_fraction": None if self.shell_ff is None else round(self.shell_ff, 3),
                "inside_fat_fraction": None if self.inside_ff is None else round(self.inside_ff, 3),
                "decision": self.decision, **({"reason": self.reason} if self.reason else {})}

    def describe(self) -> str:
        inside = "" if self.inside_ff is None else f", inside the body {self.inside_ff:.2f}"
        return f"fat fraction of subcutaneous fat {self.shell_ff:.2f}{inside}"


def _decide(part: str, shell: np.ndarray, inside: np.ndarray, fix_below: float,
            suspect_below: float) -> SwapResult:
    if shell.size < MIN_VOXELS:
        return SwapResult(part, None, None, "undetermined", "too little body to test")
    s = float(np.median(shell))
    i = float(np.median(inside)) if inside.size >= MIN_VOXELS else None
    if s >= suspect_below:
        return SwapResult(part, s, i, "normal")
    if s < fix_below and i is not None and i >= s + MIN_CONTRAST:
        return SwapResult(part, s, i, "swapped")
    reason = ("the inside of the body is not fattier than the shell" if s < fix_below
              else f"shell fat fraction between {fix_below:g} and {suspect_below:g}")
    return SwapResult(part, s, i, "suspected", reason)


def check_station(water: np.ndarray, fat: np.ndarray, spacing_zyx,
                  fix_below: float = 0.3, suspect_below: float = 0.5
                  ) -> tuple[list[SwapResult], int]:
    """Test one station for a fat/water swap.

    Parameters
    ----------
    water, fat
        ``(Z, Y, X)`` arrays of the station (same grid).
    spacing_zyx
        Voxel size in mm, numpy order.

    Returns
    -------
    (results, split_x)
        The ``whole`` station, then the patient's ``left`` (x below the body's centre) and
        ``right`` halves; ``split_x`` the x index where the halves meet.
    """
    nz = water.shape[0]
    zs = np.unique(np.linspace(0, nz - 1, min(nz, MAX_SLICES)).round().astype(int))
    step = 2 if min(water.shape[1:]) >= COARSEN_FROM else 1
    w = np.asarray(water[zs, ::step, ::step], dtype=np.float32)
    f = np.asarray(fat[zs, ::step, ::step], dtype=np.float32)
    total = w + f
    hi = float(np.percentile(total, 99)) if total.size else 0.0
    undetermined = [SwapResult("whole", None, None, "undetermined", "no signal")]
    if not hi > 0:
        return undetermined, water.shape[2] // 2
    signal = total > 0.15 * hi
    mask = ndimage.binary_fill_holes(signal, structure=_SLICE_2D)
    border = np.concatenate([mask[:, 0, :], mask[:, -1, :], mask[:, :, 0], mask[:, :, -1]], axis=1)
    contact = border.mean(axis=1)
    good = (contact <= MAX_BORDER_CONTACT) & (mask.reshape(len(zs), -1).sum(axis=1) > 0)
    if good.sum() < max(1, len(zs) // 2):
        return [SwapResult("whole", None, None, "undetermined",
                           "the body does not lie inside the field of view")], water.shape[2] // 2
    mask, w, f, total, signal = mask[good], w[good], f[good], total[good], signal[good]
    fine = max(float(spacing_zyx[1]), float(spacing_zyx[2]))  # mm per (uncoarsened) voxel
    sampling = (1e6, step * float(spacing_zyx[1]), step * float(spacing_zyx[2]))  # 2D depth
    depth = ndimage.distance_transform_edt(mask, sampling=sampling)
    shell = mask & signal & (depth <= SHELL_VOXELS * fine + 1e-6)
    deepest = depth.reshape(depth.shape[0], -1).max(axis=1)[:, None, None]
    inside = (mask & signal & (depth >= INSIDE_DEPTH * deepest)
              & (depth > (SHELL_VOXELS + 1) * fine))
    with np.errstate(divide="ignore", invalid="ignore"):
        ff = np.where(total > 0, f / total, 0.0)
    xs = np.nonzero(mask.any(axis=(0, 1)))[0]
    split_c = int(round(float(np.nonzero(mask)[2].mean()))) if xs.size else mask.shape[2] // 2
    split = min(split_c * step, water.shape[2])
    results = [_decide("whole", ff[shell], ff[inside], fix_below, suspect_below)]
    left = np.zeros(mask.shape[2], bool)
    left[:split_c] = True
    for part, sel in (("left", left), ("right", ~left)):
        results.append(_decide(part, ff[shell & sel], ff[inside & sel], fix_below,
                               suspect_below))
    return results, split


def plan_fix(results: list[SwapResult], per_leg: bool) -> tuple[str | None, list[SwapResult]]:
    """Which part to swap back (``"whole"``, ``"left"``, ``"right"`` or None) and the results
    that explain the decision.

    The whole station is swapped back when both halves are swapped (or the whole is and neither
    half looks normal); one half alone only in a leg station (``per_leg``); a trunk station
    with one swapped side is only suspected.
    """
    whole = results[0]
    if len(results) < 3:
        return ("whole", [whole]) if whole.decision == "swapped" else (
            None, [whole] if whole.decision == "suspected" else [])
    left, right = results[1], results[2]
    if left.decision == "swapped" and right.decision == "swapped":
        return "whole", [whole]
    if whole.decision == "swapped" and "normal" not in (left.decision, right.decision):
        return "whole", [whole]
    one = [r for r in (left, right) if r.decision == "swapped"]
    if one:
        if per_leg:
            return one[0].part, one
        r = one[0]
        return None, [SwapResult(r.part, r.shell_ff, r.inside_ff, "suspected",
                                 "one side only of a trunk station")]
    return None, [r for r in (whole, left, right) if r.decision == "suspected"][:1]


def swap_back(water: np.ndarray, fat: np.ndarray, part: str, split_x: int) -> None:
    """Exchange fat and water in place: the whole arrays or the ``left`` (x < split_x) /
    ``right`` half."""
    sel = {"whole": slice(None), "left": slice(0, split_x), "right": slice(split_x, None)}[part]
    tmp = water[..., sel].copy()
    water[..., sel] = fat[..., sel]
    fat[..., sel] = tmp
