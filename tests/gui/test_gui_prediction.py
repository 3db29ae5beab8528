"""Background inference in the viewer (pytest-qt, offscreen): the prediction worker finishes and
the Grad-CAM overlays and panel values appear, cancelling leaves the state unchanged, the event
loop keeps ticking during a prediction, a missing or damaged run is a clear error, and an image
opened without a workspace can be predicted with a run folder."""

from __future__ import annotations

import shutil
import time

import numpy as np
import pytest

pytest.importorskip("PySide6")
pytest.importorskip("pytestqt")

from PySide6 import QtCore  # noqa: E402
from test_gui_prediction_data import RUN, tiny_workspace_root  # noqa: E402

from bodyage_core.inference.ensemble import AgeRun  # noqa: E402
from bodyage_gui.panels.qt_analysis import install_analysis  # noqa: E402
from bodyage_gui.qt_main_window import QtMainWindow  # noqa: E402

WAIT_MS = 90_000


@pytest.fixture(scope="session")
def tiny_ws():
    return tiny_workspace_root()


@pytest.fixture
def settings(tmp_path):
    return QtCore.QSettings(str(tmp_path / "settings.ini"), QtCore.QSettings.Format.IniFormat)


def make_window(qtbot, settings):
    win = QtMainWindow(show_dialogs=False, enable_3d=False, settings=settings,
                       restore_settings=False)
    qtbot.addWidget(win)
    tools = install_analysis(win)
    tools.prediction_panel.device = "cpu"
    tools.prediction_panel.torch_threads = 1
    win.resize(1300, 850)
    win.show()
    return win, tools


@pytest.fixture
def window(qtbot, settings, tiny_ws):
    win, tools = make_window(qtbot, settings)
    assert win.open_workspace(tiny_ws, wait=True), win.last_error
    yield win, tools
    if tools.prediction_panel.worker is not None:
        tools.prediction_panel.cancel()
        tools.prediction_panel.worker.wait(30000)


class StallMeter:
    """Ticks every ``interval_ms`` on the GUI event loop and records the gaps between ticks."""

    def __init__(self, interval_ms: int = 5):
        self.timer = QtCore.QTimer()
        self.timer.setInterval(interval_ms)
        self.timer.setTimerType(QtCore.Qt.TimerType.PreciseTimer)
        self.timer.timeout.connect(self._tick)
        self.ticks: list[float] = []

    def _tick(self):
        self.ticks.append(time.perf_counter())

    def start(self):
        self.ticks = [time.perf_counter()]
        self.timer.start()

    def stop(self) -> np.ndarray:
        self.timer.stop()
        self.ticks.append(time.perf_counter())
        return np.diff(self.ticks) * 1000.0


def test_predict_shows_values_overlays_and_keeps_loop_ticking(qtbot, window, tiny_ws):
    win, tools = window
    panel = tools.prediction_panel
    assert panel.run_names() == [RUN] and panel.selected_run_dir() == tiny_ws / "models" / RUN
    sid = win.current_subject
    stored = {p["subject_id"]: p for p in win.workspace.db.predictions(RUN)}[sid]
    n_layers = len(win.state.layers)
    # before Predict the panel shows the subject's stored prediction of the run (issue 14
    # item 2: it showed nothing), with its members
    assert panel.values_text()["subject"] == sid
    assert "stored in cohort.sqlite" in panel.values_text()["run"]
    assert f"{stored['mean']:.1f} ± {stored['sigma']:.1f}" in panel.values_text()["raw"]
    assert not panel.member_plot.isHidden()
    meter = StallMeter(5)
    meter.start()
    with qtbot.waitSignal(panel.prediction_finished, timeout=WAIT_MS) as blocker:
        tools.actions["predict"].trigger()          # Analysis > Predict (Ctrl+P)
        assert panel.is_running() and not panel.predict_button.isEnabled()
        assert tools.actions["cancel_prediction"].isEnabled()
    gaps = meter.stop()
    r = blocker.args[0]
    print(f"\nevent-loop stall during prediction: max {gaps.max():.1f} ms, "
          f"p95 {np.percentile(gaps, 95):.1f} ms over {len(gaps)} ticks")
    assert gaps.max() < 500.0
    # the same numbers as the run's stored (out-of-fold) prediction for this subject
    assert r.subject_id == sid and r.fold is not None
    assert r.mean == pytest.approx(stored["mean"], abs=1e-3)
    assert r.corrected == pytest.approx(stored["corrected"], abs=1e-3)
    assert r.sigma == pytest.approx(stored["sigma"], abs=1e-3)
    assert r.gap == pytest.approx(stored["gap"], abs=1e-3)
    assert r.member_mu == pytest.approx([m["mu"] for m in stored["members"]], abs=1e-3)
    assert not panel.member_plot.isHidden()
    # ... and as AgeRun gives for the subject's model input (what predict_workspace does)
    from bodyage_core.training.data import load_subject_volume, prepare_input

    ws = win.workspace
    run = AgeRun(ws.model_dir(RUN), device="cpu")
    x = prepare_input(load_subject_volume(ws, ws.db.get_subject(sid), run.spec.channels),
                      run.spec)
    direct = run.predict(x[None], [sid])
    assert r.mean == pytest.approx(float(direct.mean[0]), abs=1e-4)
    assert r.corrected == pytest.approx(float(direct.corrected[0]), abs=1e-4)
    # the panel shows them
    qtbot.waitUntil(lambda: not panel.is_running(), timeout=10000)
    vals = panel.values_text()
    assert vals["subject"] == sid
    assert f"{r.mean:.1f} ± {r.sigma:.1f}" in vals["raw"]
    assert f"{r.corrected:.1f}" in vals["corrected"] and f"{r.age:.1f}" in vals["age"]
    assert f"{r.gap:+.1f}" in vals["gap"]
    assert panel.member_points.data["y"] == pytest.approx(r.member_mu)
    # overlays: ReLU Grad-CAM shown (heat, thresholded), signed hidden (bwr, symmetric)
    names = [lay.name for lay in win.state.layers]
    assert len(names) == n_layers + 2
    cam = win.state.layer(f"gradcam_{RUN}")
    signed = win.state.layer(f"gradcam_signed_{RUN}")
    assert cam.visible and cam.colormap == "heat" and cam.threshold is not None
    assert not signed.visible and signed.colormap == "bwr" and signed.vmin == -signed.vmax
    assert cam.volume.same_grid(win.state.base_layer.volume) and not cam.resampled
    assert np.all(cam.volume.data >= 0)
    assert win.state.active_layer is cam
    # predicting again replaces the panel's overlays instead of stacking them
    with qtbot.waitSignal(panel.prediction_finished, timeout=WAIT_MS):
        panel.predict()
    qtbot.waitUntil(lambda: not panel.is_running(), timeout=10000)
    assert len(win.state.layers) == n_layers + 2


def test_cancel_leaves_state_unchanged(qtbot, window):
    win, tools = window
    panel = tools.prediction_panel
    before = [(lay.name, lay.visible) for lay in win.state.layers]
    values_before = panel.values_text()
    with qtbot.waitSignal(panel.prediction_cancelled, timeout=WAIT_MS):
        assert panel.predict()
        panel.cancel()
    qtbot.waitUntil(lambda: not panel.is_running(), timeout=10000)
    assert [(lay.name, lay.visible) for lay in win.state.layers] == before
    assert panel.values_text() == values_before
    assert panel.predict_button.isEnabled() and not panel.cancel_button.isEnabled()
    assert "cancelled" in panel.status_label.text()
    assert win.last_error is None


def test_missing_and_damaged_run_are_clear_errors(qtbot, window, tiny_ws, tmp_path):
    win, tools = window
    panel = tools.prediction_panel
    before = [lay.name for lay in win.state.layers]
    # a folder that is not a run: refused before anything starts
    panel.add_run_folder(tmp_path / "no_such_run")
    assert not panel.predict()
    assert "not a trained run" in win.last_error and "no_such_run" in win.last_error
    # a run whose member file is gone: the worker fails with the file's name
    broken = tmp_path / "broken"
    shutil.copytree(tiny_ws / "models" / RUN, broken)
    (broken / "member_0.pt").unlink()
    panel.add_run_folder(broken)
    with qtbot.waitSignal(panel.prediction_failed, timeout=WAIT_MS) as blocker:
        assert panel.predict()
    assert "member_0.pt" in blocker.args[0] and win.last_error == blocker.args[0]
    assert "Traceback" not in win.last_error
    qtbot.waitUntil(lambda: not panel.is_running(), timeout=10000)
    assert [lay.name for lay in win.state.layers] == before


def test_no_run_in_workspace_and_no_image(qtbot, settings, tmp_path):
    win, tools = make_window(qtbot, settings)
    assert not tools.prediction_panel.predict()
    assert "open a subject" in win.last_error
    assert win.state.layers == []


def test_plain_files_predicted_with_a_run_folder(qtbot, settings, tiny_ws):
    from bodyage_core.cohort import Workspace
    from bodyage_core.training.data import load_subject_volume, prepare_input

    win, tools = make_window(qtbot, settings)
    with Workspace.open(tiny_ws) as ws:
        subj = ws.db.subjects()[1]
        water, fat = ws.resolve(subj.images["water"]), ws.resolve(subj.images["fat"])
        run = AgeRun(ws.model_dir(RUN), device="cpu")
        expected = run.predict(prepare_input(load_subject_volume(ws, subj, run.spec.channels),
                                             run.spec)[None], ["x"], out_of_fold=False)
    assert win.open_files([water, fat]) and win.workspace is None
    panel = tools.prediction_panel
    assert panel.run_names() == []
    assert panel.selected().kind == "auto"      # without a workspace: the model that fits
    panel.add_run_folder(tiny_ws / "models" / RUN)
    with qtbot.waitSignal(panel.prediction_finished, timeout=WAIT_MS) as blocker:
        assert panel.predict()
    r = blocker.args[0]
    assert r.mean == pytest.approx(float(expected.mean[0]), abs=1e-3)
    assert r.corrected == pytest.approx(float(expected.corrected[0]), abs=1e-3)
    assert r.age is None and r.gap is None and len(r.member_mu) == 2   # all members
    assert "no chronological age" in panel.values_text()["gap"]
    assert win.state.layer(f"gradcam_{RUN}").volume.same_grid(win.state.base_layer.volume)


def test_subject_changed_while_predicting_adds_no_overlay(qtbot, window):
    win, tools = window
    panel = tools.prediction_panel
    ids = win.subject_browser.visible_ids()
    with qtbot.waitSignal(panel.prediction_finished, timeout=WAIT_MS) as blocker:
        assert panel.predict()
        assert win.open_subject(ids[2], wait=True)      # the user moves on meanwhile
    assert blocker.args[0].subject_id == ids[0]
    # the panel follows the subject on screen: ids[2]'s stored prediction, not ids[0]'s
    # (issue 14 item 2: it kept showing the previous subject's age)
    assert panel.values_text()["subject"] == ids[2]
    assert "another subject" in panel.status_label.text()
    assert not any(lay.name.startswith("gradcam") and lay.kind == "overlay" and
                   lay.volume.provenance.get("subject") for lay in win.state.layers)
    assert "another image" in panel.map_label.text()


def test_2p5d_run_predicts_without_3d_map(qtbot, settings, tmp_path):
    from test_gui_prediction_data import copy_workspace

    from bodyage_core.cohort import Workspace
    from bodyage_core.training.augment import AugmentConfig
    from bodyage_core.training.trainer import TrainConfig
    from bodyage_core.training.workflow import make_spec, train_workspace

    root = copy_workspace(tmp_path / "ws")
    with Workspace.open(root) as ws:
        spec = make_spec(ws, "resnet2d", spacing=(15, 12, 12), shape=(16, 12, 12),
                         image_hw=(32, 32))
        cfg = TrainConfig(epochs=1, batch_size=4, device="cpu", scheduler="step",
                          augment=AugmentConfig(0, 0, 0, 0, 0, 0, False))
        train_workspace(ws, "flat", spec, {"arch": "resnet2d", "depth": 18}, cfg, folds=2)
    win, tools = make_window(qtbot, settings)
    assert win.open_workspace(root, wait=True)
    panel = tools.prediction_panel
    assert panel.select_run("flat")
    n = len(win.state.layers)
    with qtbot.waitSignal(panel.prediction_finished, timeout=WAIT_MS) as blocker:
        assert panel.predict()
    r = blocker.args[0]
    assert r.gradcam is None and "2.5D" in panel.map_label.text()
    assert len(win.state.layers) == n and np.isfinite(r.corrected)


def test_closing_the_window_stops_the_prediction(qtbot, window):
    win, tools = window
    panel = tools.prediction_panel
    assert panel.predict()
    worker = panel.worker
    win.close()                                   # the close guard cancels and waits
    assert not worker.is_running()


def test_main_window_installs_analysis_once(qtbot, settings):
    from bodyage_gui.panels.qt_analysis import AnalysisTools

    win = QtMainWindow(show_dialogs=False, enable_3d=False, settings=settings,
                       restore_settings=False)
    qtbot.addWidget(win)
    assert isinstance(win.analysis, AnalysisTools)          # the constructor's hook call
    tools = win.analysis
    assert install_analysis(win) is tools and win.analysis is tools
    texts = [a.text() for a in win.analysis_menu.actions() if a.text()]
    assert sum("Predict" in t for t in texts) == 1
    assert tools.actions["predict"].shortcut().toString() == "Ctrl+P"
    assert {"Prediction", "Cohort"} <= set(win.panel_docks)
