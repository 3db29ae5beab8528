"""``train_run`` on plain arrays: single split roles, ensembles across folds, handlers."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from bodyage_core.errors import BodyageError, ConfigError
from bodyage_core.models.ensemble import AgeRun
from bodyage_core.training import AugmentConfig, InputSpec, TrainConfig, records_from_arrays
from bodyage_core.training.run import train_run
from tests.test_training_helpers import age_volumes

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
