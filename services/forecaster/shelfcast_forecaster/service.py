"""The forecaster's core, shared by the HTTP API and the Kafka scoring loop.

`ForecastService` scores SKUs with the registry's current model over their feature-store history and caches each
forecast in Redis at ``sc:fcst:{sku}`` (the JSON of the `Forecast`). `ScoringLoop` consumes ``shelfcast.features``,
coalesces the updated SKUs into micro-batches, scores them, and publishes to ``shelfcast.forecasts``; it commits its
offsets only after the forecasts are acknowledged, and a batch that fails (Redis or the broker away) is retried
until it succeeds, so no update is lost; a commit that fails after a long retry leaves the batch to be consumed again.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable

import redis
from confluent_kafka import KafkaError, KafkaException, Message

from shelfcast.contracts import FeatureWindow, Forecast
from shelfcast.errors import ContractError
from shelfcast.kafka import DeadLetterWriter, make_consumer, make_producer, produce
from shelfcast.settings import Settings
from shelfcast.store import FeatureStore
from shelfcast_forecaster.live_quality import parse_cached, score_windows
from shelfcast_forecaster.monitoring import (
    BATCH_SIZE,
    FORECASTS,
    FRESHNESS_SECONDS,
    LAST_FORECAST_TIMESTAMP,
    MODEL_RELOADS,
    MODEL_VERSION,
    SCORING_LOOP_UP,
    SCORING_SECONDS,
    WINDOWS_CONSUMED,
    count_live_quality,
)
from shelfcast_forecaster.registry import ModelRegistry
from shelfcast_forecaster.scoring import GRANULARITY_FREQ, Scorer, read_demand
from shelfcast_forecaster.settings import ForecasterSettings

log = logging.getLogger(__name__)


def cache_key(sku: str) -> str:
    return f"sc:fcst:{sku}"


class NoModel(RuntimeError):
    """The registry has no current model version (train one first)."""


class ForecastService:
    """Forecasts per SKU from the current model (`reload_if_changed` swaps it), cached in Redis."""

    def __init__(self, client: redis.Redis, config: ForecasterSettings) -> None:
        self.redis = client
        self.config = config
        self.store = FeatureStore(client)
        self.registry = ModelRegistry(config.registry)
        self.scorer: Scorer | None = None
        self._rejected: str | None = None  # a version that failed to load: not retried until `current` moves

    def reload_if_changed(self) -> bool:
        """Load the registry's current version when it differs from the one serving; True when swapped."""
        version = self.registry.current_version()
        if version in (None, self.version, self._rejected):
            return False
        try:
            scorer = Scorer(self.registry.path(str(version)), jit=self.config.jit)
            self._check(scorer)
            scorer.warm_up()
        except Exception:
            self._rejected = version
            MODEL_RELOADS.labels(outcome="failed").inc()
            log.exception("model version %s could not be loaded; still serving %s", version, self.version)
            return False
        self.scorer = scorer  # one attribute swap: requests in flight finish on the old model
        MODEL_VERSION.clear()
        MODEL_VERSION.labels(version=str(version), arch=scorer.spec.arch).set(1)
        MODEL_RELOADS.labels(outcome="loaded").inc()
        log.info("serving model %s (%s on %s)", version, scorer.spec.arch, scorer.device)
        return True

    def _check(self, scorer: Scorer) -> None:
        """The model must read what the stream provides: its granularity and feature-window fields."""
        expected = GRANULARITY_FREQ[self.config.granularity]
        if scorer.spec.freq != expected:
            raise ValueError(f"model freq {scorer.spec.freq!r}, but {self.config.granularity} windows are {expected!r}")
        unknown = [f for f in scorer.spec.exogenous if f not in FeatureWindow.model_fields]
        if unknown:
            raise ValueError(f"model inputs {unknown} are not feature-window fields")

    @property
    def version(self) -> str | None:
        return self.scorer.version if self.scorer is not None else None

    def cached(self, skus: list[str]) -> list[bytes | None]:
        return self.redis.mget([cache_key(s) for s in skus])  # type: ignore[return-value]

    def cached_forecasts(self, skus: list[str]) -> dict[str, Forecast]:
        """The cached forecasts of those SKUs that have one (parsed without re-validation)."""
        parsed = (parse_cached(raw) for raw in self.cached(skus))
        return {sku: f for sku, f in zip(skus, parsed, strict=True) if f is not None}

    def score(self, skus: Iterable[str], source: str) -> dict[str, Forecast]:
        """Fresh forecasts of the SKUs that have history (others are left out), cached in Redis."""
        scorer = self.scorer
        if scorer is None:
            raise NoModel("no model in the registry: run `shelfcast forecaster train ... --out REGISTRY`")
        started = time.perf_counter()
        gran = self.config.granularity
        demand = read_demand(self.store, list(skus), gran, self.config.history_windows, scorer.spec.exogenous)
        if not demand:
            return {}
        now_ms = int(time.time() * 1000)
        forecasts = scorer.forecasts(demand, now_ms)
        pipe = self.redis.pipeline(transaction=False)
        for f in forecasts:
            pipe.set(cache_key(f.sku), f.to_bytes(), ex=self.config.cache_ttl_seconds)
        pipe.execute()
        SCORING_SECONDS.labels(source=source).observe(time.perf_counter() - started)
        BATCH_SIZE.labels(source=source).observe(len(forecasts))
        for f, d in zip(forecasts, demand, strict=True):
            FORECASTS.labels(model=f.model, fallback=str(f.fallback).lower()).inc()
            FRESHNESS_SECONDS.observe(max(0.0, now_ms - d.origin_ms - d.period_ms) / 1000)
        return {f.sku: f for f in forecasts}


class ScoringLoop:
    """``shelfcast.features`` -> micro-batches of SKUs -> forecasts in Redis and on ``shelfcast.forecasts``."""

    def __init__(self, service: ForecastService, settings: Settings) -> None:
        self.service = service
        self.settings = settings
        self.config = service.config
        self.consumer = make_consumer(settings, service.config.group_id)
        self.producer = make_producer(settings)
        self.dead_letters = DeadLetterWriter(self.producer, settings.topics.events_dlq, stage="forecaster")
        self.published = 0
        self.error: Exception | None = None  # what ended `run`, if an error did

    def run(self, stop: threading.Event) -> None:
        """Consume, score and publish until ``stop`` is set. An error that escapes (retried failures do not) ends
        the loop: it is logged with its traceback and kept in ``error``, ``shelfcast_forecaster_scoring_loop_up``
        drops to 0, and the thread ends, so ``/readyz`` answers 503."""
        SCORING_LOOP_UP.set(1)
        try:
            self.consumer.subscribe([self.settings.topics.features])
            try:
                while not stop.is_set():
                    windows, messages = self._collect(stop)
                    if windows and not self._publish_until_done(windows, stop):
                        break  # stopped before the batch was published: leave its offsets uncommitted
                    if messages:
                        self._commit()
            finally:
                self.producer.flush(10)
                self.consumer.close()
        except Exception as exc:
            self.error = exc
            log.exception("the scoring loop stopped: no more forecasts from shelfcast.features until a restart")
        finally:
            SCORING_LOOP_UP.set(0)

    def _commit(self) -> None:
        """Commit what was consumed. A batch retried for longer than ``max.poll.interval.ms`` (Redis away for
        minutes) leaves the consumer without its partitions, and the commit fails: the loop goes on, the consumer
        rejoins and the batch comes again from the last committed offsets (forecast twice, never lost)."""
        try:
            self.consumer.commit(asynchronous=False)
        except KafkaException as exc:
            log.warning("offset commit failed (%s); the batch will be consumed again", exc)

    def _collect(self, stop: threading.Event) -> tuple[list[FeatureWindow], int]:
        """Windows at the model's granularity (the newest update of each), collected for up to ``linger_ms`` after
        the first record, until ``max_batch`` SKUs have one."""
        windows: dict[tuple[str, int], FeatureWindow] = {}
        skus: set[str] = set()
        seen, deadline = 0, None
        while not stop.is_set() and len(skus) < self.config.max_batch:
            timeout = 0.2 if deadline is None else max(0.0, deadline - time.monotonic())
            batch = self.consumer.consume(num_messages=self.config.max_batch, timeout=timeout)
            for msg in batch:
                if (window := self._window_of(msg)) is not None:
                    windows[window.sku, window.window_start] = window
                    skus.add(window.sku)
            seen += len(batch)
            if seen and deadline is None:
                deadline = time.monotonic() + self.config.linger_ms / 1000
            if deadline is None or time.monotonic() >= deadline:
                break
        return list(windows.values()), seen

    def _window_of(self, msg: Message) -> FeatureWindow | None:
        if (error := msg.error()) is not None:
            if error.code() != KafkaError._PARTITION_EOF:
                log.warning("consumer error: %s", error)
            return None
        try:
            window = FeatureWindow.from_bytes(msg.value() or b"")
        except ContractError as exc:
            WINDOWS_CONSUMED.labels(outcome="invalid").inc()
            self.dead_letters.send_message(msg, f"not a feature window: {exc}")
            return None
        if window.granularity != self.config.granularity:
            WINDOWS_CONSUMED.labels(outcome="other_granularity").inc()
            return None
        WINDOWS_CONSUMED.labels(outcome="scored").inc()
        return window

    def _publish_until_done(self, windows: list[FeatureWindow], stop: threading.Event) -> bool:
        """Score and publish the windows' SKUs, retrying failures until it succeeds (True) or ``stop`` is set
        (False). The windows' actuals are scored against the forecasts cached before this batch replaces them,
        counted once the batch is published (a batch replayed after a crash before its commit counts again)."""
        skus = list(dict.fromkeys(w.sku for w in windows))
        earlier: dict[str, Forecast] | None = None
        delay = 0.5
        while True:
            try:
                if earlier is None:  # read once: a retry would find this batch's own forecasts cached
                    earlier = self.service.cached_forecasts(skus)
                forecasts = self.service.score(skus, source="stream")
                for forecast in forecasts.values():
                    produce(self.producer, self.settings.topics.forecasts, forecast)
                if self.producer.flush(30) > 0:
                    raise RuntimeError("forecasts not acknowledged by the broker within 30 s")
                self.published += len(forecasts)
                LAST_FORECAST_TIMESTAMP.set(time.time())
                count_live_quality(score_windows(windows, earlier))
                return True
            except (redis.RedisError, RuntimeError) as exc:  # NoModel too: wait until a model is trained
                if stop.is_set():
                    return False
                log.warning("scoring %d SKUs failed (%s); retrying in %.1f s", len(skus), exc, delay)
                stop.wait(delay)
                delay = min(delay * 2, 10.0)
