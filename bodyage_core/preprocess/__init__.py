"""Preprocessing: model grid, body crop/pad, intensity normalisation, 2.5D projections.

Arrays are numpy ``(Z, Y, X)`` (``(C, Z, Y, X)`` for Volumes and model inputs); spacings
``(x, y, z)`` mm; affines voxel ``(x, y, z)`` -> RAS mm.
"""

from bodyage_core.preprocess.grid import (
    body_bbox,
    body_mask,
    crop_or_pad_to_body,
    otsu_threshold,
    resample_to_grid,
)
from bodyage_core.preprocess.intensity import apply_normalisation, normalise_intensity
from bodyage_core.preprocess.model_input import ModelGrid, prepare_for_model
from bodyage_core.preprocess.projections import projections_25d, projections_from_volume

__all__ = [
    "resample_to_grid", "crop_or_pad_to_body", "body_mask", "body_bbox", "otsu_threshold",
    "normalise_intensity", "apply_normalisation", "projections_25d", "projections_from_volume",
    "ModelGrid", "prepare_for_model",
]
