"""The 2.5D model input: Langner's layout for new runs, the legacy layout for old run configs."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from bodyage_core.errors import ConfigError
from bodyage_core.inference.ensemble import AgeRun
from bodyage_core.preprocess import ModelGrid, prepare_for_model, projections_25d
from bodyage_core.preprocess.projections import projection_images
from bodyage_core.training import AugmentConfig, InputSpec, TrainConfig, records_from_arrays
from bodyage_core.training.data import prepare_input, projections_2p5d
from bodyage_core.training.run import train_run
from bodyage_core.volume import Volume

torch.set_num_threads(1)
SPACING_XYZ = (4.0, 5.0, 6.0)        # anisotropic, so x/y/z order mistakes show
SHAPE_ZYX = (40, 16, 24)
HW = (64, 64)


def dixon_volume(blob: float = 1000.0) -> Volume:
    """A water/fat box with a bright water blob at patient right (high x, RAS), superior
    (high z) and anterior (high y)."""
    water = np.zeros(SHAPE_ZYX, np.float32)
    fat = np.zeros(SHAPE_ZYX, np.float32)
    water[4:36, 2:14, 3:21] = 100.0
    fat[4:36, 2:14, 3:21] = 60.0
    fat[4:20, 2:14, 3:21] = 90.0
    water[30:34, 10:13, 15:19] = blob
    return Volume(np.stack([water, fat]), np.diag([*SPACING_XYZ, 1.0]), ("water", "fat"))


def spec_25d(**kw) -> InputSpec:
    return InputSpec(("water", "fat"), "2.5d", SPACING_XYZ[::-1], SHAPE_ZYX, normalise="none",
                     image_hw=HW, **kw)


def model_grid_channels(vol: Volume) -> np.ndarray:
    grid = ModelGrid(SPACING_XYZ, SHAPE_ZYX, ("water", "fat"), {"method": "none"})
    return np.asarray(prepare_for_model(vol, grid), dtype=np.float32)


def test_2p5d_training_input_is_langners_layout():
    vol = dixon_volume()
    spec = spec_25d()
    assert spec.projection == "langner"
    x = prepare_input(vol, spec)
    assert x.shape == (2, *HW) and x.dtype == np.float32
    grid = model_grid_channels(vol)
    np.testing.assert_array_equal(x, projection_images(grid, SPACING_XYZ, HW))
    # the float image is the documented 8-bit format before quantisation
    u8 = projections_25d(grid[0], grid[1], SPACING_XYZ, out_size=HW)
    assert np.abs(np.round(x * 255.0) - u8).max() <= 1
    # Langner's min-max per projection: both halves of each channel reach 0 and 1
    assert x.min() == pytest.approx(0.0, abs=1e-6) and x.max() == pytest.approx(1.0, abs=1e-6)
    # orientation: coronal (X * 4 mm) | sagittal (Y * 5 mm) at the reference pixel size
    w_cor = round(SHAPE_ZYX[2] * SPACING_XYZ[0] / 2.232)
    w_sag = round(SHAPE_ZYX[1] * SPACING_XYZ[1] / 2.232)
    split = HW[1] * w_cor / (w_cor + w_sag)
    water = x[0]
    cor = water[:, : int(split) - 1]
    r, c = np.unravel_index(np.argmax(cor), cor.shape)
    assert r < HW[0] / 4                   # superior at the top
    assert c < split / 2                   # patient right on the left of the coronal half
    sag = water[:, int(split) + 1:]
    r2, c2 = np.unravel_index(np.argmax(sag), sag.shape)
    assert r2 < HW[0] / 4 and c2 < sag.shape[1] / 2   # anterior on the left of the sagittal half


def test_legacy_spec_dict_keeps_the_old_projection():
    vol = dixon_volume()
    new = spec_25d()
    old_dict = {k: v for k, v in new.to_dict().items() if k != "projection"}  # pre-field config
    old = InputSpec.from_dict(old_dict)
    assert old.projection == "legacy" and new.projection == "langner"
    # a legacy spec writes its dict (and so its cache folder) exactly as before
    assert old.to_dict() == old_dict
    assert new.to_dict()["projection"] == "langner"
    assert InputSpec.from_dict(new.to_dict()) == new
    assert InputSpec.from_dict(json.loads(json.dumps(old.to_dict()))) == old
    assert old.hash != new.hash
    grid = model_grid_channels(vol)
    x_old = prepare_input(vol, old)
    np.testing.assert_array_equal(x_old, projections_2p5d(grid, HW))
    np.testing.assert_array_equal(prepare_input(vol, new), projection_images(grid, SPACING_XYZ, HW))
    assert not np.allclose(x_old, prepare_input(vol, new))
    # legacy: no flips -- the patient-right blob is on the right of the coronal half
    cor = x_old[0][:, : SHAPE_ZYX[2] * HW[1] // sum(SHAPE_ZYX[1:]) - 1]
    assert np.unravel_index(np.argmax(cor), cor.shape)[1] > cor.shape[1] / 2
    # 3D specs are unaffected: no projection key, the same dict as before the field
    s3 = InputSpec(("water", "fat"), "3d", SPACING_XYZ[::-1], SHAPE_ZYX)
    assert "projection" not in s3.to_dict() and InputSpec.from_dict(s3.to_dict()) == s3
    with pytest.raises(ConfigError, match="projection"):
        InputSpec(mode="2.5d", projection="sideways")


def test_old_2p5d_run_predicts_with_the_old_layout(tmp_path):
    """A run whose config.json predates ``projection`` predicts on the legacy layout."""
    vols = [dixon_volume(blob) for blob in np.linspace(200, 1200, 8)]
    ages = np.linspace(30, 70, 8)
    spec = spec_25d()
    old_dict = {k: v for k, v in spec.to_dict().items() if k != "projection"}
    legacy = InputSpec.from_dict(old_dict)
    x = np.stack([prepare_input(v, legacy) for v in vols])
    cfg = TrainConfig(epochs=1, batch_size=4, augment=AugmentConfig(0, 0, 0, 0, 0, 0, False),
                      loss="l1", device="cpu")
    run_dir = tmp_path / "old"
    train_run(records_from_arrays(x, ages), run_dir, legacy,
              {"arch": "resnet2d", "depth": 18, "width": 4}, cfg, folds=2)
    conf = json.loads((run_dir / "config.json").read_text())
    assert conf["input"] == old_dict                     # written as runs were before
    run = AgeRun(run_dir)
    assert run.spec.projection == "legacy"
    p = run.predict_volume(vols[3], "new")
    q = run.predict(projections_2p5d(model_grid_channels(vols[3]), HW)[None], ["new"],
                    out_of_fold=False)
    assert p.mean[0] == pytest.approx(q.mean[0], abs=1e-5)
    # the same config with the new field predicts on Langner's layout instead
    conf["input"] = spec.to_dict()
    (run_dir / "config.json").write_text(json.dumps(conf))
    run2 = AgeRun(run_dir)
    assert run2.spec.projection == "langner"
    p2 = run2.predict_volume(vols[3], "new")
    q2 = run2.predict(projection_images(model_grid_channels(vols[3]), SPACING_XYZ, HW)[None],
                      ["new"], out_of_fold=False)
    assert p2.mean[0] == pytest.approx(q2.mean[0], abs=1e-5)
