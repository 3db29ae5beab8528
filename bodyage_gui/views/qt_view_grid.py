"""The central views laid out by the state's layout: ``grid`` (coronal, sagittal / axial, 3D),
``row`` (the three planes side by side), one plane, ``3d`` or ``lightbox``; and maximising one
view (double-click, or its hot key) and back.

Rows and columns get equal shares (every widget's size comes from the grid's stretch only: the
VTK widget's large size hint and a view's letters must not make one row taller than another).
"""

from __future__ import annotations

from PySide6 import QtCore, QtWidgets

from bodyage_core.viewer import ViewerState

#: where each view goes in each layout: (view name, row, column)
PLACES: dict[str, list[tuple[str, int, int]]] = {
    "grid": [("coronal", 0, 0), ("sagittal", 0, 1), ("axial", 1, 0), ("3d", 1, 1)],
    "row": [("axial", 0, 0), ("coronal", 0, 1), ("sagittal", 0, 2)],
    "axial": [("axial", 0, 0)], "coronal": [("coronal", 0, 0)],
    "sagittal": [("sagittal", 0, 0)], "3d": [("3d", 0, 0)], "lightbox": [("lightbox", 0, 0)],
}


class QtViewGrid(QtWidgets.QWidget):
    """The views in a grid following ``state.layout`` (see the module docstring).

    ``views`` maps ``'axial'``, ``'coronal'``, ``'sagittal'``, ``'3d'`` and optionally
    ``'lightbox'`` to their widgets."""

    def __init__(self, state: ViewerState, views: dict[str, QtWidgets.QWidget],
                 parent: QtWidgets.QWidget | None = None):
        super().__init__(parent)
        self.state = state
        self.views = dict(views)
        self.grid = QtWidgets.QGridLayout(self)
        self.grid.setSpacing(2)
        self.grid.setContentsMargins(0, 0, 0, 0)
        self.applied: str | None = None
        #: the layout to go back to after a maximised view
        self.before_maximise: str | None = None

    def apply(self, layout: str) -> None:
        if self.applied == layout:
            return  # restoring a state re-announces its layout: nothing to move
        self.applied = layout
        for w in self.views.values():
            self.grid.removeWidget(w)
            w.hide()
        for r in range(3):
            self.grid.setRowStretch(r, 0)
            self.grid.setColumnStretch(r, 0)
        for name, r, c in PLACES.get(layout, PLACES["grid"]):
            w = self.views.get(name)
            if w is None:
                continue
            w.setSizePolicy(QtWidgets.QSizePolicy.Policy.Ignored,
                            QtWidgets.QSizePolicy.Policy.Ignored)
            w.setMinimumSize(1, 1)  # explicit: a view's own layout must not set a larger one
            self.grid.addWidget(w, r, c)
            self.grid.setRowStretch(r, 1)
            self.grid.setColumnStretch(c, 1)
            w.show()

    def toggle_maximise(self, name: str) -> str:
        """Show view ``name`` alone, or, when it is shown alone after a maximise, go back to
        the layout before; returns the layout now."""
        layout = self.state.layout
        if layout == name and self.before_maximise is not None:
            back, self.before_maximise = self.before_maximise, None
            self.state.set_layout(back)
        elif layout != name and name in PLACES:
            self.before_maximise = layout
            self.state.set_layout(name)
        return self.state.layout

    def cell_sizes(self) -> list[QtCore.QSize]:
        """Sizes of the views shown (for tests of equal rows and columns)."""
        return [w.size() for w in self.views.values() if w.isVisible()]
