"""The training wizard (issue 14 item 6): the greyed grid fields say what the chosen grid is
(they showed the default grid's numbers under "from the data"), the cancel message names the
real partial folder (it printed ``models/<run>.partial`` literally), and a cancelled run can be
resumed from the wizard (there was no Resume), to the same finished run."""

from __future__ import annotations

import math

import pytest

pytest.importorskip("PySide6")
pytest.importorskip("pytestqt")

from test_gui_prediction_data import copy_workspace  # noqa: E402
from test_gui_wizard import WAIT_MS, fill_tiny  # noqa: E402

from bodyage_core.cohort import Workspace  # noqa: E402
from bodyage_gui.wizard.qt_training_wizard import QtTrainingWizard  # noqa: E402


@pytest.fixture
def root(tmp_path):
    return copy_workspace(tmp_path / "ws")


def test_greyed_grid_fields_show_the_chosen_grid(qtbot, root):
    from bodyage_core.training.workflow import make_spec

    wiz = QtTrainingWizard(root)
    qtbot.addWidget(wiz)
    m = wiz.model_page
    m.grid_combo.setCurrentIndex(m.grid_combo.findData("data"))
    with Workspace.open(root) as ws:
        spec = make_spec(ws, "resnet3d")            # what `bodyage train` derives
    spacing = [float(v) for v in m.spacing_edit.text().split(",")]
    shape = [int(v) for v in m.shape_edit.text().split(",")]
    # was "6, 4.464, 4.464" / "185, 87, 112" (the default grid) under "from the data"
    assert spacing == pytest.approx(list(spec.spacing_zyx), abs=1e-3)
    assert shape == list(spec.shape_zyx)
    assert not m.spacing_edit.isEnabled() and "first subject" in m.spacing_edit.toolTip()
    m.grid_combo.setCurrentIndex(m.grid_combo.findData("full"))
    assert m.spacing_edit.text() == "3, 2.232, 2.232" and m.shape_edit.text() == "370, 174, 224"
    m.grid_combo.setCurrentIndex(m.grid_combo.findData("custom"))
    assert m.spacing_edit.isEnabled()


def test_cancel_names_the_partial_folder_and_resume_finishes_the_run(qtbot, root):
    wiz = QtTrainingWizard(root)
    qtbot.addWidget(wiz)
    wiz.show()
    fill_tiny(wiz, "again", epochs=3)
    wiz.next()
    wiz.next()

    def cancel_after_first_member(ev):
        if ev.stage == "train" and wiz.outcome == "running" and "fold 2/2" in (ev.message or ""):
            wiz.cancel_training()

    wiz.next()                                  # the run page starts training
    wiz.worker.progress_changed.connect(cancel_after_first_member)
    qtbot.waitUntil(lambda: wiz.outcome == "cancelled", timeout=WAIT_MS)
    qtbot.waitUntil(lambda: not wiz.is_running(), timeout=10000)
    partial = root / "models" / "again.partial"
    assert partial.is_dir()
    msg = wiz.run_page.stage_label.text()
    assert str(partial) in msg and "<run>" not in msg        # was models/<run>.partial
    assert "--run again --resume" in msg
    # Resume: the finished member is kept, the run completes
    assert wiz.run_page.resume_button.isVisible()
    done_before = sorted(p.name for p in partial.glob("member_*.pt"))
    assert done_before == ["member_0.pt"]
    with qtbot.waitSignal(wiz.run_finished, timeout=WAIT_MS) as blocker:
        wiz.run_page.resume_button.click()
    assert blocker.args == ["again"]
    qtbot.waitUntil(lambda: not wiz.is_running(), timeout=10000)
    assert wiz.outcome == "finished" and not partial.exists()
    assert (root / "models" / "again" / "member_1.pt").exists()
    with Workspace.open(root) as ws:
        run = {r["run_id"]: r for r in ws.db.runs()}["again"]
        assert run["status"] == "complete"
        assert len(ws.db.predictions("again")) == 8
    wiz.accept()


def test_first_page_offers_to_resume_an_interrupted_run(qtbot, root):
    """An interrupted run of the name typed: Resume (with its settings) or Overwrite."""
    import json

    partial = root / "models" / "old.partial"
    partial.mkdir(parents=True)
    cfg = {"model": {"arch": "resnet3d", "width": 6}, "folds": 3, "members_per_fold": 2,
           "split_method": "random", "seed": 7,
           "train": {"loss": "l1", "epochs": 9, "batch_size": 2, "lr": 0.002},
           "input": {"spacing_zyx": [15.0, 12.0, 12.0], "shape_zyx": [16, 12, 12],
                     "image_hw": [64, 64]}}
    (partial / "config.json").write_text(json.dumps(cfg))
    wiz = QtTrainingWizard(root)
    qtbot.addWidget(wiz)
    c, m = wiz.cohort_page, wiz.model_page
    c.run_edit.setText("old")
    assert not c.isComplete() and "interrupted run" in c.cohort_label.text()
    assert not c.resume_check.isHidden()
    c.resume_check.setChecked(True)
    assert c.isComplete()
    assert c.folds_spin.value() == 3 and c.split_combo.currentData() == "random"
    assert c.seed_spin.value() == 7
    assert m.width_spin.value() == 6 and m.members_spin.value() == 2
    assert m.loss_combo.currentData() == "l1" and m.epochs_spin.value() == 9
    assert math.isclose(m.lr(), 0.002) and m.grid_combo.currentData() == "custom"
    s = wiz.settings()
    assert s["resume"] and not s["overwrite"]
    assert "resume the interrupted run" in wiz.summary_text()
