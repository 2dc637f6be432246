"""`shelfcast simulate erp`: a stand-in for the ERP at the other end of `shelfcast.reorders`.

Every reorder is delivered in full as a receipt on `shelfcast.receipts` whose `decision_id` is the reorder's, on the
day the agent expects it (`expected_at`; a reorder without one: `lead_days` after the day it was received). The
stream's day is the newest forecast `start` seen on `shelfcast.forecasts` (the period being decided): in a
time-compressed demo it moves as fast as the daily windows close, and it stops when they do, so the last orders
stay on the way. The order of the two topics does not matter: a reorder read after its delivery day is delivered
at once.

Restarts: the simulator commits nothing and reads both topics from the start each time, so its pending deliveries
and its clock are rebuilt; the receipts it sends again carry the same `receipt_id` (`rcpt:{decision_id}`), which the
agent drops as repeats. A reorder sent twice (same `decision_id`) is delivered once.
"""

from __future__ import annotations

import heapq
import logging
import signal
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Annotated

import typer
from pydantic import ValidationError

from shelfcast.contracts import Forecast, Receipt, Reorder
from shelfcast.kafka import make_consumer, make_producer, produce
from shelfcast.settings import Settings, get_settings

DAY_MS = 86_400_000
log = logging.getLogger(__name__)


@dataclass
class Deliveries:
    """The ERP's book: the stream's day and the reorders waiting for theirs (pure: no Kafka here)."""

    lead_days: int
    day_ms: int | None = None
    due: list[tuple[int, str, Reorder]] = field(default_factory=list)  # (due day, decision_id, reorder): a heap
    seen: set[str] = field(default_factory=set)

    def forecast(self, forecast: Forecast) -> None:
        self.day_ms = forecast.start if self.day_ms is None else max(self.day_ms, forecast.start)

    def reorder(self, reorder: Reorder) -> None:
        """Book a reorder for its expected day (without one: lead days after the stream's day, or after the first
        day seen when no forecast came yet)."""
        if reorder.decision_id in self.seen:
            return
        self.seen.add(reorder.decision_id)
        due = reorder.expected_at
        if due is None:
            due = (self.day_ms or 0) + self.lead_days * DAY_MS
        heapq.heappush(self.due, (due, reorder.decision_id, reorder))

    def receipts(self, now_ms: int) -> list[Receipt]:
        """The receipts due by the stream's day, taken off the book."""
        out = []
        while self.due and self.day_ms is not None and self.due[0][0] <= self.day_ms:
            _, decision_id, reorder = heapq.heappop(self.due)
            out.append(
                Receipt(
                    receipt_id=f"rcpt:{decision_id}",
                    sku=reorder.sku,
                    qty=reorder.qty,
                    received_at=now_ms,
                    decision_id=decision_id,
                )
            )
        return out


def run(settings: Settings, lead_days: int, stop: threading.Event) -> None:
    """Consume reorders and forecasts, produce receipts as they fall due, until ``stop`` is set."""
    topics = settings.topics
    consumer = make_consumer(settings, group_id=f"shelfcast-erp-sim-{uuid.uuid4().hex[:8]}")
    consumer.subscribe([topics.reorders, topics.forecasts])
    producer = make_producer(settings)
    book = Deliveries(lead_days)
    try:
        while not stop.is_set():
            msg = consumer.poll(0.2)
            if msg is not None and not msg.error():
                try:
                    if msg.topic() == topics.forecasts:
                        book.forecast(Forecast.from_bytes(msg.value() or b""))
                    else:
                        book.reorder(Reorder.from_bytes(msg.value() or b""))
                except ValidationError as exc:  # not ours to dead-letter: the agent and forecaster own them
                    log.warning("skipped an invalid record on %s: %s", msg.topic(), exc.errors()[0]["msg"])
            for receipt in book.receipts(int(time.time() * 1000)):
                produce(producer, topics.receipts, receipt)
            producer.poll(0)
    finally:
        producer.flush(30)
        consumer.close()


def simulate_erp(
    lead_days: Annotated[
        int,
        typer.Option(
            min=0,
            max=365,
            help="Days from a reorder without expected_at to its receipt.",
        ),
    ] = 2,
) -> None:
    """Receive the agent's reorders and deliver each in full after a lead time of the stream's days."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    run(get_settings(), lead_days, stop)
