"""Help > Keyboard and mouse shortcuts: the bindings table (:mod:`bodyage_gui.bindings`) in a
two-column dialog, one row per binding."""

from __future__ import annotations

from PySide6 import QtCore, QtWidgets

from bodyage_gui import bindings

_Qt = QtCore.Qt


def shortcuts_text() -> str:
    return "\n".join(f"{k:<22} {v}" for k, v in bindings.help_rows())


def show_shortcuts(parent: QtWidgets.QWidget) -> QtWidgets.QDialog:
    """The non-modal table, every description on one line."""
    box = QtWidgets.QDialog(parent)
    box.setWindowTitle("Keyboard and mouse shortcuts")
    rows = bindings.help_rows()
    table = QtWidgets.QTableWidget(len(rows), 2, box)
    table.setObjectName("shortcuts_table")
    table.setHorizontalHeaderLabels(["key / mouse", "action"])
    for i, (key, what) in enumerate(rows):
        for j, t in enumerate((key, what)):
            item = QtWidgets.QTableWidgetItem(t)
            item.setFlags(_Qt.ItemFlag.ItemIsEnabled | _Qt.ItemFlag.ItemIsSelectable)
            table.setItem(i, j, item)
    table.verticalHeader().setVisible(False)
    table.setWordWrap(False)
    table.setAlternatingRowColors(True)
    table.setEditTriggers(QtWidgets.QAbstractItemView.EditTrigger.NoEditTriggers)
    table.resizeColumnsToContents()
    table.resizeRowsToContents()
    table.horizontalHeader().setStretchLastSection(True)
    buttons = QtWidgets.QDialogButtonBox(QtWidgets.QDialogButtonBox.StandardButton.Close)
    buttons.rejected.connect(box.close)
    lay = QtWidgets.QVBoxLayout(box)
    lay.addWidget(table)
    lay.addWidget(buttons)
    width = (sum(table.columnWidth(c) for c in range(2))
             + table.verticalScrollBar().sizeHint().width() + 40)
    height = (table.horizontalHeader().height() + sum(table.rowHeight(r)
              for r in range(len(rows))) + buttons.sizeHint().height() + 50)
    screen = parent.screen().availableGeometry() if parent.screen() else None
    box.resize(min(width, screen.width() if screen else width),
               min(height, int(screen.height() * 0.9) if screen else height))
    box.open()
    return box
