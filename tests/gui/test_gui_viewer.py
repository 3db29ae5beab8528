"""The viewer's real widgets on the offscreen platform (pytest-qt): linked views, readout,
overlay transparency, mouse and keys, sessions, error reporting, subject browser, CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

pytest.importorskip("PySide6")
pytest.importorskip("pytestqt")

from PySide6 import QtCore, QtGui, QtWidgets  # noqa: E402

from bodyage_core.viewer import ViewerState  # noqa: E402
from bodyage_core.volume import Volume  # noqa: E402
from bodyage_gui.qt_main_window import QtMainWindow  # noqa: E402
from bodyage_gui.views.qt_slice_view import QtSliceView  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
SHAPE = (20, 24, 28)  # z, y, x
SPACING = (1.0, 1.5, 2.0)  # x, y, z mm


def asym() -> Volume:
    z, y, x = np.meshgrid(*[np.arange(n) for n in SHAPE], indexing="ij")
    aff = np.diag([*SPACING, 1.0])
    aff[:3, 3] = (-14.0, -18.0, -20.0)
    return Volume((10000 * z + 100 * y + x).astype(np.float32), aff, ("t1",))


def val(z, y, x):
    return 10000 * z + 100 * y + x


def save_nifti(vol: Volume, path: Path, channel: int = 0) -> Path:
    arr = np.ascontiguousarray(vol.data[channel].transpose(2, 1, 0))
    nib.save(nib.Nifti1Image(arr, vol.affine), str(path))
    return path


@pytest.fixture
def settings(tmp_path):
    return QtCore.QSettings(str(tmp_path / "settings.ini"), QtCore.QSettings.Format.IniFormat)


@pytest.fixture
def window(qtbot, settings):
    state = ViewerState()
    state.add_layer(asym(), "t1")
    win = QtMainWindow(state, show_dialogs=True, settings=settings)
    qtbot.addWidget(win)
    win.resize(1200, 800)
    win.show()
    qtbot.waitExposed(win)
    win.scheduler.flush()
    yield win
    if win.error_box is not None:
        win.error_box.close()


def click(qtbot, view: QtSliceView, ras, button=QtCore.Qt.MouseButton.LeftButton):
    pos = view.scene_pos_of_world(ras)
    qtbot.mouseClick(view.graphics_view.viewport(), button, QtCore.Qt.KeyboardModifier.NoModifier,
                     pos)


def wheel(view: QtSliceView, delta: int = 120, mods=QtCore.Qt.KeyboardModifier.NoModifier):
    vp = view.graphics_view.viewport()
    pos = QtCore.QPointF(vp.width() / 2, vp.height() / 2)
    ev = QtGui.QWheelEvent(pos, vp.mapToGlobal(pos), QtCore.QPoint(0, 0), QtCore.QPoint(0, delta),
                           QtCore.Qt.MouseButton.NoButton, mods, QtCore.Qt.ScrollPhase.NoScrollPhase,
                           False)
    QtWidgets.QApplication.sendEvent(vp, ev)


def test_click_in_one_view_moves_cursor_and_other_crosshairs(qtbot, window):
    state = window.state
    views = window.slice_views
    target = asym().voxel_to_world((state.cursor_voxel()[0], 17, 6))
    click(qtbot, views["axial"], target)
    assert state.cursor_voxel()[1:] == (17, 6)
    window.scheduler.flush()
    for plane in ("coronal", "sagittal"):
        u, v = state.world_to_display(plane, state.cursor)
        assert views[plane].v_line.value() == pytest.approx(u)
        assert views[plane].h_line.value() == pytest.approx(v)
    # the coronal view now shows slice y = 17, the sagittal view slice x = 6
    assert state.slice_index("coronal") == 17 and state.slice_index("sagittal") == 6
    assert "coronal 17 [0..23]" in views["coronal"].info_label.text()
    # click in the sagittal view moves z and y, keeps x
    target2 = asym().voxel_to_world((3, 9, 6))
    click(qtbot, views["sagittal"], target2)
    assert state.cursor_voxel() == (3, 9, 6)
    assert window.readout_panel.text().count(str(val(3, 9, 6))) == 1


@pytest.mark.parametrize("convention", ["radiological", "neurological"])
def test_readout_and_letters_both_conventions(qtbot, window, convention):
    state = window.state
    state.set_convention(convention)
    window.scheduler.flush()
    radio = convention == "radiological"
    assert window.slice_views["axial"].letters() == {
        "left": "R" if radio else "L", "right": "L" if radio else "R", "top": "A",
        "bottom": "P"}
    assert window.slice_views["sagittal"].letters()["left"] == "A"
    assert window.slice_views["coronal"].letters()["top"] == "S"
    click(qtbot, window.slice_views["coronal"], asym().voxel_to_world((12, 0, 21)))
    z, y, x = state.cursor_voxel()
    assert (z, x) == (12, 21)
    text = window.readout_panel.text()
    assert f"x,y,z: 21, {y}, 12" in text
    assert f"t1: {val(12, y, 21):.6g}" in text
    # the displayed pixel at the crosshair has the value under the cursor
    view = window.slice_views["coronal"]
    sl = state.slice_for_view(state.base_layer, "coronal")
    r, c = sl.geometry.voxel_to_pixel(state.cursor_voxel())
    assert sl.array[int(round(r)), int(round(c))] == val(12, y, 21)
    # left screen column is patient right (x max) only in radiological convention
    assert sl.array[0, 0] % 100 == (27 if radio else 0)
    rgba = view.rgba(state.base_layer)
    assert rgba.shape == (20, 28, 4)


def test_overlay_threshold_makes_pixels_transparent(qtbot, window):
    state = window.state
    blob = asym().with_data((asym().data % 100) / 27.0, channels=("gradcam",))  # x / 27
    lay = state.add_layer(blob, "gradcam", threshold=0.5, colormap="hot",
                          display_range=(0.0, 1.0))
    view = window.slice_views["axial"]
    rgba = view.rgba(lay)
    raw = state.slice_for_view(lay, "axial").array
    assert (rgba[..., 3][raw < 0.5] == 0).all()
    assert (rgba[..., 3][raw >= 0.5] == round(255 * lay.opacity)).all()
    # in the drawn image, below-threshold pixels show the base image unchanged
    drawn = view.composite_rgba()
    base = view.rgba(state.base_layer)
    below = raw < 0.5
    assert np.array_equal(drawn[below][:, :3], base[below][:, :3])
    assert not np.array_equal(drawn[~below][:, :3], base[~below][:, :3])
    # through the layer panel: threshold off -> everything opaque
    panel = window.layer_panel
    assert state.active_layer is lay
    panel.threshold_check.setChecked(False)
    assert lay.threshold is None
    assert (view.rgba(lay)[..., 3] > 0).all()
    panel.threshold_check.setChecked(True)
    panel.threshold_spin.setValue(0.8)
    assert lay.threshold == pytest.approx(0.8)
    assert (view.rgba(lay)[..., 3][raw < 0.8] == 0).all()
    # colour bar describes the heat map
    assert window.colorbar.layer() is lay
    # hiding the layer hides its image item
    panel.layer_list.item(0).setCheckState(QtCore.Qt.CheckState.Unchecked)
    window.scheduler.flush()
    assert not lay.visible and view.rgba(lay) is None
    assert np.array_equal(view.composite_rgba()[..., :3], view.rgba(state.base_layer)[..., :3])


def test_wheel_slices_shift_fast_ctrl_zoom_and_r_resets(qtbot, window):
    state = window.state
    view = window.slice_views["axial"]
    k0 = state.slice_index("axial")
    wheel(view, 120)
    assert state.slice_index("axial") == k0 + 1
    wheel(view, -120)
    assert state.slice_index("axial") == k0
    wheel(view, 120, QtCore.Qt.KeyboardModifier.ShiftModifier)
    assert state.slice_index("axial") == k0 + 5
    wheel(view, 120, QtCore.Qt.KeyboardModifier.ControlModifier)
    assert state.views["axial"].zoom == pytest.approx(1.2)
    assert state.slice_index("axial") == k0 + 5
    window.scheduler.flush()
    xr, _ = view.view_box.viewRange()
    assert xr[1] - xr[0] < 28 * 1.0 * 1.01  # zoomed in: less than the full width visible
    view.graphics_view.setFocus()
    qtbot.keyClick(view.graphics_view, QtCore.Qt.Key.Key_R)
    assert state.views["axial"].zoom == 1.0
    assert state.cursor_voxel() == (9, 11, 13)
    qtbot.keyClick(view.graphics_view, QtCore.Qt.Key.Key_Up)
    assert state.slice_index("axial") == 10


def test_right_drag_window_level_and_middle_drag_pan(qtbot, window):
    state = window.state
    view = window.slice_views["axial"]
    lay = state.base_layer
    state.set_active_layer(lay)
    lo, hi = lay.vmin, lay.vmax
    view.run_drag("window_level", (0, 0), (0, 0), (0, 0), True, False)
    view.run_drag("window_level", (0, 0), (40, 0), (40, 0), False, True)
    assert lay.vmax - lay.vmin > hi - lo  # wider window
    assert (lay.vmin + lay.vmax) / 2 == pytest.approx((lo + hi) / 2)
    view.run_drag("pan", (0, 0), (10, 5), (10, 5), True, True)
    assert state.views["axial"].pan != (0.0, 0.0)
    # a real right-button drag through Qt reaches the same binding
    vp = view.graphics_view.viewport()
    c = QtCore.QPoint(vp.width() // 2, vp.height() // 2)
    w0 = lay.vmax - lay.vmin
    qtbot.mousePress(vp, QtCore.Qt.MouseButton.RightButton, pos=c)
    for dx in (10, 20, 40):
        ev = QtGui.QMouseEvent(QtCore.QEvent.Type.MouseMove, QtCore.QPointF(c.x() + dx, c.y()),
                               vp.mapToGlobal(QtCore.QPointF(c.x() + dx, c.y())),
                               QtCore.Qt.MouseButton.NoButton,
                               QtCore.Qt.MouseButton.RightButton,
                               QtCore.Qt.KeyboardModifier.NoModifier)
        QtWidgets.QApplication.sendEvent(vp, ev)
    qtbot.mouseRelease(vp, QtCore.Qt.MouseButton.RightButton, pos=c + QtCore.QPoint(40, 0))
    assert lay.vmax - lay.vmin > w0


def test_session_round_trip_between_windows(qtbot, tmp_path, settings):
    img = save_nifti(asym(), tmp_path / "t1.nii.gz")
    mp = save_nifti(asym().with_data(asym().data / 1000.0), tmp_path / "map.nii.gz")
    w1 = QtMainWindow(show_dialogs=False, settings=settings, enable_3d=False)
    qtbot.addWidget(w1)
    assert w1.open_files([img], overlays=[mp], threshold=50.0), w1.last_error
    s = w1.state
    s.layer("map").set(colormap="hot", opacity=0.5, vmin=10.0, vmax=150.0)
    s.set_cursor_voxel((4, 5, 6))
    s.set_convention("neurological")
    s.set_layout("row")
    s.set_zoom("coronal", 3.0)
    session = tmp_path / "sub" / "session.json"
    assert w1.save_session(session)
    saved = json.loads(session.read_text())
    assert saved["layers"][1]["threshold"] == 50.0
    assert all("data" not in lay for lay in saved["layers"])

    w2 = QtMainWindow(show_dialogs=False, settings=settings, enable_3d=False)
    qtbot.addWidget(w2)
    assert w2.restore_session(session), w2.last_error
    assert w2.state.to_dict() == s.to_dict()
    assert w2.state.cursor_voxel() == (4, 5, 6)
    assert w2.convention_action.isChecked() is False
    assert w2.slice_views["axial"].isVisibleTo(w2) and not w2.volume_view.isVisibleTo(w2)
    assert w2.slice_views["axial"].letters()["left"] == "L"
    # recent files and settings remembered through QSettings
    assert str(img.resolve()) in w1.recent.items("recent_files")
    w1.close()
    w3 = QtMainWindow(show_dialogs=False, settings=settings, enable_3d=False)
    qtbot.addWidget(w3)
    assert w3.state.convention == "neurological"
    assert [a.text() for a in w3.recent_files_menu.actions()][0] == str(mp.resolve())


def test_bad_file_reports_error_and_keeps_state(qtbot, tmp_path, window):
    bad = tmp_path / "broken.nii.gz"
    bad.write_bytes(b"\x1f\x8b\x08\x00 this is not a nifti file" * 10)
    before = window.state.to_dict()
    assert not window.open_files([bad])
    assert window.last_error is not None and "broken.nii.gz" in window.last_error
    assert window.state.to_dict() == before
    assert window.error_box is not None and window.error_box.isVisible()
    assert window.error_box.text() == window.last_error
    window.error_box.close()
    # a map that does not overlap the image: refused, state unchanged
    far = asym()
    far.affine[:3, 3] += 5000
    far_path = save_nifti(far, tmp_path / "far_map.nii.gz")
    assert not window.add_overlay(far_path)
    assert "does not overlap" in window.last_error and "far_map" in window.last_error
    assert window.state.to_dict() == before
    # a session file that is not JSON
    js = tmp_path / "bad.json"
    js.write_text("{ not json")
    assert not window.restore_session(js)
    assert "bad.json" in window.last_error
    assert window.state.to_dict() == before
    assert len(window.errors) == 3


def test_real_data_overlay_on_other_grid(qtbot, window, tmp_path):
    data = ROOT.parent / "shared" / "data" / "totalsegmentator"
    if not (data / "example_mr_sm.nii.gz").exists():
        pytest.skip("shared data not present")
    assert window.open_files([data / "example_mr_sm.nii.gz"],
                             overlays=[data / "example_seg_mr.nii.gz"]), window.last_error
    labels = window.state.layers[1]
    assert labels.kind == "labels"
    window.scheduler.flush()
    assert window.slice_views["axial"].rgba(labels).shape[-1] == 4


def test_channel_switch_water_fat(qtbot, window):
    vol = asym()
    two = Volume(np.concatenate([vol.data, vol.data * 2]), vol.affine, ("water", "fat"))
    win = window
    win.state.clear()
    lay = win.state.add_layer(two, "dixon")
    combo = win.layer_panel.channel_combo
    assert [combo.itemText(i) for i in range(combo.count())] == ["water", "fat"]
    combo.setCurrentText("fat")
    assert lay.channel == "fat"
    win.state.set_cursor_voxel((1, 2, 3))
    assert f"dixon: {2 * val(1, 2, 3):.6g}" in win.readout_panel.text()


def test_subject_browser_workspace_next_previous_preload(qtbot, tmp_path, settings):
    cohort = pytest.importorskip("bodyage_core.cohort")
    ws = cohort.Workspace.create(tmp_path / "ws")
    recs = []
    for i, (sex, bmi, age) in enumerate([("F", 22.0, 61), ("M", 31.0, 45), ("F", 27.0, 70)]):
        sid = f"S{i:02d}"
        d = ws.subject_dir(sid, create=True)
        v = asym().with_data(asym().data + i)
        save_nifti(v, d / "water.nii.gz")
        save_nifti(v.with_data(v.data * 0.5), d / "fat.nii.gz")
        recs.append({"subject_id": sid, "sex": sex, "bmi": bmi, "age": age,
                     "images": {"water": ws.relative(d / "water.nii.gz"),
                                "fat": ws.relative(d / "fat.nii.gz")}})
    ws.db.add_subjects(recs)
    ws.db.add_run("r1")
    ws.db.add_predictions("r1", [{"subject_id": "S01", "mean": 50.0, "sigma": 2.0}])
    ws.close()

    win = QtMainWindow(show_dialogs=False, settings=settings, enable_3d=False)
    qtbot.addWidget(win)
    changed = []
    win.subject_changed.connect(changed.append)
    assert win.open_workspace(tmp_path / "ws"), win.last_error
    assert win.wait_for_subject(), win.last_error  # the first subject loads in the background
    browser = win.subject_browser
    assert browser.model.rowCount() == 3 and win.current_subject == "S00"
    assert win.state.channels() == ("water", "fat")
    row = {browser.model.row_dict(r)["subject_id"]: browser.model.row_dict(r) for r in range(3)}
    assert row["S01"]["predicted"] == 50.0 and row["S01"]["gap"] == pytest.approx(5.0)
    assert row["S00"]["predicted"] is None and row["S01"]["bmi_group"] == "obese"
    # the next subject is preloaded in the background
    qtbot.waitUntil(lambda: win.preloader.is_preloaded("S01"), timeout=5000)
    win.next_subject()
    assert win.current_subject == "S01" and changed == ["S00", "S01"]
    win.state.set_cursor_voxel((1, 1, 1))
    assert f"{val(1, 1, 1) + 1:.6g}" in win.readout_panel.text()
    win.previous_subject()  # not preloaded: read in the background, UI not blocked
    qtbot.waitUntil(lambda: win.current_subject == "S00", timeout=5000)
    # a newer request wins over one still loading
    win.open_subject("S02")
    win.open_subject("S01", wait=True)
    qtbot.wait(100)
    assert win.current_subject == "S01"
    # sort by age descending, filter by sex
    browser.table.sortByColumn(3, QtCore.Qt.SortOrder.DescendingOrder)
    assert browser.visible_ids() == ["S02", "S00", "S01"]
    browser.filter_edit.setText("F")
    assert set(browser.visible_ids()) == {"S00", "S02"}
    # Page Down shortcut exists
    keys = [a.shortcut().toString() for a in win.subject_menu.actions()]
    assert "PgDown" in keys and "PgUp" in keys
    win.close()


def test_3d_view_placeholder_offscreen(window):
    vv = window.volume_view
    assert not getattr(vv, "available", True)
    assert "3D view unavailable" in vv.placeholder.text()


def test_help_lists_bindings_and_hook_points(window):
    text = window.shortcuts_text()
    for needle in ("Wheel", "Ctrl+wheel", "Right drag", "Middle drag", "PgDown", "R "):
        assert needle in text
    assert window.analysis_menu.title() == "&Analysis"
    from PySide6.QtWidgets import QLabel
    dock = window.add_panel("Prediction", QLabel("hello"))
    assert window.panel_docks["Prediction"] is dock


def test_screenshot_png(qtbot, window, tmp_path):
    out = tmp_path / "shot.png"
    blob = asym().with_data((asym().data % 100) / 27.0)
    window.state.add_layer(blob, "gradcam", threshold=0.3)
    assert window.save_screenshot(out), window.last_error
    img = QtGui.QImage(str(out))
    assert img.width() > 400 and img.height() > 300


def test_cli_gui_screenshot(tmp_path):
    img = save_nifti(asym(), tmp_path / "t1.nii.gz")
    mp = save_nifti(asym().with_data(asym().data / 1000.0), tmp_path / "map.nii.gz")
    out = tmp_path / "cli.png"
    env = dict(os.environ, QT_QPA_PLATFORM="offscreen")
    env.pop("DISPLAY", None)
    r = subprocess.run([sys.executable, "-m", "bodyage_core.cli.main", "gui", str(img),
                        "--overlay", str(mp), "--threshold", "100", "--layout", "row",
                        "--screenshot", str(out), "--size", "900x400"],
                       capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 0, r.stderr
    assert QtGui.QImage(str(out)).width() > 300
    r = subprocess.run([sys.executable, "-m", "bodyage_core.cli.main", "gui",
                        str(tmp_path / "missing.nii.gz"), "--screenshot", str(out)],
                       capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 2 and "missing.nii.gz" in r.stderr and "Traceback" not in r.stderr


def test_cli_args_parse_into_viewer_state(tmp_path):
    from bodyage_core.cli.cmd_gui import state_from_args
    from bodyage_core.cli.main import build_parser

    img = save_nifti(asym(), tmp_path / "t1.nii.gz")
    mp = save_nifti(asym().with_data(asym().data / 1000.0), tmp_path / "map.nii.gz")
    args = build_parser().parse_args(["gui", str(img), "--overlay", str(mp), "--threshold",
                                      "0.3", "--convention", "neurological"])
    state, ws = state_from_args(args)
    assert ws is None and [lay.name for lay in state.layers] == ["t1", "map"]
    assert state.layers[1].threshold == 0.3 and state.convention == "neurological"


def test_pyside_singleton_refcount_workaround(qtbot):
    """PySide6 6.12 on Python 3.11 drops a reference to None per void call and to True per
    emit; bodyage_gui makes the singletons immortal so the viewer never aborts."""
    import bodyage_gui._pyside_fixes as fixes

    class Probe(QtCore.QObject):
        sig = QtCore.Signal(object)

    p = Probe()
    for _ in range(20000):
        p.sig.emit(1)
        p.setObjectName("x")
    leaks = fixes.singleton_leaks()
    if leaks["None"] > 0 or leaks["True"] > 0:
        assert fixes.APPLIED
        assert sys.getrefcount(None) > 1_000_000 and sys.getrefcount(True) > 1_000_000


def test_hooks_add_overlay_volume_and_open_subject_errors(window):
    good = asym().with_data(asym().data / 1e5, channels=("gradcam",))
    lay = window.add_overlay_volume(good, "gradcam_run1", threshold=0.1)
    assert lay is not None and lay.kind == "overlay" and window.state.active_layer is lay
    far = Volume(np.ones((4, 4, 4), np.float32), np.eye(4))
    far.affine[:3, 3] = 1e4
    before = window.state.to_dict()
    assert window.add_overlay_volume(far, "elsewhere") is None
    assert "does not overlap" in window.last_error
    assert window.state.to_dict() == before
    assert not window.open_subject("nobody")
    assert "nobody" in window.last_error


def test_redraws_are_coalesced(qtbot, window):
    state = window.state
    views = window.slice_views.values()
    window.scheduler.flush()
    before = [v.n_redraws for v in views]
    flushes = window.scheduler.n_flushes
    for i in range(50):  # a fast crosshair drag: many state changes within one frame
        state.set_cursor_voxel((i % 20, i % 24, i % 28))
    assert [v.n_redraws for v in views] == before  # nothing drawn yet
    qtbot.waitUntil(lambda: not window.scheduler.pending, timeout=2000)
    assert [v.n_redraws - b for v, b in zip(views, before)] == [1, 1, 1]
    assert window.scheduler.n_flushes == flushes + 1


def test_composite_cache_hit_fetches_no_slices(window, monkeypatch):
    state = window.state
    lay = state.add_layer(asym(), "overlay", kind="overlay", colormap="heat", opacity=0.5)
    view = window.slice_views["axial"]
    view.flush()
    before = view.composite_rgba().copy()
    fetched = []
    real = state.slice_for_view
    monkeypatch.setattr(state, "slice_for_view",
                        lambda layer, plane, *a, **k: fetched.append(layer) or real(layer, plane,
                                                                                   *a, **k))
    z, y, x = state.cursor_voxel()
    state.set_cursor_voxel((z, y + 1, x + 1))  # same axial slice: nothing new to draw
    view.flush()
    assert fetched == []
    assert np.array_equal(view.composite_rgba(), before)
    lay.opacity = 0.8  # a display setting is in the key
    view.flush()
    assert fetched == [state.base_layer, lay]
    fetched.clear()
    state.step_slice("axial", 1)
    view.flush()
    assert fetched == [state.base_layer, lay]
    assert not np.array_equal(view.composite_rgba(), before)


def test_view_menu_convention_and_layouts(qtbot, window):
    window.convention_action.trigger()
    assert window.state.convention == "neurological"
    window.scheduler.flush()
    assert window.slice_views["coronal"].letters()["left"] == "L"
    window.layout_actions["axial"].trigger()
    assert window.state.layout == "axial"
    assert window.slice_views["axial"].isVisibleTo(window)
    assert not window.slice_views["coronal"].isVisibleTo(window)
    window.layout_actions["grid"].trigger()
    assert all(v.isVisibleTo(window) for v in window.slice_views.values())
    assert window.volume_view.isVisibleTo(window)


def test_open_files_in_background(qtbot, tmp_path, settings):
    img = save_nifti(asym(), tmp_path / "t1.nii.gz")
    bad = tmp_path / "bad.nii"
    bad.write_bytes(b"not nifti")
    win = QtMainWindow(show_dialogs=False, settings=settings, enable_3d=False)
    qtbot.addWidget(win)
    assert win.open_files([img], wait=False)  # returns at once; the UI keeps running
    qtbot.waitUntil(lambda: win.state.base_layer is not None, timeout=5000)
    assert win.state.base_layer.name == "t1"
    before = win.state.to_dict()
    win.open_files([bad], wait=False)
    qtbot.waitUntil(lambda: win.last_error is not None, timeout=5000)
    assert "bad.nii" in win.last_error and win.state.to_dict() == before
