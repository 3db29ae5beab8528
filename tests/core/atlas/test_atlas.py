"""Atlases, population statistics, region summaries and the workspace stages / CLI, on small
phantoms (36 x 28 x 28 voxels)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from bodyage_core.atlas import (
    AtlasConfig,
    AtlasMember,
    age_bands,
    age_trend,
    build_atlas,
    choose_reference,
    gap_classes,
    importance_inside_mask,
    majority_vote,
    mean_std,
    permutation_test,
    population_maps,
    region_shares,
    tfce,
    uniform_baseline,
    write_shares,
)
from bodyage_core.errors import BodyageError, ConfigError
from bodyage_core.registration.phantom import (
    LABELS,
    apply_transform,
    make_phantom,
    smooth_deformation,
)

SHAPE = (36, 28, 28)


def _subject(i: int):
    v, lab = make_phantom(SHAPE, size=0.92 + 0.04 * i, fat=0.8 + 0.2 * i,
                          shift_mm=(3 * i - 4, 2 - i, 4 * i - 6), seed=i)
    return apply_transform(v, lab, smooth_deformation(v, 3.0, seed=20 + i))


def test_too_few_subjects(tmp_path):
    members = [AtlasMember(f"s{i}", volume=_subject(i)[0]) for i in range(2)]
    with pytest.raises(BodyageError, match="has 2 subject.*at least 3"):
        build_atlas(members, tmp_path, "F_obese", AtlasConfig(min_subjects=3))


def test_build_atlas_and_resume(tmp_path):
    members = []
    for i in range(3):
        v, lab = _subject(i)
        members.append(AtlasMember(f"s{i}", volume=v, labels=lab))
    cfg = AtlasConfig(iterations=1)
    out = build_atlas(members, tmp_path / "atlas", "F_healthy", cfg)
    assert sorted(out["members"]) == ["s0", "s1", "s2"] and not out["failed"]
    assert out["reference_subject"] in {"s0", "s1", "s2"}
    assert out["dice_labels_mean"] > 0.75
    for f in ("template.nii.gz", "labels.nii.gz", "body_mask.nii.gz", "members.json",
              "quality.json", "quality/s1.json", "subjects/s1/warp.nii.gz",
              "subjects/s1/inverse_warp.nii.gz", "subjects/s1/affine.tfm"):
        assert (tmp_path / "atlas" / f).exists(), f
    from bodyage_core.atlas import load_atlas

    atlas = load_atlas(tmp_path / "atlas")
    assert atlas["template"].channels == ("water", "fat")
    assert atlas["labels"].data.dtype.kind in "iu"
    # Resume: every subject's transform is reused, same result.
    again = build_atlas(members, tmp_path / "atlas", "F_healthy", cfg)
    assert all(q.get("reused") for q in again["quality"].values())
    assert again["dice_labels_mean"] == pytest.approx(out["dice_labels_mean"])


def test_reference_and_majority_vote():
    assert choose_reference({"a": 10.0, "b": 20.0, "c": 31.0}) == "b"
    maps = [np.array([1, 2, 2]), np.array([1, 1, 2]), np.array([0, 1, 2])]
    np.testing.assert_array_equal(majority_vote(maps), [1, 1, 2])


def test_permutation_test_finds_planted_difference():
    rng = np.random.default_rng(0)
    a = rng.normal(0, 1, (10, 12, 12, 12))
    b = rng.normal(0, 1, (10, 12, 12, 12))
    a[:, 2:5, 2:5, 2:5] += 4.0
    res = permutation_test(a, b, n_permutations=200, seed=1)
    planted = np.zeros((12, 12, 12), bool)
    planted[2:5, 2:5, 2:5] = True
    assert np.median(res["p_fwe"][planted]) < 0.05
    assert res["p_fwe"][~planted].min() > 0.05
    assert np.mean(res["p_fwe"][~planted]) > 0.5
    assert res["diff"][planted].mean() > 3
    with pytest.raises(ConfigError):
        permutation_test(a[:1], b, 10)


def test_region_shares_and_mask_fraction(tmp_path):
    labels = np.zeros((10, 10, 10), np.int16)
    labels[2:5, 2:5, 2:5] = 1
    labels[6:9, 6:9, 6:9] = 2
    body = np.zeros_like(labels, bool)
    body[1:10, 1:10, 1:10] = True
    imp = np.zeros(labels.shape)
    imp[labels == 1] = 3.0
    imp[labels == 2] = 1.0
    imp[0, 0, 0] = 100.0  # outside the body: not counted
    rows = region_shares(imp, labels, {1: "heart", 2: "spine"}, body)
    assert sum(r["share"] for r in rows) == pytest.approx(1.0)
    assert rows[0]["region"] == "heart" and rows[0]["share"] == pytest.approx(0.75)
    uniform = body.astype(float)
    mask = labels == 1
    assert importance_inside_mask(uniform, mask, body) == pytest.approx(
        uniform_baseline(mask, body))
    assert importance_inside_mask(imp, mask, body) == pytest.approx(0.75)
    paths = write_shares({"F_healthy": rows, "M_healthy": rows}, tmp_path / "regions")
    assert paths["png"].stat().st_size > 1000
    assert "heart" in paths["csv"].read_text()
    with pytest.raises(BodyageError, match="another|shape"):
        region_shares(imp, labels[:5], {1: "heart"})


def test_groups_by_age_and_gap():
    assert age_bands([55, 60, 69.9, 70, None]) == ["lt60", "60-70", "60-70", "ge70", None]
    assert gap_classes([-5, 0, 5, None], threshold=3) == [
        "decelerated", "aligned", "accelerated", None]
    q = gap_classes(list(range(8)), quantile=0.25)
    assert q.count("accelerated") == 2 and q.count("decelerated") == 2
    with pytest.raises(ConfigError):
        gap_classes([1, 2], threshold=1, quantile=0.2)
    # the subject's own interval: gap 5 is beyond 1.96 sigma at sigma 2, not at sigma 3; a
    # subject without a sigma has no class
    assert gap_classes([5, 5, -5, 1, 5], interval=0.95, sigmas=[2, 3, 2, 0.1, None]) == [
        "accelerated", "aligned", "decelerated", "accelerated", None]
    assert gap_classes([3.0], interval=0.68, sigmas=[3.1]) == ["aligned"]   # z 0.994
    with pytest.raises(ConfigError, match="sigma"):
        gap_classes([5], interval=0.95)
    with pytest.raises(ConfigError, match="one rule"):
        gap_classes([5], quantile=0.2, interval=0.95, sigmas=[1])
    with pytest.raises(ConfigError, match="coverage"):
        gap_classes([5], interval=95, sigmas=[1])
    maps = np.stack([np.full((2, 2, 2), float(i)) for i in range(4)])
    out = population_maps(maps, ages=[50, 65, 75, 80], gaps=[-4, 0, 4, 5], gap_threshold=3)
    assert out["all"]["n"] == 4 and out["age_ge70"]["n"] == 2
    np.testing.assert_allclose(out["age_ge70"]["mean"], 2.5)
    assert out["accelerated"]["n"] == 2 and out["decelerated"]["n"] == 1
    m, s = mean_std(maps)
    np.testing.assert_allclose(m, 1.5)


def test_normalise_maps_equal_weight_per_subject():
    from bodyage_core.atlas.population import normalise_maps

    body = np.ones((2, 2, 2), bool)
    body[0, 0, 0] = False
    a = np.zeros((2, 2, 2))
    a[1, 1, 1] = 100.0          # a subject with large gradients
    a[0, 0, 0] = 50.0           # outside the body: not counted in the total
    b = np.zeros((2, 2, 2))
    b[0, 1, 1] = 1.0
    b[1, 0, 0] = -3.0           # negative (signed) values are scaled, not counted
    z = np.zeros((2, 2, 2))     # no importance: stays zero
    raw = np.stack([a, b, z])
    np.testing.assert_array_equal(normalise_maps(raw, body, "none"), raw.astype(np.float32))
    n = normalise_maps(raw, body, "sum")
    assert n[0, 1, 1, 1] == pytest.approx(1.0) and n[1, 0, 1, 1] == pytest.approx(1.0)
    assert n[1, 1, 0, 0] == pytest.approx(-3.0) and not n[2].any()
    m = n.mean(axis=0)
    assert m[1, 1, 1] == pytest.approx(m[0, 1, 1])  # both subjects weigh the same
    with pytest.raises(ConfigError):
        normalise_maps(raw, body, "zscore")


def test_age_trend_finds_the_region_that_changes_with_age():
    rng = np.random.default_rng(0)
    n = 60
    ages = rng.uniform(45, 80, n)
    maps = rng.normal(0.0, 1.0, (n, 12, 10, 8))
    maps[:, :, :, :4] += 5.0                       # large, age-independent evidence everywhere
    maps[:, 2:5, 3:6, 2:5] += 0.15 * (ages[:, None, None, None] - 60)   # grows with age
    body = np.ones((12, 10, 8), bool)
    body[-1] = False
    tr = age_trend(maps, ages, 0.01, body)
    region = np.zeros((12, 10, 8), bool)
    region[2:5, 3:6, 2:5] = True
    # covariance per SD of age: 0.15 years^-1 x SD of the ages
    assert tr["cov"][region].mean() == pytest.approx(0.15 * ages.std(), rel=0.15)
    assert tr["n"] == n and not tr["map"][~body].any()
    assert (tr["p"][region] < 1e-6).all()
    # the kept trend lies in the region (1 % of the noise voxels pass by chance)
    assert importance_inside_mask(tr["map"], region, body) > 0.9
    # the mean map is dominated by the age-independent evidence
    assert importance_inside_mask(maps.mean(0), region, body) < 0.1
    everything = age_trend(maps, ages, None, body)
    assert np.array_equal(everything["map"], everything["cov"])
    # unknown ages are left out; too few or all-equal ages are refused
    assert age_trend(maps, [None] + list(ages[1:]), 0.01)["n"] == n - 1
    with pytest.raises(ConfigError, match="at least 4"):
        age_trend(maps[:3], ages[:3])
    with pytest.raises(ConfigError, match="same age"):
        age_trend(maps, np.full(n, 50.0))

    # family-wise: TFCE keeps the extended region, almost none of the 1 % chance voxels
    fw = age_trend(maps, ages, 0.05, body, correction="tfce", permutations=40, seed=1)
    assert fw["correction"] == "tfce"
    assert (fw["p"][region] <= 1 / 41 + 1e-9).all()
    kept = (fw["map"] != 0) & ~region
    assert kept.sum() < (tr["map"] != 0)[~region].sum()
    assert importance_inside_mask(fw["map"], region, body) > 0.95
    with pytest.raises(ConfigError, match="correction"):
        age_trend(maps, ages, 0.05, body, correction="fdr")


def test_tfce_rewards_extent_and_height():
    stat = np.zeros((10, 10, 10))
    stat[1:4, 1:4, 1:4] = 2.0        # 27 voxels at 2
    stat[7, 7, 7] = 2.0              # one voxel at 2
    stat[7, 1, 1] = 3.0              # one voxel higher
    out = tfce(stat, dh=0.1)
    assert out[2, 2, 2] > out[7, 7, 7] > 0          # extent
    assert out[7, 1, 1] > out[7, 7, 7]              # height
    # one voxel at height 2: sum over levels 0.1..2.0 of 1^0.5 * h^2 * 0.1
    assert out[7, 7, 7] == pytest.approx(sum((0.1 * k) ** 2 * 0.1 for k in range(1, 21)))
    mask = np.ones_like(stat, bool)
    mask[:5] = False
    assert not tfce(stat, mask)[:5].any() and tfce(-stat).max() == 0


# -- workspace stages and CLI -------------------------------------------------------------------
@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    from bodyage_core.cohort import Workspace
    from bodyage_core.io import save_volume
    from bodyage_core.volume import Volume

    root = tmp_path_factory.mktemp("ws")
    ws = Workspace.create(root)
    records, preds = [], []
    gaps = [-6.0, -5.0, 5.0, 6.0]
    for i in range(5):
        v, lab = _subject(i)
        sid = f"sub{i}"
        d = ws.subject_dir(sid, create=True)
        save_volume(v.with_data(v.data[:1], channels=("water",)), d / "water.nii.gz")
        save_volume(v.with_data(v.data[1:], channels=("fat",)), d / "fat.nii.gz")
        save_volume(Volume(lab.astype(np.int16), v.affine, channels=("labels",)),
                    d / "labels.nii.gz")
        save_volume(Volume((lab == 3).astype(np.uint8), v.affine, channels=("age_mask",)),
                    d / "age_mask.nii.gz")
        gap = gaps[i] if i < 4 else 0.0
        cam = (lab == 3) * 1.0 + (lab == 5) * (2.0 if gap > 0 else 0.2)
        save_volume(Volume(cam.astype(np.float32), v.affine, channels=("map",)),
                    d / "gradcam_r1.nii.gz")
        images = {k: f"subjects/{sid}/{k}.nii.gz"
                  for k in ("water", "fat", "labels", "age_mask", "gradcam_r1")}
        # sub4 is the only male: its group is too small for an atlas.
        records.append({"subject_id": sid, "age": 50.0 + 7 * i, "sex": "M" if i == 4 else "F",
                        "bmi": 22.0, "images": images})
        preds.append({"subject_id": sid, "mean": 50.0 + 7 * i + gap, "sigma": 1.0,
                      "corrected": 50.0 + 7 * i + gap})
    ws.db.add_subjects(records)
    ws.db.add_run("r1")
    ws.db.add_predictions("r1", preds)
    (ws.root / "atlases" / "F_healthy").mkdir(parents=True, exist_ok=True)
    from bodyage_core.atomic import write_json

    write_json(ws.root / "atlases" / "F_healthy" / "label_names.json", LABELS)
    ws.close()
    return root


def test_gate_keeps_a_cohort_without_acceleration_clean():
    """Choosing subjects by their gap makes their maps differ where the model reads age, in a
    cohort with no true acceleration too: the voxel test alone is significant there. The gate
    (more subjects outside their own 95 % interval than chance?) stays shut on such a cohort
    and opens when a fifth of it is planted 8 years older."""
    from bodyage_core.atlas.cohort_maps import gap_gate

    rng = np.random.default_rng(7)
    n, sigma = 120, 2.0
    gaps = rng.normal(0.0, sigma, n)                      # the model's error alone
    maps = rng.normal(0.0, 1.0, (n, 4, 4, 4))
    maps[:, :2] += 0.6 * gaps[:, None, None, None]        # where the model reads age
    cls = gap_classes(gaps, quantile=0.25)
    a = [i for i, c in enumerate(cls) if c == "accelerated"]
    b = [i for i, c in enumerate(cls) if c == "decelerated"]
    alone = permutation_test(maps[a], maps[b], 200, seed=0)
    assert (alone["p_fwe"] <= 0.05).sum() >= 16          # selection, not ageing
    gate = gap_gate(gaps, [sigma] * n, 0.95)
    assert not gate["open"] and gate["p"] > 0.05
    assert gate["expected"] == pytest.approx(6.0) and gate["n"] == n
    planted = gaps.copy()
    planted[:24] += 8.0
    opened = gap_gate(planted, [sigma] * n, 0.95)
    assert opened["open"] and opened["above"] >= 20 and opened["p"] < 1e-6
    missing = gap_gate(gaps, [sigma] * (n - 1) + [None], 0.95)
    assert missing["p"] is None and missing["open"] and "without a sigma" in missing["reason"]


def test_workspace_atlas_maps_compare(workspace):
    from bodyage_core.atlas.cohort_maps import build_population_maps, compare_gap_groups
    from bodyage_core.atlas.workspace import build_atlases, register_subjects
    from bodyage_core.cohort import Workspace

    with Workspace.open(workspace) as ws:
        out = build_atlases(ws, iterations=0)
        assert "error" in out["M_healthy"] and "at least 3" in out["M_healthy"]["error"]
        fh = out["F_healthy"]
        assert sorted(fh["members"]) == ["sub0", "sub1", "sub2", "sub3"]
        regs = ws.db.registrations("F_healthy")
        assert {r["status"] for r in regs} == {"ok"}
        subj = ws.db.get_subject("sub1")
        assert (ws.resolve(subj.images["to_atlas_F_healthy"]) / "warp.nii.gz").exists()
        again = register_subjects(ws, group="F_healthy")
        assert all(r["reused"] for r in again) and len(again) == 4

        pm = build_population_maps(ws, "r1", gap_threshold=3.0)
        g = pm["groups"]["F_healthy"]
        assert g["subgroups"]["all"]["n"] == 4
        assert g["subgroups"]["accelerated"]["n"] == 2
        adir = ws.atlas_dir("F_healthy")
        assert (adir / "population_r1_all_mean.nii.gz").exists()
        assert (adir / "population_r1_age_lt60_std.nii.gz").exists()
        assert g["top_regions"][0][0] in ("heart", "spine")
        inside = g["subgroups"]["all"]["importance_in_age_mask"]
        assert inside > g["subgroups"]["all"]["uniform_baseline"]
        assert (ws.reports_dir / "regions_r1.png").exists()
        trend = g["subgroups"]["age_trend"]
        assert trend["n"] == 4 and trend["p_threshold"] == 0.01
        for f in trend["files"].values():
            assert ws.resolve(f).exists()
        assert (adir / "population_r1_age_trend_t.nii.gz").exists()

        # per-subject normalised maps, another tag: own files, same scores for these maps
        pn = build_population_maps(ws, "r1", gap_threshold=3.0, kind="gradcam_r1",
                                   normalise="sum", tag="r1norm")
        gn = pn["groups"]["F_healthy"]
        assert pn["normalise"] == "sum" and gn["subgroups"]["all"]["n"] == 4
        assert (adir / "population_r1norm_all_mean.nii.gz").exists()
        assert gn["subgroups"]["all"]["importance_in_age_mask"] > \
            gn["subgroups"]["all"]["uniform_baseline"]
        with pytest.raises(ConfigError, match="normalisation"):
            build_population_maps(ws, "r1", normalise="max")

        cmp_ = compare_gap_groups(ws, "r1", threshold=3.0, permutations=20)
        c = cmp_["groups"]["F_healthy"]
        assert c["n_accelerated"] == 2 and c["n_decelerated"] == 2
        assert (ws.resolve(c["p_fwe"])).exists()
        assert cmp_["kind"] == c["kind"] == "gradcam_r1"
        # the gate: all four gaps (5-6 y at sigma 1) lie outside their own 95 % intervals,
        # against 0.2 by chance, so the voxel test counts (p_gate = 0.05 ** 4)
        gate = c["gate"]
        assert (gate["outside"], gate["above"], gate["below"], gate["n"]) == (4, 2, 2, 4)
        assert gate["p"] == pytest.approx(0.05 ** 4) and gate["open"]
        assert c["significant_voxels"] == c["significant_voxels_ungated"]
        # the subjects' own 95 % intervals as the groups' rule: the same four
        iv = compare_gap_groups(ws, "r1", interval=0.95, permutations=20)
        c = iv["groups"]["F_healthy"]
        assert (c["n_accelerated"], c["n_decelerated"], c["n_aligned"]) == (2, 2, 0)
        assert "95 % interval" in iv["rule"]
        va = compare_gap_groups(ws, "r1", interval=0.95, permutations=20, versus="aligned")
        assert "0 aligned" in va["groups"]["F_healthy"]["error"]
        assert ws.compare_file("F_healthy", "r1", versus="aligned").exists()
        assert ws.compare_file("F_healthy", "r1", versus="aligned").name == \
            "compare_r1_accelerated_vs_aligned.json"
        with pytest.raises(ConfigError, match="aligned"):
            compare_gap_groups(ws, "r1", versus="everyone")
        # sigma 10: every gap lies inside its interval, the gate stays shut (p 1) and so does
        # every voxel, whatever the voxel test alone says
        wide = [dict(p, sigma=10.0) for p in ws.db.predictions("r1")]
        ws.db.add_predictions("r1", [{k: p[k] for k in ("subject_id", "mean", "sigma",
                                                        "corrected")} for p in wide])
        shut = compare_gap_groups(ws, "r1", threshold=3.0, permutations=20)["groups"]["F_healthy"]
        assert not shut["gate"]["open"] and shut["gate"]["p"] == 1.0
        assert "no more than chance" in shut["gate"]["reason"]
        assert shut["min_p_fwe"] == 1.0 and shut["significant_voxels"] == 0
        assert shut["min_p_fwe_ungated"] < 1.0
        from bodyage_core.atlas.build import load_image
        assert float(np.min(load_image(ws.resolve(shut["p_fwe"])).data)) == 1.0
        ungated = compare_gap_groups(ws, "r1", threshold=3.0, permutations=20, gate=None)
        assert "gate" not in ungated["groups"]["F_healthy"]
        assert ungated["groups"]["F_healthy"]["min_p_fwe"] == shut["min_p_fwe_ungated"]
        ws.db.add_predictions("r1", [dict(p, sigma=1.0) for p in wide])   # as the next test expects
        other = compare_gap_groups(ws, "r1", threshold=3.0, permutations=20, kind="nope_r1")
        assert other["groups"]["F_healthy"] == {"error": "no registered nope_r1 maps"}
        with pytest.raises(BodyageError, match="no predictions for run"):
            build_population_maps(ws, "nope")


def test_cli_commands(workspace, capsys):
    from bodyage_core.cli.main import main

    assert main(["register", str(workspace), "--group", "F_healthy"]) == 0
    assert "reused" in capsys.readouterr().out
    assert main(["atlas", "maps", str(workspace), "--run", "r1", "--threshold", "3"]) == 0
    out = capsys.readouterr().out
    assert "F_healthy" in out and "importance inside age-effect regions" in out
    assert "age trend (n=4, p < 0.01)" in out
    # by the subjects' own 95 % intervals (sigma 1, gaps -6 -5 5 6): two and two, recorded
    assert main(["atlas", "maps", str(workspace), "--run", "r1", "--interval", "0.95"]) == 0
    out = capsys.readouterr().out
    assert "accelerated n=2" in out and "decelerated n=2" in out
    info = json.loads((workspace / "atlases" / "F_healthy" / "population_r1.json").read_text())
    assert info["gap_interval"] == 0.95 and info["gap_quantile"] is None
    assert main(["atlas", "maps", str(workspace), "--run", "r1", "--trend-p", "0"]) == 2
    assert main(["atlas", "maps", str(workspace), "--run", "r1", "--trend-p", "0.05",
                 "--trend-correction", "tfce", "--trend-permutations", "5"]) == 0
    assert "age trend (n=4, p < 0.05, FWE by TFCE)" in capsys.readouterr().out
    assert main(["atlas", "maps", str(workspace), "--run", "r1", "--kind", "nope_r1",
                 "--scheduler", "none"]) == 2
    err = capsys.readouterr().err
    assert "no group has nope_r1 maps" in err and "gradcam_r1" in err
    assert main(["compare", "accelerated", "decelerated", str(workspace), "--run", "r1",
                 "--threshold", "3", "--permutations", "10"]) == 0
    out = capsys.readouterr().out
    assert "min p(FWE)" in out and "gate: 4 of 4 subjects outside their own 95 % interval" in out
    assert main(["compare", "accelerated", "aligned", str(workspace), "--run", "r1",
                 "--interval", "0.95", "--permutations", "10"]) == 0
    out = capsys.readouterr().out
    assert "chronological age below the subject's 95 % interval" in out
    assert "too few subjects to compare (2 accelerated, 0 aligned" in out
    assert main(["compare", "accelerated", "decelerated", str(workspace), "--run", "r1",
                 "--threshold", "3", "--permutations", "10", "--gate", "0"]) == 0
    assert "gate:" not in capsys.readouterr().out
    assert main(["compare", "accelerated", "decelerated", str(workspace), "--run", "r1",
                 "--gate", "95"]) == 2
    assert "--gate must be a coverage" in capsys.readouterr().err
    assert main(["atlas", "build", str(workspace), "--group", "M_healthy"]) == 2
    assert "at least 3" in capsys.readouterr().err
    assert main(["register", str(workspace), "--group", "X_none"]) == 2
