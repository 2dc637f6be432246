"""`shelfcast agent run`: the online decision loop.

It consumes ``shelfcast.forecasts``, ``shelfcast.events`` (purchases and returns) and ``shelfcast.receipts``, keeps
each SKU's inventory in Redis (`state.py` has the layout), decides once per SKU per decision period (`decide.py`),
and publishes to ``shelfcast.reorders`` and ``shelfcast.prices``.

The decision clock
    `{ks}:clock` holds the current decision period: the newest forecast period or purchase/return time consumed
    (never past this process's clock + `max_clock_skew_s`), in the freq of the forecasts (`decision_freq` before
    any), and with `wall_clock` at least the wall clock's period. A forecast decides its SKU's period at once; the
    sweep decides every SKU still undecided `missing_forecast_grace_s` after the clock reached a period, on a
    fallback (`_demand`: the newest forecast while it covers the period, else the SKU's daily windows, else its
    sales rate), so decisions never wait for a forecaster that stopped.

Exactly-once effect of consumed records on the state
    Each micro-batch is one Redis transaction: WATCH the offset keys of its partitions and the keys it will change,
    read them, drop the records below the stored offset (already applied), apply the rest, and MULTI/EXEC the new
    state together with the next offset of every partition (`{ks}:offset:{topic}:{partition}`). On (re)start and
    on every partition assignment the consumer seeks to those stored offsets (earliest when there are none), so a
    record is applied once even after a kill -9 between any two steps; Kafka's committed offsets are written too,
    only for monitoring. A transaction whose watched keys another writer changed is recomputed (a second agent
    instance that took over a partition is fenced this way). Purchases, returns and receipts are also deduplicated
    by `event_id` / `receipt_id` for between half and all of `dedupe_window_s`, against a producer that delivers the
    same record twice (the storefront simulator does).

No duplicate decision_id on the decision topics
    A decision's id is deterministic (`{sku}:{period_start_ms}`, `:price` for prices) and the SKU's state says which
    period it last decided, so a replayed or repeated forecast cannot decide the same period twice. The decision is
    recorded (`{ks}:decision:{id}`, and its id in `{ks}:pending`) in the same transaction as the state it changes,
    BEFORE it is produced; its id leaves `{ks}:pending` once the broker acknowledged it (idempotent producer,
    acks=all). Pending decisions that are not this process's own in-flight ones (handed to the producer and not yet
    reported on, also after a flush that timed out: the producer still delivers them) and are older than
    `pending_recover_after_s` (the leftovers of a crash, or of a failed delivery) are recovered: the decision topic
    is read from a minute before the oldest of them (a timestamp lookup; the embedded broker answers 0 to it, i.e.
    earliest, which is also correct) to the end of each partition, ids found there are confirmed, and only the
    others are produced again.
    What is left: (1) the scan sees what the broker has made readable when it runs: a produce request the broker
    appends after the scan (it would have to be stalled for `pending_recover_after_s` after the crash) would be
    duplicated; (2) "end of partition" comes from the broker's fetch responses: a broker that signalled it too early
    would hide a record (the embedded one's ListOffsets high watermark is wrong; its fetch responses were right in
    our tests); (3) a second live agent on the same keyspace, or a stalled old one that resumes, can re-send a
    decision pending longer than `pending_recover_after_s`. Consumers of the topics keep `decision_id` as the
    idempotency key for these cases. Dead letters are at-least-once (acknowledged before the offsets that skip them
    are stored; a crash in between sends one again).

Poison records, corrupt state and crashes
    A record is dead-lettered (`shelfcast.events.dlq`, with the reason) instead of applied when it does not parse
    or is implausible (`future_ts`: dated beyond this process's clock + `max_clock_skew_s`, a forecast starting more
    than one period after that; `unknown_sku` when `unknown_sku=dead_letter`), when applying it raises (its change to
    the state is undone), or when its SKU's decision raises (`decision failed ...`: e.g. a forecast whose demand
    overflows, see `decide.DemandError`). The rest of its batch goes on. A stored state that does not parse is reset
    to the SKU's defaults (`_load_states`). Whatever still kills the loop (the thread ends, `/healthz` turns 503, the
    orchestrator restarts the process) leaves its records in the crash ledger (`_crash_ledger`): on restart they are
    applied one per transaction, and one that was in flight in two crashed runs is dead-lettered unread, reason
    `killed the loop twice`. Two external kills (e.g. out of memory) while the same record is in flight dead-letter
    that record too: it can be replayed from the dead letter, which keeps its bytes.

Purchase counters and inventory totals
    `shelfcast_agent_units_demanded`, `_units_filled` and `_stockouts` are counted after the EXEC that applied the
    purchases succeeded, from that transaction's own computation (a recomputed transaction counts only its last
    run). A replayed batch is dropped by the stored offsets, so a purchase counts once, except that a process
    killed between the EXEC and the count loses it (with the rest of its counters; `rate()` sees a reset). The
    inventory totals live in Redis (`{ks}:totals`), changed in the same MULTI/EXEC by the batch's difference, so
    they are exact across restarts and shared by agents on one keyspace; each start rebuilds them from the states.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
import uuid
from collections import Counter
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast

import numpy as np
import orjson
import redis
from confluent_kafka import OFFSET_BEGINNING, KafkaError, KafkaException, Message, TopicPartition
from confluent_kafka import Consumer as KafkaConsumer
from pydantic import ValidationError

from shelfcast.contracts import Contract, Event, Forecast, PriceChange, Receipt, Reorder, describe_errors
from shelfcast.errors import ContractError
from shelfcast.kafka import DeadLetterWriter, make_consumer, make_producer
from shelfcast.settings import Settings
from shelfcast.store import FeatureStore
from shelfcast_agent.decide import (
    BASE_STOCK,
    BASE_STOCK_VERSION,
    OrderPlan,
    OrderPolicy,
    PolicyAnswer,
    SkuView,
    apply_budget,
    cap_to_recent_demand,
    capped_base_stock,
    clock_for,
    decision_id,
    learned_orders,
    per_period_quantiles,
    poisson_quantiles,
    price_rule,
)
from shelfcast_agent.env import InventorySim, State
from shelfcast_agent.fallback import DAY_MS, GRANULARITY, LOOKBACK_DAYS, daily_fallback
from shelfcast_agent.monitoring import (
    BATCH_SECONDS,
    BUDGET_CUTS,
    CLOCK_PERIOD,
    CONFLICTS,
    DECISION_SECONDS,
    DECISIONS,
    EMITTED,
    EMITTED_TOPIC,
    FALLBACKS,
    FORECAST_MAX_AGE,
    LAST_DECISION_TIMESTAMP,
    NEWEST_FORECAST,
    ORDER_UNITS,
    RECORDS,
    RECOVERED,
    SKU_DECISIONS,
    STATE_RESETS,
    STATE_SKUS,
    count_purchases,
    show_totals,
)
from shelfcast_agent.settings import AgentSettings, SkuCatalog, SkuParams
from shelfcast_agent.state import (
    CorruptState,
    DecisionRecord,
    InventoryState,
    Keys,
    LastDecision,
    Outstanding,
    PurchaseFlow,
    StockTotals,
    describe_forecast,
    inventory_key,
    parse_state,
)

log = logging.getLogger(__name__)
SOURCES: dict[str, type[Contract]] = {"forecast": Forecast, "event": Event, "receipt": Receipt}
FORECAST_FALLBACKS = ("missing_forecast", "stale_forecast")
MAX_LEDGER_SPAN = 100_000  # offsets one crash-ledger entry may cover (max_batch's limit): a bound on junk there


def now_ms() -> int:
    return int(time.time() * 1000)


class ScanIncomplete(RuntimeError):
    """A decision topic could not be read to its end in time: nothing is re-sent until it can."""


@dataclass
class Trigger:
    """Why a SKU decides now: a forecast for a new period, or the sweep for SKUs whose forecast is missing."""

    period_ms: int
    freq: str
    forecast: Forecast | None = None
    consumed_at: float = field(default_factory=time.monotonic)
    message: Message | None = None  # the forecast's record: dead-lettered if its decision fails


@dataclass
class Decided:
    record: DecisionRecord
    consumed_at: float
    units: int = 0


@dataclass
class BatchOutcome:
    decisions: list[Decided] = field(default_factory=list)
    offsets: dict[tuple[str, int], int] = field(default_factory=dict)
    applied: int = 0


class AgentLoop:
    """Forecasts, purchases and receipts in; inventory state in Redis; reorders and price changes out."""

    def __init__(
        self,
        client: redis.Redis,
        settings: Settings,
        config: AgentSettings,
        catalog: SkuCatalog | None = None,
        policy: OrderPolicy | None = None,
    ) -> None:
        self.redis = client
        self.settings = settings
        self.config = config
        self.catalog = catalog or SkuCatalog.from_file(config.sku_params)
        self.policy = policy
        self.keys = Keys(config.keyspace)
        topics = settings.topics
        self.sources = {topics.forecasts: "forecast", topics.events: "event", topics.receipts: "receipt"}
        self.consumer: KafkaConsumer = make_consumer(
            settings, config.group_id, **{"fetch.wait.max.ms": config.fetch_wait_max_ms}
        )
        self.producer = make_producer(settings)
        self.dead_letters = DeadLetterWriter(self.producer, topics.events_dlq, stage="agent")
        self.ready = threading.Event()
        self.decisions_sent = 0  # records acknowledged by the broker
        self.decisions_made = 0  # SKU-periods decided (orders and holds)
        self._stop = threading.Event()
        self._inflight: set[str] = set()
        self._next_sweep = 0.0
        self._next_recover = 0.0
        clock_for(config.decision_freq, config.review_periods)  # an unusable decision_freq fails at start
        self.features = FeatureStore(client)
        self.last_demand: tuple[str | None, float] | None = None  # (fallback reason or None, wall time)
        self._decisions_counted = 0
        FORECAST_MAX_AGE.set(config.forecast_max_age_s)
        self.newest_forecast_s = time.time()  # until the clock in Redis says otherwise: waiting since the start
        NEWEST_FORECAST.set(self.newest_forecast_s)

    @property
    def policy_name(self) -> str:
        return f"{self.policy.name} {self.policy.version}" if self.policy is not None else BASE_STOCK

    # ------------------------------------------------------------------------------------------------ running
    def run(self, stop: threading.Event) -> None:
        self._stop = stop
        self.consumer.subscribe(list(self.sources), on_assign=self._on_assign)
        try:
            self._retrying(self._rebuild_totals)
            self._retrying(self._recover_pending)
            while not stop.is_set():
                records = [m for m in self._next_batch() if self._usable(m)]
                if records:
                    self._process(records)
                self._tick()
        except BaseException:
            log.exception("the decision loop died; the records in flight are in the crash ledger")
            raise
        finally:
            self.producer.flush(10)
            self.consumer.close()

    def _next_batch(self) -> list[Message]:
        """What the consumer has queued, up to `max_batch`, without waiting; when nothing is, wait for the first
        record (at most `poll_timeout_s`) and take what came with it. (`consume(n, timeout)` alone would wait the
        whole timeout for n records: a 100 ms floor on every decision.)"""
        batch = self.consumer.consume(self.config.max_batch, timeout=0)
        if batch:
            return batch
        batch = self.consumer.consume(1, timeout=self.config.poll_timeout_s)
        if batch and self.config.max_batch > 1:
            batch += self.consumer.consume(self.config.max_batch - 1, timeout=0)
        return batch

    def _usable(self, msg: Message) -> bool:
        error = msg.error()
        if error is not None:
            if error.code() != KafkaError._PARTITION_EOF:
                log.warning("consumer error: %s", error)
            return False
        return True

    def _on_assign(self, consumer: KafkaConsumer, partitions: list[TopicPartition]) -> None:
        """Seek every assigned partition to the offset stored in Redis with the state (earliest when none)."""
        keys = [self.keys.offset(p.topic, p.partition) for p in partitions]
        delay = 0.5
        while True:
            try:
                stored = cast(list[bytes | None], self.redis.mget(keys)) if keys else []
                break
            except redis.RedisError as exc:
                if self._stop.is_set():
                    return
                log.warning("reading stored offsets failed (%s); retrying in %.1f s", exc, delay)
                self._stop.wait(delay)
                delay = min(delay * 2, 10.0)
        for partition, value in zip(partitions, stored, strict=True):
            partition.offset = int(value) if value is not None else OFFSET_BEGINNING
        consumer.assign(partitions)
        log.info("assigned %s", ", ".join(f"{p.topic}[{p.partition}]@{p.offset}" for p in partitions))
        self.ready.set()

    def _tick(self) -> None:
        """Between batches: the missing-forecast sweep and the recovery of unconfirmed decisions, each at most
        once per `sweep_interval_s`."""
        now = time.monotonic()
        if now >= self._next_sweep:
            self._next_sweep = now + self.config.sweep_interval_s
            self._retrying(self._sweep)
        if now >= self._next_recover:
            self._next_recover = now + self.config.sweep_interval_s
            self._retrying(self._recover_pending)
        self.producer.poll(0)  # delivery reports of decisions whose flush timed out: out of flight
        SKU_DECISIONS.inc(self.decisions_made - self._decisions_counted)
        self._decisions_counted = self.decisions_made

    def _retrying(self, action: Any) -> Any:
        """Run `action` until it gets through Redis (None if stopped first); watched-key conflicts rerun at once."""
        delay = 0.2
        while not self._stop.is_set():
            try:
                return action()
            except redis.WatchError:
                CONFLICTS.inc()
            except (redis.RedisError, ScanIncomplete) as exc:
                log.warning("%s failed (%s); retrying in %.1f s", getattr(action, "__name__", action), exc, delay)
                self._stop.wait(delay)
                delay = min(delay * 2, 10.0)
        return None

    # ------------------------------------------------------------------------------------------------ batches
    def _process(self, messages: list[Message]) -> None:
        """Apply a batch; records that were in flight when an earlier run crashed are applied one per transaction,
        and one that was in flight in two crashed runs is dead-lettered unread (`_crash_ledger`)."""
        consumed_at = time.monotonic()
        ledger = self._retrying(lambda: self._crash_ledger(messages))
        if ledger is None:
            return  # stopped
        doomed, suspects = ledger
        for chunk in _isolating(messages, doomed.keys() | suspects):
            counted = [m for m in chunk if _where(m) in doomed or _where(m) in suspects]
            if not self._process_chunk(chunk, consumed_at, doomed, counted):
                return

    def _process_chunk(
        self,
        messages: list[Message],
        consumed_at: float,
        doomed: dict[tuple[str, int, int], str],
        counted: list[Message],
    ) -> bool:
        """One transaction, its records marked in flight until it is stored; False when stopped first."""
        started = time.perf_counter()
        inflight = {self.keys.inflight(t, p): f"{a}:{b}" for (t, p), (a, b) in _offset_ranges(messages).items()}
        outcome: BatchOutcome | None = None
        if self._retrying(lambda: self.redis.mset(inflight)) is not None:
            outcome = self._retrying(lambda: self._transact(messages, consumed_at, doomed=doomed))
        if outcome is None:
            with contextlib.suppress(redis.RedisError):  # a stop is not a crash (best effort: Redis may be down)
                self.redis.delete(*inflight)
            return False  # stopped before the batch was applied: its offsets are not stored, a restart re-reads it
        self._retrying(lambda: self._clear_ledger(list(inflight), counted))
        BATCH_SECONDS.observe(time.perf_counter() - started)
        self._publish(outcome.decisions)
        if outcome.offsets:
            commits = [TopicPartition(t, p, o) for (t, p), o in outcome.offsets.items()]
            try:
                self.consumer.commit(offsets=commits, asynchronous=True)  # monitoring only: Redis has the truth
            except Exception as exc:  # a failed monitoring commit must not stop the loop
                log.debug("offset commit for monitoring failed: %s", exc)
        return True

    def _crash_ledger(
        self, messages: Sequence[Message]
    ) -> tuple[dict[tuple[str, int, int], str], set[tuple[str, int, int]]]:
        """The crash ledger: before a transaction its records' offset range per partition is stored as in flight
        (`{ks}:inflight:{topic}:{partition}`) and cleared once it is stored, so a range still there belongs to a run
        that crashed with those records in flight. Such a range is counted into `{ks}:crashes:...` (offset ->
        crashed runs, only offsets not yet applied) and cleared, in one MULTI/EXEC. Returns the batch's records that
        were in flight in two crashed runs (to dead-letter unread, with the reason) and those in flight in one (to
        apply one per transaction, so that the next crash pins the record that caused it)."""
        ranges = _offset_ranges(messages)
        parts = sorted(ranges)
        inflight_keys = [self.keys.inflight(t, p) for t, p in parts]
        left = cast(list[bytes | None], self.redis.mget(inflight_keys))
        if any(left):
            stored = cast(list[bytes | None], self.redis.mget([self.keys.offset(t, p) for t, p in parts]))
            with self.redis.pipeline(transaction=True) as tx:
                for (topic, partition), span, done in zip(parts, left, stored, strict=True):
                    if span is None or (bounds := _span(span)) is None:
                        continue
                    first = max(bounds[0], int(done) if done is not None else 0)
                    last = min(bounds[1], first + MAX_LEDGER_SPAN)
                    if last >= first:
                        for offset in range(first, last + 1):
                            tx.hincrby(self.keys.crashes(topic, partition), str(offset), 1)
                    log.error("%s[%d] offsets %d..%d were in flight when a run crashed", topic, partition, first, last)
                tx.delete(*[k for k, span in zip(inflight_keys, left, strict=True) if span is not None])
                tx.execute()
        doomed: dict[tuple[str, int, int], str] = {}
        suspects: set[tuple[str, int, int]] = set()
        reads = self.redis.pipeline(transaction=False)
        by_part = {tp: [m for m in messages if (m.topic(), m.partition()) == tp] for tp in parts}
        for (topic, partition), msgs in by_part.items():
            reads.hmget(self.keys.crashes(topic, partition), [str(m.offset()) for m in msgs])
        for ((topic, partition), msgs), counts in zip(by_part.items(), reads.execute(), strict=True):
            for msg, count in zip(msgs, counts, strict=True):
                where = (topic, partition, cast(int, msg.offset()))
                crashed = int(count) if count is not None and count.isdigit() else 0
                if crashed >= 2:
                    doomed[where] = f"killed the loop twice: in flight in {crashed} crashed runs; not processed"
                elif count is not None:
                    suspects.add(where)
        return doomed, suspects

    def _clear_ledger(self, inflight_keys: list[str], counted: list[Message]) -> None:
        """A stored transaction's records are no longer in flight; the crash counts of those that had one go."""
        with self.redis.pipeline(transaction=True) as tx:
            tx.delete(*inflight_keys)
            for msg in counted:
                tx.hdel(self.keys.crashes(cast(str, msg.topic()), cast(int, msg.partition())), str(msg.offset()))
            tx.execute()

    def _parse(
        self, messages: Sequence[Message], doomed: Mapping[tuple[str, int, int], str] | None = None
    ) -> list[tuple[Message, str, Contract | None, str | None]]:
        """Each record as its contract, or None and the reason to dead-letter it."""
        parsed: list[tuple[Message, str, Contract | None, str | None]] = []
        now = now_ms()
        for msg in messages:
            source = self.sources[msg.topic()]  # type: ignore[index]
            verdict = (doomed or {}).get((cast(str, msg.topic()), cast(int, msg.partition()), cast(int, msg.offset())))
            if verdict is not None:
                parsed.append((msg, source, None, verdict))
                continue
            try:
                record = self._parse_one(msg, source)
                problem = self._implausible(record, now)
            except ContractError as exc:
                record, problem = None, f"not a valid {source} record: {exc}"
            except ValueError as exc:
                record, problem = None, f"forecast freq not usable for decision periods: {exc}"
            except Exception as exc:  # any record that cannot be read is a dead letter, not a crash
                record, problem = None, f"processing failed: {type(exc).__name__}: {exc}"
            parsed.append((msg, source, record if problem is None else None, problem))
        return parsed

    def _parse_one(self, msg: Message, source: str) -> Contract:
        record = SOURCES[source].from_bytes(msg.value())
        if isinstance(record, Forecast):
            clock_for(record.freq, self.config.review_periods)  # periods must be derivable from its freq
        return record

    def _implausible(self, record: Contract, now: int) -> str | None:
        """Why a valid record is dead-lettered anyway: a SKU not in the parameter file (`unknown_sku`), or a time
        beyond this process's clock + `max_clock_skew_s` (`future_ts`; a forecast may start one period later).
        Views, clicks and carts move no stock here: they are ignored, never dead-lettered."""
        if isinstance(record, Event) and record.type not in ("purchase", "return"):
            return None
        sku = cast(Any, record).sku
        if self.config.unknown_sku == "dead_letter" and not self.catalog.knows(sku):
            return f"unknown_sku: {sku} is not in the SKU parameter file (SHELFCAST_AGENT_UNKNOWN_SKU=dead_letter)"
        horizon = self.settings.latest_plausible_ms(now)
        if isinstance(record, Forecast):
            clock = clock_for(record.freq, self.config.review_periods)
            limit = clock.step_start(clock.step(horizon) + 1)
            return _future("forecast start", record.start, limit, "clock + skew + one period")
        if isinstance(record, Event):
            return _future(f"{record.type} ts", record.ts, horizon, "clock + skew")
        if isinstance(record, Receipt):
            return _future("receipt received_at", record.received_at, horizon, "clock + skew")
        return None

    def _transact(
        self,
        messages: Sequence[Message],
        consumed_at: float,
        sweep: tuple[int, str, list[str]] | None = None,
        doomed: Mapping[tuple[str, int, int], str] | None = None,
    ) -> BatchOutcome:
        """One batch (or one sweep) as one Redis transaction; see the module docstring. A record whose processing
        raises (`_parse`, the apply step below, or its SKU's decision in `_decide`) is dead-lettered with the reason
        and undone from the state; the rest of the batch goes on. `doomed` records are dead-lettered unread."""
        parsed = self._parse(messages, doomed)
        partitions: list[tuple[str, int]] = sorted({(cast(str, m.topic()), cast(int, m.partition())) for m in messages})
        offset_keys = [self.keys.offset(t, p) for t, p in partitions]
        skus = {cast(Any, r).sku for _, _, r, _ in parsed if r is not None} | set(sweep[2] if sweep else [])
        ids: list[str] = []
        budget_periods: set[int] = {sweep[0]} if sweep else set()
        for _, _, record, _ in parsed:
            if isinstance(record, Event) and record.type in ("purchase", "return"):
                ids.append(f"e:{record.event_id}")
            elif isinstance(record, Receipt):
                ids.append(f"r:{record.receipt_id}")
            elif isinstance(record, Forecast):
                budget_periods.add(clock_for(record.freq, self.config.review_periods).period_start(record.start))
        sku_list = sorted(skus)
        budget_list = sorted(budget_periods) if self.config.budget_per_period is not None else []
        bucket_ms = self.config.dedupe_window_s * 500  # ids live in half-window buckets: the current one and the last
        bucket = now_ms() // bucket_ms
        seen_keys = [self.keys.seen(bucket), self.keys.seen(bucket - 1)] if ids else []
        watched = [
            *offset_keys,
            *(inventory_key(s) for s in sku_list),
            *seen_keys,
            *(self.keys.budget(p) for p in budget_list),
            self.keys.clock,
        ]
        with self.redis.pipeline(transaction=True) as tx:
            tx.watch(*watched)
            reads = self.redis.pipeline(transaction=False)
            reads.mget(offset_keys or ["-"])
            reads.mget([inventory_key(s) for s in sku_list] or ["-"])
            for key in seen_keys:
                reads.smismember(key, ids)
            reads.hgetall(self.keys.clock)
            reads.mget([self.keys.budget(p) for p in budget_list] or ["-"])
            answers = reads.execute()
            stored_offsets: dict[tuple[str, int], bytes | None] = dict(zip(partitions, answers[0], strict=False))
            raw_states = dict(zip(sku_list, answers[1], strict=False))
            seen = {i for answer in answers[2 : 2 + len(seen_keys)] for i, hit in zip(ids, answer, strict=True) if hit}
            clock = {k.decode(): v.decode() for k, v in answers[2 + len(seen_keys)].items()}
            spent = {p: float(v or 0.0) for p, v in zip(budget_list, answers[3 + len(seen_keys)], strict=False)}
            counts: Counter[tuple[str, str]] = Counter()

            now = now_ms()
            states, corrupt = self._load_states(raw_states)
            kept_forecasts = {sku: state.forecast for sku, state in states.items()}
            before = {sku: self._stock(states[sku]) for sku, raw in raw_states.items() if raw and sku not in corrupt}
            flow = PurchaseFlow()
            touched: set[str] = set()
            new_ids: set[str] = set()
            triggers: dict[str, Trigger] = {}
            outcome = BatchOutcome()
            letters = []
            clock_period = int(clock.get("period_ms", 0))
            clock_freq = clock.get("freq")
            newest_forecast = newest_event = 0
            for msg, source, record, problem in parsed:
                tp, offset = (cast(str, msg.topic()), cast(int, msg.partition())), cast(int, msg.offset())
                stored = stored_offsets.get(tp)
                if stored is not None and offset < int(stored):
                    counts[source, "already_applied"] += 1
                    continue
                outcome.offsets[tp] = max(outcome.offsets.get(tp, 0), offset + 1)
                outcome.applied += 1
                if record is None:
                    letters.append((msg, cast(str, problem)))
                    counts[source, "invalid"] += 1
                    continue
                sku = cast(Any, record).sku
                if sku in corrupt:
                    letters.append((msg, corrupt[sku]))
                    counts[source, "corrupt_state"] += 1
                    continue
                state, prior = states[sku], triggers.get(sku)
                snapshot, clock_before = state.snapshot(), (clock_period, clock_freq, newest_forecast, newest_event)
                try:
                    if isinstance(record, Forecast):
                        touched.add(sku)
                        state.store_forecast(record)
                        period = clock_for(record.freq, self.config.review_periods).period_start(record.start)
                        newest_forecast = max(newest_forecast, record.issued_at)
                        if period > clock_period and self._not_ahead(period, now):
                            clock_period, clock_freq = period, record.freq
                        last = state.last_decision_period_ms
                        pending = triggers.get(sku)
                        if (last is None or period > last) and (pending is None or period >= pending.period_ms):
                            triggers[sku] = Trigger(period, record.freq, record, consumed_at, msg)
                            counts[source, "decides"] += 1
                        else:
                            counts[source, "period_decided"] += 1
                        continue
                    key = (
                        f"e:{record.event_id}" if isinstance(record, Event) else f"r:{cast(Receipt, record).receipt_id}"
                    )
                    if key in seen or key in new_ids:
                        counts[source, "duplicate"] += 1
                        continue
                    if isinstance(record, Event):
                        on_hand_before = state.on_hand
                        lost_sales = self.catalog(sku).lost_sales
                        if not state.apply_event(
                            record, lost_sales=lost_sales, returns_restock=self.config.returns_restock
                        ):
                            counts[source, "ignored"] += 1
                            continue
                        if record.type == "purchase":
                            flow.add(on_hand_before, record.qty)
                        if self._not_ahead(record.ts, now):
                            newest_event = max(newest_event, record.ts)
                        counts[source, record.type] += 1
                    else:
                        counts[source, f"receipt_{state.apply_receipt(cast(Receipt, record))}"] += 1
                    new_ids.add(key)
                    touched.add(sku)
                except Exception as exc:  # this record is a dead letter; the state is as it was before it
                    log.exception("applying %s record at %s failed", source, _where(msg))
                    states[sku] = snapshot
                    clock_period, clock_freq, newest_forecast, newest_event = clock_before
                    if prior is None:
                        triggers.pop(sku, None)
                    else:
                        triggers[sku] = prior
                    letters.append((msg, f"processing failed: {type(exc).__name__}: {exc}"))
                    counts[source, "failed"] += 1

            clock_update = self._clock_update(clock, clock_period, clock_freq, newest_event, newest_forecast, now)
            if sweep is not None:
                period, freq, swept = sweep
                for sku in swept:
                    swept_trigger = self._sweep_trigger(states[sku], period, freq, consumed_at)
                    if swept_trigger is not None:
                        triggers[sku] = swept_trigger

            failed: dict[str, str] = {}
            decided = self._decide(triggers, states, spent, now, failed)
            for sku, why in failed.items():  # the state is as before the decision; the forecast is not kept
                trigger = triggers.pop(sku)
                if trigger.forecast is not None:
                    states[sku].forecast = kept_forecasts.get(sku)
                if trigger.message is not None:
                    letters.append((trigger.message, why))
                    counts["forecast", "decision_failed"] += 1
                else:  # the sweep's: no record to dead-letter; it is tried again at the next sweep
                    counts["sweep", "decision_failed"] += 1
            touched |= set(triggers) | set(corrupt)

            if letters:  # at-least-once: acknowledged before the offsets that skip them are stored
                for msg, why in letters:
                    self.dead_letters.send_message(msg, why)
                if self.producer.flush(self.config.flush_timeout_s) > 0:
                    raise redis.RedisError("dead letters not acknowledged; batch retried")  # retried like Redis

            tx.multi()
            for sku in corrupt:
                tx.set(self.keys.corrupt(sku), cast(bytes, raw_states[sku]), ex=self.config.decision_ttl_s)
            if touched:
                for sku in touched:
                    states[sku].updated_at = now
                tx.mset({inventory_key(sku): states[sku].model_dump_json() for sku in touched})
                tx.zadd(self.keys.skus, {sku: states[sku].last_decision_period_ms or 0 for sku in touched})
            if new_ids:
                tx.sadd(self.keys.seen(bucket), *new_ids)
                tx.expire(self.keys.seen(bucket), self.config.dedupe_window_s + 60)
            if decided:
                records = {self.keys.decision(d.record.decision_id): d.record.model_dump_json() for d in decided}
                tx.mset(records)
                for key in records:
                    tx.expire(key, self.config.decision_ttl_s)
                tx.zadd(self.keys.pending, {d.record.decision_id: now for d in decided})
            for period, total in spent.items():
                tx.set(self.keys.budget(period), repr(total), ex=self.config.decision_ttl_s)
            if outcome.offsets:
                tx.mset({self.keys.offset(t, p): o for (t, p), o in outcome.offsets.items()})
            if clock_update:
                tx.hset(self.keys.clock, mapping=clock_update)
            change = sum((self._stock(states[s]) - before.get(s, StockTotals()) for s in touched), StockTotals())
            if touched:  # last in the transaction: their answers are the new totals
                for name, delta in change.fields().items():
                    tx.hincrbyfloat(self.keys.totals, name, delta)
            answers = tx.execute()
        for (source, label), n in counts.items():
            RECORDS.labels(source=source, outcome=label).inc(n)
        STATE_RESETS.inc(len(corrupt))
        count_purchases(flow)
        if touched:
            show_totals(StockTotals(*(float(a) for a in answers[-3:])))
        self._count(decided, triggers, states)
        outcome.decisions = decided
        return outcome

    def _load_states(self, raw_states: dict[str, bytes | None]) -> tuple[dict[str, InventoryState], dict[str, str]]:
        """Each SKU's stored state (a new one when none), and the SKUs whose stored state is corrupt, with the reason.

        A corrupt state cannot be repaired from what is left of it: the SKU starts again from its defaults (as a new
        SKU: `initial_on_hand`, no pipeline), logged and counted (`shelfcast_agent_state_resets_total`); the corrupt
        value is kept at `{ks}:corrupt:{sku}` for whoever reconciles the SKU with the ERP, and the records of that SKU
        in the batch that found it are dead-lettered with the reason (they can be replayed from there). Later
        records apply to the new state."""
        states: dict[str, InventoryState] = {}
        corrupt: dict[str, str] = {}
        for sku, raw in raw_states.items():
            if not raw:
                states[sku] = InventoryState.new(sku, self.catalog(sku))
                continue
            try:
                states[sku] = parse_state(sku, raw)
            except CorruptState as exc:
                log.error("%s; reset to the SKU's defaults, the value kept at %s", exc, self.keys.corrupt(sku))
                states[sku] = InventoryState.new(sku, self.catalog(sku))
                corrupt[sku] = (
                    f"{exc}; the state was reset to the SKU's defaults (the old value: {self.keys.corrupt(sku)})"
                )
        return states, corrupt

    def _stock(self, state: InventoryState) -> StockTotals:
        return StockTotals.of_state(state, self.catalog(state.sku).unit_cost)

    def _rebuild_totals(self, chunk: int = 1_000) -> None:
        """`{ks}:totals` from every SKU's state; a batch that changes them meanwhile (WATCH) makes it start over."""
        with self.redis.pipeline(transaction=True) as tx:
            tx.watch(self.keys.totals)
            skus = [s.decode() for s in cast(list[bytes], self.redis.zrange(self.keys.skus, 0, -1))]
            totals = StockTotals()
            for i in range(0, len(skus), chunk):
                part = skus[i : i + chunk]
                raw = cast(list[bytes | None], self.redis.mget([inventory_key(s) for s in part]))
                for sku, value in zip(part, raw, strict=True):
                    if value is None:
                        continue
                    try:
                        totals = totals + StockTotals.of_json(value, self.catalog(sku).unit_cost)
                    except CorruptState as exc:  # counted as nothing: the next record of the SKU resets it
                        log.error("%s: %s; left out of the totals", inventory_key(sku), exc)
            tx.multi()
            tx.delete(self.keys.totals)
            tx.hset(self.keys.totals, mapping=totals.fields())
            tx.execute()
        show_totals(totals)

    # ------------------------------------------------------------------------------------------------ deciding
    def _decide(
        self,
        triggers: dict[str, Trigger],
        states: dict[str, InventoryState],
        spent: dict[int, float],
        now: int,
        failed: dict[str, str] | None = None,
    ) -> list[Decided]:
        """Orders and prices for the triggered SKUs, in SKU order (so the budget is spent deterministically). A SKU
        whose decision raises is left undecided with its state as before and put in `failed` with the reason; the
        others are decided. (With no `failed` given, the error is raised.)"""
        if not triggers:
            return []
        failures: dict[str, str] = {}
        plans: dict[str, tuple[OrderPlan, str | None, str, str]] = {}
        views: list[SkuView] = []
        history = self._daily_history(triggers, now)
        for sku in sorted(triggers):
            try:
                view = self._plan(sku, triggers[sku], states[sku], now, history.get(sku), plans)
            except Exception as exc:
                failures[sku] = self._decision_failed(sku, exc, failed is None)
                continue
            if view is not None:
                views.append(view)
        if views and self.policy is not None:
            self._learned(views, plans)

        decided: list[Decided] = []
        for sku in sorted(set(triggers) - set(failures)):
            snapshot = states[sku].snapshot()
            try:
                decided += self._order(sku, triggers[sku], states[sku], plans[sku], spent, now)
            except Exception as exc:
                states[sku] = snapshot
                failures[sku] = self._decision_failed(sku, exc, failed is None)
        if failed is not None:
            failed.update(failures)
        return decided

    def _decision_failed(self, sku: str, exc: Exception, reraise: bool) -> str:
        if reraise:
            raise exc
        log.error("the decision for %s failed; its trigger is dead-lettered", sku, exc_info=exc)
        return f"decision failed for {sku}: {type(exc).__name__}: {exc}"

    def _plan(
        self,
        sku: str,
        trigger: Trigger,
        state: InventoryState,
        now: int,
        daily: tuple[np.ndarray, np.ndarray] | None,
        plans: dict[str, tuple[OrderPlan, str | None, str, str]],
    ) -> SkuView | None:
        """The capped base-stock plan of one SKU into `plans`; what the learned policy needs of it, if it asks."""
        params = self.catalog(sku)
        quantiles, first_step, source, fallback = self._demand(trigger, state, params, now, daily)
        plan = capped_base_stock(
            state.inventory_position, quantiles, params, self.config.review_periods, first_step, source
        )
        if fallback is None and self.config.model_dir is not None and self.policy is None:
            fallback = "no_model"
        plans[sku] = (plan, fallback, BASE_STOCK, BASE_STOCK_VERSION)
        if fallback is None and self.policy is not None:
            periods = params.protection_periods + self.config.review_periods
            per_period, _ = per_period_quantiles(quantiles, first_step, periods)
            step = clock_for(trigger.freq, self.config.review_periods).step(trigger.period_ms)
            slots = state.pipeline_slots(step)
            return SkuView(sku, params, state.on_hand, slots, state.price, per_period, plan.wanted)
        return None

    def _order(
        self,
        sku: str,
        trigger: Trigger,
        state: InventoryState,
        planned: tuple[OrderPlan, str | None, str, str],
        spent: dict[int, float],
        now: int,
    ) -> list[Decided]:
        """The guardrails on one SKU's plan (recent demand, budget), then its decision records."""
        params = self.catalog(sku)
        plan, fallback, policy, version = planned
        clock = clock_for(trigger.freq, self.config.review_periods)
        last = state.last_decision_period_ms
        periods = clock.step(trigger.period_ms) - clock.step(last) if last is not None else 1
        plan = cap_to_recent_demand(
            plan,
            params,
            state.recent_demand(periods),
            self.config.max_order_demand_multiple,
            self.config.max_order_floor_units,
            self.config.review_periods,
        )
        if self.config.budget_per_period is not None:
            before = plan
            plan = apply_budget(plan, params, self.config.budget_per_period - spent.get(trigger.period_ms, 0.0))
            if plan.budget_cut and not before.budget_cut:
                BUDGET_CUTS.inc()
        if fallback is not None:
            plan = _with_reason(plan, f"{plan.reason} [fallback: {fallback.replace('_', ' ')}]")
        decided = self._record(sku, trigger, state, params, plan, fallback, policy, version, now)
        if self.config.budget_per_period is not None:
            spent[trigger.period_ms] = spent.get(trigger.period_ms, 0.0) + params.unit_cost * plan.qty
        return decided

    def _demand(
        self,
        trigger: Trigger,
        state: InventoryState,
        params: SkuParams,
        now: int,
        daily: tuple[np.ndarray, np.ndarray] | None = None,
    ) -> tuple[dict[str, list[float]], int, str, str | None]:
        """Quantiles to decide on, the first step that lies in the decision period, a description, and the reason
        for falling back (None when the forecast is fresh). Without a fresh forecast: the newest one while it still
        covers the period and is not stale, else the SKU's daily windows (`daily`: their starts and units), else its
        sales rate, else its default demand."""
        answer = self._demand_source(trigger, state, params, now, daily)
        self.last_demand = (answer[3], time.time())
        return answer

    def _demand_source(
        self,
        trigger: Trigger,
        state: InventoryState,
        params: SkuParams,
        now: int,
        daily: tuple[np.ndarray, np.ndarray] | None,
    ) -> tuple[dict[str, list[float]], int, str, str | None]:
        clock = clock_for(trigger.freq, self.config.review_periods)
        step = clock.step(trigger.period_ms)
        max_age_ms = self.config.forecast_max_age_s * 1000
        forecast = trigger.forecast
        stale: tuple[dict[str, list[float]], int, str] | None = None
        if forecast is not None:
            first = max(step - clock.step(forecast.start), 0)
            kept = describe_forecast(forecast.model, forecast.model_version, forecast.fallback)
            age_s = (now - forecast.issued_at) / 1000
            if now - forecast.issued_at <= max_age_ms:
                return dict(forecast.quantiles), first, kept, None
            stale = (dict(forecast.quantiles), first, f"{kept}, stale: {age_s / 3600:.1f} h old")
        elif (stored := state.forecast) is not None and stored.freq == trigger.freq:
            elapsed = step - clock.step(stored.start)
            if 0 <= elapsed < len(stored.quantiles["p50"]):
                if now - stored.issued_at <= max_age_ms:
                    note = f"{stored.describe()}, the newest (none for this period)"
                    return stored.quantiles, elapsed, note, "missing_forecast"
                age_h = (now - stored.issued_at) / 3_600_000
                stale = (stored.quantiles, elapsed, f"{stored.describe()}, the newest, stale: {age_h:.1f} h old")
        why = "stale_forecast" if stale is not None else "missing_forecast"
        step_days = (clock.step_start(step + 1) - clock.step_start(step)) / DAY_MS
        windows = daily_fallback(*daily, trigger.period_ms, step_days) if daily is not None else None
        if windows is not None:
            return windows.quantiles, 0, f"{windows.describe(step_days)} ({why.replace('_', ' ')})", why
        if stale is not None:
            return *stale, why
        rate = state.demand_rate
        if rate is None and state.sold_since_decision > 0:
            rate = state.sold_since_decision  # one period of sales so far
        if rate is None:
            return (
                poisson_quantiles(params.default_demand, 1),
                0,
                (f"default demand {params.default_demand:g} per period (no forecast, no sales history)"),
                why,
            )
        return poisson_quantiles(rate, 1), 0, f"sales rate {rate:.2f} per period (no forecast)", why

    def _daily_history(self, triggers: dict[str, Trigger], now: int) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """Daily windows (starts, units) of the SKUs without a fresh forecast, in one pipelined round trip. Windows
        that cannot be read as numbers leave their SKUs to the next fallback (sales rate, default demand)."""
        max_age_ms = self.config.forecast_max_age_s * 1000
        skus = [s for s, t in triggers.items() if t.forecast is None or now - t.forecast.issued_at > max_age_ms]
        if not skus:
            return {}
        try:
            found = self.features.latest_values(skus, GRANULARITY, 2 * LOOKBACK_DAYS, ["units"])
        except (ValueError, KeyError, TypeError) as exc:  # Redis errors propagate: the batch is retried
            log.warning("daily windows of %d SKUs unreadable (%s); deciding on their sales rate", len(skus), exc)
            return {}
        return {sku: (starts, values[:, 0]) for sku, (starts, values) in found.items() if starts.size}

    def _learned(self, views: list[SkuView], plans: dict[str, tuple[OrderPlan, str | None, str, str]]) -> None:
        """The learned policy's orders for `views`, in place of the base-stock plans unless its answer is bad."""
        policy = cast(OrderPolicy, self.policy)
        try:
            wanted, placed, problems = learned_orders(policy, views, self.config.q_value_limit)
        except Exception:  # any failure of the model: fall back, counted
            log.exception("the learned policy failed on %d SKUs; capped base-stock instead", len(views))
            for view in views:
                plan, _, name, version = plans[view.sku]
                plans[view.sku] = (plan, "policy_error", name, version)
            return
        for view, want, qty, problem in zip(views, wanted, placed, problems, strict=True):
            base, _, name, version = plans[view.sku]
            if problem is not None:
                plans[view.sku] = (base, problem, name, version)
                continue
            reason = (
                f"{policy.name} {policy.version} orders {int(qty)} (wanted {want:g}) at inventory position"
                f" {base.position:g}; capped base-stock would order {base.qty} (order-up-to {base.order_up_to:g})"
            )
            plan = OrderPlan(
                int(qty), float(want), base.order_up_to, base.cap, base.position, base.mean_per_period, reason
            )
            plans[view.sku] = (plan, None, policy.name, policy.version)

    def _record(
        self,
        sku: str,
        trigger: Trigger,
        state: InventoryState,
        params: SkuParams,
        plan: OrderPlan,
        fallback: str | None,
        policy: str,
        version: str,
        now: int,
    ) -> list[Decided]:
        """Apply a decision to the state and build its records (pending until the broker acknowledges them)."""
        clock = clock_for(trigger.freq, self.config.review_periods)
        step = clock.step(trigger.period_ms)
        if state.last_decision_period_ms is not None:
            state.update_demand_rate(step - clock.step(state.last_decision_period_ms))
        else:
            state.sold_since_decision = 0.0
        reorder_id = decision_id(sku, trigger.period_ms)
        out: list[Decided] = []
        position = state.inventory_position
        if plan.qty > 0:
            eta_step = step + params.expected_lead
            eta_ms = clock.step_start(eta_step)
            state.pipeline.append(
                Outstanding(
                    decision_id=reorder_id,
                    qty=plan.qty,
                    ordered_period_ms=trigger.period_ms,
                    eta_ms=eta_ms,
                    eta_step=eta_step,
                )
            )
            reorder = Reorder(
                decision_id=reorder_id,
                sku=sku,
                qty=plan.qty,
                issued_at=now,
                policy=policy,
                policy_version=version,
                inventory_position=position,
                reason=plan.reason[:2000],
                expected_at=eta_ms,
            )
            out.append(self._pending(reorder, "reorder", self.settings.topics.reorders, trigger, plan.qty, now))
        state.last_decision_period_ms = trigger.period_ms
        state.last_decision = LastDecision(
            decision_id=reorder_id,
            period_ms=trigger.period_ms,
            qty=plan.qty,
            order_up_to=plan.order_up_to,
            policy=policy,
            fallback=fallback,
            reason=plan.reason,
            decided_at=now,
        )
        if state.price is not None:
            price = price_rule(
                state.price,
                params,
                position,
                position + plan.qty,
                plan.order_up_to,
                self.config.markdown_above,
                self.config.scarce_below,
            )
            if price is not None:
                change = PriceChange(
                    decision_id=decision_id(sku, trigger.period_ms, "price"),
                    sku=sku,
                    old_price=price.old_price,
                    new_price=price.new_price,
                    issued_at=now,
                    policy="bounded-markdown",
                    reason=price.reason,
                )
                state.price = price.new_price
                out.append(self._pending(change, "price", self.settings.topics.prices, trigger, 0, now))
        return out

    def _pending(
        self, record: Reorder | PriceChange, kind: str, topic: str, trigger: Trigger, units: int, now: int
    ) -> Decided:
        entry = DecisionRecord(
            decision_id=record.decision_id,
            kind=kind,  # type: ignore[arg-type]
            topic=topic,
            sku=record.sku,
            value=record.model_dump_json(),
            recorded_at=now,
        )
        return Decided(entry, trigger.consumed_at, units)

    def _count(self, decided: list[Decided], triggers: dict[str, Trigger], states: dict[str, InventoryState]) -> None:
        self.decisions_made += len(triggers)
        for sku in triggers:
            last = states[sku].last_decision
            if last is None:
                continue
            if last.fallback is not None:
                FALLBACKS.labels(reason=last.fallback).inc()
            DECISIONS.labels(policy=last.policy, kind="reorder" if last.qty > 0 else "hold").inc()
        for item in decided:
            if item.record.kind == "price":
                DECISIONS.labels(policy="bounded-markdown", kind="price").inc()
            ORDER_UNITS.inc(item.units)

    # ------------------------------------------------------------------------------------------------ publishing
    def _publish(self, decided: list[Decided]) -> None:
        """Produce recorded decisions, wait for the broker, mark the acknowledged ones sent. A failed delivery
        stays pending: the recovery checks the topic before producing it again. A decision stays in flight (out of
        the recovery's reach) until the producer reports on it, not only until `flush` gives up waiting: after a
        flush timeout (a stalled broker) the producer still holds it and delivers it once the broker is back, so
        producing it again would put it on the topic twice. Acknowledged after the timeout, it stays pending until
        the recovery finds it on the topic."""
        if not decided:
            return
        acked: list[Decided] = []

        def on_delivery(item: Decided) -> Any:
            def done(err: KafkaError | None, _msg: Message) -> None:
                self._inflight.discard(item.record.decision_id)
                if err is None:
                    acked.append(item)
                else:
                    log.error("decision %s not delivered: %s", item.record.decision_id, err)

            return done

        for item in decided:
            rec = item.record
            self._inflight.add(rec.decision_id)
            try:
                self.producer.produce(rec.topic, rec.value.encode(), rec.sku.encode(), on_delivery=on_delivery(item))
            except (BufferError, KafkaException) as exc:  # never handed over: pending, for the recovery to resend
                self._inflight.discard(rec.decision_id)
                log.error("decision %s not produced: %s", rec.decision_id, exc)
        self.producer.flush(self.config.flush_timeout_s)
        if acked:
            self._retrying(lambda: self._mark_sent([a.record for a in acked]))
        ack_time = time.monotonic()
        for item in acked:
            DECISION_SECONDS.observe(ack_time - item.consumed_at)
            EMITTED.labels(topic=EMITTED_TOPIC[item.record.kind]).inc()
        if acked:
            self.decisions_sent += len(acked)
            LAST_DECISION_TIMESTAMP.set(time.time())

    def _mark_sent(self, records: Sequence[DecisionRecord]) -> None:
        """Confirmed: out of the pending set (the record itself stays until its TTL, for audits)."""
        self.redis.zrem(self.keys.pending, *[r.decision_id for r in records])

    # ------------------------------------------------------------------------------------------------ recovery
    def _recover_pending(self) -> None:
        """Unconfirmed decisions (not ours in flight, older than `pending_recover_after_s`): mark the ones already
        on their topic sent, produce the others (module docstring)."""
        cutoff = now_ms() - self.config.pending_recover_after_s * 1000
        ids = [i.decode() for i in cast(list[bytes], self.redis.zrangebyscore(self.keys.pending, "-inf", cutoff))]
        ids = [i for i in ids if i not in self._inflight]
        if not ids:
            return
        raw = cast(list[bytes | None], self.redis.mget([self.keys.decision(i) for i in ids]))
        records: list[DecisionRecord] = []
        orphans: list[str] = []
        for decision, value in zip(ids, raw, strict=True):
            if value is None:
                orphans.append(decision)
                continue
            try:
                records.append(DecisionRecord.model_validate_json(value))
            except ValidationError as exc:  # cannot be sent as recorded: left at its key, for whoever audits it
                log.error("decision record %s is corrupt (%s); not re-sent", decision, describe_errors(exc))
                orphans.append(decision)
        if orphans:
            self.redis.zrem(self.keys.pending, *orphans)
        pending = records
        if not pending:
            return
        log.warning("%d decisions were recorded but not confirmed; checking their topics", len(pending))
        since = min(r.recorded_at for r in pending) - 60_000
        found: set[str] = set()
        for topic in sorted({r.topic for r in pending}):
            found |= self._ids_on_topic(topic, {r.decision_id for r in pending if r.topic == topic}, since)
        already = [r for r in pending if r.decision_id in found]
        if already:
            self._mark_sent(already)
            RECOVERED.labels(outcome="found_on_topic").inc(len(already))
        again = [r for r in pending if r.decision_id not in found]
        if again:
            log.warning("re-sending %d decisions not found on their topics", len(again))
            self._publish([Decided(r, time.monotonic()) for r in again])
            RECOVERED.labels(outcome="resent").inc(len(again))

    def _ids_on_topic(self, topic: str, wanted: set[str], since_ms: int) -> set[str]:
        """Which of `wanted` decision ids are on `topic`, read from `since_ms` to the end of every partition."""
        scanner = make_consumer(
            self.settings,
            f"{self.config.group_id}-scan-{uuid.uuid4().hex[:8]}",
            **{"enable.partition.eof": True, "enable.auto.commit": False},
        )
        try:
            meta = scanner.list_topics(topic, timeout=10).topics.get(topic)
            if meta is None or meta.error is not None:
                raise ScanIncomplete(f"topic {topic} metadata unavailable")
            asked = [TopicPartition(topic, p, since_ms) for p in sorted(meta.partitions)]
            starts = scanner.offsets_for_times(asked, timeout=10)
            assignment = [TopicPartition(topic, tp.partition, tp.offset) for tp in starts if tp.offset >= 0]
            remaining = {tp.partition for tp in assignment}
            if not remaining:
                return set()
            scanner.assign(assignment)
            found: set[str] = set()
            deadline = time.monotonic() + self.config.scan_timeout_s
            while remaining and time.monotonic() < deadline:
                msg = scanner.poll(0.2)
                if msg is None:
                    continue
                error = msg.error()
                if error is not None:
                    if error.code() == KafkaError._PARTITION_EOF:
                        remaining.discard(cast(int, msg.partition()))
                    continue
                try:
                    value = orjson.loads(msg.value() or b"{}")
                except orjson.JSONDecodeError:
                    continue
                if isinstance(value, dict) and value.get("decision_id") in wanted:
                    found.add(value["decision_id"])
            if remaining:
                raise ScanIncomplete(f"{topic} partitions {sorted(remaining)} not read to their end in time")
            return found
        finally:
            scanner.close()

    # ------------------------------------------------------------------------------------------------ sweep
    def _sweep(self) -> None:
        """Decide, with a fallback, for the SKUs not yet decided in the clock's period once `missing_forecast_grace_s`
        has passed since the clock reached it (their forecast did not come in time)."""
        clock = {k.decode(): v.decode() for k, v in cast(dict, self.redis.hgetall(self.keys.clock)).items()}
        STATE_SKUS.set(cast(int, self.redis.zcard(self.keys.skus)))
        if "forecast_ms" in clock:
            self.newest_forecast_s = int(clock["forecast_ms"]) / 1000
            NEWEST_FORECAST.set(self.newest_forecast_s)
        current = self._current_period(clock)
        if current is None:
            return
        period, freq, reached_at = current
        CLOCK_PERIOD.set(period / 1000)
        if now_ms() - reached_at < self.config.missing_forecast_grace_s * 1000:
            return
        page = self.config.max_batch
        for start in range(0, cast(int, self.redis.zcard(self.keys.skus)), page):
            raw = self.redis.zrangebyscore(self.keys.skus, "-inf", f"({period}", start=start, num=page)
            late = [s.decode() for s in cast(list[bytes], raw)]
            made = self.decisions_made
            if late:
                outcome = self._transact([], time.monotonic(), (period, freq, late))
                self._publish(outcome.decisions)
            if self.decisions_made > made or len(late) < page:
                return  # decided SKUs leave the late range; the next sweep goes on from the start
            # a whole page not due (SKUs deciding in longer periods of their own): the next page

    def _current_period(self, clock: dict[str, str]) -> tuple[int, str, int] | None:
        """(period start, freq, when the clock reached it) from the clock hash, or from the wall clock when
        `wall_clock` is on and it is further; None before anything moved the clock."""
        freq = clock.get("freq", self.config.decision_freq)
        current = (int(clock["period_ms"]), freq, int(clock["advanced_at_ms"])) if "period_ms" in clock else None
        if self.config.wall_clock:
            wall = clock_for(freq, self.config.review_periods).period_start(now_ms())
            if current is None or wall > current[0]:
                current = (wall, freq, wall)
        return current

    def _not_ahead(self, ms: int, now: int) -> bool:
        """A record's time may move the decision clock only up to the shared skew ahead of this process's clock."""
        return ms <= self.settings.latest_plausible_ms(now)

    def _clock_update(
        self, clock: dict[str, str], period: int, freq: str | None, newest_event: int, newest_forecast: int, now: int
    ) -> dict[str, int | str]:
        """The clock hash's changed fields (none: nothing to write). The period moves to the newest forecast period
        (`period`, `freq`) or the period of the newest purchase/return time, in the clock's freq (`decision_freq`
        before any forecast); `forecast_ms` is the newest forecast's issued_at (before any: when the clock started)."""
        freq = freq or self.config.decision_freq
        if newest_event:
            period = max(period, clock_for(freq, self.config.review_periods).period_start(newest_event))
        update: dict[str, int | str] = {}
        if period > int(clock.get("period_ms", 0)):
            update = {"period_ms": period, "freq": freq, "advanced_at_ms": now}
        known = int(clock.get("forecast_ms", 0))
        newest_forecast = min(newest_forecast, now)  # a forecast issued "in the future" was consumed now
        if newest_forecast > known or (update and not known):
            update["forecast_ms"] = max(newest_forecast, known) or now
        return update

    def _sweep_trigger(self, state: InventoryState, period: int, freq: str, consumed_at: float) -> Trigger | None:
        """The sweep's decision for one SKU, in the periods of its own newest forecast's freq when it has one."""
        stored = state.forecast
        if stored is not None and stored.freq != freq:
            period = clock_for(stored.freq, self.config.review_periods).period_start(period)
            freq = stored.freq
        last = state.last_decision_period_ms
        if last is None or period > last:
            return Trigger(period, freq, None, consumed_at)
        return None

    # ------------------------------------------------------------------------------------------------ readiness
    def assigned(self) -> bool:
        """Whether the consumer holds any partition now (a rebalance or a lost group leaves it none)."""
        try:
            return bool(self.consumer.assignment())
        except RuntimeError:  # the consumer is closed
            return False

    def fallback_status(self) -> dict[str, Any]:
        """For /readyz: whether the newest decision fell back for want of a fresh forecast, and the newest
        forecast's age."""
        newest_age_s = time.time() - self.newest_forecast_s
        reason, at = self.last_demand if self.last_demand is not None else (None, None)
        return {
            "deciding_on_fallbacks": reason in FORECAST_FALLBACKS,
            "last_decision_fallback": reason,
            "last_decision_at": at,
            "newest_forecast_age_s": round(newest_age_s, 1),
            "forecast_max_age_s": self.config.forecast_max_age_s,
        }


def _where(msg: Message) -> tuple[str, int, int]:
    return cast(str, msg.topic()), cast(int, msg.partition()), cast(int, msg.offset())


def _offset_ranges(messages: Sequence[Message]) -> dict[tuple[str, int], tuple[int, int]]:
    """(topic, partition) -> (first, last) offset of the messages."""
    ranges: dict[tuple[str, int], tuple[int, int]] = {}
    for msg in messages:
        topic, partition, offset = _where(msg)
        first, last = ranges.get((topic, partition), (offset, offset))
        ranges[topic, partition] = (min(first, offset), max(last, offset))
    return ranges


def _span(raw: bytes) -> tuple[int, int] | None:
    """`first:last` offsets from the crash ledger; None (ignored) when it is not that."""
    first, _, last = raw.partition(b":")
    if not (first.isdigit() and last.isdigit()):
        log.error("crash ledger entry %r is not first:last offsets; ignored", raw[:100])
        return None
    return int(first), int(last)


def _isolating(messages: list[Message], alone: Collection[tuple[str, int, int]]) -> list[list[Message]]:
    """The messages in order, in chunks: each one in `alone` by itself, the others together between them."""
    if not alone:
        return [messages]
    chunks: list[list[Message]] = []
    run: list[Message] = []
    for msg in messages:
        if _where(msg) in alone:
            chunks += [run, [msg]] if run else [[msg]]
            run = []
        else:
            run.append(msg)
    return [*chunks, run] if run else chunks


def _future(what: str, ms: int, limit: int, bound: str) -> str | None:
    if ms <= limit:
        return None
    return f"future_ts: {what} {_iso(ms)} is beyond this agent's {bound} ({_iso(limit)})"


def _iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="seconds")


def _with_reason(plan: OrderPlan, reason: str) -> OrderPlan:
    return OrderPlan(
        plan.qty, plan.wanted, plan.order_up_to, plan.cap, plan.position, plan.mean_per_period, reason, plan.budget_cut
    )


def load_policy(config: AgentSettings) -> OrderPolicy | None:
    """The learned policy from `model_dir`, or None: capped base-stock decides (and, when a model_dir was configured
    but could not be loaded, every decision counts a `no_model` fallback)."""
    if config.model_dir is None:
        return None
    if not config.model_dir.exists():
        log.error("model_dir %s does not exist; deciding with capped base-stock", config.model_dir)
        return None
    try:
        return load_dqn_policy(config.model_dir)
    except Exception:  # a model that cannot load must not stop the agent
        log.exception("the DQN in %s could not be loaded; deciding with capped base-stock", config.model_dir)
        return None


class DqnOrders:
    """`shelfcast_agent.dqn.DQNPolicy` behind the `OrderPolicy` protocol. The DQN is a residual policy: it corrects
    an anchor's order. Online, the anchor is this agent's capped base-stock order from the forecast (fitting the
    DQN's own classical anchors by simulation for every SKU and period would be far too slow here)."""

    name = "dqn"

    def __init__(self, dqn: Any) -> None:
        self.dqn = dqn
        self.version = str(dqn.policy_version)

    def order_for(self, sim: InventorySim, state: State, anchor: np.ndarray) -> PolicyAnswer:
        self.dqn.bind(sim, _FixedOrders(anchor))
        quantities, q = self.dqn.order_for(sim, state)
        return PolicyAnswer(np.asarray(quantities, dtype=float), np.asarray(q), self.dqn.q_in_range(q))


class _FixedOrders:
    """An anchor whose orders are already computed (one per copy of the sim)."""

    def __init__(self, orders: np.ndarray) -> None:
        self.orders = np.asarray(orders, dtype=float)

    def order(self, sim: InventorySim, state: State) -> np.ndarray:
        return self.orders


def load_dqn_policy(model_dir: Path) -> OrderPolicy:
    """The trained DQN in `model_dir` (`dqn.DQNPolicy.load`), as an `OrderPolicy`."""
    from shelfcast_agent.dqn import DQNPolicy

    return DqnOrders(DQNPolicy.load(model_dir))


def run_forever(settings: Settings, config: AgentSettings, stop: threading.Event) -> AgentLoop:
    """Build the loop from settings and run it until `stop` (the CLI's --no-http mode and `python -m`)."""
    from shelfcast.store import connect_redis

    loop = AgentLoop(connect_redis(settings.redis_url), settings, config, policy=load_policy(config))
    loop.run(stop)
    return loop
