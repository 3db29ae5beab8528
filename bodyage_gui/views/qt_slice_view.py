"""One 2D slice view (axial, coronal or sagittal) following a :class:`ViewerState`.

All visible layers are composited in numpy with integer LUT arithmetic
(:func:`bodyage_core.display.composite_bgra32`) into one opaque image, drawn by one
``drawImage`` (row-major, row 0 at the top, placed in display millimetres so the pixel aspect is
the voxel spacing); the crosshair is two C++ line items. The view never changes itself: mouse and key events become gestures, gestures become
actions through :mod:`bodyage_gui.bindings`, actions call the state, and the state's events mark
the view dirty; a :class:`~bodyage_gui.redraw.RedrawScheduler` flushes it once per frame.
"""

from __future__ import annotations

import math

import numpy as np
import pyqtgraph as pg
from PySide6 import QtCore, QtGui, QtWidgets

from bodyage_core import display
from bodyage_core.viewer import Layer, ViewerState
from bodyage_core.viewer.compose import composite_key, composite_slice
from bodyage_gui import bindings
from bodyage_gui.redraw import RedrawScheduler

_Qt = QtCore.Qt


class _CrosshairLine(QtWidgets.QGraphicsLineItem):
    """One crosshair line (a C++ ``QGraphicsLineItem`` with a cosmetic pen: no Python in the
    paint path) across the slice, from one edge of the image to the other (not into the black
    margins). ``value()`` is its position in display mm.

    Its bounding rectangle is widened by :data:`PAD_PX` screen pixels: with a cosmetic pen Qt
    computes it from the pen width in *item* units (mm), which, zoomed out, is narrower than
    the one pixel drawn, so a moved line left pixels behind (ghost segments) wherever nothing
    else repainted them."""

    PAD_PX = 3.0

    def __init__(self, vertical: bool):
        super().__init__()
        self.vertical = vertical
        self._value = 0.0
        self._extent = (1.0, 1.0)
        self._pixel_mm = 1.0
        pen = QtGui.QPen(QtGui.QColor(0, 220, 90, 200))
        pen.setCosmetic(True)
        pen.setWidth(1)
        self.setPen(pen)
        self.set_value(0.0)

    def set_extent(self, width_mm: float, height_mm: float) -> None:
        """The slice's size in display mm: the line spans it."""
        self._extent = (float(width_mm), float(height_mm))
        self.set_value(self._value)

    def set_value(self, v: float) -> None:
        self._value = float(v)
        w, h = self._extent
        self.prepareGeometryChange()
        if self.vertical:
            self.setLine(self._value, 0.0, self._value, h)
        else:
            self.setLine(0.0, self._value, w, self._value)

    def set_pixel_mm(self, mm: float) -> None:
        """Millimetres per screen pixel now (the pad of the bounding rectangle)."""
        if mm > 0 and mm != self._pixel_mm:
            self.prepareGeometryChange()
            self._pixel_mm = float(mm)

    def boundingRect(self):  # noqa: N802
        pad = self.PAD_PX * self._pixel_mm
        return super().boundingRect().adjusted(-pad, -pad, pad, pad)


    def value(self) -> float:
        return self._value


def qt_modifiers(mods: QtCore.Qt.KeyboardModifier) -> frozenset[str]:
    out = set()
    if mods & _Qt.KeyboardModifier.ShiftModifier:
        out.add("shift")
    if mods & _Qt.KeyboardModifier.ControlModifier:
        out.add("ctrl")
    if mods & _Qt.KeyboardModifier.AltModifier:
        out.add("alt")
    return frozenset(out)


def qt_button(button: QtCore.Qt.MouseButton) -> str | None:
    return {_Qt.MouseButton.LeftButton: "left", _Qt.MouseButton.RightButton: "right",
            _Qt.MouseButton.MiddleButton: "middle"}.get(button)


class _SliceViewBox(pg.ViewBox):
    """A ViewBox that turns mouse events into gestures for its :class:`QtSliceView`."""

    def __init__(self, owner: QtSliceView):
        super().__init__(lockAspect=True, invertY=True, enableMenu=False)
        self.setMouseEnabled(False, False)
        self._owner = owner
        self._drag_action: str | None = None

    def mouseClickEvent(self, ev):  # noqa: N802 (Qt naming)
        ev.accept()
        p = self.mapToView(ev.pos())
        self._owner.gesture("double" if ev.double() else "click", qt_button(ev.button()),
                            qt_modifiers(ev.modifiers()), (p.x(), p.y()))

    def hoverEvent(self, ev):  # noqa: N802
        if ev.isExit():
            self._owner.hover(None)
            return
        p = self.mapToView(ev.pos())
        self._owner.hover((p.x(), p.y()))

    def mouseDragEvent(self, ev, axis=None):  # noqa: N802
        ev.accept()
        if ev.isStart():
            self._drag_action = bindings.mouse_action(
                "drag", qt_button(ev.button()), qt_modifiers(ev.modifiers()))
            if self._drag_action == "set_cursor" and self._owner.tool is not None:
                self._drag_action = "tool"       # a ruler or region is being drawn
                # it starts where the button went down, not where the drag was noticed
                p0 = self.mapToView(ev.buttonDownPos())
                self._owner.run_drag("tool", (p0.x(), p0.y()), (0.0, 0.0), (0.0, 0.0),
                                     True, False)
                p = self.mapToView(ev.pos())
                self._owner.run_drag("tool", (p.x(), p.y()), (0.0, 0.0), (0.0, 0.0), False,
                                     ev.isFinish())
                return
        p = self.mapToView(ev.pos())
        delta_px = ev.pos() - ev.lastPos()
        total_px = ev.pos() - ev.buttonDownPos()
        self._owner.run_drag(self._drag_action, (p.x(), p.y()), (delta_px.x(), delta_px.y()),
                             (total_px.x(), total_px.y()), ev.isStart(), ev.isFinish())
        if ev.isFinish():
            self._drag_action = None

    def wheelEvent(self, ev, axis=None):  # noqa: N802
        ev.accept()
        p = self.mapToView(ev.pos())
        self._owner.wheel(ev.delta(), qt_modifiers(ev.modifiers()), (p.x(), p.y()))


class _CompositeImageItem(QtWidgets.QGraphicsItem):
    """All layers of a view composited (in numpy) into one opaque image: one ``drawImage`` per
    repaint, nearest-neighbour scaling, placed in display millimetres."""

    def __init__(self):
        super().__init__()
        self._buffer: np.ndarray | None = None
        self._qimage: QtGui.QImage | None = None
        self._rect = QtCore.QRectF()
        #: draw with bilinear smoothing (the state's ``interpolation == 'linear'``)
        self.smooth = False

    def set_image(self, bgra: np.ndarray, rect: QtCore.QRectF) -> None:
        """``bgra``: ``(rows, cols)`` uint32 ``0xFFRRGGBB`` (QImage RGB32), or ``(rows, cols,
        4)`` uint8 in memory order B, G, R, 255."""
        buf = np.ascontiguousarray(bgra)
        if buf.ndim == 3:
            buf = buf.view(np.uint32).reshape(buf.shape[:2])
        self._buffer = buf
        rows, cols = self._buffer.shape[:2]
        self._qimage = QtGui.QImage(self._buffer.data, cols, rows, cols * 4,
                                    QtGui.QImage.Format.Format_RGB32)
        if rect != self._rect:
            self.prepareGeometryChange()
            self._rect = QtCore.QRectF(rect)
        self.update()

    def clear(self) -> None:
        self._buffer = self._qimage = None
        self.update()

    def rgba(self) -> np.ndarray | None:
        """What is drawn, as ``(rows, cols, 4)`` RGBA uint8."""
        if self._buffer is None:
            return None
        return display.bgra32_to_rgba(self._buffer)

    def boundingRect(self):  # noqa: N802
        return self._rect

    def paint(self, painter, option, widget=None):
        if self._qimage is not None:
            painter.setRenderHint(QtGui.QPainter.RenderHint.SmoothPixmapTransform, self.smooth)
            painter.drawImage(self._rect, self._qimage)


class _GraphicsView(pg.GraphicsView):
    def __init__(self, owner: QtSliceView):
        self._owner = None
        super().__init__(background="k")
        self._owner = owner
        self.setFocusPolicy(_Qt.FocusPolicy.StrongFocus)
        # files dropped on a view go to the window (which opens them), not to the scene
        self.setAcceptDrops(False)
        self.viewport().setAcceptDrops(False)

    def keyPressEvent(self, ev):  # noqa: N802
        if not self._owner.key(ev):
            super().keyPressEvent(ev)

    def resizeEvent(self, ev):  # noqa: N802
        super().resizeEvent(ev)
        if self._owner is not None and hasattr(self._owner, "letter_labels"):
            self._owner._place_labels()

    def mousePressEvent(self, ev):  # noqa: N802
        self.setFocus()
        super().mousePressEvent(ev)


class QtSliceView(QtWidgets.QWidget):
    """A linked 2D view of ``plane`` following ``state``.

    Signals: ``maximise_requested(plane)`` on a double click, ``hovered(object)`` with the
    world point (RAS mm) under the mouse, or None when it leaves the view.

    Parameters
    ----------
    state
        The shared :class:`ViewerState`.
    plane
        ``'axial'``, ``'coronal'`` or ``'sagittal'``.
    scheduler
        Shared redraw scheduler (one per window); a private one when None.
    """

    maximise_requested = QtCore.Signal(str)
    hovered = QtCore.Signal(object)

    def __init__(self, state: ViewerState, plane: str, scheduler: RedrawScheduler | None = None,
                 parent: QtWidgets.QWidget | None = None):
        super().__init__(parent)
        self.state = state
        self.plane = plane
        #: the tool drawing with the left button (a ruler or region), or None: the cursor
        self.tool = None
        self.scheduler = scheduler or RedrawScheduler(parent=self)
        self.graphics_view = _GraphicsView(self)
        self.view_box = _SliceViewBox(self)
        self.graphics_view.setCentralItem(self.view_box)
        lay = QtWidgets.QVBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        lay.addWidget(self.graphics_view)
        self.image_item = _CompositeImageItem()
        self.view_box.addItem(self.image_item)
        #: the key of what is drawn (slice index, then per visible layer its display settings)
        self._composite_key: tuple | None = None
        self.h_line = _CrosshairLine(vertical=False)
        self.v_line = _CrosshairLine(vertical=True)
        for line in (self.h_line, self.v_line):
            line.setZValue(1000)
            self.view_box.addItem(line, ignoreBounds=True)
        self.show_crosshair = True
        from bodyage_gui.tools.overlay_items import MeasurementItems

        self.measurement_items = MeasurementItems(self)
        self.letter_labels = {side: self._make_label(side) for side in
                              ("left", "right", "top", "bottom")}
        self.info_label = self._make_label("info")
        self._dirty: set[str] = {"layers", "slice", "cursor", "range", "letters"}
        self._wl_start: tuple[float, float] | None = None
        self._wheel_rest = 0.0  # wheel delta not yet a whole notch (120 units)
        self.n_redraws = 0
        ev = state.events
        ev.cursor_changed.connect(self._on_cursor)
        ev.layers_changed.connect(self._on_layers)
        ev.layer_changed.connect(self._on_layer)
        ev.convention_changed.connect(self._on_convention)
        ev.view_changed.connect(self._on_view)
        ev.interpolation_changed.connect(self._on_interpolation)
        ev.measurements_changed.connect(self._on_measurements)
        self.image_item.smooth = state.interpolation == "linear"
        self.mark_dirty()

    # -- state -> view ---------------------------------------------------------------------------
    def _disconnect_from(self, *_):
        ev = self.state.events
        for e, fn in ((ev.cursor_changed, self._on_cursor), (ev.layers_changed, self._on_layers),
                      (ev.layer_changed, self._on_layer),
                      (ev.convention_changed, self._on_convention),
                      (ev.view_changed, self._on_view),
                      (ev.interpolation_changed, self._on_interpolation),
                      (ev.measurements_changed, self._on_measurements)):
            e.disconnect(fn)

    def disconnect_state(self) -> None:
        """Stop following the state (call before dropping the view)."""
        self._disconnect_from()

    def _on_cursor(self, _cursor):
        self.mark_dirty("cursor")

    def _on_layers(self):
        self.mark_dirty("layers", "slice", "cursor", "range", "letters")

    def _on_layer(self, layer: Layer, keys: set[str]):
        self.mark_dirty("slice")

    def _on_convention(self, _c):
        self.mark_dirty("slice", "cursor", "range", "letters")

    def _on_view(self, plane: str):
        if plane == self.plane:
            self.mark_dirty("range")

    def _on_interpolation(self, mode: str):
        self.image_item.smooth = mode == "linear"
        self.image_item.update()

    def _on_measurements(self):
        self.mark_dirty("measure")

    def mark_dirty(self, *what: str) -> None:
        """Ask for a redraw of ``what`` (all when empty) at the next frame."""
        self._dirty.update(what or ("layers", "slice", "cursor", "range", "letters"))
        self.scheduler.request(self)

    def flush(self) -> None:
        """Redraw what is dirty (called by the scheduler, once per frame)."""
        dirty, self._dirty = self._dirty, set()
        if not dirty:
            return
        try:
            if self.state.base_layer is None:
                self.image_item.clear()
                self._composite_key = None
                for lab in self.letter_labels.values():
                    lab.setText("")
                self.info_label.setText("")
                self.h_line.hide()
                self.v_line.hide()
                self.measurement_items.clear()
                return
            if "layers" in dirty:
                self._sync_items()
            if "cursor" in dirty:
                dirty.add("slice")  # re-slices only layers whose slice actually changed
            if "slice" in dirty:
                self._update_images()
            if "cursor" in dirty:
                self._update_crosshair()
            if "range" in dirty:
                self._update_range()
            if "letters" in dirty:
                self._update_letters()
            if dirty & {"measure", "slice", "layers"}:
                self.measurement_items.update()
            self.n_redraws += 1
        except Exception:
            self._dirty |= dirty
            raise

    def _sync_items(self):
        self._composite_key = None

    def _update_images(self):
        state = self.state
        geom = state.geometry(self.plane)
        k = state.slice_index(self.plane)
        key = composite_key(state, self.plane, k)
        if key != self._composite_key:
            w, h = geom.extent_mm
            self.image_item.set_image(composite_slice(state, self.plane),
                                      QtCore.QRectF(0.0, 0.0, w, h))
            for line in (self.h_line, self.v_line):
                line.set_extent(w, h)
            self._composite_key = key
            oblique = " (oblique: nearest axes)" if state.base_layer.volume.is_oblique else ""
            text = f"{self.plane} {k} [0..{geom.n_slices - 1}]{oblique}"
            if text != self.info_label.text():
                size = self.info_label.size()
                self.info_label.setText(text)
                self.info_label.adjustSize()
                if self.info_label.size() != size:
                    self._place_labels()

    def _update_crosshair(self):
        px = self.view_box.viewPixelSize()
        for line in (self.h_line, self.v_line):
            line.set_pixel_mm(max(abs(px[0]), abs(px[1])))
        u, v = self.state.world_to_display(self.plane, self.state.cursor)
        self.v_line.set_value(u)
        self.h_line.set_value(v)
        self.v_line.setVisible(self.show_crosshair)
        self.h_line.setVisible(self.show_crosshair)

    def _update_range(self):
        geom = self.state.geometry(self.plane)
        vs = self.state.views[self.plane]
        w, h = geom.extent_mm
        cx, cy = w / 2 + vs.pan[0], h / 2 + vs.pan[1]
        hw, hh = w / (2 * vs.zoom), h / (2 * vs.zoom)
        self.view_box.setRange(xRange=(cx - hw, cx + hw), yRange=(cy - hh, cy + hh), padding=0)
        self._update_crosshair()

    def _update_letters(self):
        letters = self.state.geometry(self.plane).letters
        for side, lab in self.letter_labels.items():
            lab.setText(letters[side])
            lab.adjustSize()
        self._place_labels()

    # -- labels on the widget edges -----------------------------------------------------------------
    def _make_label(self, side: str) -> QtWidgets.QLabel:
        lab = QtWidgets.QLabel(self.graphics_view)
        lab.setObjectName(f"letter_{side}")
        colour = "#ffd24d" if side != "info" else "#cccccc"
        size = 15 if side != "info" else 11
        lab.setStyleSheet(f"color: {colour}; font-weight: bold; font-size: {size}px; "
                          "background: rgba(0, 0, 0, 110); padding: 0px 2px;")
        lab.setAttribute(_Qt.WidgetAttribute.WA_TransparentForMouseEvents)
        return lab

    def _place_labels(self):
        w, h = self.graphics_view.width(), self.graphics_view.height()
        m = 4
        for side, lab in self.letter_labels.items():
            lab.adjustSize()
            lw, lh = lab.width(), lab.height()
            pos = {"left": (m, (h - lh) // 2), "right": (w - lw - m, (h - lh) // 2),
                   "top": ((w - lw) // 2, m), "bottom": ((w - lw) // 2, h - lh - m)}[side]
            lab.move(*pos)
        info = self.info_label
        info.adjustSize()
        iw, ih = info.width(), info.height()
        # bottom-left, else top-left, else above the bottom letter: never over a letter
        for x, y in ((m, h - ih - m), (m, m),
                     (m, h - ih - m - self.letter_labels["bottom"].height() - 2)):
            rect = QtCore.QRect(x, y, iw, ih)
            if not any(rect.intersects(lab.geometry()) for lab in self.letter_labels.values()):
                break
        info.move(x, y)

    def letters(self) -> dict[str, str]:
        """Orientation letters currently shown on each side."""
        return {side: lab.text() for side, lab in self.letter_labels.items()}

    # -- gestures -> actions -> state --------------------------------------------------------------
    def gesture(self, kind: str, button: str | None, modifiers: frozenset[str],
                pos_mm: tuple[float, float]) -> str | None:
        """Run the action bound to a click; returns its name."""
        action = bindings.mouse_action(kind, button, modifiers)
        if self.state.base_layer is None:
            return action
        if action == "set_cursor" and self.tool is None:
            self.state.set_cursor(self.state.display_to_world(self.plane, *pos_mm))
        elif action == "maximise":
            self.maximise_requested.emit(self.plane)
        return action

    def hover(self, pos_mm: tuple[float, float] | None) -> None:
        """The mouse is over ``pos_mm`` (display mm), or left the view (None)."""
        if pos_mm is None or self.state.base_layer is None:
            self.hovered.emit(None)
            return
        w, h = self.state.geometry(self.plane).extent_mm
        if not (0.0 <= pos_mm[0] <= w and 0.0 <= pos_mm[1] <= h):
            self.hovered.emit(None)      # over the black margin: nothing under the mouse
            return
        self.hovered.emit(self.state.display_to_world(self.plane, *pos_mm))

    def run_drag(self, action: str | None, pos_mm, delta_px, total_px, start: bool,
                 finish: bool) -> None:
        state = self.state
        if action is None or state.base_layer is None:
            return
        if action == "tool":
            if self.tool is not None:
                self.tool.drag(self, state.display_to_world(self.plane, *pos_mm), start, finish)
        elif action == "set_cursor":
            state.set_cursor(state.display_to_world(self.plane, *pos_mm))
        elif action == "pan":
            px, py = self.view_box.viewPixelSize()
            pan = state.views[self.plane].pan
            state.set_pan(self.plane, (pan[0] - delta_px[0] * px, pan[1] - delta_px[1] * py))
        elif action == "window_level":
            layer = self._wl_layer()
            if layer is None:
                return
            if start or self._wl_start is None:
                self._wl_start = (layer.vmin, layer.vmax)
            self.window_level(layer, self._wl_start, total_px)
            if finish:
                self._wl_start = None

    def _wl_layer(self) -> Layer | None:
        lay = self.state.active_layer
        if lay is None or lay.kind == "labels":
            lay = self.state.base_layer
        return lay

    @staticmethod
    def window_level(layer: Layer, start: tuple[float, float], total_px: tuple[float, float]):
        """Right-drag: horizontal widens/narrows the window, vertical moves the level."""
        lo, hi = start
        width = max(hi - lo, 1e-6)
        centre = (lo + hi) / 2
        new_width = width * math.exp(total_px[0] / 200.0)
        new_centre = centre + total_px[1] * width / 200.0
        layer.set(vmin=new_centre - new_width / 2, vmax=new_centre + new_width / 2)

    def wheel(self, delta: float, modifiers: frozenset[str], pos_mm) -> str | None:
        action = bindings.mouse_action("wheel", None, modifiers)
        if self.state.base_layer is None or action is None:
            return action
        notches = delta / 120.0
        if action in ("slice", "slice_fast"):
            # whole notches only: a touchpad or a high-resolution wheel sends many small
            # deltas (15 units ...), which used to step one slice each; they add up here
            rest = self._wheel_rest
            if rest and (rest > 0) != (delta > 0):
                rest = 0.0  # turned round: start afresh
            rest += delta
            n = int(rest / 120.0)
            self._wheel_rest = rest - n * 120.0
            if n == 0:
                return action
            if action == "slice_fast":
                n *= bindings.FAST_SLICE_STEP
            self.state.step_slice(self.plane, n)
        elif action == "zoom":
            vs = self.state.views[self.plane]
            self.state.set_zoom(self.plane, vs.zoom * bindings.ZOOM_STEP ** notches, pos_mm)
        return action

    def key(self, ev: QtGui.QKeyEvent) -> bool:
        """Handle a key press through :data:`bindings.KEY_BINDINGS`; True when handled."""
        seq = QtGui.QKeySequence(ev.keyCombination()).toString()
        action = bindings.KEY_BINDINGS.get(seq)
        if action is None:
            seq = QtGui.QKeySequence(ev.key()).toString()
            action = bindings.KEY_BINDINGS.get(seq)
        return self.run_action(action) if action else False

    def run_action(self, action: str) -> bool:
        s = self.state
        if s.base_layer is None:
            return False
        step = {"slice_up": 1, "slice_down": -1, "slice_up_fast": bindings.FAST_SLICE_STEP,
                "slice_down_fast": -bindings.FAST_SLICE_STEP}
        if action == "reset":
            s.reset()
        elif action in step:
            s.step_slice(self.plane, step[action])
        elif action in ("zoom_in", "zoom_out"):
            f = bindings.ZOOM_STEP if action == "zoom_in" else 1 / bindings.ZOOM_STEP
            s.set_zoom(self.plane, s.views[self.plane].zoom * f)
        else:
            return False
        return True

    # -- helpers for tests and screenshots -----------------------------------------------------------
    def rgba(self, layer: Layer) -> np.ndarray | None:
        """The RGBA ``(rows, cols, 4)`` that ``layer`` contributes to the view now (None when
        hidden), from :func:`bodyage_core.display.to_rgba`; flushes pending redraws first."""
        self.flush()
        if not layer.visible or layer not in self.state.layers or self.state.base_layer is None:
            return None
        sl = self.state.slice_for_view(layer, self.plane)
        return display.to_rgba(sl.array, layer.colormap, layer.vmin, layer.vmax,
                               layer.threshold, layer.opacity)

    def composite_rgba(self) -> np.ndarray | None:
        """The RGBA image drawn (all visible layers composited), after a flush."""
        self.flush()
        return self.image_item.rgba()

    def scene_pos_of_world(self, ras) -> QtCore.QPoint:
        """Widget (viewport) position of a world point, for simulated clicks."""
        u, v = self.state.world_to_display(self.plane, ras)
        scene = self.view_box.mapViewToScene(QtCore.QPointF(u, v))
        return self.graphics_view.mapFromScene(scene)
