"""Two viewers side by side with one cursor (Qt-free): how a point of the left viewer maps to
the right one and back.

``world``: the same millimetres (two scans of one subject, or images already in one space).
``atlas``: through the registrations: a subject point goes to its group's atlas space with its
own registration (inverse), and from there into the other subject's space (forward), or stays
there when the other side shows the atlas template itself. Each side is a
:class:`~bodyage_core.viewer.atlas_space.PointMapper` (None: that side is the atlas).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

SYNC_MODES = ("world", "atlas")


@dataclass
class CursorLink:
    """Maps cursor points between side ``a`` (the main viewer) and side ``b``."""

    mode: str = "world"
    a: Any = None          # PointMapper of side a's subject (atlas mode), None: the atlas
    b: Any = None          # PointMapper of side b's subject (atlas mode), None: the atlas

    def a_to_b(self, ras) -> np.ndarray:
        p = np.asarray(ras, float)
        if self.mode == "world":
            return p.copy()
        atlas = p if self.a is None else self.a.to_atlas(p)
        return atlas if self.b is None else self.b.to_subject(atlas)

    def b_to_a(self, ras) -> np.ndarray:
        p = np.asarray(ras, float)
        if self.mode == "world":
            return p.copy()
        atlas = p if self.b is None else self.b.to_atlas(p)
        return atlas if self.a is None else self.a.to_subject(atlas)
