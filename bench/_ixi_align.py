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

# The registration itself is the product's (bench_ixi only keeps the cohort bookkeeping)
from bodyage_core.preprocess.align import SLAB_MM, _centroid_world, _image, _norm, _slab  # noqa: F401
from bodyage_core.preprocess.align import _register as _core_register


def _top_slab(a: np.ndarray, spacing: float) -> tuple[np.ndarray, int, int]:
    """Foreground of the top SLAB_MM of the head (the core's rule, bodyage_core.preprocess.align)."""
    m = _slab(a, spacing, SLAB_MM)
    rows = np.where(m.any(axis=(1, 2)))[0]
    return m, (int(rows.min()) if len(rows) else 0), (int(rows.max()) + 1 if len(rows) else 0)


def _register(fixed, fixed_mask, moving, init, iterations: int, seed: int):
    return _core_register(fixed, fixed_mask, moving, init, iterations, seed), float("nan")


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
