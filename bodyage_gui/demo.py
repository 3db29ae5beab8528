"""A synthetic neck-to-knee subject (water/fat Dixon, organ labels, an importance map) for
screenshots, benchmarks and tests when no synthetic cohort is at hand: the cohort's own phantom
(:func:`bodyage_core.synth.generate_subject`) on the grid asked for, with a smooth importance
map peaking in the liver and along the spine. Qt-free."""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from bodyage_core.labels import SYNTHETIC_LABELS
from bodyage_core.volume import Volume

#: the names of the demo subject's label ids (the synthetic cohort's organ table)
DEMO_LABELS = {k: v for k, v in SYNTHETIC_LABELS.items() if k}


def demo_subject(spacing_xyz: tuple[float, float, float] | str = (4.464, 4.464, 6.0),
                 seed: int = 0) -> tuple[Volume, Volume, Volume]:
    """``(dixon, labels, importance)`` on one RAS grid over the UK Biobank field of view at
    ``spacing_xyz`` mm (or ``'default'`` / ``'full'``): a two-channel (water, fat) subject of
    the synthetic cohort (seed ``seed``, its first subject), its organ labels, and an
    importance map in [0, 1]."""
    from bodyage_core.synth import generate_subject, sample_subject

    s = generate_subject(sample_subject(seed, 0, age=70.0), spacing_xyz)
    dixon = Volume(np.concatenate([s.water.data, s.fat.data]), s.water.affine,
                   ("water", "fat"), {"path": "demo"})
    lab = s.labels.data[0]
    ids = {v: k for k, v in SYNTHETIC_LABELS.items()}
    spacing = np.asarray(s.water.spacing)[::-1]                       # zyx, mm
    seeds = np.where(lab == ids["liver"], 1.0, 0.0) + 0.6 * (lab == ids["vertebrae"])
    imp = ndimage.gaussian_filter(seeds.astype(np.float32), 20.0 / spacing)
    imp = np.where(lab > 0, imp / max(float(imp.max()), 1e-12), 0.0).astype(np.float32)
    return dixon, s.labels, Volume(imp[None], s.water.affine, ("gradcam",), {"path": "demo"})
