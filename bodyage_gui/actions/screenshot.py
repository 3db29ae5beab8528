"""File > Save screenshot: the views with the colour bar (or the whole window) as PNG, the 3D
view's own rendering painted in where it is shown."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from PySide6 import QtCore, QtGui, QtWidgets

from bodyage_core.atomic import write_bytes
from bodyage_core.errors import BodyageError
from bodyage_gui import strings


def grab_image(window: Any, whole_window: bool = False) -> QtGui.QImage:
    """Render the views (with colour bar) or the window, 3D view included."""
    from bodyage_gui.views.qt_volume_view import QtVolumeView

    window.scheduler.flush()
    QtWidgets.QApplication.processEvents()
    window.scheduler.flush()
    target = window if whole_window else window.views_widget
    img = target.grab().toImage()
    vv = window.volume_view
    if isinstance(vv, QtVolumeView) and vv.available and vv.isVisible():
        shot = vv.render_image()
        if shot is not None:
            top_left = vv.vtk_widget.mapTo(target, QtCore.QPoint(0, 0))
            size = vv.vtk_widget.size()
            painter = QtGui.QPainter(img)
            painter.drawImage(QtCore.QRect(top_left, size), shot)
            painter.end()
    return img


def save_png(img: QtGui.QImage, path: str | Path) -> None:
    """Encode ``img`` as PNG and write it atomically."""
    path = Path(path)
    buf = QtCore.QBuffer()
    buf.open(QtCore.QIODevice.OpenModeFlag.WriteOnly)
    if not img.save(buf, "PNG"):
        raise BodyageError("could not encode the screenshot", path=path)
    write_bytes(path, bytes(buf.data()))


def save_screenshot(window: Any, path: str | Path, whole_window: bool = False) -> bool:
    path = Path(path)

    def do():
        save_png(grab_image(window, whole_window), path)
        window.statusBar().showMessage(f"screenshot saved: {path}", 5000)
        return True

    return bool(window.guard(do))


def ask_screenshot(window: Any) -> None:
    path, _ = QtWidgets.QFileDialog.getSaveFileName(window, "Save screenshot", "views.png",
                                                    strings.PNG_FILTER)
    if path:
        save_screenshot(window, path)
