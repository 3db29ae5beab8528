"""The noise floor of the synthetic cohort: how well *could* age be predicted?

An oracle that measured every planted effect parameter exactly (disc height and hydration,
kyphosis, marrow fat, muscle area and fat fraction, aortic diameter and arch height, pericardial
fat, knee joint space, liver fat), plus sex and BMI, still cannot know a subject's age exactly:
the parameters vary between subjects at any age (anatomical variation of their baselines) and the
effects act on the *biological* age (chronological age plus a per-subject gap, SD 2.5 years).
Its cross-validated error is the irreducible error a model on the images can approach but not beat
(it can beat it only by exploiting signals we did not plant, which would be a generator bug).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from bodyage_core.synth.effects import EFFECTS, AgeEffects
from bodyage_core.synth.params import sample_subject


def oracle_features(effects: AgeEffects, params_list) -> tuple[np.ndarray, list[str]]:
    names = [f"{e}.{p.name}" for e, spec in EFFECTS.items() if effects.strength(e) > 0
             for p in spec.params]
    rows = []
    for p in params_list:
        ev = p.effect_values
        row = [ev[n.split(".")[0]][n.split(".")[1]] for n in names]
        row += [1.0 if p.sex == "M" else 0.0, p.bmi]
        rows.append(row)
    return np.asarray(rows, float), names + ["sex_male", "bmi"]


def _design(X: np.ndarray) -> np.ndarray:
    # linear terms, their interactions with sex and BMI (baselines depend on both), intercept
    sex, bmi = X[:, -2:-1], X[:, -1:] - 27.0
    return np.hstack([np.ones((len(X), 1)), X, X[:, :-2] * sex, X[:, :-2] * bmi])


def noise_floor(n: int = 6000, seed: int = 12345, effects: AgeEffects | dict | str | None = None,
                folds: int = 5) -> dict[str, Any]:
    """Cross-validated oracle regression of age on the true effect parameters.

    Returns MAE / RMSE / R^2 of the oracle, the MAE of predicting the mean age, and the MAE of
    knowing the biological age exactly (the floor set by the ageing gap alone).
    """
    eff = AgeEffects.from_dict(effects)
    params = [sample_subject(seed, i, effects=eff) for i in range(n)]
    age = np.array([p.age for p in params])
    gap = np.array([p.bio_gap for p in params])
    X, names = oracle_features(eff, params)
    D = _design(X)
    pred = np.empty(n)
    idx = np.arange(n)
    for k in range(folds):
        test = idx % folds == k
        coef, *_ = np.linalg.lstsq(D[~test], age[~test], rcond=None)
        pred[test] = D[test] @ coef
    err = pred - age
    return {
        "n": n, "seed": seed, "effects": eff.to_dict(), "features": names,
        "oracle_mae": float(np.mean(np.abs(err))),
        "oracle_rmse": float(np.sqrt(np.mean(err ** 2))),
        "oracle_r2": float(1 - np.sum(err ** 2) / np.sum((age - age.mean()) ** 2)),
        "mean_predictor_mae": float(np.mean(np.abs(age - age.mean()))),
        "bio_age_known_mae": float(np.mean(np.abs(gap))),
    }


def per_effect_floor(n: int = 6000, seed: int = 12345) -> dict[str, float]:
    """Oracle MAE when only one effect is on (how informative each effect is on its own)."""
    return {name: noise_floor(n, seed, AgeEffects.only(name))["oracle_mae"] for name in EFFECTS}


def image_features(subject) -> dict[str, float]:
    """Age-relevant measurements taken from a generated subject's *images* with its organ labels
    (a segmentation oracle): fat fractions, volumes, disc water, spine curvature, ..."""
    from bodyage_core.synth.anatomy import LABEL_IDS as L

    lab = subject.labels.array
    w, f = subject.water.array.astype(np.float64), subject.fat.array.astype(np.float64)
    vox = float(np.prod(subject.water.spacing)) / 1000.0   # ml

    def ff(name):
        m = lab == L[name]
        return float(f[m].sum() / max(w[m].sum() + f[m].sum(), 1e-9))

    def vol(*names):
        return float(np.isin(lab, [L[n] for n in names]).sum()) * vox

    col = np.isin(lab, [L["vertebrae"], L["intervertebral_discs"]])
    feats = {
        "back_muscle_ff": ff("back_muscles"), "thigh_ff": ff("thigh_muscles"),
        "vertebra_ff": ff("vertebrae"),
        "back_muscle_ml": vol("back_muscles"), "thigh_ml": vol("thigh_muscles"),
        "aorta_ml": vol("aorta"), "pericardial_fat_ml": vol("pericardial_fat"),
        "disc_ml": vol("intervertebral_discs"),
        "disc_water": float(w[lab == L["intervertebral_discs"]].mean()
                            if (lab == L["intervertebral_discs"]).any() else 0.0),
        "column_water": float(w[col].mean()), "knee_water": float(w[lab == L["knee"]].mean()),
        "liver_ff": ff("liver"),
    }
    # thoracic curvature: posterior excursion of the column between heart level and the neck
    z, y, _ = np.nonzero(col)
    zh = np.nonzero(lab == L["heart"])[0]
    if zh.size and z.size:
        top = z.max()
        sel = (z >= zh.min()) & (z <= top)
        if sel.any():
            ys = np.array([y[sel & (z == k)].mean() for k in np.unique(z[sel])])
            feats["kyphosis_proxy_mm"] = float((ys.max() - ys.min()) * subject.water.spacing[1])
    feats.setdefault("kyphosis_proxy_mm", 0.0)
    return feats


def image_noise_floor(n: int = 300, seed: int = 777, grid="default",
                      effects: AgeEffects | dict | str | None = None, folds: int = 5,
                      reporter=None) -> dict[str, Any]:
    """Cross-validated regression of age on :func:`image_features` of ``n`` generated subjects:
    how much of the planted signal survives partial volume, blur, bias and noise on ``grid``."""
    from bodyage_core.progress import ensure_reporter
    from bodyage_core.synth.phantom import generate_subject

    rep = ensure_reporter(reporter)
    eff = AgeEffects.from_dict(effects)
    rows, ages, gaps = [], [], []
    names: list[str] = []
    for i in range(n):
        p = sample_subject(seed, i, effects=eff)
        feats = image_features(generate_subject(p, grid))
        names = list(feats)
        rows.append([feats[k] for k in names] + [1.0 if p.sex == "M" else 0.0, p.bmi])
        ages.append(p.age)
        gaps.append(p.bio_gap)
        rep.update("image oracle", i + 1, n)
    X = np.asarray(rows)
    age = np.asarray(ages)
    D = _design(X)
    pred = np.empty(n)
    idx = np.arange(n)
    for k in range(folds):
        test = idx % folds == k
        # ridge-regularised (features on very different scales, few subjects)
        Dt = D[~test]
        mu, sd = Dt[:, 1:].mean(0), Dt[:, 1:].std(0) + 1e-12
        Z = np.hstack([np.ones((len(Dt), 1)), (Dt[:, 1:] - mu) / sd])
        lam = 1.0 * np.eye(Z.shape[1])
        lam[0, 0] = 0
        coef = np.linalg.solve(Z.T @ Z + lam, Z.T @ age[~test])
        Zt = np.hstack([np.ones((test.sum(), 1)), (D[test][:, 1:] - mu) / sd])
        pred[test] = Zt @ coef
    err = pred - age
    return {"n": n, "seed": seed, "grid": str(grid), "features": names + ["sex_male", "bmi"],
            "image_oracle_mae": float(np.mean(np.abs(err))),
            "image_oracle_rmse": float(np.sqrt(np.mean(err ** 2))),
            "mean_predictor_mae": float(np.mean(np.abs(age - age.mean()))),
            "bio_age_known_mae": float(np.mean(np.abs(gaps)))}
