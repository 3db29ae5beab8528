"""explain_subjects and ``bodyage explain`` on a tiny workspace with a hand-made run."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
import torch

from bodyage_core.cli.main import main
from bodyage_core.cohort import Workspace
from bodyage_core.errors import BodyageError
from bodyage_core.explain import map_to_subject_space
from bodyage_core.explain.pipeline import explain_subjects, map_kind, model_grid_input
from bodyage_core.models import build_model
from bodyage_core.models.ensemble import MEMBER_FORMAT, RUN_FORMAT
from bodyage_core.training.data import InputSpec, prepare_input
from bodyage_core.volume import Volume

torch.set_num_threads(1)

SPEC = InputSpec(channels=("water", "fat"), spacing_zyx=(6.0, 4.0, 4.0), shape_zyx=(16, 16, 16),
                 normalise="foreground_mean")
BLOB_VOXEL = (20, 14, 10)  # (z, y, x) in the subject image


def subject_affine() -> np.ndarray:
    """Anisotropic 2.5 x 2 x 3 mm, slightly rotated: not the model grid."""
    c, s = np.cos(0.2), np.sin(0.2)
    aff = np.eye(4)
    aff[:3, :3] = np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]]) @ np.diag([2.5, 2.0, 3.0])
    aff[:3, 3] = (-30.0, -25.0, -40.0)
    return aff


def body(seed: int) -> np.ndarray:
    """(Z, Y, X) = (40, 28, 24): an ellipsoid body with a bright blob at BLOB_VOXEL."""
    rng = np.random.default_rng(seed)
    z, y, x = np.indices((40, 28, 24)).astype(float)
    inside = ((z - 20) / 17) ** 2 + ((y - 14) / 11) ** 2 + ((x - 12) / 10) ** 2 < 1
    a = inside * 100.0 + rng.normal(0, 2, inside.shape)
    d2 = sum((g - c) ** 2 for g, c in zip((z, y, x), BLOB_VOXEL))
    return (a + 300.0 * np.exp(-d2 / 8.0)).astype(np.float32)


def write_nifti(path, zyx: np.ndarray, affine: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(zyx.transpose(2, 1, 0), affine), str(path))


def make_workspace(tmp_path, n: int = 2, folds=(0, 1)) -> Workspace:
    ws = Workspace.create(tmp_path / "ws")
    recs = []
    for i in range(n):
        sid = f"s{i}"
        for kind in ("water", "fat"):
            write_nifti(ws.root / "raw" / f"{sid}_{kind}.nii.gz", body(10 * i + len(kind)),
                        subject_affine())
        recs.append({"subject_id": sid, "age": 50.0 + i, "sex": "F", "bmi": 22.0,
                     "images": {"water": f"raw/{sid}_water.nii.gz",
                                "fat": f"raw/{sid}_fat.nii.gz"}})
    ws.db.add_subjects(recs)
    run_dir = ws.model_dir("r1")
    run_dir.mkdir(parents=True)
    mcfg = {"arch": "resnet3d", "in_channels": 2, "width": 4, "depth": 18, "hidden": 8,
            "dropout": 0.0, "weights": None}
    members = []
    for k, fold in enumerate(folds):
        torch.manual_seed(k)
        net = build_model(mcfg)
        torch.save({"format": MEMBER_FORMAT, "model_config": mcfg,
                    "state_dict": net.state_dict(), "input": SPEC.to_dict(), "info": {}},
                   run_dir / f"member_{k}.pt")
        members.append({"file": f"member_{k}.pt", "fold": fold, "seed": k,
                        "target_mean": 60.0, "target_std": 8.0 + k})
    cfg = {"format": RUN_FORMAT, "run": "r1", "status": "complete", "model": mcfg,
           "train": {"loss": "meanvar"}, "input": SPEC.to_dict(), "members": members}
    (run_dir / "config.json").write_text(json.dumps(cfg))
    ident = {"global": {"a": 1.0, "b": 0.0, "n": 0}, "folds": {}}
    (run_dir / "bias_correction.json").write_text(json.dumps(ident))
    (run_dir / "calibration.json").write_text(json.dumps({"global": {"scale": 1.0},
                                                          "folds": {}}))
    (run_dir / "splits.json").write_text(json.dumps({"folds": {"s0": 1}}))
    ws.db.add_predictions("r1", [{"subject_id": "s0", "mean": 55.0, "sigma": 3.0}])
    return ws


def test_model_grid_affine_places_the_input_in_world():
    """The model-grid input mapped back to the subject grid peaks where the blob is."""
    v = Volume(np.stack([body(0), body(1)]), subject_affine(), ("water", "fat"))
    mg = model_grid_input(v, SPEC)
    assert mg.data.shape == (2, 16, 16, 16)
    np.testing.assert_array_equal(mg.data, prepare_input(v, SPEC))
    back = map_to_subject_space(mg.data[0], mg.affine, v).array
    top = np.argwhere(back > 0.8 * back.max())     # the blob (a plateau if normalisation clips)
    w = back[tuple(top.T)]
    com = (v.voxel_to_world(top) * w[:, None]).sum(0) / w.sum()
    dist = np.linalg.norm(com - v.voxel_to_world(BLOB_VOXEL))
    assert dist < 4.0, dist  # model grid voxels are 4 x 4 x 6 mm


def test_explain_subjects_writes_registers_and_resumes(tmp_path):
    ws = make_workspace(tmp_path)
    events = []
    from bodyage_core.progress import ProgressReporter

    summary = explain_subjects(ws, "r1", device="cpu",
                               reporter=ProgressReporter(events.append))
    kind = map_kind("gradcam", "r1")
    assert kind == "gradcam_r1"
    assert summary.written == ["s0", "s1"] and not summary.failed
    assert summary.no_prediction == ["s1"]
    assert any("no stored prediction" in line for line in summary.lines())
    assert events[-1].done == events[-1].total == 2
    for sid in ("s0", "s1"):
        path = ws.subject_dir(sid) / f"{kind}.nii.gz"
        img = nib.load(str(path))
        assert img.shape == (24, 28, 40)           # the subject image's own grid (x, y, z)
        np.testing.assert_allclose(img.affine, subject_affine(), atol=1e-5)
        assert img.get_data_dtype() == np.float32
        assert ws.db.get_subject(sid).images[kind] == f"subjects/{sid}/{kind}.nii.gz"
        meta = json.loads((ws.subject_dir(sid) / f"{kind}.json").read_text())
        assert meta["layer"] == "layer3" and meta["method"] == "gradcam"
    # s0 was held out in fold 1: explained with the fold-1 member only
    assert json.loads((ws.subject_dir("s0") / f"{kind}.json").read_text())["members"] == [1]
    assert json.loads((ws.subject_dir("s1") / f"{kind}.json").read_text())["members"] == [0, 1]

    again = explain_subjects(ws, "r1", device="cpu")
    assert again.skipped == ["s0", "s1"] and not again.written
    redo = explain_subjects(ws, "r1", subject_ids=["s1"], device="cpu", overwrite=True)
    assert redo.written == ["s1"]
    assert ws.db.tasks("explain", kind)["s1"]["status"] == "done"


def test_signed_and_occlusion_kinds(tmp_path):
    ws = make_workspace(tmp_path, n=1)
    s = explain_subjects(ws, "r1", variant="signed", device="cpu")
    assert s.kind == "gradcam_signed_r1" and s.written == ["s0"]
    o = explain_subjects(ws, "r1", method="occlusion", occlusion_patch=8, device="cpu")
    assert o.kind == "occlusion_r1" and o.written == ["s0"]
    images = ws.db.get_subject("s0").images
    assert {"gradcam_signed_r1", "occlusion_r1"} <= set(images)


def test_kind_override_keeps_layers_side_by_side(tmp_path):
    ws = make_workspace(tmp_path, n=1)
    a = explain_subjects(ws, "r1", layer="layer2", kind="gradcam_layer2_r1", device="cpu")
    b = explain_subjects(ws, "r1", layer="layer3", device="cpu")
    assert a.kind == "gradcam_layer2_r1" and b.kind == "gradcam_r1"
    images = ws.db.get_subject("s0").images
    assert {"gradcam_layer2_r1", "gradcam_r1"} <= set(images)
    import json

    side = json.loads((ws.subject_dir("s0") / "gradcam_layer2_r1.json").read_text())
    assert side["layer"] == "layer2"
    g = explain_subjects(ws, "r1", method="gradxinput", device="cpu")
    assert g.kind == "gradxinput_r1" and g.written == ["s0"]
    side = json.loads((ws.subject_dir("s0") / "gradxinput_r1.json").read_text())
    assert side["method"] == "gradxinput" and side["layer"] is None
    assert explain_subjects(ws, "r1", method="gradxinput", variant="abs",
                            device="cpu").kind == "gradxinput_abs_r1"


def test_bad_input_messages(tmp_path):
    ws = make_workspace(tmp_path, n=1)
    with pytest.raises(BodyageError, match="layer1, layer2, layer3"):
        explain_subjects(ws, "r1", layer="layer7", device="cpu")
    with pytest.raises(BodyageError, match="no config.json"):
        explain_subjects(ws, "nope", device="cpu")
    with pytest.raises(BodyageError, match="no subject"):
        explain_subjects(ws, "r1", subject_ids=["zz"], device="cpu")
    with pytest.raises(BodyageError, match="method"):
        explain_subjects(ws, "r1", method="lime", device="cpu")


def test_missing_image_fails_one_subject_keeps_others(tmp_path):
    ws = make_workspace(tmp_path)
    (ws.root / "raw" / "s1_fat.nii.gz").unlink()
    summary = explain_subjects(ws, "r1", device="cpu")
    assert summary.written == ["s0"] and list(summary.failed) == ["s1"]
    assert ws.db.tasks("explain", "gradcam_r1")["s1"]["status"] == "failed"


def test_cli_explain(tmp_path, capsys):
    ws = make_workspace(tmp_path, n=1)
    root = str(ws.root)
    ws.close()
    assert main(["explain", root, "--run", "r1", "--signed", "--device", "cpu"]) == 0
    out = capsys.readouterr()
    assert "gradcam_signed_r1: 1 written" in out.out
    assert main(["explain", root, "--run", "r1", "--layer", "nope"]) == 2
    assert "valid layer names" in capsys.readouterr().err


def test_cancel_keeps_finished_maps_and_resumes(tmp_path):
    from bodyage_core.errors import Cancelled
    from bodyage_core.progress import ProgressReporter

    ws = make_workspace(tmp_path)

    def cancel_after_first(ev):
        if ev.done >= 1:
            rep.cancel()

    rep = ProgressReporter(cancel_after_first)
    with pytest.raises(Cancelled):
        explain_subjects(ws, "r1", device="cpu", reporter=rep)
    assert (ws.subject_dir("s0") / "gradcam_r1.nii.gz").exists()
    assert not (ws.subject_dir("s1") / "gradcam_r1.nii.gz").exists()
    rest = explain_subjects(ws, "r1", device="cpu", save_members=True)
    assert rest.skipped == ["s0"] and rest.written == ["s1"]
    meta = json.loads((ws.subject_dir("s1") / "gradcam_r1.json").read_text())
    assert meta["member_files"] == ["subjects/s1/gradcam_r1_member0.nii.gz",
                                    "subjects/s1/gradcam_r1_member1.nii.gz"]
    m0 = nib.load(str(ws.root / meta["member_files"][0]))
    mean = nib.load(str(ws.subject_dir("s1") / "gradcam_r1.nii.gz"))
    m1 = nib.load(str(ws.root / meta["member_files"][1]))
    np.testing.assert_allclose((m0.get_fdata() + m1.get_fdata()) / 2, mean.get_fdata(),
                               rtol=1e-4, atol=1e-6)


def test_cli_sanity_check_writes_report(tmp_path, capsys):
    ws = make_workspace(tmp_path, n=1)
    root = ws.root
    ws.close()
    rc = main(["explain", str(root), "--run", "r1", "--device", "cpu", "--sanity-check"])
    out = capsys.readouterr().out
    assert "sanity check (s0):" in out
    report = json.loads((root / "reports" / "explain_sanity_r1.json").read_text())
    assert report["mode"] == "cascading" and report["steps"]
    assert rc == (1 if report["flagged"] else 0)


def test_maps_are_zero_in_the_air_around_the_body(tmp_path):
    """Grad-CAM's coarse cells and the zero padding at the grid's edges put evidence in the air;
    the saved map keeps only the body (and says so in its sidecar)."""
    from bodyage_core.explain.pipeline import explain_subject
    from bodyage_core.inference.ensemble import AgeRun

    ws = make_workspace(tmp_path)
    age_run = AgeRun(ws.model_dir("r1"), device="cpu")
    models = age_run.load_members()
    subj = ws.db.get_subject("s1")
    z, y, x = np.indices((40, 28, 24)).astype(float)
    radius = np.sqrt(((z - 20) / 17) ** 2 + ((y - 14) / 11) ** 2 + ((x - 12) / 10) ** 2)
    air = radius > 1.6                              # > 15 mm outside the skin everywhere
    outside = {}
    for body_only in (False, True):
        out = explain_subject(ws, "r1", age_run, models, subj, f"m{int(body_only)}",
                              variant="signed", body_only=body_only)
        m = np.asarray(nib.load(str(ws.resolve(out["path"]))).dataobj).transpose(2, 1, 0)
        outside[body_only] = float(np.abs(m[air]).max())
        assert np.abs(m[radius < 0.9]).max() > 0    # the body keeps its evidence
        meta = json.loads((ws.subject_dir("s1") / f"m{int(body_only)}.json").read_text())
        assert meta["body_only"] is body_only
    assert outside[False] > 0                       # there was something in the air ...
    assert outside[True] == 0.0                     # ... and the body-only map has none
