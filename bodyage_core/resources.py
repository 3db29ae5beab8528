"""Where bodyage's resources are: the installed package ``bodyage_resources`` (the top-level
``resources/`` folder of the checkout; ``setup.py`` maps it).

Models are looked up in these folders, first match wins: each folder of ``BODYAGE_MODEL_PATH``
(``os.pathsep``-separated), the user's model folder (``$XDG_DATA_HOME/bodyage/models``, where
``bodyage export`` can put models to share), then the models shipped in ``resources/models``.
"""

from __future__ import annotations

import os
from importlib import resources as _res
from pathlib import Path

PACKAGE = "bodyage_resources"


def root() -> Path:
    """The resources folder (a real directory: wheels and editable installs unpack it)."""
    return Path(str(_res.files(PACKAGE)))


def path(*parts: str) -> Path:
    """A file or folder inside the resources, e.g. ``path("icons", "bodyage.png")``."""
    return root().joinpath(*parts)


def shipped_models_dir() -> Path:
    return path("models")


def user_models_dir() -> Path:
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "bodyage" / "models"


def model_dirs() -> list[Path]:
    """Folders searched for models by name, in order."""
    extra = [Path(p).expanduser() for p in os.environ.get("BODYAGE_MODEL_PATH", "").split(
        os.pathsep) if p.strip()]
    return [*extra, user_models_dir(), shipped_models_dir()]


def icon_path() -> Path:
    return path("icons", "bodyage.png")


def load_json(*parts: str):
    """A JSON resource, e.g. ``load_json("presets", "windows.json")``."""
    import json

    return json.loads(path(*parts).read_text())


def desktop_entry_path() -> Path:
    return path("bodyage.desktop")
