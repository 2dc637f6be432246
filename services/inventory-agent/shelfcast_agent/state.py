"""Inventory state per SKU and the agent's Redis layout.

| key | type | holds |
| --- | --- | --- |
| `sc:inv:{sku}` | string (JSON of `InventoryState`) | on hand, pipeline (decision_id, qty, ETA), price, last decision |
| `{ks}:offset:{topic}:{partition}` | string | next offset to apply, written in the MULTI/EXEC of the state it changed |
| `{ks}:decision:{decision_id}` | string (JSON of `DecisionRecord`) | the record to publish and its topic (TTL) |
| `{ks}:pending` | sorted set | decision ids recorded, not yet acknowledged by the broker, scored by when recorded |
| `{ks}:seen:{bucket}` | set | event and receipt ids applied, per half of `dedupe_window_s` (the last two are checked) |
| `{ks}:budget:{period_start_ms}` | string (float) | unit_cost x qty ordered in that period, all SKUs |
| `{ks}:skus` | sorted set | every SKU with state, scored by the start of its last decision period (0: none yet) |
| `{ks}:clock` | hash | the newest decision period seen on the forecasts (`period_ms`, `freq`, `advanced_at_ms`) |
| `{ks}:totals` | hash | `on_hand`, `pipeline`, `value` summed over the SKUs (`StockTotals`), rebuilt at start-up |
| `{ks}:inflight:{topic}:{partition}` | string | `first:last` offsets of the records being applied (a crash leaves it) |
| `{ks}:crashes:{topic}:{partition}` | hash | offset -> how many crashed runs had that record in flight (crash ledger) |
| `{ks}:corrupt:{sku}` | string | the last stored state of the SKU that did not parse, kept when it was reset |

`{ks}` is `SHELFCAST_AGENT_KEYSPACE` (default `sc:agent`).

Purchases take units off hand as the SKU's `lost_sales` says: for a lost-sales SKU (the default) at most what is on
hand, the rest of the demand is lost (on hand stops at 0); for a backorder SKU all of it (on hand may go negative:
units sold without stock, owed to customers until the next receipt). Either way the units not served from stock are a
stockout (`filled_units`, `PurchaseFlow`). Returns put units back when `returns_restock` (the default: a returned unit
is sellable again). Receipts put units on hand and take them off the pipeline: from the order with their
`decision_id` when given, else from the oldest outstanding orders first; units beyond what was outstanding are still
put on hand.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import orjson
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from shelfcast.contracts import Event, Forecast, Receipt
from shelfcast_agent.env import MAX_LEAD
from shelfcast_agent.settings import SkuParams

INVENTORY_PREFIX = "sc:inv:"


def inventory_key(sku: str) -> str:
    return f"{INVENTORY_PREFIX}{sku}"


class Keys:
    """The agent's own keys under one keyspace (see the module docstring)."""

    def __init__(self, keyspace: str) -> None:
        self.ks = keyspace
        self.pending = f"{keyspace}:pending"
        self.skus = f"{keyspace}:skus"
        self.clock = f"{keyspace}:clock"
        self.totals = f"{keyspace}:totals"

    def offset(self, topic: str, partition: int) -> str:
        return f"{self.ks}:offset:{topic}:{partition}"

    def decision(self, decision_id: str) -> str:
        return f"{self.ks}:decision:{decision_id}"

    def budget(self, period_start_ms: int) -> str:
        return f"{self.ks}:budget:{period_start_ms}"

    def seen(self, bucket: int) -> str:
        return f"{self.ks}:seen:{bucket}"

    def inflight(self, topic: str, partition: int) -> str:
        return f"{self.ks}:inflight:{topic}:{partition}"

    def crashes(self, topic: str, partition: int) -> str:
        return f"{self.ks}:crashes:{topic}:{partition}"

    def corrupt(self, sku: str) -> str:
        return f"{self.ks}:corrupt:{sku}"


class _Model(BaseModel):
    model_config = ConfigDict(extra="ignore", allow_inf_nan=False)


class Outstanding(_Model):
    """An order placed and not yet (fully) received."""

    decision_id: str
    qty: float
    ordered_period_ms: int
    eta_ms: int
    eta_step: int = Field(description="forecast step index the order is expected in")


class StoredForecast(_Model):
    """The newest forecast seen for the SKU (kept for decisions when the next one is missing)."""

    start: int
    freq: str
    issued_at: int
    model: str
    model_version: str
    fallback: bool = False
    quantiles: dict[str, list[float]]

    @classmethod
    def of(cls, f: Forecast) -> StoredForecast:
        return cls(
            start=f.start,
            freq=f.freq,
            issued_at=f.issued_at,
            model=f.model,
            model_version=f.model_version,
            fallback=f.fallback,
            quantiles={k: list(v) for k, v in f.quantiles.items()},
        )

    def describe(self) -> str:
        return describe_forecast(self.model, self.model_version, self.fallback)


def describe_forecast(model: str, version: str, fallback: bool) -> str:
    return f"forecast {model} {version}" + (" (fallback)" if fallback else "")


class LastDecision(_Model):
    decision_id: str
    period_ms: int
    qty: int
    order_up_to: float
    policy: str
    fallback: str | None = None
    reason: str
    decided_at: int


class InventoryState(_Model):
    """One SKU's inventory as the agent knows it (`sc:inv:{sku}`)."""

    sku: str
    on_hand: float = 0.0
    pipeline: list[Outstanding] = Field(default_factory=list)
    price: float | None = None
    last_decision_period_ms: int | None = None
    last_decision: LastDecision | None = None
    sold_since_decision: float = 0.0
    demand_rate: float | None = Field(default=None, description="smoothed units sold per period")
    forecast: StoredForecast | None = None
    purchases: int = Field(default=0, description="units asked for in purchases, lost ones included, all time")
    returns: int = 0
    received: int = 0
    updated_at: int = 0

    @classmethod
    def new(cls, sku: str, params: SkuParams) -> InventoryState:
        price = params.pricing.base_price if params.pricing is not None else None
        return cls(sku=sku, on_hand=float(params.initial_on_hand), price=price)

    def snapshot(self) -> InventoryState:
        """A copy that applying records to this state leaves unchanged (to undo a record that failed halfway)."""
        return self.model_copy(update={"pipeline": [o.model_copy() for o in self.pipeline]})

    @property
    def on_order(self) -> float:
        return float(sum(o.qty for o in self.pipeline))

    @property
    def inventory_position(self) -> float:
        return self.on_hand + self.on_order

    def apply_event(self, event: Event, *, lost_sales: bool, returns_restock: bool) -> bool:
        """A purchase takes units off hand: with ``lost_sales`` only those on hand (demand beyond stock is lost),
        else all of them (demand beyond stock is backordered: on hand goes negative). A return puts them back when
        ``returns_restock``; other events do not move stock. True when the event is a purchase or a return."""
        if event.type == "purchase":
            self.on_hand -= filled_units(self.on_hand, event.qty) if lost_sales else event.qty
            self.sold_since_decision += event.qty
            self.purchases += event.qty
            return True
        if event.type == "return":
            self.returns += event.qty
            if returns_restock:
                self.on_hand += event.qty
            return True
        return False

    def apply_receipt(self, receipt: Receipt) -> Literal["matched", "fifo", "unmatched"]:
        """Units on hand; off the pipeline by decision_id, else oldest order first (module docstring)."""
        self.on_hand += receipt.qty
        self.received += receipt.qty
        left = float(receipt.qty)
        outcome: Literal["matched", "fifo", "unmatched"] = "unmatched"
        if receipt.decision_id is not None:
            orders = [o for o in self.pipeline if o.decision_id == receipt.decision_id]
            if orders:
                outcome = "matched"
        else:
            orders = sorted(self.pipeline, key=lambda o: (o.eta_ms, o.decision_id))
            if orders:
                outcome = "fifo"
        for order in orders:
            taken = min(order.qty, left)
            order.qty -= taken
            left -= taken
            if left <= 0:
                break
        self.pipeline = [o for o in self.pipeline if o.qty > 0]
        return outcome

    def store_forecast(self, forecast: Forecast) -> bool:
        """Keep the forecast when it is at least as new as the one kept; True when kept."""
        kept = self.forecast
        if kept is not None and (forecast.start, forecast.issued_at) < (kept.start, kept.issued_at):
            return False
        self.forecast = StoredForecast.of(forecast)
        return True

    def pipeline_slots(self, current_step: int) -> np.ndarray:
        """Outstanding units by periods until expected (1..MAX_LEAD), as the simulator's observation has them;
        overdue orders count as arriving next period."""
        slots = np.zeros(MAX_LEAD)
        for order in self.pipeline:
            ahead = min(max(order.eta_step - current_step, 1), MAX_LEAD)
            slots[ahead - 1] += order.qty
        return slots

    def recent_demand(self, periods: int) -> float:
        """Units sold per period lately: the smoothed rate or, when higher, the rate since the last decision
        (`periods` ago; a SKU never decided counts what it sold so far as one period)."""
        since = self.sold_since_decision / max(periods, 1)
        return max(self.demand_rate or 0.0, since)

    def update_demand_rate(self, periods: int) -> None:
        """Fold the units sold since the last decision into the smoothed sales rate (alpha 0.5)."""
        if periods > 0:
            rate = self.sold_since_decision / periods
            self.demand_rate = rate if self.demand_rate is None else 0.5 * rate + 0.5 * self.demand_rate
        self.sold_since_decision = 0.0


class CorruptState(ValueError):
    """A stored `sc:inv:{sku}` that does not parse as the SKU's `InventoryState`."""


def parse_state(sku: str, raw: bytes) -> InventoryState:
    """The stored state of `sku`; `CorruptState` (naming the key and the problem) when it is not valid JSON of an
    `InventoryState` of this SKU with finite numbers."""
    try:
        state = InventoryState.model_validate_json(raw)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or '(value)'}: {e['msg']}" for e in exc.errors())
        raise CorruptState(f"corrupt state {inventory_key(sku)}: {problems}"[:1000]) from None
    if state.sku != sku:
        raise CorruptState(f"corrupt state {inventory_key(sku)}: it holds SKU {state.sku[:80]!r}")
    return state


class DecisionRecord(_Model):
    """A decision as recorded before it is published (`{ks}:decision:{id}`); it is unconfirmed while its id is in
    `{ks}:pending`."""

    decision_id: str
    kind: Literal["reorder", "price"]
    topic: str
    sku: str
    value: str = Field(description="the record's JSON as it goes on the topic")
    recorded_at: int


def filled_units(on_hand: float, qty: float) -> float:
    """Units of a purchase of ``qty`` served from ``on_hand`` (the rest is lost or backordered)."""
    return min(qty, max(on_hand, 0.0))


@dataclass
class PurchaseFlow:
    """Purchase demand applied in one transaction: units asked for, units served from stock, stockouts."""

    demanded: float = 0.0
    filled: float = 0.0
    stockouts: int = 0

    def add(self, on_hand_before: float, qty: float) -> None:
        filled = filled_units(on_hand_before, qty)
        self.demanded += qty
        self.filled += filled
        if filled < qty:
            self.stockouts += 1


@dataclass
class StockTotals:
    """Units on hand (backorders, a negative on hand, count as none), on order, and on-hand value at unit cost."""

    on_hand: float = 0.0
    pipeline: float = 0.0
    value: float = 0.0

    @classmethod
    def of(cls, on_hand: float, pipeline: float, unit_cost: float) -> StockTotals:
        physical = max(on_hand, 0.0)
        return cls(physical, pipeline, physical * unit_cost)

    @classmethod
    def of_state(cls, state: InventoryState, unit_cost: float) -> StockTotals:
        return cls.of(state.on_hand, state.on_order, unit_cost)

    @classmethod
    def of_json(cls, raw: bytes, unit_cost: float) -> StockTotals:
        """From a stored `InventoryState` without validating it (the start-up rebuild reads every SKU);
        `CorruptState` when it cannot be read as one."""
        try:
            doc: dict[str, Any] = orjson.loads(raw)
            on_hand = float(doc.get("on_hand", 0.0))
            pipeline = sum(float(o["qty"]) for o in doc.get("pipeline", []))
        except (ValueError, TypeError, KeyError, AttributeError) as exc:
            raise CorruptState(f"stored state does not parse: {type(exc).__name__}: {exc}"[:500]) from None
        if not (math.isfinite(on_hand) and math.isfinite(pipeline)):
            raise CorruptState("stored state has numbers that are not finite")
        return cls.of(on_hand, pipeline, unit_cost)

    def __add__(self, other: StockTotals) -> StockTotals:
        return StockTotals(self.on_hand + other.on_hand, self.pipeline + other.pipeline, self.value + other.value)

    def __sub__(self, other: StockTotals) -> StockTotals:
        return StockTotals(self.on_hand - other.on_hand, self.pipeline - other.pipeline, self.value - other.value)

    def fields(self) -> dict[str, float]:
        return {"on_hand": self.on_hand, "pipeline": self.pipeline, "value": self.value}
