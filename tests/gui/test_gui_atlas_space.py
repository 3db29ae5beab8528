"""Subject space / atlas space toggle of the viewer (pytest-qt, offscreen) on a tiny synthetic
workspace: one subject registered to its group atlas with a known translation, one without a
registration. In atlas space the subject's image, labels and Grad-CAM are warped with the
stored transform and the population map is shown as it is; the cursor follows the transform
both ways; without a registration the toggle is disabled and says which command to run."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("PySide6")
pytest.importorskip("pytestqt")

from PySide6 import QtCore  # noqa: E402

from bodyage_core.viewer import atlas_space  # noqa: E402
from bodyage_core.volume import Volume  # noqa: E402
from bodyage_gui.qt_main_window import QtMainWindow  # noqa: E402

SHAPE = (20, 24, 28)          # subject grid z, y, x (2 mm isotropic)
REF_SHAPE = (16, 20, 22)      # atlas grid
SUB_ORIGIN = np.array([-28.0, -24.0, -20.0])
REF_ORIGIN = np.array([-22.0, -20.0, -16.0])
T_RAS = np.array([4.0, -2.0, 6.0])    # atlas point p lies at subject point p + T_RAS
# subject voxel (x, y, z) of atlas voxel u: u + (REF_ORIGIN + T_RAS - SUB_ORIGIN) / 2
SHIFT_XYZ = ((REF_ORIGIN + T_RAS - SUB_ORIGIN) / 2.0).astype(int)   # (5, 1, 5)


def _affine(origin):
    a = np.diag([2.0, 2.0, 2.0, 1.0])
    a[:3, 3] = origin
    return a


def water_value(z, y, x):
    return 10000.0 * z + 100.0 * y + x


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    import SimpleITK as sitk

    from bodyage_core.cohort import Workspace
    from bodyage_core.io import save_volume
    from bodyage_core.registration.transform import SubjectTransform

    root = tmp_path_factory.mktemp("atlas_ws") / "ws"
    ws = Workspace.create(root)
    z, y, x = np.meshgrid(*[np.arange(n) for n in SHAPE], indexing="ij")
    water = water_value(z, y, x).astype(np.float32)
    labels = np.zeros(SHAPE, np.int16)
    labels[5:15, 6:18, 8:20] = 3
    cam = np.zeros(SHAPE, np.float32)
    cam[8:12, 10:14, 12:16] = 2.0
    aff = _affine(SUB_ORIGIN)
    recs = []
    for sid in ("S0", "S1", "S2"):
        d = ws.subject_dir(sid, create=True)
        save_volume(Volume(water[None], aff, ("water",)), d / "water.nii.gz")
        save_volume(Volume(water[None] * 0.5, aff, ("fat",)), d / "fat.nii.gz")
        save_volume(Volume(labels[None], aff, ("labels",)), d / "labels.nii.gz")
        save_volume(Volume(cam[None], aff, ("gradcam",)), d / "gradcam_r1.nii.gz")
        recs.append({"subject_id": sid, "sex": "F", "bmi": 22.0, "age": 60.0,
                     "images": {k: f"subjects/{sid}/{k}.nii.gz"
                                for k in ("water", "fat", "labels", "gradcam_r1")}})
    ws.db.add_subjects(recs)
    ws.db.add_run("r1", status="complete")
    ws.db.add_predictions("r1", [{"subject_id": "S0", "mean": 62.0, "sigma": 2.0}])
    # the atlas of group F_healthy: template, population map; S0's registration (translation)
    adir = ws.atlas_dir("F_healthy")
    adir.mkdir(parents=True, exist_ok=True)
    ref_aff = _affine(REF_ORIGIN)
    rz, ry, rx = np.meshgrid(*[np.arange(n) for n in REF_SHAPE], indexing="ij")
    save_volume(Volume((rz + ry + rx)[None].astype(np.float32), ref_aff, ("template",)),
                adir / "template.nii.gz")
    pop = np.exp(-((rz - 8) ** 2 + (ry - 10) ** 2 + (rx - 11) ** 2) / 20.0).astype(np.float32)
    save_volume(Volume(pop[None], ref_aff, ("map",)), adir / "population_r1_all_mean.nii.gz")
    tx = sitk.AffineTransform(3)
    tx.SetTranslation(tuple(float(v) for v in T_RAS * np.array([-1.0, -1.0, 1.0])))  # LPS
    folder = ws.subject_dir("S0") / "atlas_F_healthy"
    SubjectTransform(tx, REF_SHAPE, ref_aff, info={"group": "F_healthy"}).save(folder)
    ws.db.set_registration("S0", "F_healthy", "ok", forward=ws.relative(folder))
    ws.db.set_image("S0", "to_atlas_F_healthy", ws.relative(folder))
    # S2: a registration folder whose files are damaged
    bad = ws.subject_dir("S2") / "atlas_F_healthy"
    bad.mkdir(parents=True)
    (bad / "transform.json").write_text("{ truncated")
    (bad / "affine.tfm").write_text("not a transform")
    ws.db.set_registration("S2", "F_healthy", "ok", forward=ws.relative(bad))
    ws.db.set_image("S2", "to_atlas_F_healthy", ws.relative(bad))
    ws.close()
    return root, pop


@pytest.fixture
def window(qtbot, tmp_path, workspace):
    settings = QtCore.QSettings(str(tmp_path / "s.ini"), QtCore.QSettings.Format.IniFormat)
    win = QtMainWindow(show_dialogs=False, enable_3d=False, settings=settings,
                       restore_settings=False)
    qtbot.addWidget(win)
    win.resize(1100, 800)
    win.show()
    assert win.open_workspace(workspace[0], open_first=False), win.last_error
    yield win
    win.close()


def _layer(state, prefix):
    return next(lay for lay in state.layers if lay.name.startswith(prefix))


def test_atlas_space_round_trip(qtbot, window, workspace):
    win = window
    _, pop = workspace
    assert win.open_subject("S0", wait=True), win.last_error
    assert win.atlas_link is not None and win.atlas_link.group == "F_healthy"
    assert win.atlas_action.isEnabled() and win.layer_panel.space_check.isEnabled()
    assert "F_healthy" in win.layer_panel.space_check.text()
    subject_base = win.state.base_layer.volume
    v0 = (9, 11, 13)                                  # a subject voxel (z, y, x) inside the atlas
    win.state.set_cursor_voxel(v0)
    q = win.state.cursor.copy()
    cam = _layer(win.state, "gradcam_r1")
    cam.set(threshold=0.5, opacity=0.6)

    with qtbot.waitSignal(win.space_changed, timeout=60_000) as sig:
        win.atlas_action.trigger()                    # View > Atlas space (F6)
    assert sig.args == ["atlas"] and win.display_space == "atlas"
    st = win.state
    base = st.base_layer.volume
    assert base.shape == REF_SHAPE and np.allclose(base.affine, _affine(REF_ORIGIN))
    assert base.channels == ("water", "fat")
    # the image warped with the transform: atlas voxel u shows subject voxel u + shift
    u = np.array([6, 8, 7])                           # z, y, x
    src = u + SHIFT_XYZ[::-1]
    assert base.channel("water")[tuple(u)] == pytest.approx(water_value(*src), abs=1e-2)
    assert base.channel("fat")[tuple(u)] == pytest.approx(0.5 * water_value(*src), abs=1e-2)
    # the cursor is the same anatomy: q - T in atlas space, and the readout agrees
    np.testing.assert_allclose(st.cursor, q - T_RAS, atol=1e-6)
    r = st.cursor_readout()
    assert r["values"][0]["value"] == pytest.approx(water_value(*v0), abs=1e-2)
    # labels (nearest, integers kept) and Grad-CAM warped; display settings carried over
    labels = _layer(st, "labels")
    assert labels.volume.data.dtype.kind in "iu" and labels.volume.shape == REF_SHAPE
    cam_a = _layer(st, "gradcam_r1")
    assert cam_a.volume.shape == REF_SHAPE and cam_a.threshold == pytest.approx(0.5)
    assert cam_a.opacity == pytest.approx(0.6)
    # the population map as it is (no resampling), shown and active; the template hidden
    popl = _layer(st, "population_r1_all")
    assert popl.visible and st.active_layer is popl and not popl.resampled
    np.testing.assert_allclose(popl.volume.data[0], pop, atol=1e-6)
    assert not _layer(st, atlas_space.TEMPLATE_LAYER).visible
    assert "atlas space (F_healthy)" in win.windowTitle()
    assert win.atlas_action.isChecked() and win.layer_panel.space_check.isChecked()
    # the views draw it
    rgba = win.slice_views["axial"].composite_rgba()
    assert rgba.shape[:2] == st.geometry("axial").shape
    # a change made in atlas space follows the layer back
    cam_a.set(threshold=0.9)
    st.set_cursor(st.cursor + np.array([2.0, 0.0, 0.0]))
    q2 = st.cursor.copy()

    with qtbot.waitSignal(win.space_changed, timeout=10_000) as sig:
        win.layer_panel.space_check.click()           # the layer panel's toggle
    assert sig.args == ["subject"] and win.display_space == "subject"
    assert win.state.base_layer.volume is subject_base
    np.testing.assert_allclose(win.state.cursor, q2 + T_RAS, atol=1e-6)
    assert _layer(win.state, "gradcam_r1").threshold == pytest.approx(0.9)
    assert not any(lay.name.startswith("population") for lay in win.state.layers)
    # back again: the warp is cached (immediate)
    assert win.set_display_space("atlas")
    assert win.display_space == "atlas"
    assert _layer(win.state, "gradcam_r1").threshold == pytest.approx(0.9)
    # another subject without a registration: back in subject space, toggle disabled
    assert win.open_subject("S1", wait=True), win.last_error
    assert win.display_space == "subject" and win.atlas_link is None
    assert not win.atlas_action.isEnabled() and not win.layer_panel.space_check.isEnabled()


def test_no_registration_disables_toggle_with_hint(qtbot, window):
    win = window
    assert win.open_subject("S1", wait=True), win.last_error
    for w in (win.atlas_action, win.layer_panel.space_check):
        assert not w.isEnabled()
        assert "bodyage atlas build" in w.toolTip() and "bodyage register" in w.toolTip()
    before = win.state.to_dict()
    assert not win.set_display_space("atlas")
    assert "bodyage register" in win.last_error and "S1" in win.last_error
    assert win.state.to_dict() == before and win.display_space == "subject"


def test_plain_files_have_no_atlas_space(qtbot, tmp_path, workspace):
    settings = QtCore.QSettings(str(tmp_path / "s.ini"), QtCore.QSettings.Format.IniFormat)
    win = QtMainWindow(show_dialogs=False, enable_3d=False, settings=settings,
                       restore_settings=False)
    qtbot.addWidget(win)
    root, _ = workspace
    assert win.open_files([root / "subjects" / "S0" / "water.nii.gz"]), win.last_error
    assert not win.atlas_action.isEnabled()
    assert "workspace" in win.atlas_action.toolTip()
    win.close()


def test_session_saved_in_atlas_space_reopens_there(qtbot, window, tmp_path):
    import json

    win = window
    assert win.open_subject("S0", wait=True), win.last_error
    assert win.set_display_space("atlas", wait=True), win.last_error
    _layer(win.state, "gradcam_r1").set(threshold=0.7)
    cursor = win.state.cursor.copy()
    js = tmp_path / "atlas_session.json"
    assert win.save_session(js), win.last_error
    d = json.loads(js.read_text())
    assert d["space"] == "atlas" and d["atlas_group"] == "F_healthy" and d["subject"] == "S0"
    # the subject's own files (the warped layers exist only in memory), settings kept
    names = {lay["name"]: lay for lay in d["layers"]}
    assert set(names) == {"S0", "labels", "gradcam_r1"}
    assert names["gradcam_r1"]["threshold"] == pytest.approx(0.7)
    np.testing.assert_allclose(d["cursor_mm"], cursor + T_RAS, atol=1e-6)
    assert win.set_display_space("subject")
    assert win.restore_session(js), win.last_error
    assert win.display_space == "atlas" and win.state.base_layer.volume.shape == REF_SHAPE
    np.testing.assert_allclose(win.state.cursor, cursor, atol=1e-6)
    assert _layer(win.state, "gradcam_r1").threshold == pytest.approx(0.7)


def test_population_map_warped_back_onto_the_subject(qtbot, window, workspace):
    win = window
    _, pop = workspace
    assert win.open_subject("S0", wait=True), win.last_error
    assert win.population_action.isEnabled()
    n = len(win.state.layers)
    assert win.add_population_to_subject(wait=True), win.last_error
    assert len(win.state.layers) == n + 1
    lay = win.state.layers[-1]
    assert lay.name.startswith("population_r1_all (F_healthy") and lay.kind == "overlay"
    assert lay.volume.shape == SHAPE and not lay.resampled
    # subject voxel v shows the atlas voxel v - shift (the inverse of the registration)
    for u in [(8, 10, 11), (5, 7, 9), (10, 12, 6)]:               # atlas voxels z, y, x
        v = tuple(np.array(u) + SHIFT_XYZ[::-1])
        assert lay.volume.data[0][v] == pytest.approx(pop[u], abs=1e-5)
    # in atlas space the action is off (the map is shown as it is there, once)
    assert win.set_display_space("atlas", wait=True)
    assert not win.population_action.isEnabled()
    assert sum(x.name.startswith("population") for x in win.state.layers) == 1
    # background path
    assert win.set_display_space("subject")
    with qtbot.waitSignal(win.space_switch.population_load.finished, timeout=30_000):
        assert win.population_action.isEnabled()
        win.population_action.trigger()
    assert win.state.layers[-1].name.startswith("population_r1_all (F_healthy")


def test_damaged_registration_is_a_clear_error_and_keeps_the_view(qtbot, window):
    win = window
    assert win.open_subject("S2", wait=True), win.last_error
    assert win.atlas_action.isEnabled()             # the files exist: found, not yet read
    before = win.state.to_dict()
    assert not win.set_display_space("atlas", wait=True)
    assert "unreadable registration transform" in win.last_error
    assert "atlas_F_healthy" in win.last_error and "re-run the registration" in win.last_error
    assert win.display_space == "subject" and win.state.to_dict() == before
    assert not win.atlas_action.isChecked() and not win.layer_panel.space_check.isChecked()
