"""Label tables: what the ids of a label map mean (Qt-free, neither phantom- nor GUI-specific).

``SYNTHETIC_LABELS`` is the organ table of bodyage's synthetic cohort
(:mod:`bodyage_core.labels.synthetic`).
"""

from bodyage_core.labels.synthetic import LABEL_IDS as SYNTHETIC_LABEL_IDS
from bodyage_core.labels.synthetic import LABELS as SYNTHETIC_LABELS

__all__ = ["SYNTHETIC_LABELS", "SYNTHETIC_LABEL_IDS"]
