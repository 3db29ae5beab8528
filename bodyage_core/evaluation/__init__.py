"""Evaluation of age predictions: metrics, baselines on the same folds, uncertainty quality,
subgroup tables and plots, written to ``workspace/reports/``."""

from bodyage_core.evaluation.baselines import (
    baselines_on_folds,
    histogram_features,
    ridge_fit_predict,
    voxel_features,
)
from bodyage_core.evaluation.metrics import (
    coverage,
    regression_metrics,
    sparsification,
    spearman,
    subgroup_table,
    uncertainty_metrics,
)
from bodyage_core.evaluation.report import evaluate_predictions, report_run, write_report

__all__ = [
    "baselines_on_folds", "coverage", "evaluate_predictions", "histogram_features",
    "regression_metrics", "report_run", "ridge_fit_predict", "sparsification", "spearman",
    "subgroup_table", "uncertainty_metrics", "voxel_features", "write_report",
]
