"""Subject navigation of the viewer: the open workspace's subjects, showing one (preloaded or
read in the background, the newest request winning), next / previous, and the browser rows.

:class:`SubjectNavigator` is one component of the main window; the window keeps thin methods
(``open_workspace``, ``open_subject``, ``next_subject`` ...) that call it. Reading a subject's
files (:meth:`SubjectNavigator.load_payload`) is Qt-free and runs in the preloader thread.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from PySide6 import QtCore

from bodyage_core.errors import CohortError
from bodyage_core.viewer import ViewerState, atlas_space
from bodyage_core.viewer.layers import importance_overlay
from bodyage_core.viewer.windowing import default_image_range
from bodyage_core.volume import Volume
from bodyage_gui import strings
from bodyage_gui.background import LatestRequest
from bodyage_gui.loading import load_many
from bodyage_gui.panels.qt_subject_browser import SubjectPreloader

_Qt = QtCore.Qt


def subject_rows(ws) -> tuple[list[dict[str, Any]], dict[str, dict[str, Path]]]:
    """Browser rows (with the predictions of the run shown by default) and each subject's
    image paths."""
    subjects = ws.db.subjects()
    run = ws.db.latest_run()
    preds = {p["subject_id"]: p for p in ws.db.predictions(run)} if run else {}
    rows, images = [], {}
    for s in subjects:
        p = preds.get(s.subject_id, {})
        predicted = p.get("corrected") if p.get("corrected") is not None else p.get("mean")
        rows.append({"subject_id": s.subject_id, "sex": s.sex, "bmi_group": s.bmi_group,
                     "age": s.age, "predicted": predicted, "sigma": p.get("sigma"),
                     "gap": p.get("gap")})
        images[s.subject_id] = {k: ws.resolve(v) for k, v in s.images.items()}
    return rows, images


def water_fat(water: Volume, fat: Volume) -> Volume:
    """The first channels of a water and a fat image (same grid) as one ``water``/``fat``
    volume with the water image's provenance and metadata."""
    return Volume(np.concatenate([water.data[:1], fat.data[:1]]), water.affine,
                  ("water", "fat"), dict(water.provenance), dict(water.metadata))


def load_payload(images: dict[str, Path] | None, subject_id: str,
                 run: str | None) -> dict[str, Any]:
    """Read one subject's images and work out their display settings (files and numpy only,
    no Qt), so that showing the subject costs the GUI thread little more than the first
    frame."""
    if images is None:
        raise CohortError(f"no subject {subject_id!r} in the open workspace")
    water, fat = images.get("water"), images.get("fat")
    # a streamed UK Biobank subject records one zip as both its water and its fat image
    one_file = water is not None and fat is not None and Path(water) == Path(fat)
    if water is not None:
        image_path = water
        base_paths = [water] + ([fat] if fat is not None and not one_file else [])
    else:
        kind = next((k for k in ("t1", "input", "image") if k in images), None)
        if kind is None:
            kind = next((k for k in images if not k.startswith(("gradcam", "to_atlas",
                                                                "labels", "age_mask"))),
                        None)
        if kind is None:
            raise CohortError(f"subject {subject_id} has no image to show",
                              hint="import its images first")
        image_path = images[kind]
        base_paths = [image_path]
    extra: list[tuple[str, Path, str]] = []
    if "labels" in images:
        extra.append(("labels", images["labels"], "labels"))
    cams = [k for k in images if k.startswith("gradcam")]
    cam = f"gradcam_{run}" if run and f"gradcam_{run}" in images else (cams[-1] if cams
                                                                       else None)
    if cam is not None:
        extra.append((cam, images[cam], "overlay"))
    # every file at once (gzip and numpy release the GIL)
    loaded = load_many(base_paths + [p for _, p, _ in extra],
                       [False] * len(base_paths) + [k == "labels" for _, _, k in extra])
    vol = loaded[0]
    if water is not None and fat is not None and not one_file and loaded[1].same_grid(vol):
        vol = water_fat(vol, loaded[1])
    overlays = []
    for (name, path, kind), v in zip(extra, loaded[len(base_paths):]):
        if kind == "overlay":  # an importance map: threshold it so anatomy shows
            disp = importance_overlay(v.data[0], signed="signed" in name)
        else:
            mx = v.data[0].max() if v.data.size else 1
            disp = {"kind": "labels", "visible": False, "opacity": 0.35,
                    "display_range": (0.0, float(mx))}
        overlays.append((name, path, v, kind, disp))
    return {"image_path": image_path, "image": vol, "overlays": overlays,
            "image_range": default_image_range(vol)}


class SubjectNavigator(QtCore.QObject):
    """The workspace and its subjects for one :class:`~bodyage_gui.qt_main_window.
    QtMainWindow` (see the module docstring)."""

    def __init__(self, window: Any):
        super().__init__(window)
        self.window = window
        self.workspace: Any = None
        self.current: str | None = None
        self.images: dict[str, dict[str, Path]] = {}
        #: the run whose maps and predictions the browser shows (latest predictions)
        self.run: str | None = None
        self.preloader = SubjectPreloader(self.load_payload)
        self.load = LatestRequest(self)
        window.subject_browser.subject_activated.connect(self.activate)

    def load_payload(self, subject_id: str) -> dict[str, Any]:
        return load_payload(self.images.get(subject_id), subject_id, self.run)

    # -- the workspace ----------------------------------------------------------------------
    def open_workspace(self, path: str | Path, open_first: bool = True,
                       wait: bool = False) -> bool:
        """Open a workspace: list its subjects (with predictions of the latest run) and open
        the first one (in the background unless ``wait``)."""
        path = Path(path)
        win = self.window

        def do():
            from bodyage_core.cohort import Workspace

            ws = Workspace.open(path)
            rows, images = subject_rows(ws)
            if not rows:
                raise CohortError("the workspace has no subjects", path=path,
                                  hint="import subjects with `bodyage import`")
            old = self.workspace
            self.workspace = ws
            self.images = images
            self.run = ws.db.latest_run()
            self.preloader.clear()
            win.subject_browser.set_subjects(rows)
            win.show_subjects_dock()
            win.recent.add("recent_workspaces", str(path))
            win.workspace_changed.emit(ws)
            if old is not None and old is not ws:
                old.close()
            if open_first:
                first = win.subject_browser.visible_ids()[0]
                win.subject_browser.select(first, emit=False)
                ok = self.activate(first)  # False when it failed at once
                return self.wait() if ok and wait else ok
            return True

        return bool(win.guard(do))

    def refresh(self) -> None:
        """Re-read subjects and predictions (e.g. after a prediction run)."""
        if self.workspace is None:
            return
        rows, images = subject_rows(self.workspace)
        self.images = images
        self.run = self.workspace.db.latest_run()
        browser = self.window.subject_browser
        browser.set_subjects(rows)
        if self.current:
            browser.select(self.current, emit=False)

    def prediction_stored(self, subject_id: str, row: dict[str, Any]) -> None:
        """A prediction was written to ``cohort.sqlite``: update the subject's browser row,
        or re-read the cohort when the run shown changes."""
        if self.workspace is None:
            return
        run = row.get("run_id")
        if run is not None and run != self.run:
            self.refresh()
            return
        predicted = row.get("corrected") if row.get("corrected") is not None else row.get("mean")
        self.window.subject_browser.model.update_row(subject_id, {
            "predicted": predicted, "sigma": row.get("sigma"), "gap": row.get("gap")})

    # -- showing a subject ------------------------------------------------------------------
    def open_subject(self, subject_id: str, wait: bool = False) -> bool:
        """Open a subject by id (what a click in a cohort plot calls): at once when
        preloaded, otherwise after a background read; ``wait=True`` blocks until shown."""
        if subject_id not in self.images:
            self.window.report_error(CohortError(f"no subject {subject_id!r} in the open "
                                                 "workspace"))
            return False
        self.window.subject_browser.select(subject_id, emit=False)
        ok = self.activate(subject_id)
        return self.wait() if ok and wait else ok

    def activate(self, subject_id: str) -> bool:
        """Start showing a subject: at once when preloaded, else when its files are read (in
        the background; the UI stays responsive and a newer request wins)."""
        fut = self.preloader.future(subject_id)
        if not fut.done():
            self.window.statusBar().showMessage(f"loading {subject_id} ...")
        return bool(self.load.start(fut, lambda f, sid=subject_id: self._finish(sid, f),
                                    info=subject_id))

    def wait(self, timeout: float = 60.0) -> bool:
        """Block until the subject being loaded is shown (scripts, screenshots, tests)."""
        return bool(self.load.wait(timeout))

    def _finish(self, subject_id: str, fut) -> bool:
        self.preloader.take(subject_id)
        win = self.window

        def do():
            payload = fut.result()
            state = win.state
            trial = ViewerState(state.convention, state.layout)
            trial.add_layer(payload["image"], name=subject_id, path=payload["image_path"],
                            kind="image", display_range=payload.get("image_range"))
            heat = None
            for name, path, vol, kind, disp in payload["overlays"]:
                lay = trial.add_layer(vol, name=name, path=path, **disp)
                heat = lay if kind == "overlay" else heat
            trial.set_active_layer(heat or trial.base_layer)
            wanted = state.space.wanted
            # same place in the next subject (a cursor in atlas space is not a subject point)
            win.replace_layers(trial, keep_cursor=win.display_space == atlas_space.SUBJECT)
            self.current = subject_id
            win.space_switch.reset(subject_id)
            if wanted and win.space_switch.link is not None:
                win.set_display_space(atlas_space.ATLAS)  # stays in atlas space
            win.setWindowTitle(f"{strings.APP_NAME} — {subject_id}")
            win.subject_changed.emit(subject_id)
            win.display_changed.emit()
            self.preloader.preload(win.subject_browser.neighbour(+1))
            return True

        return bool(win.guard(do))

    def next(self) -> str | None:
        return self.window.subject_browser.select_next()

    def previous(self) -> str | None:
        return self.window.subject_browser.select_previous()

    def leave(self) -> None:
        """Files (not a subject) are shown now."""
        self.current = None
        self.load.drop()

    def shutdown(self) -> None:
        self.preloader.shutdown()
