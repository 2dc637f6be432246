"""Ingest's clock check: an event dated more than the allowed skew ahead is rejected on its own, by field `ts`."""

import orjson

from shelfcast.contracts import Event
from shelfcast_ingest.app import _validate_request, reject_future

NOW_MS = 1_796_000_000_000
SKEW_MS = 300_000


def event(i: int, ts: int) -> dict:
    return {
        "event_id": f"e-{i}",
        "type": "purchase",
        "sku": "SKU-1",
        "ts": ts,
        "qty": 1,
        "price": 1.0,
        "currency": "EUR",
    }


def test_only_the_event_past_the_skew_is_rejected_naming_ts_and_future_ts() -> None:
    day_ago = NOW_MS - 86_400_000
    batch = [event(0, NOW_MS), event(1, NOW_MS + SKEW_MS), event(2, NOW_MS + SKEW_MS + 1), event(3, day_ago)]
    for content_type, body in [
        ("application/json", orjson.dumps(batch)),
        ("application/x-ndjson", b"\n".join(orjson.dumps(e) for e in batch)),
    ]:
        accepted, rejected = _validate_request(body, content_type, NOW_MS + SKEW_MS)
        assert [e.event_id for e in accepted] == ["e-0", "e-1", "e-3"]
        assert [r.index for r in rejected] == [2]
        [error] = rejected[0].errors
        assert error.field == "ts"
        assert error.reason.startswith("future_ts:")


def test_future_and_malformed_rejections_keep_request_order() -> None:
    batch = [event(0, NOW_MS + 30 * 86_400_000), {"event_id": "bad"}, event(2, NOW_MS)]
    accepted, rejected = _validate_request(orjson.dumps(batch), "application/json", NOW_MS + SKEW_MS)
    assert [e.event_id for e in accepted] == ["e-2"]
    assert [r.index for r in rejected] == [0, 1]
    assert rejected[0].errors[0].field == "ts"
    assert all(not e.reason.startswith("future_ts") for e in rejected[1].errors)


def test_reject_future_with_nothing_future_changes_nothing() -> None:
    valid = [(i, Event.model_validate(event(i, NOW_MS - i))) for i in range(3)]
    accepted, rejected = reject_future(valid, [], NOW_MS)
    assert [e.event_id for e in accepted] == ["e-0", "e-1", "e-2"]
    assert rejected == []
