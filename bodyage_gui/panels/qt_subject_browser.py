"""Subject browser: a sortable, filterable table of the cohort (id, sex, BMI group, age,
predicted, sigma, gap) with next/previous, and a background preloader for the next subject."""

from __future__ import annotations

import concurrent.futures as cf
from collections.abc import Callable
from typing import Any

from PySide6 import QtCore, QtWidgets

from bodyage_gui import strings

_Qt = QtCore.Qt
_KEYS = ("subject_id", "sex", "bmi_group", "age", "predicted", "sigma", "gap")
#: filter words that name a sex or a BMI group: they match that cell exactly ("m" is men,
#: not every id with an m in it)
_CATEGORIES = {"m", "f", "healthy", "overweight", "obese"}


class SubjectTableModel(QtCore.QAbstractTableModel):
    """Rows are dicts with the keys ``subject_id, sex, bmi_group, age, predicted, sigma, gap``
    (missing predictions are None and show empty)."""

    def __init__(self, rows: list[dict[str, Any]] | None = None, parent=None):
        super().__init__(parent)
        self._rows = list(rows or [])

    def set_rows(self, rows: list[dict[str, Any]]) -> None:
        self.beginResetModel()
        self._rows = list(rows)
        self.endResetModel()

    def row_dict(self, row: int) -> dict[str, Any]:
        return self._rows[row]

    def update_row(self, subject_id: str, values: dict[str, Any]) -> bool:
        """Change some values of one subject's row in place (sort and filter kept); False when
        there is no such subject."""
        for i, r in enumerate(self._rows):
            if r.get("subject_id") == subject_id:
                r.update({k: v for k, v in values.items() if k in _KEYS})
                self.dataChanged.emit(self.index(i, 0), self.index(i, len(_KEYS) - 1))
                return True
        return False

    def rowCount(self, parent=QtCore.QModelIndex()):  # noqa: N802
        return 0 if parent.isValid() else len(self._rows)

    def columnCount(self, parent=QtCore.QModelIndex()):  # noqa: N802
        return len(_KEYS)

    def headerData(self, section, orientation, role=_Qt.ItemDataRole.DisplayRole):  # noqa: N802
        if orientation != _Qt.Orientation.Horizontal:
            return None
        if role == _Qt.ItemDataRole.DisplayRole:
            return strings.SUBJECT_COLUMNS[section]
        if role == _Qt.ItemDataRole.ToolTipRole:
            return strings.SUBJECT_COLUMN_TIPS[section]
        return None

    def data(self, index, role=_Qt.ItemDataRole.DisplayRole):
        if not index.isValid():
            return None
        v = self._rows[index.row()].get(_KEYS[index.column()])
        if role == _Qt.ItemDataRole.DisplayRole:
            if v is None:
                return ""
            return f"{v:.1f}" if isinstance(v, float) else str(v)
        if role == _Qt.ItemDataRole.UserRole:  # sort key
            return v if v is not None else ""
        if role == _Qt.ItemDataRole.TextAlignmentRole and isinstance(v, (int, float)):
            return int(_Qt.AlignmentFlag.AlignRight | _Qt.AlignmentFlag.AlignVCenter)
        return None


class _SortProxy(QtCore.QSortFilterProxyModel):
    """Sorted by value (empty last); filtered by words: a row is kept when every word of the
    filter matches one of its cells ("M obese": men of the obese group; a sex or BMI group
    word matches that cell exactly, any other word a part of any cell)."""

    def __init__(self, parent=None):
        super().__init__(parent)
        self.words: list[str] = []

    def set_words(self, text: str) -> None:
        if hasattr(self, "beginFilterChange"):     # Qt >= 6.9 (invalidateFilter deprecated)
            self.beginFilterChange()
            self.words = [w.lower() for w in text.split()]
            self.endFilterChange(QtCore.QSortFilterProxyModel.Direction.Rows)
        else:
            self.words = [w.lower() for w in text.split()]
            self.invalidateFilter()

    def filterAcceptsRow(self, row, parent):  # noqa: N802
        if not self.words:
            return True
        model = self.sourceModel()
        cells = [str(model.index(row, c, parent).data() or "").lower()
                 for c in range(model.columnCount())]
        exact = {cells[1], cells[2]}            # sex, BMI group: whole words
        return all(w in exact if w in _CATEGORIES else any(w in c for c in cells)
                   for w in self.words)

    def lessThan(self, left, right):  # noqa: N802
        a = left.data(_Qt.ItemDataRole.UserRole)
        b = right.data(_Qt.ItemDataRole.UserRole)
        if isinstance(a, (int, float)) and isinstance(b, (int, float)):
            return a < b
        if a == "" or b == "":  # empty last
            return a != "" and b == ""
        return str(a) < str(b)


class QtSubjectBrowser(QtWidgets.QWidget):
    """Table of subjects; emits ``subject_activated(subject_id)`` on double click / Enter and on
    :meth:`select_next` / :meth:`select_previous` (which follow the current sort and filter)."""

    subject_activated = QtCore.Signal(str)

    def __init__(self, parent: QtWidgets.QWidget | None = None):
        super().__init__(parent)
        self.model = SubjectTableModel()
        self.proxy = _SortProxy(self)
        self.proxy.setSourceModel(self.model)
        self.filter_edit = QtWidgets.QLineEdit()
        self.filter_edit.setPlaceholderText("filter: words, all must match (M obese, 0004 ...)")
        self.filter_edit.setClearButtonEnabled(True)
        self.filter_edit.textChanged.connect(self._filter)
        self.table = QtWidgets.QTableView()
        self.table.setModel(self.proxy)
        self.table.setSortingEnabled(True)
        self.table.sortByColumn(0, _Qt.SortOrder.AscendingOrder)
        self.table.setSelectionBehavior(QtWidgets.QAbstractItemView.SelectionBehavior.SelectRows)
        self.table.setSelectionMode(QtWidgets.QAbstractItemView.SelectionMode.SingleSelection)
        self.table.setEditTriggers(QtWidgets.QAbstractItemView.EditTrigger.NoEditTriggers)
        self.table.verticalHeader().setVisible(False)
        # compact rows (fixed height: cheap for a cohort of thousands)
        self.table.verticalHeader().setDefaultSectionSize(self.table.fontMetrics().height() + 6)
        # columns as wide as their contents (a stretched last column kept a width of 100 px
        # that pushed sigma and gap under a horizontal scroll bar at the default size)
        self.table.horizontalHeader().setStretchLastSection(False)
        self.table.horizontalHeader().setMinimumSectionSize(24)  # empty columns stay narrow
        self.table.doubleClicked.connect(self._activated)
        self.table.activated.connect(self._activated)
        self.status = QtWidgets.QLabel("")
        lay = QtWidgets.QVBoxLayout(self)
        lay.setContentsMargins(2, 2, 2, 2)
        lay.addWidget(self.filter_edit)
        lay.addWidget(self.table)
        lay.addWidget(self.status)
        self.current_id: str | None = None

    def set_subjects(self, rows: list[dict[str, Any]]) -> None:
        self.model.set_rows(rows)
        self.table.resizeColumnsToContents()
        self._update_count()

    def _filter(self, text: str) -> None:
        self.proxy.set_words(text)
        self._update_count()

    def _update_count(self) -> None:
        n, shown = self.model.rowCount(), self.proxy.rowCount()
        self.status.setText(f"{n} subjects" if shown == n else f"{shown} of {n} subjects "
                            f"(filter: {self.filter_edit.text()!r})")

    def table_width(self) -> int:
        """Pixels the panel needs to show every column without a horizontal scroll bar."""
        t = self.table
        head = t.horizontalHeader()
        # from the contents, not columnWidth: the last section stretches to the panel
        cols = sum(max(t.sizeHintForColumn(c), head.sectionSizeFromContents(c).width())
                   for c in range(self.model.columnCount()))
        margins = self.layout().contentsMargins()
        return (cols + t.verticalScrollBar().sizeHint().width() + 2 * t.frameWidth()
                + margins.left() + margins.right() + 4)

    def visible_ids(self) -> list[str]:
        """Subject ids in the current sort order, after filtering."""
        return [self.proxy.index(r, 0).data() for r in range(self.proxy.rowCount())]

    def neighbour(self, step: int) -> str | None:
        """The id ``step`` rows from the current subject in the visible order (None at an end)."""
        ids = self.visible_ids()
        if not ids:
            return None
        if self.current_id not in ids:
            return ids[0] if step > 0 else ids[-1]
        i = ids.index(self.current_id) + step
        return ids[i] if 0 <= i < len(ids) else None

    def select(self, subject_id: str, emit: bool = True) -> None:
        ids = self.visible_ids()
        self.current_id = subject_id
        if subject_id in ids:
            self.table.selectRow(ids.index(subject_id))
        if emit:
            self.subject_activated.emit(subject_id)

    def select_next(self) -> str | None:
        sid = self.neighbour(+1)
        if sid is not None:
            self.select(sid)
        return sid

    def select_previous(self) -> str | None:
        sid = self.neighbour(-1)
        if sid is not None:
            self.select(sid)
        return sid

    def _activated(self, index: QtCore.QModelIndex):
        sid = self.proxy.index(index.row(), 0).data()
        if sid:
            self.select(sid)


class SubjectPreloader:
    """Loads subjects in one background thread (Qt-free); ``get`` returns the preloaded result
    or loads now. ``load(subject_id)`` must be thread safe (it only reads files)."""

    def __init__(self, load: Callable[[str], Any], keep: int = 3):
        self._load = load
        self._pool = cf.ThreadPoolExecutor(max_workers=1, thread_name_prefix="preload")
        self._futures: dict[str, cf.Future] = {}
        self._keep = keep

    def preload(self, subject_id: str | None) -> None:
        if subject_id is None or subject_id in self._futures:
            return
        self._futures[subject_id] = self._pool.submit(self._load, subject_id)
        while len(self._futures) > self._keep:
            old = next(iter(self._futures))
            self._futures.pop(old).cancel()

    def future(self, subject_id: str) -> cf.Future:
        """The (possibly running or finished) load of a subject; started if needed."""
        f = self._futures.get(subject_id)
        if f is None or f.cancelled():
            f = self._pool.submit(self._load, subject_id)
            self._futures[subject_id] = f
        return f

    def take(self, subject_id: str) -> None:
        """Forget a subject's load (its result was used)."""
        self._futures.pop(subject_id, None)

    def is_preloaded(self, subject_id: str) -> bool:
        f = self._futures.get(subject_id)
        return f is not None and f.done() and f.exception() is None

    def get(self, subject_id: str) -> Any:
        f = self._futures.pop(subject_id, None)
        if f is not None and not f.cancelled():
            return f.result()
        return self._load(subject_id)

    def clear(self) -> None:
        for f in self._futures.values():
            f.cancel()
        self._futures.clear()

    def shutdown(self) -> None:
        self.clear()
        self._pool.shutdown(wait=False, cancel_futures=True)
