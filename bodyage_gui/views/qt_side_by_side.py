"""View > Side by side: a second subject of the workspace, or the atlas template of the open
subject's group, in three linked views beside the main window's, with one cursor: in world
millimetres, or in atlas space through both registrations
(:class:`bodyage_core.viewer.linked.CursorLink`), so the point under the cursor is the same
anatomy on both sides.
"""

from __future__ import annotations

from typing import Any

from PySide6 import QtCore, QtWidgets

from bodyage_core.errors import BodyageError
from bodyage_core.viewer import PLANES, ViewerState, atlas_space
from bodyage_core.viewer.linked import CursorLink
from bodyage_gui.redraw import RedrawScheduler

_Qt = QtCore.Qt
TEMPLATE = "template:"


def point_mapper(link: atlas_space.AtlasLink) -> atlas_space.PointMapper:
    """A subject's registration, ready to map points (reads its transform files)."""
    from bodyage_core.registration.transform import SubjectTransform

    return atlas_space.PointMapper(SubjectTransform.load(link.transform_dir))


class QtSideBySide(QtWidgets.QWidget):
    """The second viewer (see the module docstring)."""

    def __init__(self, window: Any, parent: QtWidgets.QWidget | None = None):
        super().__init__(parent or window)
        self.setWindowFlag(_Qt.WindowType.Window, True)
        self.setWindowTitle("Side by side")
        self.resize(1000, 420)
        self.window = window
        self.state = ViewerState(window.state.convention, "row")
        self.scheduler = RedrawScheduler(parent=self)
        self.link = CursorLink()
        self._syncing = False
        self.shown: str | None = None
        self.choice = QtWidgets.QComboBox()
        self.choice.setToolTip("what the second viewer shows")
        self.sync = QtWidgets.QComboBox()
        self.sync.addItem("cursor in world mm", "world")
        self.sync.addItem("cursor through atlas space (registrations)", "atlas")
        self.message = QtWidgets.QLabel("")
        self.message.setWordWrap(True)
        self.message.setStyleSheet("color: #a05000;")
        from bodyage_gui.views.qt_colorbar import QtColorBar
        from bodyage_gui.views.qt_slice_view import QtSliceView

        self.views = {p: QtSliceView(self.state, p, self.scheduler) for p in PLANES}
        self.colorbar = QtColorBar(self.state)
        top = QtWidgets.QHBoxLayout()
        top.addWidget(QtWidgets.QLabel("Show"))
        top.addWidget(self.choice, 1)
        top.addWidget(QtWidgets.QLabel("Link"))
        top.addWidget(self.sync)
        row = QtWidgets.QHBoxLayout()
        for p in PLANES:
            self.views[p].setMinimumSize(160, 160)
            row.addWidget(self.views[p], 1)
        row.addWidget(self.colorbar)
        lay = QtWidgets.QVBoxLayout(self)
        lay.addLayout(top)
        lay.addWidget(self.message)
        lay.addLayout(row, 1)
        self.fill_choices()
        self.choice.currentIndexChanged.connect(lambda _i: self.show_choice())
        self.sync.currentIndexChanged.connect(lambda _i: self.set_sync(self.sync.currentData()))
        window.state.events.cursor_changed.connect(self._main_moved)
        self.state.events.cursor_changed.connect(self._side_moved)
        window.display_changed.connect(self._main_changed)

    # -- what is shown -----------------------------------------------------------------------
    def fill_choices(self) -> None:
        win = self.window
        self.choice.blockSignals(True)
        self.choice.clear()
        link = win.atlas_link
        if link is not None and link.template is not None:
            self.choice.addItem(f"atlas template ({link.group})", TEMPLATE + link.group)
        for sid in win.subject_browser.visible_ids() if win.workspace is not None else []:
            if sid != win.current_subject:
                self.choice.addItem(f"subject {sid}", sid)
        self.choice.blockSignals(False)

    def show_subject(self, subject_id: str) -> bool:
        return self.choice.findData(subject_id) >= 0 and self._select(subject_id)

    def show_template(self) -> bool:
        link = self.window.atlas_link
        return link is not None and self._select(TEMPLATE + link.group)

    def _select(self, data: str) -> bool:
        idx = self.choice.findData(data)
        if idx < 0:
            return False
        if idx == self.choice.currentIndex():
            return self.show_choice()
        self.choice.setCurrentIndex(idx)      # show_choice through the signal
        return self.shown == data

    def show_choice(self) -> bool:
        """Read what the combo names and show it (files read here: small)."""
        data = self.choice.currentData()
        if data is None:
            self.message.setText("open a workspace subject: the second viewer shows another "
                                 "subject or the atlas template of its group")
            return False
        win = self.window

        def do():
            from bodyage_gui.loading import load_for_viewer

            trial = ViewerState(self.state.convention, "row")
            if str(data).startswith(TEMPLATE):
                link = win.atlas_link
                trial.add_layer(load_for_viewer(link.template), f"template {link.group}",
                                kind="image", path=link.template)
                if link.population is not None:
                    from bodyage_core.viewer.layers import importance_overlay

                    pop = load_for_viewer(link.population)
                    disp = {"kind": "overlay", **importance_overlay(pop.data[0])}
                    trial.add_layer(pop, link.population.name.split(".")[0], **disp)
            else:
                payload = win.navigator.load_payload(str(data))
                trial.add_layer(payload["image"], str(data), kind="image",
                                path=payload["image_path"],
                                display_range=payload.get("image_range"))
                for name, path, vol, _kind, disp in payload["overlays"]:
                    trial.add_layer(vol, name=name, path=path, **disp)
            self._syncing = True               # the new image's centre is not a move
            try:
                self.state.replace_layers(trial)
            finally:
                self._syncing = False
            self.shown = str(data)
            self.setWindowTitle(f"Side by side — {self.choice.currentText()}")
            self.set_sync(self.sync.currentData())
            return True

        return bool(win.guard(do))

    # -- the link ----------------------------------------------------------------------------
    def set_sync(self, mode: str) -> bool:
        """``'world'`` or ``'atlas'`` (through both registrations)."""
        win = self.window
        self.message.setText("")
        if mode == "atlas":
            try:
                a = win.atlas_link
                if a is None:
                    raise BodyageError(win.atlas_reason)
                mapper_a = point_mapper(a)
                mapper_b = None
                if self.shown is not None and not self.shown.startswith(TEMPLATE):
                    b, why = atlas_space.find_atlas_link(win.workspace, self.shown,
                                                         win.navigator.run)
                    if b is None or b.group != a.group:
                        raise BodyageError(why or f"{self.shown} is registered to another "
                                           f"group ({b.group}) than {a.subject_id} ({a.group})")
                    mapper_b = point_mapper(b)
                self.link = CursorLink("atlas", mapper_a, mapper_b)
            except (BodyageError, OSError, RuntimeError) as err:
                self.link = CursorLink("world")
                self.message.setText(f"linked in world mm: {err}")
                self.sync.blockSignals(True)
                self.sync.setCurrentIndex(self.sync.findData("world"))
                self.sync.blockSignals(False)
                self._main_moved(win.state.cursor)
                return False
        else:
            self.link = CursorLink("world")
        self.sync.blockSignals(True)
        self.sync.setCurrentIndex(self.sync.findData(self.link.mode))
        self.sync.blockSignals(False)
        self._main_moved(win.state.cursor)
        return True

    def _main_moved(self, cursor) -> None:
        if self._syncing or self.state.base_layer is None or self.window.state.base_layer is None:
            return
        self._syncing = True
        try:
            self.state.set_cursor(self.link.a_to_b(cursor))
        except (BodyageError, RuntimeError) as err:
            self.message.setText(str(err))
        finally:
            self._syncing = False

    def _side_moved(self, cursor) -> None:
        if self._syncing or self.window.state.base_layer is None:
            return
        self._syncing = True
        try:
            self.window.state.set_cursor(self.link.b_to_a(cursor))
        except (BodyageError, RuntimeError) as err:
            self.message.setText(str(err))
        finally:
            self._syncing = False

    def _main_changed(self) -> None:
        """Another subject in the main window: the choices change, the link is rebuilt."""
        current = self.choice.currentData()
        self.fill_choices()
        idx = self.choice.findData(current)
        if idx >= 0:
            self.choice.blockSignals(True)
            self.choice.setCurrentIndex(idx)
            self.choice.blockSignals(False)
            self.set_sync(self.sync.currentData())

    def closeEvent(self, ev):  # noqa: N802
        self.window.state.events.cursor_changed.disconnect(self._main_moved)
        try:
            self.window.display_changed.disconnect(self._main_changed)
        except (RuntimeError, TypeError):
            pass
        for v in self.views.values():
            v.disconnect_state()
        self.colorbar.disconnect_state()
        if getattr(self.window, "side_by_side", None) is self:
            self.window.side_by_side = None
        super().closeEvent(ev)


def open_side_by_side(window: Any, subject_id: str | None = None) -> QtSideBySide:
    """Show (or raise) the window's second viewer; ``subject_id``: show that subject."""
    sbs = getattr(window, "side_by_side", None)
    if sbs is None:
        sbs = QtSideBySide(window)
        window.side_by_side = sbs
    else:
        sbs.fill_choices()
    sbs.show()
    sbs.raise_()
    if subject_id is not None:
        sbs.show_subject(subject_id)
    elif sbs.shown is None and sbs.choice.count():
        sbs.show_choice()
    return sbs
