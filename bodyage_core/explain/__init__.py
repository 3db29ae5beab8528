"""bodyage_core.explain: per-subject explanation maps.

* :func:`gradcam` — Grad-CAM (ReLU or signed) at a named layer, per ensemble member and mean.
* :func:`guided_gradcam`, :func:`guided_backprop` — for the 2.5D model.
* :func:`occlusion_map` — model-agnostic occlusion sensitivity.
* :func:`gradient_x_input` — gradient x input at the input's resolution (no upsampling).
* :func:`map_to_subject_space`, :func:`save_map`, :func:`load_map` — model grid -> subject grid,
  NIfTI with the subject image's affine, raw float32 values.
* :func:`randomisation_check` — Adebayo et al. (2018) model-randomisation sanity check.
* :func:`explain_subjects`, :func:`sanity_report` — the workspace pipeline
  (``subjects/<id>/gradcam_<run>.nii.gz`` ... registered in the cohort index).
"""

from bodyage_core.explain.gradcam import (
    MapResult,
    count_hooks,
    gradcam,
    gradient_x_input,
    guided_backprop,
    guided_gradcam,
    layer_names,
    resolve_layer,
)
from bodyage_core.explain.occlusion import occlusion_map
from bodyage_core.explain.pipeline import explain_subjects, map_kind, sanity_report
from bodyage_core.explain.sanity import randomisation_check, spearman
from bodyage_core.explain.space import load_map, map_to_subject_space, resample_map, save_map

__all__ = [
    "MapResult", "count_hooks", "gradcam", "gradient_x_input", "guided_backprop", "guided_gradcam", "layer_names",
    "resolve_layer", "occlusion_map", "randomisation_check", "spearman", "load_map",
    "map_to_subject_space", "resample_map", "save_map", "explain_subjects", "map_kind",
    "sanity_report",
]
