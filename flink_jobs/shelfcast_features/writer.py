"""The Python end of the job: each window update goes to the Redis feature store and `shelfcast.features`.

Runs in PyFlink's Python worker, once per window update (not per event). Redis writes are idempotent
(a window overwrites itself), so a replay after a restart from a checkpoint converges to the same state.
"""

import time
from typing import Any

from pyflink.common import Row
from pyflink.datastream.functions import MapFunction, RuntimeContext

from shelfcast.contracts import FeatureWindow
from shelfcast.kafka import make_producer, produce
from shelfcast.settings import Settings
from shelfcast.store import FeatureStore, connect_redis
from shelfcast_features.monitoring import count_written, serve_metrics

FLUSH_EVERY_S = 0.2


def to_window(row: Row) -> FeatureWindow:
    views, clicks, purchases, units = row["views"], row["clicks"], row["purchases"], row["units"]
    return FeatureWindow(
        sku=row["sku"],
        granularity=row["granularity"],
        window_start=row["window_start"],
        window_end=row["window_end"],
        views=views,
        clicks=clicks,
        carts=row["carts"],
        purchases=purchases,
        returns=row["returns"],
        units=units,
        returned_units=row["returned_units"],
        revenue=round(row["revenue"], 6),
        avg_price=round(row["revenue"] / units, 6) if units else None,
        ctr=clicks / views if views else None,
        conversion=purchases / clicks if clicks else None,
    )


class WindowWriter(MapFunction):
    def __init__(self, settings: Settings, depth: int, ttl_seconds: int, metrics_port: int = 0) -> None:
        self._settings = settings
        self._depth = depth
        self._ttl_seconds = ttl_seconds
        self._metrics_port = metrics_port

    def open(self, runtime_context: RuntimeContext) -> None:
        self._store = FeatureStore(connect_redis(self._settings.redis_url), self._depth, self._ttl_seconds)
        self._producer = make_producer(self._settings)
        self._flushed_at = time.monotonic()
        serve_metrics(self._metrics_port)

    def map(self, value: Row) -> Any:
        window = to_window(value)
        self._store.write([window])
        count_written(window, time.time())
        produce(self._producer, self._settings.topics.features, window)
        self._producer.poll(0)
        if time.monotonic() - self._flushed_at > FLUSH_EVERY_S:
            self._producer.flush(30)
            self._flushed_at = time.monotonic()
        return window.window_end

    def close(self) -> None:
        self._producer.flush(30)
