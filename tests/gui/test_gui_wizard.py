"""The training wizard (pytest-qt, offscreen): pages, review text, a tiny run trained end to end in
the background with live curves, the new run registered in the workspace and selectable for
prediction; Cancel stops a run and leaves it resumable."""

from __future__ import annotations

import pytest

pytest.importorskip("PySide6")
pytest.importorskip("pytestqt")

from PySide6 import QtCore, QtWidgets  # noqa: E402
from test_gui_prediction_data import MODEL_SHAPE, MODEL_SPACING, copy_workspace  # noqa: E402

from bodyage_core.cohort import Workspace  # noqa: E402
from bodyage_gui.panels.qt_analysis import install_analysis  # noqa: E402
from bodyage_gui.qt_main_window import QtMainWindow  # noqa: E402
from bodyage_gui.wizard.qt_training_wizard import overall_fraction  # noqa: E402

WAIT_MS = 120_000


def fill_tiny(wiz, run: str, epochs: int = 2) -> None:
    c, m = wiz.cohort_page, wiz.model_page
    c.run_edit.setText(run)
    c.folds_spin.setValue(2)
    m.arch_combo.setCurrentIndex(m.arch_combo.findData("resnet3d"))
    m.loss_combo.setCurrentIndex(m.loss_combo.findData("meanvar"))
    m.members_spin.setValue(1)
    m.width_spin.setValue(4)
    m.epochs_spin.setValue(epochs)
    m.batch_spin.setValue(4)
    m.augment_check.setChecked(False)
    m.set_custom_grid(MODEL_SPACING, MODEL_SHAPE)
    m.device_combo.setCurrentText("cpu")


@pytest.fixture
def window(qtbot, tmp_path):
    root = copy_workspace(tmp_path / "ws")
    settings = QtCore.QSettings(str(tmp_path / "settings.ini"), QtCore.QSettings.Format.IniFormat)
    win = QtMainWindow(show_dialogs=False, enable_3d=False, settings=settings,
                       restore_settings=False)
    qtbot.addWidget(win)
    tools = install_analysis(win)
    win.show()
    assert win.open_workspace(root, wait=True), win.last_error
    yield win, tools, root
    if tools.wizard is not None and tools.wizard.worker is not None:
        tools.wizard.cancel_training()
        tools.wizard.worker.wait(60000)


def test_overall_fraction():
    pos = {"fold": 1, "folds": 2, "member": 1, "members": 1}
    assert overall_fraction(pos, 0.5) == pytest.approx(0.25)
    assert overall_fraction(dict(pos, fold=2, member=2, members=2), 1.0) == pytest.approx(1.0)
    assert overall_fraction({}, 0.5) is None
    assert overall_fraction(pos, None) is None


def test_training_progress_carries_the_position_as_fields(tmp_path):
    """The trainer's progress events say which fold and member they belong to as values (the
    wizard's overall bar reads them; nothing parses the label)."""
    from bodyage_core.cli.main import main
    from bodyage_core.cohort import Workspace
    from bodyage_core.progress import ProgressReporter
    from bodyage_core.training.data import records_from_workspace
    from bodyage_core.training.presets import train_config
    from bodyage_core.training.run import train_run
    from bodyage_core.training.workflow import make_spec

    assert main(["synth", str(tmp_path / "ws"), "--n", "6", "--grid", "14,14,18"]) == 0
    ws = Workspace.open(tmp_path / "ws")
    spec = make_spec(ws, "resnet3d", spacing=(8, 8, 8), shape=(8, 8, 8))
    events = []
    rep = ProgressReporter(events.append)
    train_run(records_from_workspace(ws, spec), ws.model_dir("r"), spec,
              {"arch": "resnet3d", "width": 4},
              train_config("3d", augment=False, epochs=1, batch_size=2, device="cpu"),
              folds=2, members=1, reporter=rep)
    seen = {(e.values["fold"], e.values["folds"], e.values["member"], e.values["members"])
            for e in events if e.stage == "train" and "fold" in e.values}
    assert seen == {(1, 2, 1, 1), (2, 2, 1, 1)}
    last = [e for e in events if e.stage == "train" and "fold" in e.values][-1]
    assert overall_fraction(last.values, last.fraction) == pytest.approx(1.0)


def test_wizard_trains_a_tiny_run_end_to_end(qtbot, window):
    win, tools, root = window
    tools.actions["train"].trigger()                      # Analysis > Train model...
    wiz = tools.wizard
    assert wiz is not None and wiz.isVisible()
    assert wiz.cohort_page.workspace_edit.text() == str(root)
    assert "8 subjects" in wiz.cohort_page.cohort_label.text()
    # a name that exists needs Overwrite
    wiz.cohort_page.run_edit.setText("tiny")
    assert not wiz.cohort_page.isComplete()
    fill_tiny(wiz, "wiz")
    assert wiz.cohort_page.isComplete()
    wiz.next()
    assert wiz.currentPage() is wiz.model_page and wiz.model_page.isComplete()
    wiz.model_page.spacing_edit.setText("15, 12")          # not three numbers
    assert not wiz.model_page.isComplete()
    wiz.model_page.set_custom_grid(MODEL_SPACING, MODEL_SHAPE)
    wiz.next()
    review = wiz.review_page.summary.toPlainText()
    assert "2-fold" in review and "width 4" in review and "mean-variance" in review
    assert "2 network(s)" in review and "spacing (15.0, 12.0, 12.0)" in review
    with qtbot.waitSignal(wiz.run_finished, timeout=WAIT_MS) as blocker:
        wiz.next()                                         # the run page starts training
        assert wiz.currentPage() is wiz.run_page and wiz.is_running()
        assert not wiz.run_page.isComplete()
    assert blocker.args == ["wiz"]
    qtbot.waitUntil(lambda: not wiz.is_running(), timeout=10000)
    assert wiz.run_page.isComplete() and wiz.outcome == "finished"
    assert wiz.button(QtWidgets.QWizard.WizardButton.FinishButton).isEnabled()
    # live curves: a loss point per mini-batch of each member, validation MAE per epoch
    curves = wiz.run_page.loss_curves
    assert set(curves) == {"fold 1/2 member 1/1", "fold 2/2 member 1/1"}
    assert all(len(xs) == 2 for _, xs, _ in curves.values())
    assert all(len(xs) == 2 for _, xs, _ in wiz.run_page.mae_curves.values())
    assert wiz.run_page.progress.value() == 1000
    # registered in the workspace and selected for prediction
    with Workspace.open(root) as ws:
        run = {r["run_id"]: r for r in ws.db.runs()}["wiz"]
        assert run["status"] == "complete" and run["config"]["folds"] == 2
        assert len(ws.db.predictions("wiz")) == 8
    assert "wiz" in {r["run_id"] for r in win.workspace.db.runs()}
    assert tools.prediction_panel.run_combo.currentData() == "wiz"
    assert tools.prediction_panel.selected_run_dir() == root / "models" / "wiz"
    wiz.accept()


def test_wizard_cancel_leaves_resumable_run(qtbot, window):
    win, tools, root = window
    wiz = tools.open_training_wizard()
    fill_tiny(wiz, "stop", epochs=50)
    wiz.next()
    wiz.next()

    def cancel_on_first_step(ev):
        if ev.stage == "train" and wiz.outcome == "running":
            wiz.reject()                      # closing cancels; the wizard waits for the end
            assert wiz.isVisible()

    wiz.next()                                 # starts; events queue until we return
    wiz.worker.progress_changed.connect(cancel_on_first_step)
    qtbot.waitUntil(lambda: wiz.outcome == "cancelled", timeout=WAIT_MS)
    qtbot.waitUntil(lambda: not wiz.is_running(), timeout=10000)
    assert not wiz.run_page.isComplete() and not wiz.isVisible()
    assert "cancelled" in wiz.run_page.stage_label.text()
    assert (root / "models" / "stop.partial").exists()
    with Workspace.open(root) as ws:
        assert {r["run_id"]: r for r in ws.db.runs()}["stop"]["status"] == "interrupted"
    assert "stop" not in tools.prediction_panel.run_names()
