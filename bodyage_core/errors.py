"""User-facing errors.

A :class:`BodyageError` carries a one-line message that names the file (if any), what is wrong
and what to do. The CLI prints it without a traceback; the GUI shows it in a dialog. Anything that
is *not* a BodyageError is a bug and keeps its traceback.
"""

from __future__ import annotations

from pathlib import Path


class BodyageError(Exception):
    """An error the user caused and can fix; ``str(err)`` is the whole message."""

    def __init__(self, message: str, path: str | Path | None = None, hint: str | None = None):
        self.path = None if path is None else Path(path)
        self.hint = hint
        parts = []
        if path is not None:
            parts.append(f"{path}:")
        parts.append(message)
        text = " ".join(parts)
        if hint:
            text = f"{text} — {hint}"
        super().__init__(text)


class LoadError(BodyageError):
    """A file or folder could not be read as an image."""


class CohortError(BodyageError):
    """The cohort index, its CSV or the workspace is not usable as asked."""


class ConfigError(BodyageError):
    """A configuration value or command-line option is not valid."""


class Cancelled(Exception):
    """Raised inside long work when the reporter asked to cancel. Not an error."""
