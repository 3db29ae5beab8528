"""The cursor readout: world mm, 0-based voxel (numpy z,y,x and NIfTI x,y,z), value per layer,
organ name."""

from __future__ import annotations

from PySide6 import QtGui, QtWidgets

from bodyage_core.viewer import ViewerState


class QtReadoutPanel(QtWidgets.QLabel):
    """A label showing :meth:`ViewerState.readout_text`, following the cursor."""

    def __init__(self, state: ViewerState, parent: QtWidgets.QWidget | None = None):
        super().__init__(parent)
        self.state = state
        font = QtGui.QFontDatabase.systemFont(QtGui.QFontDatabase.SystemFont.FixedFont)
        font.setPointSize(9)
        self.setFont(font)
        self.setTextInteractionFlags(self.textInteractionFlags()
                                     | QtGui.Qt.TextInteractionFlag.TextSelectableByMouse)
        self.setMargin(4)
        self.setWordWrap(False)
        # a long line is clipped rather than widening the dock (and squeezing the views)
        self.setSizePolicy(QtWidgets.QSizePolicy.Policy.Ignored,
                           QtWidgets.QSizePolicy.Policy.Preferred)
        self.setMinimumWidth(160)
        ev = state.events
        self._events = (ev.cursor_changed, ev.layers_changed, ev.layer_changed)
        for e in self._events:
            e.connect(self.refresh)
        self.refresh()

    def disconnect_state(self) -> None:
        """Stop following the state (call before dropping the widget)."""
        self._disconnect()

    def _disconnect(self, *_):
        for e in self._events:
            e.disconnect(self.refresh)

    def needed_height(self) -> int:
        """Pixels that show every line of the readout without clipping."""
        lines = max(3, self.text().count("\n") + 1)
        return lines * self.fontMetrics().lineSpacing() + 2 * self.margin() + 8

    def refresh(self, *_):
        text = self.state.readout_text()
        lines = text.count("\n")
        self.setText(text)
        if lines != getattr(self, "_lines", None):
            self._lines = lines
            # every line shown: the dock may not squeeze the readout below its text
            self.setMinimumHeight(self.needed_height())
        self.setToolTip(text)  # the whole readout where a narrow dock clips a line
