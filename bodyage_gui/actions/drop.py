"""Drag and drop onto the viewer window: files and folders open as File > Open would.

* a workspace folder (``cohort.sqlite``) opens the workspace;
* a DICOM folder opens the series browser (one series: straight away);
* image files open: the first is the image, the rest layers on top; with Ctrl held (or when
  every dropped file is a label map or a heat map and an image is open) they are added on top
  of the image shown instead.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from PySide6 import QtCore, QtGui

from bodyage_core.labels import looks_like_label_map

_MAP_WORDS = ("gradcam", "gradxinput", "occlusion", "population", "map", "_seg", "mask")


def dropped_paths(mime: QtCore.QMimeData) -> list[Path]:
    """The local files and folders of a drop (URLs that are not local files are ignored)."""
    if not mime.hasUrls():
        return []
    return [Path(u.toLocalFile()) for u in mime.urls() if u.isLocalFile() and u.toLocalFile()]


def looks_like_map(path: Path) -> bool:
    name = path.name.lower()
    return looks_like_label_map(path) or any(w in name for w in _MAP_WORDS)


class FileDrop(QtCore.QObject):
    """Drops on the window: its drag and drop handlers call :meth:`enter` and :meth:`event`
    (the views do not accept drops, so Qt hands a drop on them to the window)."""

    def __init__(self, window: Any):
        super().__init__(window)
        self.window = window
        window.setAcceptDrops(True)
        #: what the last drop did (``'workspace'``, ``'dicom'``, ``'open'``, ``'overlay'``)
        self.last_action: str | None = None

    def enter(self, ev) -> None:
        """Drag enter / move: accepted when it carries local files or folders."""
        if dropped_paths(ev.mimeData()):
            ev.acceptProposedAction()
        else:
            ev.ignore()

    def event(self, ev) -> bool:
        """The drop itself."""
        paths = dropped_paths(ev.mimeData())
        if not paths:
            ev.ignore()
            return False
        ctrl = bool(ev.modifiers() & QtCore.Qt.KeyboardModifier.ControlModifier)
        ev.acceptProposedAction()
        return self.drop(paths, add=ctrl)

    def drop(self, paths: list[Path], add: bool = False) -> bool:
        """Open dropped ``paths`` (see the module docstring); ``add``: on top of the image."""
        from bodyage_core.errors import LoadError

        win = self.window
        missing = [p for p in paths if not p.exists()]
        if missing:
            win.report_error(LoadError("no such file or folder", path=missing[0],
                                       hint="drop files from this computer"))
            return False
        first = paths[0]
        if first.is_dir() and (first / "cohort.sqlite").is_file():
            self.last_action = "workspace"
            return win.open_workspace(first)
        if first.is_dir():
            self.last_action = "dicom"
            return bool(win.open_dicom_browser(first))
        if win.state.base_layer is not None and (add or all(looks_like_map(p) for p in paths)):
            self.last_action = "overlay"
            return all([win.add_overlay(p) for p in paths])
        self.last_action = "open"
        return win.open_files(paths, wait=False)


def drop_event(paths: list[Path], ctrl: bool = False,
               pos: QtCore.QPointF | None = None) -> QtGui.QDropEvent:
    """A drop event carrying ``paths`` (for tests and scripted drops)."""
    mime = QtCore.QMimeData()
    mime.setUrls([QtCore.QUrl.fromLocalFile(str(p)) for p in paths])
    mods = QtCore.Qt.KeyboardModifier.ControlModifier if ctrl else \
        QtCore.Qt.KeyboardModifier.NoModifier
    ev = QtGui.QDropEvent(pos or QtCore.QPointF(10, 10), QtCore.Qt.DropAction.CopyAction, mime,
                          QtCore.Qt.MouseButton.LeftButton, mods)
    ev._mime = mime        # keep the data alive as long as the event
    return ev
