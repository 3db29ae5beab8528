"""Tools > Ruler / Box region / Ellipse region: left-drag on a slice view draws one (Esc, or
Tools > Move cursor, goes back to moving the cursor); Tools > Label region at the cursor
(Ctrl+L) takes every voxel of the label under the cursor. The Measurements panel lists every
ruler's length and every region's voxels, area, volume (ml) and each visible layer's mean, SD,
min and max; File > Export ROI statistics writes the same rows as CSV."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from PySide6 import QtCore, QtGui, QtWidgets

from bodyage_core.atomic import write_text
from bodyage_core.errors import BodyageError
from bodyage_core.viewer.measure import STAT_COLUMNS, statistics_csv, statistics_rows
from bodyage_gui import bindings
from bodyage_gui.tools.hover import HoverProbe

_Qt = QtCore.Qt
MODES = (("none", "&Move cursor"), ("ruler", "&Ruler (mm)"), ("box", "&Box region"),
         ("ellipse", "&Ellipse region"))
#: columns of the panel's table (a subset of the CSV's)
TABLE_COLUMNS = ("measurement", "plane", "slice", "length_mm", "voxels", "area_mm2",
                 "volume_ml", "layer", "mean", "sd", "min", "max")
CSV_FILTER = "CSV table (*.csv)"


def _fmt(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


class QtMeasurementsPanel(QtWidgets.QWidget):
    """The table of measurements, with Delete, Clear and Export."""

    def __init__(self, tools: MeasureTools, parent: QtWidgets.QWidget | None = None):
        super().__init__(parent)
        self.tools = tools
        self.table = QtWidgets.QTableWidget(0, len(TABLE_COLUMNS))
        self.table.setObjectName("measurements_table")
        self.table.setHorizontalHeaderLabels([c.replace("_", " ") for c in TABLE_COLUMNS])
        self.table.verticalHeader().setVisible(False)
        self.table.setEditTriggers(QtWidgets.QAbstractItemView.EditTrigger.NoEditTriggers)
        self.table.setSelectionBehavior(
            QtWidgets.QAbstractItemView.SelectionBehavior.SelectRows)
        self.table.verticalHeader().setDefaultSectionSize(self.table.fontMetrics().height() + 6)
        self.hint = QtWidgets.QLabel("Tools > Ruler / Box region / Ellipse region, then drag "
                                     "on a view (Esc: back to the cursor); Tools > Label "
                                     "region (Ctrl+L): the label under the cursor")
        self.hint.setWordWrap(True)
        self.hint.setStyleSheet("color: #666;")
        delete = QtWidgets.QPushButton("Delete")
        delete.clicked.connect(self.delete_selected)
        clear = QtWidgets.QPushButton("Clear")
        clear.clicked.connect(lambda: tools.window.state.clear_measurements())
        export = QtWidgets.QPushButton("Export CSV...")
        export.clicked.connect(tools.ask_export_statistics)
        row = QtWidgets.QHBoxLayout()
        for b in (delete, clear, export):
            row.addWidget(b)
        row.addStretch(1)
        lay = QtWidgets.QVBoxLayout(self)
        lay.setContentsMargins(2, 2, 2, 2)
        lay.addWidget(self.hint)
        lay.addWidget(self.table, 1)
        lay.addLayout(row)
        self.rows: list[dict[str, Any]] = []

    def refresh(self) -> None:
        state = self.tools.window.state
        self.rows = statistics_rows(state) if state.base_layer is not None else []
        self.table.setRowCount(len(self.rows))
        for i, r in enumerate(self.rows):
            for j, key in enumerate(TABLE_COLUMNS):
                item = QtWidgets.QTableWidgetItem(_fmt(r.get(key)))
                if isinstance(r.get(key), (int, float)):
                    item.setTextAlignment(_Qt.AlignmentFlag.AlignRight |
                                          _Qt.AlignmentFlag.AlignVCenter)
                self.table.setItem(i, j, item)
        self.table.resizeColumnsToContents()

    def delete_selected(self) -> None:
        state = self.tools.window.state
        names = {self.rows[i.row()]["measurement"] for i in self.table.selectedIndexes()
                 if i.row() < len(self.rows)}
        for m in [m for m in state.measurements if m.name in names]:
            state.remove_measurement(m)


class MeasureTools(QtCore.QObject):
    """The tool modes of one main window, its Measurements panel and the hover probe."""

    mode_changed = QtCore.Signal(str)

    def __init__(self, window: Any):
        super().__init__(window)
        self.window = window
        self.mode = "none"
        self.actions: dict[str, QtGui.QAction] = {}
        self._drawing = None
        self.panel = QtMeasurementsPanel(self)
        self.probe = HoverProbe(window)
        self._refresh_timer = QtCore.QTimer(self)
        self._refresh_timer.setSingleShot(True)
        self._refresh_timer.setInterval(30)           # coalesce a drag's many changes
        self._refresh_timer.timeout.connect(self.panel.refresh)
        window.state.events.measurements_changed.connect(self._changed)
        window.state.events.layer_changed.connect(self._layer_changed)

    def install(self, menu: QtWidgets.QMenu) -> None:
        """The Tools menu: the modes (one checked), the panel, clear."""
        group = QtGui.QActionGroup(self)
        for mode, label in MODES:
            a = menu.addAction(label)
            a.setCheckable(True)
            a.setChecked(mode == self.mode)
            key = bindings.key_for(f"tool_{mode}")
            if key:
                a.setShortcut(QtGui.QKeySequence(key))
            a.triggered.connect(lambda _=False, m=mode: self.set_mode(m))
            group.addAction(a)
            self.actions[mode] = a
        menu.addSeparator()
        a = menu.addAction("&Label region at the cursor")
        a.setShortcut(QtGui.QKeySequence(bindings.key_for("label_region")))
        a.setStatusTip("every voxel of the label under the cursor (3D): volume and the "
                       "statistics of every layer in the Measurements panel")
        a.triggered.connect(lambda _=False: self.add_label_region())
        self.actions["label_region"] = a
        a = menu.addAction("Measurements &panel")
        a.triggered.connect(self.show_panel)
        a = menu.addAction("&Clear measurements")
        a.triggered.connect(lambda: self.window.state.clear_measurements())

    def set_mode(self, mode: str) -> None:
        """``'none'`` (left button moves the cursor), ``'ruler'``, ``'box'``, ``'ellipse'``."""
        if mode not in dict(MODES):
            raise ValueError(f"unknown tool {mode!r}")
        self.mode = mode
        for v in self.window.slice_views.values():
            v.tool = None if mode == "none" else self
        if mode in self.actions:
            self.actions[mode].setChecked(True)
        if mode != "none":
            self.show_panel()
            self.window.statusBar().showMessage(
                f"{dict(MODES)[mode].replace('&', '')}: drag on a view; Esc goes back to the "
                "cursor", 8000)
        self.mode_changed.emit(mode)

    def show_panel(self) -> None:
        docks = self.window.panel_docks
        if "Measurements" not in docks:
            self.window.add_panel("Measurements", self.panel,
                                  _Qt.DockWidgetArea.BottomDockWidgetArea)
        docks["Measurements"].show()
        docks["Measurements"].raise_()
        self.panel.refresh()

    def add_label_region(self, layer: Any = None, label: int | None = None) -> Any:
        """Tools > Label region at the cursor: the label under the cursor (of the selected
        label map, else the top visible one) as a 3D region in the Measurements panel.
        Returns the measurement, or None after saying why not (status bar)."""
        try:
            m = self.window.state.add_label_region(layer, label)
        except BodyageError as err:
            self.window.statusBar().showMessage(str(err), 8000)
            return None
        self.show_panel()
        return m

    def drag(self, view: Any, world, start: bool, finish: bool) -> None:
        """A left-drag on ``view`` with a tool on: start, stretch and finish a measurement."""
        state = self.window.state
        if start or self._drawing is None:
            self._drawing = state.add_measurement(self.mode, view.plane, world, world)
        else:
            state.update_measurement(self._drawing, world)
        if finish:
            m, self._drawing = self._drawing, None
            if m.length_mm < 1e-6:
                state.remove_measurement(m)         # a click, not a drag
            self.panel.refresh()

    def _changed(self) -> None:
        self._refresh_timer.start()

    def _layer_changed(self, _layer, keys) -> None:
        if "visible" in keys and self.window.state.measurements:
            self._refresh_timer.start()

    def export_statistics(self, path: str | Path) -> bool:
        """Write every measurement's rows (:data:`STAT_COLUMNS`) as CSV."""
        path = Path(path)

        def do():
            write_text(path, statistics_csv(self.window.state))
            self.window.statusBar().showMessage(
                f"ROI statistics saved: {path} ({len(STAT_COLUMNS)} columns)", 5000)
            return True

        return bool(self.window.guard(do))

    def ask_export_statistics(self) -> None:
        path, _ = QtWidgets.QFileDialog.getSaveFileName(self.window, "Export ROI statistics",
                                                        "roi_statistics.csv", CSV_FILTER)
        if path:
            self.export_statistics(path)

    def disconnect_state(self) -> None:
        ev = self.window.state.events
        ev.measurements_changed.disconnect(self._changed)
        ev.layer_changed.disconnect(self._layer_changed)
