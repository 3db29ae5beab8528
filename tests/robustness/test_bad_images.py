"""A corpus of hostile inputs, made at test time (issue 12, items 5, 6, 7, 8, 11).

Garbage images (NaN/inf, constant, one slice, absurd headers, NaN or singular affines, truncated
and corrupt NIfTI/NRRD/MHA/DICOM/zip), bad ages, bad training options, a read-only workspace, a
full disk, a cache that cannot be written, bad images inside a training cohort. Each case
asserts the one-line message, the exit code and, where a workspace is involved, that it is
unchanged (file list and cohort.sqlite content) or changed only as documented."""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
import zipfile
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from bodyage_core.cli.main import main
from bodyage_core.cohort import Workspace
from bodyage_core.errors import BodyageError
from bodyage_core.volume import Volume

PY = sys.executable
ENV = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
FAST = ["--width", "4", "--epochs", "1", "--device", "cpu", "--threads", "1", "--loss", "l1",
        "--spacing", "4", "4", "4", "--shape", "12", "12", "12", "--batch-size", "4",
        "--norm", "group"]


# -- helpers -----------------------------------------------------------------------------------

def _body(size: int = 20, seed: int = 0, r: int = 5) -> np.ndarray:
    rng = np.random.default_rng(seed)
    a = rng.normal(0, 0.1, (size, size, size)).astype(np.float32)
    c = size // 2
    a[c - r:c + r, c - r:c + r, c - r:c + r] += 1.0
    return a


def _nii(path: Path, data: np.ndarray, affine=None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(np.asarray(data), np.diag([2.0, 2.0, 2.0, 1.0])
                             if affine is None else affine), str(path))
    return path


def _raw_nifti(path: Path, shape=(5, 5, 5), srow_x=None, gz: bool = False) -> Path:
    """A NIfTI whose header says what we like (shape, sform), with 125 float32 voxels."""
    img = nib.Nifti1Image(np.ones((5, 5, 5), np.float32), np.eye(4))
    hdr = img.header
    hdr.set_data_shape(shape)
    if srow_x is not None:
        hdr["srow_x"] = srow_x
        hdr["sform_code"] = 1
        hdr["qform_code"] = 0
    raw = hdr.binaryblock + b"\0" * 4 + np.ones(125, np.float32).tobytes()
    path.write_bytes(gzip.compress(raw) if gz else raw)
    return path


def _make_ws(root: Path, n: int = 10, kind: str = "t1") -> Path:
    ws = Workspace.create(root)
    recs = []
    for i in range(n):
        sid = f"sub{i:02d}"
        _nii(ws.subject_dir(sid, create=True) / f"{kind}.nii.gz", _body(seed=i, r=3 + i % 4))
        recs.append({"subject_id": sid, "age": 22 + 6 * i, "sex": "FM"[i % 2], "bmi": 23,
                     "images": {kind: f"subjects/{sid}/{kind}.nii.gz"}})
    ws.db.add_subjects(recs)
    ws.close()
    return root


def snapshot(root: Path) -> tuple:
    files = []
    for p in sorted(root.rglob("*")):
        if p.is_file() and p.name != ".bodyage.lock" and not p.name.endswith(("-wal", "-shm")):
            files.append((str(p.relative_to(root)), p.stat().st_size,
                          "" if p.name == "cohort.sqlite" else
                          hashlib.sha1(p.read_bytes()).hexdigest()))
    dump = ""
    if (root / "cohort.sqlite").exists():
        ro = "" if os.access(root, os.W_OK) else "&immutable=1"    # a read-only mount
        con = sqlite3.connect(f"file:{root / 'cohort.sqlite'}?mode=ro{ro}", uri=True)
        try:
            dump = "\n".join(con.iterdump())
        finally:
            con.close()
    return tuple(files), hashlib.sha1(dump.encode()).hexdigest()


def _one_line(capsys, rc: int, expect_rc: int = 2) -> str:
    """The command's one error line (progress bars and warnings aside)."""
    err = capsys.readouterr().err.strip()
    lines = _error_lines(err)
    assert rc == expect_rc, err
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def _error_lines(stderr: str) -> list[str]:
    """The ``bodyage CMD: ...`` lines of a command's stderr (after any progress bar)."""
    import re

    return [m.group(0).strip() for m in re.finditer(r"bodyage [a-z]+( [a-z]+)?: [^\r\n]*",
                                                    stderr)]


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def _info(capsys, path, *extra) -> tuple[int, str, str]:
    rc = main(["info", str(path), *extra])
    out = capsys.readouterr()
    return rc, out.out, out.err


# -- the corpus through `bodyage info` ------------------------------------------------------

def test_nonfinite_voxels_are_counted_zeroed_and_shown(tmp_path, capsys):
    a = _body()
    a[2:4, 2:4, 2:4] = np.nan
    a[5, 5, 5] = np.inf
    a[6, 6, 6] = -np.inf
    p = _nii(tmp_path / "nan.nii.gz", a)
    rc, out, err = _info(capsys, p)
    assert rc == 0 and not err
    assert "non-finite voxels  10 (NaN/inf, shown and used as 0)" in out
    assert "10 of 8,000 voxels were not finite (NaN 8, inf 2) and were set to 0 [nonfinite]" in out
    from bodyage_core.io import load_volume

    v = load_volume(p)
    assert np.isfinite(v.data).all() and v.provenance["nonfinite_voxels"] == 10
    assert v.provenance["qc"] == [{"flag": "nonfinite", "message":
                                   "10 of 8,000 voxels were not finite (NaN 8, inf 2) and were "
                                   "set to 0"}]
    assert main(["info", str(p), "--json"]) == 0
    facts = json.loads(capsys.readouterr().out)
    assert facts["provenance"]["nonfinite_voxels"] == 10


@pytest.mark.parametrize("data,flag", [
    (np.zeros((10, 10, 10), np.float32), "[constant]"),
    (np.full((10, 10, 10), 7.0, np.float32), "[constant]"),
    (np.ones((12, 12, 1), np.float32) + np.arange(12)[:, None, None], "[thin]"),
])
def test_constant_and_one_slice_images_are_flagged(tmp_path, capsys, data, flag):
    rc, out, _ = _info(capsys, _nii(tmp_path / "x.nii.gz", data))
    assert rc == 0 and "warning " in out and flag in out


def _corrupt_zip(path: Path) -> Path:
    from bodyage_core.io.ukbb_fake import body_phantom, write_ukbb_zip

    write_ukbb_zip(body_phantom(nz=24, ny=12, nx=16), path, n_stations=2, overlap=2)
    with zipfile.ZipFile(path) as zf:
        info = zf.infolist()[len(zf.infolist()) // 2]
    raw = bytearray(path.read_bytes())
    start = info.header_offset + 30 + len(info.filename.encode()) + len(info.extra)
    raw[start:start + 16] = b"\xff" * 16          # an invalid deflate block: zlib.error
    path.write_bytes(bytes(raw))
    return path


def _mha_header(path: Path, dims: str, raw_name: str = "x.raw") -> Path:
    path.write_text(f"ObjectType = Image\nNDims = 3\nDimSize = {dims}\nElementType = MET_FLOAT\n"
                    f"ElementSpacing = 1 1 1\nElementDataFile = {raw_name}\n")
    return path


def _dicom_gap(folder: Path) -> Path:
    from bodyage_core.io.ukbb_fake import write_dicom_series

    vol = Volume(np.random.default_rng(1).uniform(10, 100, (8, 6, 7)).astype(np.float32),
                 np.diag([1.5, 1.5, 3.0, 1.0]), ("image",))
    files = write_dicom_series(vol, folder)
    files[4].unlink()                               # a missing slice
    return folder


CORPUS = {
    "absurd_header": (lambda d: _raw_nifti(d / "big.nii", shape=(3000, 3000, 3000)),
                      "claims 3000 x 3000 x 3000 = 27,000,000,000 voxels"),
    "absurd_header_gz": (lambda d: _raw_nifti(d / "big.nii.gz", shape=(32000, 32000, 3),
                                              gz=True), "voxels (more than 2^31)"),
    "nan_affine": (lambda d: _raw_nifti(d / "a.nii.gz", srow_x=[np.nan, 0, 0, 0], gz=True),
                   "voxel-to-world matrix (affine) holds NaN or inf"),
    "singular_affine": (lambda d: _raw_nifti(d / "s.nii", srow_x=[0, 0, 0, 0]),
                        "voxel-to-world matrix (affine) is singular"),
    "truncated_nifti": (lambda d: (lambda p: (p.write_bytes(p.read_bytes()[:300]), p)[1])(
        _nii(d / "t.nii.gz", _body())), "t.nii.gz: not a readable NIfTI"),
    "garbage_nifti": (lambda d: _write(d / "g.nii", os.urandom(600)), "g.nii"),
    "empty_file": (lambda d: _write(d / "e.nii.gz", b""), "e.nii.gz"),
    "mha_missing_raw": (lambda d: _mha_header(d / "m.mha", "8 8 8"), "m.mha"),
    "mha_absurd": (lambda d: _mha_header(d / "h.mha", "4000 4000 4000"),
                   "claims 4000 x 4000 x 4000 x 1"),
    "nrrd_garbage": (lambda d: _write(d / "n.nrrd", b"NRRD0004\ntype: float\n"
                                                    b"dimension: 3\nsizes: 9 9\n\n"), "n.nrrd"),
    "dicom_garbage": (lambda d: ((d / "dcm").mkdir(), (d / "dcm" / "IM_1.dcm").write_bytes(
        b"\0" * 128 + b"DICM" + os.urandom(200)), d / "dcm")[2], "dcm"),
    "corrupt_zip_member": (lambda d: _corrupt_zip(d / "1000000_20201_2_0.zip"),
                           "1000000_20201_2_0.zip"),
    "not_a_zip": (lambda d: _write(d / "2_20201_2_0.zip", b"PK\x03\x04junk"),
                  "2_20201_2_0.zip"),
}


@pytest.mark.parametrize("case", sorted(CORPUS))
def test_hostile_image_gives_one_line_and_exit_2(tmp_path, capsys, case):
    make, expect = CORPUS[case]
    path = make(tmp_path)
    t0 = time.perf_counter()
    rc, out, err = _info(capsys, path)
    err = err.strip()
    assert rc == 2, (out, err)
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert err.startswith("bodyage info: error: ") and expect in err, err
    assert time.perf_counter() - t0 < 20       # refused before allocating, not after


def test_dicom_missing_slice_is_recorded_with_the_image(tmp_path, capsys):
    folder = _dicom_gap(tmp_path / "gap")
    rc, out, _ = _info(capsys, folder)
    assert rc == 0 and "[dicom_gaps]" in out and "a slice missing?" in out
    from bodyage_core.io import load_volume

    with pytest.warns(UserWarning):
        v = load_volume(folder)
    assert [f["flag"] for f in v.provenance["qc"]] == ["dicom_gaps"]


def test_info_on_a_workspace_or_the_root_folder_is_one_quick_line(tmp_path, capsys):
    ws = _make_ws(tmp_path / "ws", n=1)
    rc, _, err = _info(capsys, ws)
    assert rc == 2 and "is a bodyage workspace, not an image" in err
    assert len(err.strip().splitlines()) == 1
    t0 = time.perf_counter()
    rc, _, err = _info(capsys, "/")
    assert rc == 2 and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert time.perf_counter() - t0 < 60          # a bounded search, not a walk of the disk


# -- what a model refuses ------------------------------------------------------------------

def test_check_model_input_refuses_what_no_model_can_read():
    from bodyage_core.qc.image_checks import check_model_input

    aff = np.diag([2.0, 2.0, 2.0, 1.0])
    good = Volume(_body()[None], aff, ("t1",), {"qc": [{"flag": "nonfinite", "message": "m"}]})
    assert check_model_input(good, "subject A") == [{"flag": "nonfinite", "message": "m"}]
    bad = {
        "holds one value everywhere (0)": np.zeros((1, 20, 20, 20), np.float32),
        "holds one value everywhere (3)": np.full((1, 20, 20, 20), 3, np.float32),
        "fewer than 4 along an axis": _body()[None, :, :, :2],
        "no body found": np.pad(np.ones((1, 1, 1, 1), np.float32), ((0, 0), (9, 10),
                                                                    (9, 10), (9, 10))),
        "voxels are NaN or inf": np.where(_body() > 0.5, np.inf, _body())[None],
    }
    for why, data in bad.items():
        with pytest.raises(BodyageError, match="^subject A: .*" + why.replace("(", r"\(")
                           .replace(")", r"\)")):
            check_model_input(Volume(data, aff, ("t1",)), "subject A")
    two = Volume(np.stack([_body(), np.zeros((20, 20, 20), np.float32)]), aff, ("water", "fat"))
    with pytest.raises(BodyageError, match="channel 'fat' holds one value"):
        check_model_input(two, "x.nii.gz")


# -- explain on the inf image --------------------------------------------------------------------

@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    root = _make_ws(tmp_path_factory.mktemp("bad") / "ws", n=8)
    assert main(["train", str(root), "--run", "r1", "--folds", "2", *FAST]) == 0
    return root


def test_explain_and_predict_on_an_inf_image_do_not_crash(trained, capsys):
    a = _body(seed=3)
    a[4:8, 4:8, 4:8] = np.inf
    a[12:14, 12:14, 12:14] = np.nan
    _nii(trained / "subjects" / "sub03" / "t1.nii.gz", a)
    rc = main(["explain", str(trained), "--run", "r1", "--subject", "sub03",
               "--scheduler", "none", "--device", "cpu"])
    out = capsys.readouterr()
    assert rc == 0, out
    m = nib.load(str(trained / "subjects" / "sub03" / "gradcam_r1.nii.gz")).get_fdata()
    assert np.isfinite(m).all()
    rc = main(["predict", str(trained), "--run", "r1", "--subject", "sub03", "--overwrite",
               "--scheduler", "none", "--device", "cpu"])
    assert rc == 0, capsys.readouterr()
    with Workspace.open(trained) as ws:
        p = ws.db.predictions("r1", "sub03")[0]
    assert np.isfinite(p["mean"])


def test_predict_refuses_a_blank_image_instead_of_giving_it_an_age(trained, capsys):
    _nii(trained / "subjects" / "sub05" / "t1.nii.gz", np.zeros((20, 20, 20), np.float32))
    rc = main(["predict", str(trained), "--run", "r1", "--subject", "sub05", "--overwrite",
               "--scheduler", "none", "--device", "cpu"])
    out = capsys.readouterr().out
    assert rc == 1 and "failed sub05: subject sub05: channel 't1' holds one value everywhere" \
        in out
    with Workspace.open(trained) as ws:
        row = ws.db.tasks("predict", "r1")["sub05"]
    assert row["status"] == "failed" and "one value everywhere" in row["error"]


# -- ages ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("age,why", [("-5", "age -5 is outside the plausible range"),
                                     ("0", "age 0 is outside"), ("1e6", "age 1e+06 is outside"),
                                     ("inf", "age inf is not a finite number"),
                                     ("-inf", "is not a finite number"),
                                     ("abc", "could not convert")])
def test_implausible_ages_are_refused_naming_the_row(tmp_path, capsys, age, why):
    imgs = tmp_path / "imgs"
    for s in ("a", "b"):
        _nii(imgs / f"{s}.nii.gz", _body())
    csv = tmp_path / "p.csv"
    csv.write_text(f"id,age\na,50\nb,{age}\n")
    rc = main(["import", str(tmp_path / "ws"), "--images", str(imgs), "--csv", str(csv)])
    line = _one_line(capsys, rc)
    assert "p.csv: row 3 (subject b): " in line and why in line, line
    assert not (tmp_path / "ws").exists()         # a failed import leaves no workspace


def test_the_age_range_is_overridable_and_missing_ages_stay_missing(tmp_path, capsys):
    imgs = tmp_path / "imgs"
    for s in ("a", "b", "c"):
        _nii(imgs / f"{s}.nii.gz", _body())
    csv = tmp_path / "p.csv"
    csv.write_text("id,age\na,0.5\nb,150\nc,nan\n")
    rc = main(["import", str(tmp_path / "ws"), "--images", str(imgs), "--csv", str(csv)])
    assert rc == 2 and "age 150 is outside" in capsys.readouterr().err
    rc = main(["import", str(tmp_path / "ws"), "--images", str(imgs), "--csv", str(csv),
               "--min-age", "0", "--max-age", "200"])
    assert rc == 0
    with Workspace.open(tmp_path / "ws") as ws:
        assert {s.subject_id: s.age for s in ws.db.subjects()} == {"a": 0.5, "b": 150.0,
                                                                   "c": None}
    assert main(["import", str(tmp_path / "ws2"), "--images", str(imgs), "--csv", str(csv),
                 "--min-age", "5", "--max-age", "1"]) == 2
    assert "is empty" in capsys.readouterr().err


# -- one bad image does not stop training --------------------------------------------------------

def test_training_skips_subjects_whose_image_fails_and_honours_exclusions(tmp_path, capsys):
    root = _make_ws(tmp_path / "ws", n=12)
    sd = root / "subjects"
    (sd / "sub03" / "t1.nii.gz").write_bytes(b"\x1f\x8b truncated")            # unreadable
    _nii(sd / "sub05" / "t1.nii.gz", np.zeros((20, 20, 20), np.float32))         # blank
    _nii(sd / "sub07" / "t1.nii.gz", np.full((20, 20, 20), np.nan, np.float32))  # all NaN
    assert main(["exclude", str(root), "sub01", "--reason", "motion artefact"]) == 0
    capsys.readouterr()
    rc = main(["train", str(root), "--run", "r", "--folds", "2", "--exclude", "sub02", *FAST])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "failed sub03 (left out of the run): " in out and "sub03" in out
    assert "failed sub05" in out and "failed sub07" in out
    assert "left out 2 excluded subject(s): sub01 (motion artefact), sub02 (--exclude)" in out
    splits = json.loads((root / "models" / "r" / "splits.json").read_text())
    trained_on = set(splits["folds"])
    assert trained_on == {f"sub{i:02d}" for i in (0, 4, 6, 8, 9, 10, 11)}
    with Workspace.open(root) as ws:
        assert {p["subject_id"] for p in ws.db.predictions("r")} == trained_on
        from bodyage_core.preprocess.spec import InputSpec

        cfg = json.loads((root / "models" / "r" / "config.json").read_text())
        rows = ws.db.tasks("train_input", InputSpec.from_dict(cfg["input"]).hash)
        assert {k for k, v in rows.items() if v["status"] == "failed"} == {"sub03", "sub05",
                                                                           "sub07"}
        assert "one value everywhere" in rows["sub05"]["error"]
        assert [r["status"] for r in ws.db.runs() if r["run_id"] == "r"] == ["complete"]
        assert ws.db.excluded() == {"sub01": "motion artefact"}   # --exclude is not stored


def test_import_check_opens_every_image_once(tmp_path, capsys):
    imgs = tmp_path / "imgs"
    _nii(imgs / "good.nii.gz", _body())
    a = _body(seed=2)
    a[1:3, 1:3, 1:3] = np.nan
    _nii(imgs / "nans.nii.gz", a)
    _nii(imgs / "blank.nii.gz", np.zeros((20, 20, 20), np.float32))
    (imgs / "cut.nii.gz").write_bytes(gzip.compress(b"\0" * 100))
    _dicom_gap(imgs / "gap")
    csv = tmp_path / "p.csv"
    csv.write_text("id,age\ngood,40\nnans,50\nblank,60\ncut,70\ngap,45\n")
    rc = main(["import", str(tmp_path / "ws"), "--images", str(imgs), "--csv", str(csv),
               "--check"])
    out = capsys.readouterr()
    assert rc == 1
    assert "checked 5 subject(s): 2 failed (excluded from training), 2 with quality warnings" \
        in out.out
    assert "warning: subject blank: image check failed" in out.err
    assert "warning: subject cut: image check failed" in out.err
    with Workspace.open(tmp_path / "ws") as ws:
        ex = ws.db.excluded()
        assert sorted(ex) == ["blank", "cut"] and "one value everywhere" in ex["blank"]
        subj = {s.subject_id: s for s in ws.db.subjects()}
        assert [f["flag"] for f in subj["nans"].meta["qc"]] == ["nonfinite"]
        assert [f["flag"] for f in subj["gap"].meta["qc"]] == ["dicom_gaps"]
        assert "qc" not in subj["good"].meta and subj["good"].excluded is None
    # re-importing without --check keeps the exclusions; an 'excluded' column sets them
    csv.write_text("id,age,excluded\ngood,40,\nnans,50,yes\nblank,60,\ncut,70,1\ngap,45,0\n")
    assert main(["import", str(tmp_path / "ws"), "--images", str(imgs), "--csv", str(csv)]) == 0
    with Workspace.open(tmp_path / "ws") as ws:
        assert sorted(ws.db.excluded()) == ["cut", "nans"]


# -- training options and small things ------------------------------------------------------------

@pytest.mark.parametrize("argv,why", [
    (["--lr", "nan"], "--lr must be a finite number > 0, got nan"),
    (["--lr", "-1"], "--lr must be a finite number > 0"),
    (["--epochs", "-3"], "--epochs must be at least 1, got -3"),
    (["--val-fraction", "1.5"], "--val-fraction must be a finite number > 0 and < 1"),
    (["--weight-decay", "inf"], "--weight-decay must be a finite number >= 0"),
    (["--exclude", "nobody"], "no subject(s) nobody in the cohort"),
])
def test_bad_training_options_are_one_line(tmp_path, capsys, argv, why):
    root = _make_ws(tmp_path / "ws", n=4)
    before = snapshot(root)
    rc = main(["train", str(root), "--run", "r", *FAST, *argv])
    assert why in _one_line(capsys, rc)
    assert snapshot(root) == before


def test_too_few_subjects_per_fold_is_one_line_not_a_batchnorm_traceback(tmp_path, capsys):
    root = _make_ws(tmp_path / "ws", n=4)
    rc = main(["train", str(root), "--run", "r", "--folds", "2",
               *[a for a in FAST if a not in ("--norm", "group")]])
    line = _one_line(capsys, rc)
    assert "a training batch held a single subject" in line and "--folds" in line
    with Workspace.open(root) as ws:
        assert [r["status"] for r in ws.db.runs() if r["run_id"] == "r"] == ["failed"]


def test_negative_registration_iterations_are_one_line(tmp_path, capsys):
    root = _make_ws(tmp_path / "ws", n=4)
    cfg = tmp_path / "reg.json"
    cfg.write_text(json.dumps({"affine_iterations": -5}))
    before = snapshot(root)
    rc = main(["atlas", "build", str(root), "--groups", "sex", "--config", str(cfg)])
    assert "affine_iterations must be whole numbers >= 0, got -5" in _one_line(capsys, rc)
    cfg.write_text(json.dumps({"demons_iterations": [10, -1, 5]}))
    rc = main(["register", str(root), "--config", str(cfg), "--scheduler", "none"])
    assert "demons_iterations must be whole numbers >= 0" in _one_line(capsys, rc)
    assert snapshot(root) == before


# -- system errors -------------------------------------------------------------------------------

def _mount_tmpfs(where: Path, size: str) -> bool:
    where.mkdir(parents=True, exist_ok=True)
    try:
        r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)],
                           capture_output=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return r.returncode == 0


def _umount(where: Path) -> None:
    subprocess.run(["umount", "-l", str(where)], capture_output=True, timeout=20)


def _read_only_workspace(tmp_path: Path):
    """A workspace on a read-only file system (a tmpfs remounted read-only, when this process
    may mount) or without write permission (when it runs as an ordinary user); None when
    neither is possible (root without mount rights)."""
    if os.geteuid() != 0:
        root = _make_ws(tmp_path / "ws", n=2)
        for p in [root, *root.rglob("*")]:
            p.chmod(p.stat().st_mode & ~0o222)
        return root, lambda: [p.chmod(p.stat().st_mode | 0o200)
                              for p in [root, *root.rglob("*")]]
    mnt = tmp_path / "ro"
    if not _mount_tmpfs(mnt, "8m"):
        return None
    root = _make_ws(mnt / "ws", n=2)
    r = subprocess.run(["mount", "-o", "remount,ro", str(mnt)], capture_output=True)
    if r.returncode != 0:
        _umount(mnt)
        return None
    return root, lambda: _umount(mnt)


def test_a_read_only_workspace_is_never_called_damaged(tmp_path, capsys):
    got = _read_only_workspace(tmp_path)
    if got is None:
        pytest.skip("cannot make a read-only file system here (root without mount rights)")
    root, undo = got
    try:
        before = snapshot(root)
        for argv in (["exclude", str(root), "sub00"],
                     ["train", str(root), "--run", "r", *FAST],
                     ["import", str(root), "--images", str(root), "--csv", str(root / "x")]):
            rc = main(argv)
            line = _one_line(capsys, rc)
            assert "read-only" in line and "re-import" not in line and "restore" not in line
        # reading works, a write says read-only and not damaged
        assert main(["exclude", str(root), "--list"]) == 0
        assert "0 of 2 subject(s) excluded" in capsys.readouterr().out
        with Workspace.open(root) as ws:
            assert ws.db.read_only and ws.db.subject_ids() == ["sub00", "sub01"]
            with pytest.raises(BodyageError) as err:
                ws.db.set_excluded(["sub00"], "x")
        msg = str(err.value)
        assert "read-only" in msg and "not damaged" in msg and "re-import" not in msg
        assert snapshot(root) == before
    finally:
        undo()


def test_sqlite_errors_say_what_happened():
    from bodyage_core.cohort.sqlite_errors import sqlite_error

    cases = {"attempt to write a readonly database": "read-only",
             "database or disk is full": "is full", "database is locked": "locked by another",
             "disk I/O error": "input/output error", "file is not a database": "damaged"}
    for text, expect in cases.items():
        cls = sqlite3.DatabaseError if "not a database" in text else sqlite3.OperationalError
        msg = str(sqlite_error(cls(text), "/w/cohort.sqlite"))
        assert expect in msg, msg
        assert ("re-import" in msg) == (expect == "damaged"), msg


_FSIZE = textwrap.dedent("""
    import resource, signal, sys
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)      # a write past the limit fails: EFBIG
    resource.setrlimit(resource.RLIMIT_FSIZE, (int(sys.argv[1]), int(sys.argv[1])))
    from bodyage_core.cli.main import main
    sys.exit(main(sys.argv[2:]))
""")


def test_disk_full_during_synth_is_one_line(tmp_path):
    """A full disk: a small tmpfs where this process may mount one, else a file-size limit
    (RLIMIT_FSIZE), which fails writes the same way (EFBIG instead of ENOSPC)."""
    mnt = tmp_path / "small"
    mounted = _mount_tmpfs(mnt, "600k")
    try:
        ws = (mnt if mounted else tmp_path) / "ws"
        argv = ["synth", str(ws), "--n", "40", "--grid", "12,12,16"]
        if mounted:
            cmd = [PY, "-m", "bodyage_core.cli.main", *argv]
        else:
            cmd = [PY, "-c", _FSIZE, str(150_000), *argv]
        r = subprocess.run(cmd, capture_output=True, text=True, env=ENV, timeout=300)
        err = _error_lines(r.stderr)
        assert r.returncode == 2, r.stderr
        assert len(err) == 1 and "Traceback" not in r.stderr, r.stderr
        assert ("full" in err[0]) if mounted else ("too large" in err[0] or "full" in err[0])
        assert "run the same command again" in err[0] or "then run again" in err[0] \
            or "free space" in err[0], err[0]
    finally:
        if mounted:
            _umount(mnt)


def test_a_training_run_that_cannot_write_its_checkpoint_is_one_line_and_marked_failed(
        tmp_path):
    """Under a file-size limit the index and the small cache files are written, the member
    checkpoint is not (torch raises a RuntimeError, not an OSError): one line, and the run is
    ``failed`` in the index."""
    root = _make_ws(tmp_path / "ws", n=8)
    limit = 400_000      # the index and the cache files fit, a network checkpoint does not
    cmd = [PY, "-c", _FSIZE, str(limit), "train", str(root), "--run", "r", "--folds", "2",
           *FAST[:-2], "--width", "8"]
    r = subprocess.run(cmd, capture_output=True, text=True, env=ENV, timeout=300)
    lines = _error_lines(r.stderr)
    assert r.returncode == 2 and len(lines) == 1 and "Traceback" not in r.stderr, r.stderr
    assert "too large" in lines[0] or "full" in lines[0], lines[0]
    with Workspace.open(root) as ws:
        assert [x["status"] for x in ws.db.runs() if x["run_id"] == "r"] == ["failed"]
    assert not (root / "models" / "r").exists()


def test_a_cache_that_cannot_be_written_does_not_stop_training(tmp_path, capsys):
    root = _make_ws(tmp_path / "ws", n=8)
    (root / "cache").write_text("not a folder")        # every cache write fails (ENOTDIR)
    rc = main(["train", str(root), "--run", "r", "--folds", "2", *FAST])
    err = capsys.readouterr().err
    assert rc == 0, err
    assert err.count("warning: the input cache cannot be written") == 1
    assert (root / "models" / "r" / "config.json").exists()
    assert (root / "cache").read_text() == "not a folder"


def test_sigterm_during_a_batch_stage_marks_its_tasks_cancelled(trained):
    """SIGTERM reaches `bodyage predict` like Ctrl+C: the running subject is marked
    cancelled (not left running) and the lock is released."""
    for sid in ("sub05", "sub03"):        # earlier tests damaged them; make them ordinary
        _nii(trained / "subjects" / sid / "t1.nii.gz", _body(seed=int(sid[3:])))
    proc = subprocess.Popen([PY, "-m", "bodyage_core.cli.main", "explain", str(trained),
                             "--run", "r1", "--scheduler", "none", "--overwrite",
                             "--method", "occlusion", "--patch", "1", "--stride", "1",
                             "--device", "cpu"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            env=ENV)
    try:
        t0 = time.monotonic()
        running = {}
        while time.monotonic() - t0 < 90:
            with Workspace.open(trained) as ws:
                running = {k: v for k, v in ws.db.tasks("explain", "occlusion_r1").items()
                           if v["status"] == "running"}
            if running or proc.poll() is not None:
                break
            time.sleep(0.2)
        assert running, proc.stderr.read() if proc.poll() is not None else "no task started"
        proc.send_signal(signal.SIGTERM)
        err = proc.communicate(timeout=60)[1]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130 and "Traceback" not in err, err
    with Workspace.open(trained) as ws:
        rows = ws.db.tasks("explain", "occlusion_r1")
    assert not [k for k, v in rows.items() if v["status"] == "running"], rows
    assert [k for k, v in rows.items() if v["status"] == "cancelled"]
    from bodyage_core.cluster.lock import WorkspaceLock

    with WorkspaceLock(trained) as lock:
        assert lock.held
