"""Model bundles and prediction on files: ``bodyage export``, ``bodyage models``, ``bodyage
predict FILE|FOLDER --model``; a tampered weight file and a pickle payload are refused (and the
payload does not run); the envelope refuses scans of another contrast or body region."""

from __future__ import annotations

import csv
import json
import os
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from bodyage_core.cli.main import main
from bodyage_core.errors import BodyageError
from bodyage_core.inference.bundle import find_model, read_card
from bodyage_core.inference.ensemble import AgeRun
from bodyage_core.inference.export import verify_model
from bodyage_core.io import load_channels, load_volume
from bodyage_core.preprocess.spec import prepare_input

torch.set_num_threads(1)
DATA = Path(__file__).resolve().parents[3].parent / "shared" / "data"
IXI = DATA / "ixi_t1_2mm" / "t1" / "IXI013-HH-1212_T1.nii.gz"
FAST = ["--width", "4", "--epochs", "2", "--device", "cpu", "--threads", "1",
        "--batch-size", "4", "--folds", "2"]


@pytest.fixture(scope="module")
def wb(tmp_path_factory):
    """A tiny synthetic whole-body (water + fat) workspace, a run and its export."""
    root = tmp_path_factory.mktemp("wb")
    ws = root / "ws"
    assert main(["synth", str(ws), "--n", "12", "--grid", "16,16,20"]) == 0
    assert main(["train", str(ws), "--run", "r", *FAST]) == 0
    assert main(["export", str(ws), "--run", "r", str(root / "m32"), "--name", "wb-tiny",
                 "--float32"]) == 0
    assert main(["export", str(ws), "--run", "r", str(root / "m16"), "--name", "wb-tiny"]) == 0
    return root


def _subject_files(ws: Path, sid: str) -> dict[str, Path]:
    d = ws / "subjects" / sid
    return {"water": d / "water.nii.gz", "fat": d / "fat.nii.gz"}


def _rows(path: Path) -> list[dict[str, str]]:
    return list(csv.DictReader(path.open()))


def test_export_writes_a_verified_card(wb):
    card = read_card(wb / "m32")
    for key in ("architecture", "input", "preprocessing", "channels", "contrast",
                "training_cohort", "metrics", "bias_correction", "calibration", "envelope",
                "intended_use", "licence", "members"):
        assert key in card, key
    assert card["training_cohort"]["n"] == 12
    assert set(card["training_cohort"]["sex"]) == {"F", "M"}
    assert card["envelope"]["channels"] == ["water", "fat"]
    assert card["envelope"]["field_of_view_xyz_mm"]["min"][2] > 900     # neck to knee, mm
    assert len(card["members"]) == 2 and all(len(m["sha256"]) == 64 for m in card["members"])
    assert not list((wb / "m32").glob("*.pt"))                          # no pickles shipped
    lines = verify_model(wb / "m32")
    assert any("2 member network(s) load" in line for line in lines)
    # float16 weights are half the size
    s32 = (wb / "m32" / "member_0.safetensors").stat().st_size
    s16 = (wb / "m16" / "member_0.safetensors").stat().st_size
    assert 0.4 < s16 / s32 < 0.6


def test_predict_files_gives_the_runs_own_prediction(wb, tmp_path, capsys):
    ws = wb / "ws"
    sids = ["synth000_00003", "synth000_00010"]
    out = tmp_path / "p.csv"
    assert main(["predict", *[str(ws / "subjects" / s) for s in sids], "--model",
                 str(wb / "m32"), "--csv", str(out), "--explain",
                 "--ages", str(ws / "participants.csv")]) == 0
    rows = {r["id"]: r for r in _rows(out)}
    run = AgeRun(ws / "models" / "r")
    ages = {r["subject_id"]: float(r["age"]) for r in csv.DictReader(
        (ws / "participants.csv").open())}
    for sid in sids:
        x = prepare_input(load_channels(_subject_files(ws, sid)), run.spec)
        want = run.predict(x[None], ["new"], out_of_fold=False)
        r = rows[sid]
        assert r["status"] == "ok"
        assert float(r["predicted_age"]) == pytest.approx(want.corrected[0], abs=0.011)
        assert float(r["predicted_age_raw"]) == pytest.approx(want.mean[0], abs=0.011)
        assert float(r["sigma"]) == pytest.approx(want.sigma[0], abs=0.011)
        lo, hi = float(r["ci95_low"]), float(r["ci95_high"])
        assert lo == pytest.approx(want.corrected[0] - 1.96 * want.sigma[0], abs=0.03)
        assert hi == pytest.approx(want.corrected[0] + 1.96 * want.sigma[0], abs=0.03)
        assert float(r["chronological_age"]) == pytest.approx(ages[sid], abs=0.01)
        assert float(r["gap"]) == pytest.approx(want.corrected[0] - ages[sid], abs=0.02)
        assert r["model"] == "wb-tiny" and r["model_version"] == "1.0.0"
        assert len(r["model_sha"]) == 12
        assert Path(r["qc_png"]).stat().st_size > 5000
        m = load_volume(r["map"])
        assert m.shape == load_volume(_subject_files(ws, sid)["water"]).shape
    # float16 weights: the same ages within a few hundredths of a year
    out16 = tmp_path / "p16.csv"
    assert main(["predict", str(ws / "subjects" / sids[0]), "--model", str(wb / "m16"),
                 "--csv", str(out16), "--no-qc-png"]) == 0
    r16 = _rows(out16)[0]
    assert float(r16["predicted_age"]) == pytest.approx(float(rows[sids[0]]["predicted_age"]),
                                                        abs=0.1)


def test_sigma_follows_the_qc_score_where_the_calibration_has_a_qc_term(wb, tmp_path):
    """A calibration fitted with a QC term (a degraded cohort's) turns the ensemble's raw
    variance into sigma with the input's own QC score; without a score, the scale-only
    fallback."""
    from bodyage_core.inference.subject import predict_subject

    src = wb / "ws" / "models" / "r"
    run_dir = tmp_path / "r"
    shutil.copytree(src, run_dir)
    cal = json.loads((run_dir / "calibration.json").read_text())
    for fit in [cal["global"], *cal["folds"].values()]:
        fit["fallback"] = {"scale": fit["scale"], "floor": fit["floor"]}
        fit["qc"] = {"median": 0.5, "low": 0.01, "high": 100.0, "power": 2.0}
        fit["scale"], fit["floor"], fit["chosen"] = 3.0, 0.0, "qc"
    (run_dir / "calibration.json").write_text(json.dumps(cal))
    run = AgeRun(run_dir)
    assert run.qc_stats is not None
    sid = "synth000_00003"
    vol = load_channels(_subject_files(wb / "ws", sid))
    res = predict_subject(run, vol, subject_id="new", out_of_fold=False)
    raw = run.predict(prepare_input(vol, run.spec)[None], ["new"], out_of_fold=False)
    assert res.qc_score is not None and res.qc_score > 0
    want = np.sqrt(raw.variance[0] * 3.0 * (res.qc_score / 0.5) ** 2)
    assert res.sigma == pytest.approx(want, rel=1e-6)
    assert raw.sigma[0] == pytest.approx(np.sqrt(raw.variance[0] * cal["global"]["fallback"]
                                                 ["scale"] + cal["global"]["fallback"]
                                                 ["floor"]), rel=1e-6)
    unchecked = predict_subject(run, vol, subject_id="new", out_of_fold=False, check=False)
    assert unchecked.qc_score is None and unchecked.sigma == pytest.approx(raw.sigma[0])


def test_workspace_predict_with_a_model(wb, tmp_path):
    ws = tmp_path / "ws"
    shutil.copytree(wb / "ws", ws)
    assert main(["predict", str(ws), "--model", str(wb / "m32"), "--device", "cpu",
                 "--scheduler", "none"]) == 0
    from bodyage_core.cohort import Workspace

    with Workspace.open(ws) as w:
        rows = w.db.predictions("wb-tiny")
    assert len(rows) == 12 and {r["split"] for r in rows} == {"new"}


def test_tampered_weights_are_refused(wb, tmp_path, capsys):
    m = tmp_path / "m"
    shutil.copytree(wb / "m32", m)
    f = m / "member_1.safetensors"
    data = bytearray(f.read_bytes())
    data[-5] ^= 0xFF                                    # one byte of one weight
    f.write_bytes(bytes(data))
    assert main(["models", "verify", str(m)]) == 2
    err = capsys.readouterr().err
    assert "checksum mismatch" in err and "member_1.safetensors" in err
    assert len(err.strip().splitlines()) == 1
    scan = wb / "ws" / "subjects" / "synth000_00001"
    out = tmp_path / "p.csv"
    assert main(["predict", str(scan), "--model", str(m), "--csv", str(out)]) == 1
    row = _rows(out)[0]
    assert row["status"] == "failed" and "checksum mismatch" in row["message"]
    (m / "member_0.safetensors").unlink()
    assert main(["models", "verify", str(m)]) == 2
    assert "missing" in capsys.readouterr().err


class _Payload:
    """Pickles to a call of os.system: what a hostile model file would carry."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_pickle_payload_in_a_run_is_refused_and_does_not_run(wb, tmp_path, capsys):
    ws = tmp_path / "ws"
    shutil.copytree(wb / "ws", ws)
    marker = tmp_path / "PAYLOAD_RAN"
    member = ws / "models" / "r" / "member_0.pt"
    good = torch.load(member, weights_only=True)
    good["info"] = _Payload(marker)
    torch.save(good, member)
    assert not marker.exists()
    rc = main(["predict", str(ws), "--run", "r", "--device", "cpu", "--scheduler", "none"])
    err = capsys.readouterr().err
    assert rc == 2 and "refused" in err and "member_0.pt" in err
    assert not marker.exists()
    # the same file as a training checkpoint: --resume refuses it too
    from bodyage_core.inference.weights import load_torch_file

    with pytest.raises(BodyageError, match="refused"):
        load_torch_file(member, what="training checkpoint")
    assert not marker.exists()


def test_envelope_refuses_another_contrast_and_body_region(wb, tmp_path):
    ws = wb / "ws"
    # the whole-body model is given one image (a brain T1 would be one image too)
    one = tmp_path / "one.nii.gz"
    shutil.copy(_subject_files(ws, "synth000_00002")["water"], one)
    out = tmp_path / "p.csv"
    assert main(["predict", str(one), "--model", str(wb / "m32"), "--csv", str(out)]) == 1
    row = _rows(out)[0]
    assert row["status"] == "refused" and "water and fat" in row["message"]
    if IXI.exists():
        assert main(["predict", str(IXI), "--model", str(wb / "m32"), "--csv", str(out)]) == 1
        assert _rows(out)[0]["status"] == "refused"
    # a single-image model (trained on small T1 cubes) refuses a water/fat pair, and a scan
    # of another field of view
    t1 = tmp_path / "t1ws"
    sys.path.insert(0, str(Path(__file__).parents[1] / "training"))   # its helpers
    from test_training_cli import _make_ws

    _make_ws(t1, list(np.linspace(20, 80, 10)))
    assert main(["train", str(t1), "--run", "b", "--spacing", "4", "4", "4", "--shape", "12",
                 "12", "12", *FAST]) == 0
    assert main(["export", str(t1), "--run", "b", str(tmp_path / "brain")]) == 0
    card = read_card(tmp_path / "brain")
    assert card["contrast"] == "T1-weighted MRI"
    assert main(["predict", str(ws / "subjects" / "synth000_00002"), "--model",
                 str(tmp_path / "brain"), "--csv", str(out)]) == 1
    row = _rows(out)[0]
    assert row["status"] == "refused" and "T1" in row["message"]
    if IXI.exists():                                   # 240 mm head vs 40 mm training cubes
        assert main(["predict", str(IXI), "--model", str(tmp_path / "brain"), "--csv",
                     str(out)]) == 1
        row = _rows(out)[0]
        assert row["status"] == "refused" and "field of view" in row["message"]
    ok = t1 / "subjects" / "sub03" / "t1.nii.gz"
    assert main(["predict", str(ok), "--model", str(tmp_path / "brain"), "--csv",
                 str(out)]) == 0
    assert "channels_assumed" in _rows(out)[0]["qc_flags"]


def test_models_list_show_and_names(wb, tmp_path, capsys, monkeypatch):
    shelf = tmp_path / "shelf"
    shelf.mkdir()
    shutil.copytree(wb / "m16", shelf / "wb-tiny")
    monkeypatch.setenv("BODYAGE_MODEL_PATH", str(shelf))
    assert find_model("wb-tiny") == shelf / "wb-tiny"
    assert main(["models", "list"]) == 0
    assert "wb-tiny" in capsys.readouterr().out
    assert main(["models", "show", "wb-tiny"]) == 0
    assert "trained on" in capsys.readouterr().out
    assert main(["models", "show", "wb-tiny", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["name"] == "wb-tiny"
    assert main(["models", "verify", "no-such-model"]) == 2
    assert "no model named" in capsys.readouterr().err
    assert main(["models", "verify", "../escape"]) == 2


# -- the shipped models ---------------------------------------------------------------------

def _shipped():
    from bodyage_core.inference.bundle import list_models

    return {m["name"]: m for m in list_models() if m["where"] == "shipped"}


def test_shipped_models_verify_and_predict_a_file(tmp_path):
    """Every shipped model loads, verifies and predicts a file without a workspace: the
    whole-body model a synthetic subject it never saw, the brain model a real IXI brain."""
    shipped = _shipped()
    assert {"wholebody-synthetic", "brain-t1-ixi"} <= set(shipped)
    total = sum(p.stat().st_size for m in shipped.values() for p in m["dir"].iterdir()
                if p.suffix == ".safetensors")
    assert total <= 25e6                                           # weights fit the repository
    for m in shipped.values():
        assert any("load" in line for line in verify_model(m["dir"]))
    ws = tmp_path / "ws"
    assert main(["synth", str(ws), "--n", "2", "--seed", "99"]) == 0
    out = tmp_path / "wb.csv"
    assert main(["predict", str(ws / "subjects"), "--model", "wholebody-synthetic",
                 "--ages", str(ws / "participants.csv"), "--csv", str(out),
                 "--no-qc-png"]) == 0
    for r in _rows(out):
        assert r["status"] == "ok" and abs(float(r["gap"])) < 12
        assert 0 < float(r["qc_score"]) < 3
    if IXI.exists():
        out = tmp_path / "ixi.csv"
        assert main(["predict", str(IXI), "--csv", str(out), "--no-qc-png", "--ages",
                     str(IXI.parents[1] / "participants.csv")]) == 0   # the model is chosen
        r = _rows(out)[0]
        assert r["model"] == "brain-t1-ixi" and abs(float(r["gap"])) < 20


def test_shipped_model_flags_a_fat_water_swap(tmp_path):
    """The QC score: water and fat given the wrong way round are unlike every training image."""
    from bodyage_core.inference.subject import predict_subject

    run = AgeRun(_shipped()["wholebody-synthetic"]["dir"])
    ws = tmp_path / "ws"
    assert main(["synth", str(ws), "--n", "1", "--seed", "98"]) == 0
    vol = load_channels(_subject_files(ws, "synth098_00000"))
    clean = predict_subject(run, vol, subject_id="clean", out_of_fold=False)
    swapped = predict_subject(run, vol.with_data(vol.data[::-1].copy()), subject_id="swap",
                              out_of_fold=False)
    assert clean.qc_score < 1.5 and "unlike_training" not in {f["flag"] for f in clean.qc}
    assert swapped.qc_score > 3 and swapped.qc_percentile == 1.0
    assert "unlike_training" in {f["flag"] for f in swapped.qc}


def test_resources_are_found_through_one_module(qapp):
    """The shipped resources (models, atlases, presets, colour maps, icon, desktop entry) are
    package data found through bodyage_core.resources; the viewer reads its presets and colour
    maps from there and shows the icon."""
    from bodyage_core import display, resources
    from bodyage_core.atlas.shipped import shipped_atlases
    from bodyage_core.viewer import windowing

    assert (resources.shipped_models_dir() / "brain-t1-ixi" / "model.json").is_file()
    assert shipped_atlases()["wholebody-synthetic"] == ["F", "M"]
    assert windowing.CT_PRESETS["soft tissue"] == (400.0, 40.0)
    assert display.canonical_name("gray") == "grey"
    assert display.lut("heat").shape == (256, 4)
    assert "Exec=bodyage gui" in resources.desktop_entry_path().read_text()
    from bodyage_gui.app import application

    assert not application().windowIcon().isNull()


def test_fine_tuning_starts_from_the_init_model(wb, tmp_path):
    """train --init MODEL: every member starts from a member of the model (its input spec and
    target scaling too): with a vanishing learning rate the weights stay the model's."""
    ws = tmp_path / "ws"
    shutil.copytree(wb / "ws", ws)
    assert main(["train", str(ws), "--run", "ft", "--init", str(wb / "m32"), "--folds", "2",
                 "--epochs", "1", "--lr", "1e-12", "--device", "cpu", "--threads", "1"]) == 0
    cfg = json.loads((ws / "models" / "ft" / "config.json").read_text())
    assert cfg["init"]["model"] == "wb-tiny" and cfg["input"] == read_card(wb / "m32")["input"]
    init = AgeRun(wb / "m32")
    for k in range(2):
        got = torch.load(ws / "models" / "ft" / f"member_{k}.pt", weights_only=True)
        want = init.member_state(k)
        conv = [n for n in want if n.endswith("weight") and want[n].ndim == 5]
        assert conv and all(torch.allclose(got["state_dict"][n], want[n], atol=1e-6)
                            for n in conv)
        assert got["info"]["target_mean"] == pytest.approx(init.members[k]["target_mean"])


def test_sigma_follows_the_body_extent_where_the_calibration_has_that_term(wb, tmp_path):
    """A calibration with a head-foot extent term (and none for the QC score): sigma grows as
    the input shows less of the body, with or without the QC check."""
    from bodyage_core.inference.subject import predict_subject
    from bodyage_core.qc.field_of_view import body_extent

    run_dir = tmp_path / "r"
    shutil.copytree(wb / "ws" / "models" / "r", run_dir)
    cal = json.loads((run_dir / "calibration.json").read_text())
    for fit in [cal["global"], *cal["folds"].values()]:
        fit["fallback"] = {"scale": fit["scale"], "floor": fit["floor"]}
        fit["terms"] = {"extent": {"median": 0.9, "low": 0.3, "high": 1.0, "power": -4.0}}
        fit["scale"], fit["floor"], fit["chosen"] = 2.0, 0.0, "terms"
    (run_dir / "calibration.json").write_text(json.dumps(cal))
    run = AgeRun(run_dir)
    vol = load_channels(_subject_files(wb / "ws", "synth000_00003"))
    x = prepare_input(vol, run.spec)
    cut = x.copy()
    cut[:, : x.shape[1] // 3] = cut.min()            # the top third of the field of view gone
    raw = run.predict(np.stack([x, cut]), ["a", "b"], out_of_fold=False)
    for arr, k in ((x, 0), (cut, 1)):
        for check in (True, False):
            res = predict_subject(run, model_input=arr, subject_id="new", out_of_fold=False,
                                  check=check)
            ext = np.clip(body_extent(arr), 0.3, 1.0)
            want = np.sqrt(raw.variance[k] * 2.0 * (ext / 0.9) ** -4.0)
            assert res.sigma == pytest.approx(want, rel=1e-5)
    whole = predict_subject(run, model_input=x, subject_id="new", out_of_fold=False)
    part = predict_subject(run, model_input=cut, subject_id="new", out_of_fold=False)
    assert body_extent(cut) < body_extent(x) - 0.2
    assert part.sigma > 1.5 * whole.sigma * np.sqrt(raw.variance[1] / raw.variance[0])
