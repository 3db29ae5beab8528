"""The whole-body biological-age gap's SD (``--gap-sd``): 0 leaves only the planted ageing."""

from __future__ import annotations

import json

import pytest

from bodyage_core.errors import ConfigError
from bodyage_core.synth.params import BIO_GAP_SD, sample_subject


@pytest.mark.parametrize("index", [0, 3, 7])
def test_gap_sd_scales_the_same_draw_and_changes_nothing_else(index):
    base = sample_subject(4, index)
    assert abs(base.bio_gap) > 0.01                         # the default draws a gap
    none = sample_subject(4, index, gap_sd=0.0)
    assert none.bio_gap == 0.0 and none.bio_age == none.age
    double = sample_subject(4, index, gap_sd=2 * BIO_GAP_SD)
    assert double.bio_gap == pytest.approx(2 * base.bio_gap)
    same = sample_subject(4, index, gap_sd=BIO_GAP_SD)
    assert same.to_dict() == base.to_dict()
    for p in (none, double):
        a, b = p.to_dict(), base.to_dict()
        changed = {k for k in a if a[k] != b[k]}
        assert changed <= {"bio_gap", "bio_age", "effect_values", "organ_bio_age"}, changed
        assert (p.age, p.sex, p.bmi, p.site, p.anatomy) == \
            (base.age, base.sex, base.bmi, base.site, base.anatomy)


def test_planted_organ_is_the_only_ageing_difference_with_gap_sd_0():
    acc = "thigh_muscle=+20@1.0"
    p = sample_subject(1, 2, gap_sd=0.0, accelerate=acc)
    organ_age = p.to_dict()["organ_bio_age"]
    assert organ_age == {"thigh_muscle": pytest.approx(p.age + 20.0, abs=1e-3)}


@pytest.mark.parametrize("bad", [-1.0, 25.0, float("nan")])
def test_bad_gap_sd_is_refused(bad):
    with pytest.raises(ConfigError, match="gap SD"):
        sample_subject(0, 0, gap_sd=bad)


def test_cli_records_the_gap_sd_and_refuses_another_without_overwrite(tmp_path, capsys):
    from bodyage_core.cli.main import main
    from bodyage_core.cohort import Workspace

    ws = tmp_path / "ws"
    argv = ["synth", str(ws), "--n", "3", "--seed", "5", "--grid", "12,12,15", "--gap-sd", "0"]
    assert main(argv) == 0
    assert "gap SD    0 years" in capsys.readouterr().out
    assert json.loads((ws / "synth.json").read_text())["gap_sd"] == 0.0
    with Workspace.open(ws) as w:
        for i in range(3):
            sid = f"synth005_{i:05d}"
            truth = json.loads((ws / "subjects" / sid / "truth.json").read_text())
            assert truth["bio_gap"] == 0.0 and truth["settings"]["gap_sd"] == 0.0
            assert w.db.get_subject(sid).meta["bio_gap"] == 0.0
    assert main(argv) == 0                                  # resumable with the same setting
    assert main(argv[:-2]) == 2                             # the default gap SD is another
    assert "gap_sd" in capsys.readouterr().err
    assert main(argv[:-1] + ["-3"]) == 2
    assert "out of range" in capsys.readouterr().err
