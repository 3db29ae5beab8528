"""Age networks: shapes, layer names, factory errors, partial weight loading, ensembles."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from bodyage_core.errors import BodyageError, ConfigError
from bodyage_core.evaluation.metrics import spearman
from bodyage_core.models import VGG2D, ResNet2D, ResNet3D, build_model, list_layers, load_weights
from bodyage_core.models.ensemble import (
    apply_bias_correction,
    apply_variance_scale,
    combine_members,
    fit_bias_correction,
    fit_variance_calibration,
    fit_variance_scale,
)

torch.set_num_threads(1)


def test_resnet3d_shape_and_stages():
    m = build_model({"arch": "resnet3d", "width": 4, "in_channels": 2})
    assert isinstance(m, ResNet3D)
    out = m(torch.randn(2, 2, 16, 20, 24))
    assert out.shape == (2, 2)
    assert list_layers(m) == ["stem", "layer1", "layer2", "layer3", "layer4"]
    # BasicBlock 2-2-2-2, widths double per stage, head hidden 256
    assert [len(getattr(m, f"layer{i}")) for i in range(1, 5)] == [2, 2, 2, 2]
    assert m.layer4[0].conv1.out_channels == 32
    assert m.head.fc1.out_features == 256
    for name in list_layers(m):
        assert m.get_submodule(name) is not None


@pytest.mark.parametrize("norm", ["group", "instance"])
def test_resnet3d_norms(norm):
    m = build_model({"arch": "resnet3d", "width": 4, "norm": norm})
    assert isinstance(m.stem[1], torch.nn.GroupNorm)
    m.eval()
    assert m(torch.randn(1, 1, 48, 48, 48)).shape == (1, 2)   # batch of one is fine
    with pytest.raises(ConfigError):
        build_model({"arch": "resnet3d", "norm": "layer"})


def test_sfcn3d_shape_layers_and_dropout():
    m = build_model({"arch": "sfcn3d", "width": 4, "in_channels": 2, "dropout": 0.5})
    assert m(torch.randn(2, 2, 38, 46, 36)).shape == (2, 2)
    assert list_layers(m) == ["stem", "layer1", "layer2", "layer3", "layer4"]
    assert sum(p.numel() for p in m.parameters()) < 20000     # small by design
    m.eval()
    x = torch.randn(1, 2, 17, 20, 23)                          # odd sizes, batch of one
    torch.testing.assert_close(m(x), m(x))                     # dropout off in eval
    from bodyage_core.models import is_3d
    assert is_3d({"arch": "sfcn3d"})


def test_resnet3d_default_width_is_64():
    m = build_model()
    assert m.stem[0].out_channels == 64 and m.stem[0].in_channels == 1


@pytest.mark.parametrize("depth", [18, 50])
def test_resnet2d(depth):
    m = build_model({"arch": "resnet2d", "depth": depth, "width": 4, "in_channels": 3})
    assert isinstance(m, ResNet2D)
    assert m(torch.randn(2, 3, 32, 48)).shape == (2, 2)
    assert list_layers(m) == ["stem", "layer1", "layer2", "layer3", "layer4"]


def test_vgg2d_layers():
    m = build_model({"arch": "vgg2d", "width": 4, "in_channels": 2})
    assert isinstance(m, VGG2D)
    assert m(torch.randn(2, 2, 32, 32)).shape == (2, 2)
    layers = list_layers(m)
    assert len(layers) == 5
    for name in layers:
        assert isinstance(m.get_submodule(name), torch.nn.ReLU)


def test_factory_errors():
    with pytest.raises(ConfigError):
        build_model({"arch": "transformer"})
    with pytest.raises(ConfigError):
        build_model({"arch": "resnet3d", "depth": 50})
    with pytest.raises(ConfigError):
        build_model({"arch": "resnet3d", "width": 0})


def test_partial_weight_load_torchvision_layout(tmp_path):
    src = ResNet2D(in_channels=3, depth=18, width=4)
    state = {}
    for k, v in src.state_dict().items():  # rename to torchvision's layout + a classifier
        if k.startswith("head."):
            continue
        k = k.replace("stem.0.", "conv1.").replace("stem.1.", "bn1.")
        state[k] = v.clone()
    state["fc.weight"] = torch.zeros(1000, 32)
    path = tmp_path / "resnet18.pth"
    torch.save(state, path)
    dst = build_model({"arch": "resnet2d", "depth": 18, "width": 4, "in_channels": 2,
                       "weights": str(path)})
    rep = dst.weights_report
    assert "stem.0.weight" in rep["adapted"]          # 3 -> 2 input channels
    assert "layer1.0.conv1.weight" in rep["matched"]
    assert "fc.weight" in rep["skipped"]
    assert any(k.startswith("head.") for k in rep["missing"])
    assert torch.equal(dst.layer3[0].conv1.weight, src.layer3[0].conv1.weight)


def test_weight_load_errors(tmp_path):
    m = ResNet2D(in_channels=2, depth=18, width=4)
    with pytest.raises(BodyageError, match="not found"):
        load_weights(m, tmp_path / "missing.pt")
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a torch file")
    with pytest.raises(BodyageError, match="cannot read"):
        load_weights(m, bad)
    other = tmp_path / "other.pt"
    torch.save({"foo.weight": torch.zeros(3)}, other)
    with pytest.raises(BodyageError, match="no tensor"):
        load_weights(m, other)


def test_combine_members_formula():
    mu = np.array([[50.0, 30.0], [54.0, 30.0]])
    var = np.array([[4.0, 1.0], [4.0, 1.0]])
    mean, v = combine_members(mu, var)
    np.testing.assert_allclose(mean, [52.0, 30.0])
    # mean of (sigma^2 + mu^2) - mean^2 = 4 + spread 4
    np.testing.assert_allclose(v, [8.0, 1.0])
    # NaN members are ignored
    mu2 = np.array([[50.0], [np.nan]])
    mean2, v2 = combine_members(mu2, np.array([[4.0], [0.0]]))
    np.testing.assert_allclose([mean2[0], v2[0]], [50.0, 4.0])


def test_bias_correction_and_calibration():
    age = np.linspace(20, 80, 50)
    pred = 0.7 * age + 15          # regression to the mean
    fit = fit_bias_correction(age, pred)
    assert fit["a"] == pytest.approx(0.7) and fit["b"] == pytest.approx(15)
    np.testing.assert_allclose(apply_bias_correction(pred, fit), age)
    flat = fit_bias_correction(age, np.full(50, 40.0))
    assert flat["a"] == 1.0 and "identity_reason" in flat
    rng = np.random.default_rng(0)
    err = rng.normal(0, 3, 4000)
    cal = fit_variance_scale(err, np.full(4000, 1.0))
    assert apply_variance_scale(np.array([1.0]), cal)[0] == pytest.approx(9.0, rel=0.1)
    var = rng.uniform(0.01, 20, 3000)                # heteroscedastic: scale and floor found
    cal2 = fit_variance_scale(rng.normal(0, np.sqrt(2 * var + 9)), var)
    assert cal2["scale"] == pytest.approx(2.0, rel=0.25)
    assert cal2["floor"] == pytest.approx(9.0, rel=0.35)
    const = fit_variance_scale(err, np.zeros(4000))
    assert const["floor"] == pytest.approx(9.0, rel=0.1)


def test_mean_variance_calibration_fits_a_scale_and_keeps_the_ranking():
    # a mean-variance ensemble's own variance ranks the subjects; fitted with a floor on a few
    # dozen validation subjects the scale can collapse (every subject the same sigma)
    rng = np.random.default_rng(3)
    var = rng.uniform(1, 40, 5000)
    err = rng.normal(0, np.sqrt(0.5 * var))
    cal = fit_variance_scale(err, var, floor=False)
    assert cal["floor"] == 0.0 and cal["method"] == "scale"
    assert cal["scale"] == pytest.approx(0.5, rel=0.05)
    sig = np.sqrt(apply_variance_scale(var, cal))
    assert np.all(np.diff(sig[np.argsort(var)]) >= 0)          # monotone: ranking unchanged
    assert np.mean(np.abs(err) <= 1.959964 * sig) == pytest.approx(0.95, abs=0.01)
    collapsed = 0
    for seed in range(40):          # 45 validation subjects, as one IXI fold pools
        r = np.random.default_rng(seed)
        v = r.uniform(20, 80, 45)
        e = r.normal(0, np.sqrt(0.3 * v + 20))
        collapsed += fit_variance_scale(e, v)["scale"] < 1e-3
        assert fit_variance_scale(e, v, floor=False)["scale"] > 0.05
    assert collapsed > 0            # the floor fit does collapse on some such sets


def test_calibration_follows_a_qc_score_that_predicts_the_error():
    # degraded inputs: the error SD grows with the QC score as qc ** 1, while the networks'
    # variance is nearly blind to it (as measured on the degraded synthetic cohort)
    rng = np.random.default_rng(5)

    def cohort(n):
        qc = np.exp(rng.normal(0.0, 0.5, n))
        var = rng.uniform(8, 12, n)
        return qc, var, rng.normal(0, 3.0 * qc)

    qc, var, err = cohort(300)                       # a large validation set
    cal = fit_variance_calibration(err, var, qc, floor=False)
    assert cal["chosen"] == "terms" and list(cal["terms"]) == ["qc"], cal["why"]
    assert cal["terms"]["qc"]["power"] == pytest.approx(2.0, abs=0.6)   # variance ~ qc ** 2
    assert cal["cv_nll_terms"] < cal["cv_nll_scale"]
    q2, v2, e2 = cohort(4000)                        # new subjects, out of sample
    sig = np.sqrt(apply_variance_scale(v2, cal, q2))
    base = np.sqrt(apply_variance_scale(v2, cal))    # no score: the scale-only fallback
    assert np.allclose(base, np.sqrt(v2 * cal["fallback"]["scale"]))
    assert spearman(sig, np.abs(e2)) > 0.3 > spearman(base, np.abs(e2)) + 0.2
    for z, nominal in ((1.0, 0.683), (1.959964, 0.95)):   # the scale's sampling error at
        assert np.mean(np.abs(e2) <= z * sig) == pytest.approx(nominal, abs=0.05)  # n=300
    # a score beyond the validation range is clipped: no extrapolation without evidence
    far = apply_variance_scale(np.array([10.0]), cal, np.array([1e3]))[0]
    edge = apply_variance_scale(np.array([10.0]), cal,
                                np.array([cal["terms"]["qc"]["high"]]))[0]
    assert far == pytest.approx(edge)
    # a calibration file written when the QC term was the only one still applies
    old = {"scale": cal["scale"], "floor": cal["floor"], "qc": cal["terms"]["qc"],
           "fallback": cal["fallback"]}
    assert np.allclose(apply_variance_scale(v2, old, q2), sig ** 2)


def test_calibration_widens_sigma_for_predictions_near_the_cohorts_centre():
    """A degraded scan regresses to the cohort's centre whatever its age, so after the bias
    correction the errors are largest there; the ``centre`` term (distance of the raw
    prediction from the validation mean age) lets sigma follow it, and the run stores the
    centre with the fit."""
    from bodyage_core.models.ensemble import centre_distance

    rng = np.random.default_rng(11)

    def cohort(n):
        mean = rng.uniform(40, 80, n)
        d = np.abs(mean - 60.0)
        return mean, rng.uniform(8, 12, n), rng.normal(0, 2.0 + 8.0 * np.exp(-d / 4))

    mean, var, err = cohort(300)
    cal = fit_variance_calibration(err, var, {"centre": centre_distance(mean, 60.0)},
                                   floor=False)
    assert cal["chosen"] == "terms" and cal["terms"]["centre"]["power"] < -0.5, cal["why"]
    m2, v2, e2 = cohort(4000)
    sig = np.sqrt(apply_variance_scale(v2, cal, {"centre": centre_distance(m2, 60.0)}))
    assert spearman(sig, np.abs(e2)) > 0.3
    assert sig[np.abs(m2 - 60) < 2].mean() > 1.5 * sig[np.abs(m2 - 60) > 15].mean()
    assert centre_distance(61.5, 60.0) == pytest.approx(2.5)
    assert centre_distance(61.5, None) is None


def test_calibration_follows_the_extent_of_truncated_scans_beside_the_qc_score():
    """Two covariates: the QC score says nothing here, a truncated field of view (a smaller
    head-foot extent) doubles the error SD. The search keeps the extent's term alone, with a
    negative power (less body, more variance)."""
    rng = np.random.default_rng(7)

    def cohort(n):
        qc = np.exp(rng.normal(0.0, 0.4, n))
        extent = np.where(rng.random(n) < 0.2, rng.uniform(0.6, 0.8, n), 1.0)
        extent = np.clip(extent - rng.uniform(0, 0.03, n), 0, 1)
        var = rng.uniform(8, 12, n)
        return {"qc": qc, "extent": extent}, var, rng.normal(0, 3.0 / extent ** 2.5)

    covs, var, err = cohort(300)
    cal = fit_variance_calibration(err, var, covs, floor=False)
    assert cal["chosen"] == "terms" and "extent" in cal["terms"], cal["why"]
    assert cal["terms"]["extent"]["power"] < -2.0
    assert abs(cal["terms"].get("qc", {}).get("power", 0.0)) <= 0.5
    assert "head-foot extent" in cal["why"]
    c2, v2, e2 = cohort(4000)
    sig = np.sqrt(apply_variance_scale(v2, cal, c2))
    assert spearman(sig, np.abs(e2)) > 0.25
    assert np.allclose(apply_variance_scale(v2, cal, {"qc": c2["qc"]}),      # extent missing:
                       v2 * cal["fallback"]["scale"])                          # scale only


def test_calibration_keeps_scale_only_where_the_qc_score_says_nothing():
    rng = np.random.default_rng(6)
    qc = np.exp(rng.normal(0.0, 0.5, 120))
    var = rng.uniform(1, 40, 120)
    err = rng.normal(0, np.sqrt(0.5 * var))          # the variance alone explains the error
    cal = fit_variance_calibration(err, var, qc, floor=False)
    assert cal["chosen"] == "scale" and "terms" not in cal, cal["why"]
    assert cal["scale"] == fit_variance_scale(err, var, floor=False)["scale"]
    few = fit_variance_calibration(err[:10], var[:10], qc[:10], floor=False)
    assert few["chosen"] == "scale" and "10 validation subjects" in few["why"]


def test_bias_correction_shrunk_by_loo():
    rng = np.random.default_rng(1)
    age = rng.uniform(20, 80, 40)
    # a real bias with little noise: the LOO choice keeps (most of) the correction
    pred = 0.7 * age + 15 + rng.normal(0, 0.5, 40)
    fit = fit_bias_correction(age, pred, shrink="loo")
    assert fit["shrink"] >= 0.9
    corr = apply_bias_correction(pred, fit)
    assert np.mean(np.abs(corr - age)) < np.mean(np.abs(pred - age))
    # regression dilution of pure noise around the mean age: the full inverse fit explodes
    # the error; the LOO choice stays near the raw prediction and is not worse than raw
    pred2 = age.mean() + 0.8 * (age - age.mean()) + rng.normal(0, 9, 40)
    full = fit_bias_correction(age, pred2)
    fit2 = fit_bias_correction(age, pred2, shrink="loo")
    assert 0.0 <= fit2["shrink"] <= 1.0 and "loo_mae" in fit2
    assert fit2["loo_mae"][fit2["shrink"]] <= fit2["loo_mae"][0.0] + 1e-12
    # the effective (a, b) reproduce pred + lam * (full - pred)
    lam = fit2["shrink"]
    want = pred2 + lam * (apply_bias_correction(pred2, full) - pred2)
    np.testing.assert_allclose(apply_bias_correction(pred2, fit2), want, atol=1e-9)
    zero = fit_bias_correction(age, pred2, shrink=0.0)
    np.testing.assert_allclose(apply_bias_correction(pred2, zero), pred2, atol=1e-9)
    with pytest.raises(ValueError):
        fit_bias_correction(age, pred2, shrink=1.5)


def test_bias_policy_full_unless_the_slope_is_weak():
    """``full`` inverts the validation fit (the gap loses its age dependence); a model that
    tracks age weakly (slope < MIN_FULL_SLOPE) would get its noise multiplied by 1/a, corrected
    ages far outside the human range: the policy falls back to the leave-one-out shrink and
    says why."""
    from bodyage_core.models.ensemble import MIN_FULL_SLOPE, fit_bias_policy

    rng = np.random.default_rng(2)
    age = rng.uniform(20, 80, 60)
    good = 0.8 * age + 10 + rng.normal(0, 3, 60)
    fit = fit_bias_policy(age, good)
    assert "fallback" not in fit and "shrink" not in fit and fit["a"] >= MIN_FULL_SLOPE
    corr = apply_bias_correction(good, fit)
    gap = corr - age
    assert abs(np.polyfit(age, gap, 1)[0]) < 0.05            # age dependence removed
    weak = 0.1 * age + 45 + rng.normal(0, 10, 60)
    full = fit_bias_correction(age, weak)
    assert full["a"] < MIN_FULL_SLOPE
    exploded = apply_bias_correction(weak, full)
    assert exploded.max() - exploded.min() > 150              # what full inversion would give
    safe = fit_bias_policy(age, weak)
    assert "slope" in safe["fallback"] and 0.0 <= safe["shrink"] <= 1.0
    corr = apply_bias_correction(weak, safe)
    assert np.mean(np.abs(corr - age)) <= np.mean(np.abs(weak - age)) * 1.05
    assert corr.min() > 0 and corr.max() < 120
    assert fit_bias_policy(age, weak, "loo")["shrink"] == safe["shrink"]
    with pytest.raises(ValueError):
        fit_bias_policy(age, weak, "half")
