"""Point and probabilistic accuracy of backtest forecasts, in plain numpy/pandas.

Forecasts frame: ``unique_id, ds, cutoff, model, p10, p50, p90, y`` (the shape `backtest` returns); training
frame: ``unique_id, ds, y``, from which each (series, cutoff) pair's scale is computed on the rows with
``ds <= cutoff`` (so the full history can be passed for a rolling-origin backtest). Rows of a series are taken
to be consecutive periods (no gaps): the seasonal naive looks ``season_length`` rows back.

Per series ("series" meaning one (unique_id, cutoff) pair when there are several windows):
- MASE: mean |y - p50| over the horizon / in-sample MAE of the seasonal naive (lag ``season_length``), or of the
  lag-1 naive when the training part has fewer than ``season_length + 1`` points.
- RMSSE: sqrt(mean (y - p50)² / in-sample mean squared error of the same naive).
- scaled pinball: mean over p10/p50/p90 of the mean pinball loss, divided by the MASE scale. Its p50 term is
  half the MASE.
Series whose scale is zero (a constant training part, e.g. all zeros) or undefined (fewer than 2 points) are
left out of these three and counted in ``n_skipped``. They are aggregated as the plain, unweighted mean over the
scored series (the M5 competition weights series by sales; this does not).

Over all points of a model, skipped series included:
- WAPE: sum |y - p50| / sum |y|.
- bias: sum (p50 - y) / sum y (positive: over-forecast).
- coverage: share of points with p10 <= y <= p90 (nominal 0.8).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

QUANTILES = {"p10": 0.1, "p50": 0.5, "p90": 0.9}
KEYS = ["unique_id", "cutoff"]
METRIC_COLUMNS = ["mase", "rmsse", "wape", "scaled_pinball", "bias", "coverage", "n_series", "n_skipped"]


def pinball(y: np.ndarray, pred: np.ndarray, q: float) -> np.ndarray:
    """Pinball (quantile) loss per point: q·(y - pred) when y >= pred, (1 - q)·(pred - y) otherwise."""
    diff = np.asarray(y, dtype=float) - np.asarray(pred, dtype=float)
    return np.maximum(q * diff, (q - 1) * diff)


def naive_scales(train: pd.DataFrame, cutoffs: pd.DataFrame, season_length: int) -> pd.DataFrame:
    """In-sample naive MAE and MSE (``mae_scale``, ``mse_scale``) per (unique_id, cutoff) in ``cutoffs``.

    Lag ``season_length`` where the training part has at least ``season_length + 1`` points, else lag 1;
    NaN with fewer than 2 points.
    """
    parts = [_scales_at(train, cutoff, season_length) for cutoff in cutoffs["cutoff"].unique()]
    scales = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=[*KEYS, "mae_scale", "mse_scale"])
    return cutoffs[KEYS].drop_duplicates().merge(scales, on=KEYS, how="left")


def _scales_at(train: pd.DataFrame, cutoff: pd.Timestamp, season_length: int) -> pd.DataFrame:
    part = train.loc[train["ds"] <= cutoff, ["unique_id", "ds", "y"]].sort_values(["unique_id", "ds"])
    by_series = part.groupby("unique_id", sort=True)["y"]
    size = by_series.size()
    columns = {}
    for lag in {season_length, 1}:
        diff = part["y"] - by_series.shift(lag)
        grouped = pd.DataFrame({"ae": diff.abs(), "se": diff**2, "unique_id": part["unique_id"]}).groupby("unique_id")
        columns[lag] = grouped.mean()
    seasonal = (size >= season_length + 1).to_numpy()[:, None]
    chosen = np.where(seasonal, columns[season_length].loc[size.index], columns[1].loc[size.index])
    return pd.DataFrame(
        {"unique_id": size.index, "cutoff": cutoff, "mae_scale": chosen[:, 0], "mse_scale": chosen[:, 1]}
    )


def series_scores(forecasts: pd.DataFrame, train: pd.DataFrame, season_length: int) -> pd.DataFrame:
    """MASE, RMSSE and scaled pinball per (unique_id, cutoff, model); NaN where the scale is zero or undefined."""
    errors = forecasts[[*KEYS, "model"]].copy()
    error = forecasts["y"].to_numpy(float) - forecasts["p50"].to_numpy(float)
    errors["ae"], errors["se"] = np.abs(error), error**2
    losses = [pinball(forecasts["y"].to_numpy(float), forecasts[c].to_numpy(float), q) for c, q in QUANTILES.items()]
    errors["pinball"] = np.mean(losses, axis=0)
    per_series = errors.groupby([*KEYS, "model"], sort=True, as_index=False).mean()
    scaled = per_series.merge(naive_scales(train, forecasts, season_length), on=KEYS, how="left")
    valid = (scaled["mae_scale"] > 0) & np.isfinite(scaled["mae_scale"])
    mae_scale = scaled["mae_scale"].where(valid)
    scaled["mase"] = scaled["ae"] / mae_scale
    scaled["rmsse"] = np.sqrt(scaled["se"] / scaled["mse_scale"].where(valid))
    scaled["scaled_pinball"] = scaled["pinball"] / mae_scale
    return scaled[[*KEYS, "model", "mase", "rmsse", "scaled_pinball"]]


def evaluate(forecasts: pd.DataFrame, train: pd.DataFrame, season_length: int) -> pd.DataFrame:
    """One row per model: mase, rmsse, wape, scaled_pinball, bias, coverage, n_series, n_skipped (see module doc)."""
    scores = series_scores(forecasts, train, season_length).groupby("model", sort=True)
    points = forecasts.assign(
        abs_error=(forecasts["y"] - forecasts["p50"]).abs(),
        error=forecasts["p50"] - forecasts["y"],
        abs_y=forecasts["y"].abs(),
        covered=(forecasts["p10"] <= forecasts["y"]) & (forecasts["y"] <= forecasts["p90"]),
    ).groupby("model", sort=True)
    sums = points[["abs_error", "error", "abs_y", "y"]].sum()
    result = pd.DataFrame(
        {
            "mase": scores["mase"].mean(),
            "rmsse": scores["rmsse"].mean(),
            "wape": sums["abs_error"] / sums["abs_y"],
            "scaled_pinball": scores["scaled_pinball"].mean(),
            "bias": sums["error"] / sums["y"],
            "coverage": points["covered"].mean(),
            "n_series": scores["mase"].count(),
            "n_skipped": scores["mase"].size() - scores["mase"].count(),
        }
    )
    result.index.name = "model"
    return result.reset_index()
