"""A Kafka producer an asyncio server can await: `await send_batch(...)` returns once the broker acked all.

confluent-kafka reports deliveries from `poll()`; a background thread polls and resolves one future
per batch (not per event) on the event loop, so a 500-event batch costs one wake-up.
"""

import asyncio
import threading
from collections.abc import Sequence
from typing import Any

from confluent_kafka import KafkaError, Message, Producer


class QueueFull(Exception):
    """The producer's local queue is full: the broker is slower than the offered load."""


class DeliveryFailed(Exception):
    """The broker did not acknowledge some records; they may or may not have been written."""


class _Batch:
    def __init__(self, loop: asyncio.AbstractEventLoop, size: int) -> None:
        self.loop = loop
        self.pending = size
        self.errors: list[KafkaError] = []
        self.done: asyncio.Future[list[KafkaError]] = loop.create_future()

    def on_delivery(self, err: KafkaError | None, _msg: Message) -> None:
        # Runs on the poll thread.
        if err is not None:
            self.errors.append(err)
        self.pending -= 1
        if self.pending == 0:
            self.loop.call_soon_threadsafe(self._resolve)

    def _resolve(self) -> None:
        if not self.done.done():
            self.done.set_result(self.errors)


class AckedProducer:
    def __init__(self, producer: Producer) -> None:
        self._producer = producer
        self._stopping = threading.Event()
        self._poller = threading.Thread(target=self._poll, name="kafka-delivery-poll", daemon=True)
        self._poller.start()

    def _poll(self) -> None:
        while not self._stopping.is_set():
            self._producer.poll(0.05)

    def list_topics(self, timeout: float) -> Any:
        return self._producer.list_topics(timeout=timeout)

    def queue_depth(self) -> int:
        return len(self._producer)

    async def send_batch(self, topic: str, records: Sequence[tuple[bytes | None, bytes]]) -> None:
        """Produce (key, value) records and wait for every acknowledgement.

        Raises `QueueFull` when the local queue cannot take the batch (records queued before that
        are still delivered: clients retry the batch, and `event_id` dedupe downstream absorbs it),
        and `DeliveryFailed` when the broker refused some.
        """
        if not records:
            return
        batch = _Batch(asyncio.get_running_loop(), len(records))
        for key, value in records:
            try:
                self._producer.produce(topic, value=value, key=key, on_delivery=batch.on_delivery)
            except BufferError:
                # This batch's future never resolves; its queued records are still delivered.
                raise QueueFull(f"producer queue full ({self.queue_depth()} records waiting)") from None
        errors = await batch.done
        if errors:
            raise DeliveryFailed(f"{len(errors)} of {len(records)} records not acknowledged: {errors[0].str()}")

    def close(self, timeout: float = 30.0) -> int:
        """Stop polling, then deliver what is queued (up to `timeout`); returns the records left undelivered."""
        self._stopping.set()
        self._poller.join()
        return self._producer.flush(timeout)
