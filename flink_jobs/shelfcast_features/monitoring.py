"""Prometheus metrics of the window writer (`shelfcast_features_*`), served from PyFlink's Python worker process.

The worker is not a service of ours with an HTTP app, so `serve_metrics` starts prometheus_client's own server,
once per process, on `SHELFCAST_FEATURES_METRICS_PORT` or, when that is taken (parallelism > 1 puts several
workers on a machine), the next free one of the 15 after it.
"""

import logging

from prometheus_client import Counter, Gauge, Histogram, start_http_server

from shelfcast.contracts import FeatureWindow

PORTS_TRIED = 16

log = logging.getLogger(__name__)

WINDOWS_WRITTEN = Counter(
    "shelfcast_features_windows_written", "Window updates written to Redis (and the features topic)", ["granularity"]
)
CLOSE_DELAY = Histogram(
    "shelfcast_features_window_close_delay_seconds",
    "Wall clock at the Redis write minus the window's end (late updates included)",
    ["granularity"],
    buckets=(0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60, 120, 300, 600),
)
LAST_WINDOW_END = Gauge(
    "shelfcast_features_last_window_end_timestamp_seconds",
    "Event time (Unix seconds) of the newest window end written; time() minus it is the watermark's delay",
    ["granularity"],
)

_served_on: int | None = None
_newest_end_ms: dict[str, int] = {}


def serve_metrics(port: int) -> int | None:
    """Start the metrics server of this process on ``port`` or the next free port after it (0: none); the port."""
    global _served_on
    if port == 0 or _served_on is not None:
        return _served_on
    for candidate in range(port, min(port + PORTS_TRIED, 65536)):
        try:
            start_http_server(candidate)
        except OSError:
            continue
        _served_on = candidate
        log.info("features writer metrics on port %d", candidate)
        return candidate
    log.warning("features writer metrics not served: ports %d-%d are all taken", port, port + PORTS_TRIED - 1)
    return None


def count_written(window: FeatureWindow, written_at_s: float) -> None:
    granularity = window.granularity
    WINDOWS_WRITTEN.labels(granularity=granularity).inc()
    CLOSE_DELAY.labels(granularity=granularity).observe(max(0.0, written_at_s - window.window_end / 1000))
    if window.window_end > _newest_end_ms.get(granularity, 0):
        _newest_end_ms[granularity] = window.window_end
        LAST_WINDOW_END.labels(granularity=granularity).set(window.window_end / 1000)
