"""Deep ensembles of age networks: combining members, calibrating their variance, correcting
the regression-to-the-mean bias, and the predictions they make.

The loaded ensemble itself (a run folder or a model bundle) is
:class:`bodyage_core.inference.ensemble.AgeRun`. Run directory (``workspace/models/<run>/``)::

    config.json            format, status, model / training / input config, members (file, fold,
                           seed, target mean/std, best validation MAE), folds, seed
    member_<k>.pt          one trained network (state dict + its model config and target scaler)
    normalisation.json     input normalisation and each member's target mean/std
    bias_correction.json   {"global": {"a", "b", "n"}, "folds": {"<f>": {...}}} fitted on
                           validation subjects only: predicted = a * age + b
    calibration.json       {"global": {"scale", "intervals"}, "folds": {...}}: predictive
                           variance x scale, fitted by validation NLL; the multipliers of
                           sigma for each interval's coverage (split-conformal when enough
                           held-out predictions: :func:`fit_intervals`)
    splits.json            fold of every training-cohort subject (the fold it was *held out* in),
                           the validation subjects of each fold, and for a single-split run
                           (``folds=1``) which subjects trained / validated the members
    oof_predictions.csv    out-of-fold prediction of every cohort subject
    metrics.json           per-member training histories and out-of-fold metrics
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

RUN_FORMAT = "bodyage-run/1"
#: the 95 % two-sided Gaussian quantile: the interval is corrected +- Z95 sigma
Z95 = 1.959964
MEMBER_FORMAT = "bodyage-member/1"


# -- combination, calibration, bias correction ------------------------------------------------

def combine_members(mu: np.ndarray, var: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Deep-ensemble mixture of K Gaussians, ``mu, var`` of shape ``(K, N)`` (NaN = member not
    used for that subject) -> ``(mean, variance)`` of shape ``(N,)``::

        mean = mean_k mu_k ;  variance = mean_k (sigma_k^2 + mu_k^2) - mean^2
    """
    mu = np.asarray(mu, dtype=np.float64)
    var = np.asarray(var, dtype=np.float64)
    mean = np.nanmean(mu, axis=0)
    second = np.nanmean(var + mu ** 2, axis=0)
    return mean, np.maximum(second - mean ** 2, 0.0)


SHRINK_GRID = tuple(np.round(np.linspace(0.0, 1.0, 11), 2))


def _linear_fit(age: np.ndarray, pred: np.ndarray) -> tuple[float, float] | None:
    """``pred = a * age + b`` by least squares, or None when it cannot be inverted."""
    if len(age) < 3 or np.std(age) < 1e-9:
        return None
    a, b = np.polyfit(age, pred, 1)
    return None if a < 0.05 else (float(a), float(b))


def _shrunk(pred: np.ndarray, a: float, b: float, lam: float) -> np.ndarray:
    return pred + lam * ((pred - b) / a - pred)


def fit_bias_correction(ages: Sequence[float], predicted: Sequence[float],
                        shrink: str | float | None = None) -> dict[str, Any]:
    """Least-squares ``predicted = a * age + b`` on validation subjects (Starck appendix B).

    Returns ``{"a", "b", "n"}``; with fewer than 3 subjects, no age spread, or a slope below
    0.05 (correcting would explode the noise) the identity ``a=1, b=0`` is returned and
    ``"identity_reason"`` says why.

    ``shrink`` moves the correction part of the way from the identity (raw prediction) to the
    full inverse fit: ``corrected = pred + lam * ((pred - b) / a - pred)``.  ``None`` or ``1``:
    the full correction; a number in ``[0, 1]``: that ``lam``; ``"loo"``: ``lam`` from
    :data:`SHRINK_GRID` minimising the leave-one-out MAE of the corrected validation
    predictions (refitting ``a, b`` without the left-out subject; ties go to the smaller
    ``lam``, so ``lam = 0`` -- the raw prediction -- wins unless the correction helps on held-out
    validation subjects).  The full fit is the inverse of a regression-to-the-mean slope and
    inflates the noise by ``1/a``; on small validation sets it usually *raises* the MAE.
    The shrunk correction is still of the form ``(pred - b') / a'``: the returned ``a, b`` are
    the effective ones (``a_full, b_full, shrink`` keep the fit), so
    :func:`apply_bias_correction` is unchanged.
    """
    age = np.asarray(ages, dtype=np.float64)
    pred = np.asarray(predicted, dtype=np.float64)
    ok = np.isfinite(age) & np.isfinite(pred)
    age, pred = age[ok], pred[ok]
    n = int(len(age))
    if n < 3 or np.std(age) < 1e-9:
        return {"a": 1.0, "b": 0.0, "n": n, "identity_reason": "too few validation subjects"}
    a, b = np.polyfit(age, pred, 1)
    if a < 0.05:
        return {"a": 1.0, "b": 0.0, "n": n,
                "identity_reason": f"slope {a:.3g} too small to invert"}
    a, b = float(a), float(b)
    if shrink is None:
        return {"a": a, "b": b, "n": n}
    if shrink == "loo":
        loo_mae = {}
        for lam in SHRINK_GRID:
            errs = []
            for i in range(n):
                keep = np.arange(n) != i
                fit_i = _linear_fit(age[keep], pred[keep])
                c = pred[i] if fit_i is None else _shrunk(pred[i:i + 1], *fit_i, lam)[0]
                errs.append(abs(c - age[i]))
            loo_mae[float(lam)] = float(np.mean(errs))
        best = min(loo_mae.values())
        lam = min(k for k, v in loo_mae.items() if v <= best + 1e-9)
        extra: dict[str, Any] = {"loo_mae": loo_mae}
    else:
        lam = float(shrink)
        if not 0.0 <= lam <= 1.0:
            raise ValueError(f"shrink must be in [0, 1] or 'loo', got {shrink!r}")
        extra = {}
    # corrected = pred * (1 - lam + lam / a) - lam * b / a  ==  (pred - b_eff) / a_eff
    a_eff = 1.0 / (1.0 - lam + lam / a)
    b_eff = a_eff * lam * b / a
    return {"a": float(a_eff), "b": float(b_eff), "n": n, "a_full": a, "b_full": b,
            "shrink": float(lam), **extra}


#: Below this validation slope the full inverse ``(pred - b) / a`` would more than double the
#: noise of every prediction (a model that tracks age weakly: corrected ages far outside the
#: human range), so the ``"full"`` policy falls back to the leave-one-out shrink.
MIN_FULL_SLOPE = 0.5
BIAS_METHODS = ("auto", "full", "loo")
#: ``auto`` keeps the full inverse while its leave-one-out validation MAE is at most this much
#: above the raw prediction's (the price of an age-independent gap); beyond, the loo shrink.
AUTO_MAX_MAE_RATIO = 1.05


def loo_mae_full(ages: np.ndarray, pred: np.ndarray) -> tuple[float, float]:
    """Leave-one-out MAE on validation subjects of the raw prediction and of the full inverse
    fit (refitted without each left-out subject)."""
    age = np.asarray(ages, dtype=np.float64)
    p = np.asarray(pred, dtype=np.float64)
    ok = np.isfinite(age) & np.isfinite(p)
    age, p = age[ok], p[ok]
    n = len(age)
    raw = float(np.mean(np.abs(p - age))) if n else float("nan")
    errs = []
    for i in range(n):
        keep = np.arange(n) != i
        fit = _linear_fit(age[keep], p[keep])
        c = p[i] if fit is None else (p[i] - fit[1]) / fit[0]
        errs.append(abs(c - age[i]))
    return raw, float(np.mean(errs)) if errs else float("nan")


def fit_bias_policy(ages: Sequence[float], predicted: Sequence[float],
                    method: str = "full") -> dict[str, Any]:
    """The bias correction a run stores (``TrainConfig.bias_correction``).

    ``"auto"`` (the default of ``bodyage train``): the full inverse when its leave-one-out MAE
    on the validation subjects is within :data:`AUTO_MAX_MAE_RATIO` of the raw prediction's,
    else the leave-one-out shrink; ``"chosen"`` and ``"why"`` say which and why.
    ``"full"``: the inverse of the validation fit (:func:`fit_bias_correction`, DESIGN.md), so
    the gap does not depend on age, unless the fitted slope is below :data:`MIN_FULL_SLOPE`;
    then the leave-one-out shrink, with ``"fallback"`` saying why. ``"loo"``: always the
    leave-one-out shrink (lower MAE; the gap keeps part of its age dependence).
    """
    if method not in BIAS_METHODS:
        raise ValueError(f"bias correction method must be one of {BIAS_METHODS}, got {method!r}")
    if method == "loo":
        return fit_bias_correction(ages, predicted, shrink="loo")
    fit = fit_bias_correction(ages, predicted)
    if "identity_reason" in fit:
        return fit
    if fit["a"] < MIN_FULL_SLOPE:
        loo = fit_bias_correction(ages, predicted, shrink="loo")
        loo["fallback"] = (f"validation slope {fit['a']:.2f} < {MIN_FULL_SLOPE}: the full "
                           f"inverse would multiply the noise by {1 / fit['a']:.1f}; shrunk by "
                           "leave-one-out MAE instead")
        loo["chosen"] = "loo"
        return loo
    if method == "full":
        return fit
    raw, full = loo_mae_full(ages, predicted)
    if full <= AUTO_MAX_MAE_RATIO * raw:
        fit.update(chosen="full", loo_mae_raw=raw, loo_mae_full=full,
                   why=f"full inverse: leave-one-out validation MAE {full:.2f} vs raw "
                       f"{raw:.2f} (within {100 * (AUTO_MAX_MAE_RATIO - 1):.0f} %), and the "
                       "gap does not depend on age")
        return fit
    loo = fit_bias_correction(ages, predicted, shrink="loo")
    loo.update(chosen="loo", loo_mae_raw=raw, loo_mae_full=full,
               why=f"shrunk by leave-one-out MAE: the full inverse raised the validation MAE "
                   f"from {raw:.2f} to {full:.2f} (more than "
                   f"{100 * (AUTO_MAX_MAE_RATIO - 1):.0f} %)")
    return loo


def apply_bias_correction(predicted: np.ndarray, fit: dict[str, float]) -> np.ndarray:
    """``corrected = (predicted - b) / a``."""
    return (np.asarray(predicted, dtype=np.float64) - fit["b"]) / fit["a"]


def fit_variance_scale(errors: Sequence[float], variance: Sequence[float], *,
                       floor: bool = True) -> dict[str, Any]:
    """Post-hoc calibration on validation subjects: ``calibrated = scale * variance + floor``.

    ``floor=True``: ``scale`` and ``floor`` minimise the Gaussian NLL of the validation errors.
    The floor keeps a few members that happen to agree (a tiny spread, the only variance of
    point-estimate members) from claiming certainty. With mean-variance members the variance
    is the networks' own and ranks the subjects; a floor fitted on a few dozen validation
    subjects often swallows it (scale -> 0: every subject the same sigma), so ``floor=False``
    fits the scale alone (MIMIR's post-hoc variance scaling: ``scale = mean(err^2 / var)``,
    the NLL optimum), which keeps the ranking.

    (A split-conformal choice of the scale was tried on IXI: a quantile of ~45 validation
    errors per fold varies so much between folds that it halved the out-of-fold ranking,
    Spearman 0.19 -> 0.10, for coverage the NLL scale already had, 68 / 95 %.)

    With a degenerate variance (one member without a variance head) only the floor is fitted
    (``floor = mean(err^2)``, ``scale = 1``).
    """
    from scipy.optimize import minimize

    err = np.asarray(errors, dtype=np.float64)
    var = np.asarray(variance, dtype=np.float64)
    ok = np.isfinite(err) & np.isfinite(var)
    err, var = err[ok], np.maximum(var[ok], 0.0)
    n = int(len(err))
    if n == 0:
        return {"scale": 1.0, "floor": 0.0, "n": 0}
    e2 = err ** 2
    if np.all(var < 1e-8) or n < 3:
        return {"scale": 1.0, "floor": float(max(np.mean(e2), 1e-6)), "n": n}
    if not floor:
        pos = var > 1e-8
        fit = {"scale": float(np.mean(e2[pos] / var[pos])), "floor": 0.0, "n": n,
               "method": "scale"}
    else:
        def nll(p):
            v = np.exp(p[0]) * var + np.exp(p[1])
            return float(np.mean(np.log(v) + e2 / v))

        c0 = float(np.mean(e2) / max(np.mean(var), 1e-8))
        best = None
        for start in ([np.log(c0), np.log(max(np.mean(e2), 1e-6)) - 2.0],
                      [np.log(c0) - 1.0, np.log(max(np.mean(e2), 1e-6)) - 0.5]):
            res = minimize(nll, np.array(start), method="Nelder-Mead",
                           options={"xatol": 1e-4, "fatol": 1e-6, "maxiter": 2000})
            if best is None or res.fun < best.fun:
                best = res
        fit = {"scale": float(np.exp(best.x[0])), "floor": float(np.exp(best.x[1])), "n": n,
               "method": "scale+floor"}
    v = np.maximum(fit["scale"] * var + fit["floor"], 1e-12)
    fit["nll"] = float(np.mean(0.5 * (np.log(2 * np.pi * v) + e2 / v)))
    return fit


#: each covariate term's exponent is searched on its grid (0: sigma does not follow it). The
#: QC score can only raise the variance as it grows; the body's head-foot extent (the share of
#: the model grid's slices with body) only as it shrinks (a truncated field of view).
TERM_POWERS = {"qc": np.round(np.arange(0.0, 4.0001, 0.1), 2),
               "extent": np.round(np.arange(-8.0, 0.0001, 0.2), 2),
               "centre": np.round(np.arange(-4.0, 0.0001, 0.1), 2)}
#: what each covariate is, for the fit's ``why``
TERM_NAMES = {"qc": "QC score", "extent": "head-foot extent",
              "centre": "distance of the prediction from the mean validation age + 1 y"}
#: the terms are fitted with at least this many validation subjects with every covariate ...
QC_MIN_SUBJECTS = 20
#: ... and chosen where they lower the cross-validated NLL by more than this (per subject)
QC_MIN_GAIN = 0.005
QC_CV_FOLDS = 5
#: rounds of the coordinate search over several terms' exponents
_TERM_ROUNDS = 3


def centre_distance(mean, centre_age: float | None):
    """The ``centre`` covariate: how far the raw ensemble mean lies from the validation
    subjects' mean age, plus 1 year (years; None without a centre). A prediction far from the
    centre must come from an input that shows its age; one near it may be a degraded scan
    regressed there from any age, which the bias correction then cannot place, so its
    corrected age is the less certain (on the degraded synthetic cohort this distance ranks the
    corrected errors at -0.33, the members' variance at 0.21)."""
    if centre_age is None or mean is None:
        return None
    return np.abs(np.asarray(mean, dtype=np.float64) - float(centre_age)) + 1.0


def _ratio(x, ref: dict[str, float]) -> np.ndarray:
    q = np.asarray(x, dtype=np.float64)
    q = np.where(np.isfinite(q), q, ref["median"])
    return np.clip(q, ref["low"], ref["high"]) / ref["median"]


def _covariates(cov) -> dict[str, np.ndarray] | None:
    """``{name: values}``; a bare array is the QC score (the first covariate there was)."""
    if cov is None:
        return None
    if isinstance(cov, Mapping):
        out = {k: np.atleast_1d(np.asarray(v, dtype=np.float64)) for k, v in cov.items()
               if v is not None}
        return out or None
    return {"qc": np.atleast_1d(np.asarray(cov, dtype=np.float64))}


def variance_terms(fit: dict[str, Any] | None) -> dict[str, dict[str, float]]:
    """The covariate terms of a calibration (``{}``: scale only). Files written before several
    terms existed hold the QC term alone under ``qc``."""
    if not fit:
        return {}
    if "terms" in fit:
        return dict(fit["terms"])
    return {"qc": fit["qc"]} if "qc" in fit else {}


def _fit_with_terms(err: np.ndarray, var: np.ndarray, covs: dict[str, np.ndarray],
                    floor: bool) -> dict[str, Any]:
    """``prod_k r_k ** b_k * (scale * var + floor)``, ``r_k`` each covariate over its median
    (clipped to the range seen here): the exponents by a coordinate search on their
    :data:`TERM_POWERS` grids by the Gaussian NLL, ``scale`` (and ``floor``) refitted for each.
    Since ``v = R * u`` with ``log R = sum_k b_k log r_k``, fitting ``u`` to the errors over
    ``sqrt(R)`` is the same fit, plus ``mean(log R) / 2`` in the NLL."""
    refs = {k: {"median": float(np.median(v)), "low": float(np.min(v)),
                "high": float(np.max(v))} for k, v in covs.items()}
    logs = {k: np.log(_ratio(v, refs[k])) for k, v in covs.items()}
    powers = {k: 0.0 for k in covs}

    def score(pw):
        lr = sum(pw[k] * logs[k] for k in logs)
        f = fit_variance_scale(err / np.exp(0.5 * lr), var, floor=floor)
        return f.get("nll", np.inf) + 0.5 * float(np.mean(lr)), f

    best, f = score(powers)
    for _ in range(_TERM_ROUNDS if len(covs) > 1 else 1):
        before = dict(powers)
        for k in covs:
            for b in TERM_POWERS[k]:
                trial = dict(powers, **{k: float(b)})
                nll, fk = score(trial)
                if nll < best - 1e-12:
                    best, f, powers = nll, fk, trial
        if powers == before:
            break
    out = {k: f[k] for k in ("scale", "floor", "n") if k in f}
    out.update(method=f.get("method", "scale") + "+terms", nll=best,
               terms={k: dict(refs[k], power=powers[k]) for k in covs if powers[k] != 0})
    return out


def _nll_of(fit: dict[str, Any], err, var, covs) -> float:
    return gaussian_nll(err, apply_variance_scale(var, fit, covs))


def _describe(terms: dict[str, dict[str, float]]) -> str:
    return " and ".join(f"({TERM_NAMES.get(k, k)} / {t['median']:.2f}) ** {t['power'] / 2:.2f}"
                        for k, t in terms.items())


def fit_variance_calibration(errors: Sequence[float], variance: Sequence[float],
                             qc=None, *, floor: bool = True) -> dict[str, Any]:
    """:func:`fit_variance_scale`, and where each validation subject has covariates (``qc``: its
    cross-fitted QC score, what it would score as a new input, or ``{"qc": ..., "extent": ...}``
    with the body's head-foot extent too) a variance that also follows them:
    ``prod_k (c_k / median_k) ** b_k * (scale * var + floor)``, each covariate clipped to the
    range seen on validation (no evidence beyond it). A degraded scan (noise, ghosts, a swapped
    station) is both harder to age and further from the training scans in the network's
    features, and a truncated one shows less of the body, which the networks' own variance does
    not learn from a few hundred subjects.

    The terms are kept only where they lower the Gaussian NLL of held-out validation subjects
    (:data:`QC_CV_FOLDS`-fold within them, by more than :data:`QC_MIN_GAIN`); ``chosen`` and
    ``why`` say which won and by how much. The scale-only fit stays in ``fallback`` for an
    input without the covariates."""
    base = fit_variance_scale(errors, variance, floor=floor)
    covs = _covariates(qc)
    if covs is None:
        return base
    err = np.asarray(errors, dtype=np.float64)
    var = np.asarray(variance, dtype=np.float64)
    ok = np.isfinite(err) & np.isfinite(var)
    for v in covs.values():
        ok &= np.isfinite(v) & (v > 0)
    names = ", ".join(TERM_NAMES.get(k, k) for k in covs)
    if ok.sum() < QC_MIN_SUBJECTS or base.get("n", 0) < QC_MIN_SUBJECTS:
        return dict(base, chosen="scale", why=f"no covariate term: {int(ok.sum())} validation "
                    f"subjects with a {names} (it needs {QC_MIN_SUBJECTS})")
    err, var = err[ok], np.maximum(var[ok], 0.0)
    covs = {k: v[ok] for k, v in covs.items()}
    order = np.random.default_rng(0).permutation(len(err))
    cv_base = cv_terms = 0.0
    for part in np.array_split(order, QC_CV_FOLDS):
        rest = np.setdiff1d(order, part)
        fb = fit_variance_scale(err[rest], var[rest], floor=floor)
        ft = _fit_with_terms(err[rest], var[rest], {k: v[rest] for k, v in covs.items()},
                             floor)
        cv_base += _nll_of(fb, err[part], var[part], None) * len(part)
        cv_terms += _nll_of(ft, err[part], var[part],
                            {k: v[part] for k, v in covs.items()}) * len(part)
    cv_base /= len(err)
    cv_terms /= len(err)
    withc = _fit_with_terms(err, var, covs, floor)
    gain = cv_base - cv_terms
    cv = {"cv_nll_scale": cv_base, "cv_nll_terms": cv_terms, "n_terms": int(len(err)),
          "covariates": sorted(covs)}
    if gain > QC_MIN_GAIN and withc["terms"]:
        fallback = {k: base[k] for k in ("scale", "floor", "n", "method") if k in base}
        return dict(withc, **cv, fallback=fallback, chosen="terms",
                    why=f"sigma grows as {_describe(withc['terms'])}: it lowered the held-out "
                        f"validation NLL from {cv_base:.3f} to {cv_terms:.3f} "
                        f"({QC_CV_FOLDS}-fold)")
    return dict(base, **cv, chosen="scale",
                why=f"scale only: terms in the {names} did not lower the held-out validation "
                    f"NLL ({cv_terms:.3f} vs {cv_base:.3f}, {QC_CV_FOLDS}-fold)")


def apply_variance_scale(variance: np.ndarray, fit: dict[str, Any], qc=None) -> np.ndarray:
    """The calibrated variance; with covariate terms in ``fit`` it needs each input's
    covariates (``qc``: the QC score, or ``{"qc": ..., "extent": ...}``); without one of them
    the scale-only ``fallback``."""
    v = np.asarray(variance, dtype=np.float64)
    terms = variance_terms(fit)
    if terms:
        covs = _covariates(qc) or {}
        if not all(k in covs for k in terms):
            fit = fit.get("fallback", fit)
        else:
            r = np.ones_like(v)
            for k, t in terms.items():
                r = r * _ratio(covs[k], t) ** t["power"]
            return r * (v * fit.get("scale", 1.0) + fit.get("floor", 0.0))
    return v * fit.get("scale", 1.0) + fit.get("floor", 0.0)


# -- intervals --------------------------------------------------------------------------------

#: the coverages an interval table holds (the reliability diagram's levels: 1 SD and 95 % among
#: them)
INTERVAL_LEVELS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.683, 0.8, 0.9, 0.95, 0.99)
#: split-conformal multipliers replace the Gaussian ones from this many held-out predictions on
#: (below it the 95 % quantile rests on a handful of subjects: 49 gave 1.68 where 1.96 held)
CONFORMAL_MIN_SUBJECTS = 100
#: the interval multipliers a predictions CSV holds as columns (``z_68``: the 1 SD interval is
#: corrected +- z_68 sigma)
CSV_LEVELS = {"68": 0.683, "95": 0.95}


def level_key(level: float) -> str:
    """How a coverage is written in an interval table (0.95 -> "0.95", 0.683 -> "0.683")."""
    return f"{float(level):g}"


def gaussian_z(level: float) -> float:
    """The Gaussian multiplier of sigma for a two-sided interval of coverage ``level``."""
    from scipy.stats import norm

    return float(norm.ppf(0.5 + float(level) / 2))


def fit_intervals(errors: Sequence[float], sigma: Sequence[float], *,
                  min_subjects: int = CONFORMAL_MIN_SUBJECTS) -> dict[str, Any]:
    """The multipliers of sigma that make ``corrected +- z sigma`` cover each of
    :data:`INTERVAL_LEVELS`: split-conformal quantiles of ``|error| / sigma`` over held-out
    predictions (``errors``: corrected minus chronological age, the errors the interval is
    around), the ``ceil((n + 1) c)``-th smallest for coverage ``c`` (capped at the largest),
    which covers at least ``c`` of new subjects drawn like these whatever the errors'
    distribution. Heavy-tailed errors (IXI: the Gaussian 1 SD interval covered 0.695, the 95 %
    one 0.908) get a narrower inner and a wider outer interval than one sigma scale can give.

    With fewer than ``min_subjects`` the Gaussian multipliers are kept (``method:
    "gaussian"``): a tail quantile of a few dozen subjects moves more than it corrects."""
    e = np.abs(np.asarray(errors, dtype=np.float64))
    s = np.asarray(sigma, dtype=np.float64)
    ok = np.isfinite(e) & np.isfinite(s) & (s > 0)
    score = np.sort(e[ok] / s[ok])
    n = int(len(score))
    if n < min_subjects:
        return {"method": "gaussian", "n": n,
                "z": {level_key(c): round(gaussian_z(c), 4) for c in INTERVAL_LEVELS},
                "why": f"Gaussian multipliers: {n} held-out predictions (split-conformal ones "
                       f"need {min_subjects})"}
    z = {}
    for c in INTERVAL_LEVELS:
        k = min(int(math.ceil((n + 1) * c)), n)
        z[level_key(c)] = round(float(score[k - 1]), 4)
    return {"method": "split-conformal", "n": n, "z": z,
            "why": f"split-conformal multipliers from {n} held-out predictions: the 1 SD "
                   f"interval is +- {z[level_key(0.683)]:.2f} sigma, the 95 % one "
                   f"+- {z[level_key(0.95)]:.2f} sigma (Gaussian: 1.00, 1.96)"}


def csv_interval_table(row: Mapping[str, Any]) -> dict[str, float] | None:
    """The interval table a predictions CSV row holds (its ``z_68`` / ``z_95`` columns)."""
    out = {}
    for name, c in CSV_LEVELS.items():
        v = row.get(f"z_{name}")
        if v in (None, ""):
            return None
        out[level_key(c)] = float(v)
    return out


def interval_table(fit: Mapping[str, Any] | None) -> dict[str, float] | None:
    """The interval multipliers (``{coverage: z}``) a calibration fit holds; None: Gaussian
    (a model trained before they existed, or too few held-out predictions)."""
    iv = (fit or {}).get("intervals") or {}
    if iv.get("method") != "split-conformal":
        return None
    return {str(k): float(v) for k, v in iv["z"].items()}


def interval_method(table: Mapping[str, float] | None) -> str:
    """How a prediction's intervals were formed, in words (a CSV's ``intervals`` column)."""
    if not table:
        return "Gaussian (corrected +- 1.96 sigma for 95 %)"
    z = interval_z(0.95, table)
    return f"split-conformal (corrected +- {z:.2f} sigma for 95 %)"


def interval_z(level: float, table: Mapping[str, float] | None = None) -> float:
    """The multiplier of sigma for coverage ``level``: the table's (a prediction's
    ``interval_z``) where it has the level, else its ratio to the Gaussian one interpolated
    between the table's levels (held beyond them), else the Gaussian one."""
    c = float(level)
    g = gaussian_z(c)
    if not table:
        return g
    key = level_key(c)
    if key in table:
        return float(table[key])
    lv = sorted(float(k) for k in table)
    ratio = [float(table[level_key(v)]) / gaussian_z(v) for v in lv]
    return g * float(np.interp(c, lv, ratio))


# -- predictions ------------------------------------------------------------------------------

@dataclass
class Predictions:
    """Ensemble predictions in years for N subjects and K members (NaN: member not used)."""

    subject_ids: list[str]
    member_mu: np.ndarray              # (N, K)
    member_sigma: np.ndarray           # (N, K)
    mean: np.ndarray                   # (N,) raw ensemble mean
    sigma: np.ndarray                  # (N,) calibrated predictive standard deviation
    corrected: np.ndarray              # (N,) bias-corrected age
    fold: list[int | None] = field(default_factory=list)
    split: list[str] = field(default_factory=list)
    #: (N,) the ensemble's variance before calibration (a calibration with a QC term turns it
    #: into sigma once the input's QC score is known)
    variance: np.ndarray | None = None
    #: per subject its interval multipliers (:func:`interval_table`; None: Gaussian)
    interval_z: list[dict[str, float] | None] = field(default_factory=list)

    def subset(self, indices: Sequence[int]) -> Predictions:
        """The predictions of the subjects at ``indices`` (in that order)."""
        idx = [int(i) for i in indices]
        return Predictions([self.subject_ids[i] for i in idx], self.member_mu[idx],
                           self.member_sigma[idx], self.mean[idx], self.sigma[idx],
                           self.corrected[idx],
                           [self.fold[i] for i in idx] if self.fold else [],
                           [self.split[i] for i in idx] if self.split else [],
                           None if self.variance is None else self.variance[idx],
                           [self.interval_z[i] for i in idx] if self.interval_z else [])

    def rows(self, ages: dict[str, float | None] | None = None) -> list[dict[str, Any]]:
        """One dict per subject, the shape ``CohortDB.add_predictions`` takes."""
        out = []
        for i, sid in enumerate(self.subject_ids):
            members = [{"mu": float(m), "sigma": float(s)}
                       for m, s in zip(self.member_mu[i], self.member_sigma[i])
                       if np.isfinite(m)]
            row: dict[str, Any] = {
                "subject_id": sid, "fold": self.fold[i] if self.fold else None,
                "split": self.split[i] if self.split else None, "members": members,
                "mean": float(self.mean[i]), "sigma": float(self.sigma[i]),
                "corrected": float(self.corrected[i]),
            }
            if self.interval_z and self.interval_z[i]:
                row["interval_z"] = dict(self.interval_z[i])
            if ages is not None and ages.get(sid) is not None:
                row["age"] = float(ages[sid])
                row["gap"] = float(self.corrected[i] - ages[sid])
            out.append(row)
        return out


def gaussian_nll(err: np.ndarray, var: np.ndarray) -> float:
    v = np.maximum(np.asarray(var, dtype=float), 1e-9)
    return float(np.mean(0.5 * (np.log(2 * math.pi * v) + np.asarray(err) ** 2 / v)))
