"""The synthetic neck-to-knee Dixon generator: geometry, determinism, anatomy, age effects, mask."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from bodyage_core.errors import ConfigError
from bodyage_core.synth import (
    EFFECTS,
    LABEL_IDS,
    LABELS,
    AgeEffects,
    SynthGrid,
    generate_subject,
    sample_subject,
)

SMALL = (8.0, 8.0, 10.0)      # ~ 62 x 49 x 111 voxels: fast
MEDIUM = (6.0, 6.0, 8.0)      # discs and knees resolvable


def _gen(index=3, age=None, grid=SMALL, effects=None, **kw):
    p = sample_subject(0, index, effects=effects, **kw)
    if age is not None:
        p = p.with_age(age, 0.0)
    return generate_subject(p, grid)


def _ff(subj, organ):
    m = subj.labels.array == LABEL_IDS[organ]
    w, f = subj.water.array[m], subj.fat.array[m]
    return float(f.sum() / (w.sum() + f.sum()))


def _count(subj, organ):
    return int((subj.labels.array == LABEL_IDS[organ]).sum())


# -- grid, geometry -----------------------------------------------------------------------------
def test_named_grids_cover_the_ukb_field_of_view():
    d = SynthGrid.resolve("default")
    f = SynthGrid.resolve("full")
    assert f.shape == (370, 174, 224) and f.spacing == (2.232, 2.232, 3.0)
    assert d.shape == (185, 87, 112)
    for g in (d, f, SynthGrid.resolve((5, 5, 6))):
        ext = np.array(g.spacing) * np.array(g.shape[::-1])
        assert np.allclose(ext, [499.97, 388.37, 1110.0], atol=6)
    with pytest.raises(ConfigError):
        SynthGrid.resolve("huge")


def test_volumes_shape_dtype_affine_ras():
    s = _gen()
    g = SynthGrid.resolve(SMALL)
    for v in (s.water, s.fat, s.labels, s.age_mask):
        assert v.data.shape == (1, *g.shape)
        assert v.orientation == "RAS"
        assert np.allclose(v.spacing, SMALL)
        assert np.allclose(v.affine, g.affine)
    assert s.water.data.dtype == np.float32 and s.fat.data.dtype == np.float32
    assert s.labels.data.dtype == np.uint8 and s.age_mask.data.dtype == np.uint8
    assert s.water.channels == ("water",) and s.fat.channels == ("fat",)
    # the field of view is centred on the origin; world z grows towards the head
    c = s.water.voxel_to_world(np.array(g.shape) / 2 - 0.5)
    assert np.allclose(c, 0, atol=1e-6)


def test_orientation_head_up_anterior_front_right_is_liver():
    s = _gen(grid=MEDIUM)
    lab = s.labels.array
    z, y, x = (np.nonzero(lab == LABEL_IDS["liver"]))
    zk, _, _ = np.nonzero(lab == LABEL_IDS["knee"])
    assert z.mean() > zk.mean()                     # liver above the knees (z = superior)
    xw = s.labels.voxel_to_world(np.stack([z, y, x], 1))
    assert xw[:, 0].mean() > 0                       # liver on the subject's right (+x)
    zh, yh, xh = np.nonzero(lab == LABEL_IDS["heart"])
    hw = s.labels.voxel_to_world(np.stack([zh, yh, xh], 1))
    assert hw[:, 0].mean() < 0                       # heart on the left
    zv, yv, xv = np.nonzero(lab == LABEL_IDS["vertebrae"])
    vw = s.labels.voxel_to_world(np.stack([zv, yv, xv], 1))
    assert hw[:, 1].mean() > vw[:, 1].mean()         # heart anterior (+y) of the spine


# -- determinism ------------------------------------------------------------------------------
def test_deterministic_from_seed_and_index():
    a, b = _gen(5), _gen(5)
    for k in ("water", "fat", "labels", "age_mask"):
        assert np.array_equal(getattr(a, k).data, getattr(b, k).data)
    assert a.truth == b.truth
    c = _gen(6)
    assert not np.array_equal(a.water.data, c.water.data)
    p1, p2 = sample_subject(1, 5), sample_subject(0, 5)
    assert p1.age != p2.age


def test_overrides_do_not_change_other_draws():
    p = sample_subject(0, 11)
    q = sample_subject(0, 11, age=70.0)
    assert q.age == 70.0 and q.anatomy == p.anatomy and q.baselines == p.baselines
    assert q.bmi == p.bmi and q.sex == p.sex and q.site == p.site


# -- anatomy and contrast ---------------------------------------------------------------------
def test_labels_cover_the_named_organs():
    s = _gen(grid=MEDIUM)
    present = set(np.unique(s.labels.array).tolist())
    missing = [LABELS[i] for i in LABELS if i not in present]
    assert not missing, missing


def test_dixon_contrast_per_tissue():
    s = _gen(grid=MEDIUM)
    lab, w, f = s.labels.array, s.water.array, s.fat.array

    def mean(img, organ):
        return float(img[lab == LABEL_IDS[organ]].mean())

    assert mean(f, "subcutaneous_fat") > 4 * mean(w, "subcutaneous_fat")
    assert mean(w, "other_muscle") > 4 * mean(f, "other_muscle")
    for lung in ("lung_left", "lung_right"):
        assert mean(w, lung) < 0.2 * mean(w, "other_muscle")
        assert mean(f, lung) < 0.2 * mean(f, "subcutaneous_fat")
    assert mean(f, "vertebrae") > mean(f, "other_muscle") * 3          # fatty marrow
    assert mean(w, "spinal_canal") > mean(w, "other_muscle")           # CSF
    assert mean(w, "intervertebral_discs") > mean(w, "vertebrae")      # hydrated discs
    assert mean(w, "background") < 0.1 * mean(w, "other_muscle")


def test_sex_and_bmi_change_body_shape():
    def body_stats(sex, bmi):
        s = _gen(2, age=60, sex=sex, bmi=bmi)
        lab = s.labels.array
        body = lab > 0
        sub = lab == LABEL_IDS["subcutaneous_fat"]
        # trunk width at the waist (widest extent of the body in the slice at L3)
        zs = np.nonzero(lab == LABEL_IDS["kidney_left"])[0]
        zw = int(zs.min())
        width = np.ptp(np.nonzero(body[zw].any(axis=0))[0]) * SMALL[0]
        return body.sum(), sub.sum() / body.sum(), width

    lean_m, obese_m = body_stats("M", 20), body_stats("M", 36)
    assert obese_m[0] > 1.2 * lean_m[0]
    assert obese_m[1] > lean_m[1] + 0.05
    assert obese_m[2] > lean_m[2]
    f25, m25 = body_stats("F", 25), body_stats("M", 25)
    assert f25[1] > m25[1]                      # women: more subcutaneous fat at equal BMI
    assert f25[0] < m25[0]                      # and a smaller body


def test_noise_and_bias_make_images_non_trivial():
    s = _gen()
    lab, w = s.labels.array, s.water.array
    m = lab == LABEL_IDS["thigh_muscles"]
    cv = w[m].std() / w[m].mean()
    assert 0.03 < cv < 0.6
    bg = w[lab == 0]
    assert bg.mean() > 0                       # Rician floor in the background


# -- age effects ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def young_old():
    return _gen(9, age=45, grid=MEDIUM), _gen(9, age=80, grid=MEDIUM)


def test_age_effects_change_what_they_claim(young_old):
    y, o = young_old
    ty, to = y.truth, o.truth
    assert to["measured"]["disc_total_mm"] < 0.85 * ty["measured"]["disc_total_mm"]
    assert to["measured"]["kyphosis_deg"] > ty["measured"]["kyphosis_deg"] + 10
    assert _count(o, "intervertebral_discs") < _count(y, "intervertebral_discs")
    assert _ff(o, "back_muscles") > _ff(y, "back_muscles") + 0.08
    assert _count(o, "back_muscles") < _count(y, "back_muscles")
    assert _ff(o, "thigh_muscles") > _ff(y, "thigh_muscles") + 0.05
    assert _count(o, "thigh_muscles") < _count(y, "thigh_muscles")
    assert _count(o, "aorta") > _count(y, "aorta")
    assert _count(o, "pericardial_fat") > _count(y, "pericardial_fat")
    assert _ff(o, "vertebrae") > _ff(y, "vertebrae")
    # liver is off by default: unchanged
    assert to["effect_values"]["liver"] == ty["effect_values"]["liver"]


def test_mask_ids_follow_the_enabled_effects(young_old):
    _, o = young_old
    ids = set(np.unique(o.age_mask.array).tolist()) - {0}
    assert ids == {EFFECTS[n].id for n in AgeEffects().enabled()}
    lab, m = o.labels.array, o.age_mask.array
    assert (m[lab == LABEL_IDS["intervertebral_discs"]] == EFFECTS["spine"].id).all()
    assert (m[lab == LABEL_IDS["back_muscles"]] == EFFECTS["back_muscle"].id).all()
    assert (m[lab == LABEL_IDS["heart"]] == EFFECTS["heart"].id).all()
    # lungs do not age; only the few lung voxels where the unaged aorta/spine lay are marked
    assert (m[lab == LABEL_IDS["lung_left"]] > 0).mean() < 0.05
    only = _gen(9, age=80, grid=SMALL, effects=AgeEffects.only("heart", "knee"))
    assert set(np.unique(only.age_mask.array).tolist()) == {0, 5, 6}


def test_switching_an_effect_off_removes_its_change_and_mask():
    eff = AgeEffects().with_strength("back_muscle", 0.0)
    y, o = _gen(4, age=45, effects=eff), _gen(4, age=80, effects=eff)
    # back muscles away from the other effects' regions (the spine moves next to them) are
    # exactly as they were at 45
    bm = (y.labels.array == LABEL_IDS["back_muscles"]) & (o.labels.array == y.labels.array)
    far = ~ndimage.binary_dilation((o.age_mask.array > 0) | (y.age_mask.array > 0),
                                   np.ones((5, 5, 5), bool))
    assert (bm & far).sum() > 50
    assert np.array_equal(y.water.array[bm & far], o.water.array[bm & far])
    assert np.array_equal(y.fat.array[bm & far], o.fat.array[bm & far])
    assert EFFECTS["back_muscle"].id not in np.unique(o.age_mask.array)
    assert _ff(o, "thigh_muscles") > _ff(y, "thigh_muscles")     # the others still act
    none_y, none_o = (_gen(4, age=a, effects=AgeEffects.none()) for a in (45, 80))
    assert np.array_equal(none_y.water.data, none_o.water.data)
    assert np.array_equal(none_y.labels.data, none_o.labels.data)
    assert not none_o.age_mask.array.any()


@pytest.mark.parametrize("name", [n for n in EFFECTS])
def test_age_changes_the_images_only_inside_the_mask(name):
    """Image-vs-mask sanity: with one effect on, ageing 45 -> 80 changes labels only inside the
    mask and intensities only within the point-spread radius (2 voxels) of it."""
    eff = AgeEffects.only(name)
    y, o = _gen(7, age=45, effects=eff), _gen(7, age=80, effects=eff)
    m = (y.age_mask.array > 0) | (o.age_mask.array > 0)
    assert m.any()
    assert set(np.unique(o.age_mask.array).tolist()) == {0, EFFECTS[name].id}
    near = ndimage.binary_dilation(m, np.ones((5, 5, 5), bool))
    dimg = np.abs(y.water.array - o.water.array) + np.abs(y.fat.array - o.fat.array)
    assert dimg[near].max() > 1.0                     # it does change something ...
    assert np.all(dimg[~near] == 0)                   # ... and nothing outside
    assert np.all((y.labels.array != o.labels.array) <= m)


def test_strength_scales_the_effect():
    p = sample_subject(0, 3).with_age(80, 0)
    v1 = p.with_effects({"aorta": 1.0}).effect_values["aorta"]["diameter_mm"]
    v2 = p.with_effects({"aorta": 2.0}).effect_values["aorta"]["diameter_mm"]
    v0 = p.with_effects({"aorta": 0.0}).effect_values["aorta"]["diameter_mm"]
    assert v0 == pytest.approx(p.baselines["aorta"]["diameter_mm"])
    assert v2 - v0 == pytest.approx(2 * (v1 - v0))


def test_age_effects_parse():
    assert AgeEffects.parse("spine=2,back_muscle=0").strength("spine") == 2.0
    assert AgeEffects.parse("spine=2,back_muscle=0").enabled()[0] == "spine"
    assert AgeEffects.parse("only:heart,knee").enabled() == ["heart", "knee"]
    assert AgeEffects.parse("none").enabled() == []
    assert AgeEffects.parse("").strength("liver") == 0.0
    for bad in ("lungs=1", "spine=x", "spine=-1", "spine"):
        with pytest.raises(ConfigError):
            AgeEffects.parse(bad)


# -- cohort-level distributions and the noise floor ----------------------------------------------
def test_cohort_demographics():
    ps = [sample_subject(0, i) for i in range(240)]
    ages = np.array([p.age for p in ps])
    assert ages.min() >= 44 and ages.max() <= 82 and 58 < ages.mean() < 68
    groups = {(p.sex, p.bmi_group) for p in ps}
    assert len(groups) == 6
    for p in ps:
        lo, hi = {"healthy": (0, 25), "overweight": (25, 30), "obese": (30, 99)}[p.bmi_group]
        assert lo <= p.bmi < hi
    assert {p.site for p in ps} == {"site1", "site2", "site3"}


def test_noise_floor_oracle():
    from bodyage_core.synth.oracle import noise_floor

    r = noise_floor(n=900, seed=1)
    assert r["bio_age_known_mae"] < r["oracle_mae"] < 0.5 * r["mean_predictor_mae"]
    r0 = noise_floor(n=600, seed=1, effects="none")
    assert r0["oracle_mae"] > 0.9 * r0["mean_predictor_mae"]     # no effects: no age signal


def test_image_features_see_the_planted_effects(young_old):
    from bodyage_core.synth.oracle import image_features

    fy, fo = (image_features(s) for s in young_old)
    assert fo["back_muscle_ff"] > fy["back_muscle_ff"]
    assert fo["thigh_ff"] > fy["thigh_ff"]
    assert fo["aorta_ml"] > fy["aorta_ml"]
    assert fo["disc_water"] < fy["disc_water"]
    assert fo["kyphosis_proxy_mm"] > fy["kyphosis_proxy_mm"]


# subject 4 of seed 7 on a 14 x 14 x 18 mm grid, measured before the phantom was split into
# modules: voxels per organ label and per age-effect id, and the image sums
EXPECTED_7_4 = {
    "labels": {0: 42834, 1: 2824, 2: 4584, 3: 327, 4: 5939, 5: 1152, 6: 616, 7: 655, 8: 12,
               9: 145, 10: 93, 11: 53, 12: 535, 13: 38, 14: 21, 15: 236, 17: 24, 18: 496,
               19: 1364, 20: 182, 21: 172, 22: 114, 23: 4, 24: 76},
    "age_mask": {0: 59487, 1: 294, 2: 614, 3: 1634, 4: 57, 5: 238, 6: 172},
    "water": 8956189.0, "fat": 8345671.0,
}


def test_generator_output_is_fixed_by_the_seed_whatever_module_paints_it():
    """The phantom is split into grid, canvas, spine, anatomy, images and age-mask modules; the
    same parameters must keep giving the same subject (within a voxel per organ and 1e-5 of the
    image sums, so that another CPU's last-bit differences in exp/sin do not fail it)."""
    from bodyage_core.synth import generate_subject, sample_subject

    s = generate_subject(sample_subject(7, 4), (14, 14, 18))
    for kind in ("labels", "age_mask"):
        ids, counts = np.unique(getattr(s, kind).data, return_counts=True)
        got = dict(zip(ids.tolist(), counts.tolist()))
        assert set(got) == set(EXPECTED_7_4[kind]), kind
        for k, n in EXPECTED_7_4[kind].items():
            assert abs(got[k] - n) <= 2, (kind, k, got[k], n)
    for kind in ("water", "fat"):
        assert float(getattr(s, kind).data.sum()) == pytest.approx(EXPECTED_7_4[kind], rel=1e-5)
