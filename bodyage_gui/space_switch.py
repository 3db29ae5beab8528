"""Subject space / atlas space for the viewer window (the space shown is the model's:
``state.space``, :mod:`bodyage_core.viewer.space`; finding and warping:
:mod:`bodyage_core.viewer.atlas_space`).

:class:`DisplaySpaceSwitch` finds the open subject's atlas space (or why there is none), keeps
the View-menu toggle, F6 and the layer panel's check box in step with it, warps the subject's
layers in the background (the newest request wins; a warp is cached), brings the group's
population map back onto the subject, and returns to the subject's own space.
"""

from __future__ import annotations

import concurrent.futures as cf
from typing import Any

from PySide6 import QtCore

from bodyage_core.errors import BodyageError
from bodyage_core.viewer import atlas_space
from bodyage_core.viewer.space import DisplaySpace
from bodyage_gui import strings
from bodyage_gui.background import LatestRequest


class DisplaySpaceSwitch(QtCore.QObject):
    """The display space of one main window (see the module docstring)."""

    def __init__(self, window: Any, pool: cf.Executor):
        super().__init__(window)
        self.window = window
        self.pool = pool
        self.link: atlas_space.AtlasLink | None = None
        self.reason: str = atlas_space.NO_WORKSPACE
        self._cache: tuple | None = None    # (key, payload) of the last warp
        #: the warp to atlas space under way
        self.load = LatestRequest(self)
        #: a population map being warped onto the subject
        self.population_load = LatestRequest(self)

    @property
    def state(self):
        return self.window.state

    @property
    def name(self) -> str:
        """``'subject'`` or ``'atlas'``."""
        return self.state.space.name

    def clear_cache(self) -> None:
        self._cache = None

    # -- controls -----------------------------------------------------------------------------
    def update_controls(self) -> None:
        """Enable the atlas-space toggle (View menu, F6, layer panel) only for a subject with
        a registration; the tooltip says what to run otherwise."""
        win = self.window
        link = self.link
        atlas = self.name == atlas_space.ATLAS
        pending = self.load.pending
        if link is not None:
            tip = (f"show {link.subject_id} in {link.label} (its image and maps warped with its "
                   "registration, the group's population map as it is) or back in its own "
                   "space")
            if link.population is None:
                tip += "; no population map built for this group yet (`bodyage atlas maps`)"
        else:
            tip = self.reason
        for w in (win.atlas_action, win.layer_panel.space_check):
            w.blockSignals(True)
            w.setChecked(atlas or pending)
            w.setEnabled((link is not None or atlas) and not pending)
            w.setToolTip(tip)
            w.blockSignals(False)
        win.atlas_action.setStatusTip(tip)
        win.layer_panel.space_check.setText(link.label if link is not None else "atlas space")
        pop_ok = link is not None and link.population is not None and not atlas
        win.population_action.setEnabled(pop_ok and not pending)
        win.population_action.setToolTip(
            f"the population map of group {link.group} warped back onto this subject through "
            "its registration" if pop_ok else
            ("in atlas space the population map is shown as it is" if atlas else
             (tip if link is None else "no population map built for this group yet: run "
              "`bodyage atlas maps WORKSPACE --run RUN`")))

    def reset(self, subject_id: str | None) -> None:
        """A new subject or new files are shown (in their own space): find the subject's
        atlas space for the toggle."""
        win = self.window
        old = self.state.space
        was_atlas = old.is_atlas
        space = DisplaySpace(wanted=old.wanted, atlas_layer_settings=old.atlas_layer_settings)
        with self.state.events.space_changed.blocked():
            self.state.set_space(space)
        self.load.drop()
        if subject_id is None or win.workspace is None:
            self.link, self.reason = None, atlas_space.NO_WORKSPACE
            space.wanted = False
        else:
            try:
                self.link, self.reason = atlas_space.find_atlas_link(
                    win.workspace, subject_id, win.navigator.run)
            except (BodyageError, OSError, ValueError) as err:
                self.link, self.reason = None, str(err)
        self.update_controls()
        if was_atlas:
            self.state.events.space_changed.emit(atlas_space.SUBJECT)

    # -- switching ------------------------------------------------------------------------------
    def toggle(self) -> bool:
        return self.set(atlas_space.SUBJECT if self.name == atlas_space.ATLAS
                        else atlas_space.ATLAS)

    def set(self, space: str, wait: bool = False) -> bool:
        """Show the open workspace subject in ``'subject'`` space or in the ``'atlas'`` space
        of its group. Warping runs in the background unless ``wait``; the cursor follows the
        registration; on error the view stays as it was."""
        if space not in (atlas_space.SUBJECT, atlas_space.ATLAS):
            raise ValueError(f"unknown display space {space!r}")
        if space == self.name and not self.load.pending:
            self.update_controls()
            return True
        if space == atlas_space.SUBJECT:
            self.state.space.wanted = False
            self.load.drop()
            ok = self._back_to_subject()
            self.update_controls()
            return ok
        link = self.link
        if link is None or self.state.base_layer is None:
            self.window.report_error(BodyageError(self.reason))
            self.update_controls()
            return False
        specs = atlas_space.snapshot(self.state)
        key = (link.subject_id, link.group, str(link.population),
               tuple((sp.name, id(sp.volume)) for sp in specs))
        if self._cache is not None and self._cache[0] == key:
            fut: cf.Future = cf.Future()
            fut.set_result(self._cache[1])
        else:
            fut = self.pool.submit(atlas_space.to_atlas, link, specs)
        self.state.space.wanted = True
        if not fut.done() and not wait:
            self.window.statusBar().showMessage(f"warping {link.subject_id} to {link.label} "
                                                "...")
        ok = self.load.start(fut, lambda f: self._finish_atlas(f, key, specs), wait=wait)
        if self.load.pending:
            self.update_controls()      # the toggle shows "pending" while the warp runs
        return bool(ok)

    def wait(self, timeout: float = 120.0) -> bool:
        """Block until a space switch in progress is shown (scripts, screenshots, tests)."""
        if not self.load.pending:
            return True
        return bool(self.load.wait(timeout))

    def _finish_atlas(self, fut, key: tuple, specs: list) -> bool:
        win = self.window
        link = self.link

        def do():
            payload = fut.result()
            self._cache = (key, payload)
            new = [sp.copy() for sp in payload["specs"]]
            remembered = self.state.space.atlas_layer_settings
            for sp in new:  # what the user set on atlas-only layers last time
                old = remembered.get(sp.name)
                if old is not None and sp.settings.get("path") == old.get("path"):
                    for k in ("colormap", "opacity", "display_range", "threshold", "visible"):
                        sp.settings[k] = old[k]
            atlas_space.carry_settings(new, self.state)
            trial = atlas_space.build_state(new, self.state.convention, self.state.layout,
                                            type(self.state))
            tx = payload.get("points") or atlas_space.PointMapper(payload["transform"])
            try:
                cursor = atlas_space.subject_to_atlas(tx, self.state.cursor)
            except (BodyageError, RuntimeError):
                cursor = None  # no inverse field: the cursor goes to the centre
            win.replace_layers(trial)
            self.state.reset_view()
            if cursor is not None:
                self.state.set_cursor(cursor)
            space = DisplaySpace(atlas_space.ATLAS, link.group, link.subject_id, specs, tx,
                                 wanted=True,
                                 atlas_layer_settings=self.state.space.atlas_layer_settings)
            win.setWindowTitle(f"{strings.APP_NAME} — {link.subject_id} in {link.label}")
            win.statusBar().showMessage(
                f"{link.subject_id} in {link.label}: image and maps warped with its "
                "registration" + ("" if link.population is None else
                                  f"; population map {link.population.name}"), 8000)
            win.scheduler.flush()
            self.state.set_space(space)
            win.display_changed.emit()
            return True

        ok = bool(win.guard(do))
        if not ok:
            self.state.space.wanted = False
        self.update_controls()
        return ok

    def _back_to_subject(self) -> bool:
        if self.name != atlas_space.ATLAS or self.state.space.subject_layers is None:
            return True
        win = self.window

        def do():
            remembered = {lay.name: lay.settings() for lay in self.state.layers}
            trial, cursor = self.state.subject_space_state()
            win.replace_layers(trial)
            self.state.reset_view()
            if cursor is not None:
                self.state.set_cursor(cursor)
            space = DisplaySpace(atlas_layer_settings=remembered)
            sid = win.current_subject or ""
            win.setWindowTitle(f"{strings.APP_NAME} — {sid}")
            win.statusBar().showMessage(f"{sid} in its own space", 5000)
            win.scheduler.flush()
            self.state.set_space(space)
            win.display_changed.emit()
            return True

        return bool(win.guard(do))

    # -- the population map on the subject -------------------------------------------------------
    def add_population_to_subject(self, wait: bool = False) -> bool:
        """Add the population map of the subject's group, warped back onto the subject through
        its registration (in the background unless ``wait``), as an overlay layer."""
        win = self.window
        link = self.link
        base = self.state.base_layer
        if link is None or base is None or self.name != atlas_space.SUBJECT:
            win.report_error(BodyageError(
                self.reason if link is None else
                "the population map goes onto the subject in subject space",
                hint=None if link is None else "switch back to subject space first"))
            return False
        subject_volume = base.volume
        fut = self.pool.submit(atlas_space.population_to_subject, link, subject_volume)

        def then(f) -> bool:
            def do():
                vol, disp, name = f.result()
                if self.state.base_layer is None or \
                        self.state.base_layer.volume is not subject_volume:
                    return False  # another subject (or space) meanwhile
                lay = self.state.add_layer(vol, name=name, **disp)
                win.statusBar().showMessage(f"{name}: warped back through the registration",
                                            5000)
                return lay is not None

            return bool(win.guard(do))

        if not wait:
            win.statusBar().showMessage(f"warping the population map of {link.group} onto "
                                        f"{link.subject_id} ...")
        return bool(self.population_load.start(fut, then, wait=wait))
