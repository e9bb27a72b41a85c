"""Evaluation: per-class AUROC/AUPRC, patient-level bootstrap CIs, thresholds, calibration,
subgroups, operating points, paired comparisons (DeLong, paired bootstrap) and reports.

Pure numpy / scikit-learn / matplotlib; nothing here imports TensorFlow, so a report can be built
from any model's probabilities.

Example:
    >>> import numpy as np
    >>> from can_tf.evaluation import per_class_auroc
    >>> per_class_auroc(np.array([[1.0], [0.0]]), np.array([[0.9], [0.2]]), ["Edema"])
    {'Edema': 1.0}
"""

from can_tf.evaluation.bootstrap import (
    BootstrapResult,
    Interval,
    bootstrap_ci,
    bootstrap_metrics,
    replicate_metrics,
    resampling_strata,
)
from can_tf.evaluation.comparison import Comparison, compare_groups
from can_tf.evaluation.delong import DeLongResult, benjamini_hochberg, delong_covariance, delong_test, holm
from can_tf.evaluation.calibration import (
    CalibrationSummary,
    Temperatures,
    calibration_summary,
    expected_calibration_error,
    fit_temperature,
    reliability_bins,
)
from can_tf.evaluation.metrics import (
    ClassificationMetrics,
    EvaluationError,
    check_predictions,
    check_probabilities,
    compute_metrics,
    mean_over_defined,
    per_class_auprc,
    per_class_auroc,
    undefined_reason,
)
from can_tf.evaluation.reference_results import (
    OFFICIAL_SPLIT_MEANS,
    PER_CLASS_REFERENCES,
    REFERENCES,
    ReferenceResult,
    get_reference,
)
from can_tf.evaluation.operating_points import OperatingPoints, operating_points
from can_tf.evaluation.report import EvaluationReport
from can_tf.evaluation.subgroups import SubgroupAnalysis, subgroup_columns, subgroup_metrics
from can_tf.evaluation.thresholds import (
    Thresholds,
    choose_thresholds,
    sensitivity_threshold,
    youden_threshold,
)

__all__ = [
    "BootstrapResult",
    "CalibrationSummary",
    "ClassificationMetrics",
    "Comparison",
    "DeLongResult",
    "EvaluationError",
    "EvaluationReport",
    "Interval",
    "OFFICIAL_SPLIT_MEANS",
    "OperatingPoints",
    "PER_CLASS_REFERENCES",
    "REFERENCES",
    "ReferenceResult",
    "SubgroupAnalysis",
    "Temperatures",
    "Thresholds",
    "benjamini_hochberg",
    "bootstrap_ci",
    "bootstrap_metrics",
    "calibration_summary",
    "check_predictions",
    "check_probabilities",
    "choose_thresholds",
    "compare_groups",
    "compute_metrics",
    "delong_covariance",
    "delong_test",
    "expected_calibration_error",
    "fit_temperature",
    "get_reference",
    "holm",
    "mean_over_defined",
    "operating_points",
    "per_class_auprc",
    "per_class_auroc",
    "reliability_bins",
    "replicate_metrics",
    "resampling_strata",
    "sensitivity_threshold",
    "subgroup_columns",
    "subgroup_metrics",
    "undefined_reason",
    "youden_threshold",
]
