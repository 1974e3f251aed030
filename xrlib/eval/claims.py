"""Which of the paper's claims does this run support? Each claim with its evidence, interval, test and verdict.

The claims of DiffusionXRay (Goyal et al.; :data:`xrlib.paper.PUBLISHED_CITATION`) and how each is
measured here, from 06_metrics' own tables:

1-4. **DiffusionXRay beats the bicubic-trained DDPM** on MUNIT-LQ and on DDPM-LQ inputs, in PSNR and
     in SSIM: the mean paired difference (DiffusionXRay minus baseline, per image) with a bootstrap
     interval resampling held-out units, and the Holm-adjusted paired Wilcoxon p over units (06's
     paired tests). Supported when the difference is positive with p < ``alpha``. Where the paper
     itself reports a tie (DDPM-LQ SSIM, 0.78 both) the claim is "matches or beats": supported
     unless the baseline scores significantly higher.
5.   **Nodules stay visible**: the fraction of nodules of at least ``min_nodule_diameter_mm`` that
     restoration kept (:class:`xrlib.eval.nodules.LostRule`), with a Wilson interval. Supported
     when it reaches ``min_nodules_kept_fraction``.
6.   **Lung fields clearer**: restored DRRs nearer real X-rays than the raw DRRs in radial power
     spectrum (per image, paired by DRR, Wilcoxon signed-rank). Supported when the median distance
     falls with p < ``alpha``.
7.   **A mild noise increase** (the paper's stated limitation): the restored DRRs' noise standard
     deviation over the raw DRRs' (per image, flat regions), paired Wilcoxon. Supported (the
     limitation is reproduced) when noise rises significantly by at most ``max_mild_noise_ratio``.

A verdict is ``supported``, ``not supported``, or ``not measurable at this scale`` when the run
cannot decide: too few held-out units for the test to reach ``alpha`` at all (the exact Wilcoxon's
smallest p, 2 / 2^n, Holm-multiplied), a hold-out of image tiles of one patient rather than of
patients, too few nodules or images, or a comparison the run did not make. Each says why.
:func:`write_claims` writes ``paper/claims.md`` and a DVC metrics JSON.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterable, Mapping

import numpy as np
import pandas as pd

from xrlib.errors import DataError
from xrlib.eval.checks import MethodCriteria
from xrlib.io import write_json_atomic, write_text_atomic
from xrlib.paper import DEGRADATION_LABELS, PUBLISHED_CITATION, published_table
from xrlib.stats.paired import wilcoxon_signed_rank, wilson_interval
from xrlib.stats.units import statistical_unit, unit_bootstrap_ci

SUPPORTED, NOT_SUPPORTED, NOT_MEASURABLE = "supported", "not supported", "not measurable at this scale"
VERDICTS = (SUPPORTED, NOT_SUPPORTED, NOT_MEASURABLE)
CLAIM_COLUMNS = ("claim_id", "claim", "measure", "value", "ci_low", "ci_high", "test", "p", "n", "verdict", "why")
METRIC_NAMES = {"psnr_db": "PSNR", "ssim": "SSIM"}


@dataclass(frozen=True)
class ClaimCriteria:
    """The bars of the verdicts (the shared ones are :class:`xrlib.eval.checks.MethodCriteria`'s)."""

    alpha: float = MethodCriteria.alpha
    confidence: float = 0.95
    bootstrap_resamples: int = 2000
    seed: int = 0
    min_nodule_diameter_mm: float = MethodCriteria.min_nodule_diameter_mm
    min_nodules_kept_fraction: float = MethodCriteria.min_nodules_kept_fraction
    min_nodules: int = 5
    max_mild_noise_ratio: float = 1.5
    patients_required: bool = True
    """A hold-out of image tiles (one patient) cannot support a claim about new patients."""


def _row(claim_id: str, claim: str, measure: str, verdict: str, why: str, value: float = math.nan,
         ci: tuple[float, float] = (math.nan, math.nan), test: str = "", p: float = math.nan, n: int = 0) -> dict:
    return {"claim_id": claim_id, "claim": claim, "measure": measure, "value": float(value), "ci_low": float(ci[0]),
            "ci_high": float(ci[1]), "test": test, "p": float(p), "n": int(n), "verdict": verdict, "why": why}


def smallest_wilcoxon_p(n: int, n_tests: int = 1) -> float:
    """The smallest two-sided exact Wilcoxon signed-rank p with ``n`` pairs, Holm-multiplied by ``n_tests``."""
    return min(1.0, n_tests * 2.0 ** (1 - n)) if n > 0 else 1.0


def _paired_image_differences(quality: pd.DataFrame, degradation: str, metric: str, method: str,
                              baseline: str) -> tuple[np.ndarray, list[str]]:
    """Per image scored by both: ``method`` minus ``baseline`` in ``metric``, with each image's unit."""
    unit_column, _ = statistical_unit(quality)
    rows = quality[quality.degradation == degradation]
    wide = rows.pivot_table(index=[unit_column, "image_id"], columns="method", values=metric)
    if method not in wide or baseline not in wide:
        return np.array([]), []
    both = wide[[method, baseline]].dropna()
    return (both[method] - both[baseline]).to_numpy(), [str(u) for u in both.index.get_level_values(0)]


def quality_claims(paired_tests: pd.DataFrame, quality: pd.DataFrame | None = None, method: str = "diffusionxray",
                   baseline: str = "bicubic_baseline", criteria: ClaimCriteria = ClaimCriteria()) -> list[dict]:
    """Claims 1-4 from 06's paired tests (and its per-image table, for the interval of the difference)."""
    required = ("degradation", "metric", "method_a", "method_b", "mean_difference", "wilcoxon_p_holm", "n_units", "split_unit")
    missing = sorted(set(required) - set(paired_tests.columns))
    if missing:
        raise DataError(f"the paired tests lack columns {missing}; 06_metrics writes them")
    n_tests = int(paired_tests["wilcoxon_p_holm"].notna().sum())
    published = published_table().set_index(["degradation", "method"])
    rows = []
    for degradation in ("munit", "ddpm"):
        for metric in ("psnr_db", "ssim"):
            name = f"{DEGRADATION_LABELS[degradation]}, {METRIC_NAMES[metric]}"
            ours, theirs = published.loc[(degradation, method), metric], published.loc[(degradation, baseline), metric]
            tie = bool(np.isclose(ours, theirs))  # the paper's DDPM-LQ SSIM: 0.78 both
            claim = (f"DiffusionXRay {'matches or beats' if tie else 'beats'} the bicubic-trained DDPM on "
                     f"{DEGRADATION_LABELS[degradation]} inputs in {METRIC_NAMES[metric]} (paper: {ours:g} vs {theirs:g})")
            claim_id = f"beats_bicubic_{degradation}_{metric}"
            measure = f"mean paired difference in {METRIC_NAMES[metric]}, DiffusionXRay minus baseline"
            found = paired_tests[(paired_tests.degradation == degradation) & (paired_tests.metric == metric)
                                 & (paired_tests.method_a == method) & (paired_tests.method_b == baseline)]
            if found.empty:
                rows.append(_row(claim_id, claim, measure, NOT_MEASURABLE,
                                 f"the run made no paired test of {method} vs {baseline} on {name} (metrics.comparisons, "
                                 "metrics.degradations)"))
                continue
            test = found.iloc[0]
            n, p, difference = int(test.n_units), float(test.wilcoxon_p_holm), float(test.mean_difference)
            ci = (math.nan, math.nan)
            if quality is not None:
                values, units = _paired_image_differences(quality, degradation, metric, method, baseline)
                if len(values):
                    interval = unit_bootstrap_ci(values, units, criteria.bootstrap_resamples, criteria.confidence, criteria.seed)
                    ci = (interval.ci_low, interval.ci_high)
            label = f"paired Wilcoxon over {n} held-out {test.split_unit}s, Holm-adjusted over {n_tests} tests"
            floor = smallest_wilcoxon_p(n, n_tests)
            if criteria.patients_required and test.split_unit != "patient":
                verdict, why = NOT_MEASURABLE, (f"the held-out units are image {test.split_unit}s of the training patients, "
                                                "not new patients (the data hold too few patients to hold any out)")
            elif floor >= criteria.alpha or math.isnan(p):
                verdict, why = NOT_MEASURABLE, (f"with {n} units the smallest reachable Holm-adjusted p is {floor:.3g}, "
                                                f"not below alpha = {criteria.alpha}: more held-out units are needed")
            elif difference > 0 and p < criteria.alpha:
                verdict, why = SUPPORTED, f"higher by {difference:.3g} with p = {p:.3g} < {criteria.alpha}"
            elif difference <= 0 and p < criteria.alpha:
                verdict, why = NOT_SUPPORTED, f"the baseline scores higher (by {-difference:.3g}, p = {p:.3g})"
            elif tie:
                verdict, why = SUPPORTED, (f"not significantly lower (difference {difference:+.3g}, p = {p:.3g}): a tie, "
                                           "as the paper reports")
            else:
                verdict, why = NOT_SUPPORTED, f"no significant difference (difference {difference:+.3g}, p = {p:.3g} >= {criteria.alpha})"
            rows.append(_row(claim_id, claim, measure, verdict, why, difference, ci, label, p, n))
    return rows


def nodule_claim(nodules: pd.DataFrame, criteria: ClaimCriteria = ClaimCriteria()) -> list[dict]:
    """Claim 5 from 06's nodule preservation table (one row per inserted nodule, ``diameter_mm`` and ``lost``)."""
    missing = sorted({"diameter_mm", "lost"} - set(nodules.columns))
    if missing:
        raise DataError(f"the nodule preservation table lacks columns {missing}; 06_metrics writes them")
    large = nodules[nodules.diameter_mm >= criteria.min_nodule_diameter_mm]
    claim = "Inserted nodules stay visible after restoration"
    measure = f"fraction of nodules >= {criteria.min_nodule_diameter_mm:g} mm kept (contrast, signal and its position, LostRule)"
    n = len(large)
    if n < criteria.min_nodules:
        return [_row("nodules_kept", claim, measure, NOT_MEASURABLE,
                     f"{n} nodules of at least {criteria.min_nodule_diameter_mm:g} mm; at least {criteria.min_nodules} are needed", n=n)]
    kept = int((~large.lost.astype(bool)).sum())
    fraction = kept / n
    ci = wilson_interval(kept, n, 1.0 - criteria.confidence)
    passed = fraction >= criteria.min_nodules_kept_fraction
    why = (f"{kept} of {n} kept, {'at or above' if passed else 'below'} the bar of {criteria.min_nodules_kept_fraction:g}")
    return [_row("nodules_kept", claim, measure, SUPPORTED if passed else NOT_SUPPORTED, why, fraction, ci,
                 f"proportion with a Wilson {criteria.confidence:.0%} interval", n=n)]


def _paired_realism(realism: pd.DataFrame, column: str, restored: str, raw: str) -> pd.DataFrame:
    missing = sorted({"set", "image_index", column} - set(realism.columns))
    if missing:
        raise DataError(f"the realism table lacks columns {missing}; 06_metrics writes them")
    wide = realism[realism.set.isin([restored, raw])].pivot_table(index="image_index", columns="set", values=column)
    if restored not in wide or raw not in wide:
        return pd.DataFrame(columns=[raw, restored])
    return wide[[raw, restored]].dropna()


def _ratio_claim(realism: pd.DataFrame, column: str, claim_id: str, claim: str, measure: str, restored: str, raw: str,
                 criteria: ClaimCriteria, judge) -> list[dict]:
    """A claim on the per-image ratio ``column`` restored / raw (paired by image), its median, bootstrap interval and
    Wilcoxon p; ``judge(ratio, p)`` gives (verdict, why). Not measurable when too few images pair for p < alpha."""
    pairs = _paired_realism(realism, column, restored, raw)
    n = len(pairs)
    if smallest_wilcoxon_p(n) >= criteria.alpha:
        return [_row(claim_id, claim, measure, NOT_MEASURABLE,
                     f"{n} paired images ({raw}, {restored}); a Wilcoxon test needs at least "
                     f"{int(math.floor(1 - math.log2(criteria.alpha))) + 1} to reach p < {criteria.alpha}", n=n)]
    p = wilcoxon_signed_rank(pairs[restored], pairs[raw]).p
    ratios = (pairs[restored] / pairs[raw]).to_numpy()
    ratio = float(np.median(ratios))
    verdict, why = judge(ratio, p)
    return [_row(claim_id, claim, measure, verdict, why, ratio, _median_ci(ratios, criteria),
                 "paired Wilcoxon signed-rank over DRRs", p, n)]


def lung_field_claim(realism: pd.DataFrame, restored: str = "restored_drr", raw: str = "drr",
                     criteria: ClaimCriteria = ClaimCriteria()) -> list[dict]:
    """Claim 6 from 06's per-image realism table: spectrum distance to real X-rays, restored vs raw DRR."""

    def judge(ratio: float, p: float) -> tuple[str, str]:
        if ratio < 1 and p < criteria.alpha:
            return SUPPORTED, f"spectrum distance falls to {ratio:.2f} of the raw DRRs' (p = {p:.3g})"
        return NOT_SUPPORTED, (f"spectrum distance {'falls' if ratio < 1 else 'rises'} to {ratio:.2f} of the raw DRRs' "
                               f"(p = {p:.3g}{'' if p < criteria.alpha else f' >= {criteria.alpha}'})")

    return _ratio_claim(realism, "spectrum_distance", "lung_fields_clearer",
                        "Lung fields are clearer after restoration (fine texture nearer real X-rays)",
                        "median ratio of each restored DRR's spectrum distance to real X-rays over its raw DRR's",
                        restored, raw, criteria, judge)


def noise_claim(realism: pd.DataFrame, restored: str = "restored_drr", raw: str = "drr",
                criteria: ClaimCriteria = ClaimCriteria()) -> list[dict]:
    """Claim 7 (the paper's limitation) from 06's per-image realism table: noise std, restored vs raw DRR."""
    mild = criteria.max_mild_noise_ratio

    def judge(ratio: float, p: float) -> tuple[str, str]:
        if ratio > 1 and p < criteria.alpha and ratio <= mild:
            return SUPPORTED, f"noise rises to {ratio:.2f} times the raw DRRs' (p = {p:.3g}), within the mild bar {mild:g}"
        if ratio > mild and p < criteria.alpha:
            return NOT_SUPPORTED, f"noise rises to {ratio:.2f} times the raw DRRs', more than mild (> {mild:g})"
        return NOT_SUPPORTED, f"no significant noise increase (ratio {ratio:.2f}, p = {p:.3g})"

    return _ratio_claim(realism, "noise_std", "mild_noise_increase",
                        "Restoration adds mild noise (the limitation the paper reports)",
                        "median ratio of each restored DRR's noise std (flat regions) over its raw DRR's",
                        restored, raw, criteria, judge)


def _median_ci(values: np.ndarray, criteria: ClaimCriteria) -> tuple[float, float]:
    """Percentile bootstrap interval of the median of ``values`` (images resampled)."""
    rng = np.random.default_rng(criteria.seed)
    medians = np.median(rng.choice(values, size=(criteria.bootstrap_resamples, len(values)), replace=True), axis=1)
    half = (1.0 - criteria.confidence) / 2.0
    low, high = np.quantile(medians, [half, 1.0 - half])
    return float(low), float(high)


def claims_table(*groups: Iterable[dict]) -> pd.DataFrame:
    """One table of every claim row (columns :data:`CLAIM_COLUMNS`)."""
    return pd.DataFrame([row for group in groups for row in group], columns=list(CLAIM_COLUMNS))


def claims_from_tables(folder: str | Path, criteria: ClaimCriteria = ClaimCriteria()) -> pd.DataFrame:
    """Every claim from the tables 06_metrics wrote in ``folder`` (paired_tests, image_quality, nodules, realism)."""
    folder = Path(folder)

    def table(name: str) -> pd.DataFrame:
        path = folder / f"{name}.csv"
        if not path.is_file():
            raise DataError(f"{path}: missing; run 06_metrics first (dvc repro 06_metrics)")
        return pd.read_csv(path, dtype={"unit_id": str, "patient_id": str, "image_id": str})

    realism = table("realism")
    return claims_table(quality_claims(table("paired_tests"), table("image_quality"), criteria=criteria),
                        nodule_claim(table("nodules"), criteria), lung_field_claim(realism, criteria=criteria),
                        noise_claim(realism, criteria=criteria))


def _number(value: float, digits: int = 3) -> str:
    return "--" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}g}"


def claims_markdown(claims: pd.DataFrame, criteria: ClaimCriteria = ClaimCriteria(), sources: str = "") -> str:
    """``paper/claims.md``: a summary count, then each claim with its evidence, interval, test and verdict."""
    counts = claims.verdict.value_counts()
    lines = ["# The paper's claims, measured by this run", "",
             f"Claims of {PUBLISHED_CITATION}", "",
             f"Written by 08_figures (`xrlib.eval.claims`) from this run's own metrics{sources}. Intervals are "
             f"{criteria.confidence:.0%}; alpha = {criteria.alpha}.", "",
             "**" + "; ".join(f"{int(counts.get(v, 0))} {v}" for v in VERDICTS) + "**", "",
             "| claim | measured | value | interval | test | p | n | verdict |", "|---|---|---|---|---|---|---|---|"]
    for row in claims.itertuples():
        interval = "--" if math.isnan(row.ci_low) else f"[{_number(row.ci_low)}, {_number(row.ci_high)}]"
        lines.append(f"| {row.claim} | {row.measure} | {_number(row.value)} | {interval} | {row.test or '--'} | "
                     f"{_number(row.p)} | {row.n} | **{row.verdict}**: {row.why} |")
    return "\n".join(lines) + "\n"


def claims_metrics(claims: pd.DataFrame, criteria: ClaimCriteria = ClaimCriteria()) -> dict:
    """The DVC metrics: counts per verdict and each claim's value, interval, p and verdict."""
    counts = claims.verdict.value_counts()

    def finite(value: float) -> float | None:
        return None if math.isnan(value) else float(value)

    return {"supported": int(counts.get(SUPPORTED, 0)), "not_supported": int(counts.get(NOT_SUPPORTED, 0)),
            "not_measurable": int(counts.get(NOT_MEASURABLE, 0)), "criteria": asdict(criteria),
            "claims": {row.claim_id: {"verdict": row.verdict, "value": finite(row.value), "ci_low": finite(row.ci_low),
                                      "ci_high": finite(row.ci_high), "p": finite(row.p), "n": int(row.n), "why": row.why}
                       for row in claims.itertuples()}}


def write_claims(claims: pd.DataFrame, markdown_path: str | Path, metrics_path: str | Path,
                 criteria: ClaimCriteria = ClaimCriteria(), sources: str = "") -> Mapping[str, Path]:
    """Write ``paper/claims.md`` and the metrics JSON (atomically); return their paths."""
    write_text_atomic(markdown_path, claims_markdown(claims, criteria, sources))
    write_json_atomic(metrics_path, claims_metrics(claims, criteria))
    return {"markdown": Path(markdown_path), "metrics": Path(metrics_path)}
