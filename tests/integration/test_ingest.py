"""The ingest API against the real broker: what is acknowledged is on the topic, and only that."""

import itertools
import json
import os
import signal
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient
from pydantic import SecretStr

from shelfcast.contracts import Event
from shelfcast.infra import ManagedProcess, free_port, start_service
from shelfcast.kafka import ensure_topics, make_consumer
from shelfcast.settings import Settings, TopicNames
from shelfcast_ingest.app import create_app
from shelfcast_ingest.settings import IngestSettings

pytestmark = pytest.mark.integration

KEY = "test-key-1"
AUTH = {"Authorization": f"Bearer {KEY}"}


def event(i: int, **changes: object) -> dict:
    return {
        "event_id": f"e-{i}",
        "type": "purchase",
        "sku": f"SKU-{i % 3}",
        "ts": "2026-11-24T07:45:00Z",
        "qty": 1,
        "price": 10.0,
        "currency": "EUR",
        **changes,
    }


def own_topic(settings: Settings) -> Settings:
    """Settings whose events topic is new, so a test sees only its own events."""
    topics = TopicNames(events=f"it.ingest.{uuid.uuid4().hex[:8]}")
    scoped = settings.model_copy(update={"topics": topics, "api_keys": [SecretStr(KEY)]})
    ensure_topics(scoped, [topics.events])
    return scoped


def topic_events(settings: Settings, expected: int, timeout: float = 30.0) -> list[tuple[bytes, Event]]:
    consumer = make_consumer(settings, f"it-{uuid.uuid4().hex[:6]}")
    consumer.subscribe([settings.topics.events])
    seen: list[tuple[bytes, Event]] = []
    deadline = time.monotonic() + timeout
    # Read a little past `expected` so that extra records would be caught.
    while time.monotonic() < deadline and (len(seen) < expected or time.monotonic() < deadline - timeout + 8):
        msg = consumer.poll(0.5)
        if msg is not None and not msg.error():
            seen.append((msg.key(), Event.from_bytes(msg.value())))
    consumer.close()
    return seen


@pytest.fixture
def scoped(settings: Settings) -> Settings:
    return own_topic(settings)


@pytest.fixture
def client(scoped: Settings) -> Iterator[TestClient]:
    with TestClient(create_app(scoped, IngestSettings(max_body_bytes=64 * 1024, max_events=100))) as c:
        yield c


def test_mixed_batch_puts_exactly_the_valid_events_on_the_topic(client: TestClient, scoped: Settings) -> None:
    batch = [
        event(0),
        event(1, ts="2026-11-24T07:45:00"),
        event(2, ts=1795506300000),
        event(3, type="teleport"),
        event(4),
        {"not": "an event"},
        event(6, sku="bad sku"),
    ]
    response = client.post("/v1/events", json=batch, headers=AUTH)
    assert response.status_code == 200
    body = response.json()
    assert body["accepted"] == 3
    assert [r["index"] for r in body["rejected"]] == [1, 3, 5, 6]
    assert body["rejected"][0]["errors"] == [
        {"field": "ts", "reason": "Value error, RFC 3339 timestamp needs a UTC offset (Z or +hh:mm)"}
    ]
    assert body["rejected"][1]["errors"][0]["field"] == "type"
    assert {e["field"] for e in body["rejected"][2]["errors"]} >= {"event_id", "not"}

    on_topic = topic_events(scoped, 3)
    assert sorted(e.event_id for _, e in on_topic) == ["e-0", "e-2", "e-4"]
    assert all(key == e.sku.encode() and e.ts == 1795506300000 for key, e in on_topic)


def test_ndjson_batch_and_single_object(client: TestClient, scoped: Settings) -> None:
    lines = [json.dumps(event(0)), "{broken", json.dumps(event(2))]
    response = client.post(
        "/v1/events", content="\n".join(lines), headers={**AUTH, "Content-Type": "application/x-ndjson"}
    )
    assert response.status_code == 200
    assert response.json()["accepted"] == 2
    [bad] = response.json()["rejected"]
    assert bad["index"] == 1 and bad["errors"][0]["field"] == "(line)"

    assert client.post("/v1/events", json=event(9), headers=AUTH).json() == {"accepted": 1, "rejected": []}
    assert sorted(e.event_id for _, e in topic_events(scoped, 3)) == ["e-0", "e-2", "e-9"]


def test_an_event_dated_past_the_clock_skew_is_rejected_alone(client: TestClient, scoped: Settings) -> None:
    now_ms = int(time.time() * 1000)
    skew_ms = scoped.max_clock_skew_s * 1000
    batch = [
        event(0, ts=now_ms),
        event(1, ts=now_ms + 30 * 86_400_000),  # a storefront clock a month ahead
        event(2, ts=now_ms + skew_ms - 60_000),  # within the skew
        event(3, ts=now_ms - 86_400_000),
    ]
    response = client.post("/v1/events", json=batch, headers=AUTH)
    assert response.status_code == 200
    assert response.json()["accepted"] == 3
    [future] = response.json()["rejected"]
    assert future["index"] == 1
    [error] = future["errors"]
    assert error["field"] == "ts" and error["reason"].startswith("future_ts:")

    only_future = client.post("/v1/events", json=[event(5, ts=now_ms + skew_ms + 60_000)], headers=AUTH)
    assert only_future.status_code == 422
    assert only_future.json()["rejected"][0]["errors"][0]["field"] == "ts"

    assert sorted(e.event_id for _, e in topic_events(scoped, 3)) == ["e-0", "e-2", "e-3"]


def test_bad_requests_get_structured_4xx(client: TestClient) -> None:
    malformed = client.post("/v1/events", content=b"{oops", headers={**AUTH, "Content-Type": "application/json"})
    assert malformed.status_code == 400
    assert malformed.json()["error"]["code"] == "malformed_json"

    all_invalid = client.post("/v1/events", json=[event(0, qty=-1), event(1, currency="eur")], headers=AUTH)
    assert all_invalid.status_code == 422
    assert all_invalid.json()["accepted"] == 0
    assert [r["errors"][0]["field"] for r in all_invalid.json()["rejected"]] == ["qty", "currency"]

    assert client.post("/v1/events", json=[], headers=AUTH).status_code == 400
    assert client.post("/v1/events", json="just a string", headers=AUTH).status_code == 400

    too_many = client.post("/v1/events", json=[event(i) for i in range(101)], headers=AUTH)
    assert too_many.status_code == 413
    assert too_many.json()["error"]["code"] == "too_many_events"
    too_big = client.post("/v1/events", content=b"[" + b" " * 70_000 + b"]", headers=AUTH)
    assert too_big.status_code == 413
    assert too_big.json()["error"]["code"] == "payload_too_large"


@pytest.mark.parametrize(
    "headers",
    [{}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {KEY}"}, {"Authorization": "Bearer "}],
)
def test_missing_or_wrong_api_key_is_401(client: TestClient, scoped: Settings, headers: dict) -> None:
    response = client.post("/v1/events", json=event(0), headers=headers)
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "unauthorized"


def test_no_key_configured_means_no_access(settings: Settings) -> None:
    with TestClient(create_app(settings.model_copy(update={"api_keys": []}))) as client:
        assert client.post("/v1/events", json=event(0), headers=AUTH).status_code == 401


def test_health_readiness_metrics_and_openapi(client: TestClient) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}
    assert client.get("/readyz").json() == {"status": "ready"}
    client.post("/v1/events", json=[event(0), event(1, sku="a b")], headers=AUTH)
    metrics = client.get("/metrics/").text
    assert 'shelfcast_ingest_events_accepted_total{type="purchase"}' in metrics
    assert 'shelfcast_ingest_events_rejected_total{reason="sku"}' in metrics
    assert "shelfcast_ingest_request_duration_seconds_bucket" in metrics
    assert "shelfcast_ingest_producer_queue_depth_events" in metrics
    spec = client.get("/openapi.json").json()
    operation = spec["paths"]["/v1/events"]["post"]
    assert set(operation["requestBody"]["content"]) == {"application/json", "application/x-ndjson"}
    assert {"200", "400", "401", "413", "422", "503"} <= set(operation["responses"])


def test_full_producer_queue_is_503_with_retry_after(scoped: Settings) -> None:
    with TestClient(create_app(scoped, IngestSettings(queue_max_events=1_000))) as client:
        response = client.post("/v1/events", json=[event(i) for i in range(1_500)], headers=AUTH)
    assert response.status_code == 503
    assert response.headers["Retry-After"] == "1"
    assert response.json()["error"]["code"] == "backpressure"


def test_readyz_is_503_when_the_broker_is_gone(settings: Settings) -> None:
    dead = settings.model_copy(update={"kafka_bootstrap": f"127.0.0.1:{free_port()}"})
    with TestClient(create_app(dead)) as client:
        assert client.get("/readyz").status_code == 503
        assert client.get("/healthz").status_code == 200


def serve(scoped: Settings, port: int, tmp_path: Path) -> ManagedProcess:
    env = {
        "SHELFCAST_KAFKA_BOOTSTRAP": scoped.kafka_bootstrap,
        "SHELFCAST_TOPICS__EVENTS": scoped.topics.events,
        "SHELFCAST_API_KEYS": json.dumps([KEY]),
    }
    ready = f"http://127.0.0.1:{port}/readyz"
    return start_service("ingest", ["ingest", "serve", "--port", str(port)], env, ready, tmp_path / "ingest.log")


def test_a_killed_and_restarted_service_loses_no_acknowledged_event(scoped: Settings, tmp_path: Path) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}/v1/events"
    acknowledged: list[str] = []
    stop = threading.Event()

    def storefront() -> None:  # keeps sending while the service is killed and restarted under it
        for b in itertools.count():
            if stop.is_set():
                return
            batch = [event(i, event_id=f"b{b}-{i}") for i in range(50)]
            try:
                if httpx.post(url, json=batch, headers=AUTH, timeout=10).status_code == 200:
                    acknowledged.extend(e["event_id"] for e in batch)
            except httpx.HTTPError:
                time.sleep(0.05)

    def wait_for_acks(n: int) -> None:
        deadline = time.monotonic() + 60
        while len(acknowledged) < n and time.monotonic() < deadline:
            time.sleep(0.01)

    proc = serve(scoped, port, tmp_path)
    sender = threading.Thread(target=storefront)
    sender.start()
    try:
        wait_for_acks(500)
        os.kill(proc.pid, signal.SIGKILL)  # mid-stream, requests in flight
        proc.stop()  # waits until it is gone
        proc = serve(scoped, port, tmp_path)
        wait_for_acks(len(acknowledged) + 500)
    finally:
        stop.set()
        sender.join(30)
        proc.stop()
    assert len(acknowledged) >= 1_000
    on_topic = {e.event_id for _, e in topic_events(scoped, len(acknowledged))}
    assert set(acknowledged) <= on_topic
