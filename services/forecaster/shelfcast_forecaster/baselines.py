"""Statistical baselines from statsforecast, as p10/p50/p90 forecasts in long format.

p50 is each model's point forecast (for the Croston family and ADIDA that is a mean demand rate, not a median).
p10/p90:
- SeasonalNaive, AutoETS: the models' own 80% prediction intervals (``level=[80]``).
- CrostonOptimized, TSB, ADIDA (no native intervals): p50 plus the 10% and 90% empirical quantiles of the
  series' in-sample one-step residuals (y - fitted), the same offsets at every step of the horizon.
Every forecast is clipped at 0, and p10 <= p50 <= p90 holds by construction.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence

import numpy as np
import pandas as pd
from statsforecast import StatsForecast
from statsforecast.models import ADIDA, TSB, AutoETS, CrostonOptimized, SeasonalNaive

# TSB is not optimised by statsforecast; 0.1/0.1 is the usual slow-moving choice for monthly data.
TSB_ALPHA_D = 0.1
TSB_ALPHA_P = 0.1

# name -> constructor taking the season length
MODELS: dict[str, Callable[[int], object]] = {
    "SeasonalNaive": lambda m: SeasonalNaive(season_length=m),
    "AutoETS": lambda m: AutoETS(season_length=m),
    "CrostonOptimized": lambda m: CrostonOptimized(),
    "TSB": lambda m: TSB(alpha_d=TSB_ALPHA_D, alpha_p=TSB_ALPHA_P),
    "ADIDA": lambda m: ADIDA(),
}
WITH_INTERVALS = frozenset({"SeasonalNaive", "AutoETS"})
OUTPUT_COLUMNS = ["unique_id", "ds", "model", "p10", "p50", "p90"]


def forecast_baselines(
    train: pd.DataFrame,
    h: int,
    freq: str,
    season_length: int,
    models: Sequence[str] | None = None,
    n_jobs: int = 1,
) -> pd.DataFrame:
    """Forecast ``h`` steps after each series' last ``ds`` with the baselines (all of `MODELS` by default).

    Returns ``unique_id, ds, model, p10, p50, p90``, all >= 0. ``train`` needs ``unique_id, ds, y``; other
    columns are ignored.
    """
    names = list(models or MODELS)
    unknown = sorted(set(names) - set(MODELS))
    if unknown:
        raise ValueError(f"unknown baseline(s) {unknown}; known: {sorted(MODELS)}")
    data = train[["unique_id", "ds", "y"]]
    frames = []
    with_intervals = [n for n in names if n in WITH_INTERVALS]
    if with_intervals:
        frames.append(_with_native_intervals(data, h, freq, season_length, with_intervals, n_jobs))
    without = [n for n in names if n not in WITH_INTERVALS]
    if without:
        frames.append(_with_residual_intervals(data, h, freq, season_length, without, n_jobs))
    result = pd.concat(frames, ignore_index=True)
    result[["p10", "p50", "p90"]] = result[["p10", "p50", "p90"]].clip(lower=0)
    return result[OUTPUT_COLUMNS]


def _statsforecast(names: list[str], freq: str, season_length: int, n_jobs: int) -> StatsForecast:
    return StatsForecast(models=[MODELS[n](season_length) for n in names], freq=freq, n_jobs=n_jobs)


def _with_native_intervals(data, h, freq, season_length, names, n_jobs) -> pd.DataFrame:
    fcst = _statsforecast(names, freq, season_length, n_jobs).forecast(df=data, h=h, level=[80])
    frames = [
        fcst[["unique_id", "ds"]].assign(
            model=name, p10=fcst[f"{name}-lo-80"], p50=fcst[name], p90=fcst[f"{name}-hi-80"]
        )
        for name in names
    ]
    return pd.concat(frames, ignore_index=True)


def _with_residual_intervals(data, h, freq, season_length, names, n_jobs) -> pd.DataFrame:
    sf = _statsforecast(names, freq, season_length, n_jobs)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Computing fitted values")  # cheap at our sizes
        fcst = sf.forecast(df=data, h=h, fitted=True)
    fitted = sf.forecast_fitted_values()
    frames = []
    for name in names:
        low, high = _residual_quantiles(fitted, name)
        point = fcst[["unique_id", "ds"]].assign(model=name, p50=fcst[name].clip(lower=0))
        point = point.merge(low.rename("low"), on="unique_id").merge(high.rename("high"), on="unique_id")
        point["p10"] = np.clip(point["p50"] + point["low"], 0, point["p50"])
        point["p90"] = np.maximum(point["p50"] + point["high"], point["p50"])
        frames.append(point)
    return pd.concat(frames, ignore_index=True)


def _residual_quantiles(fitted: pd.DataFrame, name: str) -> tuple[pd.Series, pd.Series]:
    """10% and 90% quantiles of y - fitted per series; 0 where a series has no residual."""
    residuals = (fitted["y"] - fitted[name]).groupby(fitted["unique_id"], sort=False)
    low = residuals.quantile(0.1).fillna(0.0)
    high = residuals.quantile(0.9).fillna(0.0)
    return low, high
