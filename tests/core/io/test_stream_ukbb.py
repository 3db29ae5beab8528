"""Streaming UK Biobank zips: a folder of fake station zips is indexed by name (no zip opened),
imported without extracting anything, and each subject's zip is read in memory when the subject
is loaded. File activity is observed with Python's audit hooks (every ``open`` of a file)."""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest

from bodyage_core.cli.main import main
from bodyage_core.cohort import Workspace
from bodyage_core.io.ukbb_bulk import UKBBFolderIndex, parse_bulk_name
from bodyage_core.io.ukbb_fake import write_ukbb_zip
from bodyage_core.training.data import InputSpec, load_subject_volume, records_from_workspace
from bodyage_core.volume import Volume

_OPENS: list[tuple[str, str]] | None = None
_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND


def _audit(event, args):
    if _OPENS is None or event != "open" or not args or not isinstance(args[0], (str, bytes,
                                                                                os.PathLike)):
        return
    path, mode, flags = (list(args) + [None, None])[:3]
    writing = (isinstance(mode, str) and any(c in mode for c in "wax+")) or \
        (isinstance(flags, int) and bool(flags & _WRITE_FLAGS))
    _OPENS.append((os.fsdecode(path), "w" if writing else "r"))


sys.addaudithook(_audit)


class FileLog:
    """Record every file ``open`` (path, 'r'|'w') in the block."""

    def __enter__(self):
        global _OPENS
        _OPENS = []
        self.opens = _OPENS
        return self

    def __exit__(self, *exc):
        global _OPENS
        _OPENS = None

    def reads(self, suffix: str) -> list[str]:
        return [p for p, m in self.opens if m == "r" and p.endswith(suffix)]

    def writes(self) -> list[str]:
        return [p for p, m in self.opens if m == "w"]


def _volume(seed: int) -> Volume:
    nz, ny, nx = 30, 12, 14
    z = np.arange(nz, dtype=np.float64)[:, None, None] * np.ones((nz, ny, nx))
    aff = np.diag([2.0, 2.0, 3.0, 1.0])
    aff[:3, 3] = [-14.0, -12.0, -45.0]
    return Volume(np.stack([10 * z + 5 + seed, 200 - 2 * z + seed]), aff, ("water", "fat"))


@pytest.fixture(scope="module")
def ukb_folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("ukb")
    folder = root / "bulk"
    (folder / "part2").mkdir(parents=True)
    write_ukbb_zip(_volume(1), folder / "1000001_20201_2_0.zip", channels=("water", "fat"))
    write_ukbb_zip(_volume(2), folder / "1000002_20201_2_0.zip", channels=("water", "fat"))
    write_ukbb_zip(_volume(3), folder / "1000002_20201_3_0.zip", channels=("water", "fat"))
    write_ukbb_zip(_volume(4), folder / "part2" / "1000003_20201_2_0.zip",
                   channels=("water", "fat"))
    (folder / "1000004_20204_2_0.zip").write_bytes(b"not opened: another field")
    (folder / "notes.zip").write_bytes(b"not a bulk name")
    (root / "cohort.csv").write_text("eid,age,sex,bmi\n1000001,61,F,22\n1000002,70,M,31\n"
                                     "1000003,55,F,27\n1000009,50,M,20\n")
    return root


def test_bulk_names_are_parsed():
    assert parse_bulk_name("1234567_20201_2_0.zip") == ("1234567", 20201, 2, 0)
    assert parse_bulk_name("1234567_20201_2_0.ZIP") == ("1234567", 20201, 2, 0)
    assert parse_bulk_name("notes.zip") is None
    assert parse_bulk_name("1234567_20201_2.zip") is None


def test_index_by_name_opens_no_zip(ukb_folder):
    folder = ukb_folder / "bulk"
    with FileLog() as log:
        index = UKBBFolderIndex(folder)
        assert index.subjects() == ["1000001", "1000002", "1000003"]
        assert index.subjects(field=None) == ["1000001", "1000002", "1000003", "1000004"]
        assert index.zip_for("1000002").instance == 2
        assert index.zip_for("1000002", instance=3).path.name == "1000002_20201_3_0.zip"
        assert index.zip_for("1000003").path.parent.name == "part2"
        assert index.zip_for("1000004") is None and "1000009" not in index
        assert index.skipped == ["notes.zip"]
    assert log.reads(".zip") == [] and log.writes() == []


def test_import_registers_zips_without_extracting(ukb_folder, tmp_path, capsys):
    folder = ukb_folder / "bulk"
    before_bulk = sorted(str(p) for p in folder.rglob("*"))
    before_tmp = set(os.listdir(tempfile.gettempdir()))
    ws_root = tmp_path / "ws"
    with FileLog() as log:
        rc = main(["import", str(ws_root), "--ukbb-folder", str(folder), "--csv",
                   str(ukb_folder / "cohort.csv")])
    assert rc == 0
    out = capsys.readouterr()
    assert "imported 3 subjects" in out.out
    assert "1000009" in out.err and "notes.zip" in out.err      # warned, not fatal
    assert log.reads(".zip") == []                             # import opens no zip
    assert all(not p.endswith(".dcm") for p in log.writes())
    ws = Workspace.open(ws_root)
    subs = {s.subject_id: s for s in ws.db.subjects()}
    assert sorted(subs) == ["1000001", "1000002", "1000003"]
    s2 = subs["1000002"]
    assert s2.age == 70 and s2.sex == "M" and s2.bmi_group == "obese"
    assert s2.images["water"] == s2.images["fat"] == str(folder / "1000002_20201_2_0.zip")

    # loading a subject reads its zip once, in memory, and writes nothing at all
    with FileLog() as log:
        vol = load_subject_volume(ws, s2, ("water", "fat"))
    assert log.reads(".zip") == [str(folder / "1000002_20201_2_0.zip")]
    assert log.writes() == []
    assert vol.channels == ("water", "fat") and vol.data.shape[0] == 2
    water, fat = vol.data
    # the fake zip of subject 2 (instance 2) holds water = 10 z + 7, fat = 200 - 2 z + 2; the
    # stitched volume starts 4 slices up (the default trims 4 at each end, Langner)
    assert water.shape[0] == 30 - 8
    z = np.arange(water.shape[0]) + 4
    assert np.allclose(water[:, 5, 5], 10 * z + 7, atol=1e-3)
    assert np.allclose(fat[:, 5, 5], 200 - 2 * z + 2, atol=1e-3)

    # model inputs through the cache: the only files written are the cache's own
    spec = InputSpec(channels=("water", "fat"), spacing_zyx=(6.0, 4.0, 4.0),
                     shape_zyx=(16, 8, 8), normalise="none")
    with FileLog() as log:
        arrays = [r.loader() for r in records_from_workspace(ws, spec)]
    assert [a.shape for a in arrays] == [(2, 16, 8, 8)] * 3
    written = {Path(p).resolve() for p in log.writes()}
    cache_dir = (ws_root / "cache").resolve()
    assert written and all(cache_dir in p.parents for p in written), written
    assert sorted(p.name for p in (ws_root / "cache").rglob("*.npy")) == [
        "1000001.npy", "1000002.npy", "1000003.npy"]
    assert not any((ws_root / "subjects").rglob("*"))
    assert sorted(str(p) for p in folder.rglob("*")) == before_bulk
    assert not any(n.endswith(".dcm") for n in set(os.listdir(tempfile.gettempdir()))
                   - before_tmp)


def test_import_ukbb_folder_bad_input(ukb_folder, tmp_path, capsys):
    rc = main(["import", str(tmp_path / "ws"), "--ukbb-folder", str(tmp_path / "nope")])
    err = capsys.readouterr().err
    assert rc == 2 and "UK Biobank folder not found" in err and "nope" in err
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "scan.zip").write_bytes(b"x")
    rc = main(["import", str(tmp_path / "ws"), "--ukbb-folder", str(empty)])
    err = capsys.readouterr().err
    assert rc == 2 and "no UK Biobank zip of field 20201" in err and "_20201_" in err
    rc = main(["import", str(tmp_path / "ws"), "--images", str(empty)])
    assert rc == 2 and "--images needs --csv" in capsys.readouterr().err
    # without a CSV every participant is imported, without an age
    rc = main(["import", str(tmp_path / "ws2"), "--ukbb-folder", str(ukb_folder / "bulk"),
               "--instance", "3"])
    assert rc == 0
    subs = Workspace.open(tmp_path / "ws2").db.subjects()
    assert [(s.subject_id, s.age) for s in subs] == [("1000002", None)]
    assert subs[0].images["water"].endswith("1000002_20201_3_0.zip")


def test_atlas_member_reads_water_and_fat_from_one_zip(ukb_folder):
    """A streamed subject records the same zip as its water and its fat image: the atlas
    builder must take each channel from it (not the zip's first channel twice)."""
    from bodyage_core.atlas.build import AtlasMember
    from bodyage_core.io import load_volume

    z = ukb_folder / "bulk" / "1000001_20201_2_0.zip"
    vol = AtlasMember("1000001", image_paths={"water": z, "fat": z}).load()
    ref = load_volume(z, channels=("water", "fat"))
    assert vol.channels == ("water", "fat")
    np.testing.assert_allclose(vol.channel("water"), ref.channel("water"))
    np.testing.assert_allclose(vol.channel("fat"), ref.channel("fat"))
    assert not np.allclose(vol.channel("water"), vol.channel("fat"))
