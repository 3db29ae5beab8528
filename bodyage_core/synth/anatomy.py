"""Organ labels and tissue Dixon signals of the synthetic neck-to-knee body.

``LABELS`` maps label id -> organ name (the ids written to ``labels.nii.gz``; the table itself
lives in :mod:`bodyage_core.labels.synthetic`); ``LABEL_IDS`` is the reverse. ``TISSUE_SIGNAL`` gives each organ's (water, fat) signal in relative units (1.0 is
the fat signal of pure adipose tissue) before per-subject modulation (muscle fat infiltration,
marrow fat, disc hydration ...), bias field and noise. The images are written as
``signal * INTENSITY_SCALE`` (scanner-like units, float32).

Dixon contrast as in UK Biobank neck-to-knee scans: adipose tissue is bright in the fat image and
dark in the water image; muscle and parenchymal organs are bright in water and dark in fat;
lungs and airways are dark in both; bone marrow is fatty (bright in fat), intervertebral discs
and cerebrospinal fluid are bright in water.

``REGIONS`` groups labels into the regions a region summary quotes ("spine", "heart", ...).
"""

from __future__ import annotations

from bodyage_core.labels.synthetic import LABEL_IDS, LABELS  # noqa: F401  (re-exported)

#: (water, fat) relative signal per organ; 1.0 = fat signal of pure adipose tissue.
TISSUE_SIGNAL: dict[str, tuple[float, float]] = {
    "background": (0.0, 0.0),
    "skin": (0.50, 0.30),
    "subcutaneous_fat": (0.05, 0.95),
    "visceral_fat": (0.07, 0.90),
    "other_muscle": (0.60, 0.04),
    "soft_tissue": (0.50, 0.10),          # bowel, mediastinum, neck soft tissue
    "lung_left": (0.04, 0.02),
    "lung_right": (0.04, 0.02),
    "airway": (0.02, 0.01),
    "heart": (0.55, 0.03),                # myocardium; the blood pool is brighter (0.72)
    "pericardial_fat": (0.07, 0.90),
    "aorta": (0.70, 0.02),
    "liver": (0.45, 0.03),                # water/fat set from the liver fat fraction
    "kidney_left": (0.68, 0.03),
    "kidney_right": (0.68, 0.03),
    "vertebrae": (0.55, 0.95),            # marrow: water*(1-ff), fat*ff with marrow ff ~ 0.4
    "intervertebral_discs": (0.85, 0.02),  # water scaled by the disc hydration factor
    "spinal_canal": (0.90, 0.02),         # cerebrospinal fluid
    "back_muscles": (0.60, 0.95),         # muscle: water*(1-ff), fat*ff
    "thigh_muscles": (0.60, 0.95),
    "femur": (0.03, 0.03),                # cortex; the marrow is fatty (ff 0.85)
    "knee": (0.55, 0.95),                 # condyle/plateau marrow (ff 0.8) and joint space
    "pelvis": (0.50, 0.95),               # marrow ff 0.6
    "thyroid": (0.65, 0.05),
    "other_bone": (0.03, 0.03),
}

#: Write the relative signal multiplied by this (scanner-like magnitudes).
INTENSITY_SCALE = 1000.0

#: Regions for region summaries: name -> label names.
REGIONS: dict[str, tuple[str, ...]] = {
    "spine": ("vertebrae", "intervertebral_discs", "spinal_canal"),
    "back_muscles": ("back_muscles",),
    "heart": ("heart", "pericardial_fat"),
    "aorta": ("aorta",),
    "lungs": ("lung_left", "lung_right", "airway"),
    "liver": ("liver",),
    "kidneys": ("kidney_left", "kidney_right"),
    "thigh_muscles": ("thigh_muscles",),
    "knees": ("knee",),
    "bones": ("femur", "pelvis", "other_bone"),
    "thyroid": ("thyroid",),
    "fat": ("subcutaneous_fat", "visceral_fat"),
    "other_tissue": ("skin", "other_muscle", "soft_tissue"),
}


def label_ids(*names: str) -> list[int]:
    """Label ids of the given organ names (a clear KeyError for an unknown name)."""
    out = []
    for n in names:
        if n not in LABEL_IDS:
            raise KeyError(f"unknown organ {n!r}; organs are {sorted(LABEL_IDS)}")
        out.append(LABEL_IDS[n])
    return out
