"""The labels of a label layer: id, name (from the map's own table, else none), colour and a
visibility check box per label, an outline switch and where the names came from (ITK-SNAP's
label editor, FSLeyes' lookup-table panel). Writes only through the layer's settings."""

from __future__ import annotations

import numpy as np
from PySide6 import QtCore, QtGui, QtWidgets

from bodyage_core import display
from bodyage_core.viewer import Layer

_Qt = QtCore.Qt
_DEFAULT = display.lut("labels")


def label_ids(layer: Layer) -> list[int]:
    """The ids to list: those in the map (background 0 left out) and those its table names."""
    data = layer.volume.channel(layer.channel)
    if data.dtype.kind in "iu" and data.size and 0 <= int(data.min()) and int(data.max()) < 1 << 20:
        present = np.flatnonzero(np.bincount(data.ravel()))
    else:
        present = np.unique(np.nan_to_num(np.asarray(data, np.float64)).astype(np.int64))
    ids = {int(i) for i in present if i != 0} | {int(k) for k in layer.label_names if k != 0}
    return sorted(ids)


class QtLabelTable(QtWidgets.QWidget):
    """Follows the active layer of a :class:`~bodyage_gui.panels.qt_layer_panel.QtLayerPanel`
    when it is a label map."""

    def __init__(self, parent: QtWidgets.QWidget | None = None):
        super().__init__(parent)
        self.layer: Layer | None = None
        self._ids: list[int] = []
        self._updating = False
        self.source_label = QtWidgets.QLabel()
        self.source_label.setWordWrap(True)
        self.source_label.setStyleSheet("color: #666;")
        self.outline_check = QtWidgets.QCheckBox("outline")
        self.outline_check.setToolTip("Draw only the boundary of each label")
        self.table = QtWidgets.QTableWidget(0, 3)
        self.table.setHorizontalHeaderLabels(["id", "name", "colour"])
        self.table.verticalHeader().setVisible(False)
        self.table.horizontalHeader().setStretchLastSection(False)
        self.table.horizontalHeader().setSectionResizeMode(
            1, QtWidgets.QHeaderView.ResizeMode.Stretch)
        self.table.setEditTriggers(QtWidgets.QAbstractItemView.EditTrigger.NoEditTriggers)
        self.table.setSelectionMode(QtWidgets.QAbstractItemView.SelectionMode.NoSelection)
        self.table.setMinimumHeight(120)
        self.table.setToolTip("Untick a label to hide it; double-click its colour to change it")
        lay = QtWidgets.QVBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        lay.addWidget(self.source_label)
        lay.addWidget(self.outline_check)
        lay.addWidget(self.table, 1)
        self.table.itemChanged.connect(self._item_changed)
        self.table.cellDoubleClicked.connect(self._pick_colour)
        self.outline_check.toggled.connect(self._outline)

    # -- layer -> widgets ----------------------------------------------------------------------
    def show_layer(self, layer: Layer | None) -> None:
        """List ``layer``'s labels (a label layer), or nothing."""
        if layer is None or layer.kind != "labels":
            self.layer = None
            self._ids = []
            self.table.setRowCount(0)
            return
        rebuild = layer is not self.layer
        self.layer = layer
        if rebuild:
            self._ids = label_ids(layer)
        self._updating = True
        try:
            self.source_label.setText(
                f"names: {layer.label_source}" if layer.label_names and layer.label_source
                else ("names given by the program" if layer.label_names else
                      "no label table with this map: numbers only"))
            self.outline_check.setChecked(layer.outline)
            style = layer.label_style()
            slots, lut = style[1], style[2]
            if rebuild or self.table.rowCount() != len(self._ids):
                self.table.setRowCount(len(self._ids))
                for row, i in enumerate(self._ids):
                    item = QtWidgets.QTableWidgetItem(str(i))
                    item.setFlags(_Qt.ItemFlag.ItemIsEnabled | _Qt.ItemFlag.ItemIsUserCheckable)
                    item.setData(_Qt.ItemDataRole.UserRole, i)
                    self.table.setItem(row, 0, item)
                    for col in (1, 2):
                        other = QtWidgets.QTableWidgetItem("")
                        other.setFlags(_Qt.ItemFlag.ItemIsEnabled)
                        self.table.setItem(row, col, other)
            # update in place (this may run inside the table's own itemChanged)
            for row, i in enumerate(self._ids):
                state = (_Qt.CheckState.Unchecked if i in layer.hidden_labels
                         else _Qt.CheckState.Checked)
                if self.table.item(row, 0).checkState() != state:
                    self.table.item(row, 0).setCheckState(state)
                self.table.item(row, 1).setText(layer.label_names.get(i, ""))
                rgb = layer.label_colors.get(i)
                if rgb is None:
                    s = int(slots[i]) if i < slots.size else 0
                    rgb = tuple(int(c) for c in (lut[s] if s else _DEFAULT[(i - 1) % 255 + 1])[:3])
                self.table.item(row, 2).setBackground(QtGui.QColor(*rgb))
            self.table.resizeColumnToContents(0)
        finally:
            self._updating = False

    # -- widgets -> layer ----------------------------------------------------------------------
    def _item_changed(self, item: QtWidgets.QTableWidgetItem) -> None:
        if self._updating or self.layer is None or item.column() != 0:
            return
        i = int(item.data(_Qt.ItemDataRole.UserRole))
        hidden = set(self.layer.hidden_labels)
        if item.checkState() == _Qt.CheckState.Checked:
            hidden.discard(i)
        else:
            hidden.add(i)
        self.layer.hidden_labels = hidden

    def _outline(self, on: bool) -> None:
        if not self._updating and self.layer is not None:
            self.layer.outline = on

    def set_label_colour(self, label: int, rgb: tuple[int, int, int]) -> None:
        if self.layer is not None:
            self.layer.label_colors = {**self.layer.label_colors, int(label): tuple(rgb)}

    def _pick_colour(self, row: int, column: int) -> None:  # pragma: no cover - a dialog
        if column != 2 or self.layer is None or row >= len(self._ids):
            return
        current = self.table.item(row, 2).background().color()
        colour = QtWidgets.QColorDialog.getColor(current, self, "Label colour")
        if colour.isValid():
            self.set_label_colour(self._ids[row], (colour.red(), colour.green(), colour.blue()))
