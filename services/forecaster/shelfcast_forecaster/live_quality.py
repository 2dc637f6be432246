"""Live forecast quality: each arriving window's actual units against the forecast issued earlier for its period.

Pure functions; `ScoringLoop` reads the cached forecasts before it replaces them and counts the scores in
`monitoring` (`shelfcast_forecaster_actuals_scored_total`, `_pinball_loss_total{quantile}`, `_actuals_in_band_total`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import orjson

from shelfcast.contracts import FeatureWindow, Forecast
from shelfcast_forecaster.scoring import GRANULARITY_FREQ, PERIOD_MS

FREQ_PERIOD_MS = {GRANULARITY_FREQ[g]: PERIOD_MS[g] for g in GRANULARITY_FREQ}  # the freqs the service forecasts


@dataclass(frozen=True)
class ActualScore:
    """One actual against one forecast step: the pinball loss per quantile name, and whether it fell in p10-p90."""

    pinball: dict[str, float]
    in_band: bool | None  # None: the forecast has no p10 or no p90


def pinball_loss(actual: float, predicted: float, tau: float) -> float:
    """The quantile (pinball) loss of predicting ``predicted`` as the ``tau`` quantile when ``actual`` came."""
    diff = actual - predicted
    return max(tau * diff, (tau - 1.0) * diff)


def covering_step(forecast: Forecast, window_start: int) -> int | None:
    """Index of the forecast step whose period starts at ``window_start`` (None: no step covers it)."""
    period = FREQ_PERIOD_MS.get(forecast.freq)
    if period is None:
        return None
    offset = window_start - forecast.start
    if offset < 0 or offset % period:
        return None
    step = offset // period
    return step if step < forecast.horizon else None


def score_actual(forecast: Forecast | None, window: FeatureWindow) -> ActualScore | None:
    """The window's units against the step of ``forecast`` that covers it; None when none does."""
    if forecast is None or forecast.sku != window.sku:
        return None
    step = covering_step(forecast, window.window_start)
    if step is None:
        return None
    predicted = {name: values[step] for name, values in forecast.quantiles.items()}
    actual = float(window.units)
    pinball = {name: pinball_loss(actual, value, int(name[1:]) / 100) for name, value in predicted.items()}
    in_band = None
    if "p10" in predicted and "p90" in predicted:
        in_band = predicted["p10"] <= actual <= predicted["p90"]
    return ActualScore(pinball, in_band)


def score_windows(windows: Iterable[FeatureWindow], earlier: Mapping[str, Forecast]) -> list[ActualScore]:
    """`score_actual` of each window against its SKU's earlier forecast, leaving out windows none covers."""
    scores = (score_actual(earlier.get(w.sku), w) for w in windows)
    return [s for s in scores if s is not None]


def parse_cached(raw: bytes | None) -> Forecast | None:
    """A cached forecast (`sc:fcst:{sku}`) without re-validation: the service wrote it from a valid `Forecast`,
    and validating a batch of them would cost about as much as scoring it."""
    if not raw:
        return None
    try:
        return Forecast.model_construct(**orjson.loads(raw))
    except (orjson.JSONDecodeError, TypeError):
        return None
