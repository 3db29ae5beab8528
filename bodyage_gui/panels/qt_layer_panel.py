"""Layer list and display settings of the selected layer (colour map, opacity, display range,
threshold, visibility; window presets, width / level and a histogram: :mod:`.qt_contrast`;
for a label map its labels: :mod:`.qt_label_table`) plus the water/fat channel switch. Writes only through the state."""

from __future__ import annotations

from PySide6 import QtCore, QtWidgets

from bodyage_core import display
from bodyage_core.viewer import Layer, ViewerState
from bodyage_gui.panels.qt_contrast import QtContrastPanel
from bodyage_gui.panels.qt_label_table import QtLabelTable

_Qt = QtCore.Qt


class QtLayerPanel(QtWidgets.QWidget):
    """Follows ``state``: a checkable list of layers (top layer first) and the controls of the
    active layer."""

    def __init__(self, state: ViewerState, parent: QtWidgets.QWidget | None = None):
        super().__init__(parent)
        self.state = state
        self._updating = False
        #: subject space / atlas space toggle (wired by the main window; disabled without a
        #: registration, the tooltip says which command makes one)
        self.space_check = QtWidgets.QCheckBox("atlas space")
        self.space_check.setEnabled(False)
        self.layer_list = QtWidgets.QListWidget()
        self.layer_list.setMaximumHeight(84)
        self.channel_combo = QtWidgets.QComboBox()
        self.channel_combo.setToolTip("Channel shown (water / fat)")
        self.cmap_combo = QtWidgets.QComboBox()
        self.cmap_combo.addItems(list(display.COLORMAPS))
        self.opacity_slider = QtWidgets.QSlider(_Qt.Orientation.Horizontal)
        self.opacity_slider.setRange(0, 100)
        self.vmin_spin = _spin()
        self.vmax_spin = _spin()
        self.threshold_check = QtWidgets.QCheckBox("threshold")
        self.threshold_check.setToolTip("Below the threshold is transparent (|v| for signed maps)")
        self.threshold_spin = _spin()
        self.visible_check = QtWidgets.QCheckBox("visible")
        self.remove_button = QtWidgets.QPushButton("Remove layer")
        #: the labels of a label layer (names, colours, visibility, outline)
        self.labels_box = QtLabelTable()
        self.label_table = self.labels_box.table
        self.outline_check = self.labels_box.outline_check
        self.labels_box.setVisible(False)
        #: presets, window width / level and the histogram of an image or overlay layer
        self.contrast = QtContrastPanel()
        self.contrast.setVisible(False)

        form = QtWidgets.QFormLayout()
        form.addRow("channel", self.channel_combo)
        form.addRow("colour map", self.cmap_combo)
        form.addRow("opacity", self.opacity_slider)
        form.addRow("min", self.vmin_spin)
        form.addRow("max", self.vmax_spin)
        form.addRow(self.threshold_check, self.threshold_spin)
        form.addRow(self.visible_check, self.remove_button)
        body = QtWidgets.QWidget()
        lay = QtWidgets.QVBoxLayout(body)
        lay.setContentsMargins(4, 4, 4, 4)
        lay.addWidget(self.space_check)
        lay.addWidget(self.layer_list)
        lay.addLayout(form)
        lay.addWidget(self.contrast)
        lay.addWidget(self.labels_box, 1)
        lay.addStretch(1)
        # the settings scroll when the dock is short rather than squeezing the docks below
        scroll = QtWidgets.QScrollArea()
        scroll.setWidget(body)
        scroll.setWidgetResizable(True)
        scroll.setFrameShape(QtWidgets.QFrame.Shape.NoFrame)
        scroll.setHorizontalScrollBarPolicy(_Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        outer = QtWidgets.QVBoxLayout(self)
        outer.setContentsMargins(0, 0, 0, 0)
        outer.addWidget(scroll)
        self._body = body

        self.layer_list.currentRowChanged.connect(self._row_selected)
        self.layer_list.itemChanged.connect(self._item_checked)
        self.channel_combo.currentTextChanged.connect(self._channel)
        self.cmap_combo.currentTextChanged.connect(lambda t: self._set(colormap=t))
        self.opacity_slider.valueChanged.connect(lambda v: self._set(opacity=v / 100.0))
        self.vmin_spin.valueChanged.connect(lambda v: self._set(vmin=v))
        self.vmax_spin.valueChanged.connect(lambda v: self._set(vmax=v))
        self.threshold_check.toggled.connect(self._threshold)
        self.threshold_spin.valueChanged.connect(self._threshold)
        self.visible_check.toggled.connect(lambda v: self._set(visible=v))
        self.remove_button.clicked.connect(self._remove)

        ev = state.events
        self._subs = ((ev.layers_changed, self.refresh_list),
                      (ev.active_layer_changed, self._active_changed),
                      (ev.layer_changed, self._layer_changed))
        for e, fn in self._subs:
            e.connect(fn)
        self.refresh_list()

    def preferred_height(self) -> int:
        """The height that shows every control without scrolling."""
        return self._body.sizeHint().height()

    def disconnect_state(self) -> None:
        """Stop following the state (call before dropping the widget)."""
        self._disconnect()

    def _disconnect(self, *_):
        for e, fn in self._subs:
            e.disconnect(fn)

    # -- state -> widgets --------------------------------------------------------------------------
    def _rows(self) -> list[Layer]:
        return list(reversed(self.state.layers))

    def refresh_list(self, *_):
        self._updating = True
        try:
            self.layer_list.clear()
            for lay in self._rows():
                item = QtWidgets.QListWidgetItem(f"{lay.name}  [{lay.kind}]")
                item.setFlags(item.flags() | _Qt.ItemFlag.ItemIsUserCheckable)
                item.setCheckState(_Qt.CheckState.Checked if lay.visible
                                   else _Qt.CheckState.Unchecked)
                self.layer_list.addItem(item)
            self.channel_combo.clear()
            self.channel_combo.addItems(list(self.state.channels()))
            base = self.state.base_layer
            if base is not None:
                self.channel_combo.setCurrentText(base.channel)
            self.channel_combo.setEnabled(len(self.state.channels()) > 1)
        finally:
            self._updating = False
        self._active_changed(self.state.active_layer)

    def _active_changed(self, layer: Layer | None):
        self._updating = True
        try:
            rows = self._rows()
            if layer in rows:
                self.layer_list.setCurrentRow(rows.index(layer))
            self._show_settings(layer)
        finally:
            self._updating = False

    def _layer_changed(self, layer: Layer, keys: set[str]):
        rows = self._rows()
        if layer in rows and "visible" in keys:
            self._updating = True
            self.layer_list.item(rows.index(layer)).setCheckState(
                _Qt.CheckState.Checked if layer.visible else _Qt.CheckState.Unchecked)
            self._updating = False
        if layer is self.state.active_layer:
            self._updating = True
            try:
                self._show_settings(layer)
            finally:
                self._updating = False
        if "channel" in keys and layer is self.state.base_layer:
            self._updating = True
            self.channel_combo.setCurrentText(layer.channel)
            self._updating = False

    def _show_settings(self, layer: Layer | None):
        enabled = layer is not None
        for w in (self.cmap_combo, self.opacity_slider, self.vmin_spin, self.vmax_spin,
                  self.threshold_check, self.threshold_spin, self.visible_check,
                  self.remove_button):
            w.setEnabled(enabled)
        self.labels_box.setVisible(layer is not None and layer.kind == "labels")
        self.labels_box.show_layer(layer)
        self.contrast.setVisible(layer is not None and layer.kind != "labels")
        self.contrast.show_layer(layer, self.state)
        if layer is None:
            return
        self.cmap_combo.setCurrentText(layer.colormap)
        self.opacity_slider.setValue(int(round(layer.opacity * 100)))
        step = _step(layer)
        for sp in (self.vmin_spin, self.vmax_spin, self.threshold_spin):
            sp.setSingleStep(step)
        self.vmin_spin.setValue(layer.vmin)
        self.vmax_spin.setValue(layer.vmax)
        self.threshold_check.setChecked(layer.threshold is not None)
        self.threshold_spin.setEnabled(layer.threshold is not None)
        # the layer's own threshold; without one, its display minimum (what ticking the box
        # applies), never the value of the layer shown before
        self.threshold_spin.setValue(layer.vmin if layer.threshold is None else layer.threshold)
        self.visible_check.setChecked(layer.visible)
        is_labels = layer.kind == "labels"
        for w in (self.vmin_spin, self.vmax_spin, self.threshold_check, self.threshold_spin):
            w.setEnabled(not is_labels and (w is not self.threshold_spin
                                            or layer.threshold is not None))

    # -- widgets -> state --------------------------------------------------------------------------
    def _row_selected(self, row: int):
        if self._updating or row < 0:
            return
        rows = self._rows()
        if row < len(rows):
            self.state.set_active_layer(rows[row])

    def _item_checked(self, item: QtWidgets.QListWidgetItem):
        if self._updating:
            return
        row = self.layer_list.row(item)
        rows = self._rows()
        if 0 <= row < len(rows):
            rows[row].visible = item.checkState() == _Qt.CheckState.Checked

    def _set(self, **values):
        if self._updating or self.state.active_layer is None:
            return
        self.state.active_layer.set(**values)

    def _threshold(self, *_):
        if self._updating:
            return
        on = self.threshold_check.isChecked()
        self.threshold_spin.setEnabled(on)
        self._set(threshold=self.threshold_spin.value() if on else None)

    def _channel(self, name: str):
        if self._updating or not name:
            return
        self.state.set_channel(name)

    def _remove(self):
        if self.state.active_layer is not None and len(self.state.layers) > 1:
            self.state.remove_layer(self.state.active_layer)


def _spin() -> QtWidgets.QDoubleSpinBox:
    sp = QtWidgets.QDoubleSpinBox()
    sp.setRange(-1e9, 1e9)
    sp.setDecimals(4)
    sp.setKeyboardTracking(False)
    return sp


def _step(layer: Layer) -> float:
    span = abs(layer.vmax - layer.vmin) or 1.0
    return float(f"{span / 100:.1g}")
