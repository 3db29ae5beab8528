"""Affine alignment of the IXI T1 heads to one reference, cached under ``bench/_work/``.

Bench-only helper of ``bench/bench_ixi.py``. Uses nothing but the images (no ages), so it
can run once on the whole cohort without leaking labels into the cross-validation.

Procedure
---------
1. Load every head (canonical RAS, 2 mm, ``scl_slope`` applied by ``load_volume``).
2. Reference = the subject whose head-foreground volume (voxels above 10 % of its 99th
   percentile, top 180 mm below the vertex) is closest to the cohort median.
3. Round 1: affine (12 dof) registration of every head to the reference: Mattes MI (32 bins,
   15 % random samples), 2 levels (shrink 4/2, smoothing 2/1 voxels; the
   networks see 4 mm), regular-step
   gradient descent, initialised by matching the centroids of the top 180 mm slab of the
   head (so that necks of different length do not pull the fit); a fixed-image mask limits
   the metric to the top 180 mm of the reference.
4. Round 2 (optional): the intensity-normalised mean of the round-1 results becomes the
   template and every head is registered to it again (from the round-1 transform).
5. Resample (linear) onto the reference grid and crop to the bounding box of the template's
   head-top slab (same box for everybody); cached as float16 ``.npy``.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk

SLAB_MM = 180.0


def _fg(a: np.ndarray) -> np.ndarray:
    return a > 0.1 * np.percentile(a, 99)


def _top_slab(a: np.ndarray, spacing: float) -> tuple[np.ndarray, int, int]:
    """Foreground of the top SLAB_MM of the head; returns (mask, z_lo, z_hi)."""
    fg = _fg(a)
    rows = np.where(fg.sum(axis=(1, 2)) > 0.002 * fg[0].size)[0]
    top = int(rows.max()) + 1 if len(rows) else a.shape[0]
    lo = max(0, top - int(round(SLAB_MM / spacing)))
    m = np.zeros_like(fg)
    m[lo:top] = fg[lo:top]
    return m, lo, top


def _image(a: np.ndarray, affine: np.ndarray) -> sitk.Image:
    # RAS affine -> ITK LPS geometry
    flip = np.diag([-1.0, -1.0, 1.0])
    m = flip @ affine[:3, :3]
    sp = np.linalg.norm(m, axis=0)
    img = sitk.GetImageFromArray(np.ascontiguousarray(a, dtype=np.float32))
    img.SetSpacing([float(s) for s in sp])
    img.SetDirection([float(v) for v in (m / sp).ravel()])
    img.SetOrigin([float(v) for v in flip @ affine[:3, 3]])
    return img


def _centroid_world(img: sitk.Image, mask: np.ndarray) -> np.ndarray:
    zz, yy, xx = np.nonzero(mask)
    idx = (float(xx.mean()), float(yy.mean()), float(zz.mean()))
    return np.array(img.TransformContinuousIndexToPhysicalPoint(idx))


def _register(fixed: sitk.Image, fixed_mask: sitk.Image, moving: sitk.Image,
              init: sitk.Transform, iterations: int, seed: int) -> tuple[sitk.Transform, float]:
    reg = sitk.ImageRegistrationMethod()
    reg.SetMetricAsMattesMutualInformation(numberOfHistogramBins=32)
    reg.SetMetricSamplingStrategy(reg.RANDOM)
    reg.SetMetricSamplingPercentage(0.15, seed)
    reg.SetMetricFixedMask(fixed_mask)
    reg.SetInterpolator(sitk.sitkLinear)
    reg.SetOptimizerAsRegularStepGradientDescent(
        learningRate=2.0, minStep=0.005, numberOfIterations=iterations,
        relaxationFactor=0.6, gradientMagnitudeTolerance=1e-6)
    reg.SetOptimizerScalesFromPhysicalShift()
    reg.SetShrinkFactorsPerLevel([4, 2])
    reg.SetSmoothingSigmasPerLevel([2, 1])
    reg.SmoothingSigmasAreSpecifiedInPhysicalUnitsOff()
    reg.SetInitialTransform(init, inPlace=False)
    out = reg.Execute(fixed, moving)
    if isinstance(out, sitk.CompositeTransform) and out.GetNumberOfTransforms() == 1:
        out = out.GetNthTransform(0)
    return sitk.AffineTransform(out) if out.GetName() == "AffineTransform" else out, \
        float(reg.GetMetricValue())


def _norm(a: np.ndarray, mask: np.ndarray) -> np.ndarray:
    v = a[mask & (a > 0.1 * np.percentile(a[mask], 99))]
    return a / max(float(v.mean()), 1e-6)


def align_cohort(arrays: list[np.ndarray], affines: list[np.ndarray], cache: Path,
                 rounds: int = 2, iterations: int = 60, log=print) -> dict:
    """Align ``arrays`` (each (Z, Y, X), 2 mm, with RAS ``affines``) and cache the result.

    Returns ``{"aligned": (N, z, y, x) float32, "ref": index, "metric": [...], "box": ...}``.
    """
    cache = Path(cache)
    npy, meta = cache.with_suffix(".npy"), cache.with_suffix(".json")
    if npy.exists() and meta.exists():
        import json
        info = json.loads(meta.read_text())
        if info.get("n") == len(arrays) and info.get("rounds") == rounds \
                and info.get("iterations") == iterations:
            info["aligned"] = np.load(npy).astype(np.float32)
            log(f"alignment: cached {npy.name}")
            return info
    affine = affines[0]
    spacing = float(np.linalg.norm(affine[:3, 0]))
    slabs = [_top_slab(a, spacing) for a in arrays]
    vols = np.array([s[0].sum() for s in slabs], float)
    ref = int(np.argmin(np.abs(vols - np.median(vols))))
    affine = affines[ref]
    fixed = _image(_norm(arrays[ref], slabs[ref][0]), affine)
    fmask_arr = slabs[ref][0]
    images = [_image(_norm(a, s[0]), af) for a, s, af in zip(arrays, slabs, affines)]
    t0 = time.perf_counter()

    def run_round(fixed, fmask_arr, inits):
        fmask = sitk.Cast(_image(fmask_arr.astype(np.float32), affine), sitk.sitkUInt8)
        out_tx, metrics, warped = [], [], []
        for i, mov in enumerate(images):
            tx, m = _register(fixed, fmask, mov, inits[i], iterations, seed=i + 1)
            out_tx.append(tx)
            metrics.append(m)
            w = sitk.Resample(mov, fixed, tx, sitk.sitkLinear, 0.0, sitk.sitkFloat32)
            warped.append(sitk.GetArrayFromImage(w))
            if (i + 1) % 20 == 0:
                log(f"  registered {i + 1}/{len(images)} ({time.perf_counter() - t0:.0f} s)")
        return out_tx, metrics, np.stack(warped)

    inits = []
    c_ref = _centroid_world(fixed, fmask_arr)
    for img, s in zip(images, slabs):
        tx = sitk.AffineTransform(3)
        tx.SetCenter([float(v) for v in c_ref])
        tx.SetTranslation([float(v) for v in _centroid_world(img, s[0]) - c_ref])
        inits.append(tx)
    log(f"alignment: reference subject #{ref}, round 1 ...")
    txs, metrics, warped = run_round(fixed, fmask_arr, inits)
    for r in range(1, rounds):
        tmpl = np.median(warped, axis=0).astype(np.float32)
        fmask_arr = _top_slab(tmpl, spacing)[0]
        log(f"alignment: round {r + 1} to the cohort median template ...")
        txs, metrics, warped = run_round(_image(tmpl, affine), fmask_arr, txs)
    tmpl = np.median(warped, axis=0)
    box_mask = _top_slab(tmpl, spacing)[0]
    zz, yy, xx = np.nonzero(box_mask)
    box = [[int(zz.min()), int(zz.max()) + 1], [int(yy.min()), int(yy.max()) + 1],
           [int(xx.min()), int(xx.max()) + 1]]
    aligned = warped[:, box[0][0]:box[0][1], box[1][0]:box[1][1], box[2][0]:box[2][1]]
    info = {"n": len(arrays), "rounds": rounds, "iterations": iterations, "ref": ref,
            "metric": [float(m) for m in metrics], "box": box,
            "time_s": time.perf_counter() - t0}
    cache.parent.mkdir(parents=True, exist_ok=True)
    np.save(npy, aligned.astype(np.float16))
    import json
    meta.write_text(json.dumps(info))
    info["aligned"] = aligned.astype(np.float32)
    log(f"alignment done in {info['time_s']:.0f} s, box {aligned.shape[1:]}")
    return info
