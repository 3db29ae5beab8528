"""The run box of the prediction panel: what predicts.

One combo lists, in this order:

* **Automatic** — the model that fits the scan (:func:`bodyage_core.inference.files.
  choose_model`: the first model found by name whose channels and envelope accept the scan;
  none fitting is a one-line reason per model);
* the open workspace's complete runs (item data: the run name);
* the models found by name (:func:`bodyage_core.inference.bundle.list_models`: shipped in
  ``resources/models/``, ``BODYAGE_MODEL_PATH``, the user's model folder), e.g.
  ``wholebody-synthetic 1.0.0 (shipped)``;
* run or model folders chosen with Folder... .

The default is what made the workspace's latest predictions, a run or a model found by name,
else its newest run, else Automatic (:func:`default_run`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PySide6 import QtCore, QtWidgets

from bodyage_gui.workers import analysis_strings as text

AUTO = "auto:"
MODEL = "model:"
FOLDER = "folder:"


@dataclass(frozen=True)
class ModelChoice:
    """What the run box selects.

    ``kind``: ``'auto'``, ``'run'`` (a workspace run), ``'model'`` (a model bundle found by
    name) or ``'folder'``; ``path``: the folder (None for ``auto``, and for a run without a
    workspace); ``name``: run name, model name or folder name; ``run_id``: the name its
    predictions are stored under in a workspace (None for ``auto`` and folders)."""

    kind: str
    path: Path | None
    name: str
    run_id: str | None


def complete_runs(ws) -> list[str]:
    """Names of the workspace's complete runs that exist on disk, oldest first."""
    if ws is None:
        return []
    out = []
    for r in ws.db.runs():
        if r.get("status") == "complete" and (ws.model_dir(r["run_id"]) / "config.json").exists():
            out.append(r["run_id"])
    return out


def default_run(ws, runs: list[str], models: list[dict[str, Any]] | None = None) -> str | None:
    """The item the viewer shows by default (its data): whatever made the latest predictions
    -- a workspace run, or a model found by name (a cohort predicted with ``bodyage predict
    WORKSPACE --model NAME`` stores them under the model's name, with no run folder) -- else
    the newest complete run. The cohort table shows the latest predictions, so the age panel
    then speaks of the same model."""
    latest = ws.db.latest_run() if ws is not None else None
    if latest is not None and latest in runs:
        return latest
    if latest is not None:
        for m in found_models() if models is None else models:
            if (m.get("card") or {}).get("name") == latest:
                return MODEL + str(m["dir"])
    return runs[-1] if runs else None


def found_models() -> list[dict[str, Any]]:
    """The models found by name that can be offered (readable card, not shadowed)."""
    from bodyage_core.inference.bundle import list_models

    try:
        models = list_models()
    except OSError:
        return []
    return [m for m in models if m.get("card") is not None and not m.get("shadowed")]


def model_label(m: dict[str, Any]) -> str:
    where = "shipped" if m.get("where") == "shipped" else "model"
    return f"{m['name']} {m['version']} ({where})"


def model_tooltip(card: dict[str, Any], folder: Path) -> str:
    env = card.get("envelope", {}) or {}
    lines = [f"{card.get('name')} {card.get('version')}: {card.get('description', '')}",
             f"contrast: {card.get('contrast', '?')}",
             f"body region: {env.get('body_region', '?')}",
             f"ages: {env.get('age_range', '?')}", f"folder: {folder}"]
    return "\n".join(lines)


class QtModelChoice(QtWidgets.QWidget):
    """Combo + Folder... button (see the module docstring). ``changed`` is emitted when the
    selection changes (by the user or by :meth:`refresh`)."""

    changed = QtCore.Signal()
    #: a folder chosen with Folder... (the panel adds it with :meth:`add_folder`)
    folder_chosen = QtCore.Signal(str)

    def __init__(self, parent: QtWidgets.QWidget | None = None):
        super().__init__(parent)
        self.combo = QtWidgets.QComboBox()
        self.combo.setToolTip(text.RUN_BOX_TIP)
        self.combo.setSizeAdjustPolicy(
            QtWidgets.QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon)
        self.combo.setMinimumContentsLength(12)
        self.combo.currentIndexChanged.connect(lambda _i: self.changed.emit())
        self.folder_button = QtWidgets.QPushButton("Folder...")
        self.folder_button.setToolTip("predict with a run folder (models/<run>/) or a model "
                                      "folder (model.json)")
        self.folder_button.clicked.connect(self._ask_folder)
        self.folders: list[Path] = []
        self._cards: dict[str, dict[str, Any]] = {}
        row = QtWidgets.QHBoxLayout(self)
        row.setContentsMargins(0, 0, 0, 0)
        row.addWidget(QtWidgets.QLabel("Run"))
        row.addWidget(self.combo, 1)
        row.addWidget(self.folder_button)

    def refresh(self, ws, select: str | None = None) -> None:
        """Re-read the workspace's runs and the models found by name; select ``select`` (item
        data: a run name, ``model:<dir>``, ``folder:<dir>`` or ``auto:``), else keep the
        current item, else the default."""
        current = self.combo.currentData()
        runs = complete_runs(ws)
        models = found_models()
        self._cards = {MODEL + str(m["dir"]): m["card"] for m in models}
        self.combo.blockSignals(True)
        self.combo.clear()
        self.combo.addItem(text.AUTO_MODEL, AUTO)
        self.combo.setItemData(0, text.AUTO_MODEL_TIP, QtCore.Qt.ItemDataRole.ToolTipRole)
        for r in runs:
            self.combo.addItem(r, r)
        for m in models:
            self.combo.addItem(model_label(m), MODEL + str(m["dir"]))
            self.combo.setItemData(self.combo.count() - 1, model_tooltip(m["card"], m["dir"]),
                                   QtCore.Qt.ItemDataRole.ToolTipRole)
        for p in self.folders:
            self.combo.addItem(f"{p.name} (folder)", FOLDER + str(p))
        want = select if select is not None else (
            current if current is not None and self.combo.findData(current) >= 0
            else (default_run(ws, runs, models) or AUTO))
        idx = self.combo.findData(want)
        self.combo.setCurrentIndex(idx if idx >= 0 else 0)
        self.combo.blockSignals(False)
        self.changed.emit()

    def add_folder(self, path: str | Path, ws=None) -> None:
        p = Path(path)
        if p not in self.folders:
            self.folders.append(p)
        self.refresh(ws, select=FOLDER + str(p))

    def _ask_folder(self) -> None:
        path = QtWidgets.QFileDialog.getExistingDirectory(self, text.RUN_FOLDER_FILTER)
        if path:
            self.folder_chosen.emit(path)

    def names(self, kind: str | None = None) -> list[str]:
        """Texts of the items (of one ``kind``: ``'auto'``, ``'run'``, ``'model'``,
        ``'folder'``)."""
        out = []
        for i in range(self.combo.count()):
            if kind is None or _kind(self.combo.itemData(i)) == kind:
                out.append(self.combo.itemText(i))
        return out

    def select(self, data: str) -> bool:
        idx = self.combo.findData(data)
        if idx >= 0:
            self.combo.setCurrentIndex(idx)
        return idx >= 0

    def select_model(self, name: str) -> bool:
        """Select the model bundle called ``name``."""
        for key, card in self._cards.items():
            if card.get("name") == name:
                return self.select(key)
        return False

    def current(self, ws=None) -> ModelChoice | None:
        data = self.combo.currentData()
        if data is None:
            return None
        data = str(data)
        kind = _kind(data)
        if kind == "auto":
            return ModelChoice("auto", None, text.AUTO_MODEL, None)
        if kind == "model":
            p = Path(data[len(MODEL):])
            card = self._cards.get(data, {})
            return ModelChoice("model", p, str(card.get("name", p.name)),
                               str(card.get("name", p.name)))
        if kind == "folder":
            p = Path(data[len(FOLDER):])
            return ModelChoice("folder", p, p.name, None)
        return ModelChoice("run", ws.model_dir(data) if ws is not None else None, data, data)


def _kind(data: Any) -> str:
    d = str(data)
    if d.startswith(AUTO):
        return "auto"
    if d.startswith(MODEL):
        return "model"
    if d.startswith(FOLDER):
        return "folder"
    return "run"
