"""Reader-study statistics: agreement, paired tests on proportions and ratings, ordinal models, MRMC ROC.

Every function is validated against published results (tests/data/reference, see SOURCE.md).
"""

from xrlib.stats.agreement import (
    ICC_FORMS, KAPPA_WEIGHTS, KRIPPENDORFF_LEVELS, FleissResult, KappaResult, agreement_table,
    category_counts, cohen_kappa, cohen_kappa_table, fleiss_kappa, icc, krippendorff_alpha,
)
from xrlib.stats.mrmc import (
    DBMResult, JackknifeAUCs, MRMCTest, ORCovariances, ORResult, check_readings, dbm_analysis,
    jackknife_aucs, jackknife_covariance, or_analysis, or_analysis_from_aucs, or_covariances, or_summary,
    roc_curve_points, trapezoidal_auc,
)
from xrlib.stats.reference import reproduce_published
from xrlib.stats.ordinal import odds_ratios, proportional_odds
from xrlib.stats.paired import (
    PairedTest, friedman_test, mcnemar_test, proportion_table, vgc_auc, vgc_curve, wilcoxon_signed_rank,
    wilson_interval,
)

__all__ = [
    "ICC_FORMS", "KAPPA_WEIGHTS", "KRIPPENDORFF_LEVELS", "FleissResult", "KappaResult", "agreement_table",
    "category_counts", "cohen_kappa", "cohen_kappa_table", "fleiss_kappa", "icc", "krippendorff_alpha",
    "DBMResult", "JackknifeAUCs", "MRMCTest", "ORCovariances", "ORResult", "check_readings", "dbm_analysis",
    "jackknife_aucs", "jackknife_covariance", "or_analysis", "or_analysis_from_aucs", "or_covariances", "or_summary",
    "reproduce_published", "roc_curve_points", "trapezoidal_auc", "odds_ratios", "proportional_odds", "PairedTest", "friedman_test",
    "mcnemar_test", "proportion_table", "vgc_auc", "vgc_curve", "wilcoxon_signed_rank", "wilson_interval",
]
