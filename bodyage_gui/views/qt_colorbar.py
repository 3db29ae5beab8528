"""A colour bar for one layer: the colour map ramp, its display range and threshold."""

from __future__ import annotations

import numpy as np
from PySide6 import QtCore, QtGui, QtWidgets

from bodyage_core import display
from bodyage_core.viewer import Layer, ViewerState


def importance_layer(state: ViewerState) -> Layer | None:
    """The layer rendered as a volume: the active heat map, else the top visible heat map."""
    act = state.active_layer
    if act is not None and act.kind == "overlay" and act.visible:
        return act
    for lay in reversed(state.layers):
        if lay.kind == "overlay" and lay.visible:
            return lay
    return None


def colorbar_layer(state: ViewerState) -> Layer | None:
    """The layer a colour bar describes: the heat map :func:`importance_layer` picks, else the
    base image."""
    return importance_layer(state) or state.base_layer


class QtColorBar(QtWidgets.QWidget):
    """Vertical colour bar following the state (see :func:`colorbar_layer`)."""

    def __init__(self, state: ViewerState, parent: QtWidgets.QWidget | None = None):
        super().__init__(parent)
        self.state = state
        self.setMinimumWidth(78)
        self.setMaximumWidth(96)
        self.setAutoFillBackground(True)
        pal = self.palette()
        pal.setColor(QtGui.QPalette.ColorRole.Window, QtGui.QColor(0, 0, 0))
        self.setPalette(pal)
        for e in (state.events.layers_changed, state.events.active_layer_changed):
            e.connect(self._changed)
        state.events.layer_changed.connect(self._changed)

    def disconnect_state(self) -> None:
        """Stop following the state (call before dropping the widget)."""
        self._disconnect()

    def _disconnect(self, *_):
        for e in (self.state.events.layers_changed, self.state.events.active_layer_changed,
                  self.state.events.layer_changed):
            e.disconnect(self._changed)

    def _changed(self, *_):
        self.update()

    def layer(self) -> Layer | None:
        return colorbar_layer(self.state)

    def paintEvent(self, ev):  # noqa: N802
        lay = self.layer()
        p = QtGui.QPainter(self)
        p.fillRect(self.rect(), QtGui.QColor(0, 0, 0))
        if lay is None:
            return
        p.setPen(QtGui.QColor(230, 230, 230))
        f = p.font()
        f.setPixelSize(11)
        p.setFont(f)
        fm = p.fontMetrics()
        top, bottom = 34, self.height() - 26
        h = max(10, bottom - top)
        bar_w = 16
        x0 = 8
        if lay.kind == "labels":
            p.drawText(QtCore.QRect(0, 4, self.width(), 28),
                       QtCore.Qt.AlignmentFlag.AlignHCenter | QtCore.Qt.TextFlag.TextWordWrap,
                       f"{lay.name}\n(labels)")
            return
        ramp = display.colorbar_rgba(lay.colormap, h, bar_w)
        # alpha of the ramp shows the threshold: transparent part drawn checkered
        values = np.linspace(lay.vmax, lay.vmin, h)
        if lay.threshold is not None:
            hidden = (np.abs(values) < lay.threshold) if display.is_diverging(lay.colormap) \
                else (values < lay.threshold)
            ramp = ramp.copy()
            ramp[hidden, :, :3] = (ramp[hidden, :, :3] * 0.25).astype(np.uint8)
        img = QtGui.QImage(np.ascontiguousarray(ramp).data, bar_w, h, bar_w * 4,
                           QtGui.QImage.Format.Format_RGBA8888).copy()
        p.drawImage(x0, top, img)
        p.drawRect(x0, top, bar_w, h)
        name = fm.elidedText(lay.name, QtCore.Qt.TextElideMode.ElideRight, self.width() - 4)
        p.drawText(QtCore.QRect(2, 4, self.width() - 4, 14), QtCore.Qt.AlignmentFlag.AlignLeft,
                   name)
        p.drawText(QtCore.QRect(2, 18, self.width() - 4, 14), QtCore.Qt.AlignmentFlag.AlignLeft,
                   lay.colormap)
        tx = x0 + bar_w + 4
        p.drawText(tx, top + fm.ascent(), _fmt(lay.vmax))
        p.drawText(tx, bottom, _fmt(lay.vmin))
        if lay.threshold is not None and lay.vmax != lay.vmin:
            for t in ([lay.threshold, -lay.threshold] if display.is_diverging(lay.colormap)
                      else [lay.threshold]):
                frac = (lay.vmax - t) / (lay.vmax - lay.vmin)
                if 0 <= frac <= 1:
                    y = int(top + frac * h)
                    p.setPen(QtGui.QPen(QtGui.QColor(0, 220, 90), 2))
                    p.drawLine(x0 - 4, y, x0 + bar_w + 2, y)
                    p.setPen(QtGui.QColor(0, 220, 90))
                    p.drawText(tx, y + fm.ascent() // 2, f"thr {_fmt(t)}")
                    p.setPen(QtGui.QColor(230, 230, 230))
        p.drawText(QtCore.QRect(0, self.height() - 20, self.width(), 18),
                   QtCore.Qt.AlignmentFlag.AlignHCenter, "raw values")


def _fmt(v: float) -> str:
    return f"{v:.4g}"
