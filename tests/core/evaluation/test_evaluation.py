"""Metrics, uncertainty quality, baselines on folds, subgroup table and the written report."""

from __future__ import annotations

import json

import numpy as np
import pytest

from bodyage_core.errors import BodyageError
from bodyage_core.evaluation import (
    baselines_on_folds,
    coverage,
    evaluate_predictions,
    histogram_features,
    regression_metrics,
    ridge_fit_predict,
    sparsification,
    spearman,
    subgroup_table,
    voxel_features,
    write_report,
)


def test_regression_metrics_known_values():
    m = regression_metrics([10, 20, 30, 40], [12, 18, 33, 37])
    assert m["mae"] == pytest.approx(2.5)
    assert m["rmse"] == pytest.approx(np.sqrt((4 + 4 + 9 + 9) / 4))
    assert m["r2"] == pytest.approx(1 - 26 / 500)
    assert m["pearson_r"] == pytest.approx(np.corrcoef([10, 20, 30, 40], [12, 18, 33, 37])[0, 1])
    assert m["mean_error"] == pytest.approx(0.0)
    assert regression_metrics([1, np.nan], [1, 2])["n"] == 1
    assert np.isnan(regression_metrics([], [])["mae"])


def test_uncertainty_quality():
    rng = np.random.default_rng(0)
    sigma = rng.uniform(1, 5, 2000)
    err = rng.normal(0, sigma)
    cov = coverage(err, sigma)
    assert cov["coverage_68"] == pytest.approx(0.683, abs=0.03)
    assert cov["coverage_95"] == pytest.approx(0.95, abs=0.02)
    assert spearman(sigma, np.abs(err)) > 0.2
    sp = sparsification(np.abs(err), sigma)
    assert sp["mae_by_sigma"][-1] < sp["mae_by_sigma"][0]      # removing uncertain ones helps
    assert all(o <= s + 1e-9 for o, s in zip(sp["mae_oracle"], sp["mae_by_sigma"]))
    assert sp["ause"] > 0
    perfect = sparsification(np.abs(err), np.abs(err))
    assert perfect["ause"] == pytest.approx(0.0, abs=1e-9)


def test_reliability_follows_the_diagonal_when_calibrated_and_falls_below_when_not():
    from bodyage_core.evaluation.metrics import reliability

    rng = np.random.default_rng(1)
    sigma = rng.uniform(1, 5, 4000)
    err = rng.normal(0, sigma)
    rel = reliability(err, sigma)
    assert rel["n"] == 4000
    for nom, obs in zip(rel["nominal"], rel["observed"]):
        assert obs == pytest.approx(nom, abs=0.03)
    narrow = reliability(err, sigma / 2)             # overconfident: intervals too narrow
    assert all(o < n - 0.05 for n, o in zip(narrow["nominal"], narrow["observed"]) if n >= 0.3)


def test_ridge_and_baselines_on_folds():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(60, 30))
    y = x @ rng.normal(size=30) + 50 + rng.normal(0, 0.5, 60)
    pred, alpha = ridge_fit_predict(x[:48], y[:48], x[48:])
    assert np.mean(np.abs(pred - y[48:])) < 2.0 and alpha > 0
    folds = np.arange(60) % 5
    res = baselines_on_folds({"ridge": x}, y, folds)
    assert set(res) == {"mean", "ridge"}
    assert res["ridge"]["metrics"]["mae"] < 0.3 * res["mean"]["metrics"]["mae"]
    assert len(res["ridge"]["alphas"]) == 5
    # the mean baseline of a fold is the mean of the *other* folds' ages
    np.testing.assert_allclose(res["mean"]["pred"][folds == 0], y[folds != 0].mean())


def test_features():
    a = np.zeros((2, 8, 8, 8), np.float32)
    a[:, 2:6, 2:6, 2:6] = 1.0
    h = histogram_features(a, bins=16)
    assert h.shape == (32,) and h.sum() == pytest.approx(2 * 64 / 512)
    v = voxel_features(a, 2)
    assert v.shape == (2 * 4 * 4 * 4,)


def test_subgroup_table():
    rows = subgroup_table([50, 60, 70, 40], [52, 58, 75, 40], ["F", "F", "M", "M"],
                          ["healthy", "obese", "healthy", "healthy"], [51, 60, 70, 40])
    key = {(r["sex"], r["bmi_group"]): r for r in rows}
    assert key[("F", "healthy")]["mae_raw"] == 2 and key[("F", "healthy")]["n"] == 1
    assert key[("M", "all")]["mae_raw"] == pytest.approx(2.5)
    assert key[("all", "all")]["n"] == 4
    assert key[("all", "all")]["mae_corrected"] == pytest.approx(0.25)


def _rows(n=40, seed=0):
    rng = np.random.default_rng(seed)
    age = rng.uniform(20, 80, n)
    sigma = rng.uniform(2, 6, n)
    mean = 0.8 * age + 10 + rng.normal(0, sigma)
    corrected = (mean - 10) / 0.8
    return [{"subject_id": f"s{i}", "age": age[i], "mean": mean[i], "corrected": corrected[i],
             "sigma": sigma[i] / 0.8, "sex": "FM"[i % 2],
             "bmi_group": ("healthy", "overweight", "obese")[i % 3]} for i in range(n)]


def test_write_report_files(tmp_path):
    rows = _rows()
    flag = {"flag": "unlike_training", "message": "QC score 5.1", "severity": "warning"}
    rows[3]["qc"] = [flag]
    rows[7]["qc"] = [flag, dict(flag)]        # one flag counted once per prediction
    base = baselines_on_folds({}, [r["age"] for r in rows], np.arange(40) % 4)
    paths = write_report(rows, tmp_path, "run1", base)
    for key in ("summary", "subgroups", "sparsification", "metrics", "pred_vs_age",
                "error_vs_uncertainty", "sparsification_png", "reliability_png"):
        assert paths[key].exists() and paths[key].stat().st_size > 0, key
    assert paths["pred_vs_age"].read_bytes()[:4] == b"\x89PNG"
    res = json.loads(paths["metrics"].read_text())
    assert {"raw", "corrected", "uncertainty", "subgroups", "summary", "qc_flags"} <= set(res)
    assert len(res["uncertainty"]["reliability"]["observed"]) == len(
        res["uncertainty"]["reliability"]["nominal"])
    assert res["qc_flags"] == {"unlike_training": 2}
    assert "baseline: mean" in paths["summary"].read_text()
    assert not list(tmp_path.glob(".*"))           # no temp files left behind
    assert evaluate_predictions(rows)["corrected"]["mae"] < evaluate_predictions(rows)["raw"][
        "mae"] + 5


def test_report_splits_the_error_by_planted_acquisition_effect(tmp_path):
    rows = _rows()
    assert "by_acquisition" not in write_report(rows, tmp_path, "real")   # nothing known
    for i, r in enumerate(rows):
        r["acquisition"] = ["noise"] if i < 10 else (["noise", "swap"] if i < 14 else [])
        if r["acquisition"]:
            r["corrected"] = r["age"] + (10.0 if "swap" in r["acquisition"] else 4.0)
    paths = write_report(rows, tmp_path, "synthetic")
    table = {r["effect"]: r for r in json.loads(paths["metrics"].read_text())["by_acquisition"]}
    assert list(table) == ["clean", "noise", "swap"]
    assert (table["clean"]["n"], table["noise"]["n"], table["swap"]["n"]) == (26, 14, 4)
    assert table["swap"]["mae"] == pytest.approx(10.0)
    assert table["noise"]["mae"] == pytest.approx((10 * 4.0 + 4 * 10.0) / 14)
    clean = [abs(r["corrected"] - r["age"]) for r in rows if not r["acquisition"]]
    assert table["clean"]["mae"] == pytest.approx(np.mean(clean))
    assert paths["by_acquisition"].read_text().startswith("effect,n,mae,mean_sigma")


def test_report_without_ages_is_clear(tmp_path):
    with pytest.raises(BodyageError, match="no predictions"):
        write_report([{"subject_id": "a", "age": None, "mean": 3.0}], tmp_path, "r")


def test_ridge_loo_is_exact_and_picks_a_penalty():
    """The fast LOO of the ridge equals refitting without each subject (intercept included),
    and on pure-noise features it chooses a strong penalty instead of interpolating."""
    from bodyage_core.evaluation.baselines import _standardise, ridge_loo_mse

    rng = np.random.default_rng(0)
    x = rng.normal(size=(40, 200))
    y = x[:, :5].sum(1) * 3 + 50 + rng.normal(0, 3, 40)
    xt, _ = _standardise(x)
    loo = ridge_loo_mse(xt, y, [0.01, 1.0, 100.0])
    for a, v in loo.items():
        pred = []
        for i in range(40):
            m = np.arange(40) != i
            xm, ym = xt[m].mean(0), y[m].mean()
            k = (xt[m] - xm) @ (xt[m] - xm).T
            d = np.linalg.solve(k + a * 40 * np.eye(39), y[m] - ym)
            pred.append((xt[i] - xm) @ (xt[m] - xm).T @ d + ym)
        assert v == pytest.approx(np.mean((np.array(pred) - y) ** 2), rel=1e-6)
    noise = rng.normal(size=(40, 500))
    _, alpha = ridge_fit_predict(noise, y, noise[:3])
    assert alpha >= 10.0
