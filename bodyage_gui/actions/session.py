"""File > Save session / Restore session: the viewer state as a session file (paths,
settings, cursor, layout, display space; never pixels), read back through its schema
(:mod:`bodyage_core.viewer.session`)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from PySide6 import QtWidgets

from bodyage_core.atomic import write_json
from bodyage_core.errors import BodyageError, LoadError
from bodyage_core.labels import looks_like_label_map
from bodyage_core.viewer import atlas_space
from bodyage_core.volume import Volume
from bodyage_gui import strings
from bodyage_gui.loading import load_for_viewer
from bodyage_gui.subjects import water_fat


def session_loader(path: str) -> Volume:
    """A session's file. A workspace subject's water image comes back with its fat image
    (``water.nii.gz`` + ``fat.nii.gz`` beside it, as the viewer shows a subject), so a
    session saved on a subject restores its ``water``/``fat`` channel."""
    vol = load_for_viewer(path, labels=looks_like_label_map(path))
    p = Path(path)
    if p.name.startswith("water.") and vol.data.shape[0] == 1:
        fat_path = p.with_name("fat." + p.name[len("water."):])
        if fat_path.exists():
            fat = load_for_viewer(fat_path)
            if fat.same_grid(vol) and fat.data.shape[0] == 1:
                vol = water_fat(vol, fat)
    return vol


def save_session(window: Any, path: str | Path) -> bool:
    path = Path(path)

    def do():
        d = window.state.to_dict(relative_to=path.parent)
        ws = window.workspace
        write_json(path, d | {"workspace": str(ws.root) if ws else None,
                              "subject": window.current_subject})
        unsaved = [lay.name for lay in window.state.layers if not lay.path]
        note = (f" — not in it (computed in memory, no file): {', '.join(unsaved)}"
                if unsaved else "")
        window.statusBar().showMessage(f"session saved: {path}{note}", 10000)
        return True

    return bool(window.guard(do))


def restore_session(window: Any, path: str | Path) -> bool:
    path = Path(path)

    def do():
        try:
            d = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise LoadError(f"not a readable session file ({exc})", path=path,
                            hint="choose a .json file saved with File > Save session") from exc
        try:
            problems = window.state.restore(d, loader=session_loader, relative_to=path.parent)
        except (KeyError, ValueError, TypeError) as exc:  # files changed since the save
            raise LoadError(f"the session does not match its files any more ({exc})",
                            path=path, hint="open the images again and save a new "
                            "session") from exc
        except BodyageError as exc:
            if exc.path is not None:
                raise
            raise LoadError(str(exc), path=path) from exc
        # the restored files are in their own space; back to atlas space when the session
        # was saved there for the subject open now
        saved_in_atlas = window.state.space.wanted
        subject = window.current_subject if d.get("subject") == window.current_subject \
            else None
        window.space_switch.reset(subject)
        window.state.space.wanted = False
        window.scheduler.flush()
        window.statusBar().showMessage(f"session restored: {path}", 5000)
        window.display_changed.emit()
        if problems:
            window.report_warning(f"session {path.name}: restored; skipped what did not "
                                  "fit:\n" + "\n".join(problems))
        if saved_in_atlas and window.space_switch.link is not None:
            window.set_display_space(atlas_space.ATLAS, wait=True)
        return True

    return bool(window.guard(do))


def ask_save_session(window: Any) -> None:
    path, _ = QtWidgets.QFileDialog.getSaveFileName(window, "Save session", "session.json",
                                                    strings.SESSION_FILTER)
    if path:
        save_session(window, path)


def ask_restore_session(window: Any) -> None:
    path, _ = QtWidgets.QFileDialog.getOpenFileName(window, "Restore session", "",
                                                    strings.SESSION_FILTER)
    if path:
        restore_session(window, path)
