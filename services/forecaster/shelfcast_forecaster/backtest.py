"""Rolling-origin backtest in the shape of Nixtla's ``cross_validation``, with per-demand-class model selection.

Each window trains on the rows up to its cutoff and forecasts the next ``h`` periods with every forecaster, plus
two selections made on the training part only:
- ``ensemble``: per demand class, the per-quantile median of the ``TOP_K`` forecasters with the lowest mean
  scaled pinball loss on an inner validation window (the last ``h`` periods of the training part);
- ``chosen``: per demand class, whichever of the forecasters and ``ensemble`` validates best there.
Classes come from `classify_demand` on the window's training part. A forecaster is any callable
``(train, h, freq, season_length) -> frame with unique_id, ds, p10, p50, p90``; its name becomes ``model``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import partial

import numpy as np
import pandas as pd

from shelfcast_forecaster.baselines import MODELS, forecast_baselines
from shelfcast_forecaster.data import classify_demand
from shelfcast_forecaster.metrics import series_scores

Forecaster = Callable[[pd.DataFrame, int, str, int], pd.DataFrame]
QUANTILE_COLUMNS = ["p10", "p50", "p90"]
OUTPUT_COLUMNS = ["unique_id", "ds", "cutoff", "model", *QUANTILE_COLUMNS, "y"]
TOP_K = 2


@dataclass(frozen=True)
class Selection:
    """Per demand class: the forecasters in the ensemble and the model ``chosen`` stands for."""

    top: dict[str, list[str]]
    chosen: dict[str, str]


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
    """Rank the forecasters per class on the last ``h`` periods of ``train``; pick ensemble members and ``chosen``."""
    inner_cutoff = pd.Timestamp(np.sort(train["ds"].unique())[-h - 1])
    inner_train = train[train["ds"] <= inner_cutoff]
    inner = forecast_all(inner_train, h, freq, season_length, forecasters)
    inner = inner.assign(cutoff=inner_cutoff).merge(train, on=["unique_id", "ds"], how="inner")
    top = _top_per_class(_class_means(inner, inner_train, classes, season_length), top_k)
    ensemble = _ensemble(inner, classes, top).assign(cutoff=inner_cutoff).merge(train, on=["unique_id", "ds"])
    means = _class_means(pd.concat([inner, ensemble], ignore_index=True), inner_train, classes, season_length)
    chosen = {cls: ranking[0] for cls, ranking in _rankings(means).items()}
    return Selection(top=top, chosen=chosen)


def _class_means(fcst, train, classes, season_length) -> pd.DataFrame:
    """Mean scaled pinball per (class, model); classes without any scored series use the all-series mean."""
    scores = series_scores(fcst, train, season_length)
    scores["demand_class"] = scores["unique_id"].map(classes)
    per_class = scores.groupby(["demand_class", "model"])["scaled_pinball"].mean().unstack("model")
    overall = scores.groupby("model")["scaled_pinball"].mean()
    per_class = per_class.reindex(index=sorted(classes.unique()), columns=overall.index)
    unscored = per_class.isna().all(axis=1)
    per_class.loc[unscored] = overall.to_numpy()
    return per_class


def _rankings(means: pd.DataFrame) -> dict[str, list[str]]:
    """Models per class, best first (NaN last; ties in the given column order)."""
    return {cls: list(row.sort_values(kind="stable", na_position="last").index) for cls, row in means.iterrows()}


def _top_per_class(means: pd.DataFrame, top_k: int) -> dict[str, list[str]]:
    return {cls: ranking[:top_k] for cls, ranking in _rankings(means).items()}


def _ensemble(fcst: pd.DataFrame, classes: pd.Series, top: dict[str, list[str]]) -> pd.DataFrame:
    """Per-quantile median over each series' class members (the median keeps p10 <= p50 <= p90)."""
    members = {(cls, model) for cls, models in top.items() for model in models}
    cls = fcst["unique_id"].map(classes)
    mask = [(c, m) in members for c, m in zip(cls, fcst["model"], strict=True)]
    picked = fcst.loc[mask]
    ensemble = picked.groupby(["unique_id", "ds"], as_index=False)[QUANTILE_COLUMNS].median()
    return ensemble.assign(model="ensemble")


def add_selections(fcst: pd.DataFrame, classes: pd.Series, selection: Selection) -> pd.DataFrame:
    """Append the ``ensemble`` rows and the ``chosen`` rows (a copy of each series' class choice)."""
    with_ensemble = pd.concat([fcst, _ensemble(fcst, classes, selection.top)], ignore_index=True)
    wanted = with_ensemble["unique_id"].map(classes).map(selection.chosen)
    chosen = with_ensemble.loc[with_ensemble["model"] == wanted].assign(model="chosen")
    return pd.concat([with_ensemble, chosen], ignore_index=True)
