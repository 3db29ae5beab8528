"""Side by side (pytest-qt, offscreen): a second subject, or the atlas template of the open
subject's group, in linked views beside the main viewer, the cursor synced in world mm or
through both registrations in atlas space (the point under the cursor is the same anatomy)."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

pytest.importorskip("PySide6")
pytest.importorskip("pytestqt")

from PySide6 import QtCore  # noqa: E402
from test_gui_atlas_space import REF_SHAPE, T_RAS, _affine, workspace  # noqa: E402,F401

from bodyage_gui.qt_main_window import QtMainWindow  # noqa: E402

T1_RAS = np.array([-2.0, 4.0, 2.0])     # S1: atlas point p lies at subject point p + T1_RAS


@pytest.fixture
def root(tmp_path, workspace):  # noqa: F811
    import SimpleITK as sitk
    from test_gui_atlas_space import REF_ORIGIN

    from bodyage_core.cohort import Workspace
    from bodyage_core.registration.transform import SubjectTransform

    root = tmp_path / "ws"
    shutil.copytree(workspace[0], root)
    with Workspace.open(root) as ws:
        tx = sitk.AffineTransform(3)
        tx.SetTranslation(tuple(float(v) for v in T1_RAS * np.array([-1.0, -1.0, 1.0])))
        folder = ws.subject_dir("S1") / "atlas_F_healthy"
        SubjectTransform(tx, REF_SHAPE, _affine(REF_ORIGIN),
                         info={"group": "F_healthy"}).save(folder)
        ws.db.set_registration("S1", "F_healthy", "ok", forward=ws.relative(folder))
        ws.db.set_image("S1", "to_atlas_F_healthy", ws.relative(folder))
    return root


@pytest.fixture
def window(qtbot, tmp_path, root):
    settings = QtCore.QSettings(str(tmp_path / "s.ini"), QtCore.QSettings.Format.IniFormat)
    win = QtMainWindow(show_dialogs=False, enable_3d=False, settings=settings,
                       restore_settings=False)
    qtbot.addWidget(win)
    win.resize(1100, 800)
    win.show()
    assert win.open_workspace(root, open_first=False), win.last_error
    assert win.open_subject("S0", wait=True), win.last_error
    return win


def test_second_subject_linked_in_world_and_through_the_atlas(qtbot, window):
    win = window
    sbs = win.open_side_by_side("S1")
    qtbot.addWidget(sbs)
    assert sbs.isVisible() and sbs.shown == "S1"
    assert sbs.state.base_layer.name == "S1" and len(sbs.views) == 3
    names = [sbs.choice.itemText(i) for i in range(sbs.choice.count())]
    assert names[0] == "atlas template (F_healthy)" and "subject S1" in names
    assert "subject S0" not in names                      # the one shown in the main window
    # world mm: the same point
    win.state.set_cursor_voxel((9, 11, 13))
    np.testing.assert_allclose(sbs.state.cursor, win.state.cursor, atol=1e-6)
    # atlas space: S0 point q is atlas q - T, which is S1 point q - T + T1
    assert sbs.set_sync("atlas"), sbs.message.text()
    q = win.state.cursor.copy()
    np.testing.assert_allclose(sbs.state.cursor, q - T_RAS + T1_RAS, atol=1e-4)
    win.state.set_cursor_voxel((8, 10, 12))
    q = win.state.cursor.copy()
    np.testing.assert_allclose(sbs.state.cursor, q - T_RAS + T1_RAS, atol=1e-4)
    # and back: a click in the second viewer moves the main one
    target = sbs.state.cursor + np.array([2.0, 0.0, 0.0])
    sbs.state.set_cursor(target)
    np.testing.assert_allclose(win.state.cursor, target + T_RAS - T1_RAS, atol=1e-4)
    sbs.close()


def test_atlas_template_beside_the_subject(qtbot, window):
    win = window
    sbs = win.open_side_by_side()
    qtbot.addWidget(sbs)
    assert sbs.show_template() and sbs.shown == "template:F_healthy"
    assert sbs.state.base_layer.volume.shape == REF_SHAPE
    assert any(lay.name.startswith("population") for lay in sbs.state.layers)
    assert sbs.set_sync("atlas")
    win.state.set_cursor_voxel((9, 11, 13))
    np.testing.assert_allclose(sbs.state.cursor, win.state.cursor - T_RAS, atol=1e-4)


def test_atlas_link_needs_both_registrations(qtbot, window):
    win = window
    sbs = win.open_side_by_side("S2")              # S2's registration files are damaged
    qtbot.addWidget(sbs)
    assert not sbs.set_sync("atlas")
    assert "world mm" in sbs.message.text() and sbs.link.mode == "world"
    assert sbs.sync.currentData() == "world"
    win.state.set_cursor_voxel((5, 6, 7))
    np.testing.assert_allclose(sbs.state.cursor, win.state.cursor, atol=1e-6)
