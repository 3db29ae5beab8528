"""What the viewer audit left (tests/gui/test_gui_window_defaults.py), each proved here:

* one display rule for every map on top: the population dialog showed its maps at opacity 0.75
  with its own threshold (a tenth of the maximum), ``display.importance_display`` said 0.7,
  while the viewer opens overlays at 0.5 thresholded on the map's upper quantiles; now all go
  through :func:`bodyage_core.viewer.layers.importance_overlay`;
* the layer panel's threshold box kept the previous layer's value when a layer without a
  threshold was selected (ticking it applied the other layer's threshold);
* a Predict with "Automatic" on a workspace subject was not stored in the workspace (the CLI's
  ``bodyage predict WS --model`` stores it under the model's name), so the age panel lost it
  on PgDown / PgUp.
"""

from __future__ import annotations

import shutil

import numpy as np
import pytest

pytest.importorskip("PySide6")
pytest.importorskip("pytestqt")

from gui_tiny_model import MODEL, tiny_model_root  # noqa: E402
from PySide6 import QtCore  # noqa: E402

from bodyage_core import display  # noqa: E402
from bodyage_core.viewer import ViewerState  # noqa: E402
from bodyage_core.viewer.layers import OVERLAY_OPACITY, importance_overlay  # noqa: E402
from bodyage_core.volume import Volume  # noqa: E402

WAIT_MS = 90_000


# -- 1. one rule for maps on top -----------------------------------------------------------------
def _blob(shape=(20, 24, 24), centre=(10, 12, 12), width=20.0):
    z, y, x = np.indices(shape, dtype=float)
    return np.exp(-((z - centre[0]) ** 2 + (y - centre[1]) ** 2 + (x - centre[2]) ** 2) / width)


def test_importance_display_opens_at_the_overlay_opacity():
    m = _blob().astype(np.float32)
    assert display.importance_display(m)["opacity"] == pytest.approx(OVERLAY_OPACITY)  # was 0.7
    assert display.importance_display(m - 0.3, signed=True)["opacity"] == pytest.approx(
        OVERLAY_OPACITY)
    assert OVERLAY_OPACITY == display.OVERLAY_OPACITY == 0.5


def test_population_dialog_maps_follow_the_one_rule(qtbot, tmp_path):
    from test_gui_cohort import _fake_atlas_outputs, open_window
    from test_gui_population_stats import _dialog, _fake_compare
    from test_gui_prediction_data import copy_workspace

    root = copy_workspace(tmp_path / "ws")
    _fake_atlas_outputs(root)
    sig = np.zeros((60, 16, 20), bool)
    sig[38:43, 6:10, 8:12] = True
    diff, _p = _fake_compare(root, significant=sig)
    win, panel = open_window(qtbot, tmp_path, root)
    dlg = _dialog(qtbot, win, panel)
    layers = [st.layers[-1] for st in dlg.states.values()]
    acc, dec, dif = layers[:3]
    for lay in layers:
        assert lay.kind == "overlay"
        assert lay.opacity == pytest.approx(OVERLAY_OPACITY)                    # was 0.75
    # the two group means: the rule on both at once (one range and threshold, they compare)
    both = importance_overlay(np.concatenate([acc.volume.data[0].ravel(),
                                              dec.volume.data[0].ravel()]))
    for lay in (acc, dec):
        assert lay.threshold == pytest.approx(both["threshold"])             # was 0.1 * max
        assert (lay.vmin, lay.vmax) == pytest.approx(both["display_range"])
    # the FWE-masked difference: every significant voxel drawn (no threshold hides one)
    assert dlg.fwe_check.isChecked() and dif.threshold is None
    assert dif.colormap == "bwr" and dif.vmin == pytest.approx(-dif.vmax)
    # unmasked: the rule's threshold on the upper quantiles of |diff|
    dlg.fwe_check.setChecked(False)
    dif = list(dlg.states.values())[2].layers[-1]
    rule = importance_overlay(diff.astype(np.float32), signed=True)
    assert dif.threshold == pytest.approx(rule["threshold"], rel=1e-4)
    assert dif.opacity == pytest.approx(OVERLAY_OPACITY)
    dlg.close()


# -- 2. the threshold box shows the selected layer's own threshold --------------------------------
def test_threshold_box_shows_the_selected_layers_own_threshold(qtbot):
    from bodyage_gui.panels.qt_layer_panel import QtLayerPanel

    aff = np.eye(4)
    st = ViewerState()
    st.add_layer(Volume((_blob() * 100).astype(np.float32)[None], aff, ("t1",)), "t1",
                 kind="image", display_range=(0.0, 100.0))
    a = st.add_layer(Volume(_blob().astype(np.float32)[None], aff, ("a",)), "a",
                     kind="overlay", threshold=0.6, display_range=(0.5, 1.0))
    b = st.add_layer(Volume((_blob() * 7).astype(np.float32)[None], aff, ("b",)), "b",
                     kind="overlay", threshold=None, display_range=(2.0, 7.0))
    panel = QtLayerPanel(st)
    qtbot.addWidget(panel)
    st.set_active_layer(a)
    assert panel.threshold_spin.value() == pytest.approx(0.6)
    st.set_active_layer(b)
    # was 0.6, layer a's: b has none; the box shows b's own starting point, its display minimum
    assert not panel.threshold_check.isChecked()
    assert panel.threshold_spin.value() == pytest.approx(2.0)
    panel.threshold_check.setChecked(True)
    assert b.threshold == pytest.approx(2.0)                 # was a's 0.6 applied to b
    assert a.threshold == pytest.approx(0.6)
    b.threshold = 3.5
    st.set_active_layer(a)
    assert panel.threshold_spin.value() == pytest.approx(0.6)
    st.set_active_layer(b)
    assert panel.threshold_spin.value() == pytest.approx(3.5)


# -- 3. Automatic on a workspace subject is stored -------------------------------------------------
@pytest.fixture
def tiny_workspace(monkeypatch, tmp_path):
    root = tiny_model_root()
    monkeypatch.setenv("BODYAGE_MODEL_PATH", str(root / "models"))
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    ws = tmp_path / "WS"
    shutil.copytree(root / "WS", ws)
    return ws


def test_automatic_prediction_of_a_workspace_subject_is_stored(qtbot, tmp_path, tiny_workspace):
    from bodyage_core.cluster.lock import WorkspaceLock
    from bodyage_core.cohort import Workspace
    from bodyage_gui.panels.qt_analysis import install_analysis
    from bodyage_gui.qt_main_window import QtMainWindow

    with Workspace.open(tiny_workspace) as ws:
        sids = ws.db.subject_ids()
        assert MODEL not in {r["run_id"] for r in ws.db.runs()}
    settings = QtCore.QSettings(str(tmp_path / "s.ini"), QtCore.QSettings.Format.IniFormat)
    win = QtMainWindow(show_dialogs=False, enable_3d=False, settings=settings,
                       restore_settings=False)
    qtbot.addWidget(win)
    panel = install_analysis(win, warm_up_ms=None).prediction_panel
    panel.device, panel.torch_threads = "cpu", 1
    assert win.open_workspace(tiny_workspace, open_first=False), win.last_error
    sid = sids[1]
    assert win.open_subject(sid, wait=True), win.last_error
    assert panel.select_auto()
    with qtbot.waitSignal(panel.prediction_finished, timeout=WAIT_MS) as blocker:
        assert panel.predict(), win.last_error
    r = blocker.args[0]
    # stored as `bodyage predict WS --model tiny-dixon` stores it: under the model's name
    assert r.stored_row is not None and r.stored_row["run_id"] == MODEL       # was None
    assert "stored in cohort.sqlite" in panel.status_label.text()
    with Workspace.open(tiny_workspace) as ws:
        assert MODEL in {x["run_id"] for x in ws.db.runs()}
        row = ws.db.predictions(MODEL, subject_id=sid)[0]
        assert row["corrected"] == pytest.approx(r.corrected, abs=1e-6)
        assert ws.prediction_file(sid, MODEL).exists()
    # the workspace lock was taken for the write and is free again
    lock = WorkspaceLock(tiny_workspace, "test")
    assert lock.read().get("active") is False
    qtbot.waitUntil(lambda: not panel.is_running(), timeout=10000)
    shown = panel.values_text()["corrected"]
    # PgDown then PgUp: the age panel shows it again at once (read back from the workspace)
    panel._computed.clear()            # what a new window (or a full cache) would have
    win.next_subject()
    qtbot.waitUntil(lambda: win.current_subject == sids[2], timeout=20000)
    win.previous_subject()
    qtbot.waitUntil(lambda: win.current_subject == sid, timeout=20000)
    qtbot.waitUntil(lambda: panel.values_text()["subject"] == sid, timeout=5000)
    assert panel.values_text()["corrected"] == shown
    assert "stored in cohort.sqlite" in panel.values_text()["run"]
    win.close()
