"""Atomic file writes: write to a temporary file beside the target, then rename.

A crash or a full disk in the middle of a write never leaves a half-written file at the target
path, and an existing file is replaced only once the new one is complete.

``within=FOLDER`` (workspace writers pass the workspace root) refuses a target that lies outside
that folder once ``..`` components are resolved, before any folder is created: a name that
slipped past :func:`bodyage_core.names.check_name` cannot write elsewhere. The test is lexical
(``os.path.abspath``): symbolic links a user put inside the folder (a cache on another disk) are
followed as the user meant.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from bodyage_core.errors import BodyageError


def check_within(target: str | Path, within: str | Path) -> Path:
    """``target`` as an absolute path when it lies inside the folder ``within``; else a
    :class:`BodyageError` naming both (nothing is created)."""
    t = Path(os.path.abspath(os.fspath(target)))
    w = Path(os.path.abspath(os.fspath(within)))
    if t == w or w not in t.parents:
        raise BodyageError(f"refusing to write outside {w}", t,
                           "a run name, subject id or map kind must not contain '..' or '/'")
    return t


@contextlib.contextmanager
def atomic_path(target: str | Path, suffix: str | None = None,
                within: str | Path | None = None) -> Iterator[Path]:
    """Yield a temporary path beside ``target``; on success rename it onto ``target``.

    ``suffix`` defaults to the target's full suffix (``.nii.gz`` stays ``.nii.gz``), so writers
    that infer the format from the extension keep working. ``within``: refuse (BodyageError) a
    target outside that folder, before creating anything.
    """
    target = Path(target) if within is None else check_within(target, within)
    target.parent.mkdir(parents=True, exist_ok=True)
    if suffix is None:
        suffix = "".join(target.suffixes) or ".tmp"
    fd, tmp = tempfile.mkstemp(prefix=f".{target.stem}.", suffix=suffix, dir=target.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    # mkstemp makes owner-only files; give the result the permissions a plain open() would.
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp_path, 0o666 & ~umask)
    try:
        yield tmp_path
        os.replace(tmp_path, target)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def write_text(target: str | Path, text: str, within: str | Path | None = None) -> None:
    with atomic_path(target, within=within) as tmp:
        tmp.write_text(text)


def write_bytes(target: str | Path, data: bytes, within: str | Path | None = None) -> None:
    with atomic_path(target, within=within) as tmp:
        tmp.write_bytes(data)


def write_json(target: str | Path, obj: Any, within: str | Path | None = None) -> None:
    write_text(target, json.dumps(obj, indent=2, sort_keys=True, default=_json_default) + "\n",
               within=within)


def _json_default(o: Any) -> Any:
    import numpy as np

    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")
