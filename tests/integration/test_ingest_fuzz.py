"""Two thousand hostile requests against the ingest API (real broker behind it): never a 5xx, always JSON.

Beside test_api_fuzz.py (schemathesis, from the spec) these reach what a spec-driven generator rarely does: raw
bytes under every content type, NDJSON lines, near-valid events and arbitrary Authorization headers."""

import json
import uuid
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import SecretStr

from shelfcast.kafka import ensure_topics
from shelfcast.settings import Settings, TopicNames
from shelfcast_ingest.app import create_app
from shelfcast_ingest.settings import IngestSettings

pytestmark = pytest.mark.integration

KEY = "fuzz-key"
ALLOWED = {200, 400, 401, 413, 422}
FUZZ = settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=12,
)
VALID = {
    "event_id": "f-1",
    "type": "cart",
    "sku": "SKU-1",
    "ts": 1795506300000,
    "qty": 1,
    "price": 3.5,
    "currency": "EUR",
}


@st.composite
def near_valid_events(draw: st.DrawFn) -> dict:
    """A valid event with some fields replaced, removed or added: the malformations that get furthest."""
    event = dict(VALID)
    for field in draw(st.lists(st.sampled_from(sorted(VALID)), max_size=3)):
        if draw(st.booleans()):
            event[field] = draw(json_values)
        else:
            event.pop(field, None)
    event.update(draw(st.dictionaries(st.text(max_size=8), json_values, max_size=2)))
    return event


@pytest.fixture(scope="module")
def client(settings: Settings) -> Iterator[TestClient]:
    topics = TopicNames(events=f"it.fuzz.{uuid.uuid4().hex[:8]}")
    scoped = settings.model_copy(update={"topics": topics, "api_keys": [SecretStr(KEY)]})
    ensure_topics(scoped, [topics.events])
    with TestClient(create_app(scoped, IngestSettings(max_body_bytes=16 * 1024, max_events=50))) as c:
        yield c


def check(response) -> None:  # type: ignore[no-untyped-def]
    assert response.status_code in ALLOWED, response.text
    response.json()


@FUZZ
@given(
    body=st.binary(max_size=300),
    content_type=st.sampled_from(["application/json", "application/x-ndjson", "text/plain", ""]),
)
def test_arbitrary_bytes(client: TestClient, body: bytes, content_type: str) -> None:
    headers = {"Authorization": f"Bearer {KEY}", "Content-Type": content_type}
    check(client.post("/v1/events", content=body, headers=headers))


@FUZZ
@given(payload=json_values | st.lists(near_valid_events(), max_size=8) | near_valid_events())
def test_arbitrary_json_and_near_valid_events(client: TestClient, payload: object) -> None:
    check(client.post("/v1/events", content=json.dumps(payload), headers={"Authorization": f"Bearer {KEY}"}))


@FUZZ
@given(lines=st.lists(near_valid_events().map(json.dumps) | st.text(max_size=30), max_size=8))
def test_ndjson_lines(client: TestClient, lines: list[str]) -> None:
    headers = {"Authorization": f"Bearer {KEY}", "Content-Type": "application/x-ndjson"}
    check(client.post("/v1/events", content="\n".join(lines).encode(), headers=headers))


@FUZZ
@given(authorization=st.binary(max_size=40).filter(lambda b: not set(b) & set(b"\r\n\0")))
def test_arbitrary_authorization_headers(client: TestClient, authorization: bytes) -> None:
    response = client.post("/v1/events", json=VALID, headers={"Authorization": authorization})
    assert response.status_code == 401
