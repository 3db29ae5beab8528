"""Label tables: what the ids of a label map mean (Qt-free, neither phantom- nor GUI-specific).

Names come only from the map itself or a table beside it (:func:`find_label_table`): a NIfTI
extension, a JSON sidecar, an ITK-SNAP label description file, a FreeSurfer-style colour LUT,
TotalSegmentator's class list when a sidecar names it, or the synthetic cohort's own table for
its label files; otherwise a map has numbers only. ``SYNTHETIC_LABELS`` is the organ table of
bodyage's synthetic cohort (:mod:`bodyage_core.labels.synthetic`).
"""

from bodyage_core.labels.synthetic import LABEL_IDS as SYNTHETIC_LABEL_IDS
from bodyage_core.labels.synthetic import LABELS as SYNTHETIC_LABELS
from bodyage_core.labels.tables import (
    LabelTable,
    find_label_table,
    named_table,
    read_table_file,
    synthetic_table,
    write_sidecar,
)

__all__ = ["SYNTHETIC_LABELS", "SYNTHETIC_LABEL_IDS", "LabelTable", "find_label_table",
           "looks_like_label_map", "named_table", "read_table_file", "synthetic_table",
           "write_sidecar"]

_LABEL_WORDS = ("label", "seg", "mask", "aseg", "parc", "msk")


def looks_like_label_map(path) -> bool:
    """Whether a file is to be read as a label map (integer ids): it has a label table, or a
    word of its name says so (``labels``, ``seg``, ``mask``, ``aseg``, ``parc``, ``msk``; in a
    BIDS-style name a ``key-value`` entity counts only as ``seg-...``, so ``sub-1_label-22_ct``
    is an image and ``sub-1_seg-vert_msk`` a mask)."""
    import re

    from bodyage_core.labels.tables import stem

    for word in re.split(r"[_.]", stem(path).lower()):
        key, sep, _ = word.partition("-")
        if sep:
            if key == "seg":
                return True
            continue
        if any(k in word for k in _LABEL_WORDS):
            return True
    return find_label_table(path) is not None
