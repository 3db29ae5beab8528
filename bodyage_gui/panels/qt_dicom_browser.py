"""File > Open DICOM folder: the folder's patients, studies and series in a tree (series
description, modality, number of slices, matrix, the patient's age and sex), read from the
headers in the background (:mod:`bodyage_core.viewer.dicom_series`); pick a series and Open.

The patient's age from the header (``PatientAge``) is offered as the chronological age: with
"Use PatientAge ... as the chronological age" ticked it goes with the image (its
``metadata['age']``), so Predict gives the age gap. A folder that holds one series opens it
straight away when ``open_single`` is set (a drop, the command line).
"""

from __future__ import annotations

import concurrent.futures as cf
from pathlib import Path
from typing import Any

from PySide6 import QtCore, QtWidgets

from bodyage_core.errors import BodyageError
from bodyage_core.viewer.dicom_series import DicomSeries, scan_folder, tree
from bodyage_gui.background import LatestRequest

_Qt = QtCore.Qt
COLUMNS = ("patient / study / series", "modality", "slices", "matrix", "age", "sex")
_ROLE = _Qt.ItemDataRole.UserRole


def _age_text(s: DicomSeries) -> str:
    if s.patient_age is None:
        return s.patient_age_text or ""
    return f"{s.patient_age:g} y"


class QtDicomBrowser(QtWidgets.QDialog):
    """The series browser of one folder (see the module docstring). ``series_opened(object)``
    is emitted with the :class:`DicomSeries` once its image is shown."""

    series_opened = QtCore.Signal(object)
    scanned = QtCore.Signal()

    def __init__(self, window: Any, folder: str | Path | None = None,
                 parent: QtWidgets.QWidget | None = None):
        super().__init__(parent or window)
        self.window = window
        self.setWindowTitle("DICOM series")
        self.setModal(False)
        self.resize(760, 420)
        self.series: list[DicomSeries] = []
        self._pool = cf.ThreadPoolExecutor(1, thread_name_prefix="dicom-scan")
        self.scan = LatestRequest(self)
        self.folder_edit = QtWidgets.QLineEdit(str(folder or ""))
        browse = QtWidgets.QPushButton("Folder...")
        browse.clicked.connect(self._ask_folder)
        self.folder_edit.returnPressed.connect(lambda: self.set_folder(self.folder_edit.text()))
        self.tree = QtWidgets.QTreeWidget()
        self.tree.setObjectName("dicom_tree")
        self.tree.setColumnCount(len(COLUMNS))
        self.tree.setHeaderLabels(list(COLUMNS))
        self.tree.setAlternatingRowColors(True)
        self.tree.itemSelectionChanged.connect(self._selection_changed)
        self.tree.itemDoubleClicked.connect(lambda item, _c: self.open_selected())
        self.details = QtWidgets.QLabel("")
        self.details.setWordWrap(True)
        self.details.setTextInteractionFlags(_Qt.TextInteractionFlag.TextSelectableByMouse)
        self.age_check = QtWidgets.QCheckBox("Use PatientAge from the header as the "
                                             "chronological age")
        self.age_check.setChecked(True)
        self.age_check.setToolTip("Predict then shows the age gap (predicted - chronological)")
        self.status = QtWidgets.QLabel("")
        self.open_button = QtWidgets.QPushButton("Open series")
        self.open_button.setDefault(True)
        self.open_button.setEnabled(False)
        self.open_button.clicked.connect(self.open_selected)
        close = QtWidgets.QPushButton("Close")
        close.clicked.connect(self.close)
        top = QtWidgets.QHBoxLayout()
        top.addWidget(QtWidgets.QLabel("Folder"))
        top.addWidget(self.folder_edit, 1)
        top.addWidget(browse)
        bottom = QtWidgets.QHBoxLayout()
        bottom.addWidget(self.status, 1)
        bottom.addWidget(self.open_button)
        bottom.addWidget(close)
        lay = QtWidgets.QVBoxLayout(self)
        lay.addLayout(top)
        lay.addWidget(self.tree, 1)
        lay.addWidget(self.details)
        lay.addWidget(self.age_check)
        lay.addLayout(bottom)
        if folder:
            self.set_folder(folder)

    # -- scanning -------------------------------------------------------------------------------
    def set_folder(self, folder: str | Path, wait: bool = False) -> bool:
        """Read the folder's headers (in the background unless ``wait``) and fill the tree."""
        folder = Path(folder)
        self.folder_edit.setText(str(folder))
        self.tree.clear()
        self.series = []
        self.open_button.setEnabled(False)
        self.status.setText(f"reading the DICOM headers in {folder} ...")
        return bool(self.scan.submit(self._pool, scan_folder, folder,
                                     then=lambda f: self._fill(f, folder), wait=wait))

    def wait(self, timeout: float = 60.0) -> bool:
        return bool(self.scan.wait(timeout))

    def _fill(self, fut, folder: Path) -> bool:
        try:
            series = fut.result()
        except (BodyageError, OSError) as err:
            self.status.setText(str(err))
            self.scanned.emit()
            return False
        self.series = series
        self.tree.clear()
        first = None
        for patient, studies in tree(series).items():
            p_item = QtWidgets.QTreeWidgetItem([patient])
            self.tree.addTopLevelItem(p_item)
            for study, items in studies.items():
                s_item = QtWidgets.QTreeWidgetItem([study])
                p_item.addChild(s_item)
                for s in items:
                    size = f"{s.columns} x {s.rows}" if s.rows and s.columns else ""
                    item = QtWidgets.QTreeWidgetItem(
                        [s.label, s.modality, str(s.n_slices), size, _age_text(s),
                         s.patient_sex or ""])
                    item.setData(0, _ROLE, s.key)
                    item.setToolTip(0, f"{s.summary()}\nseries UID: {s.uid or '(none)'}")
                    for c in (2, 4):
                        item.setTextAlignment(c, _Qt.AlignmentFlag.AlignRight)
                    s_item.addChild(item)
                    first = first or item
        self.tree.expandAll()
        for c in range(len(COLUMNS)):
            self.tree.resizeColumnToContents(c)
        n = len(series)
        self.status.setText(f"{n} series in {folder}" if n else
                            f"no DICOM image series in {folder}")
        if first is not None:
            self.tree.setCurrentItem(first)
        self.scanned.emit()
        return True

    def _ask_folder(self) -> None:
        path = QtWidgets.QFileDialog.getExistingDirectory(self, "A DICOM folder",
                                                          self.folder_edit.text())
        if path:
            self.set_folder(path)

    # -- choosing -------------------------------------------------------------------------------
    def selected(self) -> DicomSeries | None:
        item = self.tree.currentItem()
        key = item.data(0, _ROLE) if item is not None else None
        return next((s for s in self.series if s.key == key), None)

    def select(self, description: str) -> bool:
        """Select the series whose description (or label) contains ``description``."""
        it = QtWidgets.QTreeWidgetItemIterator(self.tree)
        while it.value():
            item = it.value()
            if item.data(0, _ROLE) and description in item.text(0):
                self.tree.setCurrentItem(item)
                return True
            it += 1
        return False

    def _selection_changed(self) -> None:
        s = self.selected()
        self.open_button.setEnabled(s is not None)
        if s is None:
            self.details.setText("")
            return
        age = f"{s.patient_age:g} y ({s.patient_age_text})" if s.patient_age is not None \
            else "not in the header"
        self.details.setText(f"{s.summary()} — patient {s.patient_id or '?'}, age {age}, "
                             f"sex {s.patient_sex or '?'}; study "
                             f"{s.study_description or s.study_uid or '?'}")
        self.age_check.setEnabled(s.patient_age is not None)

    def open_selected(self) -> bool:
        """Open the selected series in the viewer (read in the window's background loader)."""
        s = self.selected()
        if s is None:
            return False
        win = self.window
        use_age = self.age_check.isChecked() and s.patient_age is not None
        ok = win.files.open_series(s, use_age=use_age, wait=True)
        if ok:
            self.series_opened.emit(s)
        return ok

    def closeEvent(self, ev):  # noqa: N802
        self.scan.drop()
        self._pool.shutdown(wait=False, cancel_futures=True)
        super().closeEvent(ev)


def open_browser(window: Any, folder: str | Path | None = None,
                 wait: bool = False) -> QtDicomBrowser:
    """Show the browser of ``folder`` for ``window`` (one per window, reused)."""
    dlg = getattr(window, "dicom_browser", None)
    if dlg is None:
        dlg = QtDicomBrowser(window)
        window.dicom_browser = dlg
    if folder is not None:
        dlg.set_folder(folder, wait=wait)
    dlg.show()
    dlg.raise_()
    return dlg
