"""Names that become files: one rule at every boundary, nothing written outside the workspace,
no two subjects (or atlas groups, or cache entries) in one folder, and the Dask dashboard on
this machine only (issue 12, items 2, 3 and 10).

Every hostile input is made here, at test time; each refusal is checked for its one line, its
exit code and a workspace left exactly as it was (file list and cohort.sqlite content)."""

from __future__ import annotations

import hashlib
import socket
import sqlite3
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from bodyage_core.atomic import write_json, write_text
from bodyage_core.cli.main import main
from bodyage_core.cohort import Workspace, safe_name
from bodyage_core.cohort.importer import import_cohort
from bodyage_core.errors import BodyageError, CohortError, ConfigError
from bodyage_core.names import check_name, is_valid_name

TRAVERSING = ["../../x", "../x", "a/b", "/tmp/x", ".hidden", "..", ".", "", "sub 1", "Müller",
              "x\\y", "a" * 129, "-rf", "x\x00y"]


# -- helpers ---------------------------------------------------------------------------------

def _image(path: Path, seed: int = 0, size: int = 12) -> Path:
    rng = np.random.default_rng(seed)
    a = rng.normal(0, 0.1, (size, size, size)).astype(np.float32)
    a[3:9, 3:9, 3:9] += 1.0
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(a, np.diag([2.0, 2.0, 2.0, 1.0])), str(path))
    return path


def _workspace(root: Path, n: int = 4) -> Workspace:
    ws = Workspace.create(root)
    recs = []
    for i in range(n):
        sid = f"sub{i:02d}"
        _image(ws.subject_dir(sid, create=True) / "t1.nii.gz", i)
        recs.append({"subject_id": sid, "age": 30 + 10 * i, "sex": "FM"[i % 2], "bmi": 24,
                     "images": {"t1": f"subjects/{sid}/t1.nii.gz"}})
    ws.db.add_subjects(recs)
    return ws


def snapshot(root: Path) -> tuple:
    """Every file (path, size, digest; the lock file and SQLite's -wal/-shm aside) and the
    content of cohort.sqlite (its SQL dump): equal before and after means unchanged."""
    files = []
    for p in sorted(root.rglob("*")):
        if p.is_file() and p.name != ".bodyage.lock" and not p.name.endswith(("-wal", "-shm")):
            files.append((str(p.relative_to(root)), p.stat().st_size,
                          hashlib.sha1(p.read_bytes()).hexdigest()
                          if p.name != "cohort.sqlite" else ""))
    dump = ""
    db = root / "cohort.sqlite"
    if db.exists():
        con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
        try:
            dump = "\n".join(con.iterdump())
        finally:
            con.close()
    return tuple(files), hashlib.sha1(dump.encode()).hexdigest()


def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err and len(err.splitlines()) == 1 and "Traceback" not in err, err
    return err


# -- the name rule ---------------------------------------------------------------------------

@pytest.mark.parametrize("good", ["r1", "run_2024.v2", "IXI013-HH-1212", "1234567", "F_healthy",
                                  "gradcam_layer2_r1", "a" * 128, "a."])
def test_valid_names_pass_unchanged(good):
    assert check_name(good) == good and is_valid_name(good)
    assert safe_name(good) == good          # valid names are their own folder names


@pytest.mark.parametrize("bad", TRAVERSING)
def test_invalid_names_are_refused_naming_the_value(bad):
    with pytest.raises(ConfigError) as exc:
        check_name(bad, "run name")
    text = str(exc.value)
    assert text.startswith("run name") and "letters, digits" in text
    assert len(text.splitlines()) == 1


def test_workspace_paths_refuse_names_that_leave_their_folder(tmp_path):
    ws = Workspace.create(tmp_path / "ws")
    for bad in ("../../x", "a/b", "..", ".git"):
        for fn in (ws.subject_dir, ws.model_dir, ws.atlas_dir):
            with pytest.raises(ConfigError):
                fn(bad)
    with pytest.raises(ConfigError):
        ws.subject_dir("../evil", create=True)
    assert not (tmp_path / "evil").exists()
    assert ws.model_dir("r1") == ws.root / "models" / "r1"


def test_stage_constructors_refuse_bad_names():
    from bodyage_core.cluster import ExplainStage, PredictStage, RegisterStage, WarpStage

    with pytest.raises(ConfigError):
        PredictStage("../../x")
    with pytest.raises(ConfigError):
        ExplainStage("r1", kind="../x")
    with pytest.raises(ConfigError):
        RegisterStage(group="../g")
    with pytest.raises(ConfigError):
        WarpStage("r1", kinds=["a/b"])


# -- atomic_path(within=) ----------------------------------------------------------------------

def test_atomic_write_refuses_a_target_outside_its_folder(tmp_path):
    root = tmp_path / "ws"
    root.mkdir()
    for target in (root / "subjects" / ".." / ".." / "x.json",
                   root / ".." / "newdir" / "x.json", tmp_path / "y.json", root):
        with pytest.raises(BodyageError, match="refusing to write outside"):
            write_json(target, {"a": 1}, within=root)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ws"]   # nothing, not even a folder
    write_text(root / "reports" / "ok.txt", "ok", within=root)
    assert (root / "reports" / "ok.txt").read_text() == "ok"


# -- names on the command line ------------------------------------------------------------------

CLI_CASES = [
    ["predict", "{ws}", "--run", "../../x", "--scheduler", "none"],
    ["explain", "{ws}", "--run", "../../x", "--scheduler", "none"],
    ["explain", "{ws}", "--run", "r1", "--subject", "../sub00", "--scheduler", "none"],
    ["train", "{ws}", "--run", "../../x"],
    ["report", "{ws}", "--run", "../x"],
    ["atlas", "maps", "{ws}", "--run", "../../x"],
    ["atlas", "maps", "{ws}", "--run", "r1", "--kind", "../../x"],
    ["atlas", "build", "{ws}", "--group", "../g"],
    ["register", "{ws}", "--group", "../g", "--scheduler", "none"],
    ["compare", "accelerated", "decelerated", "{ws}", "--run", "a/b"],
    ["predict", "{ws}", "--run", "r1", "--subject", "sub00", "../../etc", "--scheduler", "none"],
    ["exclude", "{ws}", "../sub00"],
]


@pytest.mark.parametrize("argv", CLI_CASES, ids=lambda a: " ".join(a[:1] + a[2:]))
def test_cli_refuses_traversing_names_and_writes_nothing(tmp_path, capsys, argv):
    ws = _workspace(tmp_path / "ws")
    ws.close()
    before = snapshot(tmp_path)
    rc = main([a.format(ws=tmp_path / "ws") for a in argv])
    err = _one_line_error(capsys)
    assert rc == 2 and "is not allowed" in err
    assert snapshot(tmp_path) == before            # nothing written, in or outside the ws
    assert not list(tmp_path.rglob("x.json")) and not list(tmp_path.rglob("x.csv"))


def test_import_refuses_a_traversing_image_kind(tmp_path, capsys):
    imgs = tmp_path / "imgs"
    _image(imgs / "a.nii.gz")
    (tmp_path / "p.csv").write_text("id,age\na,50\n")
    rc = main(["import", str(tmp_path / "ws"), "--images", str(imgs), "--csv",
               str(tmp_path / "p.csv"), "--kind", "../../x"])
    assert rc == 2 and "--kind '../../x' is not allowed" in _one_line_error(capsys)
    assert not (tmp_path / "ws").exists()


# -- subject ids that would share a folder ------------------------------------------------------

@pytest.mark.parametrize("rows,expect", [
    ("sub 1,50\nsub_1,60\n", "row 2: subject id 'sub 1' cannot be a folder name"),
    ("Müller,50\nMöller,60\n", "row 2: subject id 'Müller' cannot be a folder name"),
    ("sub1,50\nSub1,60\n", "row 3: subject id 'Sub1' and row 2: 'sub1' differ only in letter "
                           "case"),
    ("../../etc,50\n", "row 2: subject id '../../etc' cannot be a folder name"),
    (".hidden,50\n", "row 2: subject id '.hidden' cannot be a folder name"),
])
def test_import_refuses_ids_that_collide_or_escape(tmp_path, capsys, rows, expect):
    imgs = tmp_path / "imgs"
    for stem in ("sub 1", "sub_1", "Müller", "Möller", "sub1", "Sub1"):
        _image(imgs / f"{stem}.nii.gz")
    (tmp_path / "p.csv").write_text("id,age\n" + rows, encoding="utf-8")
    rc = main(["import", str(tmp_path / "ws"), "--images", str(imgs), "--csv",
               str(tmp_path / "p.csv")])
    err = _one_line_error(capsys)
    assert rc == 2 and expect in err and "p.csv" in err
    assert not (tmp_path / "ws").exists()        # refused before the workspace was made


def test_import_refuses_an_id_equal_but_for_case_to_one_already_imported(tmp_path):
    ws = _workspace(tmp_path / "ws", n=2)
    before = snapshot(tmp_path / "ws")
    imgs = tmp_path / "imgs"
    _image(imgs / "SUB00.nii.gz")
    (tmp_path / "p.csv").write_text("id,age\nSUB00,40\n")
    with pytest.raises(CohortError, match="'SUB00' differs only in letter case from 'sub00'"):
        import_cohort(ws, imgs, tmp_path / "p.csv")
    assert snapshot(tmp_path / "ws") == before


def test_cache_files_of_distinct_ids_never_coincide(tmp_path):
    from bodyage_core.preprocess.cache import PreprocessCache

    cache = PreprocessCache(tmp_path / "cache", "k")
    ids = ["a", "a_", "a.", "sub 1", "sub_1", "Müller", "Möller", "x/y", "x_y"]
    paths = {cache.path(i) for i in ids}
    assert len(paths) == len(ids)
    assert all(p.parent == tmp_path / "cache" / "k" for p in paths)


def test_atlas_groups_whose_values_share_a_folder_are_refused(tmp_path):
    from bodyage_core.atlas.workspace import atlas_groups

    ws = Workspace.create(tmp_path / "ws")
    ws.db.add_subjects([{"subject_id": f"s{i}", "age": 40 + i, "site": site}
                        for i, site in enumerate(["Guys Hospital", "Guys_Hospital", "IOP"])])
    with pytest.raises(CohortError, match="'Guys Hospital' and 'Guys_Hospital'|"
                                          "'Guys_Hospital' and 'Guys Hospital'"):
        atlas_groups(ws, by=["site"])
    ws.db.delete_subjects(["s1"])
    groups, _ = atlas_groups(ws, by=["site"])
    assert sorted(groups) == ["Guys_Hospital", "IOP"]


# -- the Dask dashboard -------------------------------------------------------------------------

def _other_address() -> str | None:
    """An address of this machine other than loopback (None when there is none)."""
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.connect(("192.0.2.1", 9))          # TEST-NET-1: no packet is sent
            addr = s.getsockname()[0]
    except OSError:
        return None
    return None if addr.startswith("127.") else addr


def test_dask_dashboard_listens_on_loopback_only(tmp_path):
    pytest.importorskip("distributed")
    from bodyage_core.cluster import Engine, EngineOptions

    ws = _workspace(tmp_path / "ws", n=1)
    eng = Engine(ws, EngineOptions(scheduler="local", workers=1, processes=False))
    try:
        eng.start()
        eng._connect()
        bound = [s.getsockname() for s in eng.cluster.scheduler.http_server._sockets.values()]
        assert bound and all(addr[0] == "127.0.0.1" for addr in bound), bound
        port = bound[0][1]
        with socket.create_connection(("127.0.0.1", port), timeout=5):
            pass                                     # it is there, for this machine
        other = _other_address()
        if other is not None:
            with socket.socket() as s:
                s.settimeout(2)
                assert s.connect_ex((other, port)) != 0, f"dashboard reachable on {other}"
    finally:
        eng.close()
        ws.close()


def test_dashboard_address_option_is_checked():
    from bodyage_core.cluster import EngineOptions

    assert EngineOptions().validate().dashboard_address == "127.0.0.1:0"
    assert EngineOptions(dashboard_address="none").validate().dashboard_address is None
    assert EngineOptions(dashboard_address=":8787").validate().dashboard_address == ":8787"
    with pytest.raises(ConfigError, match="--dashboard-address 'everywhere'"):
        EngineOptions(dashboard_address="everywhere").validate()
