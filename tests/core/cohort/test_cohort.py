"""The cohort index and the importer, on real SQLite files and the real IXI CSV."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from bodyage_core.cli.main import main
from bodyage_core.cohort import SCHEMA_VERSION, CohortDB, Workspace, bmi_group
from bodyage_core.cohort.importer import ColumnMap, import_cohort, read_subject_csv
from bodyage_core.errors import CohortError

DATA = Path(__file__).resolve().parents[3].parent / "shared" / "data"
IXI = DATA / "ixi_t1_2mm"


def _touch_images(folder: Path, names: list[str]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for n in names:
        (folder / n).write_bytes(b"")


def _csv(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


@pytest.mark.skipif(not IXI.exists(), reason="shared IXI data not present")
def test_ixi_participants_import_as_is(tmp_path):
    summary = import_cohort(tmp_path / "ws", IXI / "t1", IXI / "participants.csv", kind="t1")
    assert summary.imported == 141
    assert not summary.rows_without_image and not summary.images_without_row
    ws = Workspace.open(tmp_path / "ws")
    s = ws.db.get_subject("IXI013-HH-1212")
    assert s.age == pytest.approx(46.71)
    assert s.sex == "M"
    # recorded where it lies, not copied into the workspace
    assert ws.image_path(s.subject_id, "t1") == (IXI / "t1" / "IXI013-HH-1212_T1.nii.gz").resolve()
    ages = [x.age for x in ws.db.subjects()]
    assert 19 < min(ages) < 25 and 80 < max(ages) < 90


def test_reimport_is_idempotent_and_updates(tmp_path):
    imgs = tmp_path / "imgs"
    _touch_images(imgs, ["s1_water.nii.gz", "s2_water.nii.gz"])
    csv = _csv(tmp_path / "a.csv", "subject_id,age,sex,bmi\ns1,50,F,22\ns2,61,M,31\n")
    import_cohort(tmp_path / "ws", imgs, csv, kind="water")
    _csv(csv, "subject_id,age,sex,bmi\ns1,51,F,26\ns2,61,M,31\n")
    import_cohort(tmp_path / "ws", imgs, csv, kind="water")
    db = Workspace.open(tmp_path / "ws").db
    assert db.count() == 2
    s1 = db.get_subject("s1")
    assert (s1.age, s1.bmi_group) == (51.0, "overweight")
    assert db.get_subject("s2").bmi_group == "obese"


def test_missing_age_column_names_file_and_columns(tmp_path):
    csv = _csv(tmp_path / "p.csv", "MRID,Sex\nA,M\n")
    with pytest.raises(CohortError) as err:
        read_subject_csv(csv)
    msg = str(err.value)
    assert "p.csv" in msg and "no age column" in msg and "MRID, Sex" in msg
    assert "--age-column" in msg


def test_explicit_columns_and_semicolons(tmp_path):
    csv = _csv(tmp_path / "p.csv", "pid;years;gender\nA;70.5;female\n")
    rows = read_subject_csv(csv, ColumnMap(id="pid", age="years", sex="gender"))
    assert rows == [{"subject_id": "A", "age": 70.5, "sex": "F", "bmi": None, "site": None}]


def test_duplicate_ids_refused_and_db_untouched(tmp_path):
    imgs = tmp_path / "imgs"
    _touch_images(imgs, ["a.nii.gz", "b.nii.gz"])
    ok = _csv(tmp_path / "ok.csv", "id,age\na,50\n")
    import_cohort(tmp_path / "ws", imgs, ok)
    dup = _csv(tmp_path / "dup.csv", "id,age\na,50\nb,60\na,70\n")
    with pytest.raises(CohortError, match="duplicate subject ids: a"):
        import_cohort(tmp_path / "ws", imgs, dup)
    assert Workspace.open(tmp_path / "ws").db.subject_ids() == ["a"]


def test_bad_value_mid_file_leaves_database_as_it_was(tmp_path):
    imgs = tmp_path / "imgs"
    _touch_images(imgs, [f"s{i}.nii" for i in range(5)])
    bad = _csv(tmp_path / "bad.csv",
               "id,age,sex\n" + "".join(f"s{i},{40 + i},{'X' if i == 3 else 'M'}\n"
                                        for i in range(5)))
    with pytest.raises(CohortError, match=r"row 5 \(subject s3\)"):
        import_cohort(tmp_path / "ws", imgs, bad)
    # the CSV is read before the workspace is made: a failed import leaves no empty workspace
    assert not (tmp_path / "ws").exists()


def test_crash_inside_the_write_transaction_rolls_back(tmp_path):
    ws = Workspace.create(tmp_path / "ws")
    ws.db.add_subjects([{"subject_id": "keep", "age": 50}])

    def records():
        yield {"subject_id": "new1", "age": 40}
        yield {"subject_id": "new2", "age": "not a number"}

    with pytest.raises(ValueError):
        ws.db.add_subjects(records())
    assert ws.db.subject_ids() == ["keep"]
    # and a failure after rows were inserted (foreign key on images) also rolls back
    with pytest.raises(sqlite3.IntegrityError):
        with ws.db.transaction() as cur:
            cur.execute("INSERT INTO subjects (subject_id, created) VALUES ('x', 0)")
            cur.execute("INSERT INTO images VALUES ('nobody', 'water', 'p')")
    assert ws.db.subject_ids() == ["keep"]


def test_rows_without_images_and_images_without_rows_are_listed(tmp_path):
    imgs = tmp_path / "imgs"
    _touch_images(imgs, ["a_T1.nii.gz", "stray.nii.gz", "notes.txt"])
    (imgs / "b").mkdir()  # a DICOM-series folder counts as an image entry
    csv = _csv(tmp_path / "p.csv", "id,age\na,50\nb,60\nc,70\n")
    summary = import_cohort(tmp_path / "ws", imgs, csv, kind="t1")
    assert summary.imported == 2
    assert summary.rows_without_image == ["c"]
    assert summary.images_without_row == ["stray.nii.gz"]
    assert any("1 CSV row(s) with no image" in w for w in summary.warnings)


def test_prefix_matching_prefers_the_longest_id(tmp_path):
    imgs = tmp_path / "imgs"
    _touch_images(imgs, ["AB-1_T1.nii.gz", "AB_T1.nii.gz"])
    csv = _csv(tmp_path / "p.csv", "id,age\nAB,50\nAB-1,60\n")
    import_cohort(tmp_path / "ws", imgs, csv, kind="t1")
    ws = Workspace.open(tmp_path / "ws")
    assert ws.image_path("AB-1", "t1").name == "AB-1_T1.nii.gz"
    assert ws.image_path("AB", "t1").name == "AB_T1.nii.gz"


def test_newer_schema_refused_with_clear_message(tmp_path):
    ws = Workspace.create(tmp_path / "ws")
    ws.db._conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    ws.close()
    with pytest.raises(CohortError, match="newer bodyage"):
        Workspace.open(tmp_path / "ws")


def test_corrupt_database_file(tmp_path):
    (tmp_path / "ws").mkdir()
    (tmp_path / "ws" / "cohort.sqlite").write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(CohortError, match="not a readable SQLite"):
        Workspace.open(tmp_path / "ws")


def test_predictions_gap_and_latest_run(tmp_path):
    db = Workspace.create(tmp_path / "ws").db
    db.add_subjects([{"subject_id": "a", "age": 60.0}, {"subject_id": "b", "age": 50.0}])
    db.add_predictions("r1", [{"subject_id": "a", "mean": 58.0, "sigma": 3.0, "corrected": 63.0},
                              {"subject_id": "b", "mean": 49.0, "sigma": 2.0}])
    rows = {r["subject_id"]: r for r in db.predictions("r1")}
    assert rows["a"]["gap"] == pytest.approx(3.0)  # from the corrected age
    assert rows["b"]["gap"] == pytest.approx(-1.0)
    assert db.latest_run() == "r1"
    with pytest.raises(CohortError, match="unknown subject"):
        db.add_predictions("r1", [{"subject_id": "zz", "mean": 1.0}])


def test_predictions_keep_their_interval_multipliers(tmp_path):
    """A prediction's split-conformal multipliers survive the database (and a new connection);
    a table with a non-finite or non-positive entry is stored as Gaussian (None)."""
    db = Workspace.create(tmp_path / "ws").db
    db.add_subjects([{"subject_id": s, "age": 50.0} for s in "abc"])
    table = {"0.683": 0.92, "0.95": 2.31}
    db.add_predictions("r", [
        {"subject_id": "a", "mean": 50.0, "sigma": 3.0, "interval_z": table},
        {"subject_id": "b", "mean": 50.0, "sigma": 3.0, "interval_z": {"0.95": float("nan")}},
        {"subject_id": "c", "mean": 50.0, "sigma": 3.0, "interval_z": {"0.95": -1.0}}])
    db.close()
    db = CohortDB.open(tmp_path / "ws" / "cohort.sqlite")
    rows = {r["subject_id"]: r for r in db.predictions("r")}
    assert rows["a"]["interval_z"] == table
    assert rows["b"]["interval_z"] is None and rows["c"]["interval_z"] is None


def test_predictions_of_more_subjects_than_sqlite_parameters(tmp_path):
    # ages are looked up for the rows' subjects only, in chunks under SQLite's 999 parameters
    db = Workspace.create(tmp_path / "ws").db
    n = 2100
    db.add_subjects([{"subject_id": f"s{i:05d}", "age": 40.0 + i % 40} for i in range(n)])
    db.add_subjects([{"subject_id": "no_age"}])
    rows = [{"subject_id": f"s{i:05d}", "mean": 60.0} for i in range(n)]
    assert db.add_predictions("big", rows + [{"subject_id": "no_age", "mean": 1.0}]) == n + 1
    got = {r["subject_id"]: r["gap"] for r in db.predictions("big")}
    assert len(got) == n + 1 and got["no_age"] is None
    assert all(got[f"s{i:05d}"] == pytest.approx(20.0 - i % 40) for i in range(n))


def test_predictions_of_one_subject(tmp_path):
    db = Workspace.create(tmp_path / "ws").db
    db.add_subjects([{"subject_id": s, "age": 50.0, "sex": "F"} for s in ("a", "b", "c")])
    db.add_predictions("r1", [{"subject_id": s, "mean": 50.0 + i} for i, s in enumerate("abc")])
    db.add_predictions("r2", [{"subject_id": "b", "mean": 40.0}])
    db.close()
    db = CohortDB.open(tmp_path / "ws" / "cohort.sqlite")  # the file, through a new connection
    (row,) = db.predictions("r1", subject_id="b")
    assert (row["run_id"], row["subject_id"], row["mean"]) == ("r1", "b", 51.0)
    assert row["sex"] == "F" and row["gap"] == pytest.approx(1.0) and row["members"] == []
    assert row == {r["subject_id"]: r for r in db.predictions("r1")}["b"]
    assert [(r["run_id"], r["mean"]) for r in db.predictions(subject_id="b")] == [
        ("r1", 51.0), ("r2", 40.0)]
    assert db.predictions("r2", subject_id="a") == []
    assert db.predictions("r1", subject_id="zz") == []


def test_task_attempts_count(tmp_path):
    db = Workspace.create(tmp_path / "ws").db
    db.add_subjects([{"subject_id": "a"}])
    db.set_task("explain", "r1", "a", "running")
    db.set_task("explain", "r1", "a", "failed", "boom")
    db.set_task("explain", "r1", "a", "running")
    t = db.tasks("explain", "r1")["a"]
    assert t["attempts"] == 2 and t["status"] == "running"


def test_bmi_groups():
    assert [bmi_group(b) for b in (18.0, 24.99, 25.0, 29.9, 30.0, None)] == [
        "healthy", "healthy", "overweight", "overweight", "obese", None]


def test_open_missing_workspace_message(tmp_path):
    with pytest.raises(CohortError, match="not a bodyage workspace"):
        Workspace.open(tmp_path / "nothing")
    with pytest.raises(CohortError, match="no cohort index"):
        CohortDB.open(tmp_path / "none.sqlite")


def test_cli_import_errors_are_one_line(tmp_path, capsys):
    csv = _csv(tmp_path / "p.csv", "id,sex\na,M\n")
    (tmp_path / "imgs").mkdir()
    rc = main(["import", str(tmp_path / "ws"), "--images", str(tmp_path / "imgs"),
               "--csv", str(csv)])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2
    assert err[-1].startswith("bodyage import: error:") and "p.csv" in err[-1]
    assert "Traceback" not in "\n".join(err)


def test_atomic_writes_keep_normal_permissions_and_leave_nothing_on_failure(tmp_path):
    import os

    from bodyage_core.atomic import atomic_path, write_text

    target = tmp_path / "a" / "map.nii.gz"
    write_text(target, "x")
    umask = os.umask(0)
    os.umask(umask)
    assert (target.stat().st_mode & 0o777) == (0o666 & ~umask)
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("disk full")
    assert target.read_text() == "x"
    assert sorted(p.name for p in target.parent.iterdir()) == ["map.nii.gz"]


def test_workspace_paths_name_every_file_in_one_place(tmp_path):
    """One object answers every workspace file name (workers use it without the index); the
    names that become folders follow the name rule."""
    from bodyage_core.cohort.paths import WorkspacePaths
    from bodyage_core.errors import ConfigError

    ws = Workspace.create(tmp_path / "ws")
    p = WorkspacePaths(ws.root)
    assert isinstance(ws, WorkspacePaths)
    assert p.prediction_file("s1", "r") == ws.root / "subjects" / "s1" / "prediction_r.json"
    assert p.predictions_csv("r") == ws.root / "reports" / "predictions_r.csv"
    assert p.map_file("s1", "gradcam_r") == ws.root / "subjects" / "s1" / "gradcam_r.nii.gz"
    assert p.transform_folder("s1", "F") == ws.root / "subjects" / "s1" / "atlas_F"
    assert p.partial_model_dir("r") == ws.root / "models" / "r.partial"
    assert p.population_map("F", "r", "all") == ws.root / "atlases" / "F" / \
        "population_r_all_mean.nii.gz"
    assert p.age_trend_map("F", "r", "t").name == "population_r_age_trend_t.nii.gz"
    assert p.compare_file("F", "r").name == "compare_r_accelerated_vs_decelerated.json"
    assert p.compare_file("F", "r", "_t.nii.gz").name == \
        "compare_r_accelerated_vs_decelerated_t.nii.gz"
    assert p.regions_stem("r") == ws.root / "reports" / "regions_r"
    assert p.relative(ws.root / "subjects" / "s1" / "x.nii.gz") == "subjects/s1/x.nii.gz"
    assert WorkspacePaths.is_workspace(ws.root) and not WorkspacePaths.is_workspace(tmp_path)
    for bad in (lambda: p.prediction_file("s1", "../x"), lambda: p.transform_folder("s1", "../g"),
                lambda: p.map_file("../s", "k")):
        with pytest.raises(ConfigError):
            bad()
