"""Bench-only helpers of ``bench/bench_ixi.py``: tissue features, nested ridge predictions and
stacking of the CNN ensemble with the ridge baselines, all chosen on validation subjects only.

Tissue features (a crude, registration-free VBM): a brain mask is cut from the cohort median
template of the affinely aligned heads (Otsu threshold, erosion to cut the brain from the
scalp, largest component, dilation, hole filling; images only, no ages); inside it every
subject's intensities are split by a 1D k-means into CSF / grey / white matter; the fraction
of each class in 8 mm blocks (and the three global volumes) are the features of a ridge.

Nested predictions: for an outer fold ``f`` the test subjects are ``fold_of == f``; its inner
validation subjects ``val[f]`` are a part of the other folds. ``pooled_validation`` gathers,
for fold ``f``, the validation predictions of *every* fold's model on its own validation
subjects, minus fold ``f``'s test subjects, so a weight or a correction fitted on them never
sees a label of the subjects it is applied to.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from bodyage_core.evaluation.baselines import ridge_fit_predict

# -- brain mask and tissue classes -------------------------------------------------------------

def _otsu(values: np.ndarray, bins: int = 256) -> float:
    h, edges = np.histogram(values, bins=bins)
    c = (edges[:-1] + edges[1:]) / 2
    w0 = np.cumsum(h)
    w1 = w0[-1] - w0
    m0 = np.cumsum(h * c) / np.maximum(w0, 1)
    m1 = ((h * c).sum() - np.cumsum(h * c)) / np.maximum(w1, 1)
    return float(c[np.argmax(w0 * w1 * (m0 - m1) ** 2)])


def brain_mask(template: np.ndarray, erode: int = 5) -> np.ndarray:
    """Brain (+ ventricles) mask of a T1 head template (2 mm voxels)."""
    t = template / np.percentile(template, 99)
    head = t > 0.1
    thr = _otsu(t[head])
    m = t > 0.8 * thr
    ball = ndimage.generate_binary_structure(3, 1)
    m = ndimage.binary_erosion(m, ball, iterations=erode)
    lab, n = ndimage.label(m)
    if n == 0:
        return head
    sizes = ndimage.sum(m, lab, range(1, n + 1))
    m = lab == (int(np.argmax(sizes)) + 1)
    m = ndimage.binary_dilation(m, ball, iterations=erode + 1) & head
    m = ndimage.binary_closing(m, ball, iterations=2)
    return ndimage.binary_fill_holes(m)


def kmeans_1d(x: np.ndarray, k: int = 3, iters: int = 30) -> np.ndarray:
    c = np.percentile(x, np.linspace(15, 85, k))
    for _ in range(iters):
        lab = np.argmin(np.abs(x[:, None] - c[None]), axis=1)
        new = np.array([x[lab == j].mean() if np.any(lab == j) else c[j] for j in range(k)])
        if np.allclose(new, c):
            break
        c = new
    return np.sort(c)


def tissue_maps(vol: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """(3, Z, Y, X) soft CSF / GM / WM memberships inside ``mask`` of one aligned head."""
    x = vol[mask].astype(np.float64)
    c = kmeans_1d(x, 3)
    sd = max(float(np.min(np.diff(c))) / 2.0, 1e-6)
    d = -((x[:, None] - c[None]) ** 2) / (2 * sd ** 2)
    p = np.exp(d - d.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    out = np.zeros((3,) + vol.shape, np.float32)
    for j in range(3):
        out[j][mask] = p[:, j]
    return out


def block_mean(a: np.ndarray, f: int) -> np.ndarray:
    c, z, y, x = a.shape
    a = a[:, : z // f * f, : y // f * f, : x // f * f]
    return a.reshape(c, z // f, f, y // f, f, x // f, f).mean((2, 4, 6))


def tissue_features(aligned: np.ndarray, log=print) -> tuple[dict[str, np.ndarray], dict]:
    """Feature matrices from the 2 mm aligned heads ``(N, Z, Y, X)``: tissue fractions in
    8 mm blocks (``tissue_8mm``), and in 12 mm blocks (``tissue_12mm``)."""
    tmpl = np.median(aligned, axis=0)
    mask = brain_mask(tmpl)
    feats8, feats12, glob = [], [], []
    for i, a in enumerate(aligned):
        tm = tissue_maps(a, mask)
        b8 = block_mean(tm, 4)
        b12 = block_mean(tm, 6)
        m8 = block_mean(mask[None].astype(np.float32), 4)[0] > 0.05
        m12 = block_mean(mask[None].astype(np.float32), 6)[0] > 0.05
        vol = tm.reshape(3, -1).sum(1) * 8e-3  # ml
        glob.append(vol)
        feats8.append(np.concatenate([b8[:, m8].ravel(), vol / 100]))
        feats12.append(np.concatenate([b12[:, m12].ravel(), vol / 100]))
        if (i + 1) % 50 == 0:
            log(f"  tissue features {i + 1}/{len(aligned)}")
    info = {"mask_voxels_2mm": int(mask.sum()), "mask_ml": float(mask.sum() * 8e-3),
            "mean_volumes_ml": {"csf": float(np.mean([g[0] for g in glob])),
                                "gm": float(np.mean([g[1] for g in glob])),
                                "wm": float(np.mean([g[2] for g in glob]))}}
    return {"tissue_8mm": np.stack(feats8), "tissue_12mm": np.stack(feats12)}, info


# -- nested ridge --------------------------------------------------------------------------------

def ridge_loo_mse(x: np.ndarray, y: np.ndarray) -> float:
    """The exact LOO mean squared error of the ridge (alpha chosen by the same LOO) on the
    training subjects only: how a feature set is chosen without the test fold."""
    from bodyage_core.evaluation.baselines import _standardise
    from bodyage_core.evaluation.baselines import ridge_loo_mse as loo

    return min(loo(_standardise(x)[0], y).values())


def ridge_nested(x: np.ndarray, ages: np.ndarray, fold_of: np.ndarray,
                 val: dict[int, np.ndarray]) -> dict[str, np.ndarray]:
    """Ridge predictions: ``test`` (fold f's subjects from a ridge on all of fold f's training
    subjects) and ``val`` (fold f's validation subjects from a ridge on its inner training
    subjects, i.e. what the CNN members of fold f saw)."""
    n = len(ages)
    test = np.full(n, np.nan)
    valp = {}
    for f, va in val.items():
        te = fold_of == f
        tr = ~te
        test[te] = ridge_fit_predict(x[tr], ages[tr], x[te])[0]
        inner = tr.copy()
        inner[va] = False
        valp[f] = ridge_fit_predict(x[inner], ages[inner], x[va])[0]
    return {"test": test, "val": valp}


# -- pooled validation, stacking -------------------------------------------------------------------

def pooled_validation(fold_of: np.ndarray, val: dict[int, np.ndarray], f: int | None):
    """(subject index, source fold) pairs of all folds' validation subjects, without fold
    ``f``'s test subjects (``f=None``: all)."""
    idx, src = [], []
    for g, va in val.items():
        for i in va:
            if f is None or fold_of[i] != f:
                idx.append(int(i))
                src.append(int(g))
    return np.array(idx, int), np.array(src, int)


def choose_weight(preds: list[np.ndarray], age: np.ndarray,
                  grid: np.ndarray = np.round(np.linspace(0, 1, 21), 3)) -> tuple[float, ...]:
    """Convex weights of 2 or 3 predictors minimising the MAE on the given (validation)
    subjects; ties go to the first (grid order)."""
    best, arg = np.inf, None
    if len(preds) == 2:
        for w in grid:
            m = np.mean(np.abs(w * preds[0] + (1 - w) * preds[1] - age))
            if m < best - 1e-12:
                best, arg = m, (float(w), float(1 - w))
    else:
        for w0 in grid:
            for w1 in grid:
                if w0 + w1 > 1 + 1e-9:
                    continue
                w2 = max(0.0, round(1 - w0 - w1, 6))
                m = np.mean(np.abs(w0 * preds[0] + w1 * preds[1] + w2 * preds[2] - age))
                if m < best - 1e-12:
                    best, arg = m, (float(w0), float(w1), float(w2))
    return arg


# -- uncertainty ----------------------------------------------------------------------------------

def fit_variance_terms(err: np.ndarray, terms: list[np.ndarray]) -> dict:
    """``variance = sum_j scale_j * term_j + floor`` with the scales and the floor minimising
    the Gaussian NLL of validation errors (each term: the CNN members' spread, the squared
    CNN - ridge disagreement, ...)."""
    from scipy.optimize import minimize

    e2 = np.asarray(err, float) ** 2
    t = np.stack([np.maximum(np.asarray(x, float), 0) for x in terms])
    m = max(float(np.mean(e2)), 1e-6)

    def nll(p):
        v = np.exp(p[:-1]) @ t + np.exp(p[-1])
        return float(np.mean(np.log(v) + e2 / v))

    best = None
    for s0 in (-1.0, 1.0):
        start = np.array([np.log(m / max(float(np.mean(x)), 1e-8)) + s0 for x in t]
                         + [np.log(m) - 1.0])
        r = minimize(nll, start, method="Nelder-Mead",
                     options={"maxiter": 4000, "xatol": 1e-4, "fatol": 1e-7})
        if best is None or r.fun < best.fun:
            best = r
    return {"scales": [float(np.exp(v)) for v in best.x[:-1]],
            "floor": float(np.exp(best.x[-1])), "n": int(len(e2))}


def apply_variance_terms(fit: dict, terms: list[np.ndarray]) -> np.ndarray:
    return sum(s * np.maximum(np.asarray(x, float), 0)
               for s, x in zip(fit["scales"], terms)) + fit["floor"]
