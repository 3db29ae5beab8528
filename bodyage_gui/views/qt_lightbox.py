"""The lightbox: ``rows x columns`` slices of one plane side by side, every ``spacing`` slices,
centred on the cursor's slice (:mod:`bodyage_core.viewer.lightbox`), each tile composited like
a slice view (overlays included: :func:`bodyage_core.viewer.compose.composite_slice`) and kept
in true proportions, with its slice index and position in mm.

Click a tile: the cursor goes there (all views follow). Wheel: the slab moves by one step
(Shift: by the whole mosaic). View > Lightbox settings: plane, rows, columns, spacing.
"""

from __future__ import annotations

import numpy as np
from PySide6 import QtCore, QtGui, QtWidgets

from bodyage_core.errors import BodyageError
from bodyage_core.viewer import PLANES, ViewerState
from bodyage_core.viewer.compose import composite_key, composite_slice
from bodyage_gui.redraw import RedrawScheduler

_Qt = QtCore.Qt
_AXIS_LETTER = {"axial": "z", "coronal": "y", "sagittal": "x"}


class QtLightboxView(QtWidgets.QWidget):
    """Tiles of one plane following ``state`` (see the module docstring)."""

    def __init__(self, state: ViewerState, scheduler: RedrawScheduler | None = None,
                 parent: QtWidgets.QWidget | None = None):
        super().__init__(parent)
        self.state = state
        self.scheduler = scheduler or RedrawScheduler(parent=self)
        self.setAutoFillBackground(True)
        pal = self.palette()
        pal.setColor(QtGui.QPalette.ColorRole.Window, QtGui.QColor(0, 0, 0))
        self.setPalette(pal)
        self.setMinimumSize(120, 90)
        self.setFocusPolicy(_Qt.FocusPolicy.StrongFocus)
        #: slice index -> (key, QImage) of the tiles drawn last
        self._cache: dict[int, tuple[tuple, QtGui.QImage]] = {}
        self._buffers: dict[int, np.ndarray] = {}
        #: ``(slice index, tile rect in widget pixels, image rect)`` as last painted
        self.tiles: list[tuple[int, QtCore.QRectF, QtCore.QRectF]] = []
        self.n_redraws = 0
        ev = state.events
        self._subs = ((ev.cursor_changed, self._changed), (ev.layers_changed, self._reset),
                      (ev.layer_changed, self._changed), (ev.convention_changed, self._reset),
                      (ev.lightbox_changed, self._changed),
                      (ev.interpolation_changed, self._changed))
        for e, fn in self._subs:
            e.connect(fn)

    def disconnect_state(self) -> None:
        for e, fn in self._subs:
            e.disconnect(fn)

    def _reset(self, *_):
        self._cache.clear()
        self._buffers.clear()
        self._changed()

    def _changed(self, *_):
        if self.isVisible():
            self.scheduler.request(self)

    def flush(self) -> None:
        """Redraw (called by the scheduler)."""
        self.update()

    def showEvent(self, ev):  # noqa: N802
        super().showEvent(ev)
        self._changed()

    # -- layout of the tiles -------------------------------------------------------------------
    def layout_tiles(self) -> list[tuple[int, QtCore.QRectF, QtCore.QRectF]]:
        """``(slice, tile rect, image rect)`` per tile for the current size: tiles fill the
        widget in reading order; each image keeps the slice's true aspect (mm)."""
        st = self.state
        if st.base_layer is None:
            return []
        lb = st.lightbox
        slices = st.lightbox_slices()
        geom = st.geometry(lb.plane)
        w_mm, h_mm = geom.extent_mm
        cols, rows = lb.columns, lb.rows
        tw, th = self.width() / cols, self.height() / rows
        out = []
        for i, k in enumerate(slices):
            r, c = divmod(i, cols)
            tile = QtCore.QRectF(c * tw, r * th, tw, th)
            inner = tile.adjusted(1, 14, -1, -1)            # room for the slice label
            scale = min(inner.width() / w_mm, inner.height() / h_mm)
            iw, ih = w_mm * scale, h_mm * scale
            img = QtCore.QRectF(inner.center().x() - iw / 2, inner.center().y() - ih / 2, iw, ih)
            out.append((k, tile, img))
        return out

    def tile_label(self, k: int) -> str:
        lb = self.state.lightbox
        mm = self.state.slice_position_mm(lb.plane, k)
        return f"{k}  {_AXIS_LETTER[lb.plane]} {mm:.1f} mm"

    def _image(self, k: int) -> QtGui.QImage:
        st = self.state
        key = composite_key(st, st.lightbox.plane, k)
        hit = self._cache.get(k)
        if hit is not None and hit[0] == key:
            return hit[1]
        buf = np.ascontiguousarray(composite_slice(st, st.lightbox.plane, k))
        rows, cols = buf.shape
        img = QtGui.QImage(buf.data, cols, rows, cols * 4, QtGui.QImage.Format.Format_RGB32)
        self._buffers[k] = buf
        self._cache[k] = (key, img)
        return img

    def paintEvent(self, ev):  # noqa: N802
        p = QtGui.QPainter(self)
        p.fillRect(self.rect(), QtGui.QColor(0, 0, 0))
        st = self.state
        if st.base_layer is None:
            p.setPen(QtGui.QColor(170, 170, 170))
            p.drawText(self.rect(), _Qt.AlignmentFlag.AlignCenter, "lightbox: open an image")
            return
        self.tiles = self.layout_tiles()
        keep = {k for k, _, _ in self.tiles}
        for k in [k for k in self._cache if k not in keep]:
            self._cache.pop(k)
            self._buffers.pop(k, None)
        p.setRenderHint(QtGui.QPainter.RenderHint.SmoothPixmapTransform,
                        st.interpolation == "linear")
        lb = st.lightbox
        cursor_k = st.slice_index(lb.plane)
        font = p.font()
        font.setPixelSize(11)
        p.setFont(font)
        for k, tile, img in self.tiles:
            p.drawImage(img, self._image(k))
            p.setPen(QtGui.QColor(0, 220, 90) if k == cursor_k else QtGui.QColor(200, 200, 200))
            p.drawText(tile.adjusted(3, 0, -3, 0), _Qt.AlignmentFlag.AlignTop |
                       _Qt.AlignmentFlag.AlignLeft, self.tile_label(k))
            if k == cursor_k:
                self._draw_cursor(p, img)
        self.n_redraws += 1

    def _draw_cursor(self, p: QtGui.QPainter, img: QtCore.QRectF) -> None:
        st = self.state
        geom = st.geometry(st.lightbox.plane)
        u, v = st.world_to_display(st.lightbox.plane, st.cursor)
        w_mm, h_mm = geom.extent_mm
        x = img.left() + u / w_mm * img.width()
        y = img.top() + v / h_mm * img.height()
        pen = QtGui.QPen(QtGui.QColor(0, 220, 90, 200))
        pen.setWidth(1)
        p.setPen(pen)
        p.drawLine(QtCore.QPointF(x, img.top()), QtCore.QPointF(x, img.bottom()))
        p.drawLine(QtCore.QPointF(img.left(), y), QtCore.QPointF(img.right(), y))

    # -- interaction ---------------------------------------------------------------------------
    def world_at(self, pos: QtCore.QPointF) -> np.ndarray | None:
        """The world point under widget position ``pos`` (None off the tiles' images)."""
        st = self.state
        tiles = self.tiles or self.layout_tiles()
        for k, _tile, img in tiles:
            if img.contains(pos):
                geom = st.geometry(st.lightbox.plane)
                w_mm, h_mm = geom.extent_mm
                u = (pos.x() - img.left()) / img.width() * w_mm
                v = (pos.y() - img.top()) / img.height() * h_mm
                row, col = geom.display_to_pixel(u, v)
                zyx = geom.pixel_to_voxel(row, col, k)
                return st.base_layer.volume.voxel_to_world(zyx)
        return None

    def mousePressEvent(self, ev):  # noqa: N802
        if ev.button() == _Qt.MouseButton.LeftButton and self.state.base_layer is not None:
            world = self.world_at(ev.position())
            if world is not None:
                self.state.set_cursor(world)
        super().mousePressEvent(ev)

    def wheelEvent(self, ev):  # noqa: N802
        st = self.state
        if st.base_layer is None:
            return
        lb = st.lightbox
        notches = int(np.sign(ev.angleDelta().y()))
        if not notches:
            return
        slices = st.lightbox_slices()
        step = (slices[1] - slices[0]) if len(slices) > 1 else 1
        if ev.modifiers() & _Qt.KeyboardModifier.ShiftModifier:
            step *= len(slices)
        st.step_slice(lb.plane, notches * step)
        ev.accept()


class QtLightboxSettings(QtWidgets.QDialog):
    """Plane, rows, columns and slice spacing of the lightbox (applied as they change)."""

    def __init__(self, state: ViewerState, parent: QtWidgets.QWidget | None = None):
        super().__init__(parent)
        self.state = state
        self.setWindowTitle("Lightbox")
        self.setModal(False)
        lb = state.lightbox
        self.plane_combo = QtWidgets.QComboBox()
        self.plane_combo.addItems(list(PLANES))
        self.plane_combo.setCurrentText(lb.plane)
        self.rows_spin = QtWidgets.QSpinBox()
        self.rows_spin.setRange(1, 10)
        self.rows_spin.setValue(lb.rows)
        self.cols_spin = QtWidgets.QSpinBox()
        self.cols_spin.setRange(1, 10)
        self.cols_spin.setValue(lb.columns)
        self.spacing_spin = QtWidgets.QSpinBox()
        self.spacing_spin.setRange(0, 500)
        self.spacing_spin.setValue(lb.spacing)
        self.spacing_spin.setSpecialValueText("whole volume")
        self.spacing_spin.setSuffix(" slices")
        self.message = QtWidgets.QLabel("")
        form = QtWidgets.QFormLayout(self)
        form.addRow("Plane", self.plane_combo)
        form.addRow("Rows", self.rows_spin)
        form.addRow("Columns", self.cols_spin)
        form.addRow("Slice spacing", self.spacing_spin)
        form.addRow("", self.message)
        self.plane_combo.currentTextChanged.connect(lambda _t: self.apply())
        for sp in (self.rows_spin, self.cols_spin, self.spacing_spin):
            sp.valueChanged.connect(lambda _v: self.apply())

    def apply(self) -> None:
        try:
            self.state.set_lightbox(plane=self.plane_combo.currentText(),
                                    rows=self.rows_spin.value(),
                                    columns=self.cols_spin.value(),
                                    spacing=self.spacing_spin.value())
            self.message.setText("")
        except BodyageError as err:
            self.message.setText(str(err))
