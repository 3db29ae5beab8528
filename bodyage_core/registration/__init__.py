"""Subject -> reference registration (SimpleITK), transforms, map warping and quality.

Public API::

    volume_to_sitk(volume, channel=0) -> sitk.Image          # RAS Volume -> LPS ITK image
    sitk_to_volume(image, channels=None) -> Volume
    register(moving, fixed, config=None, moving_labels=None, fixed_labels=None,
             fixed_mask=None, reporter=None) -> RegistrationResult
    RegistrationConfig, QualityThresholds, RegistrationResult
    SubjectTransform (.save(folder), .load(folder), .to_reference(), .to_subject())
    warp_map(map_volume, transform, reference_grid=None, interpolation="linear",
             inverse=False) -> Volume
    body_mask, dice, label_dice
"""

from bodyage_core.registration.convert import (
    read_nifti,
    sitk_affine,
    sitk_to_volume,
    volume_to_sitk,
    write_nifti,
)
from bodyage_core.registration.quality import body_mask, combined_intensity, dice, label_dice
from bodyage_core.registration.register import (
    QualityThresholds,
    RegistrationConfig,
    RegistrationResult,
    body_volume_ml,
    register,
)
from bodyage_core.registration.transform import SubjectTransform, identity_transform, warp_map

__all__ = [
    "QualityThresholds", "RegistrationConfig", "RegistrationResult", "SubjectTransform",
    "body_mask", "body_volume_ml", "combined_intensity", "dice", "identity_transform",
    "label_dice", "read_nifti", "register", "sitk_affine", "sitk_to_volume", "volume_to_sitk",
    "warp_map", "write_nifti",
]
