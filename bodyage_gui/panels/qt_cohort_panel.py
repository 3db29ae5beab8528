"""The cohort panel: predicted vs chronological age of a run, accelerated and decelerated agers,
their population maps, the region summary and the subgroup MAE table.

* A pyqtgraph scatter plot of predicted (raw or bias-corrected, a toggle; the axis says which)
  against chronological age, one colour per group (sex x BMI group), with the identity line.
  Clicking a point opens that subject in the viewer (``window.open_subject``).
* Accelerated / decelerated agers: bias-corrected gap at or above ``+threshold`` / at or below
  ``-threshold`` years (a spin box); their points are ringed (red / blue) and counted.
* "Population maps ...": the accelerated and decelerated population maps of a group and their
  difference side by side in three linked slice views (one cursor) over the group's atlas
  template, from what :func:`bodyage_core.atlas.workspace.build_population_maps` and
  :func:`~bodyage_core.atlas.workspace.compare_gap_groups` wrote under ``atlases/<group>/``,
  and, where the group has one, the age trend of its maps (``population_<tag>_age_trend``,
  of the signed gradient x input maps when there, else of the Grad-CAM maps) as a fourth
  linked view; a group with only the age trend shows that view alone; a clear message when
  none of them is there yet.
* Tables: the region summary (``reports/regions_<run>.csv``, else the per-group CSVs) and the
  MAE per sex x BMI group (:func:`bodyage_core.evaluation.subgroup_table` on the run's stored
  predictions) beside the predict-the-cohort-mean baseline.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import numpy as np
import pyqtgraph as pg
from PySide6 import QtCore, QtGui, QtWidgets

from bodyage_core.errors import BodyageError, CohortError
from bodyage_core.viewer import PLANES, ViewerState
from bodyage_core.volume import Volume
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


def gap_classes(rows: list[dict[str, Any]], threshold: float) -> dict[str, list[str]]:
    """Subject ids with bias-corrected gap ``>= threshold`` (accelerated), ``<= -threshold``
    (decelerated) and the rest (aligned), by the atlas module's own rule
    (:func:`bodyage_core.atlas.stats.gap_classes`); subjects without a gap are left out."""
    from bodyage_core.atlas.stats import gap_classes as core_gap_classes

    rows = [r for r in rows if r.get("gap") is not None and np.isfinite(r["gap"])]
    out: dict[str, list[str]] = {"accelerated": [], "decelerated": [], "aligned": []}
    for r, c in zip(rows, core_gap_classes([r["gap"] for r in rows], float(threshold))):
        if c is not None:
            out[c].append(r["subject_id"])
    return out


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
    paths = [ws.reports_dir / f"regions_{run}.csv"]
    if not paths[0].exists():
        root = Path(ws.root) / "atlases"
        paths = sorted(root.glob(f"*/regions_{run}.csv")) if root.is_dir() else []
    rows: list[dict[str, str]] = []
    for p in paths:
        if p.exists():
            with open(p, newline="") as fh:
                rows += list(csv.DictReader(fh))
    return rows


def gap_map_groups(ws, run: str) -> list[str]:
    """Atlas groups that have both the accelerated and the decelerated population map of
    ``run``."""
    root = Path(ws.root) / "atlases"
    if not root.is_dir():
        return []
    out = []
    for d in sorted(p for p in root.iterdir() if p.is_dir()):
        if all((d / f"population_{run}_{c}_mean.nii.gz").exists()
               for c in ("accelerated", "decelerated")):
            out.append(d.name)
    return out


def age_trend_file(ws, group: str, run: str) -> tuple[Path, str, str] | None:
    """The age trend map of ``run`` in atlas ``group`` as ``(path, tag, source)``: of the
    signed gradient x input maps (``population_gradxinput_signed_<run>_age_trend.nii.gz``,
    the one the age trend is best read from) when there, else of the Grad-CAM maps
    (``population_<run>_age_trend.nii.gz``); ``None`` when neither exists."""
    adir = ws.atlas_dir(group)
    for tag, source in text.AGE_TREND_SOURCES:
        tag = tag.format(run=run)
        path = adir / f"population_{tag}_age_trend.nii.gz"
        if path.exists():
            return path, tag, source
    return None


def population_map_groups(ws, run: str) -> list[str]:
    """Atlas groups with something for the maps dialog: both gap-class maps of ``run``
    (:func:`gap_map_groups`) or an age trend (:func:`age_trend_file`)."""
    root = Path(ws.root) / "atlases"
    if not root.is_dir():
        return []
    gap = set(gap_map_groups(ws, run))
    return [d.name for d in sorted(p for p in root.iterdir() if p.is_dir())
            if d.name in gap or age_trend_file(ws, d.name, run) is not None]


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
        self.threshold_spin = QtWidgets.QDoubleSpinBox()
        self.threshold_spin.setRange(0.0, 50.0)
        self.threshold_spin.setSingleStep(0.5)
        self.threshold_spin.setDecimals(1)
        self.threshold_spin.setValue(3.0)
        self.threshold_spin.setSuffix(" y")
        self.threshold_spin.setToolTip("accelerated: bias-corrected gap at or above +threshold; "
                                       "decelerated: at or below -threshold")
        self.threshold_spin.valueChanged.connect(lambda _v: self._select())
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
        top.addWidget(QtWidgets.QLabel("Gap threshold ±"), 1, 0, 1, 2,
                      _Qt.AlignmentFlag.AlignRight)
        top.addWidget(self.threshold_spin, 1, 2)
        top.addWidget(self.maps_button, 1, 3)
        top.setColumnStretch(1, 1)
        split = QtWidgets.QSplitter(_Qt.Orientation.Vertical)
        split.addWidget(self.plot)
        split.addWidget(self.tabs)
        split.setStretchFactor(0, 3)
        split.setStretchFactor(1, 2)
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

    def _select(self) -> None:
        thr = float(self.threshold_spin.value())
        self.classes = gap_classes(self.rows, thr)
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
            f"  (bias-corrected gap beyond ±{thr:g} y)")
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
        cols = [("sex", "sex"), ("bmi_group", "BMI group"), ("n", "n"),
                ("mae_raw", "MAE raw"), ("mae_corrected", "MAE corrected"),
                ("mae_baseline", "MAE mean baseline"), ("mean_age", "mean age")]
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
                                                             where=Path(ws.root) / "atlases"))
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


# -- the three linked map views ---------------------------------------------------------------------

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
        self.resize(1100, 520)
        self.states: dict[str, ViewerState] = {}
        self.views: list[QtWidgets.QWidget] = []
        self._syncing = False
        self.group_combo = QtWidgets.QComboBox()
        self.group_combo.addItems(groups)
        self.plane_combo = QtWidgets.QComboBox()
        self.plane_combo.addItems(list(PLANES))
        self.plane_combo.setCurrentText("coronal")
        self.info = QtWidgets.QLabel("")
        self.info.setWordWrap(True)
        self.info.setTextFormat(_Qt.TextFormat.PlainText)
        #: the age trend shown (``path``, ``tag``, ``source``, ``n``, ``p_threshold``), or None
        self.age_trend: dict[str, Any] | None = None
        top = QtWidgets.QHBoxLayout()
        top.addWidget(QtWidgets.QLabel("Group"))
        top.addWidget(self.group_combo)
        top.addWidget(QtWidgets.QLabel("Plane"))
        top.addWidget(self.plane_combo)
        top.addStretch(1)
        self.grid = QtWidgets.QGridLayout()
        lay = QtWidgets.QVBoxLayout(self)
        lay.addLayout(top)
        lay.addWidget(self.info)
        lay.addLayout(self.grid, 1)
        self.group_combo.currentTextChanged.connect(self.load_group)
        self.plane_combo.currentTextChanged.connect(lambda _p: self._build_views())
        self.load_group(group if group in groups else groups[0])
        if group in groups:
            self.group_combo.setCurrentText(group)
        if len(self.states) != 3:  # the age trend alone, or beside the three gap views
            self.resize(600 if len(self.states) == 1 else 1400, 560)

    def load_group(self, group: str) -> None:
        """Read the template and the maps of ``group`` (all before showing any)."""
        from bodyage_gui.loading import load_for_viewer

        adir = self.ws.atlas_dir(group)
        template = load_for_viewer(adir / "template.nii.gz") if (
            adir / "template.nii.gz").exists() else None
        maps: dict[str, tuple[str, Volume, dict[str, Any]]] = {}
        info_parts = []
        has_gap = group in gap_map_groups(self.ws, self.run)
        if has_gap:
            info_parts.append(self._gap_maps(adir, group, maps))
        trend = age_trend_file(self.ws, group, self.run)
        self.age_trend = None
        if trend is not None:
            info_parts.append(self._age_trend_map(adir, trend, maps))
        if not has_gap:
            info_parts.append(text.NO_GAP_MAPS_GROUP.format(run=self.run, group=group))
        states = {}
        for title, (name, vol, disp) in maps.items():
            st = ViewerState()
            if template is not None:
                st.add_layer(template, "template", kind="image")
            st.add_layer(vol, name, kind="overlay", opacity=0.75, **disp)
            states[title] = st
        self._disconnect()
        self.states = states
        for st in states.values():
            st.events.cursor_changed.connect(lambda c, src=st: self._sync_cursor(src, c))
            st.events.convention_changed.connect(lambda c, src=st: self._sync_convention(src, c))
        title = text.GAP_MAPS_TITLE if has_gap else text.AGE_TREND_MAPS_TITLE
        self.setWindowTitle(title.format(group=group, run=self.run))
        self.info.setText(" ".join(info_parts) + (text.LINKED_VIEWS if len(states) > 1 else ""))
        self._build_views()

    def _gap_maps(self, adir: Path, group: str,
                  maps: dict[str, tuple[str, Volume, dict[str, Any]]]) -> str:
        """Add the accelerated, decelerated and difference maps to ``maps``; their caption."""
        from bodyage_gui.loading import load_for_viewer

        stem = f"population_{self.run}"
        acc = load_for_viewer(adir / f"{stem}_accelerated_mean.nii.gz")
        dec = load_for_viewer(adir / f"{stem}_decelerated_mean.nii.gz")
        diff_path = adir / f"compare_{self.run}_accelerated_vs_decelerated_diff.nii.gz"
        computed = not diff_path.exists()
        diff = (Volume(acc.data - dec.data, acc.affine, ("diff",)) if computed
                else load_for_viewer(diff_path))
        info = _read_json(adir / f"{stem}.json")
        subs = info.get("subgroups", {})
        n_acc = subs.get("accelerated", {}).get("n", "?")
        n_dec = subs.get("decelerated", {}).get("n", "?")
        thr = info.get("gap_threshold")
        q = info.get("gap_quantile")
        q = 0.25 if thr is None and q is None else q   # the atlas module's default
        rule = (f"gap beyond ±{thr:g} y" if thr is not None else
                f"gap: top and bottom {100 * q:g} %")
        hi = max(_robust_max(acc), _robust_max(dec), 1e-12)
        dhi = max(_robust_max(diff, absolute=True), 1e-12)
        maps[f"accelerated (n={n_acc})"] = (
            "accelerated", acc, {"colormap": "heat", "display_range": (0, hi),
                                 "threshold": 0.1 * hi})
        maps[f"decelerated (n={n_dec})"] = (
            "decelerated", dec, {"colormap": "heat", "display_range": (0, hi),
                                 "threshold": 0.1 * hi})
        maps["difference (acc − dec)" + (", computed here" if computed else "")] = (
            "difference", diff, {"colormap": "bwr", "display_range": (-dhi, dhi),
                                 "threshold": 0.1 * dhi})
        return (f"Population Grad-CAM maps of run {self.run}, group {group}, classes "
                f"by bias-corrected {rule} (as built by `bodyage atlas maps`); the "
                "accelerated and decelerated maps share one colour range; difference "
                "diverging (red: more importance in accelerated agers).")

    def _age_trend_map(self, adir: Path, trend: tuple[Path, str, str],
                       maps: dict[str, tuple[str, Volume, dict[str, Any]]]) -> str:
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
        entry = _read_json(adir / f"population_{tag}.json").get("subgroups", {}).get(
            "age_trend", {})
        n = entry.get("n", "?")
        p_thr = entry.get("p_threshold")
        tfce = entry.get("correction") == "tfce"
        p = ((text.AGE_TREND_P_TFCE if tfce else text.AGE_TREND_P).format(p=p_thr)
             if isinstance(p_thr, (int, float)) else text.AGE_TREND_UNTHRESHOLDED)
        top = _robust_max(vol, absolute=True, percentile=95.0)
        hi = max(top, 1e-12)
        maps[text.AGE_TREND_VIEW.format(n=n, p=p, source=source)] = (
            "age_trend", vol, {"colormap": "bwr", "display_range": (-hi, hi),
                               "threshold": None})
        self.age_trend = {"path": path, "tag": tag, "source": source, "n": n,
                          "p_threshold": p_thr}
        kept = (text.AGE_TREND_KEPT["tfce" if tfce else "none"].format(p=p)
                if isinstance(p_thr, (int, float)) else p)
        caption = text.AGE_TREND_INFO.format(source=source, file=path.name, n=n, kept=kept)
        if top <= 0:
            caption += text.AGE_TREND_EMPTY.format(p=p)
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
