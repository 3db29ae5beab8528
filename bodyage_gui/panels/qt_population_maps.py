"""Population maps of one atlas group in linked views: the accelerated and decelerated agers'
mean maps, their difference, and the age trend of the group's maps, over the group's template.

Every statistical map says what it is and what the test found: the
difference shows n per group, the test (Welch t, permutation, FWE by the max statistic), the
number of voxels at p(FWE) <= alpha and the smallest p(FWE), as ``bodyage compare`` wrote them,
and offers the FWE < 0.05 mask (on by default: where nothing is significant the view shows the
template only and says so, instead of a vivid map of noise); a difference without a test says
it is untested. The age trend shows n, the test (voxel-wise t, uncorrected, or TFCE with FWE),
the voxels kept and its smallest p. The groups are named by the one rule
(:func:`bodyage_core.atlas.stats.describe_gap_rule`) the maps were built with.

Every map is displayed by the viewer's one rule for maps on top,
:func:`bodyage_core.viewer.layers.importance_overlay` (opacity 0.5, thresholded on the map's
upper quantiles; the two group means share one range and threshold; a map already masked by
its test, FWE or the age trend's p, shows every kept voxel).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
from PySide6 import QtCore, QtGui, QtWidgets

from bodyage_core.viewer import PLANES, ViewerState
from bodyage_core.viewer.layers import importance_overlay
from bodyage_core.volume import Volume
from bodyage_gui.workers import analysis_strings as text

_Qt = QtCore.Qt
#: the FWE level of the mask offered
ALPHA = 0.05


def gap_map_groups(ws, run: str) -> list[str]:
    """Atlas groups that have both the accelerated and the decelerated population map of
    ``run``."""
    root = ws.atlases_root
    if not root.is_dir():
        return []
    out = []
    for d in sorted(p for p in root.iterdir() if p.is_dir()):
        if all(ws.population_map(d.name, run, c).exists()
               for c in ("accelerated", "decelerated")):
            out.append(d.name)
    return out


def age_trend_file(ws, group: str, run: str) -> tuple[Path, str, str] | None:
    """The age trend map of ``run`` in atlas ``group`` as ``(path, tag, source)``: of the
    signed gradient x input maps against the atlas (``population_gradxinput_signed_vs_atlas_
    <run>_age_trend.nii.gz``, the one the age trend is best read from), else against zero,
    else of the Grad-CAM maps (``population_<run>_age_trend.nii.gz``); ``None`` when none
    exists."""
    for tag, source in text.AGE_TREND_SOURCES:
        tag = tag.format(run=run)
        path = ws.age_trend_map(group, tag)
        if path.exists():
            return path, tag, source
    return None


def population_map_groups(ws, run: str) -> list[str]:
    """Atlas groups with something for the maps dialog: both gap-class maps of ``run``
    (:func:`gap_map_groups`) or an age trend (:func:`age_trend_file`)."""
    root = ws.atlases_root
    if not root.is_dir():
        return []
    gap = set(gap_map_groups(ws, run))
    return [d.name for d in sorted(p for p in root.iterdir() if p.is_dir())
            if d.name in gap or age_trend_file(ws, d.name, run) is not None]


def maps_rule(ws, run: str) -> tuple[float | None, float | None, float | None] | None:
    """``(gap_threshold, gap_quantile, gap_interval)`` the population maps of ``run`` were
    built with (the first group that says; the atlas module's default, the quartile, when it
    says none); None when no population maps of the run exist."""
    root = ws.atlases_root
    if not root.is_dir():
        return None
    for d in sorted(p for p in root.iterdir() if p.is_dir()):
        info = _read_json(ws.population_json(d.name, run))
        if info:
            return built_rule(info)
    return None


def built_rule(info: dict[str, Any]) -> tuple[float | None, float | None, float | None]:
    """``(threshold, quantile, interval)`` a population map JSON says it was built with."""
    from bodyage_core.atlas.stats import gap_rule

    return gap_rule(*(info.get(k) for k in ("gap_threshold", "gap_quantile", "gap_interval")))


def compare_info(ws, group: str, run: str) -> dict[str, Any] | None:
    """What ``bodyage compare`` found for a group (``compare_<run>_..._vs_...json``), with the
    path of its p(FWE) map; None when the comparison was not run."""
    info = _read_json(ws.compare_file(group, run))
    if not info or "min_p_fwe" not in info:
        return None
    p_map = ws.compare_file(group, run, "_p_fwe.nii.gz")
    info["p_fwe_path"] = p_map if p_map.exists() else None
    return info


def trend_stats(path: Path, entry: dict[str, Any]) -> dict[str, Any]:
    """Voxels kept and the smallest p of an age trend: from its thresholded map and, for the
    uncorrected test, its t map (``_t``: p = 2 sf(|t|, n - 2)); TFCE's FWE p is not stored."""
    from bodyage_gui.loading import load_for_viewer

    out: dict[str, Any] = {"kept": entry.get("voxels_kept"), "min_p": None}
    if out["kept"] is None:
        try:
            out["kept"] = int(np.count_nonzero(np.nan_to_num(load_for_viewer(path).data)))
        except (OSError, ValueError):
            pass
    n = entry.get("n")
    t_path = path.with_name(path.name.replace("_age_trend.nii.gz", "_age_trend_t.nii.gz"))
    if entry.get("correction") != "tfce" and isinstance(n, int) and n > 2 and t_path.exists():
        from scipy import stats as sps

        t = np.abs(np.nan_to_num(load_for_viewer(t_path).data))
        out["min_p"] = float(2.0 * sps.t.sf(float(t.max()), n - 2)) if t.size else None
    return out


class QtGapMapsDialog(QtWidgets.QDialog):
    """Accelerated, decelerated and difference population maps of one atlas group over its
    template, and the age trend of the group's maps when it has one (:func:`age_trend_file`),
    in slice views that share one cursor (click in one, all follow) and one display
    convention. A group with an age trend but no gap-class maps shows the age trend alone.

    Each view follows its own :class:`ViewerState` (same template base, a different map);
    a cursor or convention change in one is written to the others, so they stay linked.
    """

    def __init__(self, ws, run: str, groups: list[str], group: str | None = None,
                 parent: QtWidgets.QWidget | None = None):
        super().__init__(parent)
        self.ws = ws
        self.run = run
        self.setModal(False)
        self.resize(1100, 560)
        self.states: dict[str, ViewerState] = {}
        self.views: list[QtWidgets.QWidget] = []
        self._syncing = False
        self.group_combo = QtWidgets.QComboBox()
        self.group_combo.addItems(groups)
        self.plane_combo = QtWidgets.QComboBox()
        self.plane_combo.addItems(list(PLANES))
        self.plane_combo.setCurrentText("coronal")
        self.fwe_check = QtWidgets.QCheckBox(f"difference: only p(FWE) < {ALPHA:g}")
        self.fwe_check.setChecked(True)
        self.fwe_check.setToolTip("show the difference only where the permutation test "
                                  "(family-wise error, max statistic) finds it significant")
        self.fwe_check.toggled.connect(lambda _on: self.load_group(
            self.group_combo.currentText()))
        self.info = QtWidgets.QLabel("")
        self.info.setWordWrap(True)
        self.info.setTextFormat(_Qt.TextFormat.PlainText)
        #: what the statistics say, prominently (e.g. nothing is significant)
        self.verdict = QtWidgets.QLabel("")
        self.verdict.setWordWrap(True)
        self.verdict.setTextFormat(_Qt.TextFormat.PlainText)
        self.verdict.setStyleSheet("color: #b05a00; font-weight: bold;")
        #: the age trend shown (``path``, ``tag``, ``source``, ``n``, ``p_threshold``), or None
        self.age_trend: dict[str, Any] | None = None
        #: the comparison shown (``bodyage compare``'s figures), or None
        self.comparison: dict[str, Any] | None = None
        top = QtWidgets.QHBoxLayout()
        top.addWidget(QtWidgets.QLabel("Group"))
        top.addWidget(self.group_combo)
        top.addWidget(QtWidgets.QLabel("Plane"))
        top.addWidget(self.plane_combo)
        top.addWidget(self.fwe_check)
        top.addStretch(1)
        self.grid = QtWidgets.QGridLayout()
        lay = QtWidgets.QVBoxLayout(self)
        lay.addLayout(top)
        lay.addWidget(self.verdict)
        lay.addWidget(self.info)
        lay.addLayout(self.grid, 1)
        self.group_combo.currentTextChanged.connect(self.load_group)
        self.plane_combo.currentTextChanged.connect(lambda _p: self._build_views())
        self.load_group(group if group in groups else groups[0])
        if group in groups:
            self.group_combo.setCurrentText(group)
        if len(self.states) != 3:  # the age trend alone, or beside the three gap views
            self.resize(600 if len(self.states) == 1 else 1400, 600)

    def load_group(self, group: str) -> None:
        """Read the template and the maps of ``group`` (all before showing any)."""
        from bodyage_gui.loading import load_for_viewer

        adir = self.ws.atlas_dir(group)
        template = load_for_viewer(adir / "template.nii.gz") if (
            adir / "template.nii.gz").exists() else None
        maps: dict[str, tuple[str, Volume, dict[str, Any]]] = {}
        info_parts: list[str] = []
        verdicts: list[str] = []
        has_gap = group in gap_map_groups(self.ws, self.run)
        self.comparison = None
        if has_gap:
            info_parts.append(self._gap_maps(adir, group, maps, verdicts))
        self.fwe_check.setEnabled(bool(self.comparison and self.comparison.get("p_fwe_path")))
        trend = age_trend_file(self.ws, group, self.run)
        self.age_trend = None
        if trend is not None:
            info_parts.append(self._age_trend_map(adir, trend, maps, verdicts))
        if not has_gap:
            info_parts.append(text.NO_GAP_MAPS_GROUP.format(run=self.run, group=group))
        states = {}
        for title, (name, vol, disp) in maps.items():
            st = ViewerState()
            if template is not None:
                st.add_layer(template, "template", kind="image")
            st.add_layer(vol, name, **disp)
            states[title] = st
        self._disconnect()
        self.states = states
        for st in states.values():
            st.events.cursor_changed.connect(lambda c, src=st: self._sync_cursor(src, c))
            st.events.convention_changed.connect(lambda c, src=st: self._sync_convention(src, c))
        title = text.GAP_MAPS_TITLE if has_gap else text.AGE_TREND_MAPS_TITLE
        self.setWindowTitle(title.format(group=group, run=self.run))
        self.info.setText(" ".join(info_parts) + (text.LINKED_VIEWS if len(states) > 1 else ""))
        self.verdict.setText(" ".join(verdicts))
        self.verdict.setVisible(bool(verdicts))
        self._build_views()

    def _gap_maps(self, adir: Path, group: str,
                  maps: dict[str, tuple[str, Volume, dict[str, Any]]],
                  verdicts: list[str]) -> str:
        """Add the accelerated, decelerated and difference maps to ``maps``; their caption."""
        from bodyage_core.atlas.stats import describe_gap_rule
        from bodyage_gui.loading import load_for_viewer

        ws = self.ws
        acc = load_for_viewer(ws.population_map(group, self.run, "accelerated"))
        dec = load_for_viewer(ws.population_map(group, self.run, "decelerated"))
        diff_path = ws.compare_file(group, self.run, "_diff.nii.gz")
        computed = not diff_path.exists()
        diff = (Volume(acc.data - dec.data, acc.affine, ("diff",)) if computed
                else load_for_viewer(diff_path))
        info = _read_json(ws.population_json(group, self.run))
        subs = info.get("subgroups", {})
        n_acc = subs.get("accelerated", {}).get("n", "?")
        n_dec = subs.get("decelerated", {}).get("n", "?")
        rule = describe_gap_rule(*built_rule(info))
        # the viewer's one rule for maps on top, on both maps at once: one colour range and
        # one threshold, so that the two groups compare
        both = importance_overlay(np.concatenate([np.ravel(acc.data[0]), np.ravel(dec.data[0])]))
        maps[f"accelerated (n={n_acc})\nmean map, no test"] = ("accelerated", acc, both)
        maps[f"decelerated (n={n_dec})\nmean map, no test"] = ("decelerated", dec, dict(both))
        cmp = None if computed else compare_info(ws, group, self.run)
        tested = False
        self.comparison = cmp
        if cmp is None:
            title = ("difference (acc − dec)" + (", computed here" if computed else "")
                     + "\nnot tested")
            verdicts.append(text.DIFF_UNTESTED.format(run=self.run))
        else:
            sig, minp = int(cmp["significant_voxels"]), float(cmp["min_p_fwe"])
            alpha = float(cmp.get("alpha", ALPHA))
            test = text.TEST_NAMES.get(cmp.get("statistic", "t"), cmp.get("statistic", "t"))
            title = (f"difference (acc − dec), {test}\n"
                     f"n={cmp['n_accelerated']} vs {cmp['n_decelerated']}: {sig} voxels "
                     f"p(FWE) ≤ {alpha:g}, min p(FWE) {minp:.3g}")
            gate = cmp.get("gate")
            if gate and gate.get("p") is not None:
                title += "\n" + text.GATE_LINE.format(
                    state="open" if gate.get("open") else "shut", outside=gate["outside"],
                    n=gate["n"], c=100 * gate["interval"], expected=gate["expected"],
                    p=f"{gate['p']:.2g}")
            if gate and not gate.get("open", True):
                verdicts.append(text.GATE_SHUT.format(reason=gate["reason"]))
            elif sig == 0:
                verdicts.append(text.NOTHING_SIGNIFICANT.format(alpha=alpha, minp=minp))
            if self.fwe_check.isChecked() and cmp.get("p_fwe_path") is not None:
                p = load_for_viewer(cmp["p_fwe_path"]).data[0]
                shown = np.where(p < ALPHA, diff.data[0], np.nan).astype(np.float32)
                diff = Volume(shown[None], diff.affine, diff.channels, dict(diff.provenance))
                tested = True
                title += f"\nshown: p(FWE) < {ALPHA:g} only"
            else:
                title += "\nshown: unthresholded"
        maps[title] = ("difference", diff, importance_overlay(diff.data[0], signed=True,
                                                              tested=tested))
        return (f"Population Grad-CAM maps of run {self.run}, group {group}; groups by the "
                f"rule the maps were built with — {rule} (`bodyage atlas maps`). The "
                "accelerated and decelerated maps share one colour range; difference diverging "
                "(red: more importance in accelerated agers).")

    def _age_trend_map(self, adir: Path, trend: tuple[Path, str, str],
                       maps: dict[str, tuple[str, Volume, dict[str, Any]]],
                       verdicts: list[str]) -> str:
        """Add the age trend map to ``maps``; its caption. Diverging, centred on 0; the zeros
        (voxels that did not pass the p threshold) are shown as NaN, i.e. transparent, rather
        than hidden by a threshold of about 0 (whose two markers would overlap on the colour
        bar); the range is the 95th percentile of the kept ``|values|`` (a sparse map whose
        99.5th percentile would leave most kept voxels near white)."""
        from bodyage_gui.loading import load_for_viewer

        path, tag, source = trend
        vol = load_for_viewer(path)
        data = np.asarray(vol.data, np.float32)
        vol = Volume(np.where(data == 0, np.float32(np.nan), data), vol.affine, vol.channels,
                     dict(vol.provenance))
        entry = _read_json(self.ws.population_json(adir.name, tag)).get("subgroups", {}).get(
            "age_trend", {})
        n = entry.get("n", "?")
        p_thr = entry.get("p_threshold")
        tfce = entry.get("correction") == "tfce"
        p = ((text.AGE_TREND_P_TFCE if tfce else text.AGE_TREND_P).format(p=p_thr)
             if isinstance(p_thr, (int, float)) else text.AGE_TREND_UNTHRESHOLDED)
        top = _robust_max(vol, absolute=True, percentile=95.0)
        st = trend_stats(path, entry)
        kept = st["kept"] if st["kept"] is not None else "?"
        stats = (text.TREND_STATS_TFCE if tfce else text.TREND_STATS).format(
            kept=kept, p=p, minp="not stored" if st["min_p"] is None else f"{st['min_p']:.3g}")
        maps[text.AGE_TREND_VIEW.format(n=n, p=p, source=source) + "\n" + stats] = (
            "age_trend", vol, importance_overlay(vol.data[0], signed=True, tested=True))
        self.age_trend = {"path": path, "tag": tag, "source": source, "n": n,
                          "p_threshold": p_thr, "voxels_kept": st["kept"],
                          "min_p": st["min_p"]}
        kept_how = (text.AGE_TREND_KEPT["tfce" if tfce else "none"].format(p=p)
                    if isinstance(p_thr, (int, float)) else p)
        caption = text.AGE_TREND_INFO.format(source=source, file=path.name, n=n, kept=kept_how)
        if top <= 0:
            caption += text.AGE_TREND_EMPTY.format(p=p)
            verdicts.append(text.TREND_NOTHING.format(p=p))
        share = entry.get("importance_in_age_mask")
        if isinstance(share, (int, float)) and np.isfinite(share):
            caption += text.AGE_TREND_IN_MASK.format(share=share)
        return caption

    def _build_views(self) -> None:
        from bodyage_gui.views.qt_colorbar import QtColorBar
        from bodyage_gui.views.qt_slice_view import QtSliceView

        for w in self.views:
            for child in w.findChildren(QtSliceView) + w.findChildren(QtColorBar):
                child.disconnect_state()
            self.grid.removeWidget(w)
            w.hide()  # not drawn at the dialog's corner until the deferred delete runs
            w.deleteLater()
        self.views = []
        plane = self.plane_combo.currentText()
        lines = max((t.count("\n") + 1 for t in self.states), default=1)
        for col, (title, st) in enumerate(self.states.items()):
            box = QtWidgets.QWidget()
            bl = QtWidgets.QGridLayout(box)
            bl.setContentsMargins(0, 0, 0, 0)
            bl.setSpacing(2)
            lab = QtWidgets.QLabel(title)
            lab.setAlignment(_Qt.AlignmentFlag.AlignCenter)
            lab.setWordWrap(True)
            lab.setTextFormat(_Qt.TextFormat.PlainText)  # "p < 0.01" is not a tag
            # one header height for all: the views stay side by side at one size
            lab.setFixedHeight(lines * lab.fontMetrics().lineSpacing() + 4)
            view = QtSliceView(st, plane)
            view.setMinimumSize(200, 250)
            bar = QtColorBar(st)
            bl.addWidget(lab, 0, 0, 1, 2)
            bl.addWidget(view, 1, 0)
            bl.addWidget(bar, 1, 1)
            bl.setColumnStretch(0, 1)
            self.grid.addWidget(box, 0, col)
            self.views.append(box)

    def slice_views(self) -> list[QtWidgets.QWidget]:
        from bodyage_gui.views.qt_slice_view import QtSliceView

        return [w.findChildren(QtSliceView)[0] for w in self.views]

    def _sync_cursor(self, src: ViewerState, cursor) -> None:
        self._propagate(src, lambda st: st.set_cursor(cursor))

    def _sync_convention(self, src: ViewerState, convention: str) -> None:
        self._propagate(src, lambda st: st.set_convention(convention))

    def _propagate(self, src: ViewerState, apply) -> None:
        """Apply a change made in one linked state to the others (without echoing back)."""
        if self._syncing:
            return
        self._syncing = True
        try:
            for st in self.states.values():
                if st is not src:
                    apply(st)
        finally:
            self._syncing = False

    def _disconnect(self) -> None:
        for st in self.states.values():
            st.events.cursor_changed.disconnect()
            st.events.convention_changed.disconnect()

    def closeEvent(self, ev: QtGui.QCloseEvent) -> None:  # noqa: N802
        from bodyage_gui.views.qt_colorbar import QtColorBar
        from bodyage_gui.views.qt_slice_view import QtSliceView

        for w in self.views:
            for child in w.findChildren(QtSliceView) + w.findChildren(QtColorBar):
                child.disconnect_state()
        super().closeEvent(ev)


def _robust_max(vol: Volume, absolute: bool = False, percentile: float = 99.5) -> float:
    a = np.asarray(vol.data[0], float)
    a = np.abs(a) if absolute else a
    a = a[np.isfinite(a) & (a > 0)]
    return float(np.percentile(a, percentile)) if a.size else 0.0


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return {}
