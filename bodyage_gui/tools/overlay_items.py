"""The rulers and regions of the state drawn on a slice view: a line with its length, a box or
an ellipse with its name, for the measurements made on the slice shown (cosmetic pens, so they
stay one pixel wide at any zoom)."""

from __future__ import annotations

from typing import Any

from PySide6 import QtCore, QtGui, QtWidgets

COLOUR = QtGui.QColor(255, 210, 40)


class MeasurementItems:
    """Graphics items of one :class:`~bodyage_gui.views.qt_slice_view.QtSliceView`."""

    def __init__(self, view: Any):
        self.view = view
        self.items: list[QtWidgets.QGraphicsItem] = []
        #: measurement id -> text shown beside it (for tests)
        self.labels: dict[int, str] = {}

    def clear(self) -> None:
        for it in self.items:
            self.view.view_box.removeItem(it)
        self.items = []
        self.labels = {}

    def update(self) -> None:
        state = self.view.state
        if not state.measurements and not self.items:
            return                      # nothing drawn, nothing to draw: a cursor move
        self.clear()
        if state.base_layer is None:
            return
        plane = self.view.plane
        k = state.slice_index(plane)
        pen = QtGui.QPen(COLOUR)
        pen.setCosmetic(True)
        pen.setWidth(2)
        for m in state.measurements:
            if m.plane != plane or m.slice != k:
                continue
            a = QtCore.QPointF(*state.world_to_display(plane, m.start))
            b = QtCore.QPointF(*state.world_to_display(plane, m.end))
            if m.kind == "ruler":
                item: QtWidgets.QGraphicsItem = QtWidgets.QGraphicsLineItem(QtCore.QLineF(a, b))
                text = f"{m.length_mm:.1f} mm"
            else:
                rect = QtCore.QRectF(a, b).normalized()
                cls = (QtWidgets.QGraphicsRectItem if m.kind == "box"
                       else QtWidgets.QGraphicsEllipseItem)
                item = cls(rect)
                text = m.name
            item.setPen(pen)
            item.setZValue(900)
            self.view.view_box.addItem(item, ignoreBounds=True)
            self.items.append(item)
            label = QtWidgets.QGraphicsSimpleTextItem(text)
            label.setBrush(QtGui.QBrush(COLOUR))
            label.setFlag(QtWidgets.QGraphicsItem.GraphicsItemFlag.ItemIgnoresTransformations)
            label.setPos(b)
            label.setZValue(901)
            self.view.view_box.addItem(label, ignoreBounds=True)
            self.items.append(label)
            self.labels[m.id] = text
