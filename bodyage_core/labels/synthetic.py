"""The organ labels of bodyage's synthetic neck-to-knee body: id -> organ name (the ids the
phantom writes to ``labels.nii.gz``; its tissue signals stay in
:mod:`bodyage_core.synth.anatomy`). A table of that cohort, not of label maps in general: a map
from another tool gets its names from its own table (:mod:`bodyage_core.labels`)."""

from __future__ import annotations

LABELS: dict[int, str] = {
    0: "background",
    1: "skin",
    2: "subcutaneous_fat",
    3: "visceral_fat",
    4: "other_muscle",
    5: "soft_tissue",
    6: "lung_left",
    7: "lung_right",
    8: "airway",
    9: "heart",
    10: "pericardial_fat",
    11: "aorta",
    12: "liver",
    13: "kidney_left",
    14: "kidney_right",
    15: "vertebrae",
    16: "intervertebral_discs",
    17: "spinal_canal",
    18: "back_muscles",
    19: "thigh_muscles",
    20: "femur",
    21: "knee",
    22: "pelvis",
    23: "thyroid",
    24: "other_bone",
}

LABEL_IDS: dict[str, int] = {name: i for i, name in LABELS.items()}
