"""Regression test from the QA pass: a mask or segmentation that is not the organ label map
(an age-effect mask, an aseg) is not read out with the synthetic organ names (the readout said
"age_mask: 3 (visceral_fat)" inside a thigh muscle); an organ label map still is — from the
table recorded beside it, as the synthetic cohort writes it (issue 14 item 1: names come only
from the map or a table beside it)."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest

pytest.importorskip("PySide6")
pytest.importorskip("pytestqt")

from PySide6 import QtCore  # noqa: E402

from bodyage_core.labels import synthetic_table, write_sidecar  # noqa: E402
from bodyage_gui.qt_main_window import QtMainWindow  # noqa: E402


def _save(arr_zyx, path):
    nib.save(nib.Nifti1Image(np.ascontiguousarray(arr_zyx.transpose(2, 1, 0)),
                             np.diag([2.0, 2.0, 3.0, 1.0])), str(path))
    return path


@pytest.mark.parametrize("via", ["add_overlay", "open_files"])
def test_only_organ_label_maps_get_organ_names(qtbot, tmp_path, via):
    settings = QtCore.QSettings(str(tmp_path / "s.ini"), QtCore.QSettings.Format.IniFormat)
    win = QtMainWindow(show_dialogs=False, settings=settings, enable_3d=False,
                       restore_settings=False)
    qtbot.addWidget(win)
    shape = (10, 12, 14)
    image = _save(np.random.default_rng(1).random(shape, np.float32) * 100, tmp_path / "t1.nii.gz")
    ints = np.full(shape, 3, np.int16)
    mask = _save(ints, tmp_path / "age_mask.nii.gz")
    labels = _save(ints, tmp_path / "labels.nii.gz")
    write_sidecar(labels, synthetic_table())        # what `bodyage synth` writes beside it
    if via == "add_overlay":
        assert win.open_files([image]), win.last_error
        assert win.add_overlay(mask) and win.add_overlay(labels), win.last_error
    else:
        assert win.open_files([image], overlays=[mask, labels]), win.last_error
    win.state.set_cursor_voxel((5, 6, 7))
    values = {v["layer"]: v for v in win.state.cursor_readout()["values"]}
    assert values["age_mask"]["value"] == 3
    assert not values["age_mask"]["label"]          # was 'visceral_fat'
    assert values["labels"]["label"]                # the organ label map keeps its names
    assert "age_mask: 3 (" not in win.state.readout_text()
