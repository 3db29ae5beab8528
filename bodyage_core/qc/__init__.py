"""Image quality checks: what a loaded image is flagged with, and what a model refuses.

Flags are ``{"flag": "<short_name>", "message": "<one line>"}`` dicts kept in
``volume.provenance["qc"]`` (a list); see :mod:`bodyage_core.qc.image_checks`.
"""

from bodyage_core.qc.image_checks import (
    MAX_VOXELS,
    MIN_AXIS_VOXELS,
    add_flag,
    check_affine,
    check_allocation,
    check_model_input,
    qc_flag,
    scan_loaded,
)

__all__ = ["MAX_VOXELS", "MIN_AXIS_VOXELS", "add_flag", "check_affine", "check_allocation",
           "check_model_input", "qc_flag", "scan_loaded"]
