"""Agreement between raters: Cohen's and Fleiss' kappa, Krippendorff's alpha, intraclass correlation.

Cohen's and Fleiss' kappa come from statsmodels (``statsmodels.stats.inter_rater``); Fleiss'
standard error under the null, Krippendorff's alpha and the Shrout-Fleiss ICCs are written from
the papers:

- Fleiss, J. L. (1971). Measuring nominal scale agreement among many raters. Psychol Bull 76:378.
  Standard error under H0 from Fleiss, Nee and Landis (1979), Psychol Bull 86:974.
- Krippendorff, K. (2011). Computing Krippendorff's alpha-reliability. Annenberg School, UPenn.
- Shrout, P. E. and Fleiss, J. L. (1979). Intraclass correlations: uses in assessing rater
  reliability. Psychol Bull 86:420; confidence intervals as in McGraw and Wong (1996).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import stats as sps
from statsmodels.stats import inter_rater

from xrlib.errors import DataError

KAPPA_WEIGHTS = ("unweighted", "linear", "quadratic")
KRIPPENDORFF_LEVELS = ("nominal", "ordinal", "interval", "ratio")


@dataclass(frozen=True)
class KappaResult:
    """A kappa with its asymptotic standard error, CI and test of kappa = 0."""

    kappa: float
    se: float
    ci_low: float
    ci_high: float
    se_null: float
    z: float
    p_two_sided: float
    n_subjects: int


def agreement_table(rater_a, rater_b, categories=None) -> tuple[np.ndarray, list]:
    """Square contingency table of two raters' category labels (rows: ``rater_a``).

    ``categories`` fixes the order (and includes categories nobody used); by default the sorted
    union of the labels. Missing pairs (NaN/None in either rater) are dropped.
    """
    a = pd.Series(list(rater_a), dtype=object)
    b = pd.Series(list(rater_b), dtype=object)
    if len(a) != len(b):
        raise DataError(f"the two raters rated {len(a)} and {len(b)} subjects; pair them by subject first")
    keep = a.notna() & b.notna()
    a, b = a[keep], b[keep]
    if len(a) == 0:
        raise DataError("no subject was rated by both raters; agreement needs at least one rated pair")
    if categories is None:
        categories = sorted(set(a) | set(b))
    unknown = (set(a) | set(b)) - set(categories)
    if unknown:
        raise DataError(f"ratings {sorted(map(str, unknown))} are not among the categories {list(categories)}")
    index = {category: i for i, category in enumerate(categories)}
    table = np.zeros((len(categories), len(categories)))
    np.add.at(table, (a.map(index).to_numpy(int), b.map(index).to_numpy(int)), 1)
    return table, list(categories)


def cohen_kappa_table(table, weights: str = "unweighted", scores=None, alpha: float = 0.05) -> KappaResult:
    """Cohen's kappa of a two-rater contingency table (statsmodels), with SE, CI and z test.

    ``weights``: 'unweighted', 'linear' (Cicchetti-Allison) or 'quadratic' (Fleiss-Cohen);
    ``scores`` are the category scores the weights use (default 0, 1, 2, ...).
    """
    if weights not in KAPPA_WEIGHTS:
        raise DataError(f"kappa weights '{weights}' unknown; use one of {KAPPA_WEIGHTS}")
    table = np.asarray(table, float)
    if table.ndim != 2 or table.shape[0] != table.shape[1]:
        raise DataError(f"a kappa table must be square, got shape {table.shape}")
    if weights == "unweighted":
        result = inter_rater.cohens_kappa(table)
    else:
        result = inter_rater.cohens_kappa(table, weights=scores, wt=weights)
    z_crit = sps.norm.ppf(1 - alpha / 2)
    kappa, se = float(result.kappa), float(result.std_kappa)
    se_null = float(result.std_kappa0)
    z = kappa / se_null if se_null > 0 else np.nan
    return KappaResult(
        kappa=kappa,
        se=se,
        ci_low=kappa - z_crit * se,
        ci_high=kappa + z_crit * se,
        se_null=se_null,
        z=z,
        p_two_sided=float(2 * sps.norm.sf(abs(z))) if np.isfinite(z) else np.nan,
        n_subjects=int(table.sum()),
    )


def _ordered_categories(*raters):
    """The categories of ordered pandas Categoricals among ``raters`` (the first found), else None."""
    for rater in raters:
        dtype = getattr(rater, "dtype", None)
        if isinstance(dtype, pd.CategoricalDtype) and dtype.ordered:
            return list(dtype.categories)
    return None


def cohen_kappa(rater_a, rater_b, weights: str = "unweighted", categories=None, alpha: float = 0.05) -> KappaResult:
    """Cohen's kappa of two raters' labels of the same subjects (see :func:`cohen_kappa_table`).

    Weighted kappa needs the categories' order: numeric labels are their own scores; text labels
    need ``categories`` listed from lowest to highest (or ordered pandas Categoricals), and are
    scored 0, 1, 2, ... in that order. Text labels without an order are refused, never sorted
    alphabetically ("high" < "low" < "mid").
    """
    if categories is None:
        categories = _ordered_categories(rater_a, rater_b)
    order_given = categories is not None
    table, categories = agreement_table(rater_a, rater_b, categories)
    numeric = all(isinstance(c, (int, float, np.integer, np.floating)) and not isinstance(c, bool) for c in categories)
    if weights != "unweighted" and not numeric and not order_given:
        raise DataError(f"weighted kappa of text labels {categories} needs their order: pass "
                        "categories=[lowest, ..., highest] or ordered pandas Categoricals")
    scores = np.asarray(categories, float) if numeric else None
    return cohen_kappa_table(table, weights=weights, scores=scores, alpha=alpha)


def category_counts(ratings, categories=None) -> tuple[np.ndarray, list]:
    """Subjects x categories count table from a subjects x raters array of labels (NaN = missing)."""
    frame = pd.DataFrame(np.asarray(ratings, dtype=object))
    if frame.ndim != 2 or frame.size == 0:
        raise DataError("no ratings: agreement needs a subjects x raters table with at least one subject")
    values = pd.unique(frame.to_numpy().ravel())
    values = [v for v in values if not pd.isna(v)]
    if not values:
        raise DataError("every rating is missing; agreement needs ratings")
    if categories is None:
        categories = sorted(values)
    unknown = set(values) - set(categories)
    if unknown:
        raise DataError(f"ratings {sorted(map(str, unknown))} are not among the categories {list(categories)}")
    counts = np.stack([(frame == category).sum(axis=1).to_numpy() for category in categories], axis=1)
    return counts.astype(float), list(categories)


@dataclass(frozen=True)
class FleissResult:
    """Fleiss' kappa with its standard error under H0 (kappa = 0) and the z test."""

    kappa: float
    se_null: float
    z: float
    p_two_sided: float
    category_totals: np.ndarray


def fleiss_kappa(ratings=None, counts=None, categories=None) -> FleissResult:
    """Fleiss' kappa for many raters per subject (statsmodels), with the z test of Fleiss et al. 1979.

    Give either ``ratings`` (subjects x raters labels) or ``counts`` (subjects x categories).
    Every subject needs the same number of ratings.
    """
    if counts is None:
        if ratings is None:
            raise DataError("fleiss_kappa needs ratings (subjects x raters) or counts (subjects x categories)")
        counts, _ = category_counts(ratings, categories)
    counts = np.asarray(counts, float)
    if counts.ndim != 2 or counts.shape[0] == 0 or counts.shape[1] < 2:
        raise DataError(f"Fleiss' kappa needs a subjects x categories count table with at least one subject "
                        f"and two categories, got shape {counts.shape}")
    if not np.isfinite(counts).all() or (counts < 0).any() or (counts != np.round(counts)).any():
        raise DataError("Fleiss' kappa counts must be whole numbers >= 0 (raters per subject and category); "
                        f"found e.g. {counts[~np.isfinite(counts) | (counts < 0) | (counts != np.round(counts))][:3].tolist()}")
    raters_per_subject = counts.sum(axis=1)
    if not np.all(raters_per_subject == raters_per_subject[0]):
        raise DataError(
            "Fleiss' kappa needs the same number of ratings for every subject; "
            "use krippendorff_alpha for missing ratings"
        )
    n_subjects, n_raters = counts.shape[0], raters_per_subject[0]
    if n_raters < 2:
        raise DataError(f"Fleiss' kappa needs at least two ratings per subject, got {n_raters:g}")
    kappa = float(inter_rater.fleiss_kappa(counts, method="fleiss"))
    p = counts.sum(axis=0) / (n_subjects * n_raters)
    pq = p * (1 - p)
    se_null = float(
        np.sqrt(2.0 / (n_subjects * n_raters * (n_raters - 1)))
        * np.sqrt(pq.sum() ** 2 - (pq * (1 - 2 * p)).sum())
        / pq.sum()
    )
    z = kappa / se_null
    return FleissResult(kappa, se_null, z, float(2 * sps.norm.sf(abs(z))), counts.sum(axis=0))


def _coincidence_matrix(units_by_coders: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Krippendorff's coincidence matrix o_ck over the pairable units (2011, section B)."""
    index = {v: i for i, v in enumerate(values)}
    matrix = np.zeros((len(values), len(values)))
    for unit in units_by_coders:
        present = unit[~np.isnan(unit)]
        m_u = len(present)
        if m_u < 2:
            continue
        counts = np.zeros(len(values))
        for value in present:
            counts[index[value]] += 1
        matrix += (np.outer(counts, counts) - np.diag(counts)) / (m_u - 1)
    return matrix


def _krippendorff_delta(values: np.ndarray, marginals: np.ndarray, level: str) -> np.ndarray:
    """Squared difference function delta^2_ck for each level of measurement (2011, section E)."""
    c, k = np.meshgrid(values, values, indexing="ij")
    if level == "nominal":
        return (c != k).astype(float)
    if level == "interval":
        return (c - k) ** 2
    if level == "ratio":
        total = c + k
        with np.errstate(invalid="ignore", divide="ignore"):
            delta = ((c - k) / total) ** 2
        return np.where(total == 0, 0.0, delta)
    # ordinal: ranks by the cumulated marginals between c and k
    cumulative = np.concatenate([[0.0], np.cumsum(marginals)])
    i, j = np.meshgrid(np.arange(len(values)), np.arange(len(values)), indexing="ij")
    low, high = np.minimum(i, j), np.maximum(i, j)
    between = cumulative[high + 1] - cumulative[low]
    return (between - (marginals[i] + marginals[j]) / 2.0) ** 2


def krippendorff_alpha(ratings, level: str = "nominal") -> float:
    """Krippendorff's alpha of a coders x units array of numeric ratings (NaN = missing).

    ``level``: 'nominal', 'ordinal', 'interval' or 'ratio'. Units rated by fewer than two coders
    carry no information about agreement and are left out, as in Krippendorff (2011).
    """
    if level not in KRIPPENDORFF_LEVELS:
        raise DataError(f"Krippendorff level '{level}' unknown; use one of {KRIPPENDORFF_LEVELS}")
    data = np.asarray(ratings, dtype=float)
    if data.ndim != 2:
        raise DataError(f"ratings must be coders x units (2-D), got shape {data.shape}")
    values = np.unique(data[~np.isnan(data)])
    if len(values) == 0:
        raise DataError("no ratings at all; Krippendorff's alpha is undefined")
    coincidence = _coincidence_matrix(data.T, values)
    marginals = coincidence.sum(axis=1)
    n_pairable = marginals.sum()
    if n_pairable < 2:
        raise DataError("fewer than two pairable values (units rated by two coders or more)")
    delta = _krippendorff_delta(values, marginals, level)
    observed = (coincidence * delta).sum() / n_pairable
    expected = (np.outer(marginals, marginals) * delta).sum() / (n_pairable * (n_pairable - 1))
    if expected == 0:
        # one value throughout: no variation to disagree about; perfect agreement by convention
        return 1.0
    return float(1.0 - observed / expected)


ICC_FORMS = ("ICC1", "ICC2", "ICC3", "ICC1k", "ICC2k", "ICC3k")


def icc(ratings, alpha: float = 0.05) -> pd.DataFrame:
    """The six Shrout-Fleiss intraclass correlations of a targets x judges array (complete data).

    ICC1 one-way random, ICC2 two-way random (absolute agreement), ICC3 two-way mixed
    (consistency); the k forms are for the mean of k judges (a lower bound of ICC2 below
    -1 / (k - 1) makes ICC2k's lower bound -inf). Returns one row per form with the
    ICC, its F test (F, df1, df2, p) and a (1 - alpha) confidence interval.
    """
    x = np.asarray(ratings, dtype=float)
    if x.ndim != 2 or np.isnan(x).any():
        raise DataError("ICC needs a complete targets x judges array (no missing ratings)")
    n, k = x.shape
    if n < 2 or k < 2:
        raise DataError(f"ICC needs at least 2 targets and 2 judges, got {n} x {k}")
    with np.errstate(divide="ignore", invalid="ignore"):
        # perfect agreement gives a zero error mean square: ICC 1, F infinite, CI undefined
        return _icc_table(x, alpha)


def _icc_table(x: np.ndarray, alpha: float) -> pd.DataFrame:
    """The computation of :func:`icc` (mean squares, the six forms, F tests and CIs)."""
    n, k = x.shape
    grand = x.mean()
    ss_targets = k * ((x.mean(axis=1) - grand) ** 2).sum()
    ss_judges = n * ((x.mean(axis=0) - grand) ** 2).sum()
    ss_total = ((x - grand) ** 2).sum()
    ms_targets = ss_targets / (n - 1)
    ms_within = (ss_total - ss_targets) / (n * (k - 1))
    ms_judges = ss_judges / (k - 1)
    ms_error = (ss_total - ss_targets - ss_judges) / ((n - 1) * (k - 1))

    icc1 = (ms_targets - ms_within) / (ms_targets + (k - 1) * ms_within)
    icc2 = (ms_targets - ms_error) / (ms_targets + (k - 1) * ms_error + k * (ms_judges - ms_error) / n)
    icc3 = (ms_targets - ms_error) / (ms_targets + (k - 1) * ms_error)
    icc1k = (ms_targets - ms_within) / ms_targets
    icc2k = (ms_targets - ms_error) / (ms_targets + (ms_judges - ms_error) / n)
    icc3k = (ms_targets - ms_error) / ms_targets

    q = 1 - alpha / 2
    df1, df_within, df_error = n - 1, n * (k - 1), (n - 1) * (k - 1)
    f1 = ms_targets / ms_within
    f3 = ms_targets / ms_error
    f1_low, f1_high = f1 / sps.f.ppf(q, df1, df_within), f1 * sps.f.ppf(q, df_within, df1)
    f3_low, f3_high = f3 / sps.f.ppf(q, df1, df_error), f3 * sps.f.ppf(q, df_error, df1)

    # ICC2: Satterthwaite df for the CI (Shrout and Fleiss 1979, eq. 12-13)
    a = k * icc2 / (n * (1 - icc2))
    b = 1 + k * icc2 * (n - 1) / (n * (1 - icc2))
    nu = (a * ms_judges + b * ms_error) ** 2 / ((a * ms_judges) ** 2 / (k - 1) + (b * ms_error) ** 2 / df_error)
    f_star_high, f_star_low = sps.f.ppf(q, n - 1, nu), sps.f.ppf(q, nu, n - 1)
    denominator = k * ms_judges + (k * n - k - n) * ms_error
    icc2_low = n * (ms_targets - f_star_high * ms_error) / (f_star_high * denominator + n * ms_targets)
    icc2_high = n * (f_star_low * ms_targets - ms_error) / (denominator + n * f_star_low * ms_targets)

    def mean_of_k(value):
        """Spearman-Brown step-up of an ICC2 bound to the mean of k judges. A single-judge
        correlation cannot be below -1 / (k - 1) (its pole); a bound there maps to -infinity,
        the unbounded lower end of the mean-of-k ICC, as 1 - 1 / F does for ICC1k and ICC3k."""
        return k * value / (1 + (k - 1) * value) if value > -1 / (k - 1) else -np.inf

    rows = [
        ("ICC1", icc1, f1, df_within, (f1_low - 1) / (f1_low + k - 1), (f1_high - 1) / (f1_high + k - 1)),
        ("ICC2", icc2, f3, df_error, icc2_low, icc2_high),
        ("ICC3", icc3, f3, df_error, (f3_low - 1) / (f3_low + k - 1), (f3_high - 1) / (f3_high + k - 1)),
        ("ICC1k", icc1k, f1, df_within, 1 - 1 / f1_low, 1 - 1 / f1_high),
        ("ICC2k", icc2k, f3, df_error, mean_of_k(icc2_low), mean_of_k(icc2_high)),
        ("ICC3k", icc3k, f3, df_error, 1 - 1 / f3_low, 1 - 1 / f3_high),
    ]
    table = pd.DataFrame(rows, columns=["form", "icc", "F", "df2", "ci_low", "ci_high"])
    table.insert(3, "df1", df1)
    table.insert(5, "p", sps.f.sf(table["F"], df1, table["df2"]))
    return table
