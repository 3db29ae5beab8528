"""Regression tests from the QA pass: a session saved on a workspace subject (water + fat shown
as one two-channel image) restores, on the channel that was shown; a session that no longer
matches its files is a clear error, not an exception escaping the slot."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest

pytest.importorskip("PySide6")
pytest.importorskip("pytestqt")

from PySide6 import QtCore  # noqa: E402

from bodyage_gui.qt_main_window import QtMainWindow  # noqa: E402


@pytest.fixture
def settings(tmp_path):
    return QtCore.QSettings(str(tmp_path / "settings.ini"), QtCore.QSettings.Format.IniFormat)


def _save(arr_zyx, path, spacing=(2.0, 2.0, 3.0)):
    nib.save(nib.Nifti1Image(np.ascontiguousarray(arr_zyx.transpose(2, 1, 0)),
                             np.diag([*spacing, 1.0])), str(path))


@pytest.fixture
def workspace(tmp_path):
    cohort = pytest.importorskip("bodyage_core.cohort")
    ws = cohort.Workspace.create(tmp_path / "ws")
    d = ws.subject_dir("S00", create=True)
    water = np.arange(12 * 14 * 16, dtype=np.float32).reshape(12, 14, 16)
    _save(water, d / "water.nii.gz")
    _save(1000.0 + water * 0.5, d / "fat.nii.gz")
    ws.db.add_subjects([{"subject_id": "S00", "sex": "F", "bmi": 22.0, "age": 60.0,
                         "images": {"water": ws.relative(d / "water.nii.gz"),
                                    "fat": ws.relative(d / "fat.nii.gz")}}])
    ws.close()
    return tmp_path / "ws"


def test_session_of_a_workspace_subject_restores_its_channel(qtbot, settings, workspace,
                                                             tmp_path):
    win = QtMainWindow(show_dialogs=False, settings=settings, enable_3d=False,
                       restore_settings=False)
    qtbot.addWidget(win)
    assert win.open_workspace(workspace, wait=True), win.last_error
    assert tuple(win.state.channels()) == ("water", "fat")
    win.state.set_channel("fat")
    win.state.set_cursor((4.0, 6.0, 9.0))
    base = win.state.base_layer.volume
    win.add_overlay_volume(base.with_data(base.data[:1] * 0 + 1.0, channels=("cam",)), "cam")
    assert win.save_session(tmp_path / "s.json"), win.last_error
    # a layer computed in memory cannot be in the session: the status bar says so
    assert "not in it" in win.statusBar().currentMessage()
    assert "cam" in win.statusBar().currentMessage()

    other = QtMainWindow(show_dialogs=False, settings=settings, enable_3d=False,
                         restore_settings=False)
    qtbot.addWidget(other)
    # was: KeyError "no channel 'fat'; channels are ('image',)" escaping the slot
    assert other.restore_session(tmp_path / "s.json"), other.last_error
    assert other.state.base_layer.channel == "fat"
    np.testing.assert_allclose(other.state.cursor, (4.0, 6.0, 9.0))
    fat_value = other.state.cursor_readout()["values"][0]["value"]
    assert fat_value >= 1000.0


def test_session_not_matching_its_files_is_a_clear_error(qtbot, settings, workspace, tmp_path):
    win = QtMainWindow(show_dialogs=False, settings=settings, enable_3d=False,
                       restore_settings=False)
    qtbot.addWidget(win)
    assert win.open_workspace(workspace, wait=True), win.last_error
    assert win.save_session(tmp_path / "s.json"), win.last_error
    d = json.loads((tmp_path / "s.json").read_text())
    d["layers"][0]["channel"] = "t2"          # a channel the file does not have
    (tmp_path / "bad.json").write_text(json.dumps(d))
    before = [lay.name for lay in win.state.layers]
    assert not win.restore_session(tmp_path / "bad.json")
    assert "does not match its files" in win.last_error and "bad.json" in win.last_error
    assert [lay.name for lay in win.state.layers] == before
