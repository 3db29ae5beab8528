"""The model-grid input cache ``WORKSPACE/cache/<grid-hash>/<id>.npy``: a second load is served
from the cache without reading the source images (file opens counted with audit hooks), a
changed source invalidates its entry, and LRU eviction keeps the folder under the size limit."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from bodyage_core.cli.main import main
from bodyage_core.errors import ConfigError
from bodyage_core.preprocess.cache import (
    PreprocessCache,
    parse_size,
    set_workspace_limit,
    workspace_limit,
)
from bodyage_core.training.data import AgeDataset, input_cache, records_from_workspace
from bodyage_core.training.workflow import make_spec

# helpers of the io and training tests, beside this folder
for _sub in ("io", "training"):
    sys.path.insert(0, str(Path(__file__).parents[1] / _sub))
from test_stream_ukbb import FileLog  # noqa: E402
from test_training_cli import FAST, _make_ws  # noqa: E402


def _load_all(ws, spec) -> list[np.ndarray]:
    ds = AgeDataset(records_from_workspace(ws, spec))
    return [ds.array(i) for i in range(len(ds))]


def test_second_load_hits_the_cache_and_a_changed_source_invalidates(tmp_path):
    ws = _make_ws(tmp_path / "ws", [30, 45, 60, 75])
    spec = make_spec(ws, "resnet3d", spacing=(4, 4, 4), shape=(12, 12, 12))
    cache = input_cache(ws, spec)
    assert cache.dir == (tmp_path / "ws" / "cache" / spec.hash).resolve()
    s0 = cache.stats.to_dict()
    with FileLog() as first:
        a1 = _load_all(ws, spec)
    assert len({p for p in first.reads(".nii.gz")}) == 4          # every source read
    assert cache.stats.misses - s0["misses"] == 4 and cache.stats.writes - s0["writes"] == 4
    assert sorted(p.name for p in cache.dir.glob("*.npy")) == [f"sub0{i}.npy" for i in range(4)]
    meta = json.loads((cache.dir / "sub01.json").read_text())
    src = tmp_path / "ws" / "subjects" / "sub01" / "t1.nii.gz"
    assert meta["sources"] == [[str(src.resolve()), src.stat().st_size, src.stat().st_mtime_ns]]
    assert json.loads((cache.dir / "grid.json").read_text())["shape_zyx"] == [12, 12, 12]

    s1 = cache.stats.to_dict()
    with FileLog() as second:
        a2 = _load_all(ws, spec)
    assert second.reads(".nii.gz") == []                          # no source read at all
    assert len(second.reads(".npy")) == 4
    assert cache.stats.hits - s1["hits"] == 4 and cache.stats.misses == s1["misses"]
    assert all(np.array_equal(x, y) for x, y in zip(a1, a2))

    # change one source image: only that subject is prepared again, with the new content
    img = nib.load(src)
    data = np.asarray(img.get_fdata(), dtype=np.float32)
    data[2:-2, 2:-2, 2:-2] += 3.0
    nib.save(nib.Nifti1Image(data, img.affine), src)
    os.utime(src, ns=(time.time_ns(), src.stat().st_mtime_ns + 1_000_000_000))
    s2 = cache.stats.to_dict()
    with FileLog() as third:
        a3 = _load_all(ws, spec)
    assert {Path(p).parent.name for p in third.reads(".nii.gz")} == {"sub01"}
    assert cache.stats.invalidated - s2["invalidated"] == 1
    assert cache.stats.hits - s2["hits"] == 3 and cache.stats.misses - s2["misses"] == 1
    assert not np.array_equal(a3[1], a1[1])
    assert all(np.array_equal(a3[i], a1[i]) for i in (0, 2, 3))


def _source(folder: Path, name: str) -> Path:
    p = folder / f"{name}.bin"
    p.write_bytes(name.encode())
    return p


def test_lru_eviction_keeps_the_total_under_the_limit(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    arr = np.ones((10_000,), dtype=np.float32)              # 40 kB per entry
    probe = PreprocessCache(tmp_path / "probe", "g")
    probe.store("x", [_source(src, "x")], arr)
    entry = probe.total_bytes()
    limit = int(3.5 * entry)
    root = tmp_path / "cache"
    cache = PreprocessCache(root, "g1", max_bytes=limit)
    for i in range(3):
        cache.store(f"s{i}", [_source(src, f"s{i}")], arr * i)
    assert len(list(cache.dir.glob("*.npy"))) == 3 and cache.stats.evicted == 0
    assert abs(cache.total_bytes() - 3 * entry) < 300          # (the .json keys vary a bit)
    assert cache.lookup("s0", [src / "s0.bin"]) is not None    # s0 is now the most recent
    cache.store("s3", [_source(src, "s3")], arr * 3)           # over the limit: evict LRU (s1)
    assert cache.total_bytes() <= limit
    assert sorted(p.stem for p in cache.dir.glob("*.npy")) == ["s0", "s2", "s3"]
    assert not (cache.dir / "s1.json").exists() and cache.stats.evicted == 1
    for i in range(4, 12):                                     # keeps holding under load
        cache.store(f"s{i}", [_source(src, f"s{i}")], arr * i)
        assert cache.total_bytes() <= limit
    # a second grid in the same cache folder shares the limit
    other = PreprocessCache(root, "g2", max_bytes=limit)
    other.store("t0", [_source(src, "t0")], arr)
    assert cache.total_bytes() <= limit and (other.dir / "t0.npy").exists()
    assert np.array_equal(cache.lookup("s11", [src / "s11.bin"]), arr * 11)
    # no disk cache at all with a limit of 0
    off = PreprocessCache(tmp_path / "off", "g", max_bytes=0)
    calls = []
    for _ in range(2):
        off.get("a", [src / "s0.bin"], lambda: calls.append(1) or arr)
    assert len(calls) == 2 and not (tmp_path / "off").exists()


def test_cache_size_option(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("BODYAGE_CACHE_SIZE", raising=False)
    assert parse_size("20GB") == 20 * 10**9 and parse_size("2GiB") == 2 * 2**30
    assert parse_size("500 mb") == 500 * 10**6 and parse_size("0") == 0
    assert parse_size("none") is None and parse_size(1234) == 1234
    with pytest.raises(ConfigError, match="20 gigs"):
        parse_size("20 gigs")
    root = tmp_path / "ws"
    _make_ws(root, list(np.linspace(20, 80, 6)))
    # a cache smaller than the cohort (4 of the 6 float16 inputs fit): training still works,
    # the cache stays under its limit
    rc = main(["train", str(root), "--run", "c", "--folds", "2", *FAST, "--cache-size", "20kB"])
    assert rc == 0
    assert json.loads((root / "cache" / "settings.json").read_text()) == {"max_bytes": 20_000}
    assert workspace_limit(root) == 20_000
    entries = list((root / "cache").rglob("*.npy"))
    total = sum(p.stat().st_size + p.with_suffix(".json").stat().st_size for p in entries)
    assert 1 <= len(entries) <= 4 and total <= 20_000
    monkeypatch.setenv("BODYAGE_CACHE_SIZE", "5MB")
    assert workspace_limit(root) == 5 * 10**6
    set_workspace_limit(root, None)
    monkeypatch.delenv("BODYAGE_CACHE_SIZE")
    assert workspace_limit(root) is None
    rc = main(["train", str(root), "--run", "c2", *FAST, "--cache-size", "lots"])
    err = capsys.readouterr().err
    assert rc == 2 and "cannot read the cache size 'lots'" in err


def test_bounded_memory_cache_falls_back_to_the_disk_cache(tmp_path):
    ws = _make_ws(tmp_path / "ws", [30, 45, 60, 75])
    spec = make_spec(ws, "resnet3d", spacing=(4, 4, 4), shape=(12, 12, 12))
    one = 12 ** 3 * 2                                       # held as cached: float16
    ds = AgeDataset(records_from_workspace(ws, spec), max_bytes=2 * one)
    first = [ds.array(i).copy() for i in range(4)]
    assert ds.memory_bytes == 2 * one                       # only the 2 most recent stay
    with FileLog() as log:
        again = [ds.array(i) for i in range(4)]
    assert log.reads(".nii.gz") == [] and len(log.reads(".npy")) == 4   # from disk, not RAM
    assert all(np.array_equal(a, b) for a, b in zip(first, again))
    with FileLog() as log:
        ds.array(3)                                             # most recent: in memory
    assert log.reads(".npy") == []
