"""What a registration returns, and its quality block: the same for both engines, so the
files, warping, atlas space and caches do not know which engine made a transform."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import SimpleITK as sitk

from bodyage_core.progress import ProgressReporter
from bodyage_core.registration.config import QualityThresholds
from bodyage_core.registration.quality import (
    body_mask,
    dice,
    jacobian_stats,
    label_dice,
    normalized_cross_correlation,
)
from bodyage_core.registration.transform import LABEL_INTERPOLATION, SubjectTransform, warp_map
from bodyage_core.volume import Volume


@dataclass
class RegistrationResult:
    """What :func:`register` returns.

    ``transform`` is None only when the registration threw before producing one. ``warped`` is
    the subject (all channels) resampled onto the reference grid; ``warped_labels`` likewise
    (``LABEL_INTERPOLATION``) when the subject's labels were given.
    """

    transform: SubjectTransform | None
    quality: dict[str, Any]
    warped: Volume | None = None
    warped_labels: Volume | None = None

    @property
    def ok(self) -> bool:
        return self.quality.get("status") == "ok"


class SitkWarps:
    """The resampling a quality block needs, through the transform files' SimpleITK path (any
    engine's transform). :class:`~bodyage_core.registration.torch_quality.TorchWarps` does the
    same on the torch engine's device."""

    def __init__(self, moving: Volume, fixed: Volume, transform: SubjectTransform):
        self.moving, self.transform = moving, transform
        self.ref_grid = (fixed.shape, fixed.affine)

    def image(self, vol: Volume) -> Volume:
        return warp_map(vol, self.transform, self.ref_grid, "linear")

    def mask(self, m: np.ndarray) -> np.ndarray:
        return warp_map(Volume(m.astype(np.uint8), self.moving.affine), self.transform,
                        self.ref_grid, "nearest").data[0] > 0

    def labels(self, lab: np.ndarray) -> Volume:
        return warp_map(Volume(lab, self.moving.affine, channels=("labels",)), self.transform,
                        self.ref_grid, LABEL_INTERPOLATION)

    def unregistered(self, img: np.ndarray) -> np.ndarray:
        """``img`` on the reference grid through world coordinates alone (no transform)."""
        return warp_map(Volume(img, self.moving.affine), SubjectTransform(
            sitk.AffineTransform(3), *self.ref_grid), self.ref_grid).data[0]

    def field_stats(self, fmask: np.ndarray) -> dict[str, float]:
        fwd = self.transform.forward_field
        if fwd is None:
            return {}
        out = jacobian_stats(fwd, fmask)
        disp = np.linalg.norm(sitk.GetArrayViewFromImage(fwd), axis=-1)
        out["max_displacement_mm"] = float(disp[fmask].max() if fmask.any() else disp.max())
        out["mean_displacement_mm"] = float(disp[fmask].mean() if fmask.any() else 0.0)
        return out


def assess(moving: Volume, fixed: Volume, transform: SubjectTransform, quality: dict[str, Any],
           thresholds: QualityThresholds, moving_c: np.ndarray, fixed_c: np.ndarray,
           fmask: np.ndarray, mov_lab: np.ndarray | None, fix_lab: np.ndarray | None,
           reporter: ProgressReporter, t0: float, warps=None) -> RegistrationResult:
    """The quality block of a finished registration, whichever engine made ``transform``: the
    subject warped onto the reference grid, body Dice, NCC, label Dice, Jacobian and
    displacement facts, and the failure reasons (``quality`` is filled in place). ``warps``
    resamples (default :class:`SitkWarps`; the torch engine passes its device's)."""
    timings = quality["timings"]
    warps = warps or SitkWarps(moving, fixed, transform)
    reporter.update("quality", 0, 1)
    t1 = time.perf_counter()
    warped = warps.image(moving)
    warped_c = warps.image(Volume(moving_c, moving.affine)).data[0]
    wmask = warps.mask(body_mask(moving_c))
    quality["dice_body"] = dice(wmask, fmask)
    quality["ncc"] = normalized_cross_correlation(warped_c, fixed_c, fmask | wmask)
    quality["ncc_before"] = normalized_cross_correlation(warps.unregistered(moving_c),
                                                         fixed_c, fmask)
    quality["affine_det"] = float(np.linalg.det(transform.affine_matrix[:3, :3]))
    warped_labels = None
    if mov_lab is not None:
        warped_labels = warps.labels(mov_lab)
        if fix_lab is not None:
            per = label_dice(warped_labels.data[0], fix_lab)
            quality["dice_labels"] = {str(k): v for k, v in per.items()}
            quality["dice_labels_mean"] = float(np.mean(list(per.values()))) if per else None
    quality.update(warps.field_stats(fmask))
    quality["reasons"] = _failure_reasons(quality, thresholds)
    if quality["reasons"]:
        quality["status"] = "failed"
    timings["quality"] = time.perf_counter() - t1
    quality["seconds"] = time.perf_counter() - t0
    reporter.update("quality", 1, 1, dice_body=quality["dice_body"])
    return RegistrationResult(transform, quality, warped, warped_labels)


def _failure_reasons(q: dict[str, Any], th: QualityThresholds) -> list[str]:
    reasons = []
    for key in ("metric", "ncc", "dice_body"):
        v = q.get(key)
        if v is None or not np.isfinite(v):
            reasons.append(f"diverged: {key} is not finite")
    if q.get("dice_body", 1.0) < th.min_body_dice:
        reasons.append(f"body-mask Dice {q['dice_body']:.3f} < {th.min_body_dice}")
    if q.get("ncc", 1.0) < th.min_ncc:
        reasons.append(f"image correlation {q['ncc']:.3f} < {th.min_ncc}")
    det = q.get("affine_det", 1.0)
    if not th.min_affine_det <= det <= th.max_affine_det:
        reasons.append(f"affine volume change {det:.2f} outside "
                       f"[{th.min_affine_det}, {th.max_affine_det}] (diverged)")
    if q.get("folding_fraction", 0.0) > th.max_folding_fraction:
        reasons.append(f"deformation folds {100 * q['folding_fraction']:.2f}% of the body")
    if q.get("max_displacement_mm", 0.0) > th.max_displacement_mm:
        reasons.append(f"displacement {q['max_displacement_mm']:.0f} mm > "
                       f"{th.max_displacement_mm} mm (diverged)")
    if th.min_label_dice is not None and q.get("dice_labels_mean") is not None \
            and q["dice_labels_mean"] < th.min_label_dice:
        reasons.append(f"mean label Dice {q['dice_labels_mean']:.3f} < {th.min_label_dice}")
    return reasons
