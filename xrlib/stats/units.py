"""Statistics over the held-out units (patients, or image tiles when too few patients hold out):
per-unit bootstrap intervals and paired tests of methods on per-unit means, Holm-adjusted."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import pandas as pd
from scipy import stats
from statsmodels.stats.multitest import multipletests

from xrlib.errors import ConfigError, DataError
from xrlib.progress import progress


def statistical_unit(table: pd.DataFrame) -> tuple[str, str]:
    """(column, name) of the unit that was held out and that statistics resample and average over.

    ``unit_id`` with the table's ``split_unit`` (patient or tile) when the table has them (pair
    manifests do), else ``patient_id`` ("patient").
    """
    if "unit_id" in table.columns:
        kinds = set(table["split_unit"]) if "split_unit" in table.columns else {"unit"}
        if len(kinds) != 1:
            raise DataError(f"the table mixes split units {sorted(kinds)}; score one pair manifest at a time")
        return "unit_id", kinds.pop()
    return "patient_id", "patient"


@dataclass(frozen=True)
class BootstrapInterval:
    """Mean over images with a percentile bootstrap interval from resampled units (patients or tiles)."""

    mean: float
    ci_low: float
    ci_high: float
    n_images: int
    n_units: int


def unit_bootstrap_ci(
    values: Sequence[float],
    unit_ids: Sequence[str],
    n_resamples: int = 2000,
    confidence: float = 0.95,
    seed: int = 0,
) -> BootstrapInterval:
    """Mean of ``values`` and its percentile interval, resampling units (patients) with replacement.

    A drawn unit brings all of its images, so images of one patient are never treated as
    independent. The statistic of each resample is the mean over the images it holds.
    """
    values = np.asarray(values, dtype=np.float64)
    if values.size == 0 or values.size != len(unit_ids):
        raise DataError(f"{values.size} values for {len(unit_ids)} unit ids; need one per image, at least one")
    if not 0.0 < confidence < 1.0:
        raise ConfigError(f"confidence must lie in (0, 1), got {confidence}")
    if n_resamples < 100:
        raise ConfigError(f"n_resamples = {n_resamples} is too few for a percentile interval; use 1000 or more")
    codes, uniques = pd.factorize(pd.Series(list(unit_ids)))
    sums = np.bincount(codes, weights=values)
    counts = np.bincount(codes).astype(np.float64)
    n_units = len(uniques)
    rng = np.random.default_rng(seed)
    draws = rng.multinomial(n_units, np.full(n_units, 1.0 / n_units), size=n_resamples)
    resampled_means = (draws @ sums) / (draws @ counts)
    alpha = (1.0 - confidence) / 2.0
    low, high = np.quantile(resampled_means, [alpha, 1.0 - alpha])
    return BootstrapInterval(float(values.mean()), float(low), float(high), int(values.size), n_units)


def summarise_metrics(
    table: pd.DataFrame,
    metrics: Sequence[str],
    by: Sequence[str],
    n_resamples: int = 2000,
    confidence: float = 0.95,
    seed: int = 0,
) -> pd.DataFrame:
    """Long table: the ``by`` columns, metric, mean, ci_low, ci_high, n_images, n_units, split_unit.

    Intervals resample the :func:`statistical_unit` (patients, or tiles when those were held out).
    """
    unit_column, split_unit = statistical_unit(table)
    rows = []
    groups = table.groupby(list(by), sort=True)
    for keys, group in progress(groups, "bootstrap", groups.ngroups, unit="group"):
        keys = keys if isinstance(keys, tuple) else (keys,)
        for metric in metrics:
            interval = unit_bootstrap_ci(group[metric], group[unit_column], n_resamples, confidence, seed)
            rows.append({**dict(zip(by, keys)), "metric": metric, **interval.__dict__, "split_unit": split_unit})
    return pd.DataFrame(rows)


def paired_method_test(
    table: pd.DataFrame, metric: str, method_a: str, method_b: str, method_column: str = "method"
) -> dict[str, float]:
    """Compare two methods on the images both scored, with the :func:`statistical_unit` (patient or tile) as the unit.

    Per-unit means of each method are paired; returns n_units, split_unit, the mean difference
    (a - b), the Wilcoxon signed-rank test (two-sided; zero differences dropped) and the paired t-test.
    """
    unit_column, split_unit = statistical_unit(table)
    per_image = table.pivot_table(index=[unit_column, "image_id"], columns=method_column, values=metric)
    for method in (method_a, method_b):
        if method not in per_image.columns:
            raise DataError(f"no rows with {method_column} == '{method}' for metric '{metric}'")
    both = per_image[[method_a, method_b]].dropna()
    per_patient = both.groupby(level=unit_column).mean()
    differences = (per_patient[method_a] - per_patient[method_b]).to_numpy()
    result = {"n_units": int(differences.size), "split_unit": split_unit, "mean_difference": float(np.mean(differences)) if differences.size else math.nan}
    if differences.size < 2 or not np.isfinite(differences).all():
        return {**result, "wilcoxon_statistic": math.nan, "wilcoxon_p": math.nan, "t_statistic": math.nan, "t_p": math.nan}
    if np.all(differences == 0):
        return {**result, "wilcoxon_statistic": math.nan, "wilcoxon_p": 1.0, "t_statistic": 0.0, "t_p": 1.0}
    wilcoxon = stats.wilcoxon(per_patient[method_a], per_patient[method_b])
    t_test = stats.ttest_rel(per_patient[method_a], per_patient[method_b])
    return {
        **result,
        "wilcoxon_statistic": float(wilcoxon.statistic),
        "wilcoxon_p": float(wilcoxon.pvalue),
        "t_statistic": float(t_test.statistic),
        "t_p": float(t_test.pvalue),
    }


def paired_method_tests(
    table: pd.DataFrame,
    metrics: Sequence[str],
    comparisons: Sequence[tuple[str, str]],
    by: Sequence[str] = ("degradation",),
    method_column: str = "method",
) -> pd.DataFrame:
    """:func:`paired_method_test` for every group, metric and comparison, with Holm-adjusted p-values."""
    rows = []
    for keys, group in table.groupby(list(by), sort=True):
        keys = keys if isinstance(keys, tuple) else (keys,)
        for metric in metrics:
            for method_a, method_b in comparisons:
                result = paired_method_test(group, metric, method_a, method_b, method_column)
                rows.append({**dict(zip(by, keys)), "metric": metric, "method_a": method_a, "method_b": method_b, **result})
    tests = pd.DataFrame(rows)
    for column in ("wilcoxon_p", "t_p"):
        valid = tests[column].notna()
        tests[f"{column}_holm"] = math.nan
        if valid.any():
            tests.loc[valid, f"{column}_holm"] = multipletests(tests.loc[valid, column], method="holm")[1]
    return tests
