"""The phantom's age-effect mask: uint8, 0 where no age effect acts, otherwise the id of the
effect acting there (``effects.EFFECTS``) — the effect's organs at their *unaged* extent for
effects that shrink or move an organ (the spine's column before kyphosis and disc loss, the
aorta before widening, the back and thigh muscles before they thin)."""

from __future__ import annotations

import numpy as np

from bodyage_core.synth.anatomy import LABEL_IDS
from bodyage_core.synth.canvas import Region
from bodyage_core.synth.effects import EFFECTS, AgeEffects
from bodyage_core.synth.grid import SynthGrid

L = LABEL_IDS


def age_effect_mask(g: SynthGrid, strengths: AgeEffects, labels: np.ndarray,
                    spine_base_regions: list[Region | None], aorta_base_region: Region | None,
                    bm_regions: list[Region | None],
                    thigh_base_regions: list[Region | None]) -> np.ndarray:
    """The mask for the painted ``labels`` and the unaged regions the painter recorded."""
    age_mask = np.zeros(g.shape, np.uint8)
    for name, spec in EFFECTS.items():
        if strengths.strength(name) <= 0:
            continue
        ids = [L[o] for o in spec.organs]
        age_mask[np.isin(labels, ids)] = spec.id
    # where the organs were before ageing moved or shrank them: the spine's column (kyphosis
    # and disc-height loss move it), the aorta before widening, the back and thigh muscles
    # before they thinned (fat fills the space); never over another effect's voxels
    unaged = {"spine": spine_base_regions, "aorta": [aorta_base_region],
              "back_muscle": bm_regions, "thigh_muscle": thigh_base_regions}
    for name, regions in unaged.items():
        if strengths.strength(name) <= 0:
            continue
        for reg in regions:
            if reg is not None:
                sl, m = reg
                am = age_mask[sl]
                am[m & (am == 0)] = EFFECTS[name].id
    return age_mask
