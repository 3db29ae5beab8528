"""Honest population views (issue 14 item 3): every statistical map in the population dialog
shows n, the test, the number of significant voxels and the smallest p(FWE); the FWE < 0.05
mask is offered (and on: nothing significant shows no vivid map, and says so); accelerated /
decelerated agers have one definition, the one the maps were built with, shown in the dialog
and in the cohort panel."""

from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("PySide6")
pytest.importorskip("pytestqt")

from test_gui_cohort import _AFF, _fake_age_trend, _fake_atlas_outputs, open_window  # noqa: E402
from test_gui_prediction_data import RUN, copy_workspace  # noqa: E402


def _fake_compare(root, group="F_healthy", p_min=0.65, significant=None, gate=None):
    """What `bodyage compare` writes: diff, p(FWE) maps and the summary JSON."""
    from bodyage_core.atomic import write_json
    from bodyage_core.explain.space import save_map

    adir = root / "atlases" / group
    stem = adir / f"compare_{RUN}_accelerated_vs_decelerated"
    z, y, x = np.indices((60, 16, 20), dtype=float)
    diff = (np.exp(-((z - 40) ** 2 + (y - 8) ** 2 + (x - 10) ** 2) / 30.0)
            - np.exp(-((z - 20) ** 2 + (y - 8) ** 2 + (x - 10) ** 2) / 30.0))
    p = np.full(diff.shape, 1.0)
    p[np.abs(diff) > 0.3] = p_min
    if significant is not None:
        p[significant] = 0.01
    save_map(diff.astype(np.float32), f"{stem}_diff.nii.gz", _AFF)
    save_map(p.astype(np.float32), f"{stem}_p_fwe.nii.gz", _AFF)
    n_sig = int((p <= 0.05).sum())
    write_json(f"{stem}.json", {"n_accelerated": 3, "n_decelerated": 2, "statistic": "t",
                                "alpha": 0.05, "min_p_fwe": float(p.min()),
                                "significant_voxels": n_sig, "max_stat": 2.1,
                                **({"gate": gate} if gate else {})})
    return diff, p


def _dialog(qtbot, win, panel):
    dlg = panel.show_gap_maps()
    assert dlg is not None, win.last_error
    qtbot.addWidget(dlg)
    return dlg


def test_nothing_significant_is_said_and_not_shown_as_an_effect(qtbot, tmp_path):
    root = copy_workspace(tmp_path / "ws")
    _fake_atlas_outputs(root)
    diff, _p = _fake_compare(root, p_min=0.65)
    win, panel = open_window(qtbot, tmp_path, root)
    dlg = _dialog(qtbot, win, panel)
    titles = list(dlg.states)
    t = titles[2]
    # was "difference (acc − dec)" and a vivid map
    assert "n=3 vs 2" in t and "Welch t" in t and "0 voxels p(FWE) ≤ 0.05" in t
    assert "min p(FWE) 0.65" in t
    assert "mean map, no test" in titles[0] and "n=3" in titles[0]
    assert dlg.verdict.isVisibleTo(dlg) and "Nothing in the difference is significant" in \
        dlg.verdict.text() and "0.65" in dlg.verdict.text()
    # the FWE < 0.05 mask is offered and on: nothing passes, so the view shows the template
    assert dlg.fwe_check.isEnabled() and dlg.fwe_check.isChecked()
    shown = list(dlg.states.values())[2].layers[1].volume.data[0]
    assert np.isnan(shown).all()
    # unticked: the unthresholded difference, labelled so
    dlg.fwe_check.setChecked(False)
    shown = list(dlg.states.values())[2].layers[1].volume.data[0]
    assert np.allclose(shown, diff, atol=1e-5)
    assert "unthresholded" in list(dlg.states)[2]
    dlg.close()


def test_fwe_mask_keeps_the_significant_voxels(qtbot, tmp_path):
    root = copy_workspace(tmp_path / "ws")
    _fake_atlas_outputs(root)
    sig = np.zeros((60, 16, 20), bool)
    sig[38:43, 6:10, 8:12] = True
    diff, p = _fake_compare(root, significant=sig)
    win, panel = open_window(qtbot, tmp_path, root)
    dlg = _dialog(qtbot, win, panel)
    t = list(dlg.states)[2]
    assert f"{int(sig.sum())} voxels p(FWE) ≤ 0.05" in t and "min p(FWE) 0.01" in t
    assert "p(FWE) < 0.05 only" in t and not dlg.verdict.text()
    shown = list(dlg.states.values())[2].layers[1].volume.data[0]
    assert np.array_equal(np.isfinite(shown), p < 0.05)
    assert np.allclose(shown[sig], diff[sig], atol=1e-5)
    dlg.close()


def test_a_shut_gate_is_said_with_its_counts(qtbot, tmp_path):
    from bodyage_core.atlas.cohort_maps import gap_gate

    root = copy_workspace(tmp_path / "ws")
    _fake_atlas_outputs(root)
    gate = gap_gate([0.5, -1.0, 2.0, 0.0, 1.0], [1.0] * 5, 0.95)   # 1 of 5 outside
    assert not gate["open"]
    _fake_compare(root, p_min=0.65, gate=gate)
    win, panel = open_window(qtbot, tmp_path, root)
    dlg = _dialog(qtbot, win, panel)
    t = list(dlg.states)[2]
    assert "gate shut: 1/5 outside 95 % (chance 0.25), p 0.23" in t
    assert "gate is shut" in dlg.verdict.text() and "no more than chance" in dlg.verdict.text()
    assert "Nothing in the difference" not in dlg.verdict.text()
    dlg.close()


def test_untested_difference_says_so(qtbot, tmp_path):
    root = copy_workspace(tmp_path / "ws")
    _fake_atlas_outputs(root)                       # no `bodyage compare` outputs
    win, panel = open_window(qtbot, tmp_path, root)
    dlg = _dialog(qtbot, win, panel)
    assert "not tested" in list(dlg.states)[2]
    assert "bodyage compare accelerated decelerated" in dlg.verdict.text()
    assert not dlg.fwe_check.isEnabled()
    dlg.close()


def test_one_definition_of_the_groups_where_they_are_used(qtbot, tmp_path):
    from bodyage_core.atlas.stats import describe_gap_rule

    root = copy_workspace(tmp_path / "ws")
    _fake_atlas_outputs(root)                       # maps built with gap_threshold 2.0
    win, panel = open_window(qtbot, tmp_path, root)
    # the panel uses the maps' rule (it used +-3 y whatever the maps were built with)
    assert panel.rule == (2.0, None, None)
    rule = describe_gap_rule(2.0)
    assert rule in panel.count_label.text() and "were built with" in panel.count_label.text()
    gaps = {p["subject_id"]: p["gap"] for p in win.workspace.db.predictions(RUN)}
    assert sorted(panel.classes["accelerated"]) == sorted(s for s, g in gaps.items()
                                                           if g >= 2.0)
    dlg = _dialog(qtbot, win, panel)
    assert rule in dlg.info.text()
    dlg.close()
    # another rule chosen in the panel: it says the maps were built with the other one
    panel.set_rule(quantile=0.25)
    assert describe_gap_rule(None, 0.25) in panel.count_label.text()
    assert "another rule: " + rule in panel.count_label.text()
    # maps built by quartile (the atlas default): the panel follows
    js = root / "atlases" / "F_healthy" / f"population_{RUN}.json"

    def maps_built_with(**rule):
        """Rewrite the maps' JSON as built by ``rule``; the panel, on another rule, reloads."""
        info = json.loads(js.read_text())
        for k in ("gap_threshold", "gap_quantile", "gap_interval"):
            info.pop(k, None)
        info.update(rule)
        js.write_text(json.dumps(info))
        panel._maps_rule = None
        panel.set_rule(threshold=3.0)
        panel.reload()

    maps_built_with(gap_quantile=0.25)
    assert panel.rule == (None, 0.25, None)
    assert "top 25 %" in panel.count_label.text()
    # maps built by the subjects' own 95 % interval: the panel follows, and its groups are the
    # gaps beyond 1.96 sigma
    maps_built_with(gap_interval=0.95)
    assert panel.rule == (None, None, 0.95)
    assert describe_gap_rule(None, None, 0.95) in panel.count_label.text()
    assert "were built with" in panel.count_label.text()
    # each subject's sigma set so that its gap is 1.5 or 3 sigma: only the latter are outside
    far = set()
    for i, r in enumerate(panel.rows):
        r["sigma"] = abs(r["gap"]) / (3.0 if i % 2 else 1.5)
        if i % 2:
            far.add(r["subject_id"])
    panel.set_rule(interval=0.95)
    acc = sorted(r["subject_id"] for r in panel.rows if r["subject_id"] in far and r["gap"] > 0)
    dec = sorted(r["subject_id"] for r in panel.rows if r["subject_id"] in far and r["gap"] < 0)
    assert acc and dec
    assert sorted(panel.classes["accelerated"]) == acc
    assert sorted(panel.classes["decelerated"]) == dec
    assert len(panel.classes["aligned"]) == len(panel.rows) - len(acc) - len(dec)
    assert panel.interval_spin.isVisibleTo(panel) and not panel.quantile_spin.isVisibleTo(panel)


def test_age_trend_shows_its_test_kept_voxels_and_smallest_p(qtbot, tmp_path):
    from bodyage_core.explain.space import save_map

    root = copy_workspace(tmp_path / "ws")
    trend = _fake_age_trend(root, "F_healthy", RUN, n=9, p=0.01)
    t = np.zeros_like(trend)
    t[trend != 0] = 4.0
    save_map(t.astype(np.float32), root / "atlases" / "F_healthy" /
             f"population_{RUN}_age_trend_t.nii.gz", _AFF)
    win, panel = open_window(qtbot, tmp_path, root)
    dlg = _dialog(qtbot, win, panel)
    title = list(dlg.states)[0]
    from scipy import stats as sps

    minp = 2 * sps.t.sf(4.0, 9 - 2)
    assert "n=9" in title and "voxel-wise t, uncorrected" in title
    assert f"{int(np.count_nonzero(trend))} voxels p < 0.01" in title
    assert f"min p {minp:.3g}" in title
    assert dlg.age_trend["min_p"] == pytest.approx(minp, rel=1e-4)
    dlg.close()
