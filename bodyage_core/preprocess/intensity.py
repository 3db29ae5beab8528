"""Intensity normalisation with the method and its parameters recorded."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

METHODS = ("percentile", "zscore", "none")


def normalise_intensity(array: np.ndarray, method: str = "percentile",
                        p: Sequence[float] = (0.5, 99.5), mask: np.ndarray | None = None,
                        clip: bool = True) -> tuple[np.ndarray, dict[str, Any]]:
    """Normalise an image's intensities; returns ``(float32 array, parameters)``.

    Parameters
    ----------
    array
        Any shape (typically ``(Z, Y, X)``); normalise channels one at a time.
    method
        ``'percentile'``: robust scaling ``(a - P_lo) / (P_hi - P_lo)`` with percentiles ``p``
        (default 0.5 and 99.5), clipped to [0, 1] when ``clip``; ``'zscore'``:
        ``(a - mean) / std``; ``'none'``: unchanged (as float32).
    mask
        Optional boolean mask (same shape) of the voxels the statistics are computed on.

    Returns
    -------
    (normalised, params)
        ``params`` records the method and every number needed to repeat it
        (``{'method': 'percentile', 'p': [0.5, 99.5], 'lo': ..., 'hi': ..., 'clip': True}``),
        see :func:`apply_normalisation`.
    """
    a = np.asarray(array, dtype=np.float32)
    values = a[mask] if mask is not None else a
    values = values[np.isfinite(values)] if not np.all(np.isfinite(values)) else values
    if method == "percentile":
        p = [float(v) for v in p]
        if len(p) != 2 or not 0 <= p[0] < p[1] <= 100:
            raise ValueError(f"percentiles must be two increasing values in [0, 100], got {p}")
        if values.size:
            lo, hi = (float(v) for v in np.percentile(values.ravel(), p))
        else:
            lo, hi = 0.0, 1.0
        params: dict[str, Any] = {"method": "percentile", "p": p, "lo": lo, "hi": hi,
                                  "clip": bool(clip)}
    elif method == "zscore":
        mean = float(values.mean(dtype=np.float64)) if values.size else 0.0
        std = float(values.std(dtype=np.float64)) if values.size else 1.0
        params = {"method": "zscore", "mean": mean, "std": std}
    elif method == "none":
        params = {"method": "none"}
    else:
        raise ValueError(f"unknown normalisation {method!r}; use one of {', '.join(METHODS)}")
    return apply_normalisation(a, params), params


def apply_normalisation(array: np.ndarray, params: dict[str, Any]) -> np.ndarray:
    """Apply recorded normalisation ``params`` (from :func:`normalise_intensity`) again."""
    a = np.asarray(array, dtype=np.float32)
    method = params.get("method")
    if method == "percentile":
        lo, hi = float(params["lo"]), float(params["hi"])
        scale = 1.0 / (hi - lo) if hi > lo else 1.0
        out = (a - np.float32(lo)) * np.float32(scale)
        if params.get("clip", True):
            np.clip(out, 0.0, 1.0, out=out)
        return out.astype(np.float32, copy=False)
    if method == "zscore":
        std = float(params["std"]) or 1.0
        return ((a - np.float32(params["mean"])) / np.float32(std)).astype(np.float32,
                                                                          copy=False)
    if method == "none":
        return a.copy() if a is array else a
    raise ValueError(f"unknown normalisation {method!r}; use one of {', '.join(METHODS)}")
