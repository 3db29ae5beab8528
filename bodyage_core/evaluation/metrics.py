"""Regression and uncertainty figures of merit (numpy in, plain floats out)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from bodyage_core.models.ensemble import INTERVAL_LEVELS


def _clean(y, p):
    y = np.asarray(y, dtype=np.float64)
    p = np.asarray(p, dtype=np.float64)
    ok = np.isfinite(y) & np.isfinite(p)
    return y[ok], p[ok]


def regression_metrics(age: Sequence[float], pred: Sequence[float]) -> dict[str, float]:
    """MAE, RMSE, R^2, Pearson r and mean error (pred - age) over finite pairs."""
    y, p = _clean(age, pred)
    n = len(y)
    if n == 0:
        return {"n": 0, "mae": float("nan"), "rmse": float("nan"), "r2": float("nan"),
                "pearson_r": float("nan"), "mean_error": float("nan")}
    err = p - y
    ss_tot = float(np.sum((y - y.mean()) ** 2))
    r = float(np.corrcoef(y, p)[0, 1]) if n > 1 and np.std(y) > 0 and np.std(p) > 0 else \
        float("nan")
    return {"n": int(n), "mae": float(np.mean(np.abs(err))),
            "rmse": float(np.sqrt(np.mean(err ** 2))),
            "r2": float(1 - np.sum(err ** 2) / ss_tot) if ss_tot > 0 else float("nan"),
            "pearson_r": r, "mean_error": float(np.mean(err))}


def spearman(a: Sequence[float], b: Sequence[float]) -> float:
    from scipy.stats import spearmanr

    x, y = _clean(a, b)
    if len(x) < 3 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return float("nan")
    return float(spearmanr(x, y).statistic)


def sparsification(abs_err: Sequence[float], sigma: Sequence[float],
                   steps: int = 20) -> dict[str, Any]:
    """MAE of the subjects kept after removing the fraction ``f`` most uncertain ones (by
    sigma), against the oracle that removes the largest errors first. ``ause`` is the area
    between the two curves (0 = perfect ranking)."""
    e, s = _clean(abs_err, sigma)
    n = len(e)
    fr = np.linspace(0.0, 0.9, steps)
    if n == 0:
        return {"fraction_removed": fr.tolist(), "mae_by_sigma": [], "mae_oracle": [],
                "ause": float("nan")}
    by_sigma = e[np.argsort(-s, kind="stable")]
    oracle = np.sort(e)[::-1]
    curve_s, curve_o = [], []
    for f in fr:
        k = min(int(round(f * n)), n - 1)
        curve_s.append(float(by_sigma[k:].mean()))
        curve_o.append(float(oracle[k:].mean()))
    diff = np.array(curve_s) - np.array(curve_o)
    ause = float(np.sum((diff[1:] + diff[:-1]) / 2 * np.diff(fr)))
    return {"fraction_removed": fr.tolist(), "mae_by_sigma": curve_s, "mae_oracle": curve_o,
            "ause": ause}


def _multipliers(level: float, n: int, tables) -> np.ndarray:
    """Each subject's multiplier of sigma for coverage ``level`` (``tables``: per subject its
    ``interval_z``, None: Gaussian for all)."""
    from bodyage_core.models.ensemble import interval_z

    if tables is None:
        return np.full(n, interval_z(level))
    return np.array([interval_z(level, t) for t in tables], dtype=np.float64)


def _clean_tables(err, sigma, tables):
    e = np.asarray(err, dtype=np.float64)
    s = np.asarray(sigma, dtype=np.float64)
    ok = np.isfinite(e) & np.isfinite(s)
    t = None if tables is None else [tables[i] for i in np.flatnonzero(ok)]
    return e[ok], s[ok], t


def coverage(err: Sequence[float], sigma: Sequence[float],
             tables: Sequence[dict | None] | None = None) -> dict[str, float]:
    """Fraction of subjects whose error lies within their 68.3 % (1 SD) and 95 % intervals:
    ``+- z sigma`` with each prediction's own multipliers (``tables``: its ``interval_z``,
    split-conformal when the model has them), else the Gaussian 1 and 1.96."""
    e, s, t = _clean_tables(err, sigma, tables)
    if len(e) == 0:
        return {"coverage_68": float("nan"), "coverage_95": float("nan")}
    return {"coverage_68": float(np.mean(np.abs(e) <= _multipliers(0.683, len(e), t) * s)),
            "coverage_95": float(np.mean(np.abs(e) <= _multipliers(0.95, len(e), t) * s))}


RELIABILITY_LEVELS = INTERVAL_LEVELS


def reliability(err: Sequence[float], sigma: Sequence[float],
                levels: Sequence[float] = RELIABILITY_LEVELS,
                tables: Sequence[dict | None] | None = None) -> dict[str, list[float]]:
    """Reliability (calibration) of the intervals: for each nominal level, the share of
    subjects whose error lies within the central interval of that level (mean +- z sigma, z
    each prediction's own multiplier, Gaussian without ``tables``). A calibrated model lies on
    the diagonal; below it the intervals are too narrow."""
    e, s, t = _clean_tables(err, sigma, tables)
    lv = [float(v) for v in levels]
    if len(e) == 0:
        return {"nominal": lv, "observed": [float("nan")] * len(lv), "n": 0}
    a = np.abs(e)
    obs = [float(np.mean(a <= _multipliers(v, len(e), t) * s)) for v in lv]
    return {"nominal": lv, "observed": obs, "n": int(len(e)),
            "intervals": "Gaussian" if not t or not any(t) else "the model's own "
                         "(split-conformal) multipliers"}


def uncertainty_metrics(age: Sequence[float], pred: Sequence[float],
                        sigma: Sequence[float],
                        tables: Sequence[dict | None] | None = None) -> dict[str, Any]:
    """Spearman(sigma, |error|), sparsification curve and coverage of 68/95% intervals
    (``tables``: each prediction's interval multipliers, :func:`coverage`)."""
    y = np.asarray(age, dtype=float)
    p = np.asarray(pred, dtype=float)
    s = np.asarray(sigma, dtype=float)
    err = p - y
    out: dict[str, Any] = {"spearman_sigma_abs_error": spearman(s, np.abs(err)),
                           "mean_sigma": float(np.nanmean(s)) if len(s) else float("nan")}
    out.update(coverage(err, s, tables))
    out["sparsification"] = sparsification(np.abs(err), s)
    out["reliability"] = reliability(err, s, tables=tables)
    return out


def error_by_acquisition(age, corrected, sigma, effects, qc_score=None
                         ) -> list[dict[str, Any]] | None:
    """MAE and mean sigma of the clean subjects and of those hit by each acquisition effect
    (``effects``: per subject the list of planted effects, ``None`` when unknown; a subject hit
    by two effects counts in both rows). ``None`` when no subject's acquisition is known (a
    real cohort, a synthetic one made without ``--acquisition``)."""
    known = [i for i, e in enumerate(effects) if e is not None]
    if not known:
        return None
    err = np.abs(np.asarray(corrected, float) - np.asarray(age, float))[known]
    sig = np.asarray(sigma, float)[known]
    qc = (np.full(len(known), np.nan) if qc_score is None else
          np.array([np.nan if qc_score[i] is None else qc_score[i] for i in known], float))
    eff = [list(effects[i]) for i in known]
    rows = []
    for name in ["clean", *sorted({n for e in eff for n in e})]:
        m = np.array([not e if name == "clean" else name in e for e in eff])
        if m.any():
            rows.append({"effect": name, "n": int(m.sum()), "mae": float(err[m].mean()),
                         "mean_sigma": float(np.nanmean(sig[m])),
                         "mean_qc_score": (float(np.nanmean(qc[m])) if np.isfinite(qc[m]).any()
                                           else None)})
    return rows


def subgroup_table(age, pred, sex, bmi_group, corrected=None) -> list[dict[str, Any]]:
    """MAE by sex x BMI group plus per sex, per BMI group and overall (Starck Table 2)."""
    age = np.asarray(age, dtype=float)
    pred = np.asarray(pred, dtype=float)
    corr = None if corrected is None else np.asarray(corrected, dtype=float)
    sex = np.asarray([str(s) if s is not None else "?" for s in sex])
    bmi = np.asarray([str(b) if b is not None else "?" for b in bmi_group])
    rows = []

    def add(label_sex, label_bmi, mask):
        if not mask.any():
            return
        row = {"sex": label_sex, "bmi_group": label_bmi, "n": int(mask.sum()),
               "mae_raw": float(np.mean(np.abs(pred[mask] - age[mask]))),
               "mean_age": float(age[mask].mean())}
        if corr is not None:
            row["mae_corrected"] = float(np.mean(np.abs(corr[mask] - age[mask])))
        rows.append(row)

    bmi_order = [b for b in ("healthy", "overweight", "obese") if b in set(bmi)] + \
        sorted(set(bmi) - {"healthy", "overweight", "obese"})
    for sx in sorted(set(sex)):
        for b in bmi_order:
            add(sx, b, (sex == sx) & (bmi == b))
        add(sx, "all", sex == sx)
    for b in bmi_order:
        add("all", b, bmi == b)
    add("all", "all", np.ones(len(age), bool))
    return rows
