"""The viewer works out of the box (issue 11 item 6): a scan opened without a workspace is
predicted by the model found by name whose envelope fits it (shipped, ``BODYAGE_MODEL_PATH``,
the user's folder), with the age panel, the map and the QC flags; a scan no model fits gets one
line per model saying why; the run box lists the models beside the workspace's runs.

The model is a tiny Dixon bundle made through the product (``tests/gui_tiny_model.py``)."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("PySide6")
pytest.importorskip("pytestqt")

from gui_tiny_model import MODEL, subject_files, tiny_model_root  # noqa: E402
from PySide6 import QtCore  # noqa: E402
from test_gui_prediction_data import RUN, tiny_workspace_root  # noqa: E402

from bodyage_core import resources  # noqa: E402
from bodyage_core.volume import Volume  # noqa: E402
from bodyage_gui.panels.qt_analysis import install_analysis  # noqa: E402
from bodyage_gui.qt_main_window import QtMainWindow  # noqa: E402

WAIT_MS = 90_000


@pytest.fixture
def models(monkeypatch, tmp_path):
    """The tiny model on BODYAGE_MODEL_PATH; no user models."""
    root = tiny_model_root()
    monkeypatch.setenv("BODYAGE_MODEL_PATH", str(root / "models"))
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    return root / "models"


@pytest.fixture
def window(qtbot, tmp_path, models):
    settings = QtCore.QSettings(str(tmp_path / "s.ini"), QtCore.QSettings.Format.IniFormat)
    win = QtMainWindow(show_dialogs=False, enable_3d=False, settings=settings,
                       restore_settings=False)
    qtbot.addWidget(win)
    tools = install_analysis(win, warm_up_ms=None)
    tools.prediction_panel.device = "cpu"
    tools.prediction_panel.torch_threads = 1
    win.resize(1300, 850)
    win.show()
    yield win, tools.prediction_panel
    if tools.prediction_panel.worker is not None:
        tools.prediction_panel.cancel()
        tools.prediction_panel.worker.wait(30000)


def test_plain_scan_is_predicted_by_the_model_that_fits(qtbot, window, models):
    win, panel = window
    water, fat = subject_files(3)
    assert win.open_files([water, fat]) and win.workspace is None
    with qtbot.waitSignal(panel.prediction_finished, timeout=WAIT_MS) as blocker:
        assert panel.predict(), win.last_error        # was: "no trained run to predict with"
    r = blocker.args[0]
    assert r.run_dir == models / MODEL and r.run == MODEL
    assert r.seconds < 60 and np.isfinite(r.corrected) and r.age is None
    assert f"{MODEL} 1.0.0: its envelope fits" in panel.auto_reason
    qtbot.waitUntil(lambda: not panel.is_running(), timeout=10000)
    vals = panel.values_text()
    # named after the subject's folder (water.nii.gz + fat.nii.gz: one Dixon scan)
    assert vals["subject"] == water.parent.name and vals["run"].startswith(f"{MODEL} 1.0.0")
    assert win.state.base_layer.volume.channels == ("water", "fat")   # one image, 2 channels
    assert f"{r.corrected:.1f} ± {r.sigma:.1f} y (1 SD)" in vals["corrected"]
    assert vals["qc"] == "no flags"
    cam = win.state.layer(f"gradcam_{MODEL}")
    assert cam.visible and cam.volume.same_grid(win.state.base_layer.volume)
    assert "done in" in panel.status_label.text()


def test_qc_flags_and_the_header_age_are_shown(qtbot, window, models):
    """A scan whose header gives an age outside the model's training ages (a DICOM
    PatientAge): predicted, the age gap shown, and the envelope's warning in the QC row."""
    win, panel = window
    water, fat = subject_files(2)
    from bodyage_core.io import load_volume

    w, f = load_volume(water), load_volume(fat)
    both = Volume(np.concatenate([w.data, f.data]), w.affine, ("water", "fat"),
                  metadata={"age": 95.0})
    win.state.add_layer(both, "scan", kind="image")
    win.display_changed.emit()
    with qtbot.waitSignal(panel.prediction_finished, timeout=WAIT_MS) as blocker:
        assert panel.predict(), win.last_error
    r = blocker.args[0]
    assert r.run == MODEL and r.age == 95.0 and r.gap == pytest.approx(r.corrected - 95.0)
    assert any(q["flag"] == "age_range" for q in r.qc)
    vals = panel.values_text()
    assert "warning: chronological age 95.0 is outside the training ages" in vals["qc"]
    assert "95.0 y" in vals["age"] and f"{r.gap:+.1f} y corrected" in vals["gap"]


def test_no_model_fits_says_why(qtbot, window, models, monkeypatch):
    win, panel = window
    monkeypatch.setattr(resources, "model_dirs", lambda: [models])   # not the shipped ones
    rng = np.random.default_rng(0)
    t1 = Volume(rng.random((40, 48, 40), np.float32) * 100, np.diag([2.0, 2.0, 2.0, 1.0]),
                ("t1",))
    win.state.add_layer(t1, "brain", kind="image")
    n = len(win.state.layers)
    assert not panel.predict()
    assert "no model fits this scan" in win.last_error
    assert f"{MODEL}: the model needs a Dixon water and fat pair" in win.last_error
    assert len(win.state.layers) == n and not panel.is_running()


def test_run_box_lists_models_beside_the_workspace_runs(qtbot, window, models):
    from bodyage_core.inference.bundle import list_models

    win, panel = window
    assert panel.selected().kind == "auto"
    assert f"{MODEL} 1.0.0 (model)" in panel.model_names()
    shipped = [m for m in list_models() if m["where"] == "shipped" and m["card"]
               and not m.get("shadowed")]
    for m in shipped:
        assert f"{m['name']} {m['version']} (shipped)" in panel.model_names()
    assert win.open_workspace(tiny_workspace_root(), wait=True), win.last_error
    assert panel.run_names() == [RUN]
    assert panel.selected().kind == "run" and panel.selected().name == RUN
    assert f"{MODEL} 1.0.0 (model)" in panel.model_names()
    # a model chosen for a workspace subject predicts it (and is not stored: no run of it)
    assert panel.select_model(MODEL)
    assert panel.selected_run_dir() == models / MODEL


def test_run_box_defaults_to_the_model_whose_predictions_the_cohort_shows(qtbot, window, models,
                                                                          tmp_path):
    """A cohort predicted by a model found by name (``bodyage predict WS --model NAME``: stored
    under the model's name, no run folder) after a training run: the run box opens on that
    model, the one whose ages the cohort table shows, not on the training run."""
    from test_gui_prediction_data import copy_workspace

    from bodyage_core.cohort import Workspace

    win, panel = window
    root = copy_workspace(tmp_path / "ws")
    with Workspace.open(root) as ws:
        sid = ws.db.subject_ids()[0]
        ws.db.add_predictions(MODEL, [{"subject_id": sid, "mean": 50.0, "sigma": 3.0}])
        assert ws.db.latest_run() == MODEL
    assert win.open_workspace(root, wait=True), win.last_error
    assert panel.run_names() == [RUN]
    assert panel.selected().kind == "model" and panel.selected().name == MODEL
    assert panel.selected_run_dir() == models / MODEL
