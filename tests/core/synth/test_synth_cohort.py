"""generate_cohort / `bodyage synth`: files, CSV, ground truth, cohort index, resume, errors."""

from __future__ import annotations

import csv
import json

import nibabel as nib
import numpy as np
import pytest

from bodyage_core.errors import CohortError
from bodyage_core.progress import ProgressReporter
from bodyage_core.synth import IMAGE_KINDS, generate_cohort, generate_subject, sample_subject

GRID = (12.0, 12.0, 15.0)


def test_generate_cohort_writes_files_csv_truth_and_index(tmp_path):
    events = []
    ws = tmp_path / "ws"
    ids = generate_cohort(ws, 3, seed=4, grid=GRID, reporter=ProgressReporter(events.append))
    assert ids == ["synth004_00000", "synth004_00001", "synth004_00002"]
    assert [e.done for e in events if e.done > 0] == [1, 2, 3]
    for sid in ids:
        d = ws / "subjects" / sid
        for kind in IMAGE_KINDS:
            assert (d / f"{kind}.nii.gz").is_file()
        truth = json.loads((d / "truth.json").read_text())
        assert truth["subject_id"] == sid and "effect_values" in truth
    rows = list(csv.DictReader(open(ws / "participants.csv")))
    assert [r["subject_id"] for r in rows] == ids
    assert set(rows[0]) == {"subject_id", "age", "sex", "bmi", "bmi_group", "site"}
    assert all(44 <= float(r["age"]) <= 82 for r in rows)

    from bodyage_core.cohort import Workspace

    with Workspace.open(ws) as w:
        assert w.db.count() == 3
        s = w.db.get_subject(ids[1])
        assert s.sex in ("F", "M") and s.bmi_group in ("healthy", "overweight", "obese")
        assert set(s.images) == set(IMAGE_KINDS)
        assert w.resolve(s.images["water"]).is_file()
        assert "spine" in s.meta["effects"] and "bio_age" in s.meta


def test_nifti_is_xyz_ras_and_matches_the_volume(tmp_path):
    ws = tmp_path / "ws"
    (sid,) = generate_cohort(ws, 1, seed=2, grid=GRID, register=False)
    subj = generate_subject(sample_subject(2, 0), GRID)
    for kind in IMAGE_KINDS:
        img = nib.load(ws / "subjects" / sid / f"{kind}.nii.gz")
        vol = getattr(subj, kind)
        assert nib.aff2axcodes(img.affine) == ("R", "A", "S")
        assert img.shape == vol.shape[::-1]
        assert np.allclose(img.affine, vol.affine)
        assert np.array_equal(np.asarray(img.dataobj), vol.data[0].transpose(2, 1, 0))
    assert nib.load(ws / "subjects" / sid / "labels.nii.gz").get_data_dtype() == np.uint8
    assert not (ws / "cohort.sqlite").exists()


def test_resumable_and_settings_guard(tmp_path):
    ws = tmp_path / "ws"
    generate_cohort(ws, 2, seed=1, grid=GRID)
    f = ws / "subjects" / "synth001_00001" / "water.nii.gz"
    mtime = f.stat().st_mtime_ns
    f0 = ws / "subjects" / "synth001_00000" / "fat.nii.gz"
    f0.unlink()                                   # an interrupted subject is redone
    ids = generate_cohort(ws, 3, seed=1, grid=GRID)
    assert len(ids) == 3 and f0.is_file()
    assert f.stat().st_mtime_ns == mtime          # a complete subject is skipped
    assert len(list(csv.DictReader(open(ws / "participants.csv")))) == 3
    with pytest.raises(CohortError, match="other settings"):
        generate_cohort(ws, 3, seed=1, grid=GRID, effects="spine=2")
    generate_cohort(ws, 1, seed=1, grid=GRID, effects="spine=2", overwrite=True)
    assert f.stat().st_mtime_ns == mtime          # only the first subject was redone


def test_cancel_stops_between_subjects(tmp_path):
    from bodyage_core.errors import Cancelled

    rep = ProgressReporter(lambda e: rep.cancel() if e.done >= 1 else None)
    with pytest.raises(Cancelled):
        generate_cohort(tmp_path / "ws", 4, seed=0, grid=GRID, reporter=rep)
    done = [d for d in (tmp_path / "ws" / "subjects").iterdir()]
    assert len(done) == 1
    rows = list(csv.DictReader(open(tmp_path / "ws" / "participants.csv")))
    assert [r["subject_id"] for r in rows] == [done[0].name]
    from bodyage_core.cohort import Workspace

    with Workspace.open(tmp_path / "ws") as w:      # what was written is registered
        assert w.db.count() == 1


def test_cli_synth(tmp_path, capsys):
    from bodyage_core.cli.main import main

    ws = tmp_path / "ws"
    rc = main(["synth", str(ws), "--n", "2", "--seed", "3", "--grid", "12,12,15",
               "--effects", "only:heart,knee"])
    out = capsys.readouterr().out
    assert rc == 0 and "2 subjects" in out and "heart=1" in out and "spine" not in out
    truth = json.loads((ws / "subjects" / "synth003_00000" / "truth.json").read_text())
    assert truth["strengths"]["spine"] == 0.0
    assert main(["synth", str(ws), "--n", "2", "--effects", "lungs=1"]) == 2
    assert "unknown age effect" in capsys.readouterr().err
    assert main(["synth", str(ws), "--n", "0"]) == 2


def test_figures_are_written(tmp_path):
    from bodyage_core.synth.figures import mask_figure, overview_figure

    subs = [generate_subject(sample_subject(0, i).with_age(a, 0), GRID)
            for i, a in ((0, 47), (4, 79))]
    for path in (overview_figure(subs, tmp_path / "ov.png"),
                 mask_figure(subs, tmp_path / "mask.png")):
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
