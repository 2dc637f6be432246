"""Kafka helpers: the one place that knows how Shelfcast talks to a broker.

- `make_producer`: idempotent, acks=all, lz4: a delivered record is durable and never duplicated by retries.
- `make_consumer`: classic group protocol, manual commits, configurable session timeout.
- `read_topic`: every record of a topic with its broker timestamp, for reports and checks (not for services).
- `DeadLetterWriter`: records we cannot process go to a dead-letter topic with the raw bytes and the reason.
- `ensure_topics` / `check_kafka`: set-up and a health check that fails with one line saying where.
"""

import logging
import socket
import time
import uuid
from collections.abc import Callable, Iterable
from typing import Generic, NamedTuple, TypeVar

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, Producer
from confluent_kafka.admin import AdminClient, ClusterMetadata, NewTopic

from shelfcast.contracts import Contract, DeadLetter
from shelfcast.errors import ContractError, InfraUnavailable
from shelfcast.metrics import DEAD_LETTERS, KAFKA_DELIVERY_ERRORS
from shelfcast.settings import Settings

T = TypeVar("T", bound=Contract)
R = TypeVar("R")

# librdkafka logs every failed connect attempt to stderr; route it through Python logging instead.
_RDKAFKA_LOG = logging.getLogger("shelfcast.rdkafka")


def _client_config(settings: Settings, **overrides: object) -> dict[str, object]:
    return {"bootstrap.servers": settings.kafka_bootstrap, "logger": _RDKAFKA_LOG, **overrides}


def make_producer(settings: Settings, **overrides: object) -> Producer:
    config = _client_config(
        settings,
        **{
            "enable.idempotence": True,
            "acks": "all",
            "compression.type": "lz4",
            "linger.ms": 5,
            **overrides,
        },
    )
    return Producer(config)


def make_consumer(settings: Settings, group_id: str, **overrides: object) -> Consumer:
    """A group consumer that starts at the earliest offset when the group has none and commits by hand."""
    config = _client_config(
        settings,
        **{
            "group.id": group_id,
            "group.protocol": "classic",
            "session.timeout.ms": settings.kafka_session_timeout_ms,
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
            **overrides,
        },
    )
    return Consumer(config)


class Stamped(NamedTuple, Generic[R]):
    """A record and the broker's timestamp of it (when its producer sent it, epoch ms)."""

    at_ms: int
    record: R


def read_topic(settings: Settings, topic: str, contract: type[T], skip_invalid: bool = False) -> list[Stamped[T]]:
    """Every record of `topic` from the start, parsed as `contract` (one that does not parse raises, or is skipped
    with `skip_invalid`), read by a group of its own until nothing came for 5 s (joining the group takes a few
    seconds, hence 30 s at first)."""
    consumer = make_consumer(settings, group_id=f"shelfcast-read-{uuid.uuid4().hex[:8]}")
    consumer.subscribe([topic])
    parse: Callable[[bytes | None], T] = contract.from_bytes
    records: list[Stamped[T]] = []
    deadline = time.monotonic() + 30
    try:
        while time.monotonic() < deadline:
            for msg in consumer.consume(1_000, timeout=0.5):
                if msg.error():
                    continue
                deadline = time.monotonic() + 5
                try:
                    records.append(Stamped(msg.timestamp()[1], parse(msg.value())))
                except ContractError:
                    if not skip_invalid:
                        raise
    finally:
        consumer.close()
    return records


def produce(
    producer: Producer,
    topic: str,
    record: Contract,
    headers: dict[str, str | bytes | None] | None = None,
    on_result: Callable[[KafkaError | None], None] | None = None,
) -> None:
    """Queue one contract record, keyed by its SKU where it has one; failed deliveries are counted. ``on_result``
    hears the broker's answer (None: acknowledged), from within the producer's ``poll`` or ``flush``."""

    def on_delivery(err: KafkaError | None, _msg: Message) -> None:
        if err is not None:
            KAFKA_DELIVERY_ERRORS.labels(topic=topic).inc()
            _RDKAFKA_LOG.error("delivery to %s failed: %s", topic, err)
        if on_result is not None:
            on_result(err)

    producer.produce(topic, value=record.to_bytes(), key=record.kafka_key, headers=headers, on_delivery=on_delivery)


class DeadLetterWriter:
    """Writes records that failed validation or processing to the dead-letter topic.

    Nothing is dropped silently: the raw bytes, the reason, and the source position go along.
    """

    def __init__(self, producer: Producer, topic: str, stage: str) -> None:
        self._producer = producer
        self._topic = topic
        self._stage = stage

    @property
    def topic(self) -> str:
        return self._topic

    def send_message(
        self, msg: Message, reason: str, on_result: Callable[[KafkaError | None], None] | None = None
    ) -> DeadLetter:
        letter = DeadLetter.wrap(
            msg.value(),
            reason,
            self._stage,
            source_topic=msg.topic(),
            source_partition=msg.partition(),
            source_offset=msg.offset(),
        )
        produce(self._producer, self._topic, letter, on_result=on_result)
        DEAD_LETTERS.labels(source_topic=msg.topic(), stage=self._stage).inc()
        return letter


def first_broker_address(bootstrap: str) -> tuple[str, int]:
    """(host, port) of the first server in a bootstrap list; `InfraUnavailable` when it is not host:port."""
    host, _, port = bootstrap.split(",")[0].strip().rpartition(":")
    if not host or not port.isdigit():
        raise InfraUnavailable(f"Kafka bootstrap {bootstrap!r} is not host:port")
    return host.strip("[]"), int(port)


def check_kafka(bootstrap: str, timeout: float = 3.0) -> ClusterMetadata:
    """Cluster metadata, or `InfraUnavailable` naming the broker address and what went wrong."""
    host, port = first_broker_address(bootstrap)
    try:
        socket.create_connection((host, port), timeout=timeout).close()
    except OSError as exc:
        raise InfraUnavailable(f"Kafka broker unreachable at {bootstrap}: {exc.strerror or exc}") from None
    admin = AdminClient({"bootstrap.servers": bootstrap}, logger=_RDKAFKA_LOG)
    try:
        return admin.list_topics(timeout=timeout)
    except KafkaException as exc:
        raise InfraUnavailable(f"Kafka broker at {bootstrap} did not answer: {exc.args[0].str()}") from None


def ensure_topics(settings: Settings, names: Iterable[str] | None = None, timeout: float = 10.0) -> list[str]:
    """Create the missing topics (all of Shelfcast's by default); returns the ones it created."""
    names = list(names if names is not None else settings.topics.all())
    existing = check_kafka(settings.kafka_bootstrap).topics
    missing = [n for n in names if n not in existing]
    if not missing:
        return []
    admin = AdminClient({"bootstrap.servers": settings.kafka_bootstrap}, logger=_RDKAFKA_LOG)
    futures = admin.create_topics(
        [
            NewTopic(n, num_partitions=settings.kafka_partitions, replication_factor=settings.kafka_replication_factor)
            for n in missing
        ],
        operation_timeout=timeout,
    )
    for name, future in futures.items():
        try:
            future.result(timeout=timeout)
        except KafkaException as exc:
            if exc.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                raise InfraUnavailable(f"could not create topic {name} on {settings.kafka_bootstrap}: {exc}") from None
    return missing
