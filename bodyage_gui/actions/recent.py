"""File > Recent files / Recent workspaces: the last opened paths, kept in QSettings."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from PySide6 import QtCore, QtWidgets

MAX_RECENT = 8
FILES = "recent_files"
WORKSPACES = "recent_workspaces"


class RecentFiles(QtCore.QObject):
    """Recent paths per key (``recent_files``, ``recent_workspaces``) and their menus: a menu
    is enabled exactly when it has an entry."""

    def __init__(self, settings: QtCore.QSettings, parent: QtCore.QObject | None = None):
        super().__init__(parent)
        self.settings = settings
        self._menus: dict[str, tuple[QtWidgets.QMenu, Callable[[str], object]]] = {}

    def attach(self, key: str, menu: QtWidgets.QMenu, open_fn: Callable[[str], object]) -> None:
        """Fill ``menu`` with the entries of ``key``; a click calls ``open_fn(path)``."""
        self._menus[key] = (menu, open_fn)
        self.refresh_menus()

    def add(self, key: str, value: str) -> None:
        items = [v for v in self.items(key) if v != value]
        items.insert(0, str(Path(value).resolve()) if Path(value).exists() else value)
        self.settings.setValue(key, json.dumps(items[:MAX_RECENT]))
        self.refresh_menus()

    def items(self, key: str) -> list[str]:
        raw = self.settings.value(key, "[]")
        try:
            items = json.loads(raw) if isinstance(raw, str) else list(raw or [])
        except ValueError:
            items = []
        return [str(i) for i in items]

    def refresh_menus(self) -> None:
        for key, (menu, fn) in self._menus.items():
            menu.clear()
            items = self.items(key)
            for item in items:
                a = menu.addAction(item)
                a.triggered.connect(lambda _=False, p=item, f=fn: f(p))
            menu.setEnabled(bool(items))
