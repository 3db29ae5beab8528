"""``bodyage train / predict / report`` on a tiny workspace, and every bad input the issue
names: empty cohort, fewer subjects than folds, all ages equal, NaN ages, a corrupt checkpoint,
an existing run folder, an interrupted run, a model from another grid."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
import torch

from bodyage_core.cli.main import main
from bodyage_core.cohort import Workspace
from bodyage_core.errors import BodyageError, Cancelled
from bodyage_core.inference.ensemble import AgeRun
from bodyage_core.progress import ProgressReporter
from bodyage_core.training import TrainConfig
from bodyage_core.training.augment import AugmentConfig
from bodyage_core.training.workflow import make_spec, train_workspace

torch.set_num_threads(1)

FAST = ["--width", "4", "--epochs", "1", "--device", "cpu", "--threads", "1",
        "--spacing", "4", "4", "4", "--shape", "12", "12", "12", "--batch-size", "4"]


def _make_ws(root, ages, kind="t1", size=20):
    ws = Workspace.create(root)
    rng = np.random.default_rng(0)
    recs = []
    for i, age in enumerate(ages):
        sid = f"sub{i:02d}"
        d = ws.subject_dir(sid, create=True)
        vol = rng.normal(0, 0.1, (size, size, size)).astype(np.float32)
        r = 2 + int(0 if age is None or not np.isfinite(age) else (age - 20) / 60 * 5)
        c = size // 2
        vol[c - r:c + r, c - r:c + r, c - r:c + r] += 1.0
        nib.save(nib.Nifti1Image(vol, np.diag([2.0, 2.0, 2.0, 1.0])), d / f"{kind}.nii.gz")
        recs.append({"subject_id": sid, "age": age, "sex": "FM"[i % 2], "bmi": 22 + (i % 3) * 5,
                     "site": f"site{i % 3}", "images": {kind: f"subjects/{sid}/{kind}.nii.gz"}})
    ws.db.add_subjects(recs)
    return ws


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("ws")
    _make_ws(root, list(np.linspace(20, 80, 12)))
    rc = main(["train", str(root), "--run", "r1", "--folds", "3", "--members", "2",
               "--loss", "meanvar", *FAST])
    assert rc == 0
    return root


def test_train_writes_run_and_oof(trained, capsys):
    run = trained / "models" / "r1"
    for name in ("config.json", "member_0.pt", "member_5.pt", "normalisation.json",
                 "bias_correction.json", "calibration.json", "splits.json", "metrics.json",
                 "oof_predictions.csv"):
        assert (run / name).exists(), name
    assert not (trained / "models" / "r1.partial").exists()
    assert not (run / "checkpoints").exists()
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["status"] == "complete" and len(cfg["members"]) == 6
    assert {m["fold"] for m in cfg["members"]} == {0, 1, 2}
    assert len({m["seed"] for m in cfg["members"]}) == 6
    ws = Workspace.open(trained)
    preds = ws.db.predictions("r1")
    assert len(preds) == 12 and {p["split"] for p in preds} == {"oof"}
    assert all(len(p["members"]) == 2 for p in preds)
    assert [r for r in ws.db.runs() if r["run_id"] == "r1"][0]["status"] == "complete"
    # the cached model-grid inputs
    assert list((trained / "cache").glob("*/sub00.npy"))


def test_existing_run_is_refused_then_overwritten(trained, capsys):
    rc = main(["train", str(trained), "--run", "r1", "--folds", "3", *FAST])
    assert rc == 2 and "already exists" in capsys.readouterr().err
    before = (trained / "models" / "r1" / "member_0.pt").stat().st_mtime_ns
    assert main(["train", str(trained), "--run", "r2", "--folds", "2", "--overwrite",
                 *FAST]) == 0
    assert (trained / "models" / "r1" / "member_0.pt").stat().st_mtime_ns == before
    assert main(["train", str(trained), "--run", "r2", "--folds", "2", "--resume",
                 *FAST]) == 2
    assert "already complete" in capsys.readouterr().err


def test_predict_and_report(trained, capsys):
    assert main(["predict", str(trained), "--run", "r1", "--subject", "sub03",
                 "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "sub03" in out and "1 prediction(s)" in out
    assert main(["predict", str(trained), "--run", "r1", "--device", "cpu"]) == 0
    csv_text = (trained / "reports" / "predictions_r1.csv").read_text()
    assert csv_text.count("\n") == 13 and "corrected" in csv_text.splitlines()[0]
    ws = Workspace.open(trained)
    p = {r["subject_id"]: r for r in ws.db.predictions("r1")}["sub03"]
    assert p["gap"] == pytest.approx(p["corrected"] - p["age"])
    assert main(["report", str(trained), "--run", "r1"]) == 0
    rep = trained / "reports"
    for name in ("r1_summary.csv", "r1_subgroups.csv", "r1_metrics.json", "r1_pred_vs_age.png",
                 "r1_error_vs_uncertainty.png", "r1_sparsification.csv"):
        assert (rep / name).exists(), name
    summary = (rep / "r1_summary.csv").read_text()
    for m in ("model (raw)", "model (bias-corrected)", "baseline: mean",
              "baseline: ridge_histogram", "baseline: ridge_voxels"):
        assert m in summary
    assert main(["predict", str(trained), "--run", "nope"]) == 2


def test_agerun_refuses_other_grid_and_predicts_oof(trained):
    run = AgeRun(trained / "models" / "r1")
    with pytest.raises(BodyageError, match="does not match"):
        run.predict(np.zeros((1, 2, 12, 12, 12), np.float32))
    with pytest.raises(BodyageError, match="does not match"):
        run.predict(np.zeros((1, 1, 16, 12, 12), np.float32))
    x = np.load(next((trained / "cache").glob("*/sub00.npy")))[None]
    oof = run.predict(x, ["sub00"])
    new = run.predict(x, ["unknown"])
    assert np.isfinite(oof.member_mu[0]).sum() == 2          # the fold's 2 members
    assert np.isfinite(new.member_mu[0]).sum() == 6          # all members
    assert oof.fold[0] is not None and new.fold[0] is None
    assert oof.sigma[0] > 0 and np.isfinite(oof.corrected[0])


def test_corrupt_member_is_clear(trained, capsys, tmp_path):
    import shutil
    root = tmp_path / "ws"
    shutil.copytree(trained, root)
    (root / "models" / "r1" / "member_1.pt").write_bytes(b"garbage")
    assert main(["predict", str(root), "--run", "r1", "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert "member_1.pt" in err and "damaged" in err


@pytest.mark.parametrize("ages, args, message", [
    ([], ["--folds", "2"], "no subjects"),
    (list(np.linspace(20, 80, 4)), ["--folds", "5"], "fewer than the 5 folds"),
    ([50.0] * 8, ["--folds", "2"], "same age"),
    ([20.0, 30.0, float("nan"), 40.0, 50.0, 60.0, 70.0], ["--folds", "2"], "no age"),
])
def test_bad_cohorts(tmp_path, capsys, ages, args, message):
    _make_ws(tmp_path / "ws", ages)
    rc = main(["train", str(tmp_path / "ws"), "--run", "bad", *args, *FAST])
    assert rc == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not (tmp_path / "ws" / "models" / "bad").exists()
    assert not (tmp_path / "ws" / "models" / "bad.partial").exists()


def test_interrupted_run_resumes(tmp_path, capsys):
    root = tmp_path / "ws"
    ws = _make_ws(root, list(np.linspace(20, 80, 10)))
    spec = make_spec(ws, "resnet3d", spacing=(4, 4, 4), shape=(12, 12, 12))
    cfg = TrainConfig(epochs=2, batch_size=4, augment=AugmentConfig(0, 0, 0, 0, 0, 0, False),
                      device="cpu")
    rep = ProgressReporter()
    seen = []

    def cb(ev):
        if ev.stage == "train":
            seen.append(ev.message)
            if len(seen) == 3:               # first step of the second member
                rep.cancel()

    rep._callback = cb
    with pytest.raises(Cancelled):
        train_workspace(ws, "r", spec, {"arch": "resnet3d", "width": 4}, cfg, folds=2,
                        members=1, reporter=rep)
    partial = root / "models" / "r.partial"
    assert partial.exists() and not (root / "models" / "r").exists()
    assert (partial / "member_0.pt").exists()
    assert [r for r in ws.db.runs() if r["run_id"] == "r"][0]["status"] == "interrupted"
    base = ["train", str(root), "--run", "r", "--folds", "2", "--epochs", "2", "--width", "4",
            "--device", "cpu", "--spacing", "4", "4", "4", "--shape", "12", "12", "12",
            "--batch-size", "4", "--no-augment", "--loss", "l1", "--early-stopping", "10",
            "--scheduler", "plateau", "--keep", "best", "--warmup", "0", "--weight-decay", "0",
            "--bias-correction", "full",
            "--lr", "0.0001"]   # TrainConfig's own defaults, which the interrupted run used
    assert main(base) == 2
    assert "--resume" in capsys.readouterr().err
    assert main([*base, "--resume"]) == 0
    assert (root / "models" / "r" / "member_1.pt").exists() and not partial.exists()
    bad = [*base[:-2], "--lr", "0.01"]
    assert main([*bad, "--overwrite"]) == 0


def test_train_2p5d_cli(tmp_path):
    root = tmp_path / "ws"
    _make_ws(root, list(np.linspace(20, 80, 8)))
    rc = main(["train", str(root), "--run", "p", "--model", "resnet2d", "--depth", "18",
               "--folds", "2", "--image-size", "32", "32", *FAST])
    assert rc == 0
    cfg = json.loads((root / "models" / "p" / "config.json").read_text())
    assert cfg["input"]["mode"] == "2.5d" and cfg["train"]["scheduler"] == "step"
    run = AgeRun(root / "models" / "p")
    assert run.spec.array_shape == (1, 32, 32)
    assert main(["predict", str(root), "--run", "p", "--device", "cpu"]) == 0
