"""Contrast of the active image or overlay layer: presets (CT brain / soft tissue / lung / bone,
Dixon water / fat, auto, full range), numeric window width and level, and a small histogram of
the layer's values with the window drawn on it (ITK-SNAP's contrast dialog). Writes only
through the layer; follows it when the window changes elsewhere (a right-drag in a view)."""

from __future__ import annotations

import weakref

import numpy as np
from PySide6 import QtCore, QtGui, QtWidgets

from bodyage_core.viewer import Layer
from bodyage_core.viewer.windowing import (
    guess_modality,
    histogram,
    matching_preset,
    presets_for,
    range_of,
    window_of,
)

_Qt = QtCore.Qt
CUSTOM = "custom"


class QtHistogram(QtWidgets.QWidget):
    """Log-count histogram of a layer's values over their whole range, the display window
    shaded and its ends drawn as lines."""

    def __init__(self, parent: QtWidgets.QWidget | None = None):
        super().__init__(parent)
        self.counts = np.zeros(0, np.int64)
        self.edges = np.zeros(0)
        self.window = (0.0, 1.0)
        self.setMinimumHeight(44)
        self.setSizePolicy(QtWidgets.QSizePolicy.Policy.Expanding,
                           QtWidgets.QSizePolicy.Policy.Fixed)
        self.setToolTip("Values of the layer (log count) and the display window")

    def sizeHint(self) -> QtCore.QSize:  # noqa: N802
        return QtCore.QSize(200, 48)

    def set_data(self, counts: np.ndarray, edges: np.ndarray) -> None:
        self.counts, self.edges = np.asarray(counts), np.asarray(edges, float)
        self.update()

    def set_window(self, vmin: float, vmax: float) -> None:
        self.window = (float(vmin), float(vmax))
        self.update()

    def _x(self, value: float) -> float:
        lo, hi = float(self.edges[0]), float(self.edges[-1])
        return (value - lo) / (hi - lo) * self.width() if hi > lo else 0.0

    def window_x(self) -> tuple[float, float]:
        """Pixel columns of the window's ends (clipped to the widget)."""
        if self.edges.size < 2:
            return (0.0, 0.0)
        w = float(self.width())
        return (min(max(self._x(self.window[0]), 0.0), w),
                min(max(self._x(self.window[1]), 0.0), w))

    def paintEvent(self, _ev) -> None:  # noqa: N802
        p = QtGui.QPainter(self)
        w, h = self.width(), self.height()
        p.fillRect(0, 0, w, h, QtGui.QColor(20, 20, 20))
        if self.counts.size and self.counts.max() > 0:
            x0, x1 = self.window_x()
            p.fillRect(QtCore.QRectF(x0, 0, max(x1 - x0, 1.0), h), QtGui.QColor(60, 60, 90))
            logc = np.log1p(self.counts.astype(float))
            logc /= logc.max()
            bw = w / logc.size
            p.setPen(_Qt.PenStyle.NoPen)
            p.setBrush(QtGui.QColor(200, 200, 200))
            for i, c in enumerate(logc):
                bh = c * (h - 4)
                p.drawRect(QtCore.QRectF(i * bw, h - bh, max(bw - 0.5, 0.5), bh))
            pen = QtGui.QPen(QtGui.QColor(255, 200, 0))
            pen.setWidth(2)
            p.setPen(pen)
            for x in (x0, x1):
                p.drawLine(QtCore.QPointF(x, 0), QtCore.QPointF(x, h))
        p.end()


class QtContrastPanel(QtWidgets.QWidget):
    """Presets, window width / level and the histogram of one layer (``show_layer``)."""

    def __init__(self, parent: QtWidgets.QWidget | None = None):
        super().__init__(parent)
        self.layer: Layer | None = None
        self._state = None
        self._hist_key: tuple | None = None
        #: (layer id, id(volume), channel) -> (weak reference to the volume, histogram)
        self._hists: dict[tuple, tuple] = {}
        self._chosen: tuple[str, tuple] | None = None   # last preset chosen and what it set
        self._updating = False
        self.modality_label = QtWidgets.QLabel()
        self.modality_label.setStyleSheet("color: #666;")
        self.preset_combo = QtWidgets.QComboBox()
        self.preset_combo.setToolTip("Window presets (CT windows in Hounsfield units)")
        self.width_spin = _spin(0.0)
        self.width_spin.setToolTip("Window width (max - min)")
        self.level_spin = _spin(None)
        self.level_spin.setToolTip("Window level (the centre of the window)")
        self.histogram = QtHistogram()
        form = QtWidgets.QFormLayout()
        form.setContentsMargins(0, 0, 0, 0)
        form.addRow("preset", self.preset_combo)
        wl = QtWidgets.QHBoxLayout()
        wl.addWidget(QtWidgets.QLabel("W"))
        wl.addWidget(self.width_spin, 1)
        wl.addWidget(QtWidgets.QLabel("L"))
        wl.addWidget(self.level_spin, 1)
        form.addRow("window", wl)
        lay = QtWidgets.QVBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        lay.addWidget(self.modality_label)
        lay.addLayout(form)
        lay.addWidget(self.histogram)
        self.preset_combo.activated.connect(self._preset_chosen)
        self.preset_combo.currentTextChanged.connect(self._preset_text)
        self.width_spin.valueChanged.connect(self._window_typed)
        self.level_spin.valueChanged.connect(self._window_typed)

    # -- layer -> widgets ----------------------------------------------------------------------
    def show_layer(self, layer: Layer | None, state=None) -> None:
        self._state = state
        self.layer = layer if layer is not None and layer.kind != "labels" else None
        if self.layer is None:
            return
        lay = self.layer
        self._updating = True
        try:
            presets = presets_for(lay)
            names = [*presets, CUSTOM]
            if [self.preset_combo.itemText(i) for i in range(self.preset_combo.count())] \
                    != names:
                self.preset_combo.clear()
                self.preset_combo.addItems(names)
            now = (lay.vmin, lay.vmax, lay.channel)
            chosen = self._chosen[0] if self._chosen and self._chosen[1] == now else None
            self.preset_combo.setCurrentText(matching_preset(lay) or chosen or CUSTOM)
            modality, why = guess_modality(lay.volume, lay.channel) if lay.kind == "image" \
                else (None, "")
            self.modality_label.setText(
                f"{modality}, from the {why}" if modality else
                "window: 1-99.5 % of the values by default" if lay.kind == "image" else
                "window: the range of the map's non-zero values by default")
            width, level = window_of(lay.vmin, lay.vmax)
            step = float(f"{max(width, 1e-6) / 100:.1g}")
            for sp in (self.width_spin, self.level_spin):
                sp.setSingleStep(step)
            self.width_spin.setValue(width)
            self.level_spin.setValue(level)
            key = (lay.id, id(lay.volume), lay.channel)
            if key != self._hist_key:
                hit = self._hists.get(key)
                if hit is None or hit[0]() is not lay.volume:
                    hit = (weakref.ref(lay.volume), histogram(lay.data))
                    while len(self._hists) >= 8:      # the last few layers shown
                        self._hists.pop(next(iter(self._hists)))
                    self._hists[key] = hit
                self.histogram.set_data(*hit[1])
                self._hist_key = key
            self.histogram.set_window(lay.vmin, lay.vmax)
        finally:
            self._updating = False

    # -- widgets -> layer ----------------------------------------------------------------------
    def _preset_chosen(self, index: int) -> None:
        self._apply_preset(self.preset_combo.itemText(index))

    def _preset_text(self, name: str) -> None:
        if not self._updating:
            self._apply_preset(name)

    def _apply_preset(self, name: str) -> None:
        if self._updating or self.layer is None or name == CUSTOM:
            return
        preset = presets_for(self.layer).get(name)
        if preset is not None:
            preset.apply(self._state, self.layer)
            lay = self.layer
            self._chosen = (name, (lay.vmin, lay.vmax, lay.channel))
            self.show_layer(lay, self._state)

    def _window_typed(self, *_) -> None:
        if self._updating or self.layer is None:
            return
        width = max(self.width_spin.value(), 1e-6)
        vmin, vmax = range_of(width, self.level_spin.value())
        self.layer.set(vmin=vmin, vmax=vmax)


def _spin(minimum: float | None) -> QtWidgets.QDoubleSpinBox:
    sp = QtWidgets.QDoubleSpinBox()
    sp.setRange(-1e9 if minimum is None else minimum, 1e9)
    sp.setDecimals(2)
    sp.setKeyboardTracking(False)
    return sp
