"""Issue 14, "Wrong today" item 6 (pytest-qt, offscreen), one test per defect, each failing
before its fix: crosshair segments in the black margins, colour-bar labels drawn over each
other, a DICOM folder of two series refused with a hint for an option the viewer has not (and
the CT series named "series-None-..."), the subject filter failing on two words, Recent files
greyed after opening from the command line, docks clipping the readout, the browser's sigma and
gap columns and the cohort tables at the default size. (The 3D slab and the equal rows, which
need VTK, are in test_gui_xvfb_defects.py; the wizard's in test_gui_wizard_resume.py.)"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("PySide6")
pytest.importorskip("pytestqt")

from PySide6 import QtCore, QtWidgets  # noqa: E402
from test_gui_prediction_data import tiny_workspace_root  # noqa: E402

from bodyage_core.viewer import ViewerState  # noqa: E402
from bodyage_core.volume import Volume  # noqa: E402
from bodyage_gui.qt_main_window import QtMainWindow  # noqa: E402

DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"


@pytest.fixture
def settings(tmp_path):
    return QtCore.QSettings(str(tmp_path / "s.ini"), QtCore.QSettings.Format.IniFormat)


def _window(qtbot, settings, state=None, size=(1400, 900)):
    win = QtMainWindow(state, show_dialogs=False, settings=settings, enable_3d=False,
                       restore_settings=False)
    qtbot.addWidget(win)
    win.resize(*size)
    win.show()
    qtbot.waitExposed(win)
    qtbot.wait(60)
    return win


def _settle(qtbot, win, ms=60):
    for _ in range(3):
        QtWidgets.QApplication.processEvents()
        win.scheduler.flush()
        qtbot.wait(ms // 3)


def test_crosshair_leaves_nothing_in_the_black_margins(qtbot, settings):
    """The lines span the slice only: after clicks and R, the margins beside the image hold
    no crosshair pixel (lines reaching into them left ghost segments behind)."""
    state = ViewerState()
    state.add_layer(Volume(np.random.default_rng(0).random((40, 60, 30), np.float32),
                           np.diag([2.0, 2.0, 3.0, 1.0]), ("t1",)), "t1")
    win = _window(qtbot, settings, state)
    view = win.slice_views["axial"]
    for k in range(4):
        state.set_cursor_voxel((20, 10 + 8 * k, 5 + 4 * k))
        _settle(qtbot, win)
    state.reset()
    _settle(qtbot, win)
    # what the window really shows (the offscreen platform's backing store)
    img = win.screen().grabWindow(win.winId()).toImage()
    vp = view.graphics_view.viewport()
    tl = vp.mapTo(win, QtCore.QPoint(0, 0))
    w_mm, h_mm = state.geometry("axial").extent_mm
    a = view.graphics_view.mapFromScene(view.view_box.mapViewToScene(QtCore.QPointF(0, 0)))
    b = view.graphics_view.mapFromScene(view.view_box.mapViewToScene(
        QtCore.QPointF(w_mm, h_mm)))
    x0, x1 = sorted((a.x(), b.x()))
    assert x0 > 20, "the test needs margins beside the image"
    img = img.convertToFormat(img.Format.Format_RGB888)
    arr = np.frombuffer(img.constBits(), np.uint8).reshape(img.height(), img.bytesPerLine())
    arr = arr[:, :3 * img.width()].reshape(img.height(), img.width(), 3)
    arr = arr[tl.y():tl.y() + vp.height(), tl.x():tl.x() + vp.width()].astype(int)
    green = (arr[..., 1] > 150) & (arr[..., 0] < 100)
    margins = np.ones(green.shape, bool)
    margins[:, x0 - 2:x1 + 3] = False
    ys, xs = np.nonzero(green & margins)
    assert ys.size == 0, f"{ys.size} crosshair pixels in the margins, e.g. at {xs[0]},{ys[0]}"


def test_colour_bar_labels_never_overlap(qtbot, settings):
    from bodyage_gui.views.qt_colorbar import QtColorBar

    state = ViewerState()
    data = np.linspace(-1, 1, 20 * 20 * 20, dtype=np.float32).reshape(1, 20, 20, 20)
    state.add_layer(Volume(data, np.eye(4), ("x",)), "base", kind="image")
    bar = QtColorBar(state)
    qtbot.addWidget(bar)
    bar.resize(90, 300)
    cases = [dict(colormap="heat", display_range=(0.0, 1.0), threshold=0.97),  # by the max
             dict(colormap="heat", display_range=(0.0, 1.0), threshold=0.02),  # by the min
             dict(colormap="bwr", display_range=(-1.0, 1.0), threshold=0.01),  # +-t around 0
             dict(colormap="bwr", display_range=(-1.0, 1.0), threshold=0.9)]   # both ends
    for case in cases:
        lay = state.add_layer(Volume(data, np.eye(4), ("m",)), "map", kind="overlay", **case)
        labels = bar.labels()
        texts = [t for t, _, _ in labels]
        assert texts[0] == "1" and texts[1] in ("0", "-1")
        assert any(t.startswith("thr") for t in texts), (case, texts)
        rects = [r for _, r, _ in labels]
        for i in range(len(rects)):
            assert rects[i].top() >= 0 and rects[i].bottom() <= bar.height()
            for j in range(i + 1, len(rects)):
                assert not rects[i].intersects(rects[j]), (case, texts[i], texts[j])
        if case["colormap"] == "bwr" and case["threshold"] < 0.05:
            assert "thr ±0.01" in texts          # the two thresholds as one label
        state.remove_layer(lay)


def _two_series(tmp_path) -> Path:
    ct = DATA / "totalsegmentator" / "example_ct_dicom"
    mr = DATA / "tcia_vs_seg_001_t1_dicom_subset"
    if not (ct.is_dir() and mr.is_dir()):
        pytest.skip("real DICOM data not available")
    folder = tmp_path / "two_series"
    folder.mkdir()
    for src in (ct, mr):
        for f in src.iterdir():
            if f.is_file():
                shutil.copy2(f, folder / f.name)
    return folder


def test_two_series_folder_opens_the_series_browser(qtbot, settings, tmp_path):
    folder = _two_series(tmp_path)
    win = _window(qtbot, settings)
    assert win.open_files([folder], wait=True)
    # was: an error naming `--series UID`, an option the viewer does not have, and listing
    # the CT as "series-None-CT Body 3.0 (#None ...)"
    assert win.last_error is None
    dlg = win.dicom_browser
    assert dlg.isVisible() and dlg.wait()
    labels = sorted(s.summary() for s in dlg.series)
    assert labels == ["#2 t1_mpr_tra_gk_v4 (MR, 10 slices, 512 x 512)",
                      "CT Body 3.0 (CT, 20 slices, 512 x 512)"]
    assert not any("None" in s.label or "series-" in s.label for s in dlg.series)
    from bodyage_core.cli.cmd_gui import dicom_folder_of
    from bodyage_core.cli.main import build_parser

    assert dicom_folder_of(build_parser().parse_args(["gui", str(folder)])) == folder


def test_filter_with_two_words(qtbot, settings):
    win = _window(qtbot, settings)
    b = win.subject_browser
    b.set_subjects([{"subject_id": f"S{i}", "sex": "F" if i % 2 else "M",
                     "bmi_group": "obese" if i < 3 else "healthy", "age": 50.0 + i}
                    for i in range(6)])
    b.filter_edit.setText("M obese")        # was: no subject (the text matched no one cell)
    assert b.visible_ids() == ["S0", "S2"]
    b.filter_edit.setText("obese f")
    assert b.visible_ids() == ["S1"]
    b.filter_edit.setText("S4")
    assert b.visible_ids() == ["S4"]
    b.filter_edit.setText("m")               # a sex, not every id with an m in it
    assert b.visible_ids() == ["S0", "S2", "S4"]


def test_recent_files_after_opening_from_the_command_line(qtbot, settings, tmp_path):
    from bodyage_core.io import save_volume
    from bodyage_gui.app import open_window

    img = tmp_path / "scan.nii.gz"
    save_volume(Volume(np.ones((1, 8, 8, 8), np.float32), np.eye(4), ("image",)), img)
    state = ViewerState()
    state.add_layer(Volume(np.ones((1, 8, 8, 8), np.float32), np.eye(4), ("image",)),
                    path=img, kind="image")
    win = open_window(state, settings=settings)         # as `bodyage gui scan.nii.gz`
    qtbot.addWidget(win)
    # was greyed out: files given on the command line were not remembered
    assert win.recent_files_menu.isEnabled()
    assert str(img.resolve()) in [a.text() for a in win.recent_files_menu.actions()]
    assert win.windowTitle().endswith("scan.nii.gz")


def test_docks_do_not_clip_at_the_default_size(qtbot, settings):
    win = _window(qtbot, settings)
    from bodyage_gui.panels.qt_analysis import install_analysis

    tools = install_analysis(win)
    assert win.open_workspace(tiny_workspace_root(), wait=True), win.last_error
    _settle(qtbot, win, 150)
    # the subject browser: every column, sigma and gap included, without scrolling
    t = win.subject_browser.table
    cols = sum(t.columnWidth(c) for c in range(t.model().columnCount()))
    assert cols <= t.viewport().width(), (cols, t.viewport().width())
    assert not t.horizontalScrollBar().isVisible()
    # the readout: all its text, wrapped where the dock is narrow
    rp = win.readout_panel
    assert rp.height() >= rp.heightForWidth(rp.width()) - 2
    # the cohort panel, brought forward: the subgroup table's columns all shown
    tools.show_cohort()
    _settle(qtbot, win, 150)
    mae = tools.cohort_panel.mae_table
    cols = sum(mae.columnWidth(c) for c in range(mae.columnCount()))
    assert cols <= mae.viewport().width() + 1, (cols, mae.viewport().width())
    assert mae.viewport().height() >= 4 * mae.verticalHeader().defaultSectionSize()
