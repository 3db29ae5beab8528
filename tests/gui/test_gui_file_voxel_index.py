"""The readout shows the file's own voxel index (the nibabel / FSLeyes / ITK-SNAP convention)
beside the RAS world coordinate (issue 14 item 4): IXI013, stored PSR, reads [59, 59, 83] at
the voxel nibabel calls [59, 59, 83] (it read [83, 60, 59], the index of the array reoriented
to RAS, labelled as the voxel index)."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

pytest.importorskip("PySide6")
pytest.importorskip("pytestqt")

from PySide6 import QtCore  # noqa: E402

from bodyage_core.io import load_volume  # noqa: E402
from bodyage_core.viewer import ViewerState  # noqa: E402
from bodyage_gui.qt_main_window import QtMainWindow  # noqa: E402

DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"
IXI013 = DATA / "ixi_t1_2mm" / "t1" / "IXI013-HH-1212_T1.nii.gz"
ORIENT = DATA / "niivue_orientation" / "nifti_space"


def _need(p: Path) -> None:
    if not p.exists():
        pytest.skip(f"real data not available: {p}")


def test_ixi013_reads_its_own_voxel_index_in_the_window(qtbot, tmp_path):
    _need(IXI013)
    settings = QtCore.QSettings(str(tmp_path / "s.ini"), QtCore.QSettings.Format.IniFormat)
    win = QtMainWindow(show_dialogs=False, settings=settings, enable_3d=False,
                       restore_settings=False)
    qtbot.addWidget(win)
    assert win.open_files([IXI013]), win.last_error
    img = nib.load(str(IXI013))
    assert nib.aff2axcodes(img.affine) == ("P", "S", "R")
    ras = nib.affines.apply_affine(img.affine, [59, 59, 83])
    win.state.set_cursor(ras)
    r = win.state.cursor_readout()
    assert r["file_voxel_xyz"] == [59, 59, 83]
    assert r["file_orientation"] == "PSR"
    np.testing.assert_allclose(r["world_mm"], ras, atol=1e-3)        # RAS world kept
    text = win.state.readout_text()
    assert "voxel (file, 0-based) i,j,k: 59, 59, 83" in text
    assert "83, 60, 59" not in text.split("\n")[1]                # not the reoriented index
    win.scheduler.flush()
    assert "voxel i,j,k [59, 59, 83]" in win.statusBar().currentMessage()
    # the value is the file's value at that voxel (scl_slope applied)
    value = r["values"][0]["value"]
    assert value == pytest.approx(float(img.get_fdata()[59, 59, 83]), rel=1e-5)


@pytest.mark.parametrize("name", sorted(p.name for p in ORIENT.glob("*.nii.gz"))
                         if ORIENT.exists() else ["missing"])
def test_file_voxel_index_in_all_48_storage_orders(name):
    path = ORIENT / name
    _need(path)
    img = nib.load(str(path))
    state = ViewerState()
    state.add_layer(load_volume(path), path=path)
    shape = np.array(img.shape[:3])
    for ijk in ([0, 0, 0], list(shape - 1), [int(shape[0] * 0.3), int(shape[1] * 0.6), 2]):
        state.set_cursor(nib.affines.apply_affine(img.affine, ijk))
        assert state.cursor_readout()["file_voxel_xyz"] == [int(v) for v in ijk], name


def test_a_volume_made_in_memory_has_no_file_index():
    from bodyage_core.volume import Volume

    state = ViewerState()
    state.add_layer(Volume(np.zeros((4, 5, 6), np.float32), np.eye(4)), "mem")
    r = state.cursor_readout()
    assert r["file_voxel_xyz"] is None
    assert "voxel (0-based) x,y,z" in state.readout_text()
