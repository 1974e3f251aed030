"""Multi-reader multi-case (MRMC) ROC analysis: Obuchowski-Rockette with Hillis' df, and DBM.

Input is one long table with a row per reading: ``reader, modality, case, truth, rating``
(truth 1 = signal present / abnormal, 0 = absent; a higher rating means more confident that the
signal is present). The figure of merit is the trapezoidal (Wilcoxon) AUC; case-sampling
covariances are estimated by jackknifing cases. Written from:

- Obuchowski, N. A. and Rockette, H. E. (1995). Commun Stat Simul Comput 24:285-308.
- Hillis, S. L. (2007). A comparison of denominator degrees of freedom for multiple observer ROC
  analysis. Stat Med 26:596-619 (ddf_H; single-modality intervals).
- Hillis, S. L., Obuchowski, N. A., Schartz, K. M., Berbaum, K. S. (2005). Stat Med 24:1579-1607
  (fixed-reader and fixed-case analyses; equivalence of OR and DBM with jackknife pseudovalues).
- Dorfman, D. D., Berbaum, K. S., Metz, C. E. (1992). Invest Radiol 27:723-731 (DBM).

Validated against the Iowa OR-DBM MRMC 2.51 output for the Van Dyke et al. (1993) data
(tests/data/reference).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from itertools import combinations

import numpy as np
import pandas as pd
from scipy import stats as sps

from xrlib.errors import DataError, DegenerateDataWarning

READING_COLUMNS = ("reader", "modality", "case", "truth", "rating")


def trapezoidal_auc(absent_scores, present_scores) -> float:
    """Empirical (trapezoidal, Wilcoxon-Mann-Whitney) AUC: P(present > absent) + P(tie) / 2."""
    absent = np.asarray(absent_scores, float)
    present = np.asarray(present_scores, float)
    if absent.size == 0 or present.size == 0:
        raise DataError("an AUC needs at least one signal-absent and one signal-present case")
    if not (np.isfinite(absent).all() and np.isfinite(present).all()):
        raise DataError("scores hold NaN or infinite values, which would lose (or win) every comparison; "
                        "drop those cases or fix their scores")
    kernel = (present[None, :] > absent[:, None]) + 0.5 * (present[None, :] == absent[:, None])
    return float(kernel.mean())


def roc_curve_points(truth, rating) -> pd.DataFrame:
    """Empirical ROC operating points (fpf, tpf) at every rating threshold, from (0,0) to (1,1)."""
    truth = np.asarray(truth, int)
    rating = np.asarray(rating, float)
    thresholds = np.unique(rating)[::-1]
    n_present, n_absent = (truth == 1).sum(), (truth == 0).sum()
    tpf = [0.0] + [((rating >= t) & (truth == 1)).sum() / n_present for t in thresholds]
    fpf = [0.0] + [((rating >= t) & (truth == 0)).sum() / n_absent for t in thresholds]
    return pd.DataFrame({"threshold": [np.inf, *thresholds], "fpf": fpf, "tpf": tpf})


@dataclass(frozen=True)
class JackknifeAUCs:
    """Reader AUCs (modalities x readers) and their leave-one-case-out values (... x cases)."""

    modalities: list
    readers: list
    cases: list
    auc: np.ndarray
    auc_leave_one_out: np.ndarray


def check_readings(readings: pd.DataFrame) -> pd.DataFrame:
    """Validate a long readings table for a factorial MRMC study and return it sorted.

    Every reader reads every case in every modality exactly once; each case has one truth.
    """
    missing = [c for c in READING_COLUMNS if c not in readings.columns]
    if missing:
        raise DataError(f"readings table lacks columns {missing}; need {list(READING_COLUMNS)}")
    frame = readings.loc[:, list(READING_COLUMNS)].copy()
    if frame["rating"].isna().any() or frame["truth"].isna().any():
        raise DataError("readings table has missing ratings or truths; remove or complete those rows")
    if not frame["truth"].isin([0, 1]).all():
        raise DataError("truth must be 0 (signal absent) or 1 (signal present)")
    truths = frame.groupby("case")["truth"].nunique()
    if (truths > 1).any():
        raise DataError(f"cases {list(truths[truths > 1].index)[:5]} have conflicting truths")
    duplicated = frame.duplicated(["reader", "modality", "case"])
    if duplicated.any():
        raise DataError(f"{duplicated.sum()} duplicate (reader, modality, case) readings, e.g. "
                        f"{frame.loc[duplicated].iloc[0][['reader', 'modality', 'case']].tolist()}")
    n_expected = frame["reader"].nunique() * frame["modality"].nunique() * frame["case"].nunique()
    if len(frame) != n_expected:
        raise DataError(f"the design is not fully crossed: {len(frame)} readings, expected {n_expected} "
                        "(every reader reads every case in every modality)")
    return frame.sort_values(["modality", "reader", "case"]).reset_index(drop=True)


def jackknife_aucs(readings: pd.DataFrame) -> JackknifeAUCs:
    """Trapezoidal AUC of every (modality, reader) and its value with each case left out."""
    frame = check_readings(readings)
    modalities = sorted(frame["modality"].unique())
    readers = sorted(frame["reader"].unique())
    cases = sorted(frame["case"].unique())
    truth = frame.drop_duplicates("case").set_index("case").loc[cases, "truth"].to_numpy()
    absent, present = truth == 0, truth == 1
    n_absent, n_present = absent.sum(), present.sum()
    if n_absent < 2 or n_present < 2:
        raise DataError(f"need at least 2 signal-absent and 2 signal-present cases, got {n_absent} and {n_present}")
    ratings = frame.set_index(["modality", "reader", "case"])["rating"]
    auc = np.empty((len(modalities), len(readers)))
    leave_one_out = np.empty((len(modalities), len(readers), len(cases)))
    for i, modality in enumerate(modalities):
        for j, reader in enumerate(readers):
            score = ratings.loc[(modality, reader)].loc[cases].to_numpy(float)
            x0, x1 = score[absent], score[present]
            kernel = (x1[None, :] > x0[:, None]) + 0.5 * (x1[None, :] == x0[:, None])
            total = kernel.sum()
            auc[i, j] = total / (n_absent * n_present)
            leave_one_out[i, j, absent] = (total - kernel.sum(axis=1)) / ((n_absent - 1) * n_present)
            leave_one_out[i, j, present] = (total - kernel.sum(axis=0)) / (n_absent * (n_present - 1))
    return JackknifeAUCs(modalities, readers, cases, auc, leave_one_out)


@dataclass(frozen=True)
class ORCovariances:
    """Obuchowski-Rockette error variance and covariances (jackknife estimates).

    ``var``: Var(error); ``cov1``: same reader, different modalities; ``cov2``: same modality,
    different readers; ``cov3``: different reader and modality. ``per_modality`` holds Var and Cov2
    of each modality alone, ``per_reader`` Var and Cov1 of each reader alone.
    """

    var: float
    cov1: float
    cov2: float
    cov3: float
    per_modality: pd.DataFrame
    per_reader: pd.DataFrame


def jackknife_covariance(leave_one_out: np.ndarray) -> np.ndarray:
    """Jackknife covariance of the (modality, reader) AUCs: (n-1)/n sum_k (theta_k - mean)(...)^T."""
    n_cases = leave_one_out.shape[-1]
    flat = leave_one_out.reshape(-1, n_cases)
    centred = flat - flat.mean(axis=1, keepdims=True)
    return (n_cases - 1) / n_cases * centred @ centred.T


def or_covariances(leave_one_out: np.ndarray) -> ORCovariances:
    """Average the jackknife covariance matrix into Var, Cov1, Cov2 and Cov3 (OR 1995)."""
    n_modalities, n_readers = leave_one_out.shape[:2]
    cov = jackknife_covariance(leave_one_out).reshape(n_modalities, n_readers, n_modalities, n_readers)
    modality_a, reader_a, modality_b, reader_b = np.meshgrid(
        *(np.arange(s) for s in cov.shape), indexing="ij")
    same_modality, same_reader = modality_a == modality_b, reader_a == reader_b

    def mean_of(mask):
        return float(cov[mask].mean()) if mask.any() else 0.0

    per_modality = pd.DataFrame({
        "var": [mean_of(same_modality & same_reader & (modality_a == i)) for i in range(n_modalities)],
        "cov2": [mean_of(same_modality & ~same_reader & (modality_a == i)) for i in range(n_modalities)],
    })
    per_reader = pd.DataFrame({
        "var": [mean_of(same_modality & same_reader & (reader_a == j)) for j in range(n_readers)],
        "cov1": [mean_of(~same_modality & same_reader & (reader_a == j)) for j in range(n_readers)],
    })
    return ORCovariances(
        var=mean_of(same_modality & same_reader),
        cov1=mean_of(~same_modality & same_reader),
        cov2=mean_of(same_modality & ~same_reader),
        cov3=mean_of(~same_modality & ~same_reader),
        per_modality=per_modality,
        per_reader=per_reader,
    )


@dataclass(frozen=True)
class MRMCTest:
    """One global test of equal modality AUCs and its pairwise differences and per-modality CIs."""

    analysis: str
    statistic_name: str
    statistic: float
    df_num: float
    df_den: float
    p: float
    differences: pd.DataFrame
    modality_cis: pd.DataFrame


@dataclass(frozen=True)
class ORResult:
    """The three OR analyses (random readers and cases; fixed readers; fixed cases)."""

    auc: pd.DataFrame
    ms_t: float
    ms_r: float
    ms_tr: float
    covariances: ORCovariances
    rrrc: MRMCTest | None
    frrc: MRMCTest
    rrfc: MRMCTest | None
    single_reader: pd.DataFrame = field(repr=False)
    notes: list = field(default_factory=list)


def _anova_ms(auc: np.ndarray) -> tuple[float, float, float, np.ndarray]:
    """Mean squares for modality (T), reader (R), interaction (TR) and per-modality MS(R)."""
    t, r = auc.shape
    grand = auc.mean()
    modality_means, reader_means = auc.mean(axis=1), auc.mean(axis=0)
    ms_t = r * ((modality_means - grand) ** 2).sum() / (t - 1) if t > 1 else np.nan
    ms_r = t * ((reader_means - grand) ** 2).sum() / (r - 1) if r > 1 else np.nan
    interaction = auc - modality_means[:, None] - reader_means[None, :] + grand
    ms_tr = (interaction ** 2).sum() / ((t - 1) * (r - 1)) if t > 1 and r > 1 else np.nan
    ms_r_each = auc.var(axis=1, ddof=1) if r > 1 else np.full(t, np.nan)
    return ms_t, ms_r, ms_tr, ms_r_each


def _differences(modalities, modality_means, se, dist, alpha) -> pd.DataFrame:
    """Pairwise differences of modality means with SE, test and CI under a t or normal reference."""
    rows = []
    quantile = dist.ppf(1 - alpha / 2)
    for a, b in combinations(range(len(modalities)), 2):
        difference = modality_means[a] - modality_means[b]
        statistic = difference / se
        rows.append({"modality_a": modalities[a], "modality_b": modalities[b], "difference": difference,
                     "se": se, "statistic": statistic, "p": 2 * dist.sf(abs(statistic)),
                     "ci_low": difference - quantile * se, "ci_high": difference + quantile * se})
    return pd.DataFrame(rows)


def or_analysis_from_aucs(auc: np.ndarray, cov: ORCovariances, modalities=None, readers=None,
                          alpha: float = 0.05) -> ORResult:
    """Obuchowski-Rockette analyses from reader AUCs (modalities x readers) and OR covariances.

    Cov2 - Cov3 (and Cov2 alone for single-modality intervals) is truncated at zero, as Hillis
    (2007) prescribes. With one reader only the fixed-reader analysis is defined.
    Degenerate data (identical ratings in every modality, perfectly separating readers: a zero
    error term) give NaN statistics; a :class:`DegenerateDataWarning` and a note say why.
    """
    auc = np.asarray(auc, float)
    if auc.ndim != 2:
        raise DataError(f"reader AUCs must be a modalities x readers array, got shape {auc.shape}")
    t, r = auc.shape
    if len(cov.per_modality) != t or len(cov.per_reader) != r:
        raise DataError(f"AUCs of {t} modalities x {r} readers do not match covariances estimated for "
                        f"{len(cov.per_modality)} modalities x {len(cov.per_reader)} readers; "
                        "compute both from the same readings")
    for name, labels, size in (("modalities", modalities, t), ("readers", readers, r)):
        if labels is not None and len(labels) != size:
            raise DataError(f"{len(labels)} {name} labels for {size} {name} in the AUC array")
    if not np.isfinite(auc).all():
        raise DataError("reader AUCs hold NaN or infinite values; check the readings")
    with np.errstate(divide="ignore", invalid="ignore"):
        result = _or_analysis(auc, cov, modalities, readers, alpha)
    for test in (result.rrrc, result.frrc, result.rrfc):
        if test is not None and not np.isfinite(test.statistic):
            reason = _degenerate_reason(auc, test.analysis)
            result.notes.append(reason)
            warnings.warn(reason, DegenerateDataWarning, stacklevel=2)
    return result


def _degenerate_reason(auc: np.ndarray, analysis: str) -> str:
    """Why a test statistic of ``analysis`` is undefined for these reader AUCs."""
    if np.all(auc == 1.0) or np.all(auc == 0.0):
        why = (f"every reader separates the cases perfectly in every modality (all AUCs {auc.flat[0]:g}), "
               "so AUCs neither differ nor vary over cases")
    elif np.all(auc == auc[:1]):
        why = "every reader has the same AUC in every modality and its error variance is zero (identical ratings?)"
    else:
        why = "its error variance is zero (no case-to-case or reader-by-modality variation)"
    return (f"{analysis}: the statistic and p are undefined (NaN) because {why}; "
            "more cases, more readers or finer rating scales make it defined")


def _or_analysis(auc: np.ndarray, cov: ORCovariances, modalities, readers, alpha: float) -> ORResult:
    """The computation of :func:`or_analysis_from_aucs`."""
    t, r = auc.shape
    modalities = list(range(t)) if modalities is None else list(modalities)
    readers = list(range(r)) if readers is None else list(readers)
    if t < 2:
        raise DataError("an MRMC comparison needs at least two modalities")
    ms_t, ms_r, ms_tr, ms_r_each = _anova_ms(auc)
    means = auc.mean(axis=1)
    notes = []
    cov2_minus_cov3 = max(cov.cov2 - cov.cov3, 0.0)
    if cov.cov2 - cov.cov3 < 0:
        notes.append(f"Cov2 - Cov3 = {cov.cov2 - cov.cov3:.3g} < 0 was truncated at zero")
    normal = sps.norm

    # Analysis 2: fixed readers, random cases
    error_fr = cov.var - cov.cov1 + (r - 1) * cov2_minus_cov3
    x2 = (t - 1) * ms_t / error_fr
    se_modality_fr = np.sqrt((cov.per_modality["var"] + (r - 1) * cov.per_modality["cov2"].clip(lower=0)) / r)
    frrc = MRMCTest(
        "fixed readers, random cases", "X2", x2, t - 1, np.inf, float(sps.chi2.sf(x2, t - 1)),
        _differences(modalities, means, np.sqrt(2 / r * error_fr), normal, alpha),
        _modality_cis(modalities, means, se_modality_fr.to_numpy(), np.full(t, np.inf), alpha),
    )
    single_reader_rows = []
    for j, reader in enumerate(readers):
        se = np.sqrt(2 * (cov.per_reader["var"][j] - cov.per_reader["cov1"][j]))
        frame = _differences(modalities, auc[:, j], se, normal, alpha)
        frame.insert(0, "reader", reader)
        single_reader_rows.append(frame)
    single_reader = pd.concat(single_reader_rows, ignore_index=True)

    rrrc = rrfc = None
    if r < 2:
        notes.append("one reader: random-reader analyses need two readers or more; only fixed-reader results")
    else:
        # Analysis 1: random readers and cases, Hillis (2007) ddf_H
        error_rr = ms_tr + r * cov2_minus_cov3
        f_rr = ms_t / error_rr
        ddf = error_rr ** 2 / (ms_tr ** 2 / ((t - 1) * (r - 1)))
        cov2_each = cov.per_modality["cov2"].clip(lower=0).to_numpy()
        se_each = np.sqrt((ms_r_each + r * cov2_each) / r)
        df_each = (ms_r_each + r * cov2_each) ** 2 / (ms_r_each ** 2 / (r - 1))
        rrrc = MRMCTest(
            "random readers, random cases", "F", f_rr, t - 1, ddf, float(sps.f.sf(f_rr, t - 1, ddf)),
            _differences(modalities, means, np.sqrt(2 / r * error_rr), sps.t(ddf), alpha),
            _modality_cis(modalities, means, se_each, df_each, alpha),
        )
        # Analysis 3: random readers, fixed cases (conventional modality x reader ANOVA)
        df_tr = (t - 1) * (r - 1)
        f_fc = ms_t / ms_tr
        rrfc = MRMCTest(
            "random readers, fixed cases", "F", f_fc, t - 1, df_tr, float(sps.f.sf(f_fc, t - 1, df_tr)),
            _differences(modalities, means, np.sqrt(2 / r * ms_tr), sps.t(df_tr), alpha),
            _modality_cis(modalities, means, np.sqrt(ms_r_each / r), np.full(t, r - 1.0), alpha),
        )
    auc_table = pd.DataFrame(auc, index=pd.Index(modalities, name="modality"),
                             columns=pd.Index(readers, name="reader"))
    return ORResult(auc_table, ms_t, ms_r, ms_tr, cov, rrrc, frrc, rrfc, single_reader, notes)


def _modality_cis(modalities, means, se, df, alpha) -> pd.DataFrame:
    """Per-modality AUC confidence intervals (t with df, or normal where df is infinite)."""
    quantile = np.array([sps.norm.ppf(1 - alpha / 2) if np.isinf(d) else sps.t.ppf(1 - alpha / 2, d) for d in df])
    return pd.DataFrame({"modality": modalities, "auc": means, "se": se, "df": df,
                         "ci_low": means - quantile * se, "ci_high": means + quantile * se})


def or_analysis(readings: pd.DataFrame, alpha: float = 0.05) -> ORResult:
    """Obuchowski-Rockette MRMC analysis of a long readings table (trapezoidal AUC, jackknife)."""
    jk = jackknife_aucs(readings)
    return or_analysis_from_aucs(jk.auc, or_covariances(jk.auc_leave_one_out), jk.modalities, jk.readers, alpha)


@dataclass(frozen=True)
class DBMResult:
    """Dorfman-Berbaum-Metz ANOVA of jackknife pseudovalues, random readers and cases (Hillis ddf)."""

    ms: dict
    F: float
    df_num: float
    ddf: float
    p: float
    notes: list = field(default_factory=list)


def dbm_analysis(readings: pd.DataFrame) -> DBMResult:
    """DBM analysis: modality x reader x case ANOVA of AUC pseudovalues (a cross-check of OR)."""
    jk = jackknife_aucs(readings)
    n_cases = jk.auc_leave_one_out.shape[-1]
    pseudo = n_cases * jk.auc[..., None] - (n_cases - 1) * jk.auc_leave_one_out
    t, r, c = pseudo.shape
    if r < 2:
        raise DataError("DBM's random-reader analysis needs two readers or more")
    grand = pseudo.mean()
    m_t, m_r, m_c = pseudo.mean(axis=(1, 2)), pseudo.mean(axis=(0, 2)), pseudo.mean(axis=(0, 1))
    m_tr, m_tc, m_rc = pseudo.mean(axis=2), pseudo.mean(axis=1), pseudo.mean(axis=0)
    ms = {
        "T": r * c * ((m_t - grand) ** 2).sum() / (t - 1),
        "TR": c * ((m_tr - m_t[:, None] - m_r[None, :] + grand) ** 2).sum() / ((t - 1) * (r - 1)),
        "TC": r * ((m_tc - m_t[:, None] - m_c[None, :] + grand) ** 2).sum() / ((t - 1) * (c - 1)),
    }
    residual = (pseudo - m_tr[..., None] - m_tc[:, None, :] - m_rc[None, ...]
                + m_t[:, None, None] + m_r[None, :, None] + m_c[None, None, :] - grand)
    ms["TRC"] = (residual ** 2).sum() / ((t - 1) * (r - 1) * (c - 1))
    error = ms["TR"] + max(ms["TC"] - ms["TRC"], 0.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        f_value = ms["T"] / error
        ddf = error ** 2 / (ms["TR"] ** 2 / ((t - 1) * (r - 1)))
    notes = []
    if not np.isfinite(f_value):
        notes.append(_degenerate_reason(jk.auc, "DBM random readers, random cases"))
        warnings.warn(notes[-1], DegenerateDataWarning, stacklevel=2)
    return DBMResult({k: float(v) for k, v in ms.items()}, float(f_value), t - 1, float(ddf),
                     float(sps.f.sf(f_value, t - 1, ddf)), notes)


def or_summary(result: ORResult) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Tidy tables of an OR result: global tests, pairwise differences, per-modality CIs (all analyses)."""
    tests, differences, cis = [], [], []
    for test in (result.rrrc, result.frrc, result.rrfc):
        if test is None:
            continue
        tests.append({"analysis": test.analysis, "statistic": test.statistic_name, "value": test.statistic,
                      "df_num": test.df_num, "df_den": test.df_den, "p": test.p})
        differences.append(test.differences.assign(analysis=test.analysis))
        cis.append(test.modality_cis.assign(analysis=test.analysis))
    return pd.DataFrame(tests), pd.concat(differences, ignore_index=True), pd.concat(cis, ignore_index=True)
