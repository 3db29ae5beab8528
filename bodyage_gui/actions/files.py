"""File > Open files / Open DICOM folder / Open workspace / Add overlay, and the command line's
files: read everything in the background (the newest request wins), then show it at once; on
error the old view stays. A folder of several DICOM series opens the series browser to pick one
(:mod:`bodyage_gui.panels.qt_dicom_browser`) instead of an error naming an option the viewer
does not have."""

from __future__ import annotations

import concurrent.futures as cf
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from PySide6 import QtCore, QtWidgets

from bodyage_core.errors import BodyageError
from bodyage_core.labels import looks_like_label_map
from bodyage_core.viewer import ViewerState
from bodyage_core.viewer.files import add_map, read_map
from bodyage_core.viewer.scan import merge_contrasts
from bodyage_gui import strings
from bodyage_gui.actions.recent import FILES
from bodyage_gui.background import LatestRequest
from bodyage_gui.loading import load_for_viewer, load_many


def fill_state(target: ViewerState, vols, ovs, threshold) -> None:
    """The first image is the base (with the other contrasts of the same scan as its
    channels: :func:`~bodyage_core.viewer.scan.merge_contrasts`), the other images layers on
    top, then the maps (the rule of :mod:`bodyage_core.viewer.files`). Qt-free: runs in the
    I/O thread."""
    for i, (p, v) in enumerate(merge_contrasts(list(vols))):
        target.add_layer(v, path=p, kind="image" if i == 0 else None,
                         name=Path(str(p)).name.split(".")[0] if i else None)
    for p, v in ovs:
        add_map(target, v, p, threshold)


def build_trial(all_paths: list[Path], flags: list[bool], n_images: int, convention: str,
                layout: str, threshold: float | None) -> ViewerState:
    """Read, check and lay out opened files in the I/O thread (Qt-free; holds no Qt object)."""
    loaded = load_many(all_paths, flags)
    trial = ViewerState(convention, layout)
    fill_state(trial, list(zip(all_paths[:n_images], loaded[:n_images])),
               list(zip(all_paths[n_images:], loaded[n_images:])), threshold)
    return trial


def several_dicom_series(paths: Sequence[Path]) -> Path | None:
    """The folder when ``paths`` is one folder holding more than one DICOM series."""
    if len(paths) != 1 or not Path(paths[0]).is_dir():
        return None
    from bodyage_core.viewer.dicom_series import scan_folder

    try:
        series = scan_folder(paths[0], max_files=4000)
    except (OSError, BodyageError):
        return None
    return Path(paths[0]) if len(series) > 1 else None


class FileActions(QtCore.QObject):
    """Opening files for one main window."""

    def __init__(self, window: Any, pool: cf.Executor):
        super().__init__(window)
        self.window = window
        self.pool = pool
        self.load = LatestRequest(self)

    def open_files(self, paths: Sequence[str | Path], overlays: Sequence[str | Path] = (),
                   threshold: float | None = None, wait: bool = True) -> bool:
        """Open images: the first is the base image, the others and ``overlays`` are layers
        on top. ``wait=False`` reads in the background and shows them when done."""
        paths = [Path(p) for p in paths]
        overlays = [Path(p) for p in overlays]
        if not paths:
            return False
        win = self.window
        if not overlays:
            folder = several_dicom_series(paths)
            if folder is not None:        # pick a series first
                win.open_dicom_browser(folder)
                return True
        all_paths = paths + overlays
        flags = [False] * len(paths) + [looks_like_label_map(p) for p in overlays]
        st = win.state
        if not wait:
            win.statusBar().showMessage(f"loading {paths[0].name} ...")
        return bool(self.load.submit(
            self.pool, build_trial, all_paths, flags, len(paths), st.convention, st.layout,
            threshold, then=lambda f: self._finish(f, paths, overlays), wait=wait))

    def open_series(self, series: Any, use_age: bool = True, wait: bool = False) -> bool:
        """Open one DICOM series (:class:`~bodyage_core.viewer.dicom_series.DicomSeries`):
        its first file selects it in its folder. ``use_age``: keep the header's PatientAge as
        the image's chronological age (``metadata['age']``), else drop it."""
        path = series.first_file()
        st = self.window.state
        name = series.description or series.label

        def build() -> ViewerState:
            vol = load_for_viewer(path)
            if not use_age:
                vol.metadata.pop("age", None)
            trial = ViewerState(st.convention, st.layout)
            trial.add_layer(vol, name=name, path=path, kind="image")
            return trial

        if not wait:
            self.window.statusBar().showMessage(f"loading {name} ...")
        return bool(self.load.submit(self.pool, build,
                                     then=lambda f: self._finish(f, [path], []), wait=wait))

    def _finish(self, fut, paths: list[Path], overlays: list[Path]) -> bool:
        win = self.window

        def do():
            trial = fut.result()  # raised (a file, a grid) before touching the state
            trial.set_convention(win.state.convention)
            trial.set_layout(win.state.layout)
            win.replace_layers(trial)
            win.navigator.leave()
            win.space_switch.reset(None)
            for p in paths + overlays:
                win.recent.add(FILES, str(p))
            win.setWindowTitle(f"{strings.APP_NAME} — {paths[0].name}")
            win.statusBar().showMessage(f"opened {paths[0]}", 5000)
            win.display_changed.emit()
            return True

        return bool(win.guard(do))

    def add_overlay(self, path: str | Path, threshold: float | None = None,
                    colormap: str | None = None) -> bool:
        """Add a map file on top (refused with a dialog if it does not overlap the image)."""
        path = Path(path)
        win = self.window

        def do():
            if win.state.base_layer is None:
                raise BodyageError("open an image before adding an overlay", path=path)
            add_map(win.state, read_map(path, load_for_viewer), path, threshold, colormap)
            win.recent.add(FILES, str(path))
            return True

        return bool(win.guard(do))

    # -- dialogs (interactive only) -------------------------------------------------------------
    def ask_open_files(self) -> None:
        paths, _ = QtWidgets.QFileDialog.getOpenFileNames(self.window, "Open images", "",
                                                          strings.OPEN_FILTER)
        if paths:
            self.open_files(paths, wait=False)

    def ask_open_dicom(self) -> None:
        path = QtWidgets.QFileDialog.getExistingDirectory(self.window, "Open a DICOM folder")
        if path:
            self.window.open_dicom_browser(path)

    def ask_open_workspace(self) -> None:
        path = QtWidgets.QFileDialog.getExistingDirectory(self.window, "Open a workspace")
        if path:
            self.window.open_workspace(path)

    def ask_add_overlay(self) -> None:
        path, _ = QtWidgets.QFileDialog.getOpenFileName(self.window, "Add an overlay", "",
                                                        strings.OPEN_FILTER)
        if path:
            self.add_overlay(path)
