"""The features job on the real broker and Redis: windows exactly equal to a plain-Python reference.

The stream is played in phases, each ended by a probe window that proves the watermark got there, so
which events are late is decided by the stream, not by timing:
  A  on-time events, a little out of order, with duplicates and malformed records; watermark -> T0+20m
  B  late events: some within the allowed lateness (they update their windows), some too late for the
     1-minute windows (dead-lettered for that granularity, still counted in 1h and 1d), late duplicates
  C  an event three days on closes every window.
"""

import json
import os
import signal
import time
import uuid
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from pydantic import ValidationError

from shelfcast.contracts import DeadLetter, Event, FeatureWindow
from shelfcast.infra import ManagedProcess, free_port, start_kafka, start_service
from shelfcast.kafka import ensure_topics, make_consumer, make_producer
from shelfcast.settings import Settings, TopicNames
from shelfcast.store import FeatureStore, connect_redis, feature_key

pytestmark = pytest.mark.integration

T0 = 1_767_225_600_000  # 2026-01-01T00:00:00Z
MINUTE, HOUR, DAY = 60_000, 3_600_000, 86_400_000
SIZES = {"1m": MINUTE, "1h": HOUR, "1d": DAY}
OUT_OF_ORDERNESS, LATENESS = 5_000, 60_000
PARTITIONS = 3
EARLY_POISON = b"{early broken json"


@dataclass
class Stream:
    """The test's events; `prefix` keeps its event ids, SKUs and Redis keys apart from other tests'."""

    prefix: str

    def event(self, i: str, kind: str, sku: str, ts: int, qty: int = 1, price: float = 2.5) -> bytes:
        record = {"event_id": f"{self.prefix}-{i}", "type": kind, "sku": f"{self.prefix}-{sku}", "ts": ts}
        return json.dumps({**record, "qty": qty, "price": price, "currency": "EUR"}).encode()


def on_time_events(stream: Stream) -> list[bytes]:
    kinds = ["view", "view", "click", "cart", "purchase", "view", "return"]
    events = []
    for n in range(300):
        ts = (
            T0 + n * 2_000 + (3_000 if n % 4 == 0 else 0)
        )  # every 4th a little ahead: the next ones arrive out of order
        events.append(stream.event(str(n), kinds[n % 7], f"S{n % 5}", ts, qty=1 + n % 3, price=1.5 + n % 4))
    events.insert(5, EARLY_POISON)
    events += [events[10], events[42]]  # duplicate deliveries
    events += [b"{broken json", stream.event("bad-sku", "view", "x y", T0), b'{"event_id": "no-fields"}']
    return events


def late_events(stream: Stream) -> list[bytes]:
    return [
        stream.event("late-1", "purchase", "S1", T0 + 19 * MINUTE + 30_000, qty=4),  # within lateness
        stream.event("late-2", "view", "S2", T0 + 19 * MINUTE + 59_000),  # within lateness
        stream.event("late-3", "purchase", "S3", T0 + 5 * MINUTE + 10_000, qty=2),  # too late for 1m
        stream.event("late-4", "click", "S4", T0 + 65_000),  # too late for 1m
        stream.event("late-3", "purchase", "S3", T0 + 5 * MINUTE + 10_000, qty=2),  # its duplicate
        stream.event("10", "view", "S0", T0 + 20_000),  # a late duplicate of a phase A event
        b"[1, 2, 3]",
    ]


def probe(stream: Stream, name: str, ts: int) -> list[tuple[bytes, int]]:
    """One event per partition at `ts`: every partition's watermark moves to ts - out-of-orderness."""
    return [(stream.event(f"{name}-{p}", "view", f"{name}-{p}", ts), p) for p in range(PARTITIONS)]


def reference(valid: list[tuple[Event, int]], closed_by: int) -> dict[tuple[str, str, int], FeatureWindow]:
    """Plain-Python windows: first delivery of each event_id, minus events too late for the granularity."""
    totals: dict[tuple[str, str, int], dict[str, float]] = defaultdict(lambda: defaultdict(float))
    for event, watermark in valid:
        for gran, size in SIZES.items():
            start = event.ts - event.ts % size
            if start + size - 1 + LATENESS <= watermark or start + size - 1 > closed_by:
                continue
            t = totals[(event.sku, gran, start)]
            t[
                {"view": "views", "click": "clicks", "cart": "carts", "purchase": "purchases", "return": "returns"}[
                    event.type
                ]
            ] += 1
            if event.type == "purchase":
                t["units"] += event.qty
                t["revenue"] += event.qty * event.price
            if event.type == "return":
                t["returned_units"] += event.qty
    return {
        (sku, gran, start): FeatureWindow(
            sku=sku,
            granularity=gran,
            window_start=start,
            window_end=start + SIZES[gran],
            **{k: int(v) for k, v in t.items() if k != "revenue"},
            revenue=t["revenue"],
        )
        for (sku, gran, start), t in totals.items()
    }


def counts(window: FeatureWindow) -> tuple:
    fields = ("views", "clicks", "carts", "purchases", "returns", "units", "returned_units")
    return (*(getattr(window, f) for f in fields), round(window.revenue, 6))


class FeaturesJob:
    """`shelfcast features run` as a separate process, on its own topics and state directory."""

    def __init__(self, settings: Settings, state_dir: Path) -> None:
        suffix = uuid.uuid4().hex[:8]
        self.topics = TopicNames(
            events=f"it.f.events.{suffix}", events_dlq=f"it.f.dlq.{suffix}", features=f"it.f.features.{suffix}"
        )
        self.settings = settings.model_copy(update={"topics": self.topics, "kafka_partitions": PARTITIONS})
        ensure_topics(self.settings, [self.topics.events, self.topics.events_dlq, self.topics.features])
        self.state_dir = state_dir
        self.proc: ManagedProcess | None = None
        self.env = {
            "SHELFCAST_KAFKA_BOOTSTRAP": settings.kafka_bootstrap,
            "SHELFCAST_REDIS_URL": settings.redis_url,
            "SHELFCAST_STATE_DIR": str(state_dir),
            "SHELFCAST_TOPICS__EVENTS": self.topics.events,
            "SHELFCAST_TOPICS__EVENTS_DLQ": self.topics.events_dlq,
            "SHELFCAST_TOPICS__FEATURES": self.topics.features,
            "SHELFCAST_FEATURES_GRANULARITIES": json.dumps(list(SIZES)),
            "SHELFCAST_FEATURES_OUT_OF_ORDERNESS_MS": str(OUT_OF_ORDERNESS),
            "SHELFCAST_FEATURES_ALLOWED_LATENESS_MS": str(LATENESS),
            # Never idle here: every phase ends with a probe in every partition. (A short idle timeout
            # lets the first partition read run the watermark past the others' records.)
            "SHELFCAST_FEATURES_IDLE_TIMEOUT_MS": "600000",
            "SHELFCAST_FEATURES_CHECKPOINT_INTERVAL_MS": "1000",
            "SHELFCAST_FEATURES_GROUP_ID": f"it-features-{suffix}",
        }
        self.producer = make_producer(self.settings)
        self.redis = connect_redis(settings.redis_url)
        self.store = FeatureStore(self.redis)

    def start(self) -> None:
        # No HTTP endpoint to wait for: the job is "ready" once it runs; outputs are awaited by probes.
        self.proc = start_service("features", ["features", "run"], self.env, None, self.state_dir / "features.log")

    def kill(self) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.stop()

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.stop()

    def send(self, records: list[bytes] | list[tuple[bytes, int]]) -> None:
        for record in records:
            value, partition = record if isinstance(record, tuple) else (record, None)
            if partition is None:
                self.producer.produce(self.topics.events, value=value, key=value[:40])
            else:
                self.producer.produce(self.topics.events, value=value, partition=partition)
        assert self.producer.flush(30) == 0

    def wait_for_window(self, sku: str, granularity: str, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while self.store.latest(sku, granularity).empty:
            assert time.monotonic() < deadline, f"no {granularity} window for {sku}; log: {self.log_tail()}"
            assert self.proc is not None and self.proc.alive(), f"the job died: {self.log_tail()}"
            time.sleep(0.5)
        time.sleep(1.0)  # a periodic watermark emission or two past the probe

    def log_tail(self) -> str:
        return (self.state_dir / "features.log").read_text(errors="replace")[-3000:]

    def read_topic(self, topic: str, idle_s: float = 5.0) -> Iterator[bytes]:
        consumer = make_consumer(self.settings, f"it-read-{uuid.uuid4().hex[:6]}")
        consumer.subscribe([topic])
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            msg = consumer.poll(0.5)
            if msg is not None and not msg.error():
                deadline = time.monotonic() + idle_s
                yield msg.value()
        consumer.close()

    def redis_windows(self, skus: set[str]) -> dict[tuple[str, str, int], FeatureWindow]:
        return {
            (w.sku, w.granularity, w.window_start): w
            for sku in skus
            for gran in SIZES
            for w in map(FeatureWindow.model_validate_json, self.redis.zrange(feature_key(sku, gran), 0, -1))
        }


def play(job: FeaturesJob, stream: Stream, kill_midway: bool = False) -> list[tuple[bytes, int]]:
    """Send phases A-C (optionally killing and restarting the job in A); return (raw, watermark it met)."""
    phase_a = on_time_events(stream)
    first_half, second_half = phase_a[:150], phase_a[150:]
    job.send(first_half)
    if kill_midway:
        probe_a = probe(stream, "PA1", T0 + 6 * MINUTE)
        job.send(probe_a)
        job.wait_for_window(f"{stream.prefix}-S0", "1m")
        processed_at = time.time()
        checkpoints = job.state_dir / "flink" / "checkpoints"
        deadline = time.monotonic() + 60
        while not any(m.stat().st_mtime > processed_at for m in checkpoints.glob("*/chk-*/_metadata")):
            assert time.monotonic() < deadline, "no checkpoint completed after the first half was processed"
            time.sleep(0.5)
        job.kill()
        job.send(second_half)  # while the job is down
        job.start()
        phase_a += [value for value, _ in probe_a]
    else:
        job.send(second_half)

    advance = probe(stream, "PB", T0 + 18 * MINUTE) + probe(stream, "ADV", T0 + 20 * MINUTE + OUT_OF_ORDERNESS + 1)
    job.send(advance)
    job.wait_for_window(f"{stream.prefix}-PB-0", "1m")
    watermark_b = T0 + 20 * MINUTE + 1

    late, end = late_events(stream), probe(stream, "END", T0 + 3 * DAY)
    job.send(late)
    job.send(end)
    return (
        [(raw, 0) for raw in phase_a + [value for value, _ in advance]]
        + [(raw, watermark_b) for raw in late]
        + [(value, watermark_b) for value, _ in end]
    )


def expected_outputs(played: list[tuple[bytes, int]]) -> tuple[dict, list[tuple[bytes, str]]]:
    """The reference windows and the dead letters (raw, reason prefix) the job must produce."""
    first: dict[str, tuple[Event, int]] = {}
    dead: list[tuple[bytes, str]] = []
    for raw, watermark in played:
        try:
            event = Event.model_validate_json(raw)
        except ValidationError:
            dead.append((raw, "invalid"))
            continue
        first.setdefault(event.event_id, (event, watermark))
    for event, watermark in first.values():
        for gran, size in SIZES.items():
            if event.ts - event.ts % size + size - 1 + LATENESS <= watermark:
                dead.append((event.to_bytes(), f"late {gran}"))
    closed_by = T0 + 3 * DAY - OUT_OF_ORDERNESS
    return reference(list(first.values()), closed_by), dead


def wait_until_exact(job: FeaturesJob, expected: dict, timeout: float = 90) -> dict:
    skus = {sku for sku, _, _ in expected}
    deadline = time.monotonic() + timeout
    while True:
        actual = job.redis_windows(skus)
        if {k: counts(w) for k, w in actual.items()} == {k: counts(w) for k, w in expected.items()}:
            return actual
        if time.monotonic() > deadline:
            return actual
        time.sleep(1)


def dead_letter_summary(job: FeaturesJob) -> list[tuple[str, str]]:
    """(event_id or raw text, kind) per dead letter on the topic, deduplicated by source position."""
    by_position = {}
    for value in job.read_topic(job.topics.events_dlq):
        letter = DeadLetter.from_bytes(value)
        kind = _kind(letter.reason)
        by_position[(letter.source_partition, letter.source_offset, kind)] = (_identity(letter.raw), kind)
    return sorted(by_position.values())


def _kind(reason: str) -> str:
    if reason.startswith("late"):
        return "late " + reason.split()[2]
    return "future_ts" if reason.startswith("future_ts") else "invalid"


def _identity(raw: bytes) -> str:
    try:
        return json.loads(raw)["event_id"]
    except (ValueError, KeyError, TypeError):
        return raw.decode(errors="replace")


def check(job: FeaturesJob, played: list[tuple[bytes, int]]) -> None:
    expected_windows, expected_dead = expected_outputs(played)
    actual = wait_until_exact(job, expected_windows)
    assert {k: counts(w) for k, w in actual.items()} == {k: counts(w) for k, w in expected_windows.items()}
    assert sorted((_identity(raw), kind) for raw, kind in expected_dead) == dead_letter_summary(job)
    # Every window on the features topic: its last update equals what Redis holds.
    last: dict[tuple[str, str, int], FeatureWindow] = {}
    for value in job.read_topic(job.topics.features):
        window = FeatureWindow.from_bytes(value)
        last[(window.sku, window.granularity, window.window_start)] = window
    assert {k: counts(w) for k, w in last.items() if k in expected_windows} == {
        k: counts(w) for k, w in expected_windows.items()
    }


def test_windows_equal_the_reference_and_the_dlq_holds_exactly_the_bad_and_too_late(job: FeaturesJob) -> None:
    stream = Stream(prefix=f"w{uuid.uuid4().hex[:6]}")
    job.start()
    check(job, play(job, stream))


def test_killed_and_restarted_job_still_ends_exact(job: FeaturesJob) -> None:
    stream = Stream(prefix=f"r{uuid.uuid4().hex[:6]}")
    job.start()
    check(job, play(job, stream, kill_midway=True))
    # It resumed from the checkpoint rather than re-reading the topic: what the checkpoint covered
    # was not dead-lettered a second time.
    assert sum(1 for v in job.read_topic(job.topics.events_dlq) if DeadLetter.from_bytes(v).raw == EARLY_POISON) == 1


def test_a_future_dated_event_neither_moves_event_time_nor_reaches_a_window(job: FeaturesJob) -> None:
    """A storefront clock 30 days ahead, in every partition (as if the others had gone idle): the on-time
    events before and after it are windowed exactly, none late; it is dead-lettered as `future_ts`."""
    stream = Stream(prefix=f"f{uuid.uuid4().hex[:6]}")
    job.start()
    before = on_time_events(stream)
    future = probe(stream, "FUT", int(time.time() * 1000) + 30 * DAY)
    after = [stream.event(f"after-{n}", "purchase", f"S{n % 5}", T0 + 12 * MINUTE + n * 1_000) for n in range(60)]
    job.send(before)
    job.send(future)
    job.send(after)
    advance = probe(stream, "ADV", T0 + 20 * MINUTE + OUT_OF_ORDERNESS + 1)
    end = probe(stream, "END", T0 + 3 * DAY)
    job.send(advance)
    job.wait_for_window(f"{stream.prefix}-S0", "1m")
    job.send(end)

    on_time = [(raw, 0) for raw in before + after + [v for v, _ in advance]] + [(v, 0) for v, _ in end]
    expected_windows, expected_dead = expected_outputs(on_time)
    assert not [kind for _, kind in expected_dead if kind.startswith("late")]  # the reference has none late
    actual = wait_until_exact(job, expected_windows)
    assert {k: counts(w) for k, w in actual.items()} == {k: counts(w) for k, w in expected_windows.items()}
    expected_dead += [(raw, "future_ts") for raw, _ in future]
    assert sorted((_identity(raw), kind) for raw, kind in expected_dead) == dead_letter_summary(job)

    horizon = (time.time() + 3_600) * 1000
    future_skus = {f"{stream.prefix}-FUT-{p}" for p in range(PARTITIONS)}
    assert job.redis_windows(future_skus) == {}
    on_topic = [FeatureWindow.from_bytes(v) for v in job.read_topic(job.topics.features)]
    assert on_topic and all(w.window_end < horizon and w.sku not in future_skus for w in on_topic)


# Longer than the window writer's flush timeout (30 s) and the Kafka clients' request timeout (30 s).
PAUSE_S = 45
BULK_SKUS = 600
BULK_FIRST_MINUTE, BULK_MINUTES = 11, 7  # after phase A's events (up to T0+10m), so none of them is late


def bulk_minutes(stream: Stream) -> list[list[bytes]]:
    """One view per SKU and minute, T0+11m..T0+18m: thousands of 1-minute windows that close at once, so
    the window writer is still busy when the broker is paused. Sent a minute at a time: each send waits for
    the broker's acks, so no minute can land in a partition after a later one (that would make it late)."""
    return [
        [
            stream.event(f"bulk-{k}-{m}", "view", f"B{k}", T0 + (BULK_FIRST_MINUTE + m) * MINUTE + 500)
            for k in range(BULK_SKUS)
        ]
        for m in range(BULK_MINUTES)
    ]


def test_a_broker_paused_mid_stream_still_ends_exact(settings: Settings, tmp_path: Path) -> None:
    """The broker process stopped (SIGSTOP) for PAUSE_S while the job writes windows, then continued:
    every window in Redis and on the features topic still equals the reference. A broker of its own, so
    that pausing it cannot disturb the other tests."""
    broker = start_kafka(free_port(), tmp_path / "kafka")
    job = FeaturesJob(settings.model_copy(update={"kafka_bootstrap": broker.address}), tmp_path / "state")
    try:
        stream = Stream(prefix=f"p{uuid.uuid4().hex[:6]}")
        job.start()
        phase_a = on_time_events(stream)
        probe_a = [v for v, _ in probe(stream, "PA1", T0 + 6 * MINUTE)]
        job.send(phase_a[:150] + probe_a)
        job.wait_for_window(f"{stream.prefix}-S0", "1m")
        job.send(phase_a[150:])
        minutes = bulk_minutes(stream)
        for minute in minutes:
            job.send(minute)
        bulk = [raw for minute in minutes for raw in minute]
        advance = probe(stream, "PB", T0 + 18 * MINUTE) + probe(stream, "ADV", T0 + 20 * MINUTE + OUT_OF_ORDERNESS + 1)
        job.send(advance)
        bulk_skus = [f"{stream.prefix}-B{k}" for k in range(BULK_SKUS)]
        deadline = time.monotonic() + 120
        while minute_windows(job, bulk_skus) == 0:  # the writer has begun on the bulk's windows
            assert time.monotonic() < deadline, f"no bulk window in Redis; log: {job.log_tail()}"
            time.sleep(0.05)
        os.kill(broker.pid, signal.SIGSTOP)
        try:
            time.sleep(2)
            in_redis_early = minute_windows(job, bulk_skus)
            time.sleep(PAUSE_S - 2)
            in_redis_late = minute_windows(job, bulk_skus)
        finally:
            os.kill(broker.pid, signal.SIGCONT)
        # Paused mid-write (the writer needs about 2 s for the bulk here), and the writer waited for the broker
        # (backpressure) instead of writing on past windows the broker had not acknowledged.
        assert 0 < in_redis_late < len(bulk)
        assert in_redis_late == in_redis_early
        job.wait_for_window(f"{stream.prefix}-PB-0", "1m", timeout=300)
        late, end = late_events(stream), probe(stream, "END", T0 + 3 * DAY)
        job.send(late)
        job.send(end)
        watermark_b = T0 + 20 * MINUTE + 1
        played = [(raw, 0) for raw in phase_a + probe_a + bulk + [v for v, _ in advance]]
        played += [(raw, watermark_b) for raw in late] + [(v, watermark_b) for v, _ in end]
        check(job, played)
    finally:
        job.stop()
        broker.stop()


def minute_windows(job: FeaturesJob, skus: list[str]) -> int:
    """How many 1-minute windows of `skus` Redis holds."""
    pipe = job.redis.pipeline(transaction=False)
    for sku in skus:
        pipe.zcard(feature_key(sku, "1m"))
    return sum(pipe.execute())
