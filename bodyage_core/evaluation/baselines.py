"""Baselines a deep model must beat on the same folds (brain-age primer): predict the mean of
the training ages; ridge regression on intensity histograms; ridge on downsampled voxels.

Ridge is solved in its dual (kernel) form, so thousands of voxel features cost an ``n x n``
solve; the penalty is chosen per training fold by exact leave-one-out error on that fold only
(the test fold is never looked at; :func:`ridge_loo_mse`)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from bodyage_core.evaluation.metrics import regression_metrics

ALPHAS = tuple(10.0 ** np.arange(-3, 5.5, 0.5))


def histogram_features(array: np.ndarray, bins: int = 64, value_range=(0.0, 3.0)) -> np.ndarray:
    """Per-channel intensity histogram of an input (any shape ``(C, ...)``), as fractions of
    all voxels (so it keeps volume information), ignoring the zero background."""
    a = np.asarray(array, dtype=np.float32)
    feats = []
    for ch in a.reshape(a.shape[0], -1):
        h, _ = np.histogram(ch[ch > 0.05], bins=bins, range=value_range)
        feats.append(h / ch.size)
    return np.concatenate(feats)


def voxel_features(array: np.ndarray, factor: int = 2) -> np.ndarray:
    """Block-mean downsampling by ``factor`` along every spatial axis, flattened."""
    a = np.asarray(array, dtype=np.float32)
    spatial = a.shape[1:]
    crop = tuple(s - s % factor for s in spatial)
    a = a[(slice(None),) + tuple(slice(0, c) for c in crop)]
    shape = [a.shape[0]]
    for c in crop:
        shape += [c // factor, factor]
    a = a.reshape(shape)
    return a.mean(axis=tuple(range(2, len(shape), 2))).ravel()


def _standardise(x_train: np.ndarray, x_test: np.ndarray | None = None):
    mu = x_train.mean(axis=0)
    sd = x_train.std(axis=0)
    # Floor tiny spreads (background voxels) so a test value there cannot explode.
    pos = sd[sd > 1e-12]
    floor = 0.1 * float(np.median(pos)) if len(pos) else 1.0
    sd = np.maximum(sd, max(floor, 1e-8))
    return (x_train - mu) / sd, (None if x_test is None else (x_test - mu) / sd)


def ridge_loo_mse(xt: np.ndarray, y: np.ndarray,
                  alphas: Sequence[float] = ALPHAS) -> dict[float, float]:
    """Leave-one-out mean squared error of ridge with an unpenalised intercept for every
    alpha (penalty ``alpha * n``), from one eigendecomposition of the centred kernel.

    ``xt`` must be centred (standardised) on these subjects. With ``K = V diag(s) V^T`` the
    hat matrix is ``1/n + V diag(s / (s + lam)) V^T`` and the LOO residual is
    ``(y_i - yhat_i) / (1 - H_ii)``. (The centred kernel has the constant vector as a null
    direction; leaving the intercept out of the hat matrix, as ``(G y)_i / G_ii`` with
    ``G = (K + lam I)^-1`` does, sends the "LOO error" to zero for a tiny penalty.)
    """
    y = np.asarray(y, dtype=np.float64)
    n = len(y)
    k = xt @ xt.T
    evals, evecs = np.linalg.eigh(k)
    evals = np.clip(evals, 0, None)
    yc = y - y.mean()
    uy = evecs.T @ yc
    v2 = evecs ** 2
    out = {}
    for a in alphas:
        lam = a * n
        shrink = evals / (evals + lam)
        resid = yc - evecs @ (shrink * uy)
        h = 1.0 / n + v2 @ shrink
        out[float(a)] = float(np.mean((resid / np.maximum(1.0 - h, 1e-12)) ** 2))
    return out


def ridge_fit_predict(x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray,
                      alphas: Sequence[float] = ALPHAS) -> tuple[np.ndarray, float]:
    """Standardise features on the training set, pick alpha by exact LOO on it, predict."""
    # Features outside the training range (a histogram bin never seen in training) would make
    # the linear model extrapolate wildly: clip the test features to the training range.
    x_test = np.clip(x_test, x_train.min(axis=0), x_train.max(axis=0))
    xt, xs = _standardise(x_train, x_test)
    loo = ridge_loo_mse(xt, y_train, alphas)
    best = min(loo.values())
    alpha = min(a for a, v in loo.items() if v <= best)
    ym = float(np.mean(y_train))
    k = xt @ xt.T
    dual = np.linalg.solve(k + alpha * len(y_train) * np.eye(len(y_train)), y_train - ym)
    pred = (xs @ xt.T) @ dual + ym
    return pred, float(alpha)


def baselines_on_folds(features: dict[str, np.ndarray], ages: Sequence[float],
                       fold_of: Sequence[int]) -> dict[str, dict]:
    """Out-of-fold predictions and metrics of ``mean`` and of ridge on each feature matrix.

    ``fold_of[i]`` is subject i's test fold (``-1``: always training). Returns
    ``{name: {"pred": (n,) array (NaN where never tested), "metrics": {...}, "alphas": []}}``.
    """
    y = np.asarray(ages, dtype=np.float64)
    folds = np.asarray(fold_of)
    out: dict[str, dict] = {}
    names = ["mean"] + list(features)
    for name in names:
        pred = np.full(len(y), np.nan)
        alphas = []
        for f in sorted(set(folds[folds >= 0].tolist())):
            te = folds == f
            tr = ~te
            if name == "mean":
                pred[te] = y[tr].mean()
            else:
                x = features[name]
                pred[te], a = ridge_fit_predict(x[tr], y[tr], x[te])
                alphas.append(a)
        tested = folds >= 0
        out[name] = {"pred": pred, "metrics": regression_metrics(y[tested], pred[tested]),
                     "alphas": alphas}
    return out


def baseline_features(get_array: Callable[[int], np.ndarray], n: int,
                      voxel_factor: int = 2) -> dict[str, np.ndarray]:
    """Histogram and downsampled-voxel feature matrices of ``n`` inputs."""
    hist, vox = [], []
    for i in range(n):
        a = get_array(i)
        hist.append(histogram_features(a))
        vox.append(voxel_features(a, voxel_factor))
    return {"ridge_histogram": np.stack(hist), "ridge_voxels": np.stack(vox)}
