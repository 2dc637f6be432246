"""The Python end of the job: each window update goes to the Redis feature store and `shelfcast.features`.

Runs in PyFlink's Python worker, once per window update (not per event). Redis writes are idempotent
(a window overwrites itself), so a replay after a restart from a checkpoint converges to the same state.

A broker that stops answering (paused, partitioned) must neither lose a window on the topic nor let the
writer run ahead of it: a queued window never expires (`message.timeout.ms` 0, the producer retries until
the broker is back; idempotent, so no duplicates), and each flush waits until every queued window is
acknowledged, so the writer, and through backpressure the job, waits for the broker. A delivery that fails
for good (not a timeout) raises: Flink restarts the job from its last checkpoint and writes again.
"""

import logging
import time
from typing import Any

from confluent_kafka import KafkaError, Producer
from pyflink.common import Row
from pyflink.datastream.functions import MapFunction, RuntimeContext

from shelfcast.contracts import FeatureWindow
from shelfcast.kafka import make_producer, produce
from shelfcast.settings import Settings
from shelfcast.store import FeatureStore, connect_redis
from shelfcast_features.monitoring import count_written, serve_metrics

FLUSH_EVERY_S = 0.2
FLUSH_WAIT_S = 30.0  # how long one flush call waits before the writer logs that it is still waiting

log = logging.getLogger(__name__)


class DeliveryFailed(RuntimeError):
    """The broker refused a window for good; raised so that Flink restarts from the last checkpoint."""


def flush_until_acknowledged(producer: Producer, failures: list[KafkaError], wait_s: float = FLUSH_WAIT_S) -> None:
    """Block until every queued record is acknowledged; raise once one failed for good."""
    while (waiting := producer.flush(wait_s)) > 0 and not failures:
        log.warning("the broker has not acknowledged %d feature windows in %.0f s; still waiting", waiting, wait_s)
    if failures:
        raise DeliveryFailed(f"{len(failures)} feature windows not delivered, first: {failures[0]}")


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
        self._producer = make_producer(self._settings, **{"message.timeout.ms": 0})  # 0: never expire
        self._failures: list[KafkaError] = []
        self._flushed_at = time.monotonic()
        serve_metrics(self._metrics_port)

    def map(self, value: Row) -> Any:
        window = to_window(value)
        self._store.write([window])
        count_written(window, time.time())
        produce(self._producer, self._settings.topics.features, window, on_result=self._on_result)
        self._producer.poll(0)
        if self._failures or time.monotonic() - self._flushed_at > FLUSH_EVERY_S:
            flush_until_acknowledged(self._producer, self._failures)
            self._flushed_at = time.monotonic()
        return window.window_end

    def _on_result(self, error: KafkaError | None) -> None:
        if error is not None:
            self._failures.append(error)

    def close(self) -> None:
        # Cancelled or failing: wait a bounded time. What is not acknowledged by then the restarted job writes
        # again if it came after the last checkpoint (see flink_jobs/README.md, "A stalled broker").
        left = self._producer.flush(FLUSH_WAIT_S)
        if left:
            log.error("closing with %d feature windows not acknowledged by the broker", left)
