"""The forecaster's core, shared by the HTTP API and the Kafka scoring loop.

`ForecastService` scores SKUs with the registry's current model over their feature-store history and caches each
forecast in Redis at ``sc:fcst:{sku}`` (the JSON of the `Forecast`). `ScoringLoop` consumes ``shelfcast.features``,
coalesces the updated SKUs into micro-batches, scores them, and publishes to ``shelfcast.forecasts``.

What the loop guarantees:
- Nothing lost: a batch is marked done only after the broker acknowledged every forecast and dead letter of it.
  A batch that fails (Redis away, no model yet) is retried with backoff.
- Nothing twice from a slow or paused broker: a forecast handed to the producer is never handed to it again while
  its delivery is pending (the producer waits for ever, and retries idempotently); only a delivery that failed is
  sent again. The offsets of a finished batch go to Redis (`BatchLedger`) before the Kafka commit, and a consumer
  that gets partitions starts there: a consumer that lost its partitions in the outage (session timed out, commit
  refused) does not consume the batch again. What is left: a process that dies after the broker acknowledged a
  batch and before Redis recorded it consumes that batch again at its restart (at least once, in that gap only).
- A poison record never stops it: a record that is not a window, a window from the future (``future_ts``), a SKU
  whose history in Redis does not decode, or whose scoring raises, goes to the dead-letter topic with the reason and
  the rest of the batch goes on. Non-finite or implausible network output is never published: that SKU gets the
  Poisson fallback, its reason in the record's ``fallback_reason`` header.
- A record that kills the loop anyway (the thread or the process dies) is skipped on the third try: `BatchLedger`.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TypeVar, cast

import redis
from confluent_kafka import Consumer, KafkaError, KafkaException, Message, Producer, TopicPartition

from shelfcast.contracts import Contract, FeatureWindow, Forecast
from shelfcast.errors import ContractError
from shelfcast.kafka import DeadLetterWriter, make_consumer, make_producer, produce
from shelfcast.settings import Settings
from shelfcast.store import FeatureStore
from shelfcast_forecaster.live_quality import parse_cached, score_windows
from shelfcast_forecaster.monitoring import (
    BATCH_SIZE,
    FALLBACKS,
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
from shelfcast_forecaster.scoring import GRANULARITY_FREQ, Scorer, read_demand_checked
from shelfcast_forecaster.settings import ForecasterSettings

log = logging.getLogger(__name__)
T = TypeVar("T")
FUTURE_TS = "future_ts"
KILLED_TWICE = "killed the loop twice"


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
            scorer = Scorer(
                self.registry.path(str(version)),
                jit=self.config.jit,
                max_forecast_multiple=self.config.max_forecast_multiple,
            )
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
        return self.score_checked(skus, source).forecasts

    def score_checked(self, skus: Iterable[str], source: str) -> Scored:
        """`score`, with the SKUs that could not be forecast and the reasons of the fallbacks."""
        scorer = self.scorer
        if scorer is None:
            raise NoModel("no model in the registry: run `shelfcast forecaster train ... --out REGISTRY`")
        started = time.perf_counter()
        gran = self.config.granularity
        depth = self.config.history_windows
        demand, rejected = read_demand_checked(self.store, list(skus), gran, depth, scorer.spec.exogenous)
        if not demand:
            return Scored({}, rejected, {})
        now_ms = int(time.time() * 1000)
        forecasts, fallbacks = scorer.forecasts_with_reasons(demand, now_ms)
        pipe = self.redis.pipeline(transaction=False)
        for f in forecasts:
            pipe.set(cache_key(f.sku), f.to_bytes(), ex=self.config.cache_ttl_seconds)
        pipe.execute()
        SCORING_SECONDS.labels(source=source).observe(time.perf_counter() - started)
        BATCH_SIZE.labels(source=source).observe(len(forecasts))
        for f, d in zip(forecasts, demand, strict=True):
            FORECASTS.labels(model=f.model, fallback=str(f.fallback).lower()).inc()
            FRESHNESS_SECONDS.observe(max(0.0, now_ms - d.origin_ms - d.period_ms) / 1000)
        for reason in fallbacks.values():
            FALLBACKS.labels(reason=reason).inc()
        return Scored({f.sku: f for f in forecasts}, rejected, fallbacks)


@dataclass
class Scored:
    forecasts: dict[str, Forecast]
    rejected: dict[str, str]  # SKU -> why it got no forecast (its windows are dead-lettered)
    fallbacks: dict[str, str]  # SKU -> why its forecast is the fallback


class _Stopped(Exception):
    """``stop`` was set while a step of a batch was being retried or awaited: the batch stays uncommitted."""


class _Pending:
    """One record handed to the producer; called with the broker's answer (None: acknowledged)."""

    def __init__(self, deliveries: Deliveries, topic: str, headers: dict[str, str | bytes | None] | None) -> None:
        self.deliveries, self.topic, self.headers = deliveries, topic, headers
        self.record: Contract | None = None

    def __call__(self, err: KafkaError | None) -> None:
        self.deliveries.pending -= 1
        if err is not None:
            self.deliveries.failed.append(self)


class Deliveries:
    """The records of one batch handed to the producer, and the broker's answer to each.

    A record is handed over once. The loop's producer never times a pending record out (``message.timeout.ms`` 0):
    under a paused or slow broker it keeps retrying it idempotently, and the loop keeps waiting, because a record
    sent again while the first copy may already be stored would be published twice. Only a record whose delivery
    failed is sent again."""

    def __init__(self, producer: Producer) -> None:
        self.producer = producer
        self.pending = 0
        self.failed: list[_Pending] = []

    def send(self, topic: str, record: Contract, headers: dict[str, str | bytes | None] | None = None) -> None:
        pending = _Pending(self, topic, headers)
        pending.record = record
        self.pending += 1
        produce(self.producer, topic, record, headers, on_result=pending)

    def dead_letter(self, writer: DeadLetterWriter, msg: Message, reason: str) -> None:
        pending = _Pending(self, writer.topic, None)
        self.pending += 1
        pending.record = writer.send_message(msg, reason, on_result=pending)

    def wait(self, timeout_s: float, stop: threading.Event) -> None:
        """Return once every record is acknowledged; raise `_Stopped` when ``stop`` is set first."""
        delay = 0.5
        while True:
            self.producer.flush(timeout_s)
            if self.failed:
                again, self.failed = self.failed, []
                log.warning("%d deliveries failed; sending them again in %.1f s", len(again), delay)
                if stop.wait(delay):
                    raise _Stopped
                delay = min(delay * 2, 10.0)
                for pending in again:
                    assert pending.record is not None
                    self.send(pending.topic, pending.record, pending.headers)
            elif self.pending == 0:
                return
            elif stop.is_set():
                raise _Stopped
            else:
                log.warning(
                    "%d records not acknowledged within %.0f s; still waiting for them", self.pending, timeout_s
                )


@dataclass
class Batch:
    """One micro-batch: the window records at the model's granularity in consumption order, and per partition
    the first and last offset of every record consumed (``(topic, partition) -> (first, last)``)."""

    records: list[tuple[Message, FeatureWindow]] = field(default_factory=list)
    offsets: dict[tuple[str, int], tuple[int, int]] = field(default_factory=dict)

    def saw(self, msg: Message) -> None:
        where, offset = (str(msg.topic()), int(msg.partition() or 0)), int(msg.offset() or 0)
        self.offsets[where] = (self.offsets.get(where, (offset, offset))[0], offset)

    @property
    def skus(self) -> list[str]:
        return list(dict.fromkeys(w.sku for _, w in self.records))

    @property
    def windows(self) -> list[FeatureWindow]:
        """The newest update of each (SKU, window)."""
        return list({(w.sku, w.window_start): w for _, w in self.records}.values())

    def take_sku(self, sku: str) -> list[Message]:
        """Remove the SKU's window records from the batch; returns them."""
        taken = [m for m, w in self.records if w.sku == sku]
        self.records = [(m, w) for m, w in self.records if w.sku != sku]
        return taken

    def take_through(self, last: dict[tuple[str, int], int]) -> list[Message]:
        """Remove every window record up to ``last[(topic, partition)]`` from the batch, which then starts after
        it in those partitions; returns them."""

        def taken(m: Message) -> bool:
            upto = last.get((str(m.topic()), int(m.partition() or 0)))
            return upto is not None and int(m.offset() or 0) <= upto

        out = [m for m, _ in self.records if taken(m)]
        self.records = [(m, w) for m, w in self.records if not taken(m)]
        for where, upto in last.items():
            _, end = self.offsets.pop(where)
            if upto < end:
                self.offsets[where] = (upto + 1, end)
        return out


def _field(where: tuple[str, int]) -> str:
    return f"{where[0]}:{where[1]}"


class BatchLedger:
    """Where the loop is, per partition, in Redis: what it finished, and the batch in hand.

    ``sc:fcst:offsets:{group}``: ``{topic}:{partition}`` -> the next offset to consume, written when a batch is done
    (before the Kafka commit); a consumer given partitions starts there (`resume_at`), so a batch whose commit failed
    is not consumed again.

    ``sc:fcst:inflight:{group}``: ``{topic}:{partition}`` -> ``{first}:{last}:{attempts}``, written before a batch is
    processed and removed when it is done, so a field still there when a batch begins is a batch that was in hand
    when the loop or its process died. A batch that starts at the same offset again counts one more attempt, and
    ``last`` becomes the smaller of the two: the records ``first..last`` were in hand in every attempt. Once two
    attempts died, the next one skips those records to the dead letters (`KILLED_TWICE`) instead of dying a third
    time."""

    CRASHES_TO_SKIP = 2

    def __init__(self, client: redis.Redis, group_id: str) -> None:
        self.redis = client
        self.inflight_key = f"sc:fcst:inflight:{group_id}"
        self.offsets_key = f"sc:fcst:offsets:{group_id}"

    def begin(self, offsets: dict[tuple[str, int], tuple[int, int]]) -> dict[tuple[str, int], tuple[int, int]]:
        """Record the batch in hand; returns, for each partition whose batch start was in hand in two crashes
        already, the offsets (first, last) of the records to skip."""
        if not offsets:
            return {}
        names = [_field(where) for where in offsets]
        previous = cast(list[bytes | None], self.redis.hmget(self.inflight_key, names))
        entries, killers = {}, {}
        for (where, (first, last)), name, raw in zip(offsets.items(), names, previous, strict=True):
            attempts, upto = 1, last
            earlier = _parse_entry(raw)
            if earlier is not None and earlier[0] == first:
                attempts, upto = earlier[2] + 1, min(earlier[1], last)
                if earlier[2] >= self.CRASHES_TO_SKIP:
                    killers[where] = (first, upto)
            entries[name] = f"{first}:{upto}:{attempts}"
        self.redis.hset(self.inflight_key, mapping=entries)
        return killers

    def done(self, offsets: dict[tuple[str, int], tuple[int, int]]) -> None:
        """The records up to each ``last`` are finished: the next offset recorded, nothing in hand, in one step."""
        if not offsets:
            return
        pipe = self.redis.pipeline(transaction=True)
        pipe.hset(self.offsets_key, mapping={_field(where): last + 1 for where, (_, last) in offsets.items()})
        pipe.hdel(self.inflight_key, *[_field(where) for where in offsets])
        pipe.execute()

    def forget(self, partitions: Iterable[tuple[str, int]]) -> None:
        """Nothing in hand in these partitions (a stop, not a crash)."""
        names = [_field(where) for where in partitions]
        if names:
            self.redis.hdel(self.inflight_key, *names)

    def resume_at(self, partitions: Iterable[tuple[str, int]]) -> dict[tuple[str, int], int]:
        """The next offset to consume of each partition that has one recorded."""
        partitions = list(partitions)
        raw = cast(list[bytes | None], self.redis.hmget(self.offsets_key, [_field(w) for w in partitions]))
        return {where: int(value) for where, value in zip(partitions, raw, strict=True) if value is not None}


def _parse_entry(raw: bytes | None) -> tuple[int, int, int] | None:
    try:
        first, last, attempts = (int(x) for x in (raw or b"").split(b":"))
    except ValueError:
        return None  # none, or not ours: start counting afresh
    return first, last, attempts


class ScoringLoop:
    """``shelfcast.features`` -> micro-batches of SKUs -> forecasts in Redis and on ``shelfcast.forecasts``."""

    def __init__(self, service: ForecastService, settings: Settings) -> None:
        self.service = service
        self.settings = settings
        self.config = service.config
        self.consumer = make_consumer(settings, service.config.group_id)
        self.producer = make_producer(settings, **{"message.timeout.ms": 0})  # see `Deliveries`
        self.dead_letters = DeadLetterWriter(self.producer, settings.topics.events_dlq, stage="forecaster")
        self.ledger = BatchLedger(service.redis, service.config.group_id)
        self.published = 0
        self.error: Exception | None = None  # what ended `run`, if an error did

    def run(self, stop: threading.Event) -> None:
        """Consume, score and publish until ``stop`` is set. An error that escapes (retried failures and poison
        records do not) ends the loop: it is logged with its traceback and kept in ``error``,
        ``shelfcast_forecaster_scoring_loop_up`` drops to 0, and the thread ends, so ``/healthz`` and ``/readyz``
        answer 503. The batch in hand stays in the `BatchLedger`."""
        SCORING_LOOP_UP.set(1)
        try:
            self.consumer.subscribe([self.settings.topics.features], on_assign=self._on_assign)
            try:
                while not stop.is_set():
                    deliveries = Deliveries(self.producer)
                    batch = self._collect(stop, deliveries)
                    if not batch.offsets:
                        continue
                    try:
                        self._handle(batch, deliveries, stop)
                    except _Stopped:
                        self._forget(batch)  # stopped, not crashed: leave no attempt in the ledger
                        break  # the batch's offsets stay uncommitted
            finally:
                self.producer.flush(10)
                self.consumer.close()
        except Exception as exc:
            self.error = exc
            log.exception("the scoring loop stopped: no more forecasts from shelfcast.features until a restart")
        finally:
            SCORING_LOOP_UP.set(0)

    def _handle(self, batch: Batch, deliveries: Deliveries, stop: threading.Event) -> None:
        """Skip what killed the loop twice, score and publish the rest, wait for the broker, commit."""
        killers = self._retry("recording the batch in hand", lambda: self.ledger.begin(batch.offsets), stop)
        if killers:
            self._skip_killers(batch, killers, deliveries, stop)
        earlier: dict[str, Forecast] = {}
        published = 0
        if batch.records:
            earlier, published = self._score_and_send(batch, deliveries, stop)
        deliveries.wait(self.config.flush_timeout_s, stop)
        if published:
            self.published += published
            LAST_FORECAST_TIMESTAMP.set(time.time())
        self._retry("recording the batch as done", lambda: self.ledger.done(batch.offsets), stop)
        self._commit()
        self._count_live_quality(batch.windows, earlier)

    def _skip_killers(
        self, batch: Batch, killers: dict[tuple[str, int], tuple[int, int]], deliveries: Deliveries, stop
    ) -> None:
        """Dead-letter, one by one, the window records that were in hand in two crashes, and commit past them
        before going on with the rest of the batch, so that the ledger counts the rest afresh."""
        for msg in batch.take_through({where: last for where, (_, last) in killers.items()}):
            where = f"{msg.topic()}[{msg.partition()}]"
            detail = ", ".join(f"{w[0]}[{w[1]}] offsets {a}..{b}" for w, (a, b) in killers.items())
            reason = f"{KILLED_TWICE}: in hand when the scoring loop died twice ({detail}); this one at {where}"
            deliveries.dead_letter(self.dead_letters, msg, reason)
        log.error("skipped records that killed the scoring loop twice to the dead letters: %s", killers)
        deliveries.wait(self.config.flush_timeout_s, stop)
        self._retry("recording the skipped records", lambda: self._skipped(killers, batch), stop)
        self._commit([TopicPartition(t, p, last + 1) for (t, p), (_, last) in killers.items()])

    def _skipped(self, killers: dict[tuple[str, int], tuple[int, int]], batch: Batch) -> None:
        """The skipped records done, the rest of the batch in hand from its new start (a first attempt)."""
        self.ledger.done(killers)
        self.ledger.begin({where: batch.offsets[where] for where in killers if where in batch.offsets})

    def _score_and_send(
        self, batch: Batch, deliveries: Deliveries, stop: threading.Event
    ) -> tuple[dict[str, Forecast], int]:
        """Score the batch's SKUs and hand their forecasts to the producer; a SKU that cannot be forecast has its
        window records dead-lettered. Returns the forecasts cached before this batch and how many were sent."""
        skus = batch.skus
        earlier = self._retry(
            f"reading {len(skus)} cached forecasts", lambda: self.service.cached_forecasts(skus), stop
        )
        scored = self._retry(f"scoring {len(skus)} SKUs", lambda: self._score(skus), stop)
        for sku, reason in scored.rejected.items():
            for msg in batch.take_sku(sku):
                WINDOWS_CONSUMED.labels(outcome="dead_lettered").inc()
                deliveries.dead_letter(self.dead_letters, msg, f"no forecast for {sku}: {reason}")
        for forecast in scored.forecasts.values():
            why = scored.fallbacks.get(forecast.sku)
            deliveries.send(self.settings.topics.forecasts, forecast, {"fallback_reason": why} if why else None)
        return earlier, len(scored.forecasts)

    def _score(self, skus: list[str]) -> Scored:
        """The batch scored at once; when that raises for another reason than Redis or a missing model, SKU by
        SKU, so that one poison SKU is rejected with its error and the others are forecast."""
        try:
            return self.service.score_checked(skus, source="stream")
        except (redis.RedisError, NoModel):
            raise
        except Exception:
            log.exception("scoring %d SKUs raised; scoring them one at a time", len(skus))
        out = Scored({}, {}, {})
        for sku in skus:
            try:
                one = self.service.score_checked([sku], source="stream")
            except (redis.RedisError, NoModel):
                raise
            except Exception as exc:
                out.rejected[sku] = f"scoring raised {type(exc).__name__}: {exc}"
                continue
            out.forecasts |= one.forecasts
            out.rejected |= one.rejected
            out.fallbacks |= one.fallbacks
        return out

    def _retry(self, what: str, action: Callable[[], T], stop: threading.Event) -> T:
        """``action()``, retried with backoff while Redis is away or no model is loaded; `_Stopped` once ``stop``
        is set."""
        delay = 0.5
        while True:
            try:
                return action()
            except (redis.RedisError, NoModel) as exc:
                if stop.is_set():
                    raise _Stopped from None
                log.warning("%s failed (%s); retrying in %.1f s", what, exc, delay)
                stop.wait(delay)
                delay = min(delay * 2, 10.0)

    def _forget(self, batch: Batch) -> None:
        try:
            self.ledger.forget(batch.offsets)
        except redis.RedisError:
            log.warning("could not clear the batch in hand at shutdown: its next attempt counts one crash more")

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        """Start each partition given to this consumer where the ledger says the last finished batch ended, when
        that is past the committed offset. A partition without a committed offset starts as Kafka says: its topic
        may have started afresh (the embedded broker keeps nothing across restarts), and a ledger offset from before
        would skip its records. Without Redis or the committed offsets, it starts at the committed offset."""
        try:
            resume = self.ledger.resume_at((str(p.topic), int(p.partition)) for p in partitions)
            committed = {(str(c.topic), int(c.partition)): c.offset for c in consumer.committed(partitions, 10)}
        except (redis.RedisError, KafkaException) as exc:
            log.warning("partitions assigned, but the ledger could not be checked (%s): starting at the commits", exc)
            resume, committed = {}, {}
        for p in partitions:
            where = (str(p.topic), int(p.partition))
            ledger, kafka = resume.get(where), committed.get(where, -1)
            if ledger is not None and 0 <= kafka < ledger:
                p.offset = ledger
        consumer.assign(partitions)

    def _commit(self, offsets: list[TopicPartition] | None = None) -> None:
        """Commit what was consumed (or ``offsets``), after the ledger recorded it. A commit that fails (the
        consumer lost its partitions in a long outage) is logged: the consumer rejoins and resumes where the ledger
        says (`_on_assign`), so the batch is not consumed again."""
        try:
            if offsets is None:
                self.consumer.commit(asynchronous=False)
            else:
                self.consumer.commit(offsets=offsets, asynchronous=False)
        except KafkaException as exc:
            log.warning("offset commit failed (%s); the ledger in Redis holds where to resume", exc)

    def _count_live_quality(self, windows: list[FeatureWindow], earlier: dict[str, Forecast]) -> None:
        """The windows' actuals against the forecasts cached before this batch replaced them (a batch replayed after
        a crash before its commit counts again). Monitoring never stops the loop."""
        try:
            count_live_quality(score_windows(windows, earlier))
        except Exception:
            log.exception("live forecast quality not counted for a batch of %d windows", len(windows))

    def _collect(self, stop: threading.Event, deliveries: Deliveries) -> Batch:
        """Window records at the model's granularity, collected for up to ``linger_ms`` after the first record,
        until ``max_batch`` SKUs have one."""
        batch = Batch()
        skus: set[str] = set()
        seen, deadline = 0, None
        while not stop.is_set() and len(skus) < self.config.max_batch:
            timeout = 0.2 if deadline is None else max(0.0, deadline - time.monotonic())
            messages = self.consumer.consume(num_messages=self.config.max_batch, timeout=timeout)
            for msg in messages:
                if (error := msg.error()) is not None:
                    if error.code() != KafkaError._PARTITION_EOF:
                        log.warning("consumer error: %s", error)
                    continue
                batch.saw(msg)
                if (window := self._window_of(msg, deliveries)) is not None:
                    batch.records.append((msg, window))
                    skus.add(window.sku)
            seen += len(messages)
            if seen and deadline is None:
                deadline = time.monotonic() + self.config.linger_ms / 1000
            if deadline is None or time.monotonic() >= deadline:
                break
        return batch

    def _window_of(self, msg: Message, deliveries: Deliveries) -> FeatureWindow | None:
        """The record as a window to score, or None: not a window or from the future (dead-lettered), or another
        granularity (not ours)."""
        try:
            window = FeatureWindow.from_bytes(msg.value() or b"")
        except Exception as exc:  # ContractError, or anything the parser raises: one record never stops the loop
            WINDOWS_CONSUMED.labels(outcome="invalid").inc()
            detail = str(exc) if isinstance(exc, ContractError) else f"{type(exc).__name__}: {exc}"
            deliveries.dead_letter(self.dead_letters, msg, f"not a feature window: {detail}")
            return None
        if (reason := self._future(window)) is not None:
            WINDOWS_CONSUMED.labels(outcome=FUTURE_TS).inc()
            deliveries.dead_letter(self.dead_letters, msg, reason)
            return None
        if window.granularity != self.config.granularity:
            WINDOWS_CONSUMED.labels(outcome="other_granularity").inc()
            return None
        WINDOWS_CONSUMED.labels(outcome="scored").inc()
        return window

    def _future(self, window: FeatureWindow) -> str | None:
        """`FUTURE_TS` with the detail when the window ends further ahead of this clock than the allowed skew."""
        now_ms = int(time.time() * 1000)
        if window.window_end <= self.settings.latest_plausible_ms(now_ms):
            return None
        ahead_s = (window.window_end - now_ms) / 1000
        end = datetime.fromtimestamp(window.window_end / 1000, UTC).isoformat()
        return (
            f"{FUTURE_TS}: window_end {end} is {ahead_s:.0f} s ahead of the forecaster's clock "
            f"(SHELFCAST_MAX_CLOCK_SKEW_S = {self.settings.max_clock_skew_s})"
        )
