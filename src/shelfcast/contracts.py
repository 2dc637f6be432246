"""Topic contracts: the single source of truth for every record on Shelfcast's Kafka topics.

Each record is JSON on the wire, validated by these pydantic models on the way in and on the way out.
`export_schemas` writes their JSON Schema into `docs/contracts/` (see `shelfcast contracts export`).
"""

import base64
import itertools
import json
import math
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, Literal, Self

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
    WithJsonSchema,
    model_validator,
)

from shelfcast.errors import ContractError
from shelfcast.settings import TopicNames

MIN_TS_MS = int(datetime(2000, 1, 1, tzinfo=UTC).timestamp() * 1000)
MAX_TS_MS = int(datetime(2100, 1, 1, tzinfo=UTC).timestamp() * 1000)


def to_epoch_ms(value: Any) -> int:
    """Accept epoch milliseconds or an RFC 3339 string with a UTC offset; return UTC epoch ms."""
    if type(value) is int and MIN_TS_MS <= value < MAX_TS_MS:
        return value  # the common case first: this runs for every event
    if isinstance(value, bool):
        raise ValueError("must be epoch milliseconds or an RFC 3339 timestamp, not a boolean")
    if isinstance(value, float):
        if not math.isfinite(value) or not value.is_integer():
            raise ValueError("epoch milliseconds must be a whole number")
        value = int(value)
    if isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(value.replace("Z", "+00:00").replace("z", "+00:00"))
        except ValueError:
            raise ValueError("not an RFC 3339 timestamp (e.g. 2026-11-24T07:45:00Z)") from None
        if parsed.tzinfo is None:
            raise ValueError("RFC 3339 timestamp needs a UTC offset (Z or +hh:mm)")
        value = round(parsed.timestamp() * 1000)
    if isinstance(value, datetime):
        if value.tzinfo is None:
            raise ValueError("datetime needs a timezone")
        value = round(value.timestamp() * 1000)
    if not isinstance(value, int):
        raise ValueError("must be epoch milliseconds or an RFC 3339 timestamp")
    if not MIN_TS_MS <= value < MAX_TS_MS:
        raise ValueError("outside 2000-01-01..2100-01-01 (is it in seconds instead of milliseconds?)")
    return value


EpochMs = Annotated[
    int,
    BeforeValidator(to_epoch_ms),
    WithJsonSchema({"anyOf": [{"type": "integer"}, {"type": "string", "format": "date-time"}]}, mode="validation"),
    WithJsonSchema({"type": "integer", "description": "UTC epoch milliseconds"}, mode="serialization"),
]
# SKUs become parts of Redis keys (`sc:feat:{sku}:{gran}`): no ':' or whitespace.
SKU_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._\-/]{0,63}$"
Sku = Annotated[str, StringConstraints(pattern=SKU_PATTERN)]
Identifier = Annotated[str, StringConstraints(min_length=1, max_length=128)]
Label = Annotated[str, StringConstraints(min_length=1, max_length=64)]
Reason = Annotated[str, StringConstraints(min_length=1, max_length=2000)]
Money = Annotated[float, Field(ge=0, le=10_000_000)]
# The most units one SKU may plausibly move in one period (forecast quantiles, orders, receipts): ten million. A
# best-selling grocery item sells a few hundred thousand units a day across a national chain; anything above this is
# a unit or overflow error (1e300 from a broken model), never demand to order against.
MAX_UNITS = 10_000_000
Units = Annotated[float, Field(ge=0, le=MAX_UNITS)]
Count = Annotated[int, Field(ge=0)]
Granularity = Annotated[str, StringConstraints(pattern=r"^[1-9][0-9]*[smhd]$")]
QuantileName = Annotated[str, StringConstraints(pattern=r"^p([1-9]|[1-9][0-9])$")]


class Contract(BaseModel):
    """Base of every topic record: strict, immutable, versioned."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    schema_version: Literal[1] = 1

    @property
    def kafka_key(self) -> bytes | None:
        sku = getattr(self, "sku", None)
        return sku.encode() if sku is not None else None

    def to_bytes(self) -> bytes:
        return self.model_dump_json().encode()

    @classmethod
    def from_bytes(cls, raw: bytes | str | None) -> Self:
        """Parse one record; a bad one raises `ContractError` naming the field and the reason."""
        if raw is None:
            raise ContractError(f"{cls.__name__}: empty record (no value)")
        try:
            return cls.model_validate_json(raw)
        except ValidationError as exc:
            raise ContractError(f"{cls.__name__}: {describe_errors(exc)}") from None


def field_errors(exc: ValidationError) -> list[dict[str, str]]:
    """`[{"field": "quantiles.p50", "reason": "..."}]` for every problem pydantic found."""
    return [
        {"field": ".".join(str(p) for p in err["loc"]) or "(record)", "reason": err["msg"]}
        for err in exc.errors(include_url=False)
    ]


def describe_errors(exc: ValidationError) -> str:
    return "; ".join(f"{e['field']}: {e['reason']}" for e in field_errors(exc))


class Event(Contract):
    """One storefront interaction (`shelfcast.events`, keyed by SKU)."""

    event_id: Identifier
    type: Literal["view", "click", "cart", "purchase", "return"]
    sku: Sku
    ts: EpochMs
    qty: int = Field(ge=0, le=100_000)
    price: Money
    currency: Annotated[str, StringConstraints(pattern=r"^[A-Z]{3}$")]
    session_id: Identifier | None = None
    user_id: Identifier | None = None
    channel: Label | None = None


class DeadLetter(Contract):
    """A record that could not be processed (`shelfcast.events.dlq`): the raw bytes, why, and where from."""

    raw_b64: str = Field(description="the record's value as received, base64")
    reason: Reason
    source_topic: str | None = None
    source_partition: int | None = None
    source_offset: int | None = None
    stage: Label = Field(description="the component that rejected it, e.g. ingest, features")
    failed_at: EpochMs

    @classmethod
    def wrap(cls, raw: bytes | None, reason: str, stage: str, **source: Any) -> Self:
        return cls(
            raw_b64=base64.b64encode(raw or b"").decode(),
            reason=reason[:2000] or "unknown",
            stage=stage,
            failed_at=int(datetime.now(UTC).timestamp() * 1000),
            **source,
        )

    @property
    def raw(self) -> bytes:
        return base64.b64decode(self.raw_b64)


class FeatureWindow(Contract):
    """One closed (or late-updated) per-SKU event-time window (`shelfcast.features`)."""

    sku: Sku
    granularity: Granularity
    window_start: EpochMs
    window_end: EpochMs
    views: Count = 0
    clicks: Count = 0
    carts: Count = 0
    purchases: Count = 0
    returns: Count = 0
    units: Count = 0
    returned_units: Count = 0
    revenue: float = Field(default=0.0, ge=0)
    avg_price: float | None = Field(default=None, ge=0)
    ctr: float | None = Field(default=None, ge=0, description="clicks / views")
    conversion: float | None = Field(default=None, ge=0, description="purchases / clicks")

    @model_validator(mode="after")
    def _window_is_ordered(self) -> Self:
        if self.window_end <= self.window_start:
            raise ValueError("window_end must be after window_start")
        return self


class Forecast(Contract):
    """Multi-horizon demand quantiles for one SKU (`shelfcast.forecasts`)."""

    sku: Sku
    issued_at: EpochMs
    model: Label
    model_version: Label
    horizon: int = Field(ge=1, le=366)
    freq: Label
    start: EpochMs = Field(description="start of the first forecast period: the one after the newest data used")
    quantiles: dict[QuantileName, list[Units]] = Field(
        description=f"e.g. {{p10: [...], p50: [...], p90: [...]}}, each list `horizon` long; units per period,"
        f" finite, 0..{MAX_UNITS:,}"
    )
    fallback: bool = Field(default=False, description="issued by a fallback model, not the trained one")

    @model_validator(mode="after")
    def _quantiles_are_consistent(self) -> Self:
        if "p50" not in self.quantiles:
            raise ValueError("quantiles must include p50")
        for name, values in self.quantiles.items():
            if len(values) != self.horizon:
                raise ValueError(f"quantiles.{name} has {len(values)} values, horizon is {self.horizon}")
        ordered = sorted(self.quantiles, key=lambda q: int(q[1:]))
        for lower, upper in itertools.pairwise(ordered):
            if any(a > b + 1e-9 for a, b in zip(self.quantiles[lower], self.quantiles[upper], strict=True)):
                raise ValueError(f"quantiles cross: {lower} is above {upper}")
        return self


class Reorder(Contract):
    """A purchase order for the ERP (`shelfcast.reorders`); `decision_id` is the idempotency key."""

    decision_id: Identifier
    sku: Sku
    qty: int = Field(ge=1, le=MAX_UNITS)
    issued_at: EpochMs
    policy: Label
    policy_version: Label
    inventory_position: float = Field(ge=-10 * MAX_UNITS, le=10 * MAX_UNITS, description="on hand + on order, units")
    reason: Reason
    expected_at: EpochMs | None = Field(
        default=None,
        description="when the agent expects the goods on hand: its decision period + the expected lead time",
    )


class PriceChange(Contract):
    """A price decision (`shelfcast.prices`)."""

    decision_id: Identifier
    sku: Sku
    old_price: Money
    new_price: Annotated[float, Field(gt=0, le=10_000_000)]
    issued_at: EpochMs
    policy: Label
    reason: Reason


class Receipt(Contract):
    """Goods received into stock, sent by the ERP or the warehouse (`shelfcast.receipts`)."""

    receipt_id: Identifier
    sku: Sku
    qty: int = Field(ge=1, le=MAX_UNITS)
    received_at: EpochMs
    decision_id: Identifier | None = Field(default=None, description="the reorder this receipt fulfils")


# The contract of each topic, by its field name in `TopicNames`.
TOPIC_CONTRACTS: dict[str, type[Contract]] = {
    "events": Event,
    "events_dlq": DeadLetter,
    "features": FeatureWindow,
    "forecasts": Forecast,
    "reorders": Reorder,
    "prices": PriceChange,
    "receipts": Receipt,
}


def render_schemas() -> dict[str, str]:
    """File name -> JSON Schema text for every topic's contract, as it appears on the wire."""
    topics = TopicNames()
    out = {}
    for field, model in TOPIC_CONTRACTS.items():
        schema = model.model_json_schema(mode="serialization")
        schema["$id"] = f"shelfcast/{getattr(topics, field)}/v{Contract.model_fields['schema_version'].default}"
        out[f"{getattr(topics, field)}.schema.json"] = json.dumps(schema, indent=2, sort_keys=True) + "\n"
    return out


def export_schemas(out_dir: Path) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for name, text in render_schemas().items():
        path = out_dir / name
        path.write_text(text)
        written.append(path)
    return written


def stale_schemas(out_dir: Path) -> list[str]:
    """Names of schema files in `out_dir` that are missing, out of date, or no longer generated."""
    expected = render_schemas()
    stale = [n for n, text in expected.items() if not (out_dir / n).is_file() or (out_dir / n).read_text() != text]
    stale += [p.name for p in out_dir.glob("*.schema.json") if p.name not in expected]
    return sorted(stale)
