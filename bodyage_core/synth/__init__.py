"""The synthetic whole-body (neck-to-knee) Dixon cohort: the embedded default data set.

Public API::

    from bodyage_core.synth import (LABELS, AgeEffects, EFFECTS, SynthGrid, sample_subject,
                                    generate_subject, generate_cohort)

    p = sample_subject(seed=0, index=3)            # deterministic subject parameters
    s = generate_subject(p, "default")             # water, fat, labels, age_mask Volumes
    ids = generate_cohort("ws", n=200, seed=0)     # files + participants.csv + cohort index

See ``docs/SYNTH.md`` for the anatomy, the age effects, the mask convention and the noise floor.
"""

from bodyage_core.synth.anatomy import LABEL_IDS, LABELS, REGIONS, TISSUE_SIGNAL
from bodyage_core.synth.cohort import IMAGE_KINDS, generate_cohort, read_truth, save_nifti
from bodyage_core.synth.effects import EFFECT_IDS, EFFECT_NAMES, EFFECTS, AgeEffects
from bodyage_core.synth.params import SubjectParams, sample_subject
from bodyage_core.synth.phantom import GRIDS, SyntheticSubject, SynthGrid, generate_subject

__all__ = [
    "EFFECTS", "EFFECT_IDS", "EFFECT_NAMES", "GRIDS", "IMAGE_KINDS", "LABELS", "LABEL_IDS",
    "REGIONS", "TISSUE_SIGNAL", "AgeEffects", "SubjectParams", "SynthGrid", "SyntheticSubject",
    "generate_cohort", "generate_subject", "read_truth", "sample_subject", "save_nifti",
]
