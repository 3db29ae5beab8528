"""``train_run`` on plain arrays: single split roles, ensembles across folds, handlers."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from test_training_helpers import age_volumes  # the same folder

from bodyage_core.errors import BodyageError, ConfigError
from bodyage_core.inference.ensemble import AgeRun
from bodyage_core.training import AugmentConfig, InputSpec, TrainConfig, records_from_arrays
from bodyage_core.training.run import train_run

torch.set_num_threads(1)
SPEC = InputSpec(channels=("t1",), mode="3d", spacing_zyx=(4, 4, 4), shape_zyx=(12, 12, 12))
CFG = TrainConfig(epochs=1, batch_size=6, augment=AugmentConfig(0, 0, 0, 0, 0, 0, False),
                  loss="l1", device="cpu")


def test_single_split_run_and_roles(tmp_path):
    x, ages = age_volumes(20, 12)
    recs = records_from_arrays(x, ages, site=[f"s{i % 4}" for i in range(20)])
    epochs = []
    res = train_run(recs, tmp_path / "models" / "one", SPEC, {"arch": "resnet3d", "width": 4},
                    CFG, folds=1, members=2, split_method="site",
                    handlers={"epoch_completed": lambda s: epochs.append(s.epoch)})
    assert epochs == [1, 1]
    held = {r["subject_id"] for r in res.oof}
    assert 0 < len(held) < 20 and {r["split"] for r in res.oof} == {"test"}
    sites_held = {recs[int(i[1:])].site for i in held}
    sites_rest = {r.site for r in recs if r.subject_id not in held}
    assert not sites_held & sites_rest             # grouped by site
    run = AgeRun(tmp_path / "models" / "one")
    p = run.predict(x, [r.subject_id for r in recs])
    roles = dict(zip(p.subject_ids, p.split))
    assert {roles[i] for i in held} == {"test"}
    assert {roles[r.subject_id] for r in recs if r.subject_id not in held} <= {"train", "val"}
    # L1 members have no variance head: sigma comes from spread + the calibrated floor
    assert np.all(p.sigma > 0)
    cal = json.loads((tmp_path / "models" / "one" / "calibration.json").read_text())
    assert "global" in cal and "scale" in cal["global"]


def test_model_and_input_mode_must_agree(tmp_path):
    x, ages = age_volumes(12, 12)
    with pytest.raises(ConfigError, match="2.5d|3d"):
        train_run(records_from_arrays(x, ages), tmp_path / "r", SPEC, {"arch": "vgg2d"}, CFG,
                  folds=2)
    with pytest.raises(BodyageError, match="grid"):
        bad = InputSpec(channels=("t1",), spacing_zyx=(4, 4, 4), shape_zyx=(10, 12, 12))
        train_run(records_from_arrays(x, ages), tmp_path / "r", bad,
                  {"arch": "resnet3d", "width": 4}, CFG, folds=2)
    assert not (tmp_path / "r").exists()


def _gap_slope(rows, key):
    age = np.array([r["age"] for r in rows])
    gap = np.array([r[key] for r in rows]) - age
    return float(np.polyfit(age, gap, 1)[0])


def test_bias_correction_full_removes_the_gaps_age_dependence(tmp_path):
    """The default (DESIGN.md, Starck appendix B) inverts the validation fit predicted =
    a * age + b: the out-of-fold gap of a network that regresses to the mean loses most of its
    age dependence. ``loo`` shrinks the correction by leave-one-out MAE and says so. Six
    epochs: after three this network tracks age with a validation slope of 0.37, below
    ``MIN_FULL_SLOPE``, where training falls back to the shrink (tested in test_models); after
    eight it tracks age so well on some CPUs (slope 0.87 on an AMD EPYC, raw gap slope -0.08)
    that there is little regression to the mean left to remove. At six: 0.70-0.76 per fold."""
    x, ages = age_volumes(60, 12, seed=1)
    recs = records_from_arrays(x, ages)
    cfg = TrainConfig(epochs=6, batch_size=8, lr=5e-3, loss="l1", early_stopping=0,
                      augment=AugmentConfig(0, 0, 0, 0, 0, 0, False), device="cpu")
    res = train_run(recs, tmp_path / "full", SPEC, {"arch": "resnet3d", "width": 4}, cfg,
                    folds=3, members=1, seed=0, val_fraction=0.3)
    bias = json.loads((tmp_path / "full" / "bias_correction.json").read_text())
    assert bias["method"] == "full"
    assert all("shrink" not in f and f["a"] != 1.0 for f in bias["folds"].values())
    raw, corr = _gap_slope(res.oof, "mean"), _gap_slope(res.oof, "corrected")
    assert raw < -0.15, raw                        # regression to the mean (-0.29)
    assert abs(corr) < 0.4 * abs(raw), (raw, corr)  # (-0.02)
    cfg.bias_correction = "loo"
    train_run(recs, tmp_path / "loo", SPEC, {"arch": "resnet3d", "width": 4}, cfg,
              folds=3, members=1, seed=0, val_fraction=0.3)
    bias = json.loads((tmp_path / "loo" / "bias_correction.json").read_text())
    assert bias["method"] == "loo"
    assert all(0.0 <= f["shrink"] <= 1.0 for f in bias["folds"].values())
    with pytest.raises(ConfigError, match="bias-correction"):
        TrainConfig(bias_correction="half")
