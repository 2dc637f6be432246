"""The core helpers against a real broker and a real Redis (the session's servers, see conftest)."""

import time
import uuid

import pytest
from confluent_kafka import Consumer, Message

from shelfcast.contracts import DeadLetter, Event, FeatureWindow
from shelfcast.errors import ContractError
from shelfcast.kafka import DeadLetterWriter, make_consumer, make_producer, produce
from shelfcast.settings import Settings
from shelfcast.store import FeatureStore, connect_redis, feature_key

pytestmark = pytest.mark.integration

T0 = 1795506300000  # 2026-11-24T07:45:00Z


def consume(consumer: Consumer, count: int, timeout: float = 60.0) -> list[Message]:
    messages: list[Message] = []
    deadline = time.monotonic() + timeout
    while len(messages) < count and time.monotonic() < deadline:
        msg = consumer.poll(0.5)
        if msg is not None and not msg.error():
            messages.append(msg)
    return messages


def make_events(run: str, n: int) -> list[Event]:
    kinds = ["view", "click", "cart", "purchase", "return"]
    return [
        Event(event_id=f"{run}-{i}", type=kinds[i % 5], sku=f"SKU-{i % 7}", ts=T0 + i, qty=1, price=9.5, currency="EUR")
        for i in range(n)
    ]


def test_events_round_trip_through_a_consumer_group(settings: Settings) -> None:
    topic = f"it.events.{uuid.uuid4().hex[:6]}"
    events = make_events("rt", 200)
    producer = make_producer(settings)
    for event in events:
        produce(producer, topic, event)
    assert producer.flush(30) == 0

    group = f"it-{uuid.uuid4().hex[:6]}"
    consumer = make_consumer(settings, group)
    consumer.subscribe([topic])
    received = consume(consumer, len(events))
    consumer.commit(asynchronous=False)
    consumer.close()

    parsed = [Event.from_bytes(m.value()) for m in received]
    assert sorted(e.event_id for e in parsed) == sorted(e.event_id for e in events)
    assert {e.event_id: e for e in parsed} == {e.event_id: e for e in events}
    partitions_by_sku: dict[bytes, set[int]] = {}
    for msg in received:
        partitions_by_sku.setdefault(msg.key(), set()).add(msg.partition())
    assert all(len(p) == 1 for p in partitions_by_sku.values()), "one SKU, one partition"

    # The group's committed offsets hold: a new member sees only what came after.
    later = make_events("later", 10)
    for event in later:
        produce(producer, topic, event)
    assert producer.flush(30) == 0
    consumer = make_consumer(settings, group)
    consumer.subscribe([topic])
    rest = consume(consumer, len(later) + 1, timeout=15)
    consumer.close()
    assert sorted(Event.from_bytes(m.value()).event_id for m in rest) == sorted(e.event_id for e in later)


def test_malformed_record_goes_to_the_dead_letter_topic(settings: Settings) -> None:
    topic = f"it.raw.{uuid.uuid4().hex[:6]}"
    dlq_topic = f"it.dlq.{uuid.uuid4().hex[:6]}"
    producer = make_producer(settings)
    poison = b'{"event_id": "p-1", "type": "purchase", "sku": "SKU 1"}'
    producer.produce(topic, value=poison)
    assert producer.flush(30) == 0

    consumer = make_consumer(settings, f"it-{uuid.uuid4().hex[:6]}")
    consumer.subscribe([topic])
    [msg] = consume(consumer, 1)
    consumer.close()
    with pytest.raises(ContractError) as caught:
        Event.from_bytes(msg.value())
    DeadLetterWriter(producer, dlq_topic, stage="test").send_message(msg, str(caught.value))
    assert producer.flush(30) == 0

    consumer = make_consumer(settings, f"it-{uuid.uuid4().hex[:6]}")
    consumer.subscribe([dlq_topic])
    [letter_msg] = consume(consumer, 1)
    consumer.close()
    letter = DeadLetter.from_bytes(letter_msg.value())
    assert letter.raw == poison
    assert "sku: String should match pattern" in letter.reason
    assert "ts: Field required" in letter.reason
    assert (letter.source_topic, letter.source_partition, letter.source_offset) == (
        topic,
        msg.partition(),
        msg.offset(),
    )
    assert letter.stage == "test"


def window(sku: str, start: int, purchases: int, gran: str = "1m") -> FeatureWindow:
    return FeatureWindow(
        sku=sku, granularity=gran, window_start=start, window_end=start + 60_000, purchases=purchases, units=purchases
    )


def test_feature_store_writes_reads_and_overwrites_windows(settings: Settings) -> None:
    client = connect_redis(settings.redis_url)
    store = FeatureStore(client, depth=3, ttl_seconds=600)
    sku = f"SKU-{uuid.uuid4().hex[:6]}"
    store.write(window(sku, T0 + i * 60_000, purchases=i) for i in range(5))

    assert store.latest(sku, "1m", n=10)["purchases"].tolist() == [2, 3, 4], "trimmed to depth 3"
    assert store.latest(sku, "1m", n=1)["purchases"].tolist() == [4]

    store.write([window(sku, T0 + 3 * 60_000, purchases=30)])  # a late update of one window
    store.write([window(sku, T0 + 3 * 60_000, purchases=30)])  # and its replay
    history = store.history(sku, "1m", T0 + 4 * 60_000, T0 + 5 * 60_000)
    assert history[["window_start", "purchases"]].values.tolist() == [[T0 + 3 * 60_000, 30], [T0 + 4 * 60_000, 4]]
    assert client.zcard(feature_key(sku, "1m")) == 3
    assert 0 < client.ttl(feature_key(sku, "1m")) <= 600
    empty = store.latest(sku, "1h", n=5)
    assert empty.empty
    assert "units" in empty.columns
