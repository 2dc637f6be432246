"""The ingest HTTP API: storefront events in, validated, onto `shelfcast.events`, acknowledged only once durable.

`POST /v1/events` takes one event (a JSON object), a batch (a JSON array) or NDJSON
(`Content-Type: application/x-ndjson`). Valid events are produced keyed by SKU with an idempotent,
acks=all producer and the response waits for the broker's acknowledgement of every one of them, so a
2xx means durable. Invalid events are listed, by index, with the field and the reason.
"""

from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated, Any

import orjson
from fastapi import Depends, FastAPI, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, Field, TypeAdapter, ValidationError

from shelfcast.contracts import Event, field_errors
from shelfcast.http import ApiError, ErrorResponse, bearer_key_check, service_app
from shelfcast.kafka import make_producer
from shelfcast.settings import Settings, get_settings
from shelfcast_ingest.metrics import (
    DELIVERY_ERRORS,
    EVENTS_ACCEPTED,
    EVENTS_RECEIVED,
    EVENTS_REJECTED,
    QUEUE_DEPTH,
    REQUEST_SECONDS,
)
from shelfcast_ingest.producer import AckedProducer, DeliveryFailed, QueueFull
from shelfcast_ingest.settings import IngestSettings

NDJSON = "application/x-ndjson"
_EVENT_LIST = TypeAdapter(list[Event])
_to_json = Event.__pydantic_serializer__.to_json  # what Event.to_bytes() gives, without the str round trip


class FieldError(BaseModel):
    field: str = Field(examples=["ts"])
    reason: str = Field(examples=["RFC 3339 timestamp needs a UTC offset (Z or +hh:mm)"])


class RejectedEvent(BaseModel):
    index: int = Field(description="position of the event in the request (line number - 1 for NDJSON)")
    errors: list[FieldError]


class IngestResponse(BaseModel):
    accepted: int = Field(description="events acknowledged by the broker")
    rejected: list[RejectedEvent]


def _event_request_body() -> dict[str, Any]:
    event = Event.model_json_schema(mode="validation")
    return {
        "required": True,
        "content": {
            "application/json": {"schema": {"oneOf": [event, {"type": "array", "items": event}]}},
            NDJSON: {"schema": {"type": "string", "description": "one event JSON object per line"}},
        },
    }


async def _read_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise ApiError(413, "payload_too_large", f"body of {declared} bytes is over the limit of {limit}")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise ApiError(413, "payload_too_large", f"body is over the limit of {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def _is_ndjson(content_type: str) -> bool:
    return content_type.split(";")[0].strip().lower() == NDJSON


def _parse(body: bytes, content_type: str) -> tuple[list[Any], list[RejectedEvent]]:
    """The items of the request, and the NDJSON lines that are not JSON (as rejections)."""
    if _is_ndjson(content_type):
        items: list[Any] = []
        bad_lines = []
        for index, line in enumerate(body.splitlines()):
            try:
                items.append(orjson.loads(line))
            except orjson.JSONDecodeError as exc:
                items.append(None)
                bad_lines.append(RejectedEvent(index=index, errors=[FieldError(field="(line)", reason=str(exc))]))
        return items, bad_lines
    try:
        parsed = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise ApiError(400, "malformed_json", f"request body is not valid JSON: {exc}") from None
    if isinstance(parsed, dict):
        return [parsed], []
    if isinstance(parsed, list):
        return parsed, []
    raise ApiError(400, "malformed_request", "body must be an event object or an array of events")


def _validate_request(body: bytes, content_type: str, max_ts_ms: int) -> tuple[list[Event], list[RejectedEvent]]:
    """The valid events and the rejections, in request order. An event whose `ts` is after `max_ts_ms`
    (ingest's clock plus the allowed skew) is rejected: one wrong storefront clock must not move event time."""
    if not _is_ndjson(content_type) and body.lstrip()[:1] == b"[":
        try:  # the common case, a valid batch, in one pass of pydantic-core over the raw bytes
            return reject_future(list(enumerate(_EVENT_LIST.validate_json(body))), [], max_ts_ms)
        except ValidationError:
            pass  # the per-event path below says which events are wrong and why
    items, bad_lines = _parse(body, content_type)
    if not items:
        raise ApiError(400, "empty_batch", "no events in the request")
    return _validate(items, bad_lines, max_ts_ms)


def _validate(
    items: list[Any], bad_lines: list[RejectedEvent], max_ts_ms: int
) -> tuple[list[Event], list[RejectedEvent]]:
    skip = {r.index for r in bad_lines}
    valid, rejected = [], list(bad_lines)
    for index, item in enumerate(items):
        if index in skip:
            continue
        try:
            valid.append((index, Event.model_validate(item)))
        except ValidationError as exc:
            rejected.append(RejectedEvent(index=index, errors=[FieldError(**e) for e in field_errors(exc)]))
    return reject_future(valid, rejected, max_ts_ms)


def reject_future(
    valid: list[tuple[int, Event]], rejected: list[RejectedEvent], max_ts_ms: int
) -> tuple[list[Event], list[RejectedEvent]]:
    """Moves the events dated after `max_ts_ms` from `valid` to `rejected` (field `ts`, reason `future_ts`).

    `max_ts_ms` is ingest's clock plus `SHELFCAST_MAX_CLOCK_SKEW_S`."""
    accepted = []
    for index, event in valid:
        if event.ts <= max_ts_ms:
            accepted.append(event)
        else:
            reason = (
                f"future_ts: {event.ts} is more than SHELFCAST_MAX_CLOCK_SKEW_S ahead of ingest's clock"
                f" (latest allowed {max_ts_ms})"
            )
            rejected.append(RejectedEvent(index=index, errors=[FieldError(field="ts", reason=reason)]))
    return accepted, sorted(rejected, key=lambda r: r.index)


_REASON_FIELDS = set(Event.model_fields) | {"(line)", "(record)"}


def _count_received(accepted: list[Event], rejected: list[RejectedEvent]) -> None:
    for kind, n in Counter(e.type for e in accepted).items():
        EVENTS_RECEIVED.labels(type=kind).inc(n)
    if rejected:
        EVENTS_RECEIVED.labels(type="invalid").inc(len(rejected))
    # The first failing field is the reason; labels stay bounded to the contract's own field names.
    for field, n in Counter(r.errors[0].field.split(".")[0] for r in rejected).items():
        EVENTS_REJECTED.labels(reason=field if field in _REASON_FIELDS else "other").inc(n)


def create_app(settings: Settings | None = None, ingest: IngestSettings | None = None) -> FastAPI:
    settings = settings or get_settings()
    ingest = ingest or IngestSettings()
    require_api_key = bearer_key_check(settings.load_api_keys(), "shelfcast-ingest")  # no keys: every call is 401

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        producer = AckedProducer(make_producer(settings, **{"queue.buffering.max.messages": ingest.queue_max_events}))
        app.state.producer = producer
        QUEUE_DEPTH.set_function(producer.queue_depth)
        yield
        producer.close()

    app = service_app(
        "Shelfcast ingest",
        "Storefront events into Shelfcast. Every accepted event is durable when the response arrives.",
        lifespan,
        REQUEST_SECONDS,
    )

    errors = {
        400: {"model": ErrorResponse, "description": "malformed JSON or not an event / array"},
        401: {"model": ErrorResponse, "description": "missing or invalid API key"},
        413: {"model": ErrorResponse, "description": "body or event count over the limit"},
        422: {"model": IngestResponse, "description": "every event was invalid"},
        503: {"model": ErrorResponse, "description": "broker slow or unavailable: retry after Retry-After"},
    }

    @app.post(
        "/v1/events",
        response_model=IngestResponse,
        responses=errors,  # type: ignore[arg-type]
        openapi_extra={"requestBody": _event_request_body()},
        summary="Send one event, a JSON array of events, or NDJSON",
    )
    async def post_events(request: Request, _auth: Annotated[None, Depends(require_api_key)]) -> Response:
        body = await _read_body(request, ingest.max_body_bytes)
        max_ts_ms = settings.latest_plausible_ms()
        content_type = request.headers.get("content-type", "application/json")
        accepted, rejected = _validate_request(body, content_type, max_ts_ms)
        received = len(accepted) + len(rejected)
        if received == 0:
            raise ApiError(400, "empty_batch", "no events in the request")
        if received > ingest.max_events:
            raise ApiError(413, "too_many_events", f"{received} events is over the limit of {ingest.max_events}")
        _count_received(accepted, rejected)
        if not accepted:
            return JSONResponse(IngestResponse(accepted=0, rejected=rejected).model_dump(), status_code=422)
        records = [(e.kafka_key, _to_json(e)) for e in accepted]
        try:
            await request.app.state.producer.send_batch(settings.topics.events, records)
        except QueueFull as exc:
            raise ApiError(503, "backpressure", str(exc), headers={"Retry-After": "1"}) from None
        except DeliveryFailed as exc:
            DELIVERY_ERRORS.inc()
            raise ApiError(503, "not_acknowledged", str(exc), headers={"Retry-After": "1"}) from None
        for kind, n in Counter(e.type for e in accepted).items():
            EVENTS_ACCEPTED.labels(type=kind).inc(n)
        return JSONResponse(IngestResponse(accepted=len(accepted), rejected=rejected).model_dump())

    @app.get("/readyz", summary="The broker answers and the events topic exists", responses={503: {}})
    def readyz(request: Request) -> JSONResponse:
        try:
            topics = request.app.state.producer.list_topics(timeout=2.0).topics
        except Exception as exc:  # any client error means: not ready
            return JSONResponse({"status": "unavailable", "reason": str(exc)}, status_code=503)
        if settings.topics.events not in topics:
            return JSONResponse({"status": "unavailable", "reason": f"no topic {settings.topics.events}"}, 503)
        return JSONResponse({"status": "ready"})

    return app


def app_from_env() -> FastAPI:
    """The uvicorn factory: `uvicorn --factory shelfcast_ingest.app:app_from_env`."""
    return create_app()
