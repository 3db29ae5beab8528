"""View > Side by side (placeholder until built)."""

from __future__ import annotations

from typing import Any


def open_side_by_side(window: Any, subject_id: str | None = None):
    from bodyage_core.errors import BodyageError

    window.report_error(BodyageError("side by side is not available yet"))
    return None
