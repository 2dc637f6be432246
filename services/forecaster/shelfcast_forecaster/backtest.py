"""Rolling-origin backtest in the shape of Nixtla's ``cross_validation``, with per-demand-class model selection.

Each window trains on the rows up to its cutoff and forecasts the next ``h`` periods with every forecaster, plus
two selections made on the training part only, from each forecaster's forecasts of an inner validation window
(the last ``h`` periods of the training part, forecast from the rows before it):

- Every forecaster is scored per demand class on both metrics the backtest reports: the class means of scaled
  pinball loss and of RMSSE. Its *relative score* in a class is the mean of its two ratios to the class's best
  value, ``(pinball / best pinball + RMSSE / best RMSSE) / 2`` (1.0: best on both). One metric alone is not
  enough: on intermittent series a quantile network's p50 is a median near zero, which wins pinball and loses
  RMSSE, while a Croston-type p50 is a mean demand rate, which does the opposite.
- ``ensemble``: per demand class, the per-quantile *mean* of the ``TOP_K`` forecasters with the lowest relative
  score (a mean of ordered quantiles stays ordered: p10 <= p50 <= p90). A mean rather than a median, which with
  three members would take the middle one point by point: the mean blends a network's median-like p50 with a
  baseline's mean-like p50, and on carparts that blend had a lower RMSSE than any single forecaster.
- ``chosen``: per demand class, ``ensemble``, unless some forecasters beat it on *both* class means on the inner
  window; then the one of those with the lowest relative score. The combination is the default because, on
  carparts, the forecaster that was best on one validation window (on pinball or on the relative score) did
  worse on the next window than the combination did; a single forecaster has to be better on both metrics.

Classes come from `classify_demand` on the window's training part; a class none of whose series can be scored
(zero scale) uses the scores over all series. Nothing after the cutoff is used for either selection. A forecaster
is any callable ``(train, h, freq, season_length) -> frame with unique_id, ds, p10, p50, p90``; its name becomes
``model``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import partial

import numpy as np
import pandas as pd

from shelfcast_forecaster.baselines import MODELS, forecast_baselines
from shelfcast_forecaster.data import classify_demand
from shelfcast_forecaster.metrics import series_scores

Forecaster = Callable[[pd.DataFrame, int, str, int], pd.DataFrame]
QUANTILE_COLUMNS = ["p10", "p50", "p90"]
OUTPUT_COLUMNS = ["unique_id", "ds", "cutoff", "model", *QUANTILE_COLUMNS, "y"]
SCORE_COLUMNS = ["scaled_pinball", "rmsse"]
TOP_K = 3
ENSEMBLE = "ensemble"


@dataclass(frozen=True)
class Selection:
    """Per demand class: the ensemble members (best first), the model ``chosen`` stands for, and the inner-window
    scores behind both (class -> model -> ``scaled_pinball``, ``rmsse``, ``relative``; ``ensemble`` included)."""

    top: dict[str, list[str]]
    chosen: dict[str, str]
    validation: dict[str, dict[str, dict[str, float]]] = field(default_factory=dict)


def default_forecasters() -> dict[str, Forecaster]:
    """Each statsforecast baseline as its own forecaster (TensorFlow models are added beside these)."""
    return {name: partial(forecast_baselines, models=[name]) for name in MODELS}


def backtest(
    df: pd.DataFrame,
    h: int,
    freq: str,
    season_length: int,
    windows: int = 1,
    step: int | None = None,
    forecasters: Mapping[str, Forecaster] | None = None,
) -> pd.DataFrame:
    """``unique_id, ds, cutoff, model, p10, p50, p90, y`` for every forecaster, ``ensemble`` and ``chosen``.

    Windows end ``step`` periods apart (default ``h``), the last one at the end of the data; periods are the
    distinct ``ds`` values of ``df`` (series share one calendar, as in carparts). ``result.attrs["selection"]``
    maps each cutoff to its `Selection`.
    """
    forecasters = dict(forecasters or default_forecasters())
    selections, frames = {}, []
    for cutoff in window_cutoffs(df, h, windows, step):
        frame, selections[cutoff] = _window(df, cutoff, h, freq, season_length, forecasters)
        frames.append(frame)
    result = pd.concat(frames, ignore_index=True)[OUTPUT_COLUMNS]
    result.attrs["selection"] = selections
    return result


def window_cutoffs(df: pd.DataFrame, h: int, windows: int, step: int | None = None) -> list[pd.Timestamp]:
    """The last training date of each window, oldest first."""
    dates = np.sort(df["ds"].unique())
    step = step or h
    positions = [len(dates) - 1 - h - step * (windows - 1 - i) for i in range(windows)]
    if not positions or positions[0] < 2 * h:  # the first window needs its own h-period inner validation
        raise ValueError(f"{len(dates)} periods are too few for {windows} window(s) of h={h}, step={step}")
    return [pd.Timestamp(dates[p]) for p in positions]


def _window(df, cutoff, h, freq, season_length, forecasters) -> tuple[pd.DataFrame, Selection]:
    train = df.loc[df["ds"] <= cutoff, ["unique_id", "ds", "y"]]
    classes = classify_demand(train)
    selection = select_models(train, classes, h, freq, season_length, forecasters)
    fcst = forecast_all(train, h, freq, season_length, forecasters)
    fcst = add_selections(fcst, classes, selection)
    scored = fcst.assign(cutoff=cutoff).merge(df[["unique_id", "ds", "y"]], on=["unique_id", "ds"], how="inner")
    return scored, selection


def forecast_all(train, h, freq, season_length, forecasters: Mapping[str, Forecaster]) -> pd.DataFrame:
    """``unique_id, ds, model, p10, p50, p90`` of every forecaster, ``model`` being its name."""
    frames = [
        forecast(train, h, freq, season_length)[["unique_id", "ds", *QUANTILE_COLUMNS]].assign(model=name)
        for name, forecast in forecasters.items()
    ]
    return pd.concat(frames, ignore_index=True)


def select_models(train, classes, h, freq, season_length, forecasters, top_k: int = TOP_K) -> Selection:
    """Score the forecasters per class on the last ``h`` periods of ``train``; pick ensemble members and ``chosen``."""
    inner_cutoff = pd.Timestamp(np.sort(train["ds"].unique())[-h - 1])
    inner_train = train[train["ds"] <= inner_cutoff]
    inner = forecast_all(inner_train, h, freq, season_length, forecasters)
    inner = inner.assign(cutoff=inner_cutoff).merge(train, on=["unique_id", "ds"], how="inner")
    top = _top_per_class(relative_scores(class_scores(inner, inner_train, classes, season_length)), top_k)
    ensemble = _ensemble(inner, classes, top).assign(cutoff=inner_cutoff).merge(train, on=["unique_id", "ds"])
    scores = class_scores(pd.concat([inner, ensemble], ignore_index=True), inner_train, classes, season_length)
    relative = relative_scores(scores)
    chosen = {cls: choose(scores.loc[cls], relative.loc[cls]) for cls in relative.index}
    validation = {
        str(cls): {
            str(model): {
                "scaled_pinball": float(scores.loc[cls, ("scaled_pinball", model)]),
                "rmsse": float(scores.loc[cls, ("rmsse", model)]),
                "relative": float(relative.loc[cls, model]),
            }
            for model in relative.columns
        }
        for cls in relative.index
    }
    return Selection(top=top, chosen=chosen, validation=validation)


def class_scores(fcst, train, classes, season_length) -> pd.DataFrame:
    """Mean scaled pinball and RMSSE per class (rows) and model: columns ``(metric, model)`` for the metrics in
    `SCORE_COLUMNS`. A class without any scored series gets the means over all series."""
    scores = series_scores(fcst, train, season_length)
    scores["demand_class"] = scores["unique_id"].map(classes)
    per_class = scores.groupby(["demand_class", "model"])[SCORE_COLUMNS].mean().unstack("model")
    overall = scores.groupby("model")[SCORE_COLUMNS].mean().unstack()  # (metric, model) -> value
    per_class = per_class.reindex(index=sorted(classes.unique()), columns=overall.index)
    unscored = per_class.isna().all(axis=1)
    per_class.loc[unscored] = overall.to_numpy()
    return per_class


def relative_scores(scores: pd.DataFrame) -> pd.DataFrame:
    """Per class and model: the mean over `SCORE_COLUMNS` of the model's value / the class's best (lowest) value.

    1.0 means best on every metric; a model equal to a best of 0 counts as 1.0; NaN stays NaN (ranked last).
    """
    ratios = []
    for metric in SCORE_COLUMNS:
        values = scores[metric]
        best = values.min(axis=1)
        ratios.append(values.div(best, axis=0).mask(values.eq(best, axis=0), 1.0))
    return sum(ratios[1:], ratios[0]) / len(ratios)


def choose(scores: pd.Series, relative: pd.Series) -> str:
    """``ensemble`` unless forecasters beat it on every metric of ``scores`` (one class's ``(metric, model)``
    values); then the one of those with the lowest ``relative`` score."""
    metrics = scores.unstack(0)[SCORE_COLUMNS]  # model x metric
    better = (metrics < metrics.loc[ENSEMBLE]).all(axis=1)
    candidates = relative[better[better].index]
    return str(candidates.sort_values(kind="stable").index[0]) if len(candidates) else ENSEMBLE


def _top_per_class(relative: pd.DataFrame, top_k: int) -> dict[str, list[str]]:
    """The ``top_k`` lowest relative scores per class, best first (NaN last; ties in the given column order)."""
    return {
        str(cls): [str(m) for m in row.sort_values(kind="stable", na_position="last").index[:top_k]]
        for cls, row in relative.iterrows()
    }


def _ensemble(fcst: pd.DataFrame, classes: pd.Series, top: dict[str, list[str]]) -> pd.DataFrame:
    """Per-quantile mean over each series' class members (the mean of ordered quantiles stays ordered)."""
    members = {(cls, model) for cls, models in top.items() for model in models}
    cls = fcst["unique_id"].map(classes)
    mask = [(c, m) in members for c, m in zip(cls, fcst["model"], strict=True)]
    picked = fcst.loc[mask]
    ensemble = picked.groupby(["unique_id", "ds"], as_index=False)[QUANTILE_COLUMNS].mean()
    return ensemble.assign(model=ENSEMBLE)


def add_selections(fcst: pd.DataFrame, classes: pd.Series, selection: Selection) -> pd.DataFrame:
    """Append the ``ensemble`` rows and the ``chosen`` rows (a copy of each series' class choice)."""
    with_ensemble = pd.concat([fcst, _ensemble(fcst, classes, selection.top)], ignore_index=True)
    wanted = with_ensemble["unique_id"].map(classes).map(selection.chosen)
    chosen = with_ensemble.loc[with_ensemble["model"] == wanted].assign(model="chosen")
    return pd.concat([with_ensemble, chosen], ignore_index=True)
