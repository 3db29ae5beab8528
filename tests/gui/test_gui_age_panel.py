"""The age panel follows the subject on screen (issue 14 item 2): a subject's stored prediction
of the selected run is shown at once, cleared when another subject is shown, never stale (PgDown
after Predict shows the next subject's age, not the previous one's); Predict puts its Grad-CAM
in place of a stored map of the same run (no duplicate layers); "± sigma" says it is 1 SD and
the 95 % interval is shown beside it."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("PySide6")
pytest.importorskip("pytestqt")

from PySide6 import QtCore  # noqa: E402
from test_gui_prediction_data import RUN, copy_workspace  # noqa: E402

from bodyage_core.cohort import Workspace  # noqa: E402
from bodyage_gui.panels.qt_analysis import install_analysis  # noqa: E402
from bodyage_gui.qt_main_window import QtMainWindow  # noqa: E402

WAIT_MS = 90_000
Z95 = 1.959964


@pytest.fixture
def root(tmp_path):
    """A copy of the tiny workspace: subject 3 without a stored prediction, subject 1 with a
    stored Grad-CAM map of the run (as ``bodyage explain`` leaves one)."""
    from bodyage_core.io import save_volume
    from bodyage_core.volume import Volume

    root = copy_workspace(tmp_path / "ws")
    with Workspace.open(root) as ws:
        ids = ws.db.subject_ids()
        with ws.db.transaction() as cur:
            cur.execute("DELETE FROM predictions WHERE subject_id = ?", (ids[3],))
        s = ws.db.get_subject(ids[1])
        from bodyage_core.io import load_volume

        water = load_volume(ws.resolve(s.images["water"]))
        cam = np.zeros(water.shape, np.float32)
        cam[5:15, 5:15, 5:15] = 1.0
        path = ws.subject_dir(ids[1]) / f"gradcam_{RUN}.nii.gz"
        save_volume(Volume(cam[None], water.affine, ("gradcam",)), path)
        ws.db.set_image(ids[1], f"gradcam_{RUN}", ws.relative(path))
    return root


@pytest.fixture
def window(qtbot, tmp_path, root):
    settings = QtCore.QSettings(str(tmp_path / "s.ini"), QtCore.QSettings.Format.IniFormat)
    win = QtMainWindow(show_dialogs=False, enable_3d=False, settings=settings,
                       restore_settings=False)
    qtbot.addWidget(win)
    panel = install_analysis(win, warm_up_ms=None).prediction_panel
    panel.device, panel.torch_threads = "cpu", 1
    win.resize(1300, 850)
    win.show()
    assert win.open_workspace(root, wait=True), win.last_error
    yield win, panel
    if panel.worker is not None:
        panel.cancel()
        panel.worker.wait(30000)


def _stored(win):
    return {p["subject_id"]: p for p in win.workspace.db.predictions(RUN)}


def _predict(qtbot, panel):
    with qtbot.waitSignal(panel.prediction_finished, timeout=WAIT_MS) as blocker:
        assert panel.predict()
    qtbot.waitUntil(lambda: not panel.is_running(), timeout=10000)
    return blocker.args[0]


def test_stored_prediction_is_shown_at_once(qtbot, window):
    win, panel = window
    ids = win.subject_browser.visible_ids()
    p = _stored(win)[ids[0]]
    vals = panel.values_text()
    # was "–" everywhere until Predict was pressed
    assert vals["subject"] == ids[0]
    assert f"{p['corrected']:.1f} ± {p['sigma']:.1f} y" in vals["corrected"]
    assert f"{p['gap']:+.1f} y corrected" in vals["gap"]
    z = p["gap"] / p["sigma"]
    assert f"({z:+.1f} sigma" in vals["gap"]
    assert ("not significant" in vals["gap"]) == (abs(z) < 1.959964)
    assert win.open_subject(ids[2], wait=True)
    p2 = _stored(win)[ids[2]]
    assert panel.values_text()["subject"] == ids[2]
    assert f"{p2['corrected']:.1f}" in panel.values_text()["corrected"]


def test_the_gap_says_whether_it_is_beyond_the_interval():
    from bodyage_gui.panels.qt_prediction_result import ShownPrediction, gap_verdict

    def shown(corrected, sigma):
        return ShownPrediction("s", "m", corrected, sigma, corrected, age=60.0)

    assert gap_verdict(shown(70.0, 4.0)) == ("<b>beyond the 95 % interval</b> (+2.5 sigma; "
                                             "1 in 40 by chance)")
    assert "(-2.5 sigma" in gap_verdict(shown(50.0, 4.0))
    inside = gap_verdict(shown(67.0, 4.0))                                        # 1.75 sd
    assert "within the 95 % interval: not significant" in inside and "+1.8 sigma" in inside
    assert gap_verdict(ShownPrediction("s", "m", 60, 3, 60)) == ""               # no age


def test_interval_and_verdict_use_the_models_own_multiplier(qtbot):
    """A model with split-conformal intervals: the panel's 95 % interval is corrected +- its z
    (here 2.6), says so, and a gap of 2.5 sigma is within it, where Gaussian would call it
    significant."""
    from bodyage_gui.panels.qt_prediction_result import (
        QtPredictionResult,
        ShownPrediction,
        gap_verdict,
    )

    p = ShownPrediction("s", "m", 70.0, 4.0, 70.0, age=60.0,
                        interval_z={"0.683": 0.9, "0.95": 2.6})
    assert p.interval95 == pytest.approx((70.0 - 10.4, 70.0 + 10.4))
    assert gap_verdict(p).startswith("within the 95 % interval: not significant")
    w = QtPredictionResult()
    qtbot.addWidget(w)
    w.show_prediction(p)
    assert w.values_text()["interval"] == "59.6 – 80.4 y  (split-conformal, ± 2.60 sigma)"
    w.show_prediction(ShownPrediction("s", "m", 70.0, 4.0, 70.0, age=60.0))
    assert w.values_text()["interval"] == "62.2 – 77.8 y  (Gaussian, ± 1.96 sigma)"
    row = {"subject_id": "s", "mean": 70.0, "sigma": 4.0, "corrected": 70.0, "age": 60.0,
           "interval_z": {"0.95": 2.6}}
    assert ShownPrediction.from_row(row, "m").interval95 == pytest.approx((59.6, 80.4))


def test_pgdown_after_predict_shows_the_next_subject_not_the_previous(qtbot, window):
    win, panel = window
    ids = win.subject_browser.visible_ids()
    assert win.open_subject(ids[2], wait=True)
    r = _predict(qtbot, panel)
    assert r.subject_id == ids[2] and panel.values_text()["subject"] == ids[2]
    before = panel.values_text()
    win.next_subject()                       # Subject > Next subject (PgDown)
    assert win.wait_for_subject()
    assert win.current_subject == ids[3]
    vals = panel.values_text()
    # ids[3] has no stored prediction: nothing is shown, and certainly not ids[2]'s age
    assert vals["subject"] != ids[2] and vals["corrected"] != before["corrected"]
    assert vals["corrected"] == "–" and vals["gap"] == "–"
    assert "press Predict" in panel.result_view.note.text()
    # back to ids[2]: its prediction (stored by Predict) again
    win.previous_subject()
    assert win.wait_for_subject()
    assert panel.values_text()["subject"] == ids[2]
    assert f"{r.corrected:.1f}" in panel.values_text()["corrected"]


def test_predict_replaces_the_stored_map_instead_of_stacking(qtbot, window):
    win, panel = window
    ids = win.subject_browser.visible_ids()
    assert win.open_subject(ids[1], wait=True)
    names = [lay.name for lay in win.state.layers]
    assert f"gradcam_{RUN}" in names                       # the stored map, shown
    n = len(names)
    _predict(qtbot, panel)
    names = [lay.name for lay in win.state.layers]
    # was gradcam_tiny (hidden) + "gradcam_tiny (2)": two layers of one map
    assert names.count(f"gradcam_{RUN}") == 1 and not any("(2)" in x for x in names)
    assert names.count(f"gradcam_signed_{RUN}") == 1
    assert len(names) == n + 1                             # + the signed map only
    cam = win.state.layer(f"gradcam_{RUN}")
    assert cam.visible and cam.volume.provenance.get("run") == RUN   # the new one
    _predict(qtbot, panel)
    assert len(win.state.layers) == n + 1


def test_sigma_says_one_sd_and_the_95_percent_interval_is_shown(qtbot, window):
    win, panel = window
    r = _predict(qtbot, panel)
    vals = panel.values_text()
    assert f"{r.mean:.1f} ± {r.sigma:.1f} y (1 SD)" in vals["raw"]
    assert f"{r.corrected:.1f} ± {r.sigma:.1f} y (1 SD)" in vals["corrected"]
    lo, hi = r.corrected - Z95 * r.sigma, r.corrected + Z95 * r.sigma
    # the tiny run has too few held-out predictions for split-conformal multipliers
    assert vals["interval"] == f"{lo:.1f} – {hi:.1f} y  (Gaussian, ± 1.96 sigma)"
    assert "one standard deviation" in panel.values["corrected"].toolTip()
