"""Bad input in the viewer (pytest-qt, offscreen): a workspace written by a newer bodyage, a
workspace subject whose image is missing or unreadable, a map on another grid that does not
overlap the subject and a session file from a newer viewer each end in one clear dialog, and
the viewer keeps what it showed. (Unreadable image files: tests/test_gui_viewer.py; a missing
or damaged model run: tests/test_gui_prediction.py.)"""

from __future__ import annotations

import json
import sqlite3

import nibabel as nib
import numpy as np
import pytest

pytest.importorskip("PySide6")
pytest.importorskip("pytestqt")

from PySide6 import QtCore  # noqa: E402

from bodyage_core.viewer import ViewerState  # noqa: E402
from bodyage_core.volume import Volume  # noqa: E402
from bodyage_gui.qt_main_window import QtMainWindow  # noqa: E402

SHAPE = (12, 14, 16)


def _vol(offset=0.0) -> Volume:
    aff = np.diag([2.0, 2.0, 2.0, 1.0])
    aff[:3, 3] = -16.0 + offset
    return Volume(np.arange(np.prod(SHAPE), dtype=np.float32).reshape(SHAPE)[None], aff,
                  ("t1",))


def _save(vol: Volume, path):
    nib.save(nib.Nifti1Image(np.ascontiguousarray(vol.data[0].transpose(2, 1, 0)), vol.affine),
             str(path))
    return path


@pytest.fixture
def window(qtbot, tmp_path):
    settings = QtCore.QSettings(str(tmp_path / "s.ini"), QtCore.QSettings.Format.IniFormat)
    state = ViewerState()
    state.add_layer(_vol(), "t1")
    win = QtMainWindow(state, show_dialogs=True, enable_3d=False, settings=settings,
                       restore_settings=False)
    qtbot.addWidget(win)
    win.show()
    yield win
    if win.error_box is not None:
        win.error_box.close()
    win.close()


def _workspace(tmp_path, name="ws", broken_image=False, missing_image=False):
    from bodyage_core.cohort import Workspace

    ws = Workspace.create(tmp_path / name)
    d = ws.subject_dir("A", create=True)
    img = d / "water.nii.gz"
    if broken_image:
        img.write_bytes(b"\x1f\x8b\x08\x00 not a nifti" * 20)
    elif not missing_image:
        _save(_vol(), img)
    ws.db.add_subjects([{"subject_id": "A", "sex": "F", "bmi": 21.0, "age": 50.0,
                         "images": {"water": "subjects/A/water.nii.gz"}}])
    ws.close()
    return tmp_path / name


def _dialog_shown(win, *words):
    assert win.error_box is not None and win.error_box.isVisible()
    assert win.error_box.text() == win.last_error
    for w in words:
        assert w in win.last_error, (w, win.last_error)
    win.error_box.close()


def test_workspace_from_a_newer_schema(qtbot, window, tmp_path):
    root = _workspace(tmp_path)
    con = sqlite3.connect(str(root / "cohort.sqlite"))
    con.execute("PRAGMA user_version = 99")
    con.commit()
    con.close()
    before = window.state.to_dict()
    assert not window.open_workspace(root, wait=True)
    _dialog_shown(window, "newer bodyage", "cohort.sqlite", "upgrade")
    assert window.state.to_dict() == before and window.workspace is None
    assert "Traceback" not in window.last_error


@pytest.mark.parametrize("broken", ["missing", "unreadable"])
def test_workspace_subject_image_missing_or_unreadable(qtbot, window, tmp_path, broken):
    root = _workspace(tmp_path, broken_image=broken == "unreadable",
                      missing_image=broken == "missing")
    before = window.state.to_dict()
    assert not window.open_workspace(root, wait=True)
    _dialog_shown(window, "water.nii.gz")
    assert window.state.to_dict() == before


def test_not_a_workspace_and_map_off_the_grid(qtbot, window, tmp_path):
    before = window.state.to_dict()
    (tmp_path / "empty").mkdir()
    assert not window.open_workspace(tmp_path / "empty")
    _dialog_shown(window, "not a bodyage workspace", "bodyage synth")
    # a map on another grid that does not overlap the image
    far = _save(_vol(offset=4000.0), tmp_path / "far_gradcam.nii.gz")
    assert not window.add_overlay(far)
    _dialog_shown(window, "does not overlap", "far_gradcam")
    assert window.state.to_dict() == before
    # a map on another grid that overlaps is resampled (not refused)
    near = _save(_vol(offset=3.0), tmp_path / "near_gradcam.nii.gz")
    assert window.add_overlay(near), window.last_error
    assert window.state.layers[-1].resampled


def test_session_from_a_newer_viewer(qtbot, window, tmp_path):
    js = tmp_path / "future.json"
    js.write_text(json.dumps({"bodyage_session": 99, "layers": [{"path": "x.nii.gz"}]}))
    before = window.state.to_dict()
    assert not window.restore_session(js)
    _dialog_shown(window, "newer", "update bodyage")
    assert window.state.to_dict() == before


def test_fast_gzip_reads_the_same_and_reports_corrupt_files(tmp_path):
    pytest.importorskip("isal")
    from bodyage_core.errors import LoadError
    from bodyage_gui.loading import load_for_viewer, use_fast_gzip

    path = _save(_vol(), tmp_path / "img.nii.gz")
    assert use_fast_gzip()
    v = load_for_viewer(path)
    np.testing.assert_array_equal(v.data, _vol().data)
    # truncated and corrupt gzip streams: a LoadError naming the file, no traceback
    raw = path.read_bytes()
    cut = tmp_path / "cut.nii.gz"
    cut.write_bytes(raw[: len(raw) // 2])
    bad = tmp_path / "bad.nii.gz"
    bad.write_bytes(raw[:40] + bytes(200) + raw[240:])
    for p in (cut, bad):
        with pytest.raises(LoadError, match=p.name):
            load_for_viewer(p)
