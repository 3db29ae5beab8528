"""The DICOM series browser (pytest-qt, offscreen) on real data: a folder holding the
TotalSegmentator CT series and the TCIA MR series (copied together at test time) shows the
patient / study / series tree with descriptions, modalities, slice counts, the patient's age and
sex; the chosen series opens, with PatientAge as the chronological age when asked."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

pytest.importorskip("PySide6")
pytest.importorskip("pytestqt")

from PySide6 import QtCore, QtWidgets  # noqa: E402

from bodyage_gui.qt_main_window import QtMainWindow  # noqa: E402

DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"
CT = DATA / "totalsegmentator" / "example_ct_dicom"
MR = DATA / "tcia_vs_seg_001_t1_dicom_subset"


@pytest.fixture
def folder(tmp_path):
    if not (CT.is_dir() and MR.is_dir()):
        pytest.skip("real DICOM data not available")
    out = tmp_path / "study"
    shutil.copytree(CT, out / "ct")
    shutil.copytree(MR, out / "mr")
    return out


@pytest.fixture
def window(qtbot, tmp_path):
    settings = QtCore.QSettings(str(tmp_path / "s.ini"), QtCore.QSettings.Format.IniFormat)
    win = QtMainWindow(show_dialogs=False, settings=settings, enable_3d=False,
                       restore_settings=False)
    qtbot.addWidget(win)
    win.resize(1300, 850)
    win.show()
    return win


def _items(tree: QtWidgets.QTreeWidget) -> list[list[str]]:
    out = []
    it = QtWidgets.QTreeWidgetItemIterator(tree)
    while it.value():
        item = it.value()
        depth, p = 0, item.parent()
        while p is not None:
            depth, p = depth + 1, p.parent()
        out.append([str(depth)] + [item.text(c) for c in range(tree.columnCount())])
        it += 1
    return out


def test_tree_of_patients_studies_series(qtbot, window, folder):
    dlg = window.open_dicom_browser(folder)
    assert dlg.wait()
    rows = _items(dlg.tree)
    series = [r for r in rows if r[0] == "2"]
    assert len(series) == 2
    mr = next(r for r in series if r[2] == "MR")
    ct = next(r for r in series if r[2] == "CT")
    assert mr[1:] == ["#2 t1_mpr_tra_gk_v4", "MR", "10", "512 x 512", "60 y", "M"]
    assert ct[1:] == ["CT Body 3.0", "CT", "20", "512 x 512", "", ""]
    patients = [r[1] for r in rows if r[0] == "0"]
    assert len(patients) == 2 and any("VS-SEG-001" in p for p in patients)
    assert "2 series" in dlg.status.text()


def test_open_a_series_with_its_age(qtbot, window, folder):
    dlg = window.open_dicom_browser(folder, )
    assert dlg.wait()
    assert dlg.select("t1_mpr_tra_gk_v4")
    assert "age 60 y (060Y)" in dlg.details.text() and "sex M" in dlg.details.text()
    assert dlg.age_check.isEnabled() and dlg.age_check.isChecked()
    with qtbot.waitSignal(dlg.series_opened, timeout=30000):
        dlg.open_button.click()
    base = window.state.base_layer
    assert base.name == "t1_mpr_tra_gk_v4" and base.volume.shape[0] == 10
    assert base.volume.metadata.get("age") == 60.0       # offered as the chronological age
    from bodyage_gui.panels.qt_prediction_panel import _header_age

    assert _header_age(base.volume) == 60.0
    # without the age
    dlg.age_check.setChecked(False)
    dlg.open_selected()
    assert "age" not in window.state.base_layer.volume.metadata
    # the CT series opens with the CT window (soft tissue W400/L40)
    assert dlg.select("CT Body 3.0")
    assert not dlg.age_check.isEnabled()                 # no PatientAge in its header
    dlg.open_selected()
    base = window.state.base_layer
    assert base.name == "CT Body 3.0" and base.volume.shape == (20, 512, 512)
    assert (base.vmin, base.vmax) == (-160.0, 240.0)
    assert window.recent.items("recent_files")[0].endswith(dlg.selected().first_file().name)


def test_file_menu_opens_the_browser_on_a_folder(qtbot, window, folder, monkeypatch):
    monkeypatch.setattr(QtWidgets.QFileDialog, "getExistingDirectory",
                        lambda *a, **k: str(folder))
    window.files.ask_open_dicom()                       # File > Open DICOM folder...
    dlg = window.dicom_browser
    assert dlg.isVisible() and dlg.wait() and len(dlg.series) == 2
