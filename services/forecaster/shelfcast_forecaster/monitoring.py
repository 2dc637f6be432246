"""Prometheus metrics of the forecaster (`shelfcast_forecaster_*`)."""

from prometheus_client import Counter, Gauge, Histogram

from shelfcast_forecaster.live_quality import ActualScore

SCORING_SECONDS = Histogram(
    "shelfcast_forecaster_scoring_duration_seconds",
    "Time to score one micro-batch (history read, network, records)",
    ["source"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
)
BATCH_SIZE = Histogram(
    "shelfcast_forecaster_batch_size_skus",
    "SKUs per scored micro-batch",
    ["source"],
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096),
)
FORECASTS = Counter("shelfcast_forecaster_forecasts", "Forecasts issued", ["model", "fallback"])
FALLBACKS = Counter(
    "shelfcast_forecaster_fallbacks",
    "Forecasts from the Poisson fallback, by why: short_history, non_finite or implausible network output",
    ["reason"],
)
MODEL_VERSION = Gauge("shelfcast_forecaster_model_info", "The serving model version (value 1)", ["version", "arch"])
MODEL_RELOADS = Counter("shelfcast_forecaster_model_reloads", "Model versions loaded", ["outcome"])
FRESHNESS_SECONDS = Histogram(
    "shelfcast_forecaster_forecast_freshness_seconds",
    "From the end of the newest feature window a forecast used to the forecast being issued",
    buckets=(0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600, 86400),
)
LAST_FORECAST_TIMESTAMP = Gauge(
    "shelfcast_forecaster_last_forecast_timestamp_seconds", "Unix time of the newest forecast published"
)
SCORING_LOOP_UP = Gauge(
    "shelfcast_forecaster_scoring_loop_up",
    "1 while the Kafka scoring loop's thread runs, 0 once it has stopped (an error ended it, or shutdown)",
)
WINDOWS_CONSUMED = Counter("shelfcast_forecaster_windows_consumed", "Feature windows read", ["outcome"])
REQUEST_SECONDS = Histogram(
    "shelfcast_forecaster_request_duration_seconds",
    "HTTP request latency",
    ["method", "route", "status"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0),
)
ACTUALS_SCORED = Counter(
    "shelfcast_forecaster_actuals_scored",
    "Arrived feature windows compared with the cached forecast issued earlier for their period",
)
PINBALL_LOSS = Counter(
    "shelfcast_forecaster_pinball_loss",
    "Sum of the pinball loss of each quantile over the scored actuals (rate / rate(actuals_scored): the live mean)",
    ["quantile"],
)
ACTUALS_IN_BAND = Counter("shelfcast_forecaster_actuals_in_band", "Scored actuals within their forecast's [p10, p90]")
for _quantile in ("p10", "p50", "p90"):
    PINBALL_LOSS.labels(quantile=_quantile)  # exposed at 0 before the first actual arrives


def count_live_quality(scores: list[ActualScore]) -> None:
    ACTUALS_SCORED.inc(len(scores))
    totals: dict[str, float] = {}
    for score in scores:
        for name, loss in score.pinball.items():
            totals[name] = totals.get(name, 0.0) + loss
    for name, total in totals.items():
        PINBALL_LOSS.labels(quantile=name).inc(total)
    ACTUALS_IN_BAND.inc(sum(1 for s in scores if s.in_band))
