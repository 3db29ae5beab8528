"""`bodyage demo` end to end on a tiny cohort with the shipped model and atlas: every stage
runs, leaves its files and the summary says what it showed."""

from __future__ import annotations

import json

import pytest

from bodyage_core.cli.main import main
from bodyage_core.cohort import Workspace

MODEL = "wholebody-synthetic"
ARGS = ["--n", "12", "--grid", "14,14,18", "--train-epochs", "1", "--train-width", "4",
        "--permutations", "20", "--no-gui"]


@pytest.mark.slow
def test_demo_pipeline_tiny(tmp_path, capsys):
    ws = tmp_path / "demo"
    rc = main(["demo", str(ws), *ARGS])
    out = capsys.readouterr().out
    assert rc == 0, out
    for step in ("synth", "predict", "report", "explain", "atlas install", "register",
                 "atlas maps", "compare accelerated decelerated", "train", "gui"):
        assert f"$ bodyage {step} " in out
    db = Workspace.open(ws).db
    preds = db.predictions(MODEL)
    assert len(preds) == 12 and all(p["mean"] is not None for p in preds)
    assert all(f"gradcam_{MODEL}" in s.images for s in db.subjects())
    for group in ("F", "M"):
        pop = json.loads((ws / "atlases" / group / f"population_{MODEL}.json").read_text())
        assert pop["subgroups"]["all"]["n"] == 6
        assert (ws / "atlases" / group /
                f"compare_{MODEL}_accelerated_vs_decelerated_t.nii.gz").exists()
        trend = json.loads((ws / "atlases" / group /
                            f"population_gradxinput_signed_vs_atlas_{MODEL}.json").read_text())
        assert trend["subgroups"]["age_trend"]["n"] == 6
    # the signed maps are made against each subject's atlas template (registered first)
    side = json.loads((ws / "subjects" / preds[0]["subject_id"] /
                       f"gradxinput_signed_vs_atlas_{MODEL}.json").read_text())
    assert side["reference"]["kind"] == "atlas" and side["reference"]["group"] in ("F", "M")
    assert out.index("$ bodyage register ") < out.index("--reference atlas")
    # the viewer shows the shipped model's predictions (the latest), not the short run's
    assert out.index("$ bodyage train ") < out.index("$ bodyage predict ")
    assert db.latest_run() == MODEL
    assert (ws / "reports" / f"{MODEL}_summary.csv").exists()
    assert (ws / "reports" / "viewer.png").stat().st_size > 10_000
    summary = json.loads((ws / "reports" / "demo_summary.json").read_text())
    claims = [c["claim"] for c in summary["checks"]]
    assert any("noise floor" in c for c in claims) and any("ridge" in c for c in claims)
    assert summary["training"]["n"] == 12
    text = (ws / "reports" / "demo_summary.md").read_text()
    assert "What the demo claims" in text
    # a second run resumes: nothing is redone, and it still succeeds
    assert main(["demo", str(ws), *ARGS]) == 0
    assert "$ bodyage train " not in capsys.readouterr().out
