"""The agent's own demand forecast when the forecaster's is missing or stale: from the feature store's daily windows.

A deliberately simple model, so that it cannot fail where the forecaster did: the daily units of the SKU's last
`LOOKBACK_DAYS` days before the decision period (days without a window count as 0 units, from the first window on;
days after the newest window are not counted, since they may not have closed yet). Their mean is the demand per day,
their variance (at least the mean: demand is at least as dispersed as Poisson) its spread, scaled to the decision
step's length in days; p10/p50/p90 of a normal with those moments, floored at 0, as the forecast does.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy.special import ndtri

DAY_MS = 86_400_000
LOOKBACK_DAYS = 28  # four whole weeks: weekly seasonality averages out
GRANULARITY = "1d"
_Z90 = float(ndtri(0.9))


@dataclass(frozen=True)
class DailyFallback:
    quantiles: dict[str, list[float]]
    mean_per_day: float
    days: int

    def describe(self, step_days: float) -> str:
        return (
            f"{self.mean_per_day * step_days:.2f} per period (mean of {self.days} days)"
            " from feature store daily windows"
        )


def daily_fallback(starts: np.ndarray, units: np.ndarray, before_ms: int, step_days: float) -> DailyFallback | None:
    """Quantiles of one decision step's demand from daily windows (`starts`: their window starts in epoch ms,
    `units`: their units), using the windows that start within `LOOKBACK_DAYS` before `before_ms`; None when
    there is none."""
    starts = np.asarray(starts, dtype=np.int64)
    units = np.nan_to_num(np.asarray(units, dtype=np.float64), nan=0.0, posinf=0.0, neginf=0.0)
    keep = (starts < before_ms) & (starts >= before_ms - LOOKBACK_DAYS * DAY_MS)
    starts, units = starts[keep], np.maximum(units[keep], 0.0)
    if starts.size == 0:
        return None
    first_day = int(starts.min()) // DAY_MS
    days = int(starts.max()) // DAY_MS - first_day + 1
    daily = np.zeros(days)
    np.add.at(daily, (starts // DAY_MS - first_day).astype(np.int64), units)
    mean = float(daily.mean())
    var = max(float(daily.var(ddof=1)) if days > 1 else 0.0, mean)
    step_mean, step_sd = mean * step_days, math.sqrt(var * step_days)
    quantiles = {
        "p10": [max(step_mean - _Z90 * step_sd, 0.0)],
        "p50": [step_mean],
        "p90": [step_mean + _Z90 * step_sd],
    }
    return DailyFallback(quantiles, mean, days)
