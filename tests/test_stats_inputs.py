"""xrlib.stats refuses inputs that would give silently wrong numbers, and says why a statistic is undefined."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest

from xrlib.errors import DataError, DegenerateDataWarning
from xrlib.stats import (
    cohen_kappa, dbm_analysis, fleiss_kappa, friedman_test, icc, jackknife_aucs, mcnemar_test, or_analysis,
    or_analysis_from_aucs, or_covariances, proportion_table, proportional_odds, trapezoidal_auc, vgc_auc,
    vgc_curve, wilcoxon_signed_rank, wilson_interval,
)


# --- McNemar and proportions: yes/no answers only ------------------------------------------------

@pytest.mark.parametrize("bad", [[1, 0, np.nan], [1, 0, 2], ["yes", "no", "no"], [0.5, 1, 0]])
def test_mcnemar_refuses_values_that_are_not_yes_no(bad):
    with pytest.raises(DataError, match="0/1 or True/False"):
        mcnemar_test(bad, [1, 0, 1])


def test_mcnemar_refuses_empty_input_and_accepts_booleans_and_object_integers():
    with pytest.raises(DataError, match="no answers"):
        mcnemar_test([], [])
    as_bool = mcnemar_test([True] * 10 + [False] * 2, [False] * 10 + [True] * 2)
    as_objects = mcnemar_test(pd.Series([1] * 10 + [0] * 2, dtype=object), np.array([0.0] * 10 + [1.0] * 2))
    assert as_bool.p == as_objects.p and as_bool.n_pairs == 12


def test_proportion_table_refuses_non_yes_no_answers():
    answers = pd.DataFrame({"condition": ["a", "a", "b"], "yes": [1, 2, 0]})
    with pytest.raises(DataError, match="column 'yes'.*found \\[2\\]"):
        proportion_table(answers, ["condition"], "yes")


def test_wilson_interval_refuses_fractional_counts():
    with pytest.raises(DataError, match="whole numbers"):
        wilson_interval(2.5, 10)
    with pytest.raises(DataError, match="whole numbers"):
        wilson_interval(np.nan, 10)
    assert wilson_interval(3.0, 10) == wilson_interval(3, 10)


# --- paired ratings: no empty input, no NaN ---------------------------------------------------------

def test_wilcoxon_refuses_empty_and_nan():
    with pytest.raises(DataError, match="no ratings"):
        wilcoxon_signed_rank([], [])
    with pytest.raises(DataError, match="NaN or infinite"):
        wilcoxon_signed_rank([1, 2, np.nan], [1, 1, 1])
    with pytest.raises(DataError, match="NaN or infinite"):
        friedman_test([[1, 2, 3], [1, np.nan, 3]])


def test_vgc_and_trapezoidal_auc_refuse_nan():
    with pytest.raises(DataError, match="NaN"):
        vgc_auc([1, 2, np.nan], [3, 4, 5])
    with pytest.raises(DataError, match="NaN"):
        trapezoidal_auc([1, 2], [np.nan, 3])
    with pytest.raises(DataError, match="NaN"):
        vgc_curve([1, np.nan], [2, 3])
    assert vgc_auc([1, 2], [2, 3]) == pytest.approx(0.875)


# --- agreement --------------------------------------------------------------------------------------

def test_weighted_kappa_of_text_labels_needs_their_order():
    a = ["low", "mid", "high", "mid", "low", "high"]
    b = ["low", "high", "high", "mid", "mid", "high"]
    with pytest.raises(DataError, match="needs their order"):
        cohen_kappa(a, b, "linear")
    ordered = cohen_kappa(a, b, "linear", categories=["low", "mid", "high"])
    numeric = cohen_kappa([{"low": 1, "mid": 2, "high": 3}[v] for v in a],
                          [{"low": 1, "mid": 2, "high": 3}[v] for v in b], "linear")
    assert ordered.kappa == pytest.approx(numeric.kappa)
    as_categorical = pd.Categorical(a, ["low", "mid", "high"], ordered=True)
    assert cohen_kappa(as_categorical, b, "linear").kappa == pytest.approx(numeric.kappa)
    # the alphabetical order (high < low < mid) would give another value: the order matters here
    assert cohen_kappa(a, b, "linear", categories=["high", "low", "mid"]).kappa != pytest.approx(numeric.kappa)
    assert cohen_kappa(a, b).kappa == pytest.approx(cohen_kappa(a, b, categories=["low", "mid", "high"]).kappa)


def test_cohen_kappa_of_no_pairs_is_a_clear_error():
    with pytest.raises(DataError, match="no subject was rated by both raters"):
        cohen_kappa([], [])
    with pytest.raises(DataError, match="no subject was rated by both raters"):
        cohen_kappa([1, np.nan], [np.nan, 2])


@pytest.mark.parametrize("counts,match", [
    ([[3, -1], [1, 1]], "whole numbers >= 0"),
    ([[1.5, 0.5], [1, 1]], "whole numbers >= 0"),
    (np.zeros((0, 3)), "at least one subject"),
    ([[2], [2]], "two categories"),
    ([[1, 0], [0, 1]], "at least two ratings per subject"),
])
def test_fleiss_kappa_refuses_impossible_count_tables(counts, match):
    with pytest.raises(DataError, match=match):
        fleiss_kappa(counts=counts)


def test_fleiss_kappa_of_no_ratings_is_a_clear_error():
    with pytest.raises(DataError, match="no ratings"):
        fleiss_kappa(np.empty((0, 3)))
    with pytest.raises(DataError, match="every rating is missing"):
        fleiss_kappa(np.full((2, 3), np.nan))


def test_icc_confidence_intervals_are_ordered():
    # ICC2's lower bound (-0.394) lies below -1/(k-1) = -1/3, the pole of the step-up to k judges:
    # it gave ICC2k a lower bound of 8.67 above its upper one; it is unbounded below instead
    table = icc([[5, 1, 3, 3], [4, 1, 3, 2], [2, 5, 4, 1]]).set_index("form")
    assert table.loc["ICC2", "ci_low"] == pytest.approx(-0.393939, abs=1e-6)
    assert table.loc["ICC2k", "ci_low"] == -np.inf and table.loc["ICC2k", "ci_high"] == pytest.approx(0.786882, abs=1e-6)
    rng = np.random.default_rng(4)
    for _ in range(200):
        n, k = rng.integers(2, 6), rng.integers(2, 5)
        ratings = rng.integers(1, 6, size=(n, k)).astype(float)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DegenerateDataWarning)
            table = icc(ratings)
        finite = table.dropna(subset=["ci_low", "ci_high"])
        assert (finite["ci_low"] <= finite["ci_high"] + 1e-12).all(), (ratings, table)


# --- ordinal model ------------------------------------------------------------------------------------

def _realism_table():
    rng = np.random.default_rng(0)
    condition = np.repeat(["raw", "restored"], 40)
    score = rng.integers(0, 3, 80) + (condition == "restored") * rng.integers(0, 2, 80)
    labels = np.array(["low", "mid", "high", "high"])[score]
    return pd.DataFrame({"condition": condition, "realism": labels})


def test_proportional_odds_refuses_unordered_text_outcome():
    frame = _realism_table()
    with pytest.raises(DataError, match="unordered labels"):
        proportional_odds(frame, "realism", ["condition"])
    with pytest.raises(DataError, match="unordered labels"):
        proportional_odds(frame.assign(realism=pd.Categorical(frame.realism)), "realism", ["condition"])
    with pytest.raises(DataError, match="not in order"):
        proportional_odds(frame, "realism", ["condition"], order=["low", "high"])
    with_order = proportional_odds(frame, "realism", ["condition"], order=["low", "mid", "high"])
    numeric = proportional_odds(frame.assign(realism=frame.realism.map({"low": 1, "mid": 2, "high": 3})),
                                "realism", ["condition"])
    ordered = proportional_odds(frame.assign(realism=pd.Categorical(frame.realism, ["low", "mid", "high"], ordered=True)),
                                "realism", ["condition"])
    assert with_order.params.iloc[0] == pytest.approx(numeric.params.iloc[0], abs=1e-6)
    assert ordered.params.iloc[0] == pytest.approx(numeric.params.iloc[0], abs=1e-6)
    assert numeric.params.iloc[0] > 0  # restored images are rated more realistic


# --- MRMC ---------------------------------------------------------------------------------------------

def _readings(rating_of):
    """Two modalities x three readers x 8 cases (4 absent, 4 present); rating_of(modality, reader, case, truth)."""
    rows = []
    truth = [0, 0, 0, 0, 1, 1, 1, 1]
    for modality in ("a", "b"):
        for reader in (1, 2, 3):
            for case, t in enumerate(truth):
                rows.append((reader, modality, case, t, rating_of(modality, reader, case, t)))
    return pd.DataFrame(rows, columns=["reader", "modality", "case", "truth", "rating"])


def test_or_and_dbm_with_perfectly_separating_readers_say_why_f_is_nan():
    readings = _readings(lambda modality, reader, case, truth: 1 + 4 * truth)
    with pytest.warns(DegenerateDataWarning, match="separates the cases perfectly"):
        result = or_analysis(readings)
    assert np.isnan(result.rrrc.statistic) and np.isnan(result.rrrc.p)
    assert any("undefined (NaN)" in note for note in result.notes)
    with pytest.warns(DegenerateDataWarning, match="separates the cases perfectly"):
        dbm = dbm_analysis(readings)
    assert np.isnan(dbm.F) and dbm.notes


def test_or_with_identical_ratings_in_both_modalities_says_why():
    readings = _readings(lambda modality, reader, case, truth: [1, 2, 3, 4, 2, 3, 4, 5][case])
    with pytest.warns(DegenerateDataWarning, match="same AUC in every modality"):
        result = or_analysis(readings)
    assert np.isnan(result.frrc.statistic)


def test_or_on_informative_readings_warns_nothing():
    rng = np.random.default_rng(1)
    readings = _readings(lambda modality, reader, case, truth: int(rng.integers(1, 4)) + 2 * truth)
    with warnings.catch_warnings():
        warnings.simplefilter("error", DegenerateDataWarning)
        result = or_analysis(readings)
    assert np.isfinite(result.frrc.statistic) and not any("NaN" in note for note in result.notes)


def test_or_analysis_from_aucs_refuses_mismatched_shapes():
    rng = np.random.default_rng(2)
    readings = _readings(lambda modality, reader, case, truth: int(rng.integers(1, 4)) + 2 * truth)
    jk = jackknife_aucs(readings)
    cov = or_covariances(jk.auc_leave_one_out)
    with pytest.raises(DataError, match="do not match covariances"):
        or_analysis_from_aucs(np.c_[jk.auc, jk.auc[:, :1]], cov)
    with pytest.raises(DataError, match="modalities x readers"):
        or_analysis_from_aucs(jk.auc.ravel(), cov)
    with pytest.raises(DataError, match="labels"):
        or_analysis_from_aucs(jk.auc, cov, readers=["only one"])
