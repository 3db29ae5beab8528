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

    @staticmethod
    def threshold_marks(lay: Layer, top: int, h: int) -> list[int]:
        """y of each threshold line on the bar (``+-t`` for a diverging map)."""
        if lay.threshold is None or lay.vmax == lay.vmin:
            return []
        ts = [lay.threshold, -lay.threshold] if display.is_diverging(lay.colormap) \
            else [lay.threshold]
        return [int(top + _frac(lay, t) * h) for t in ts if 0 <= _frac(lay, t) <= 1]

    def label_layout(self, lay: Layer, top: int, h: int, fm: QtGui.QFontMetrics,
                     tx: int) -> list[tuple[str, QtCore.QRect, bool]]:
        """``(text, rect, is_threshold)`` of the value labels beside the bar: the maximum at
        the top, the minimum at the bottom, each threshold at its line, pushed apart so that
        no two overlap (a threshold close to an end, or the two of a diverging map close to
        0, were drawn over each other); a diverging map's two thresholds that cannot both
        fit become one ``thr +-t`` label."""
        lh = fm.height()
        width = max(10, self.width() - tx - 1)
        bottom = top + h
        fixed = [(_fmt(lay.vmax), top + lh // 2, False), (_fmt(lay.vmin), bottom - lh // 2, False)]
        marks = self.threshold_marks(lay, top, h)
        thr: list[tuple[str, int, bool]] = []
        if len(marks) == 2 and abs(marks[0] - marks[1]) < lh:
            thr = [(f"thr ±{_fmt(lay.threshold)}", (marks[0] + marks[1]) // 2, True)]
        elif marks:
            vals = [lay.threshold, -lay.threshold][:len(marks)]
            thr = [(f"thr {_fmt(v)}", y, True) for v, y in zip(vals, marks)]
        lo, hi = fixed[0][1] + lh, fixed[1][1] - lh      # room between the end labels
        placed: list[tuple[str, int, bool]] = []
        for text, y, flag in sorted(thr, key=lambda t: t[1]):
            y = max(y, lo if not placed else placed[-1][1] + lh)
            placed.append((text, y, flag))
        # from the bottom up: nothing below the minimum's label
        for i in range(len(placed) - 1, -1, -1):
            limit = hi if i == len(placed) - 1 else placed[i + 1][1] - lh
            if placed[i][1] > limit:
                placed[i] = (placed[i][0], limit, placed[i][2])
        placed = [t for t in placed if lo <= t[1] <= hi]          # no room: left out
        return [(text, QtCore.QRect(tx, y - lh // 2, width, lh), flag)
                for text, y, flag in fixed + placed]

    def labels(self) -> list[tuple[str, QtCore.QRect, bool]]:
        """The value labels as the widget draws them now (:meth:`label_layout`)."""
        lay = self.layer()
        if lay is None or lay.kind == "labels":
            return []
        f = QtGui.QFont(self.font())
        f.setPixelSize(11)
        top, bottom = 34, self.height() - 26
        return self.label_layout(lay, top, max(10, bottom - top), QtGui.QFontMetrics(f),
                                 8 + 16 + 4)

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
        green = QtGui.QColor(0, 220, 90)
        for y in self.threshold_marks(lay, top, h):
            p.setPen(QtGui.QPen(green, 2))
            p.drawLine(x0 - 4, y, x0 + bar_w + 2, y)
        white = QtGui.QColor(230, 230, 230)
        for text, rect, is_thr in self.label_layout(lay, top, h, fm, tx):
            p.setPen(green if is_thr else white)
            p.drawText(rect, QtCore.Qt.AlignmentFlag.AlignLeft |
                       QtCore.Qt.AlignmentFlag.AlignVCenter, text)
        p.setPen(white)
        p.drawText(QtCore.QRect(0, self.height() - 20, self.width(), 18),
                   QtCore.Qt.AlignmentFlag.AlignHCenter, "raw values")


def _frac(lay: Layer, v: float) -> float:
    return (lay.vmax - v) / (lay.vmax - lay.vmin) if lay.vmax != lay.vmin else 0.0


def _fmt(v: float) -> str:
    return f"{v:.4g}"
