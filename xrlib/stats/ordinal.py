"""Proportional-odds (ordinal logistic) regression of ratings, through statsmodels' OrderedModel.

Used for the 5-point realism ratings: ``rating ~ condition`` with readers as covariates gives the
odds ratio of a higher rating for one condition over another, all thresholds sharing one slope.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from statsmodels.miscmodels.ordinal_model import OrderedModel

from xrlib.errors import DataError


def proportional_odds(frame: pd.DataFrame, outcome: str, predictors: list[str], link: str = "logit",
                      order: list | None = None):
    """Fit a proportional-odds model of the ordered ``outcome`` on ``predictors``.

    The outcome's order comes from ``order`` (lowest first), else from an ordered pandas
    Categorical, else from its numbers; text labels without an order are refused (sorting them
    would rank "high" < "low" < "mid"). Categorical predictors are dummy-coded (first level
    dropped, no intercept: the thresholds take its place). Returns the statsmodels results;
    ``params`` hold the slopes then the threshold parameters (statsmodels' increments; use
    ``model.transform_threshold_params``).
    """
    if link not in ("logit", "probit"):
        raise DataError(f"link '{link}' unknown; use 'logit' or 'probit'")
    missing = [c for c in [outcome, *predictors] if c not in frame.columns]
    if missing:
        raise DataError(f"ratings table lacks columns {missing}")
    data = frame.dropna(subset=[outcome, *predictors])
    endog = _ordered_outcome(data[outcome], outcome, order)
    if endog.nunique() < 2:
        raise DataError(f"'{outcome}' takes a single value; an ordinal model needs two levels or more")
    exog = pd.get_dummies(data[predictors], drop_first=True, dtype=float)
    model = OrderedModel(endog, exog, distr=link)
    return model.fit(method="bfgs", disp=False, maxiter=2000, gtol=1e-8)


def _ordered_outcome(values: pd.Series, outcome: str, order: list | None) -> pd.Series:
    """``values`` as an ordered Categorical, its order from ``order``, the dtype, or numbers."""
    dtype = values.dtype
    if order is None and isinstance(dtype, pd.CategoricalDtype) and dtype.ordered:
        return values
    if order is None:
        if isinstance(dtype, pd.CategoricalDtype) or not pd.api.types.is_numeric_dtype(dtype):
            raise DataError(f"'{outcome}' holds unordered labels {sorted(map(str, values.unique()))[:6]}; pass "
                            "order=[lowest, ..., highest] or make it an ordered pandas Categorical")
        order = sorted(values.unique())
    unknown = set(values.unique()) - set(order)
    if unknown:
        raise DataError(f"'{outcome}' values {sorted(map(str, unknown))} are not in order={list(order)}")
    return pd.Series(pd.Categorical(values, categories=list(order), ordered=True), index=values.index)


def odds_ratios(result, alpha: float = 0.05) -> pd.DataFrame:
    """Odds ratios with CIs for the slopes of a fitted proportional-odds logit model."""
    n_slopes = result.model.exog.shape[1]
    params = result.params.iloc[:n_slopes]
    ci = result.conf_int(alpha=alpha).iloc[:n_slopes]
    return pd.DataFrame({"log_odds": params, "odds_ratio": np.exp(params),
                         "ci_low": np.exp(ci.iloc[:, 0]), "ci_high": np.exp(ci.iloc[:, 1]),
                         "p": result.pvalues.iloc[:n_slopes]})
