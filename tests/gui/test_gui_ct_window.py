"""CT opens readable (issue 14 item 5): a modality-aware default window (CT from the header or
the value range: soft tissue W400/L40; it opened at the 1-99.5 % range, -1011..423, and read
grey on grey), presets (brain, soft tissue, lung, bone; water / fat for Dixon), numeric
window/level entry and a small histogram with the window drawn on it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("PySide6")
pytest.importorskip("pytestqt")

from PySide6 import QtCore  # noqa: E402

from bodyage_core.viewer import ViewerState  # noqa: E402
from bodyage_core.viewer.windowing import (  # noqa: E402
    CT_PRESETS,
    guess_modality,
    presets_for,
    range_of,
    window_of,
)
from bodyage_core.volume import Volume  # noqa: E402
from bodyage_gui.qt_main_window import QtMainWindow  # noqa: E402

DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"
CT = DATA / "totalsegmentator" / "example_ct.nii.gz"
CT_DICOM = DATA / "totalsegmentator" / "example_ct_dicom"
MR = DATA / "totalsegmentator" / "example_mr_sm.nii.gz"


def _need(p: Path) -> None:
    if not p.exists():
        pytest.skip(f"real data not available: {p}")


@pytest.fixture
def window(qtbot, tmp_path):
    settings = QtCore.QSettings(str(tmp_path / "s.ini"), QtCore.QSettings.Format.IniFormat)
    win = QtMainWindow(show_dialogs=False, settings=settings, enable_3d=False,
                       restore_settings=False)
    qtbot.addWidget(win)
    win.resize(1400, 900)
    return win


def test_window_level_arithmetic():
    assert window_of(-160.0, 240.0) == (400.0, 40.0)
    assert range_of(400.0, 40.0) == (-160.0, 240.0)
    assert CT_PRESETS["lung"] == (1500.0, -600.0)


@pytest.mark.parametrize("path", [CT, CT_DICOM], ids=["nifti", "dicom"])
def test_ct_opens_in_the_soft_tissue_window(window, path):
    _need(path)
    assert window.open_files([path]), window.last_error
    base = window.state.base_layer
    modality, why = guess_modality(base.volume)
    assert modality == "CT" and why
    assert (base.vmin, base.vmax) == (-160.0, 240.0)           # was about -1011..423
    panel = window.layer_panel.contrast
    assert panel.isVisibleTo(window.layer_panel)
    assert panel.width_spin.value() == 400 and panel.level_spin.value() == 40
    assert panel.preset_combo.currentText() == "soft tissue"
    assert "CT" in panel.modality_label.text()


def test_presets_numeric_entry_and_histogram(qtbot, window):
    _need(CT)
    assert window.open_files([CT]), window.last_error
    base = window.state.base_layer
    panel = window.layer_panel.contrast
    names = [panel.preset_combo.itemText(i) for i in range(panel.preset_combo.count())]
    for n in ("brain", "soft tissue", "lung", "bone"):
        assert n in names
    panel.preset_combo.setCurrentText("lung")
    assert (base.vmin, base.vmax) == range_of(*CT_PRESETS["lung"])
    panel.width_spin.setValue(80)
    panel.level_spin.setValue(35)
    assert (base.vmin, base.vmax) == (-5.0, 75.0)
    assert panel.preset_combo.currentText() == "custom"
    # the histogram is of the image's values and draws the window where it is
    hist = panel.histogram
    counts, edges = hist.counts, hist.edges
    assert counts.sum() > 0 and edges[0] <= -1000 and edges[-1] >= 1000
    x0, x1 = hist.window_x()
    assert 0 < x0 < x1 < hist.width()
    assert (x1 - x0) / hist.width() == pytest.approx(80 / (edges[-1] - edges[0]), rel=0.05)
    # a right-drag in a view (window/level) moves the numbers and the histogram's window
    base.display_range = (-160.0, 240.0)
    assert panel.width_spin.value() == 400 and hist.window_x() != (x0, x1)


def test_mr_keeps_its_range_and_dixon_gets_water_fat_presets(window):
    _need(MR)
    assert window.open_files([MR]), window.last_error
    base = window.state.base_layer
    assert guess_modality(base.volume)[0] != "CT"
    lo, hi = base.vmin, base.vmax
    assert lo > -100 and 300 < hi < 900                        # 1-99.5 % as before
    names = set(presets_for(base))
    assert "lung" not in names and "auto (1-99.5 %)" in names
    state = ViewerState()
    rng = np.random.default_rng(0)
    dixon = Volume(np.stack([rng.random((6, 7, 8)) * 100, 500 + rng.random((6, 7, 8)) * 300]
                            ).astype(np.float32), np.eye(4), ("water", "fat"))
    lay = state.add_layer(dixon, "subject")
    presets = presets_for(lay)
    assert {"water", "fat"} <= set(presets)
    presets["fat"].apply(state, lay)
    assert lay.channel == "fat" and lay.vmin >= 500
    presets["water"].apply(state, lay)
    assert lay.channel == "water" and lay.vmax <= 100
