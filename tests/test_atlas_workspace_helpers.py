"""The atlas workspace helpers shared by the in-process stages (bodyage_core.atlas.workspace)
and the cluster tasks (bodyage_core.cluster.tasks), on files alone (no registration)."""

from __future__ import annotations

import os

from bodyage_core.atlas.workspace import warped_map_current


def _touch(path, mtime: float):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("x")
    os.utime(path, (mtime, mtime))
    return path


def test_warped_map_current(tmp_path):
    folder = tmp_path / "atlas_F"
    src = _touch(tmp_path / "gradcam_r.nii.gz", 100.0)
    cache = _touch(folder / "gradcam_r.nii.gz", 300.0)
    assert not warped_map_current(cache, src, folder)   # no transform.json: not current
    tx = _touch(folder / "transform.json", 200.0)
    assert warped_map_current(cache, src, folder)
    os.utime(tx, (300.0, 300.0))                        # as new as the cache: still current
    assert warped_map_current(cache, src, folder)
    os.utime(tx, (400.0, 400.0))                        # registered again since
    assert not warped_map_current(cache, src, folder)
    os.utime(tx, (200.0, 200.0))
    os.utime(src, (400.0, 400.0))                       # the map was made again since
    assert not warped_map_current(cache, src, folder)
    src.unlink()
    assert not warped_map_current(cache, src, folder)
    assert not warped_map_current(folder / "age_mask.nii.gz", tx, folder)
