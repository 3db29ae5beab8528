"""The viewer's tools (pytest-qt, offscreen, real widgets and mouse events): the ruler in mm on
a known spacing, box and ellipse regions with their statistics in the Measurements panel and
the CSV, the hover probe, linear interpolation, double-click to maximise a view and back, the
layout keys, drag and drop of files and folders, and the lightbox's tiles."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("PySide6")
pytest.importorskip("pytestqt")

from PySide6 import QtCore, QtGui, QtWidgets  # noqa: E402
from test_gui_prediction_data import tiny_workspace_root  # noqa: E402

from bodyage_core.viewer import ViewerState  # noqa: E402
from bodyage_core.volume import Volume  # noqa: E402
from bodyage_gui.qt_main_window import QtMainWindow  # noqa: E402

_Qt = QtCore.Qt
DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"
SHAPE = (30, 20, 24)                       # z, y, x
SPACING = (2.0, 3.0, 4.0)                  # x, y, z mm


def _volume() -> Volume:
    aff = np.diag([*SPACING, 1.0])
    aff[:3, 3] = (-20.0, -30.0, 10.0)
    z, y, x = np.indices(SHAPE, dtype=np.float32)
    return Volume((x + 10 * y + 1000 * z)[None], aff, ("t1",))


@pytest.fixture
def window(qtbot, tmp_path):
    state = ViewerState()
    state.add_layer(_volume(), "t1", kind="image")
    settings = QtCore.QSettings(str(tmp_path / "s.ini"), QtCore.QSettings.Format.IniFormat)
    win = QtMainWindow(state, show_dialogs=False, settings=settings, enable_3d=False,
                       restore_settings=False)
    qtbot.addWidget(win)
    win.resize(1400, 900)
    win.show()
    qtbot.waitExposed(win)
    _settle(win)
    return win


def _settle(win, n=4):
    for _ in range(n):
        QtWidgets.QApplication.processEvents()
        win.scheduler.flush()


def _send(view, kind, pos, buttons=_Qt.MouseButton.LeftButton,
          button=_Qt.MouseButton.LeftButton):
    vp = view.graphics_view.viewport()
    p = QtCore.QPointF(pos)
    ev = QtGui.QMouseEvent(kind, p, vp.mapToGlobal(p), button, buttons,
                           _Qt.KeyboardModifier.NoModifier)
    QtWidgets.QApplication.sendEvent(vp, ev)


def _drag(win, view, a, b, steps=6):
    """A left-button drag from world point ``a`` to ``b`` with real mouse events, as fast as
    a hand (pyqtgraph drops moves less than 10 ms apart)."""
    import time

    pa, pb = view.scene_pos_of_world(a), view.scene_pos_of_world(b)
    time.sleep(0.012)
    _send(view, QtCore.QEvent.Type.MouseButtonPress, pa)
    for i in range(1, steps + 1):
        time.sleep(0.012)
        f = i / steps
        _send(view, QtCore.QEvent.Type.MouseMove,
              QtCore.QPointF(pa.x() + f * (pb.x() - pa.x()), pa.y() + f * (pb.y() - pa.y())))
    _send(view, QtCore.QEvent.Type.MouseButtonRelease, pb, buttons=_Qt.MouseButton.NoButton)
    _settle(win)


def _world(win, zyx):
    return win.state.base_layer.volume.voxel_to_world(np.asarray(zyx, float))


def test_ruler_measures_mm_on_a_known_spacing(qtbot, window):
    win = window
    st = win.state
    st.set_layout("axial")
    _settle(win)
    view = win.slice_views["axial"]
    st.set_cursor_voxel((15, 10, 12))
    cursor = st.cursor
    assert win.tools.actions["ruler"].shortcut().toString() == "Ctrl+M"
    win.tools.actions["ruler"].trigger()                 # Tools > Ruler
    _drag(win, view, _world(win, (15, 4, 3)), _world(win, (15, 4, 13)))     # 10 x 2 mm
    (m,) = st.measurements
    assert m.kind == "ruler" and m.plane == "axial" and m.slice == 15
    assert m.length_mm == pytest.approx(20.0, abs=0.6)
    assert np.allclose(st.cursor, cursor)                 # the drag did not move the cursor
    assert view.measurement_items.labels[m.id] == f"{m.length_mm:.1f} mm"
    _drag(win, view, _world(win, (15, 2, 5)), _world(win, (15, 12, 5)))     # 10 x 3 mm
    assert st.measurements[1].length_mm == pytest.approx(30.0, abs=0.6)
    panel = win.tools.panel
    qtbot.waitUntil(lambda: len(panel.rows) == 2, timeout=2000)
    assert [r["kind"] for r in panel.rows] == ["ruler", "ruler"]
    # Esc (Tools > Move cursor): the left button moves the cursor again
    assert win.tools.actions["none"].shortcut().toString() == "Esc"
    win.tools.actions["none"].trigger()
    _drag(win, view, _world(win, (15, 4, 3)), _world(win, (15, 8, 8)))
    assert len(st.measurements) == 2 and st.cursor_voxel()[1:] == (8, 8)


def test_box_and_ellipse_statistics_in_the_panel_and_the_csv(qtbot, window, tmp_path):
    from bodyage_core.viewer.measure import region_statistics

    win = window
    st = win.state
    st.set_layout("axial")
    _settle(win)
    view = win.slice_views["axial"]
    st.set_cursor_voxel((5, 10, 12))
    win.tools.set_mode("box")
    # corners half a voxel outside the centres of y 2..5, x 3..7: 20 voxels
    _drag(win, view, _world(win, (5, 1.5, 2.5)), _world(win, (5, 5.5, 7.5)))
    (box,) = st.measurements
    s = region_statistics(st, box)
    vals = np.array([x + 10 * y + 5000 for y in range(2, 6) for x in range(3, 8)], float)
    assert s["voxels"] == 20
    assert s["volume_ml"] == pytest.approx(20 * 2 * 3 * 4 / 1000)
    t1 = s["layers"][0]
    assert t1["mean"] == pytest.approx(vals.mean()) and t1["max"] == vals.max()
    panel = win.tools.panel
    qtbot.waitUntil(lambda: len(panel.rows) == 1, timeout=2000)
    cells = {panel.table.horizontalHeaderItem(j).text(): panel.table.item(0, j).text()
             for j in range(panel.table.columnCount())}
    assert cells["volume ml"] == "0.48" and cells["mean"] == f"{vals.mean():.4g}"
    assert win.panel_docks["Measurements"].isVisible()
    win.tools.set_mode("ellipse")
    _drag(win, view, _world(win, (5, 1.5, 2.5)), _world(win, (5, 5.5, 7.5)))
    ell = st.measurements[1]
    assert ell.kind == "ellipse" and 0 < region_statistics(st, ell)["voxels"] < 20
    out = tmp_path / "roi.csv"
    assert win.tools.export_statistics(out)
    rows = list(csv.DictReader(out.open()))
    assert [r["kind"] for r in rows] == ["box", "ellipse"]
    assert float(rows[0]["volume_ml"]) == pytest.approx(0.48)
    assert float(rows[0]["mean"]) == pytest.approx(vals.mean())
    assert rows[0]["layer"] == "t1" and int(rows[0]["voxels"]) == 20


def test_hover_probe_shows_the_value_under_the_mouse(qtbot, window):
    win = window
    st = win.state
    st.set_layout("axial")
    _settle(win)
    view = win.slice_views["axial"]
    zyx = (st.slice_index("axial"), 7, 9)
    pos = view.scene_pos_of_world(_world(win, zyx))
    _send(view, QtCore.QEvent.Type.MouseMove, pos, buttons=_Qt.MouseButton.NoButton,
          button=_Qt.MouseButton.NoButton)
    text = win.tools.probe.text()
    value = 9 + 10 * 7 + 1000 * zyx[0]
    assert "under mouse" in text and f"t1={value:.4g}" in text
    assert st.cursor_voxel() != zyx                       # nothing clicked
    view.hover(None)
    assert win.tools.probe.text() == ""


def test_linear_interpolation_toggle(qtbot, window):
    win = window
    st = win.state
    checker = (np.indices((1, *SHAPE)).sum(axis=0) % 2).astype(np.float32) * 100
    st.base_layer.volume.data[:] = checker
    st.base_layer.set(vmin=0.0, vmax=100.0)
    st.set_layout("axial")
    _settle(win)
    view = win.slice_views["axial"]

    def grey_levels():
        _settle(win)
        img = view.graphics_view.grab().toImage()
        vals = {img.pixelColor(x, y).red() for x in range(100, 300, 3) for y in range(100, 300, 3)}
        return len(vals)

    nearest = grey_levels()
    assert win.interpolation_action.shortcut().toString() == "Ctrl+I"
    win.interpolation_action.trigger()                    # View > Linear interpolation
    assert st.interpolation == "linear" and view.image_item.smooth
    assert win.interpolation_action.isChecked()
    assert grey_levels() > nearest + 5                   # smooth ramps between the voxels
    win.toggle_interpolation()
    assert st.interpolation == "nearest" and not view.image_item.smooth


def test_double_click_maximises_a_view_and_back(qtbot, window):
    win = window
    assert win.state.layout == "grid"
    view = win.slice_views["coronal"]
    vp = view.graphics_view.viewport()

    def double_click():
        pos = QtCore.QPointF(vp.width() / 2, vp.height() / 2)
        for kind in (QtCore.QEvent.Type.MouseButtonPress, QtCore.QEvent.Type.MouseButtonRelease,
                     QtCore.QEvent.Type.MouseButtonDblClick,
                     QtCore.QEvent.Type.MouseButtonRelease):
            held = _Qt.MouseButton.NoButton if kind == QtCore.QEvent.Type.MouseButtonRelease \
                else _Qt.MouseButton.LeftButton
            _send(view, kind, pos, buttons=held)
        _settle(win)

    double_click()
    assert win.state.layout == "coronal" and view.isVisible()
    assert not win.slice_views["axial"].isVisible()
    double_click()
    assert win.state.layout == "grid" and win.slice_views["axial"].isVisible()


def test_layout_keys(qtbot, window):
    from bodyage_gui import bindings

    win = window
    keys = {name: a.shortcut().toString() for name, a in win.layout_actions.items()}
    assert keys == {"grid": "Ctrl+1", "row": "Ctrl+2", "axial": "Ctrl+3", "coronal": "Ctrl+4",
                    "sagittal": "Ctrl+5", "3d": "Ctrl+6", "lightbox": "Ctrl+7"}
    assert all(bindings.key_for(f"layout_{n}") == k for n, k in keys.items())
    win.activateWindow()
    win.slice_views["axial"].graphics_view.setFocus()
    qtbot.keyClick(win.slice_views["axial"].graphics_view, _Qt.Key.Key_4,
                   _Qt.KeyboardModifier.ControlModifier)
    if win.state.layout != "coronal":            # no active window on this platform
        win.layout_actions["coronal"].trigger()
    assert win.state.layout == "coronal"
    win.layout_actions["lightbox"].trigger()
    assert win.state.layout == "lightbox" and win.lightbox_view.isVisible()
    assert any(k == "Ctrl+7" for k, _ in bindings.help_rows())


def test_drag_and_drop_of_files_and_folders(qtbot, window, tmp_path):
    from bodyage_core.io import save_volume
    from bodyage_gui.actions.drop import drop_event

    win = window
    img = tmp_path / "scan.nii.gz"
    save_volume(_volume(), img)
    cam = tmp_path / "gradcam_x.nii.gz"
    save_volume(Volume(np.ones((1, *SHAPE), np.float32), _volume().affine, ("g",)), cam)
    target = win.slice_views["axial"].graphics_view.viewport()
    assert not target.acceptDrops() and win.acceptDrops()      # the view hands it up
    win.event(drop_event([img]))
    assert win.files.load.wait(30)
    assert win.drop.last_action == "open" and win.state.base_layer.name == "scan"
    win.event(drop_event([cam]))   # a map: on top
    assert win.drop.last_action == "overlay" and win.state.layers[-1].name == "gradcam_x"
    win.event(drop_event([img], ctrl=True))  # Ctrl: on top too
    assert win.drop.last_action == "overlay" and len(win.state.layers) == 3
    win.event(drop_event([tiny_workspace_root()]))
    assert win.drop.last_action == "workspace"
    assert win.wait_for_subject() and win.workspace is not None
    win.event(drop_event([tmp_path / "gone.nii.gz"]))
    assert "no such file" in win.last_error
    mr = DATA / "tcia_vs_seg_001_t1_dicom_subset"
    if mr.is_dir():
        folder = tmp_path / "dicom"
        shutil.copytree(mr, folder)
        win.event(drop_event([folder]))
        assert win.drop.last_action == "dicom" and win.dicom_browser.isVisible()


def test_lightbox_tiles_slices_and_overlays(qtbot, window):
    win = window
    st = win.state
    heat = np.zeros((1, *SHAPE), np.float32)
    heat[0, 12, 5:15, 5:15] = 1.0                       # on axial slice 12 only
    st.add_layer(Volume(heat, st.base_layer.volume.affine, ("heat",)), "heat",
                 kind="overlay", colormap="heat", display_range=(0.0, 1.0), threshold=0.5)
    st.set_cursor_voxel((12, 10, 12))
    dlg = win.show_lightbox_settings()
    dlg.rows_spin.setValue(2)
    dlg.cols_spin.setValue(3)
    dlg.spacing_spin.setValue(4)
    assert st.layout == "lightbox" and st.lightbox.spacing == 4
    _settle(win)
    lb = win.lightbox_view
    lb.repaint()
    tiles = lb.tiles
    assert [k for k, _, _ in tiles] == [0, 4, 8, 12, 16, 20]     # slice 12 fourth
    assert len(tiles) == 6
    assert lb.tile_label(12) == f"12  z {10.0 + 12 * 4.0:.1f} mm"
    # the overlay shows in the tile of slice 12 and in no other
    img = lb.grab().toImage()

    def reds(rect):
        n = 0
        for x in range(int(rect.left()) + 2, int(rect.right()) - 2, 2):
            for y in range(int(rect.top()) + 2, int(rect.bottom()) - 2, 2):
                c = img.pixelColor(x, y)
                n += max(abs(c.red() - c.green()), abs(c.green() - c.blue())) > 40   # colour
        return n

    counts = {k: reds(r) for k, _, r in tiles}
    assert counts[12] > 10 and all(v == 0 for k, v in counts.items() if k != 12)
    # a click on a tile moves the cursor there (all views follow)
    k, _, rect = tiles[4]
    qtbot.mouseClick(lb, _Qt.MouseButton.LeftButton, pos=rect.center().toPoint())
    assert st.slice_index("axial") == k == 16
    dlg.plane_combo.setCurrentText("coronal")
    _settle(win)
    lb.repaint()
    assert st.lightbox.plane == "coronal" and len(lb.tiles) == 5    # 20 slices, step 4
    dlg.close()
