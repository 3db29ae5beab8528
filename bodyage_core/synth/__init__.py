"""The synthetic whole-body (neck-to-knee) Dixon cohort: the embedded default data set.

Public API::

    from bodyage_core.synth import (LABELS, AgeEffects, EFFECTS, SynthGrid, sample_subject,
                                    generate_subject, generate_cohort)

    p = sample_subject(seed=0, index=3)            # deterministic subject parameters
    s = generate_subject(p, "default")             # water, fat, labels, age_mask Volumes
    ids = generate_cohort("ws", n=200, seed=0)     # files + participants.csv + cohort index

Acquisition degradations (``sample_subject(..., acquisition="noise=0.3@2,swap=0.05")``,
:mod:`~bodyage_core.synth.acquisition`) and organ-specific accelerated ageing
(``accelerate="heart=+10@0.15"``, :mod:`~bodyage_core.synth.acceleration`) are off unless given.

See ``docs/SYNTH.md`` for the anatomy, the age effects, the mask convention and the noise floor.
"""

from bodyage_core.synth.acceleration import Acceleration
from bodyage_core.synth.acquisition import ACQUISITION_EFFECTS, Acquisition
from bodyage_core.synth.anatomy import LABEL_IDS, LABELS, REGIONS, TISSUE_SIGNAL
from bodyage_core.synth.cohort import IMAGE_KINDS, generate_cohort, read_truth, save_nifti
from bodyage_core.synth.effects import EFFECT_IDS, EFFECT_NAMES, EFFECTS, AgeEffects
from bodyage_core.synth.params import SubjectParams, sample_subject
from bodyage_core.synth.phantom import GRIDS, SyntheticSubject, SynthGrid, generate_subject

__all__ = [
    "ACQUISITION_EFFECTS", "Acceleration", "Acquisition", "EFFECTS", "EFFECT_IDS", "EFFECT_NAMES", "GRIDS", "IMAGE_KINDS", "LABELS", "LABEL_IDS",
    "REGIONS", "TISSUE_SIGNAL", "AgeEffects", "SubjectParams", "SynthGrid", "SyntheticSubject",
    "generate_cohort", "generate_subject", "read_truth", "sample_subject", "save_nifti",
]
