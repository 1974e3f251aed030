"""Does a run show the paper's effect? Each check is a measured value beside a stated bar.

The bars say what a reader of the paper expects to see, measured (``MethodCriteria``):

1. **LQ twins** keep the HQ anatomy (low-pass SSIM) and reach the DRR domain (spectrum distance
   ratio), for each learned generator on held-out images (:class:`xrlib.lq.checks.TwinCriteria`).
2. **The restorer beats its inputs**: on each test set, DiffusionXRay scores higher than the LQ
   input and than the bicubic-trained baseline in PSNR and SSIM, paired over held-out units with
   Holm-adjusted Wilcoxon p below ``alpha``.
3. **Restored DRRs look like X-rays and keep their nodules**: their spectrum distance to real
   X-rays is at most ``max_realism_ratio`` of the raw DRRs'; nodules of at least
   ``min_nodule_diameter_mm`` are kept (the :class:`xrlib.eval.nodules.LostRule`) in at least
   ``min_nodules_kept_fraction`` of cases; the virtual readers' AUC drops by at most ``max_auc_drop``.
4. **Anatomy kept**: the Gaussian low-passes of each restored DRR correlate with its input's at
   least ``min_anatomy_correlation``.

Every function returns rows ``{check, subject, value, bar, passed}``; :func:`checks_table` stacks them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable, Mapping, Sequence

import pandas as pd

from xrlib.errors import DataError
from xrlib.lq.checks import TwinCriteria

CHECK_COLUMNS = ("check", "subject", "value", "bar", "passed")


@dataclass(frozen=True)
class MethodCriteria:
    """The bars of the restorer's checks (2-4 above); the twins' bars are :class:`xrlib.lq.checks.TwinCriteria`."""

    alpha: float = 0.05
    max_realism_ratio: float = 0.5
    min_nodule_diameter_mm: float = 8.0
    min_nodules_kept_fraction: float = 0.9
    max_auc_drop: float = 0.05
    min_anatomy_correlation: float = 0.9


def _row(check: str, subject: str, value: float, bar: str, passed: bool) -> dict:
    return {"check": check, "subject": subject, "value": float(value), "bar": bar, "passed": bool(passed)}


def _require(table: pd.DataFrame, columns: Iterable[str], what: str) -> None:
    missing = sorted(set(columns) - set(table.columns))
    if missing:
        raise DataError(f"{what} lacks columns {missing}")


def twin_checks(translation_checks: pd.DataFrame, generators: Sequence[str],
                criteria: TwinCriteria = TwinCriteria()) -> list[dict]:
    """Check 1 for each learned generator: rows of 03's translation checks (one per generator, held-out images)."""
    _require(translation_checks, ("generator", "low_pass_ssim", "spectrum_distance_ratio"), "the translation checks")
    rows = []
    for generator in generators:
        found = translation_checks[translation_checks.generator == generator]
        if found.empty:
            raise DataError(f"no translation check for generator '{generator}'; 03_lq_munit writes one per generator")
        report = found.iloc[0]
        verdict = criteria.verdict(report)
        rows.append(_row("LQ twin keeps the HQ anatomy (low-pass SSIM)", generator, report.low_pass_ssim,
                         f">= {criteria.min_low_pass_ssim}", verdict["anatomy_kept"]))
        rows.append(_row("LQ twin reaches the DRR domain (spectrum distance, twin / HQ)", generator,
                         report.spectrum_distance_ratio, f"<= {criteria.max_spectrum_distance_ratio}",
                         verdict["reached_drr_domain"]))
    return rows


def beats_checks(paired_tests: pd.DataFrame, degradations: Sequence[str], method: str = "diffusionxray",
                 others: Sequence[str] = ("lq_input", "bicubic_baseline"), metrics: Sequence[str] = ("psnr_db", "ssim"),
                 criteria: MethodCriteria = MethodCriteria()) -> list[dict]:
    """Check 2: ``method`` scores higher than each of ``others`` on each test set (06's paired tests, Holm-adjusted)."""
    _require(paired_tests, ("degradation", "metric", "method_a", "method_b", "mean_difference", "wilcoxon_p_holm"),
             "the paired tests")
    rows = []
    for degradation in degradations:
        for other in others:
            for metric in metrics:
                found = paired_tests[(paired_tests.degradation == degradation) & (paired_tests.metric == metric)
                                     & (paired_tests.method_a == method) & (paired_tests.method_b == other)]
                if found.empty:
                    raise DataError(f"no paired test of {method} vs {other} on {degradation} for {metric}; "
                                    "add the comparison to metrics.comparisons")
                test = found.iloc[0]
                p = test.wilcoxon_p_holm
                passed = test.mean_difference > 0 and not math.isnan(p) and p < criteria.alpha
                rows.append(_row(f"{method} beats {other} in {metric} (mean difference; Holm p = {p:.3g})",
                                 degradation, test.mean_difference, f"> 0 with Holm p < {criteria.alpha}", passed))
    return rows


def realism_check(realism_summary: pd.DataFrame, restored: str = "restored_drr", raw: str = "drr",
                  criteria: MethodCriteria = MethodCriteria()) -> list[dict]:
    """Check 3a: the restored DRRs' set spectrum distance to real X-rays over the raw DRRs' (06's realism summary)."""
    _require(realism_summary, ("set", "set_spectrum_distance"), "the realism summary")
    distance = realism_summary.set_index("set")["set_spectrum_distance"]
    for name in (restored, raw):
        if name not in distance:
            raise DataError(f"the realism summary has no set '{name}'")
    ratio = distance[restored] / distance[raw]
    return [_row("restored DRRs nearer real X-rays (spectrum distance, restored / raw DRR)", restored, ratio,
                 f"<= {criteria.max_realism_ratio}", ratio <= criteria.max_realism_ratio)]


def nodules_kept_check(nodules: pd.DataFrame, criteria: MethodCriteria = MethodCriteria()) -> list[dict]:
    """Check 3b: the fraction of nodules of at least the bar's diameter that restoration kept (06's nodules table)."""
    _require(nodules, ("diameter_mm", "lost"), "the nodule preservation table")
    large = nodules[nodules.diameter_mm >= criteria.min_nodule_diameter_mm]
    if large.empty:
        raise DataError(f"no nodule of at least {criteria.min_nodule_diameter_mm:g} mm to check")
    kept = 1.0 - large.lost.astype(bool).mean()
    return [_row(f"nodules >= {criteria.min_nodule_diameter_mm:g} mm kept ({len(large)} nodules)", "restored_drr", kept,
                 f">= {criteria.min_nodules_kept_fraction}", kept >= criteria.min_nodules_kept_fraction)]


def reader_auc_check(auc_by_condition: Mapping[str, float], restored: str = "diffusionxray", raw: str = "drr",
                     criteria: MethodCriteria = MethodCriteria()) -> list[dict]:
    """Check 3c: the virtual readers' mean AUC on restored DRRs minus that on raw DRRs (07's summary)."""
    for name in (restored, raw):
        if name not in auc_by_condition:
            raise DataError(f"no virtual-reader AUC for condition '{name}'; known: {sorted(auc_by_condition)}")
    change = auc_by_condition[restored] - auc_by_condition[raw]
    return [_row("virtual readers' AUC, restored minus raw DRR", restored, change, f">= -{criteria.max_auc_drop}",
                 change >= -criteria.max_auc_drop)]


def anatomy_check(correlations: Sequence[float], criteria: MethodCriteria = MethodCriteria()) -> list[dict]:
    """Check 4: the smallest low-pass correlation of a restored DRR with its input (06's anatomy table)."""
    values = pd.Series(list(correlations), dtype=float)
    if values.empty or values.isna().any():
        raise DataError("anatomy check: give one finite low-pass correlation per restored DRR")
    return [_row(f"restored DRRs keep the input's anatomy (smallest low-pass correlation of {len(values)})",
                 "restored_drr", values.min(), f">= {criteria.min_anatomy_correlation}",
                 values.min() >= criteria.min_anatomy_correlation)]


def checks_table(*groups: Iterable[dict]) -> pd.DataFrame:
    """One table of every check row (columns :data:`CHECK_COLUMNS`)."""
    return pd.DataFrame([row for group in groups for row in group], columns=list(CHECK_COLUMNS))
