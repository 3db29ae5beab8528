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


def test_warped_label_cache_made_with_another_interpolation_is_stale(tmp_path):
    """A label map cached with another interpolation (an older default) is not reused: the
    interpolation recorded in the NIfTI's provenance must match the one asked for."""
    import numpy as np

    from bodyage_core.io import save_volume
    from bodyage_core.volume import Volume

    folder = tmp_path / "atlas_F"
    src = _touch(tmp_path / "labels.nii.gz", 100.0)
    _touch(folder / "transform.json", 200.0)
    cache = folder / "labels.nii.gz"
    lab = np.zeros((4, 5, 6), np.int16)
    for prov in ({"interpolation": "label_gaussian"}, {}):   # {}: written before it was recorded
        save_volume(Volume(lab[None], np.eye(4), channels=("labels",), provenance=prov), cache)
        assert warped_map_current(cache, src, folder)                 # any interpolation
        assert not warped_map_current(cache, src, folder, "label_linear")
    save_volume(Volume(lab[None], np.eye(4), channels=("labels",),
                       provenance={"interpolation": "label_linear"}), cache)
    assert warped_map_current(cache, src, folder, "label_linear")
    cache.write_bytes(b"not a nifti")
    assert not warped_map_current(cache, src, folder, "label_linear")


def _workspace(tmp_path, atlases: dict[str, dict]):
    from bodyage_core.atomic import write_json
    from bodyage_core.cohort import Workspace

    ws = Workspace.create(tmp_path / "ws")
    ws.db.add_subjects([{"subject_id": "f1", "sex": "F", "bmi": 22.0},
                        {"subject_id": "f2", "sex": "F", "bmi": 22.0},
                        {"subject_id": "m1", "sex": "M", "bmi": 22.0}])
    for g, info in atlases.items():
        write_json(ws.atlas_dir(g) / "members.json", dict(info, group=g, fingerprint=g))
    return ws


def _pairs(jobs):
    return sorted((g, s.subject_id) for g, s, _info in jobs)


def test_registration_jobs(tmp_path):
    import pytest

    from bodyage_core.atlas.workspace import registration_jobs
    from bodyage_core.errors import CohortError

    # "by" from members.json; an atlas without one groups by sex and BMI group; an empty one
    # is the single atlas "all"
    ws = _workspace(tmp_path, {"F": {"by": ["sex"]}, "M_healthy": {}, "all": {"by": []}})
    try:
        jobs = registration_jobs(ws)
        assert _pairs(jobs) == [("F", "f1"), ("F", "f2"), ("M_healthy", "m1"),
                                ("all", "f1"), ("all", "f2"), ("all", "m1")]
        assert {g: info["fingerprint"] for g, _s, info in jobs} == {
            "F": "F", "M_healthy": "M_healthy", "all": "all"}
        assert _pairs(registration_jobs(ws, group="F")) == [("F", "f1"), ("F", "f2")]
        assert _pairs(registration_jobs(ws, subject="m1")) == [("M_healthy", "m1"),
                                                               ("all", "m1")]
        # a subject and a group: that atlas, whatever the subject's group
        assert _pairs(registration_jobs(ws, group="F", subject="m1")) == [("F", "m1")]
        with pytest.raises(CohortError, match="no atlas 'X'.*built: F, M_healthy, all"):
            registration_jobs(ws, group="X")
    finally:
        ws.close()
    ws = _workspace(tmp_path / "only_f", {"F": {"by": ["sex"]}})
    try:
        with pytest.raises(CohortError, match="subject m1 belongs to no built atlas"):
            registration_jobs(ws, subject="m1")
    finally:
        ws.close()
    ws = _workspace(tmp_path / "empty", {})
    try:
        with pytest.raises(CohortError, match="no atlas built yet"):
            registration_jobs(ws)
    finally:
        ws.close()


def test_register_stage_jobs_are_registration_jobs(tmp_path):
    from bodyage_core.cluster import RegisterStage

    ws = _workspace(tmp_path, {"F": {"by": ["sex"], "config": {"registration": {}}},
                               "all": {"by": []}})
    try:
        stage = RegisterStage()
        jobs = stage.jobs(ws)
        assert sorted((j.key, j.subject_id) for j in jobs) == [
            ("F", "f1"), ("F", "f2"), ("all", "f1"), ("all", "f2"), ("all", "m1")]
        assert stage._infos["F"] == {"fingerprint": "F", "config": {"registration": {}},
                                     "by": ["sex"]}
    finally:
        ws.close()
