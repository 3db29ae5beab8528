"""ViewerState geometry, readout, events, overlays and sessions (Qt-free)."""

from __future__ import annotations

import json
import subprocess
import sys

import nibabel as nib
import numpy as np
import pytest

from bodyage_core import display
from bodyage_core.errors import BodyageError, LoadError
from bodyage_core.viewer import PLANES, ViewerState, plane_geometry
from bodyage_core.volume import Volume

SHAPE = (5, 6, 7)  # z, y, x
SPACING_XYZ = (1.0, 2.0, 3.0)
ORIGIN = (-10.0, 20.0, 30.0)


def asym_volume() -> Volume:
    """Distinct value per voxel: 100*z + 10*y + x; anisotropic RAS grid."""
    z, y, x = np.meshgrid(*[np.arange(n) for n in SHAPE], indexing="ij")
    data = (100 * z + 10 * y + x).astype(np.float32)
    aff = np.diag([*SPACING_XYZ, 1.0])
    aff[:3, 3] = ORIGIN
    return Volume(data, aff, ("t1",))


def flipped_storage(vol: Volume) -> Volume:
    """The same image stored L-P-S (x and y index axes reversed): same world, other array."""
    data = vol.data[:, :, ::-1, ::-1].copy()
    aff = vol.affine.copy()
    nz, ny, nx = vol.shape
    aff[:3, 3] = vol.voxel_to_world((0, ny - 1, nx - 1))
    aff[0, 0] *= -1
    aff[1, 1] *= -1
    return Volume(data, aff, vol.channels)


def val(z, y, x):
    return 100 * z + 10 * y + x


@pytest.fixture
def state():
    s = ViewerState()
    s.add_layer(asym_volume(), "t1")
    return s


def test_cursor_starts_in_centre_and_readout_at_known_voxel(state):
    assert state.cursor_voxel() == (2, 2, 3)
    state.set_cursor_voxel((3, 4, 5))
    r = state.cursor_readout()
    assert r["voxel_zyx"] == [3, 4, 5]
    assert r["voxel_xyz"] == [5, 4, 3]
    np.testing.assert_allclose(r["world_mm"], [-10 + 5 * 1, 20 + 4 * 2, 30 + 3 * 3])
    assert r["values"][0]["value"] == val(3, 4, 5)
    assert "world (RAS mm): -5.0, 28.0, 39.0" in state.readout_text()


@pytest.mark.parametrize("convention", ["radiological", "neurological"])
def test_readout_same_in_both_conventions_and_storage(convention):
    for vol in (asym_volume(), flipped_storage(asym_volume())):
        s = ViewerState(convention=convention)
        s.add_layer(vol, "t1")
        world = asym_volume().voxel_to_world((1, 2, 6))
        s.set_cursor(world)
        assert s.cursor_readout()["values"][0]["value"] == val(1, 2, 6)


@pytest.mark.parametrize("convention", ["radiological", "neurological"])
@pytest.mark.parametrize("storage", ["ras", "lps"])
def test_slices_orientation_letters_and_aspect(convention, storage):
    vol = asym_volume() if storage == "ras" else flipped_storage(asym_volume())
    s = ViewerState(convention=convention)
    s.add_layer(vol, "t1")
    s.set_cursor(asym_volume().voxel_to_world((2, 3, 4)))
    radio = convention == "radiological"
    nz, ny, nx = SHAPE

    ax = s.slice_for_view(s.base_layer, "axial")
    assert ax.array.shape == (ny, nx)
    # top = anterior (max y); left = patient right (max x) in radiological
    assert ax.array[0, 0] == val(2, ny - 1, nx - 1 if radio else 0)
    assert ax.array[-1, -1] == val(2, 0, 0 if radio else nx - 1)
    assert ax.letters == {"left": "R" if radio else "L", "right": "L" if radio else "R",
                          "top": "A", "bottom": "P"}
    assert ax.pixel_mm == (2.0, 1.0) and ax.aspect == 2.0

    co = s.slice_for_view(s.base_layer, "coronal")
    assert co.array.shape == (nz, nx)
    assert co.array[0, 0] == val(nz - 1, 3, nx - 1 if radio else 0)
    assert co.letters == {"left": "R" if radio else "L", "right": "L" if radio else "R",
                          "top": "S", "bottom": "I"}
    assert co.aspect == 3.0

    sa = s.slice_for_view(s.base_layer, "sagittal")
    assert sa.array.shape == (nz, ny)
    assert sa.array[0, 0] == val(nz - 1, ny - 1, 4)  # anterior-superior at top-left
    assert sa.array[-1, -1] == val(0, 0, 4)
    assert sa.letters == {"left": "A", "right": "P", "top": "S", "bottom": "I"}
    assert sa.aspect == pytest.approx(1.5)


@pytest.mark.parametrize("convention", ["radiological", "neurological"])
@pytest.mark.parametrize("plane", PLANES)
def test_display_world_round_trip(convention, plane):
    s = ViewerState(convention=convention)
    s.add_layer(flipped_storage(asym_volume()), "t1")
    s.set_cursor(asym_volume().voxel_to_world((2, 3, 4)))
    sl = s.slice_for_view(s.base_layer, plane)
    geom = sl.geometry
    for r, c in [(0, 0), (1, 2), (geom.shape[0] - 1, geom.shape[1] - 1)]:
        u, v = geom.pixel_to_display(r, c)
        world = s.display_to_world(plane, u, v)
        s2 = ViewerState(convention=convention)
        s2.add_layer(s.base_layer.volume, "t1")
        s2.set_cursor(world)
        assert s2.cursor_readout()["values"][0]["value"] == sl.array[r, c]
        np.testing.assert_allclose(s.world_to_display(plane, world), (u, v), atol=1e-6)


def test_step_slice_and_clamp(state):
    state.set_cursor_voxel((2, 3, 4))
    state.step_slice("axial", 1)
    assert state.cursor_voxel() == (3, 3, 4)
    state.step_slice("axial", 50)
    assert state.cursor_voxel() == (4, 3, 4)
    state.step_slice("coronal", -2)
    assert state.cursor_voxel() == (4, 1, 4)
    state.set_cursor((1e4, -1e4, 0))
    assert state.cursor_voxel() == (0, 0, 6)


def test_events(state):
    got = []
    state.events.cursor_changed.connect(lambda c: got.append(("cursor", tuple(c))))
    state.events.layer_changed.connect(lambda lay, keys: got.append(("layer", sorted(keys))))
    state.events.convention_changed.connect(lambda c: got.append(("conv", c)))
    state.set_cursor_voxel((1, 1, 1))
    state.set_cursor_voxel((1, 1, 1))  # no change, no event
    state.base_layer.threshold = 5
    state.base_layer.set(vmin=1, vmax=9)
    state.toggle_convention()
    assert [g[0] for g in got] == ["cursor", "layer", "layer", "conv"]
    assert got[2][1] == ["vmax", "vmin"]
    assert state.convention == "neurological"


def test_overlay_same_grid_and_threshold_settings(state):
    blob = asym_volume().with_data(np.where(asym_volume().data > 300, 1.0, 0.0))
    lay = state.add_layer(blob, "blob", threshold=0.5)
    assert lay.kind == "overlay" and not lay.resampled and lay.colormap == "heat"
    assert state.active_layer is lay
    sl = state.slice_for_view(lay, "coronal")
    rgba = display.to_rgba(sl.array, lay.colormap, lay.vmin, lay.vmax, lay.threshold)
    assert (rgba[..., 3][sl.array < 0.5] == 0).all()
    assert (rgba[..., 3][sl.array >= 0.5] > 0).all()


def test_overlay_other_grid_is_resampled(state):
    base = asym_volume()
    # a coarser map (2x voxels along x) shifted by 2 mm along x, covering part of the base
    aff = base.affine.copy()
    aff[0, 0] = 2.0
    aff[0, 3] += 2.0
    data = np.arange(5 * 6 * 3, dtype=np.float32).reshape(5, 6, 3)
    lay = state.add_layer(Volume(data, aff, ("map",)), "coarse")
    assert lay.resampled
    state.set_cursor_voxel((2, 3, 4))
    sl = state.slice_for_view(lay, "axial")
    assert sl.array.shape == (6, 7)
    # base x index 0,1 lie left of the map (NaN); base x=4 -> map x=(4-2)/2 = 1
    row = sl.array[sl.geometry.voxel_to_pixel((2, 3, 4))[0].__round__()]
    radio_cols = {x: 6 - x for x in range(7)}
    assert np.isnan(row[radio_cols[0]])
    assert row[radio_cols[4]] == data[2, 3, 1]
    vals = {v["layer"]: v["value"] for v in state.cursor_readout()["values"]}
    assert vals["coarse"] == data[2, 3, 1]


def test_non_overlapping_overlay_refused_state_unchanged(state):
    aff = asym_volume().affine.copy()
    aff[:3, 3] += 1000
    before = state.to_dict()
    with pytest.raises(LoadError, match="does not overlap"):
        state.add_layer(Volume(np.ones((3, 3, 3), np.float32), aff), "far", path="far.nii.gz")
    assert state.to_dict() == before


def test_labels_readout_with_names(state):
    lab = np.zeros(SHAPE, np.int16)
    lab[3:, :, :] = 5
    lay = state.add_layer(asym_volume().with_data(lab[None], channels=("labels",)), "organs",
                          label_names={5: "liver"})
    assert lay.kind == "labels" and lay.colormap == "labels"
    state.set_cursor_voxel((4, 0, 0))
    r = state.cursor_readout()
    assert r["organ"] == "liver"
    assert r["values"][1] == {"layer": "organs", "value": 5, "voxel_zyx": [4, 0, 0],
                              "label": "liver", "channel": "labels"}
    state.set_cursor_voxel((0, 0, 0))
    assert state.cursor_readout()["organ"] is None


def test_signed_overlay_defaults_to_diverging(state):
    signed = asym_volume().with_data((asym_volume().data - 250.0) / 100.0)
    lay = state.add_layer(signed, "signed_gradcam")
    assert lay.colormap == "bwr"
    assert lay.vmin == -lay.vmax


def test_channels_switch():
    vol = asym_volume()
    two = Volume(np.concatenate([vol.data, vol.data * 2]), vol.affine, ("water", "fat"))
    s = ViewerState()
    lay = s.add_layer(two, "subject")
    assert s.channels() == ("water", "fat")
    s.set_cursor_voxel((1, 1, 1))
    s.set_channel("fat")
    assert lay.channel == "fat"
    assert s.cursor_readout()["values"][0]["value"] == 2 * val(1, 1, 1)
    with pytest.raises(KeyError):
        lay.channel = "t2"


def _save(vol: Volume, path):
    nib.save(nib.Nifti1Image(np.ascontiguousarray(vol.data[0].transpose(2, 1, 0)), vol.affine),
             str(path))


def _load(path) -> Volume:
    img = nib.load(path)
    return Volume(np.asarray(img.dataobj, dtype=np.float32).transpose(2, 1, 0), img.affine,
                  provenance={"path": path})


def test_session_round_trip(tmp_path):
    _save(asym_volume(), tmp_path / "t1.nii.gz")
    _save(asym_volume().with_data(asym_volume().data / 100.0), tmp_path / "map.nii.gz")
    s = ViewerState()
    s.add_layer(_load(tmp_path / "t1.nii.gz"), path=tmp_path / "t1.nii.gz")
    m = s.add_layer(_load(tmp_path / "map.nii.gz"), path=tmp_path / "map.nii.gz",
                    threshold=1.5, colormap="hot", opacity=0.4)
    m.display_range = (1.0, 4.0)
    s.set_cursor_voxel((3, 1, 2))
    s.set_convention("neurological")
    s.set_layout("row")
    s.set_zoom("axial", 2.5)
    s.set_pan("coronal", (3.0, -4.0))
    s.set_active_layer(s.base_layer)
    d = s.to_dict(relative_to=tmp_path)
    assert d["layers"][0]["path"] == "t1.nii.gz"
    text = json.dumps(d)
    assert "data" not in json.loads(text)["layers"][0]
    s2 = ViewerState.from_dict(json.loads(text), loader=_load, relative_to=tmp_path)
    d2 = s2.to_dict(relative_to=tmp_path)
    assert d2 == d
    assert s2.cursor_voxel() == (3, 1, 2)
    assert s2.active_layer is s2.base_layer


def test_restore_failure_leaves_state(tmp_path, state):
    before = state.to_dict()
    bad = {"bodyage_session": 1, "layers": [{"name": "x", "path": str(tmp_path / "nope.nii")}]}

    def loader(p):
        raise LoadError("cannot read", path=p)

    with pytest.raises(BodyageError):
        state.restore(bad, loader)
    assert state.to_dict() == before
    with pytest.raises(BodyageError, match="not a bodyage session"):
        state.restore({"foo": 1}, loader)


def test_zoom_anchor_and_reset(state):
    state.set_zoom("axial", 2.0, anchor=(0.0, 0.0))
    vs = state.views["axial"]
    assert vs.zoom == 2.0 and vs.pan != (0.0, 0.0)
    state.reset_view()
    assert state.views["axial"].zoom == 1.0 and state.views["axial"].pan == (0.0, 0.0)


def test_plane_geometry_rejects_unknown():
    with pytest.raises(ValueError):
        plane_geometry(asym_volume(), "oblique")


def test_core_is_qt_free():
    code = ("import sys, bodyage_core.viewer, bodyage_core.display;"
            "bad=[m for m in sys.modules if m.split('.')[0] in "
            "('PySide6','PyQt5','PyQt6','pyqtgraph','vtk','vtkmodules','bodyage_gui')];"
            "print(bad); sys.exit(1 if bad else 0)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


# -- display -----------------------------------------------------------------------------------
def test_to_rgba_threshold_range_and_nan():
    a = np.array([[-2.0, 0.0, 0.5], [1.0, 3.0, np.nan]])
    rgba = display.to_rgba(a, "hot", 0.0, 2.0, threshold=0.5, opacity=0.5)
    assert rgba.shape == (2, 3, 4) and rgba.dtype == np.uint8
    np.testing.assert_array_equal(rgba[..., 3], [[0, 0, 128], [128, 128, 0]])
    # clipped to the ends of the map
    np.testing.assert_array_equal(rgba[1, 1, :3], display.lut("hot")[-1, :3])
    signed = display.to_rgba(a, "bwr", -2, 2, threshold=0.75)
    np.testing.assert_array_equal(signed[..., 3], [[255, 0, 0], [255, 255, 0]])
    assert signed[0, 0, 2] > signed[0, 0, 0]  # negative is blue
    assert signed[1, 1, 0] > signed[1, 1, 2]  # positive is red
    no_thr = display.to_rgba(a, "grey", 0, 1)
    assert no_thr[0, 1, 3] == 255 and no_thr[1, 2, 3] == 0


def test_importance_display_spreads_a_coarse_map_over_the_colour_map():
    # a Grad-CAM of a coarse feature map: 8^3 blocks of few values, the top third of the
    # non-zero blocks near the maximum, so the threshold lands at 0.9 of the maximum
    cells = np.array([0.0] * 20 + [1.0] * 30 + [9.0] * 6 + [9.5] * 4 + [10.0] * 4)
    coarse = np.random.default_rng(3).permutation(cells).reshape(4, 4, 4)
    m = np.kron(coarse, np.ones((8, 8, 8))).astype(np.float32)
    disp = display.importance_display(m)
    vmin, vmax = disp["display_range"]
    thr = disp["threshold"]
    assert thr == pytest.approx(9.0) and vmin == thr and vmax == pytest.approx(10.0)
    shown = m[m >= thr]
    # colour levels: the colour map cut in eighths (from 0 to the maximum, all would be in one)
    levels = np.clip(((shown - vmin) / (vmax - vmin) * 8).astype(int), 0, 7)
    assert set(levels.tolist()) == {0, 4, 7}
    rgba = display.to_rgba(m, disp["colormap"], vmin, vmax, thr, disp["opacity"])
    colours = np.unique(rgba[m >= thr][:, :3], axis=0)
    assert len(colours) == 3
    lut = display.lut(disp["colormap"])
    assert {tuple(c) for c in colours} >= {tuple(lut[0, :3]), tuple(lut[-1, :3])}
    assert (rgba[m < thr][:, 3] == 0).all()
    # a signed map keeps its range symmetric about 0
    signed = display.importance_display(m - 5.0, signed=True)
    assert signed["display_range"][0] == -signed["display_range"][1]


def test_label_lut_and_names():
    ids = np.array([0, 1, 2, 300])
    rgba = display.to_rgba(ids, "labels")
    assert rgba[0, 3] == 0 and (rgba[1:, 3] == 255).all()
    assert not np.array_equal(rgba[1], rgba[2])
    assert display.canonical_name("gray") == "grey"
    with pytest.raises(KeyError):
        display.canonical_name("nope")
    assert display.colorbar_rgba("hot", 10, 3).shape == (10, 3, 4)


def test_fast_resampling_matches_world_sampling():
    from bodyage_core.viewer import sample_nearest

    s = ViewerState()
    s.add_layer(asym_volume(), "t1")
    other = flipped_storage(asym_volume())
    other.affine[:3, :3] *= 1.5  # coarser, flipped, shifted grid
    other.affine[:3, 3] += (1.3, -2.2, 0.7)
    lay = s.add_layer(other, "map")
    assert lay.resampled
    for plane in PLANES:
        for conv in ("radiological", "neurological"):
            s.set_convention(conv)
            geom = s.geometry(plane)
            k = geom.n_slices // 2
            fast = s._resample_slice(lay, geom, k)
            rows, cols = geom.shape
            zyx = np.array([[geom.pixel_to_voxel(r, c, k) for c in range(cols)]
                            for r in range(rows)])
            world = s.base_layer.volume.voxel_to_world(zyx)
            slow = sample_nearest(other, other.channels[0], world)
            np.testing.assert_array_equal(fast, slow)
            assert np.isfinite(fast).any()
