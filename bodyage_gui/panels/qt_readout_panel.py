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
        # a long line wraps (at its spaces) rather than being clipped by a narrow dock or
        # widening it (and squeezing the views); the label's minimum height follows, so the
        # dock never cuts lines off at the bottom either
        self.setWordWrap(True)
        self.setAlignment(QtGui.Qt.AlignmentFlag.AlignLeft | QtGui.Qt.AlignmentFlag.AlignTop)
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

    def needed_height(self, width: int | None = None) -> int:
        """Pixels that show all of the readout at ``width`` (default: the label's own) without
        clipping: its lines, wrapped."""
        w = width if width is not None else max(self.width(), self.minimumWidth())
        lines = max(3, self.text().count("\n") + 1)
        by_lines = lines * self.fontMetrics().lineSpacing() + 2 * self.margin()
        return max(by_lines, self.heightForWidth(w)) + 4

    def _fit(self) -> None:
        need = self.needed_height()
        if need != self.minimumHeight():
            self.setMinimumHeight(need)

    def resizeEvent(self, ev):  # noqa: N802
        super().resizeEvent(ev)
        if ev.size().width() != ev.oldSize().width():
            self._fit()

    def refresh(self, *_):
        text = self.state.readout_text()
        if text != self.text():
            self.setText(text)
            shape = tuple(len(line) for line in text.split("\n"))
            if shape != getattr(self, "_shape", None):   # what the wrapping depends on
                self._shape = shape
                self._fit()
        self.setToolTip(text)  # the whole readout, also in the tooltip
