"""Proportions and paired comparisons of reader answers: Wilson CIs, McNemar, Wilcoxon, Friedman, VGC.

Wilson intervals and McNemar's test are statsmodels'; the signed-rank and Friedman tests are
scipy's. The visual grading characteristics (VGC) AUC follows Bath and Mansson (2007),
Br J Radiol 80:169: the ROC-style area for ordinal quality ratings of a test condition against a
reference condition (0.5 = no difference, > 0.5 = the test condition is rated higher).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import stats as sps
from statsmodels.stats.contingency_tables import mcnemar
from statsmodels.stats.proportion import proportion_confint

from xrlib.errors import DataError
from xrlib.stats.mrmc import roc_curve_points, trapezoidal_auc


def _whole_number(value) -> bool:
    """True for an integer or a float holding a whole number (not bool-like text, not NaN)."""
    return isinstance(value, (int, np.integer, float, np.floating)) and np.isfinite(value) and float(value) == int(value)


def yes_no_array(values, name: str = "answers") -> np.ndarray:
    """``values`` as a boolean array, refusing anything but 0/1/True/False (NaN, 2, text, empty)."""
    array = np.asarray(values)
    if array.size == 0:
        raise DataError(f"{name}: no answers; a yes/no test needs at least one")
    if array.dtype.kind == "O" and all(isinstance(v, (bool, int, float, np.bool_, np.number)) for v in array.ravel()):
        array = array.astype(float)
    if array.dtype.kind == "b":
        return array.astype(bool)
    if array.dtype.kind in "iuf":
        bad = ~np.isin(array, [0, 1])
        if not bad.any():
            return array.astype(bool)
        examples = np.unique(array[bad])[:3].tolist()
    else:
        examples = [v for v in np.unique(array.astype(str))][:3]
    raise DataError(f"{name}: yes/no answers must be 0/1 or True/False, found {examples}; "
                    "recode them (and drop missing answers) first")


def wilson_interval(successes: int, n: int, alpha: float = 0.05) -> tuple[float, float]:
    """Wilson score confidence interval for a proportion successes / n (whole numbers)."""
    if not (_whole_number(successes) and _whole_number(n)):
        raise DataError(f"a proportion needs whole numbers of successes and trials, got {successes!r} of {n!r}")
    if n <= 0 or not 0 <= successes <= n:
        raise DataError(f"a proportion needs 0 <= successes <= n and n > 0, got {successes} of {n}")
    low, high = proportion_confint(successes, n, alpha=alpha, method="wilson")
    return float(low), float(high)


def proportion_table(answers: pd.DataFrame, by: list[str], value: str, alpha: float = 0.05) -> pd.DataFrame:
    """Proportion of yes (1/True) answers in ``value`` per group ``by``, with Wilson CIs (missing answers dropped)."""
    clean = answers.dropna(subset=[value])
    if len(clean):
        clean = clean.assign(**{value: yes_no_array(clean[value].to_numpy(), f"column '{value}'")})
    grouped = clean.groupby(by)[value].agg(yes="sum", n="count").reset_index()
    grouped["yes"] = grouped["yes"].astype(int)
    grouped["proportion"] = grouped["yes"] / grouped["n"]
    intervals = [wilson_interval(y, n, alpha) for y, n in zip(grouped["yes"], grouped["n"])]
    grouped["ci_low"] = [low for low, _ in intervals]
    grouped["ci_high"] = [high for _, high in intervals]
    return grouped


@dataclass(frozen=True)
class PairedTest:
    """A paired test's statistic, p value and the number of pairs it used."""

    statistic: float
    p: float
    n_pairs: int
    method: str


def mcnemar_test(answers_a, answers_b, exact: bool | None = None) -> PairedTest:
    """McNemar's test for paired yes/no answers (e.g. the same case under two conditions).

    Exact binomial test when ``exact`` is True, or by default when fewer than 25 pairs disagree;
    otherwise the chi-square test with continuity correction.
    """
    a = yes_no_array(answers_a, "mcnemar_test answers_a")
    b = yes_no_array(answers_b, "mcnemar_test answers_b")
    if a.shape != b.shape:
        raise DataError(f"paired answers must have the same length, got {a.shape} and {b.shape}")
    table = np.array([[np.sum(a & b), np.sum(a & ~b)], [np.sum(~a & b), np.sum(~a & ~b)]])
    discordant = table[0, 1] + table[1, 0]
    if exact is None:
        exact = discordant < 25
    result = mcnemar(table, exact=exact, correction=True)
    method = "McNemar exact (binomial)" if exact else "McNemar chi-square (continuity corrected)"
    return PairedTest(float(result.statistic), float(result.pvalue), int(a.size), method)


def _finite_ratings(values, name: str) -> np.ndarray:
    """Numeric ratings as floats; empty input, text, NaN or infinities refused with ``name``."""
    try:
        array = np.asarray(values, float)
    except (TypeError, ValueError) as error:
        raise DataError(f"{name}: ratings must be numbers ({error})") from error
    if array.size == 0:
        raise DataError(f"{name}: no ratings; the test needs at least one")
    if not np.isfinite(array).all():
        raise DataError(f"{name}: {int((~np.isfinite(array)).sum())} ratings are NaN or infinite; "
                        "drop those cases (in both conditions) first")
    return array


def wilcoxon_signed_rank(ratings_a, ratings_b) -> PairedTest:
    """Wilcoxon signed-rank test of paired ordinal ratings (zero differences dropped, Wilcoxon's way)."""
    a = _finite_ratings(ratings_a, "wilcoxon_signed_rank ratings_a")
    b = _finite_ratings(ratings_b, "wilcoxon_signed_rank ratings_b")
    if a.shape != b.shape:
        raise DataError(f"paired ratings must have the same length, got {a.shape} and {b.shape}")
    if np.all(a == b):
        return PairedTest(0.0, 1.0, int(a.size), "Wilcoxon signed-rank (all pairs tied)")
    result = sps.wilcoxon(a, b, zero_method="wilcox")
    return PairedTest(float(result.statistic), float(result.pvalue), int(a.size), "Wilcoxon signed-rank")


def friedman_test(ratings) -> PairedTest:
    """Friedman test of a subjects x conditions array of ratings (three conditions or more)."""
    x = _finite_ratings(ratings, "friedman_test ratings")
    if x.ndim != 2 or x.shape[1] < 3:
        raise DataError(f"Friedman needs subjects x conditions with >= 3 conditions, got shape {x.shape}")
    result = sps.friedmanchisquare(*x.T)
    return PairedTest(float(result.statistic), float(result.pvalue), int(x.shape[0]), "Friedman chi-square")


def vgc_auc(reference_ratings, test_ratings) -> float:
    """Area under the visual grading characteristics curve: P(test > reference) + P(tie) / 2."""
    return trapezoidal_auc(reference_ratings, test_ratings)


def vgc_curve(reference_ratings, test_ratings) -> pd.DataFrame:
    """VGC operating points: proportion of reference (x) and test (y) ratings at or above each grade."""
    reference = _finite_ratings(reference_ratings, "vgc_curve reference_ratings")
    test = _finite_ratings(test_ratings, "vgc_curve test_ratings")
    truth = np.r_[np.zeros(reference.size), np.ones(test.size)]
    points = roc_curve_points(truth, np.r_[reference, test])
    return points.rename(columns={"fpf": "reference_fraction", "tpf": "test_fraction"})
