"""The window writer's flush: it waits out a broker that does not answer, and never passes over a failed window."""

import pytest
from confluent_kafka import KafkaError

from shelfcast_features.writer import DeliveryFailed, flush_until_acknowledged


class StalledProducer:
    """Answers `flush` with records still queued for `stalled_calls` calls, then with none."""

    def __init__(self, stalled_calls: int, queued: int = 7) -> None:
        self.stalled_calls = stalled_calls
        self.queued = queued
        self.calls = 0

    def flush(self, timeout: float) -> int:
        self.calls += 1
        return self.queued if self.calls <= self.stalled_calls else 0


def test_flush_waits_until_every_window_is_acknowledged() -> None:
    producer = StalledProducer(stalled_calls=3)
    flush_until_acknowledged(producer, [], wait_s=0.01)  # type: ignore[arg-type]
    assert producer.calls == 4


def test_a_failed_delivery_raises_instead_of_being_passed_over() -> None:
    failures = [KafkaError(KafkaError.MSG_SIZE_TOO_LARGE)]
    with pytest.raises(DeliveryFailed, match="1 feature windows not delivered"):
        flush_until_acknowledged(StalledProducer(stalled_calls=0), failures, wait_s=0.01)  # type: ignore[arg-type]


def test_a_failure_while_waiting_stops_the_wait() -> None:
    failures: list[KafkaError] = []

    class FailsWhileStalled(StalledProducer):
        def flush(self, timeout: float) -> int:
            if self.calls == 1:
                failures.append(KafkaError(KafkaError._MSG_TIMED_OUT))
            return super().flush(timeout)

    producer = FailsWhileStalled(stalled_calls=100)
    with pytest.raises(DeliveryFailed):
        flush_until_acknowledged(producer, failures, wait_s=0.01)  # type: ignore[arg-type]
    assert producer.calls == 2
