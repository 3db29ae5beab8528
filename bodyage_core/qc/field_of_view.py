"""How much of the body a model input shows along the head-foot axis.

A scan truncated at the head or the feet (a station missing, a short field of view) is harder
to age, and neither the networks' variance nor the feature-space QC score ranks it by how much
is missing. The share of the model grid's head-foot slices that hold body is a covariate the
variance calibration can follow (:func:`bodyage_core.models.ensemble.fit_variance_calibration`);
on a template-aligned or fixed-field-of-view grid it is about the same for every complete scan.
"""

from __future__ import annotations

import numpy as np

from bodyage_core.preprocess.grid import otsu_threshold

#: a slice holds body where the body covers at least this share of the fullest slice's area
SLICE_SHARE = 0.05
#: about this many voxels are looked at (every slice, the in-plane axes thinned)
MAX_VOXELS = 1_000_000


def body_extent(x: np.ndarray) -> float:
    """Share of the head-foot slices (axis 1 of a model input ``(C, Z, Y, X)`` or ``(C, H, W)``)
    that hold body: Otsu's threshold on the sum of the channels (the input normalisation does
    not move it), then each slice's body area against the fullest slice's. 0 for an input
    without body."""
    x = np.asarray(x)
    if x.ndim >= 3:
        # every head-foot slice, the in-plane axes thinned to ~1M voxels: the share of slices
        # does not need every voxel, and a cohort run computes it in the thread that feeds the
        # GPU (0.27 s per subject at the UK Biobank grid in full)
        step = max(1, int(np.sqrt(x[0].size / MAX_VOXELS)))
        x = x[(slice(None), slice(None)) + (slice(None, None, step),) * (x.ndim - 2)]
    a = x.astype(np.float32).sum(axis=0)
    if a.ndim < 2 or not np.isfinite(a).any():
        return 0.0
    body = a > otsu_threshold(a)
    area = body.reshape(body.shape[0], -1).mean(axis=1)
    top = float(area.max())
    if top <= 0:
        return 0.0
    return float(np.mean(area >= SLICE_SHARE * top))
