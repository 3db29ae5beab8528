"""The cohort panel: predicted vs chronological age of a run, accelerated and decelerated agers,
their population maps, the region summary and the subgroup MAE table.

* A pyqtgraph scatter plot of predicted (raw or bias-corrected, a toggle; the axis says which)
  against chronological age, one colour per group (sex x BMI group), with the identity line.
  Clicking a point opens that subject in the viewer (``window.open_subject``).
* Accelerated / decelerated agers by the one rule (:func:`bodyage_core.atlas.stats.
  gap_classes`, said in words by :func:`~bodyage_core.atlas.stats.describe_gap_rule`): the
  top / bottom quantile of bias-corrected gaps or a gap beyond ± years; by default the rule the
  run's population maps were built with (else the atlas module's default, the quartile). Their
  points are ringed (red / blue) and counted, and the rule is said beside the counts.
* "Population maps ...": :class:`~bodyage_gui.panels.qt_population_maps.QtGapMapsDialog`
  (the accelerated, decelerated and difference maps and the age trend in linked views, each
  statistical map with its n, test, significant voxels and smallest p).
* Tables: the region summary (``reports/regions_<run>.csv``, else the per-group CSVs) and the
  MAE per sex x BMI group (:func:`bodyage_core.evaluation.subgroup_table` on the run's stored
  predictions) beside the predict-the-cohort-mean baseline.
"""

from __future__ import annotations

import csv
from typing import Any

import numpy as np
import pyqtgraph as pg
from PySide6 import QtCore, QtWidgets

from bodyage_core.errors import BodyageError, CohortError
from bodyage_gui.panels.qt_population_maps import (  # noqa: F401 (re-exported)
    QtGapMapsDialog,
    age_trend_file,
    gap_map_groups,
    maps_rule,
    population_map_groups,
)
from bodyage_gui.workers import analysis_strings as text

_Qt = QtCore.Qt

#: colour per group (sex x BMI group): women warm, men cool, darker with BMI
GROUP_COLOURS: dict[str, tuple[int, int, int]] = {
    "F_healthy": (250, 160, 60), "F_overweight": (225, 95, 30), "F_obese": (160, 45, 10),
    "M_healthy": (110, 190, 240), "M_overweight": (40, 120, 210), "M_obese": (20, 55, 140),
}
OTHER_COLOUR = (140, 140, 140)
ACCELERATED_PEN = (220, 0, 0)
DECELERATED_PEN = (0, 90, 255)


def group_of(row: dict[str, Any]) -> str:
    sex, bmi = row.get("sex"), row.get("bmi_group")
    return f"{sex}_{bmi}" if sex and bmi else "unknown"


def gap_classes(rows: list[dict[str, Any]], threshold: float | None,
                quantile: float | None = None,
                interval: float | None = None) -> dict[str, list[str]]:
    """Subject ids accelerated, decelerated and aligned by the atlas module's own rule
    (:func:`bodyage_core.atlas.stats.gap_classes`: a gap ``threshold`` in years, the top /
    bottom ``quantile``, or beyond the subject's own ``interval``, from its sigma); subjects
    without a gap are left out."""
    from bodyage_core.atlas.stats import gap_classes as core_gap_classes
    from bodyage_core.atlas.stats import gap_rule

    rows = [r for r in rows if r.get("gap") is not None and np.isfinite(r["gap"])]
    out: dict[str, list[str]] = {"accelerated": [], "decelerated": [], "aligned": []}
    thr, quantile, interval = gap_rule(threshold, quantile, interval)
    sigmas = [r.get("sigma") for r in rows] if interval is not None else None
    tables = [r.get("interval_z") for r in rows] if interval is not None else None
    for r, c in zip(rows, core_gap_classes([r["gap"] for r in rows], thr, quantile, interval,
                                           sigmas, tables)):
        if c is not None:
            out[c].append(r["subject_id"])
    return out


def _same_rule(a: tuple, b: tuple) -> bool:
    """Whether two ``(threshold, quantile, interval)`` rules choose the same groups (a rule
    with none set is the quartile)."""
    from bodyage_core.atlas.stats import gap_rule

    return all((x is None) == (y is None) and (x is None or abs(x - y) < 1e-9)
               for x, y in zip(gap_rule(*a), gap_rule(*b)))


def subgroup_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """MAE raw / corrected per sex x BMI group (and margins) with the predict-the-cohort-mean
    baseline MAE of the same subjects."""
    from bodyage_core.evaluation import subgroup_table

    rows = [r for r in rows if r.get("age") is not None and r.get("mean") is not None]
    if not rows:
        return []
    age = np.array([r["age"] for r in rows], float)
    table = subgroup_table(age, [r["mean"] for r in rows], [r.get("sex") for r in rows],
                           [r.get("bmi_group") for r in rows],
                           [r.get("corrected") if r.get("corrected") is not None else np.nan
                            for r in rows])
    sex = np.array([str(r.get("sex")) for r in rows])
    bmi = np.array([str(r.get("bmi_group")) for r in rows])
    mean_age = float(age.mean())
    for t in table:
        m = np.ones(len(rows), bool)
        if t["sex"] != "all":
            m &= sex == t["sex"]
        if t["bmi_group"] != "all":
            m &= bmi == t["bmi_group"]
        t["mae_baseline"] = float(np.mean(np.abs(age[m] - mean_age))) if m.any() else None
    return table


def read_region_rows(ws, run: str) -> list[dict[str, str]]:
    """Region shares of a run: ``reports/regions_<run>.csv`` or the per-atlas CSVs."""
    paths = [ws.regions_stem(run).with_suffix(".csv")]
    if not paths[0].exists():
        root = ws.atlases_root
        paths = sorted(root.glob(f"*/regions_{run}.csv")) if root.is_dir() else []
    rows: list[dict[str, str]] = []
    for p in paths:
        if p.exists():
            with open(p, newline="") as fh:
                rows += list(csv.DictReader(fh))
    return rows


class QtCohortPanel(QtWidgets.QWidget):
    """See the module docstring.

    Parameters
    ----------
    window
        The main window (hook points ``workspace``, ``open_subject``, ``report_error`` and the
        ``workspace_changed`` signal), or any object offering them.
    """

    subject_clicked = QtCore.Signal(str)
    selection_changed = QtCore.Signal(int, int)  # n accelerated, n decelerated

    def __init__(self, window: Any, parent: QtWidgets.QWidget | None = None):
        super().__init__(parent)
        self.window = window
        self.rows: list[dict[str, Any]] = []
        self.classes: dict[str, list[str]] = {"accelerated": [], "decelerated": [],
                                              "aligned": []}
        self.maps_dialog: QtGapMapsDialog | None = None

        self.run_combo = QtWidgets.QComboBox()
        self.run_combo.setMinimumContentsLength(10)
        self.run_combo.setSizeAdjustPolicy(
            QtWidgets.QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon)
        self.run_combo.currentIndexChanged.connect(lambda _i: self.reload())
        self.mode_combo = QtWidgets.QComboBox()
        self.mode_combo.addItem("bias-corrected", "corrected")
        self.mode_combo.addItem("raw", "raw")
        self.mode_combo.setToolTip("which predicted age the plot shows")
        self.mode_combo.currentIndexChanged.connect(lambda _i: self._plot())
        self.threshold_spin = self._rule_spin(
            (0.0, 50.0), 1, 3.0, " y", "accelerated: bias-corrected gap at or above +threshold; "
            "decelerated: at or below -threshold", step=0.5)
        # the one definition of the groups (bodyage_core.atlas.stats.gap_classes): the top /
        # bottom quantile (the atlas module's default), a gap in years, or a gap beyond the
        # subject's own interval; by default the rule the run's population maps were built with
        self.rule_combo = QtWidgets.QComboBox()
        self.rule_combo.addItem("top / bottom", "quantile")
        self.rule_combo.addItem("gap beyond ±", "threshold")
        self.rule_combo.addItem("outside own interval", "interval")
        self.rule_combo.setToolTip("how accelerated and decelerated agers are chosen")
        self.quantile_spin = self._rule_spin(
            (1.0, 50.0), 0, 25.0, " %", "accelerated: the top fraction of bias-corrected gaps; "
            "decelerated: the bottom fraction")
        self.interval_spin = self._rule_spin(
            (50.0, 99.9), 1, 95.0, " %", "accelerated: chronological age below the subject's "
            "own interval (corrected age +- z sigma); decelerated: above it. Only gaps the "
            "model's uncertainty does not explain")
        self.interval_spin.setVisible(False)
        self.rule_combo.currentIndexChanged.connect(lambda _i: self._rule_changed())
        self._maps_rule: tuple | None = None
        self.threshold_spin.setVisible(False)
        self.count_label = QtWidgets.QLabel("")
        self.count_label.setWordWrap(True)  # a narrow dock wraps it, not the views
        self.maps_button = QtWidgets.QPushButton("Population maps...")
        self.maps_button.setToolTip("accelerated and decelerated population maps, their "
                                    "difference and the age trend, side by side in linked "
                                    "views")
        self.maps_button.clicked.connect(self.show_gap_maps)
        self.message = QtWidgets.QLabel("")
        self.message.setWordWrap(True)
        self.message.setStyleSheet("color: #a05000;")

        self.plot = pg.PlotWidget()
        self.plot.setBackground("w")
        self.plot.setMinimumHeight(140)  # its dock is tabbed with the layer panel: keep small
        pi = self.plot.getPlotItem()
        pi.showGrid(x=True, y=True, alpha=0.2)
        pi.setLabel("bottom", text.AXIS_CHRONOLOGICAL)
        self.legend_label = QtWidgets.QLabel("")
        self.legend_label.setWordWrap(True)
        self.identity = pg.PlotCurveItem(pen=pg.mkPen((90, 90, 90), width=1,
                                                      style=_Qt.PenStyle.DashLine))
        pi.addItem(self.identity)
        self.scatter = pg.ScatterPlotItem(size=8, hoverable=True, tip=self._tip)
        self.scatter.sigClicked.connect(self._on_points_clicked)
        pi.addItem(self.scatter)
        self.legend_groups: list[str] = []

        self.mae_table = QtWidgets.QTableWidget()
        self.region_table = QtWidgets.QTableWidget()
        for t in (self.mae_table, self.region_table):
            t.setEditTriggers(QtWidgets.QAbstractItemView.EditTrigger.NoEditTriggers)
            t.verticalHeader().setVisible(False)
            t.verticalHeader().setDefaultSectionSize(t.fontMetrics().height() + 6)  # compact
            t.setAlternatingRowColors(True)
            t.horizontalHeader().setStretchLastSection(True)
        self.region_message = QtWidgets.QLabel("")
        self.region_message.setWordWrap(True)
        regions = QtWidgets.QWidget()
        rl = QtWidgets.QVBoxLayout(regions)
        rl.setContentsMargins(0, 0, 0, 0)
        rl.addWidget(self.region_message)
        rl.addWidget(self.region_table, 1)
        self.tabs = QtWidgets.QTabWidget()
        self.tabs.setMinimumHeight(90)
        self.tabs.addTab(self.mae_table, "Subgroup MAE")
        self.tabs.addTab(regions, "Regions")

        top = QtWidgets.QGridLayout()
        top.addWidget(QtWidgets.QLabel("Run"), 0, 0)
        top.addWidget(self.run_combo, 0, 1)
        top.addWidget(QtWidgets.QLabel("Predicted"), 0, 2)
        top.addWidget(self.mode_combo, 0, 3)
        rule = QtWidgets.QHBoxLayout()
        rule.addWidget(QtWidgets.QLabel("Groups"))
        rule.addWidget(self.rule_combo)
        rule.addWidget(self.quantile_spin)
        rule.addWidget(self.threshold_spin)
        rule.addWidget(self.interval_spin)
        top.addLayout(rule, 1, 0, 1, 3)
        top.addWidget(self.maps_button, 1, 3)
        top.setColumnStretch(1, 1)
        split = QtWidgets.QSplitter(_Qt.Orientation.Vertical)
        split.addWidget(self.plot)
        split.addWidget(self.tabs)
        split.setStretchFactor(0, 1)
        split.setStretchFactor(1, 1)
        self.split = split
        lay = QtWidgets.QVBoxLayout(self)
        lay.addLayout(top)
        lay.addWidget(self.count_label)
        lay.addWidget(self.message)
        lay.addWidget(self.legend_label)
        lay.addWidget(split, 1)

        sig = getattr(window, "workspace_changed", None)
        if sig is not None:
            sig.connect(lambda _ws: self.refresh_runs())
        self.refresh_runs()

    def _rule_spin(self, bounds: tuple[float, float], decimals: int, value: float,
                   suffix: str, tip: str, step: float | None = None
                   ) -> QtWidgets.QDoubleSpinBox:
        """One rule's value box; a change re-chooses the groups."""
        spin = QtWidgets.QDoubleSpinBox()
        spin.setRange(*bounds)
        if step is not None:
            spin.setSingleStep(step)
        spin.setDecimals(decimals)
        spin.setValue(value)
        spin.setSuffix(suffix)
        spin.setToolTip(tip)
        spin.valueChanged.connect(lambda _v: self._select())
        return spin

    def needed_width(self) -> int:
        """Pixels that show every column of the subgroup table without scrolling."""
        t = self.mae_table
        cols = sum(t.columnWidth(c) for c in range(t.columnCount()))
        return cols + t.verticalScrollBar().sizeHint().width() + 2 * t.frameWidth() + 40

    # -- data ----------------------------------------------------------------------------------------
    @property
    def workspace(self):
        return getattr(self.window, "workspace", None)

    @property
    def run(self) -> str | None:
        d = self.run_combo.currentData()
        return None if d is None else str(d)

    @property
    def mode(self) -> str:
        return str(self.mode_combo.currentData())

    def set_mode(self, mode: str) -> None:
        self.mode_combo.setCurrentIndex(self.mode_combo.findData(mode))

    def refresh_runs(self, select: str | None = None) -> None:
        """Re-read the complete runs (default: the one with the latest predictions)."""
        ws = self.workspace
        current = self.run
        self.run_combo.blockSignals(True)
        self.run_combo.clear()
        if ws is not None:
            for r in ws.db.runs():
                if r.get("status") == "complete":
                    self.run_combo.addItem(r["run_id"], r["run_id"])
            want = select or (current if current and self.run_combo.findData(current) >= 0
                              else ws.db.latest_run())
            idx = self.run_combo.findData(want)
            self.run_combo.setCurrentIndex(idx if idx >= 0 else self.run_combo.count() - 1)
        self.run_combo.blockSignals(False)
        self.reload()

    def reload(self) -> None:
        """Re-read the run's predictions and redraw everything."""
        ws, run = self.workspace, self.run
        self.rows = []
        rule = maps_rule(ws, run) if ws is not None and run else None
        if rule != self._maps_rule:     # the groups the run's population maps were built with
            self._maps_rule = rule
            if rule is not None:
                self.set_rule(*rule)
        if ws is None:
            self.message.setText(text.NO_WORKSPACE)
        elif run is None:
            runs = [r["run_id"] for r in ws.db.runs()]
            self.message.setText(text.NO_PREDICTIONS.format(run=runs[-1]) if runs
                                 else text.NO_RUN)
        else:
            self.rows = [r for r in ws.db.predictions(run) if r.get("mean") is not None]
            self.message.setText("" if self.rows else text.NO_PREDICTIONS.format(run=run))
        self._plot()
        self._fill_mae()
        self._fill_regions()

    # -- plot ------------------------------------------------------------------------------------------
    def predicted(self, row: dict[str, Any]) -> float | None:
        if self.mode == "corrected" and row.get("corrected") is not None:
            return float(row["corrected"])
        return None if row.get("mean") is None else float(row["mean"])

    def _plot(self) -> None:
        pi = self.plot.getPlotItem()
        pi.setLabel("left", text.AXIS_PREDICTED[self.mode])
        self.legend_label.setText("")
        pts = [r for r in self.rows if r.get("age") is not None and self.predicted(r) is not None]
        if not pts:
            self.scatter.setData([])
            self.identity.setData([], [])
            self._select()
            return
        x = np.array([r["age"] for r in pts], float)
        y = np.array([self.predicted(r) for r in pts], float)
        groups = [group_of(r) for r in pts]
        brushes = [pg.mkBrush(*GROUP_COLOURS.get(g, OTHER_COLOUR), 220) for g in groups]
        self.scatter.setData(x=x, y=y, data=[r["subject_id"] for r in pts], brush=brushes,
                             pen=pg.mkPen((60, 60, 60), width=0.5), size=8)
        lo = float(min(x.min(), y.min()))
        hi = float(max(x.max(), y.max()))
        pad = 0.05 * max(hi - lo, 1.0)
        self.identity.setData([lo - pad, hi + pad], [lo - pad, hi + pad])
        self.legend_groups = [g for g in GROUP_COLOURS if g in groups] + sorted(
            set(groups) - set(GROUP_COLOURS))
        self.legend_label.setText("  ".join(
            "<span style='color:rgb({},{},{})'>&#9679;</span>&nbsp;{}".format(
                *GROUP_COLOURS.get(g, OTHER_COLOUR), g.replace("_", "&nbsp;"))  # wrap between groups
            for g in self.legend_groups))
        self.plot.setXRange(lo - pad, hi + pad, padding=0)
        self.plot.setYRange(lo - pad, hi + pad, padding=0)
        self._select()

    def _tip(self, x: float, y: float, data: Any) -> str:
        row = next((r for r in self.rows if r["subject_id"] == data), {})
        gap = row.get("gap")
        return (f"{data}\nage {x:.1f}, predicted {y:.1f}"
                + (f"\ngap {gap:+.1f} y" if gap is not None else "") + "\nclick to open")

    @property
    def rule(self) -> tuple[float | None, float | None, float | None]:
        """``(threshold, quantile, interval)`` of the groups now (one of them set)."""
        how = self.rule_combo.currentData()
        if how == "threshold":
            return float(self.threshold_spin.value()), None, None
        if how == "interval":
            return None, None, round(float(self.interval_spin.value()) / 100.0, 4)
        return None, float(self.quantile_spin.value()) / 100.0, None

    def set_rule(self, threshold: float | None = None, quantile: float | None = None,
                 interval: float | None = None) -> None:
        """Choose the groups by a gap ``threshold`` (years), the subject's own ``interval``
        (a coverage such as 0.95) or the top / bottom ``quantile``."""
        widgets = (self.rule_combo, self.threshold_spin, self.quantile_spin, self.interval_spin)
        for w in widgets:
            w.blockSignals(True)
        if threshold is not None:
            self.rule_combo.setCurrentIndex(self.rule_combo.findData("threshold"))
            self.threshold_spin.setValue(float(threshold))
        elif interval is not None:
            self.rule_combo.setCurrentIndex(self.rule_combo.findData("interval"))
            self.interval_spin.setValue(100.0 * float(interval))
        else:
            self.rule_combo.setCurrentIndex(self.rule_combo.findData("quantile"))
            self.quantile_spin.setValue(100.0 * (0.25 if quantile is None else quantile))
        for w in widgets:
            w.blockSignals(False)
        self._rule_changed()

    def _rule_changed(self) -> None:
        how = self.rule_combo.currentData()
        self.threshold_spin.setVisible(how == "threshold")
        self.quantile_spin.setVisible(how == "quantile")
        self.interval_spin.setVisible(how == "interval")
        self._select()

    def rule_text(self) -> str:
        """The rule in words, and whether the run's population maps used it."""
        from bodyage_core.atlas.stats import describe_gap_rule

        out = describe_gap_rule(*self.rule)
        if self._maps_rule is not None:
            same = _same_rule(self.rule, self._maps_rule)
            out += ("; " + text.GAP_RULE_MAPS if same else
                    "; " + text.GAP_RULE_OTHER.format(rule=describe_gap_rule(*self._maps_rule)))
        return out

    def _select(self) -> None:
        self.classes = gap_classes(self.rows, *self.rule)
        acc, dec = set(self.classes["accelerated"]), set(self.classes["decelerated"])
        if len(self.scatter.data):
            pens, sizes = [], []
            for sid in self.scatter.data["data"]:
                if sid in acc:
                    pens.append(pg.mkPen(ACCELERATED_PEN, width=2.5))
                    sizes.append(11)
                elif sid in dec:
                    pens.append(pg.mkPen(DECELERATED_PEN, width=2.5))
                    sizes.append(11)
                else:
                    pens.append(pg.mkPen((60, 60, 60), width=0.5))
                    sizes.append(8)
            self.scatter.setPen(pens)
            self.scatter.setSize(sizes)
        n_al = len(self.classes["aligned"])
        self.count_label.setText(
            f"<span style='color:#dc0000'>accelerated {len(acc)}</span> · "
            f"<span style='color:#005aff'>decelerated {len(dec)}</span> · aligned {n_al}"
            f"  ({self.rule_text()})")
        self.selection_changed.emit(len(acc), len(dec))

    def _on_points_clicked(self, _item, points, _ev=None) -> None:
        if not len(points):
            return
        sid = str(points[0].data())
        self.subject_clicked.emit(sid)
        opener = getattr(self.window, "open_subject", None)
        if opener is not None:
            opener(sid)

    def point_scene_pos(self, subject_id: str) -> QtCore.QPointF:
        """Scene position of a subject's point (for tests and scripted clicks)."""
        d = self.scatter.data
        i = int(np.flatnonzero(d["data"] == subject_id)[0])
        return self.plot.getPlotItem().vb.mapViewToScene(QtCore.QPointF(d["x"][i], d["y"][i]))

    # -- tables ----------------------------------------------------------------------------------------
    def _fill_mae(self) -> None:
        table = subgroup_rows(self.rows)
        # two-line headers: the columns fit a right-hand dock (one-line headers made the
        # table wider than the dock at the default window size)
        cols = [("sex", "sex"), ("bmi_group", "BMI\ngroup"), ("n", "n"),
                ("mae_raw", "MAE\nraw"), ("mae_corrected", "MAE\ncorrected"),
                ("mae_baseline", "MAE mean\nbaseline"), ("mean_age", "mean\nage")]
        _fill_table(self.mae_table, table, cols)

    def _fill_regions(self) -> None:
        ws, run = self.workspace, self.run
        rows = read_region_rows(ws, run) if ws is not None and run else []
        if ws is not None and run and not rows:
            self.region_message.setText(text.NO_REGIONS.format(run=run))
        else:
            self.region_message.setText("Share of the population importance map per region "
                                        "(enrichment = share / volume fraction)" if rows else "")
        for r in rows:
            for k in ("share", "volume_fraction", "enrichment", "importance"):
                try:
                    r[k] = float(r[k])
                except (KeyError, TypeError, ValueError):
                    r[k] = None
        cols = [("group", "group"), ("rank", "rank"), ("region", "region"),
                ("share", "share"), ("volume_fraction", "volume fraction"),
                ("enrichment", "enrichment")]
        _fill_table(self.region_table, rows, cols)

    # -- population maps -------------------------------------------------------------------------------
    def show_gap_maps(self, group: str | None = None) -> QtGapMapsDialog | None:
        """Open the accelerated / decelerated / difference (/ age trend) maps dialog (or report
        why not)."""
        ws, run = self.workspace, self.run
        try:
            if ws is None:
                raise CohortError(text.NO_WORKSPACE)
            if run is None:
                raise CohortError(text.NO_RUN)
            groups = population_map_groups(ws, run)
            if not groups:
                raise BodyageError(text.NO_ATLAS_MAPS.format(run=run,
                                                             where=ws.atlases_root))
            dlg = QtGapMapsDialog(ws, run, groups, group, parent=self)
        except BodyageError as err:
            rep = getattr(self.window, "report_error", None)
            if rep is not None:
                rep(err)
            else:
                self.message.setText(str(err))
            return None
        if self.maps_dialog is not None:
            self.maps_dialog.close()
        self.maps_dialog = dlg
        dlg.show()
        return dlg


def _format_number(v: float) -> str:
    """Years and the like with two decimals; small values (importance, fractions) with three
    significant digits; empty for NaN."""
    if not np.isfinite(v):
        return ""
    if abs(v) >= 100:
        return f"{v:.1f}"
    if abs(v) >= 1 or v == 0:
        return f"{v:.2f}"
    return f"{v:.3g}"


class _NumberItem(QtWidgets.QTableWidgetItem):
    """A table cell shown as formatted text and sorted by its value (``UserRole``)."""

    def __lt__(self, other):
        a = self.data(_Qt.ItemDataRole.UserRole)
        b = other.data(_Qt.ItemDataRole.UserRole)
        if isinstance(a, float) and isinstance(b, float):
            if np.isnan(a) or np.isnan(b):
                return not np.isnan(a) and np.isnan(b)  # empty cells last
            return a < b
        return super().__lt__(other)


def _fill_table(table: QtWidgets.QTableWidget, rows: list[dict[str, Any]],
                cols: list[tuple[str, str]]) -> None:
    table.setSortingEnabled(False)
    table.clear()
    table.setColumnCount(len(cols))
    table.setHorizontalHeaderLabels([c[1] for c in cols])
    table.setRowCount(len(rows))
    for i, r in enumerate(rows):
        for j, (key, _) in enumerate(cols):
            v = r.get(key)
            item = QtWidgets.QTableWidgetItem()
            if isinstance(v, float):
                # one number of decimals per magnitude (a column read "5.48" over "9.029"),
                # sorted by value, not by text
                item = _NumberItem(_format_number(v))
                item.setData(_Qt.ItemDataRole.UserRole, v if np.isfinite(v) else float("nan"))
                item.setTextAlignment(_Qt.AlignmentFlag.AlignRight |
                                      _Qt.AlignmentFlag.AlignVCenter)
            elif isinstance(v, int):
                item.setData(_Qt.ItemDataRole.DisplayRole, v)
                item.setTextAlignment(_Qt.AlignmentFlag.AlignRight |
                                      _Qt.AlignmentFlag.AlignVCenter)
            else:
                item.setText("" if v is None else str(v))
            table.setItem(i, j, item)
    table.resizeColumnsToContents()
    table.setSortingEnabled(True)
