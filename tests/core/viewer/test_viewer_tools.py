"""The viewer model's tools (Qt-free): lightbox slices and positions, ruler lengths on a known
spacing, box / ellipse region statistics with known values, their CSV, and the DICOM series
of a folder with two series."""

from __future__ import annotations

import csv
import io
import shutil
from pathlib import Path

import numpy as np
import pytest

from bodyage_core.errors import BodyageError
from bodyage_core.viewer import ViewerState
from bodyage_core.viewer.lightbox import lightbox_slices
from bodyage_core.viewer.measure import region_mask, region_statistics, statistics_csv
from bodyage_core.volume import Volume

DATA = Path(__file__).resolve().parents[3].parent / "shared" / "data"
SPACING = (2.0, 3.0, 4.0)          # x, y, z mm


def _state(shape=(60, 20, 30)) -> ViewerState:
    aff = np.diag([*SPACING, 1.0])
    aff[:3, 3] = (-10.0, 5.0, 100.0)
    z, y, x = np.indices(shape, dtype=np.float32)
    st = ViewerState()
    st.add_layer(Volume((x + 10 * y + 1000 * z)[None], aff, ("t1",)), "t1", kind="image")
    return st


def test_lightbox_slices_cover_the_volume_or_step_around_the_cursor():
    assert lightbox_slices(60, 12, 0, 30) == [2, 7, 12, 17, 22, 27, 32, 37, 42, 47, 52, 57]
    assert lightbox_slices(60, 12, 2, 30) == list(range(18, 41, 2))
    assert lightbox_slices(60, 12, 2, 58) == list(range(37, 60, 2))    # kept inside
    assert lightbox_slices(60, 12, 2, 1) == list(range(0, 23, 2))
    assert lightbox_slices(5, 12, 0, 2) == [0, 1, 2, 3, 4]              # fewer slices
    assert lightbox_slices(20, 12, 3, 10) == [1, 4, 7, 10, 13, 16, 19]  # what fits


def test_lightbox_of_the_state_and_its_positions_in_mm():
    st = _state()
    st.set_lightbox(plane="axial", rows=3, columns=4, spacing=5)
    st.set_cursor_voxel((30, 10, 15))
    slices = st.lightbox_slices()
    assert slices == list(range(0, 56, 5))
    assert [st.slice_position_mm("axial", k) for k in slices[:3]] == [100.0, 120.0, 140.0]
    st.set_lightbox(plane="coronal", spacing=0)
    assert st.lightbox_slices() == [0, 2, 4, 5, 7, 9, 10, 12, 14, 15, 17, 19]
    assert st.slice_position_mm("coronal", 2) == pytest.approx(5.0 + 2 * 3.0)
    with pytest.raises(BodyageError):
        st.set_lightbox(rows=0)
    with pytest.raises(BodyageError):
        st.set_lightbox(spacing=-1)
    d = st.to_dict()
    assert d["lightbox"] == {"plane": "coronal", "rows": 3, "columns": 4, "spacing": 0}


@pytest.mark.parametrize("plane", ["axial", "coronal", "sagittal"])
def test_ruler_length_on_a_known_spacing(plane):
    st = _state()
    vol = st.base_layer.volume
    st.set_cursor_voxel((30, 10, 15))
    a = vol.voxel_to_world(np.array([30.0, 10.0, 15.0]))
    # 10 voxels along each in-plane axis: x 2 mm, y 3 mm, z 4 mm
    steps = {"axial": ((0, 0, 10), (0, 10, 0)), "coronal": ((0, 0, 10), (10, 0, 0)),
             "sagittal": ((0, 10, 0), (10, 0, 0))}[plane]
    for step, mm in zip(steps, _lengths(plane)):
        b = vol.voxel_to_world(np.array([30.0, 10.0, 15.0]) + np.array(step))
        m = st.add_measurement("ruler", plane, a, b)
        assert m.length_mm == pytest.approx(mm)
    diag = vol.voxel_to_world(np.array([30.0, 10.0, 15.0]) + np.array(steps[0]) +
                              np.array(steps[1]))
    m = st.add_measurement("ruler", plane, a, diag)
    assert m.length_mm == pytest.approx(float(np.hypot(*_lengths(plane))))


def _lengths(plane):
    return {"axial": (20.0, 30.0), "coronal": (20.0, 40.0), "sagittal": (30.0, 40.0)}[plane]


def test_box_and_ellipse_statistics_with_known_values():
    st = _state()
    vol = st.base_layer.volume
    st.set_cursor_voxel((5, 10, 15))
    # an overlay on the same grid (constant 7) and one on another grid (a 4 mm copy)
    st.add_layer(Volume(np.full((1, 60, 20, 30), 7.0, np.float32), vol.affine, ("m",)), "seven",
                 kind="overlay")
    corner = lambda zyx: vol.voxel_to_world(np.array(zyx, float))  # noqa: E731
    box = st.add_measurement("box", "axial", corner((5, 2, 3)), corner((5, 5, 7)))
    mask = region_mask(st, box)
    assert mask.sum() == 4 * 5 and mask[5, 2:6, 3:8].all()
    s = region_statistics(st, box)
    assert s["voxels"] == 20
    assert s["volume_ml"] == pytest.approx(20 * 2 * 3 * 4 / 1000.0)
    assert s["area_mm2"] == pytest.approx(20 * 2 * 3)
    t1 = s["layers"][0]
    vals = np.array([x + 10 * y + 5000 for y in range(2, 6) for x in range(3, 8)], float)
    assert t1["layer"] == "t1" and t1["n"] == 20
    assert t1["mean"] == pytest.approx(vals.mean()) and t1["sd"] == pytest.approx(vals.std(ddof=1))
    assert (t1["min"], t1["max"]) == (vals.min(), vals.max())
    assert s["layers"][1] == {"layer": "seven", "channel": "m", "n": 20, "mean": 7.0,
                              "sd": 0.0, "min": 7.0, "max": 7.0}
    ell = st.add_measurement("ellipse", "axial", corner((5, 2, 3)), corner((5, 5, 7)))
    yy, xx = np.mgrid[0:20, 0:30]
    want = ((xx - 5) / 2.0) ** 2 + ((yy - 3.5) / 1.5) ** 2 <= 1
    assert np.array_equal(region_mask(st, ell)[5], want)
    assert region_statistics(st, ell)["voxels"] == int(want.sum())
    # a hidden layer is left out; a ruler has no statistics
    st.layer("seven").visible = False
    assert [x["layer"] for x in region_statistics(st, box)["layers"]] == ["t1"]
    with pytest.raises(BodyageError):
        region_statistics(st, st.add_measurement("ruler", "axial", corner((5, 0, 0)),
                                                 corner((5, 0, 3))))
    # the CSV: one row per region and layer, one per ruler
    rows = list(csv.DictReader(io.StringIO(statistics_csv(st))))
    assert [r["measurement"] for r in rows] == [box.name, ell.name, f"ruler {box.id + 2}"]
    assert float(rows[0]["volume_ml"]) == pytest.approx(0.48)
    assert float(rows[0]["mean"]) == pytest.approx(vals.mean())
    assert float(rows[2]["length_mm"]) == pytest.approx(6.0)
    # measurements belong to the image: a new image clears them
    other = ViewerState()
    other.add_layer(Volume(np.zeros((1, 4, 4, 4), np.float32), np.eye(4), ("x",)), "x")
    st.replace_layers(other)
    assert st.measurements == []


def test_region_on_a_resampled_layer():
    st = _state((10, 10, 10))
    vol = st.base_layer.volume
    coarse = vol.affine.copy()
    coarse[:3, :3] *= 2
    st.add_layer(Volume(np.full((1, 5, 5, 5), 3.0, np.float32), coarse, ("c",)), "coarse",
                 kind="overlay")
    assert st.layer("coarse").resampled
    c = lambda zyx: vol.voxel_to_world(np.array(zyx, float))  # noqa: E731
    s = region_statistics(st, st.add_measurement("box", "coronal", c((2, 5, 2)), c((4, 5, 4))))
    assert s["voxels"] == 9 and s["layers"][1]["mean"] == 3.0 and s["layers"][1]["n"] == 9


def test_dicom_series_of_a_folder_with_two_series(tmp_path):
    from bodyage_core.viewer.dicom_series import scan_folder, tree

    ct = DATA / "totalsegmentator" / "example_ct_dicom"
    mr = DATA / "tcia_vs_seg_001_t1_dicom_subset"
    if not (ct.is_dir() and mr.is_dir()):
        pytest.skip("real DICOM data not available")
    folder = tmp_path / "mixed"
    (folder / "a").mkdir(parents=True)
    for f in ct.iterdir():
        shutil.copy2(f, folder / f.name)
    for f in mr.iterdir():
        shutil.copy2(f, folder / "a" / f.name)       # one in a sub-folder
    (folder / "notes.txt").write_text("not DICOM")
    series = scan_folder(folder)
    by_mod = {s.modality: s for s in series}
    assert set(by_mod) == {"CT", "MR"}
    mr_s, ct_s = by_mod["MR"], by_mod["CT"]
    assert mr_s.n_slices == 10 and mr_s.description == "t1_mpr_tra_gk_v4"
    assert mr_s.number == 2 and mr_s.patient_age == 60.0 and mr_s.patient_sex == "M"
    assert mr_s.patient_id == "VS-SEG-001"
    assert ct_s.n_slices == 20 and ct_s.label == "CT Body 3.0" and ct_s.number is None
    t = tree(series)
    assert any("VS-SEG-001" in p for p in t)
    # the loader reads exactly the chosen series from its first file
    from bodyage_core.io import load_volume

    v = load_volume(mr_s.first_file())
    assert v.shape[0] == 10 and v.metadata.get("age") == 60.0
    assert load_volume(ct_s.first_file()).shape[0] == 20


def test_interpolation_and_lightbox_travel_in_the_session(tmp_path):
    from bodyage_core.io import save_volume
    from bodyage_core.viewer.session import validate_session

    path = tmp_path / "t1.nii.gz"
    vol = _state().base_layer.volume
    save_volume(vol, path)
    st = ViewerState()
    st.add_layer(vol, "t1", kind="image", path=path)
    st.set_interpolation("linear")
    st.set_lightbox(plane="sagittal", rows=2, columns=5, spacing=3)
    d = st.to_dict()
    new = ViewerState()
    assert new.restore(d) == []
    assert new.interpolation == "linear"
    assert new.lightbox.to_dict() == {"plane": "sagittal", "rows": 2, "columns": 5,
                                      "spacing": 3}
    bad = dict(d, interpolation="cubic", lightbox={"rows": 0})
    _, problems = validate_session(bad)
    assert any(p.startswith("interpolation:") for p in problems)
    assert any(p.startswith("lightbox:") for p in problems)
    with pytest.raises(BodyageError):
        st.set_interpolation("cubic")


def test_a_dixon_pair_given_as_two_files_is_one_image(tmp_path):
    from bodyage_core.cli.cmd_gui import state_from_args
    from bodyage_core.cli.main import build_parser
    from bodyage_core.io import save_volume
    from bodyage_core.viewer.scan import merge_contrasts, scan_id

    vol = _state((8, 8, 8)).base_layer.volume
    d = tmp_path / "sub-01"
    d.mkdir()
    save_volume(vol, d / "water.nii.gz")
    save_volume(vol.with_data(vol.data * 0.5), d / "fat.nii.gz")
    save_volume(vol.with_data((vol.data > 3000).astype(np.float32)), d / "gradcam_r.nii.gz")
    args = build_parser().parse_args(["gui", str(d / "water.nii.gz"), str(d / "fat.nii.gz"),
                                      str(d / "gradcam_r.nii.gz")])
    state, ws = state_from_args(args)
    assert ws is None and [lay.name for lay in state.layers] == ["water", "gradcam_r"]
    assert state.base_layer.volume.channels == ("water", "fat")
    np.testing.assert_allclose(state.base_layer.volume.channel("fat"), vol.data[0] * 0.5)
    assert scan_id(state.base_layer) == "sub-01"
    # files that are not one scan's contrasts stay as they are
    other = [(tmp_path / "a.nii.gz", vol), (tmp_path / "fat.nii.gz", vol)]
    assert merge_contrasts(other) == other
