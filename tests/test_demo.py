"""`bodyage demo` end to end on a tiny cohort: every stage runs and leaves its files."""

from __future__ import annotations

import json

import pytest

from bodyage_core.cli.main import main
from bodyage_core.cohort import Workspace


@pytest.mark.slow
def test_demo_pipeline_tiny(tmp_path, capsys):
    ws = tmp_path / "demo"
    rc = main(["demo", str(ws), "--n", "12", "--grid", "14,14,18", "--members", "1",
               "--folds", "2", "--epochs", "1", "--width", "4",
               "--model-spacing", "18", "14", "14", "--no-gui"])
    out = capsys.readouterr().out
    assert rc == 0, out
    for step in ("synth", "train", "predict", "report", "explain", "atlas build", "atlas maps",
                 "compare accelerated decelerated", "gui"):
        assert f"$ bodyage {step} " in out
    db = Workspace.open(ws).db
    preds = db.predictions("demo")
    assert len(preds) == 12 and all(p["mean"] is not None for p in preds)
    assert all("gradcam_demo" in s.images for s in db.subjects())
    for group in ("F", "M"):
        pop = json.loads((ws / "atlases" / group / "population_demo.json").read_text())
        assert pop["subgroups"]["all"]["n"] == 6
        assert (ws / "atlases" / group / "compare_demo_accelerated_vs_decelerated_t.nii.gz").exists()
        trend = json.loads((ws / "atlases" / group / "population_gradxinput_signed_demo.json")
                           .read_text())["subgroups"]["age_trend"]
        assert trend["n"] == 6
        assert (ws / "atlases" / group / "population_gradxinput_signed_demo_age_trend.nii.gz"
                ).exists()
    assert (ws / "reports" / "demo_summary.csv").exists()
    assert (ws / "reports" / "viewer.png").stat().st_size > 10_000
    # a second run resumes: nothing is redone, and it still succeeds
    assert main(["demo", str(ws), "--n", "12", "--grid", "14,14,18", "--members", "1",
                 "--folds", "2", "--epochs", "1", "--width", "4",
                 "--model-spacing", "18", "14", "14", "--no-gui"]) == 0
