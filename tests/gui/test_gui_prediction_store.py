"""A prediction made in the viewer (Analysis > Predict) is written to the workspace's
``cohort.sqlite`` exactly as ``bodyage predict`` writes it, and the subject browser shows it."""

from __future__ import annotations

import pytest

pytest.importorskip("PySide6")
pytest.importorskip("pytestqt")

from PySide6 import QtCore  # noqa: E402
from test_gui_prediction_data import RUN, copy_workspace  # noqa: E402

from bodyage_core.cohort import Workspace  # noqa: E402
from bodyage_gui.panels.qt_analysis import install_analysis  # noqa: E402
from bodyage_gui.qt_main_window import QtMainWindow  # noqa: E402

WAIT_MS = 90_000


@pytest.fixture
def settings(tmp_path):
    return QtCore.QSettings(str(tmp_path / "settings.ini"), QtCore.QSettings.Format.IniFormat)


def _browser_row(win, sid):
    m = win.subject_browser.model
    return next(m.row_dict(r) for r in range(m.rowCount()) if m.row_dict(r)["subject_id"] == sid)


def _window_on_subject(qtbot, settings, root, sid):
    """A main window with the analysis tools (CPU, one thread), workspace ``root`` open on
    subject ``sid``; returns ``(window, prediction panel)``."""
    win = QtMainWindow(show_dialogs=False, enable_3d=False, settings=settings,
                       restore_settings=False)
    qtbot.addWidget(win)
    panel = install_analysis(win, warm_up_ms=None).prediction_panel
    panel.device, panel.torch_threads = "cpu", 1
    assert win.open_workspace(root, open_first=False), win.last_error
    assert win.open_subject(sid, wait=True), win.last_error
    return win, panel


def test_gui_prediction_is_stored_and_browser_row_updates(qtbot, settings, tmp_path):
    root = copy_workspace(tmp_path / "ws")
    with Workspace.open(root) as ws:
        sid = ws.db.subject_ids()[1]
        before = {p["subject_id"]: p for p in ws.db.predictions(RUN)}[sid]
        # forget this subject's stored prediction: the viewer must write it back
        with ws.db.transaction() as cur:
            cur.execute("DELETE FROM predictions WHERE subject_id = ?", (sid,))
    win, panel = _window_on_subject(qtbot, settings, root, sid)
    assert _browser_row(win, sid)["predicted"] is None
    with qtbot.waitSignal(panel.prediction_finished, timeout=WAIT_MS) as blocker:
        assert panel.predict()
    r = blocker.args[0]
    assert r.stored_row is not None and r.stored_row["run_id"] == RUN
    # the row in cohort.sqlite: what the GUI computed, and what `bodyage predict` had stored
    with Workspace.open(root) as ws:
        row = {p["subject_id"]: p for p in ws.db.predictions(RUN)}[sid]
    assert row["mean"] == pytest.approx(r.mean, abs=1e-6)
    assert row["sigma"] == pytest.approx(r.sigma, abs=1e-6)
    assert row["corrected"] == pytest.approx(r.corrected, abs=1e-6)
    assert row["gap"] == pytest.approx(r.gap, abs=1e-6)
    assert [m["mu"] for m in row["members"]] == pytest.approx(r.member_mu, abs=1e-6)
    assert row["fold"] == before["fold"] and row["split"] == before["split"]
    for key in ("mean", "sigma", "corrected", "gap"):
        assert row[key] == pytest.approx(before[key], abs=1e-3)
    # the browser row shows it (run unchanged: updated in place)
    shown = _browser_row(win, sid)
    assert shown["predicted"] == pytest.approx(r.corrected, abs=1e-6)
    assert shown["sigma"] == pytest.approx(r.sigma, abs=1e-6)
    assert shown["gap"] == pytest.approx(r.gap, abs=1e-6)
    assert "stored in cohort.sqlite" in panel.status_label.text()
    qtbot.waitUntil(lambda: not panel.is_running(), timeout=10000)
    win.close()


def test_cancelled_or_folder_run_prediction_is_not_stored(qtbot, settings, tmp_path):
    root = copy_workspace(tmp_path / "ws")
    with Workspace.open(root) as ws:
        sid = ws.db.subject_ids()[0]
        with ws.db.transaction() as cur:
            cur.execute("DELETE FROM predictions WHERE subject_id = ?", (sid,))
    win, panel = _window_on_subject(qtbot, settings, root, sid)
    # a run chosen as a folder is not a run of the cohort index: nothing is written
    panel.add_run_folder(root / "models" / RUN)
    with qtbot.waitSignal(panel.prediction_finished, timeout=WAIT_MS) as blocker:
        assert panel.predict()
    assert blocker.args[0].stored_row is None
    # a cancelled prediction writes nothing either
    panel.select_run(RUN)
    with qtbot.waitSignal(panel.prediction_cancelled, timeout=WAIT_MS):
        assert panel.predict()
        panel.cancel()
    with Workspace.open(root) as ws:
        assert sid not in {p["subject_id"] for p in ws.db.predictions(RUN)}
    assert _browser_row(win, sid)["predicted"] is None
    win.close()


def test_prediction_finishing_in_atlas_space_shows_maps_back_in_subject_space(
        qtbot, settings, tmp_path):
    import SimpleITK as sitk

    from bodyage_core.registration.transform import SubjectTransform

    root = copy_workspace(tmp_path / "ws")
    with Workspace.open(root) as ws:
        sid = ws.db.subject_ids()[2]
        subj = ws.db.get_subject(sid)
        from bodyage_gui.loading import load_for_viewer

        water = load_for_viewer(ws.resolve(subj.images["water"]))
        folder = ws.subject_dir(sid) / "atlas_G"   # an identity registration onto its own grid
        SubjectTransform(sitk.AffineTransform(3), water.shape, water.affine).save(folder)
        ws.db.set_registration(sid, "G", "ok", forward=ws.relative(folder))
        ws.db.set_image(sid, "to_atlas_G", ws.relative(folder))
    win, panel = _window_on_subject(qtbot, settings, root, sid)
    assert win.atlas_action.isEnabled()
    with qtbot.waitSignal(panel.prediction_finished, timeout=WAIT_MS):
        assert panel.predict()
        assert win.set_display_space("atlas", wait=True), win.last_error
    # in atlas space the subject-space maps are not put on the atlas grid ...
    assert win.display_space == "atlas"
    assert not any(lay.name == f"gradcam_signed_{RUN}" for lay in win.state.layers)
    assert "switch back to subject space" in panel.map_label.text()
    # ... they appear when the view is back in the subject's space
    assert win.set_display_space("subject")
    names = [lay.name for lay in win.state.layers]
    assert f"gradcam_signed_{RUN}" in names
    win.close()
