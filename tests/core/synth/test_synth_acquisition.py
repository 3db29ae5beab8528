"""Synthetic acquisition quality (synth.acquisition) and organ-specific accelerated ageing
(synth.acceleration): off = bit-identical, deterministic, recorded in truth and cohort index."""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy import ndimage

from bodyage_core.errors import ConfigError
from bodyage_core.synth import (
    ACQUISITION_EFFECTS,
    EFFECTS,
    LABEL_IDS,
    Acceleration,
    Acquisition,
    SynthGrid,
    generate_cohort,
    generate_subject,
    sample_subject,
)
from bodyage_core.synth.acquisition import station_slices
from bodyage_core.synth.effects import realize

SMALL = (8.0, 8.0, 10.0)      # ~ 62 x 49 x 111 voxels: 0.1 s a subject
ALL_ON = "shift=1,bias=1,ghost=1,noise=1,swap=1,truncate=1"


def _gen(index=3, grid=SMALL, **kw):
    return generate_subject(sample_subject(0, index, **kw), grid)


def _arrays(s):
    return {k: np.array(getattr(s, k).data[0]) for k in ("water", "fat", "labels", "age_mask")}


def _same(a, b):
    return all(np.array_equal(a[k], b[k]) for k in a)


# -- off is off -------------------------------------------------------------------------------
@pytest.mark.parametrize("index", [3, 4])
def test_off_is_bit_identical_to_the_generator_without_the_options(index):
    base = _gen(index)
    ref = _arrays(base)
    for acq, acc in ((None, None), ("", ""), ("none", "none"), (Acquisition(), Acceleration())):
        s = _gen(index, acquisition=acq, accelerate=acc)
        assert _same(_arrays(s), ref)
        assert s.truth == base.truth
        assert "acquisition" not in s.truth and "acceleration" not in s.truth
    # options given but nobody hit: the same images; the truth says so ({}: nothing happened)
    s = _gen(index, acquisition=ALL_ON.replace("=1", "=0"), accelerate="heart=+10@0,knee=-3@0")
    assert _same(_arrays(s), ref)
    assert s.truth["acquisition"] == {} and s.truth["acceleration"] == {}
    assert s.truth["effect_values"] == base.truth["effect_values"]


def test_cohort_writer_off_writes_the_same_files(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    generate_cohort(a, 2, seed=5, grid=(12, 12, 15))
    generate_cohort(b, 2, seed=5, grid=(12, 12, 15), acquisition="none", accelerate="")
    for sid in ("synth005_00000", "synth005_00001"):
        for f in ("water.nii.gz", "fat.nii.gz", "labels.nii.gz", "age_mask.nii.gz", "truth.json"):
            assert (a / "subjects" / sid / f).read_bytes() == (b / "subjects" / sid / f).read_bytes()
    cfg = json.loads((b / "synth.json").read_text())
    assert "acquisition" not in cfg and "accelerate" not in cfg
    from bodyage_core.cohort import Workspace

    with Workspace.open(b) as w:
        meta = w.db.get_subject("synth005_00000").meta
        assert "acquisition" not in meta and "acceleration" not in meta


# -- each acquisition effect -------------------------------------------------------------------
@pytest.mark.parametrize("name", list(ACQUISITION_EFFECTS))
def test_each_effect_is_deterministic_recorded_and_changes_the_images(name):
    off = _arrays(_gen(3))
    s1, s2 = _gen(3, acquisition=f"{name}=1"), _gen(3, acquisition=f"{name}=1")
    a1 = _arrays(s1)
    assert _same(a1, _arrays(s2))
    assert list(s1.truth["acquisition"]) == [name]
    assert s1.truth == s2.truth
    # the anatomy's truth (labels, mask) is untouched; the images change
    assert np.array_equal(a1["labels"], off["labels"])
    assert np.array_equal(a1["age_mask"], off["age_mask"])
    assert not (np.array_equal(a1["water"], off["water"]) and np.array_equal(a1["fat"], off["fat"]))
    assert np.all(a1["water"] == np.rint(a1["water"])) and a1["water"].min() >= 0
    # another effect on beside it draws nothing from this one's stream
    both = sample_subject(0, 3, acquisition=ALL_ON).acquisition
    assert both[name] == sample_subject(0, 3, acquisition=f"{name}=1").acquisition[name]
    # another subject is hit differently (a different station, side or field)
    others = [sample_subject(0, i, acquisition=f"{name}=1").acquisition[name] for i in range(12)]
    assert name in ("noise",) or len({json.dumps(o, sort_keys=True) for o in others}) > 1


def test_rates_choose_about_that_fraction_of_subjects():
    acq = Acquisition.parse("noise=0.3@2,swap=0.1,truncate=0.5")
    draws = [acq.draw(7, i) for i in range(600)]
    for name, rate in (("noise", 0.3), ("swap", 0.1), ("truncate", 0.5)):
        frac = np.mean([name in d for d in draws])
        assert abs(frac - rate) < 0.06, (name, frac)
    assert acq.draw(7, 11) == Acquisition.parse("truncate=0.5,swap=0.1,noise=0.3@2").draw(7, 11)
    assert all(d["noise"]["factor"] == 2.0 for d in draws if "noise" in d)


def test_swap_exchanges_water_and_fat_in_exactly_one_station():
    g = SynthGrid.resolve(SMALL)
    off = _gen(5)
    stations = {sample_subject(0, i, acquisition="swap=1").acquisition["swap"]["station"]
                for i in range(12)}
    assert len(stations) >= 3
    s = _gen(5, acquisition="swap=1")
    rec = s.truth["acquisition"]["swap"]
    k0, k1, z0, z1 = station_slices(g)[rec["station"]]
    assert rec["slices"] == [k0, k1] and rec["z_mm"] == [z0, z1]
    _, _, zs = g.axes()
    assert np.all((zs[k0:k1] >= z0) & (zs[k0:k1] < z1 + 1e-3))
    w0, f0, w1, f1 = off.water.array, off.fat.array, s.water.array, s.fat.array
    assert np.array_equal(w1[k0:k1], f0[k0:k1]) and np.array_equal(f1[k0:k1], w0[k0:k1])
    out = np.ones(len(zs), bool)
    out[k0:k1] = False
    assert np.array_equal(w1[out], w0[out]) and np.array_equal(f1[out], f0[out])
    # the six stations tile the grid
    st = station_slices(g)
    assert st[0][0] == 0 and st[-1][1] == g.shape[0]
    assert all(a[1] == b[0] for a, b in zip(st[:-1], st[1:], strict=True))


def test_truncation_zeroes_beyond_the_recorded_z_on_either_side():
    g = SynthGrid.resolve(SMALL)
    _, _, zs = g.axes()
    sides = {}
    for i in range(20):
        d = sample_subject(0, i, acquisition="truncate=1@80").acquisition["truncate"]
        sides.setdefault(d["side"], i)
    assert set(sides) == {"bottom", "top"}
    for side, i in sides.items():
        off = _gen(i)
        s = _gen(i, acquisition="truncate=1@80")
        rec = s.truth["acquisition"]["truncate"]
        assert rec["side"] == side and rec["cut_mm"] == 80
        cut = zs < rec["z_mm"] if side == "bottom" else zs > rec["z_mm"]
        assert 6 <= cut.sum() <= 10                          # 80 mm at 10 mm slices
        assert np.array_equal(np.nonzero(cut)[0][[0, -1]] + [0, 1], rec["slices"])
        for img, ref in ((s.water.array, off.water.array), (s.fat.array, off.fat.array)):
            assert not img[cut].any() and ref[cut].any()
            assert np.array_equal(img[~cut], ref[~cut])


@pytest.mark.parametrize("factor", [2.0, 3.0])
def test_noise_raises_the_background_noise_by_the_recorded_factor(factor):
    off = _gen(2)
    s = _gen(2, acquisition=f"noise=1@{factor}")
    assert s.truth["acquisition"]["noise"]["factor"] == factor
    body = ndimage.binary_dilation(off.labels.array > 0, iterations=3)
    bg = ~body

    def rayleigh_sd(img):
        return float(np.sqrt(np.mean(img[bg].astype(np.float64) ** 2) / 2))

    s0, s1 = rayleigh_sd(off.water.array), rayleigh_sd(s.water.array)
    assert s0 == pytest.approx(s.truth["acquisition"]["noise"]["site_noise_sd"], rel=0.05)
    assert s1 / s0 == pytest.approx(factor, rel=0.05)
    assert rayleigh_sd(s.fat.array) / rayleigh_sd(off.fat.array) == pytest.approx(factor, rel=0.05)


def test_ghost_shift_and_bias_act_where_recorded():
    off = _arrays(_gen(3))
    for name in ("ghost", "shift"):
        s = _gen(3, acquisition=f"{name}=1")
        k0, k1 = s.truth["acquisition"][name]["slices"]
        a = _arrays(s)
        out = np.ones(off["water"].shape[0], bool)
        out[k0:k1] = False
        assert np.array_equal(a["water"][out], off["water"][out])
        assert not np.array_equal(a["water"][k0:k1], off["water"][k0:k1])
    s = _gen(3, acquisition="ghost=1@0.4")
    rec = s.truth["acquisition"]["ghost"]
    assert rec["station"] in (2, 3, 4) and rec["amplitude"] == 0.4 and rec["shift_mm"] > 0
    # ghosts put signal into the background in front of / behind the body
    k0, k1 = rec["slices"]
    bg = off["labels"][k0:k1] == 0
    assert _arrays(s)["water"][k0:k1][bg].mean() > off["water"][k0:k1][bg].mean()
    s = _gen(3, acquisition="bias=1@0.2")
    lo, hi = s.truth["acquisition"]["bias"]["range"]
    ratio = (_arrays(s)["water"] + 1) / (off["water"] + 1)
    big = off["water"] > 200
    assert np.all(ratio[big] > lo * 0.9) and np.all(ratio[big] < hi * 1.1)


# -- acceleration ------------------------------------------------------------------------------
def test_acceleration_changes_only_the_named_organ_by_the_years_for_about_that_fraction():
    n = 400
    plain = [sample_subject(3, i) for i in range(n)]
    acc = [sample_subject(3, i, accelerate="heart=+10@0.15,knee=-5@0.3") for i in range(n)]
    chosen = {o: [p.acceleration.get(o) is not None for p in acc] for o in ("heart", "knee")}
    assert abs(np.mean(chosen["heart"]) - 0.15) < 0.05
    assert abs(np.mean(chosen["knee"]) - 0.3) < 0.06
    # independent draws per organ: some subjects get both, some one
    both = np.array(chosen["heart"]) & np.array(chosen["knee"])
    assert 0 < both.sum() < sum(chosen["heart"])
    for p0, p1 in zip(plain, acc, strict=True):
        ev0, ev1 = p0.effect_values, p1.effect_values
        for organ in EFFECTS:
            years = p1.acceleration.get(organ)
            if years is None:
                assert ev1[organ] == ev0[organ]
            else:
                want = realize(p1.bio_age + years, p1.baselines, p1.effects)[organ]
                assert ev1[organ] == want
        t = p1.to_dict()
        assert t["acceleration"] == p1.acceleration
        assert t["organ_bio_age"] == {o: round(p1.bio_age + y, 3)
                                      for o, y in p1.acceleration.items()}
        # everything else about the subject is unchanged
        assert (p1.age, p1.bio_gap, p1.anatomy, p1.baselines) == \
            (p0.age, p0.bio_gap, p0.anatomy, p0.baselines)
    i = chosen["heart"].index(True)
    d = acc[i].effect_values["heart"]["pericardial_fat_mm"] - \
        plain[i].effect_values["heart"]["pericardial_fat_mm"]
    assert d == pytest.approx(0.15 * 10)             # 0.15 mm a year, 10 years
    # the images change only in and around the heart
    s0 = generate_subject(plain[i], SMALL)
    s1 = generate_subject(acc[i], SMALL)
    l0, l1 = s0.labels.array, s1.labels.array
    changed = l0 != l1
    heart = (LABEL_IDS["heart"], LABEL_IDS["pericardial_fat"])
    assert changed.any()
    assert np.all(np.isin(l0[changed], heart) | np.isin(l1[changed], heart))
    assert s1.truth["acceleration"]["heart"] == 10.0
    # the heart's draw does not depend on the knee rule beside it
    assert sample_subject(3, i, accelerate="heart=+10@0.15").acceleration == {"heart": 10.0}


# -- option strings ----------------------------------------------------------------------------
@pytest.mark.parametrize("text, words", [
    ("nois=0.3", ["unknown acquisition effect 'nois'", "shift, bias, ghost, noise, swap, truncate"]),
    ("noise=1.5", ["rate 1.5"]),
    ("noise=0.3@0.5", ["strength 0.5"]),
    ("swap=0.1@2", ["takes no strength"]),
    ("noise=0.1,noise=0.2", ["more than once"]),
    ("noise", ["cannot read"]),
    ("noise=abc", ["cannot read"]),
])
def test_bad_acquisition_strings_are_refused(text, words):
    with pytest.raises(ConfigError) as exc:
        Acquisition.parse(text)
    for w in words:
        assert w in str(exc.value)


@pytest.mark.parametrize("text, words", [
    ("hart=+10@0.1", ["unknown organ 'hart'", "spine, back_muscle"]),
    ("heart=10", ["cannot read"]),
    ("heart=+10@1.5", ["fraction 1.5"]),
    ("heart=+10@0.1,heart=+5@0.1", ["more than once"]),
    ("heart=+100@0.1", ["out of range"]),
])
def test_bad_acceleration_strings_are_refused(text, words):
    with pytest.raises(ConfigError) as exc:
        Acceleration.parse(text)
    for w in words:
        assert w in str(exc.value)


def test_good_strings_parse_and_round_trip():
    a = Acquisition.parse(" noise=0.3@2 , ghost=0.2,swap=0.05,truncate=0.1@40,shift=.1@3,bias=0.2")
    assert Acquisition.parse(a.to_text()) == a
    assert a.to_dict()["ghost"] == {"rate": 0.2, "strength": 0.15}
    assert a.to_dict()["swap"] == {"rate": 0.05, "strength": None}
    assert Acquisition.parse("typical")
    acc = Acceleration.parse("heart=+10@0.15, knee=-5@.1, liver=3@0.5")
    assert Acceleration.parse(acc.to_text()) == acc
    assert acc.to_dict() == {"heart": {"years": 10.0, "fraction": 0.15},
                             "knee": {"years": -5.0, "fraction": 0.1},
                             "liver": {"years": 3.0, "fraction": 0.5}}


# -- end to end --------------------------------------------------------------------------------
def test_cli_synth_with_both_options_records_them_in_truth_and_database(tmp_path, capsys):
    from bodyage_core.cli.main import main
    from bodyage_core.cohort import Workspace

    ws = tmp_path / "ws"
    argv = ["synth", str(ws), "--n", "6", "--seed", "2", "--grid", "12,12,15",
            "--acquisition", "noise=0.5@2,swap=0.5,truncate=0.3", "--accelerate", "heart=+10@0.5"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "acquisition" in out and "accelerate" in out
    cfg = json.loads((ws / "synth.json").read_text())
    assert cfg["accelerate"] == {"heart": {"years": 10.0, "fraction": 0.5}}
    assert set(cfg["acquisition"]) == {"noise", "swap", "truncate"}
    n_acc = n_deg = 0
    with Workspace.open(ws) as w:
        for i in range(6):
            sid = f"synth002_{i:05d}"
            truth = json.loads((ws / "subjects" / sid / "truth.json").read_text())
            meta = w.db.get_subject(sid).meta
            assert meta["acceleration"] == truth["acceleration"]
            assert meta["acquisition"] == truth["acquisition"]
            assert meta["acquisition_degraded"] == len(truth["acquisition"])
            assert truth["settings"]["accelerate"] == cfg["accelerate"]
            n_acc += bool(meta["acceleration"])
            n_deg += bool(meta["acquisition"])
            p = sample_subject(2, i, accelerate="heart=+10@0.5",
                               acquisition="noise=0.5@2,swap=0.5,truncate=0.3")
            assert truth["acceleration"] == p.acceleration
            assert set(truth["acquisition"]) == set(p.acquisition)
    assert n_acc > 0 and n_deg > 0
    # resumable with the same options; other options refused without --overwrite
    assert main(argv) == 0
    assert main(argv[:-1] + ["heart=+5@0.5"]) == 2
    assert "accelerate" in capsys.readouterr().err
    assert main(["synth", str(ws), "--n", "1", "--acquisition", "blur=0.2"]) == 2
    err = capsys.readouterr().err
    assert "unknown acquisition effect 'blur'" in err and "truncate" in err
