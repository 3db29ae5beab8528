"""Interval multipliers: split-conformal quantiles of |error| / sigma fitted on held-out
predictions, and every place an interval is formed using them."""

from __future__ import annotations

import numpy as np
import pytest

from bodyage_core.atlas.stats import gap_classes
from bodyage_core.evaluation.metrics import coverage, reliability
from bodyage_core.models.ensemble import (
    CONFORMAL_MIN_SUBJECTS,
    fit_intervals,
    gaussian_z,
    interval_table,
    interval_z,
)


def _heavy_tailed(n, seed):
    """A regression whose noise is Student-t (3 degrees of freedom) with a known, varying
    scale sigma: sigma ranks the errors, the Gaussian intervals around it miss."""
    rng = np.random.default_rng(seed)
    sigma = rng.uniform(1.0, 6.0, n)
    return sigma * rng.standard_t(3, n), sigma


def test_conformal_intervals_reach_their_coverage_where_gaussian_ones_miss():
    # the guarantee is over calibration sets: on average over 30 sets of 150 held-out
    # predictions, new subjects are covered at least as often as nominal, and not by much more
    new_err, new_sig = _heavy_tailed(4000, 1)
    gauss = coverage(new_err, new_sig)
    # t(3) at scale sigma: the Gaussian +-1 sigma covers 0.61, +-1.96 sigma 0.86
    assert gauss["coverage_68"] < 0.65 and gauss["coverage_95"] < 0.89
    got = []
    for seed in range(30):
        err, sig = _heavy_tailed(150, 100 + seed)
        fit = fit_intervals(err, sig)
        assert fit["method"] == "split-conformal" and fit["n"] == 150
        table = interval_table({"intervals": fit})
        cov = coverage(new_err, new_sig, [table] * len(new_err))
        got.append([cov["coverage_68"], cov["coverage_95"]])
    c68, c95 = np.mean(got, axis=0)
    assert 0.683 - 0.01 <= c68 <= 0.683 + 0.03
    assert 0.95 - 0.005 <= c95 <= 0.95 + 0.02
    # every level of the reliability diagram, from one large calibration set
    table = interval_table({"intervals": fit_intervals(*_heavy_tailed(3000, 7))})
    rel = reliability(new_err, new_sig, tables=[table] * len(new_err))
    assert np.max(np.abs(np.array(rel["observed"]) - np.array(rel["nominal"]))) < 0.03
    assert "conformal" in rel["intervals"]
    assert reliability(new_err, new_sig)["intervals"] == "Gaussian"


def test_too_few_held_out_predictions_keep_the_gaussian_multipliers():
    err, sig = _heavy_tailed(CONFORMAL_MIN_SUBJECTS - 1, 2)
    fit = fit_intervals(err, sig)
    assert fit["method"] == "gaussian"
    assert fit["z"]["0.95"] == pytest.approx(1.96, abs=1e-3)
    assert interval_table({"intervals": fit}) is None
    # non-finite errors and sigmas <= 0 do not count towards the minimum
    err2 = np.r_[err, np.nan, np.inf, 1.0]
    sig2 = np.r_[sig, 1.0, 1.0, 0.0]
    assert fit_intervals(err2, sig2)["n"] == CONFORMAL_MIN_SUBJECTS - 1


def test_interval_z_reads_interpolates_and_falls_back():
    table = {"0.683": 0.9, "0.95": 2.5}
    assert interval_z(0.95, table) == 2.5
    assert interval_z(0.95, None) == pytest.approx(1.959964, abs=1e-5)
    # between the table's levels: its ratio to the Gaussian z interpolated
    lo, hi = 0.9 / gaussian_z(0.683), 2.5 / gaussian_z(0.95)
    mid = interval_z(0.8, table)
    assert gaussian_z(0.8) * min(lo, hi) < mid < gaussian_z(0.8) * max(lo, hi)
    # beyond them: the nearest ratio
    assert interval_z(0.99, table) == pytest.approx(gaussian_z(0.99) * hi)
    z = [interval_z(c, table) for c in np.linspace(0.05, 0.99, 40)]
    assert np.all(np.diff(z) > 0)


def test_the_interval_rule_and_gate_use_the_models_multiplier():
    # gap 2.5 sigma: outside the Gaussian 95 % interval, inside a split-conformal one of 3 sigma
    gaps, sigmas = [5.0, -5.0, 0.0], [2.0, 2.0, 2.0]
    assert gap_classes(gaps, interval=0.95, sigmas=sigmas) == \
        ["accelerated", "decelerated", "aligned"]
    wide = {"0.683": 1.2, "0.95": 3.0}
    assert gap_classes(gaps, interval=0.95, sigmas=sigmas, tables=[wide] * 3) == \
        ["aligned", "aligned", "aligned"]
    # a subject without a table keeps the Gaussian z
    assert gap_classes(gaps, interval=0.95, sigmas=sigmas, tables=[wide, None, None]) == \
        ["aligned", "decelerated", "aligned"]
    from bodyage_core.atlas.cohort_maps import gap_gate

    g = [6.0] * 10 + [0.0] * 10
    s = [2.0] * 20
    assert gap_gate(g, s, 0.95)["outside"] == 10
    assert gap_gate(g, s, 0.95, tables=[{"0.95": 3.5}] * 20)["outside"] == 0


def test_run_intervals_leave_each_folds_test_subjects_out():
    """A fold's multipliers come from the other folds' out-of-fold rows only: huge errors
    among fold 0's test subjects widen fold 1's intervals, never fold 0's; the global ones
    (a new subject's) take every held-out prediction, validation subjects included."""
    from bodyage_core.training.run import _fit_run_intervals

    rng = np.random.default_rng(3)
    n_val, n_oof = 60, 240
    ages = rng.uniform(20, 80, n_val + n_oof)
    v_idx = np.arange(n_val)
    v_mean = ages[v_idx] + rng.normal(0, 2, n_val)
    fold_of = np.r_[np.full(n_val, -1), np.repeat([0, 1], n_oof // 2)]
    oof_idx = np.flatnonzero(fold_of >= 0)
    oof = []
    for i in oof_idx:
        f = int(fold_of[i])
        e = rng.normal(0, 2) * (6.0 if f == 0 else 1.0)
        oof.append({"fold": f, "age": ages[i], "mean": ages[i] + e, "corrected": ages[i] + e,
                    "sigma": 2.0})
    ident = {"a": 1.0, "b": 0.0}
    calib = {"folds": {"0": {"scale": 1.0, "floor": 0.0}, "1": {"scale": 1.0, "floor": 0.0}},
             "global": {"scale": 1.0, "floor": 0.0}}
    bias = {"folds": {"0": ident, "1": ident}, "global": ident}
    _fit_run_intervals(calib, bias, oof, ages, np.r_[v_idx, oof_idx],
                       np.r_[v_mean, [r["mean"] for r in oof]], np.full(n_val + n_oof, 4.0),
                       lambda idx, means, centre: {"qc": None, "extent": None}, 2)
    z0 = calib["folds"]["0"]["intervals"]
    z1 = calib["folds"]["1"]["intervals"]
    zg = calib["global"]["intervals"]
    assert z0["n"] == z1["n"] == n_oof // 2 and zg["n"] == n_val + n_oof
    assert z0["method"] == z1["method"] == zg["method"] == "split-conformal"
    assert z0["z"]["0.95"] == pytest.approx(1.96, abs=0.4)      # errors match sigma there
    assert z1["z"]["0.95"] > 3 * z0["z"]["0.95"]                # fold 0's wild errors
    assert z0["z"]["0.95"] < zg["z"]["0.95"] < z1["z"]["0.95"]
    # a single split (one fold): no other fold's rows, so the fold keeps Gaussian multipliers
    calib1 = {"folds": {"0": {"scale": 1.0}}, "global": {"scale": 1.0}}
    _fit_run_intervals(calib1, {"folds": {"0": ident}, "global": ident}, oof[:120], ages,
                       np.r_[v_idx, oof_idx[:120]], np.r_[v_mean, [r["mean"] for r in oof[:120]]],
                       np.full(n_val + 120, 4.0), lambda idx, means, centre: {"qc": None, "extent": None}, 1)
    assert calib1["folds"]["0"]["intervals"]["method"] == "gaussian"
    assert calib1["global"]["intervals"]["n"] == n_val + 120
