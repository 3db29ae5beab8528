"""The one rule for names that become file or folder names: run names, subject ids, map kinds,
atlas group names (and, through another module, model names).

A name is 1 to 128 characters from ``A-Z a-z 0-9 . _ -``, starts with a letter or a digit (so no
leading dot: no hidden files, no ``.`` / ``..``) and is never ``.`` or ``..``. Such a name is its
own folder / file name component on every file system bodyage runs on: no separator, nothing to
sanitise, so two different names never share a folder (except names that differ only in case
on a case-insensitive file system: :func:`fold_key` is what collision checks compare).

Names are checked once, where they enter (CLI arguments, the training wizard, CSV import, the
core API entry points that build paths such as :meth:`Workspace.subject_dir
<bodyage_core.cohort.workspace.Workspace.subject_dir>`), with :func:`check_name`.
"""

from __future__ import annotations

import re

from bodyage_core.errors import ConfigError

MAX_LENGTH = 128
NAME_RULE = ("letters, digits and . _ - only, starting with a letter or digit, at most "
             f"{MAX_LENGTH} characters")
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


def is_valid_name(value: object) -> bool:
    """True when ``value`` is a string that :func:`check_name` accepts."""
    return (isinstance(value, str) and 0 < len(value) <= MAX_LENGTH
            and value not in (".", "..") and _NAME.fullmatch(value) is not None)


def check_name(value: str, what: str = "name") -> str:
    """Return ``value`` when it is a valid name, else raise :class:`ConfigError` naming it.

    ``what`` says what the value is (``"run name"``, ``"subject id"``, ``"--run"``...) for the
    message: ``run name '../../x' is not allowed: ...``.
    """
    if is_valid_name(value):
        return value
    if not isinstance(value, str):
        raise ConfigError(f"{what} must be text, got {type(value).__name__}",
                          hint=f"use {NAME_RULE}")
    shown = value if len(value) <= 60 else value[:57] + "..."
    if not value:
        why = "it is empty"
    elif len(value) > MAX_LENGTH:
        why = f"it is {len(value)} characters long"
    elif value[0] in "._-":
        why = f"it starts with {value[0]!r}"
    else:
        bad = sorted({c for c in value if not re.fullmatch(r"[A-Za-z0-9._-]", c)})
        why = "it contains " + ", ".join(repr(c) for c in bad[:5])
    raise ConfigError(f"{what} {shown!r} is not allowed ({why})", hint=f"use {NAME_RULE}")


def fold_key(name: str) -> str:
    """The key under which two names share a folder on a case-insensitive file system."""
    return name.casefold()


__all__ = ["check_name", "is_valid_name", "fold_key", "NAME_RULE", "MAX_LENGTH"]
