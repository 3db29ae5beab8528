"""The cohort panel (pytest-qt, offscreen): predicted-vs-chronological scatter (raw/corrected),
clicking a point opens that subject, accelerated/decelerated selection by threshold, the subgroup
MAE table, the region table and the accelerated/decelerated/difference maps in linked views, with
the age trend as a fourth linked view when it exists (or the message to build them first)."""

from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("PySide6")
pytest.importorskip("pytestqt")

from PySide6 import QtCore, QtWidgets  # noqa: E402
from test_gui_prediction_data import RUN, copy_workspace, tiny_workspace_root  # noqa: E402

from bodyage_core.evaluation import subgroup_table  # noqa: E402
from bodyage_gui.panels.qt_analysis import install_analysis  # noqa: E402
from bodyage_gui.panels.qt_cohort_panel import ACCELERATED_PEN, DECELERATED_PEN  # noqa: E402
from bodyage_gui.qt_main_window import QtMainWindow  # noqa: E402


@pytest.fixture(scope="session")
def tiny_ws():
    return tiny_workspace_root()


def open_window(qtbot, tmp_path, root):
    settings = QtCore.QSettings(str(tmp_path / "settings.ini"), QtCore.QSettings.Format.IniFormat)
    win = QtMainWindow(show_dialogs=False, enable_3d=False, settings=settings,
                       restore_settings=False)
    qtbot.addWidget(win)
    tools = install_analysis(win)
    win.resize(1300, 850)
    win.show()
    assert win.open_workspace(root, wait=True), win.last_error
    tools.show_cohort()
    return win, tools.cohort_panel


@pytest.fixture
def window(qtbot, tmp_path, tiny_ws):
    return open_window(qtbot, tmp_path, tiny_ws)


def test_scatter_raw_corrected_and_click_opens_subject(qtbot, window):
    win, panel = window
    preds = {p["subject_id"]: p for p in win.workspace.db.predictions(RUN)}
    assert panel.run == RUN and len(panel.scatter.data) == len(preds) == 8
    d = panel.scatter.data
    for sid, x, y in zip(d["data"], d["x"], d["y"]):
        assert x == pytest.approx(preds[sid]["age"]) and y == pytest.approx(
            preds[sid]["corrected"])
    assert "bias-corrected" in panel.plot.getPlotItem().getAxis("left").labelText
    panel.set_mode("raw")
    d = panel.scatter.data
    assert all(y == pytest.approx(preds[s]["mean"]) for s, y in zip(d["data"], d["y"]))
    assert "raw" in panel.plot.getPlotItem().getAxis("left").labelText
    # identity line spans the data; one legend entry per group present
    xs, ys = panel.identity.getData()
    assert np.allclose(xs, ys)
    groups = {f"{p['sex']}_{p['bmi_group']}" for p in preds.values()}
    assert set(panel.legend_groups) == groups
    assert all(g.replace("_", "&nbsp;") in panel.legend_label.text() for g in groups)
    # a real mouse click on a point opens that subject in the viewer
    target = next(s for s in d["data"] if s != win.current_subject)
    qtbot.wait(50)
    view_pos = panel.plot.mapFromScene(panel.point_scene_pos(target))
    with qtbot.waitSignal(panel.subject_clicked, timeout=5000) as blocker:
        qtbot.mouseClick(panel.plot.viewport(), QtCore.Qt.MouseButton.LeftButton, pos=view_pos)
    assert blocker.args == [target]
    assert win.wait_for_subject()
    assert win.current_subject == target and win.state.base_layer.name == target


def test_threshold_selection_counts_and_highlights(qtbot, window):
    win, panel = window
    gaps = {p["subject_id"]: p["gap"] for p in win.workspace.db.predictions(RUN)}
    panel.set_rule(threshold=3.0)                  # groups by a gap in years
    for thr in (0.0, 2.0, 5.0, 1000.0):
        with qtbot.waitSignal(panel.selection_changed, timeout=2000) as blocker:
            panel.threshold_spin.setValue(thr + 0.1)
            panel.threshold_spin.setValue(thr)
        acc = sorted(s for s, g in gaps.items() if g >= thr)
        dec = sorted(s for s, g in gaps.items() if g <= -thr)
        assert sorted(panel.classes["accelerated"]) == acc
        assert sorted(panel.classes["decelerated"]) == dec
        assert blocker.args == [len(acc), len(dec)]
        assert f"accelerated {len(acc)}" in panel.count_label.text()
        pens = {sid: p.color().getRgb()[:3] for sid, p in
                zip(panel.scatter.data["data"], panel.scatter.data["pen"])}
        assert all(pens[s] == ACCELERATED_PEN for s in acc)
        assert all(pens[s] == DECELERATED_PEN for s in dec)
    assert panel.classes["aligned"] and not panel.classes["accelerated"]  # at 1000 y


def test_subgroup_mae_table(window):
    win, panel = window
    rows = win.workspace.db.predictions(RUN)
    want = subgroup_table([r["age"] for r in rows], [r["mean"] for r in rows],
                          [r["sex"] for r in rows], [r["bmi_group"] for r in rows],
                          [r["corrected"] for r in rows])
    t = panel.mae_table
    head = [t.horizontalHeaderItem(j).text().replace("\n", " ")
            for j in range(t.columnCount())]
    assert head[:6] == ["sex", "BMI group", "n", "MAE raw", "MAE corrected", "MAE mean baseline"]
    got = {(t.item(i, 0).text(), t.item(i, 1).text()): i for i in range(t.rowCount())}
    assert len(got) == len(want)
    overall = got[("all", "all")]
    assert int(t.item(overall, 2).text()) == 8
    w = next(r for r in want if r["sex"] == "all" and r["bmi_group"] == "all")
    assert float(t.item(overall, 3).text()) == pytest.approx(w["mae_raw"], abs=5e-3)
    assert float(t.item(overall, 4).text()) == pytest.approx(w["mae_corrected"], abs=5e-3)
    ages = np.array([r["age"] for r in rows])
    assert float(t.item(overall, 5).text()) == pytest.approx(
        np.mean(np.abs(ages - ages.mean())), abs=5e-3)
    # QA pass: the same decimals down a column (was "5.48" over "9.029"), sorted by value
    col = [t.item(i, 3).text() for i in range(t.rowCount()) if t.item(i, 3).text()]
    assert all(len(c.split(".")[1]) == 2 for c in col if 1 <= abs(float(c)) < 100)
    t.sortItems(3)
    vals = [t.item(i, 3).data(QtCore.Qt.ItemDataRole.UserRole) for i in range(t.rowCount())]
    finite = [v for v in vals if v == v]
    assert finite == sorted(finite)


def test_population_maps_missing_gives_the_command(window):
    win, panel = window
    assert panel.show_gap_maps() is None
    assert "bodyage atlas maps" in win.last_error and RUN in win.last_error
    assert "bodyage atlas maps" in panel.region_message.text()
    assert panel.region_table.rowCount() == 0


_AFF = np.diag([8.0, 8.0, 10.0, 1.0])
_AFF[:3, 3] = (-80, -60, -300)


def _atlas_dir(root, group):
    from bodyage_core.explain.space import save_map

    adir = root / "atlases" / group
    adir.mkdir(parents=True, exist_ok=True)
    z, y, x = np.indices((60, 16, 20), dtype=float)
    save_map((z + y + x).astype(np.float32), adir / "template.nii.gz", _AFF)
    return adir


def _fake_age_trend(root, group, tag, n, p=0.01, sign=1.0, correction="none"):
    """An age trend as _age_trend_maps writes it (the thresholded map: 0 where p >= p_threshold)
    and its entry in ``population_<tag>.json``; returns the map."""
    from bodyage_core.atomic import write_json
    from bodyage_core.explain.space import save_map

    adir = _atlas_dir(root, group)
    z, y, x = np.indices((60, 16, 20), dtype=float)
    trend = sign * (np.exp(-((z - 45) ** 2 + (y - 8) ** 2 + (x - 6) ** 2) / 20.0)
                    - 0.5 * np.exp(-((z - 15) ** 2 + (y - 8) ** 2 + (x - 14) ** 2) / 20.0))
    trend[np.abs(trend) < 0.05] = 0.0
    stem = adir / f"population_{tag}"
    save_map(trend.astype(np.float32), f"{stem}_age_trend.nii.gz", _AFF)
    js = root / "atlases" / group / f"population_{tag}.json"
    info = json.loads(js.read_text()) if js.exists() else {"subgroups": {}}
    info["subgroups"]["age_trend"] = {"n": n, "p_threshold": p, "correction": correction,
                                      "subjects": [],
                                      "files": {"map": f"{stem.name}_age_trend.nii.gz"}}
    write_json(js, info)
    return trend


def _fake_atlas_outputs(root, group="F_healthy"):
    """The files build_population_maps / compare_gap_groups write, with known content."""
    from bodyage_core.atlas.regions import write_shares
    from bodyage_core.atomic import write_json
    from bodyage_core.explain.space import save_map

    adir = _atlas_dir(root, group)
    aff = _AFF
    z, y, x = np.indices((60, 16, 20), dtype=float)
    acc = np.exp(-((z - 40) ** 2 + (y - 8) ** 2 + (x - 10) ** 2) / 30.0)
    dec = np.exp(-((z - 20) ** 2 + (y - 8) ** 2 + (x - 10) ** 2) / 30.0)
    save_map(acc.astype(np.float32), adir / f"population_{RUN}_accelerated_mean.nii.gz", aff)
    save_map(dec.astype(np.float32), adir / f"population_{RUN}_decelerated_mean.nii.gz", aff)
    write_json(adir / f"population_{RUN}.json", {
        "gap_threshold": 2.0, "subgroups": {"accelerated": {"n": 3}, "decelerated": {"n": 2}}})
    shares = {group: [{"rank": 1, "label": 3, "region": "spine", "share": 0.6,
                       "importance": 1.0, "voxels": 10, "volume_fraction": 0.2,
                       "enrichment": 3.0},
                      {"rank": 2, "label": 4, "region": "liver", "share": 0.4,
                       "importance": 0.5, "voxels": 20, "volume_fraction": 0.4,
                       "enrichment": 1.0}]}
    write_shares(shares, root / "reports" / f"regions_{RUN}")
    return acc - dec


def test_population_maps_side_by_side_in_linked_views(qtbot, tmp_path):
    root = copy_workspace(tmp_path / "ws")
    diff = _fake_atlas_outputs(root)
    win, panel = open_window(qtbot, tmp_path, root)
    assert panel.region_table.rowCount() == 2
    assert panel.region_table.item(0, 2).text() == "spine"
    dlg = panel.show_gap_maps()
    assert dlg is not None, win.last_error
    qtbot.addWidget(dlg)
    titles = list(dlg.states)
    assert titles[0].startswith("accelerated (n=3)") and titles[1].startswith("decelerated (n=2)")
    assert "computed here" in titles[2]                    # no compare_* file: acc - dec
    states = list(dlg.states.values())
    assert np.allclose(states[2].layers[1].volume.data[0], diff, atol=1e-5)
    assert states[2].layers[1].colormap == "bwr"
    assert all(st.base_layer.name == "template" for st in states)
    views = dlg.slice_views()
    assert len(views) == 3 and all(v.plane == "coronal" for v in views)
    # linked: moving the cursor in one view's state moves the other two
    states[0].set_cursor_voxel((40, 8, 10))
    for st in states[1:]:
        assert np.allclose(st.cursor, states[0].cursor)
        assert st.cursor_voxel() == (40, 8, 10)
    states[2].set_convention("neurological")
    assert all(st.convention == "neurological" for st in states)
    dlg.plane_combo.setCurrentText("axial")
    assert all(v.plane == "axial" for v in dlg.slice_views())
    # no age trend file: no fourth view
    assert dlg.age_trend is None and "age trend" not in dlg.info.text()
    dlg.close()


def test_age_trend_is_a_fourth_linked_view(qtbot, tmp_path):
    from bodyage_gui.views.qt_colorbar import QtColorBar

    root = copy_workspace(tmp_path / "ws")
    _fake_atlas_outputs(root)
    # both kinds: the signed gradient x input one is preferred over the Grad-CAM one
    _fake_age_trend(root, "F_healthy", RUN, n=7, p=0.05, sign=-1.0)
    signed = _fake_age_trend(root, "F_healthy", f"gradxinput_signed_{RUN}", n=8, p=0.01)
    # a second group with an age trend but no gap-class maps (e.g. only --kind run)
    only = _fake_age_trend(root, "M_healthy", RUN, n=5, p=0.001, correction="tfce")
    win, panel = open_window(qtbot, tmp_path, root)
    dlg = panel.show_gap_maps()
    assert dlg is not None, win.last_error
    qtbot.addWidget(dlg)
    titles = list(dlg.states)
    assert len(titles) == 4 and titles[0].startswith("accelerated (n=3)")
    assert "age trend" in titles[3] and "n=8" in titles[3] and "p < 0.01" in titles[3]
    assert "signed gradient × input" in titles[3]
    assert dlg.age_trend["tag"] == f"gradxinput_signed_{RUN}"
    assert dlg.age_trend["path"].name == f"population_gradxinput_signed_{RUN}_age_trend.nii.gz"
    states = list(dlg.states.values())
    layer = states[3].layers[1]
    assert states[3].base_layer.name == "template"
    shown = layer.volume.data[0]
    assert np.allclose(np.nan_to_num(shown), signed, atol=1e-6)
    assert np.isnan(shown[signed == 0]).all()  # not significant: transparent (NaN), no threshold
    assert layer.threshold is None
    assert layer.colormap == "bwr" and layer.vmin == pytest.approx(-layer.vmax) and layer.vmax > 0
    info = dlg.info.text()
    assert "signed gradient × input" in info and "n=8" in info and "p < 0.01" in info
    assert "voxel-wise p < 0.01 (uncorrected)" in info and "TFCE" not in titles[3]
    assert "all of them" in info
    views = dlg.slice_views()
    assert len(views) == 4 and all(v.plane == "coronal" for v in views)
    # the caption above the fourth view, shown as plain text
    labels = [lab.text() for lab in dlg.views[3].findChildren(QtWidgets.QLabel)]
    assert titles[3] in labels
    assert dlg.views[3].findChildren(QtColorBar)
    # linked both ways: the age trend view moves the others and follows them
    states[3].set_cursor_voxel((45, 8, 6))
    assert all(st.cursor_voxel() == (45, 8, 6) for st in states)
    states[0].set_cursor_voxel((15, 8, 14))
    assert states[3].cursor_voxel() == (15, 8, 14)
    states[3].set_convention("neurological")
    assert all(st.convention == "neurological" for st in states)
    dlg.plane_combo.setCurrentText("sagittal")
    assert [v.plane for v in dlg.slice_views()] == ["sagittal"] * 4
    # a group with only the age trend: that view alone, and the command for the gap maps
    dlg.group_combo.setCurrentText("M_healthy")
    titles = list(dlg.states)
    assert len(titles) == 1 and "n=5" in titles[0] and "p < 0.001" in titles[0]
    # a TFCE-corrected trend says so, and is not called uncorrected
    assert "FWE p < 0.001, TFCE" in titles[0]
    assert "family-wise" in dlg.info.text() and "uncorrected" not in dlg.info.text()
    assert "Grad-CAM" in titles[0] and dlg.age_trend["tag"] == RUN
    assert np.allclose(np.nan_to_num(list(dlg.states.values())[0].layers[1].volume.data[0]),
                       only, atol=1e-6)
    assert len(dlg.slice_views()) == 1
    assert f"bodyage atlas maps WORKSPACE --run {RUN}" in dlg.info.text()
    assert "Age trend" in dlg.windowTitle()
    dlg.group_combo.setCurrentText("F_healthy")
    assert len(dlg.slice_views()) == 4
    dlg.close()


def test_age_trend_alone_opens_the_dialog(qtbot, tmp_path):
    root = copy_workspace(tmp_path / "ws")
    _fake_age_trend(root, "F_healthy", f"gradxinput_signed_{RUN}", n=6)
    win, panel = open_window(qtbot, tmp_path, root)
    dlg = panel.show_gap_maps()
    assert dlg is not None, win.last_error
    qtbot.addWidget(dlg)
    assert len(dlg.states) == 1 and "age trend (n=6" in next(iter(dlg.states))
    assert "No accelerated / decelerated" in dlg.info.text()
    dlg.close()
