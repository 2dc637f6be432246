"""`shelfcast agent replay`: what the agent's orders cost against capped base-stock, on the demand that happened.

The live fill rate of a time-compressed run (`shelfcast demo`) measures the compression more than the policy:
purchases arrive while a day's decision still waits for that day's window to close and be scored. A replay takes
the clock out: per SKU and per day, on the realised daily demand (the feature store's 1d windows), it simulates
two inventories with the same lost-sales simulator and the same costs:

- ``agent``: the agent's actual reorders (``shelfcast.reorders``), each decided on the day of its `decision_id`'s
  period and arriving on its `expected_at` day (without one: the decision day + the SKU's expected lead time);
- ``capped_base_stock``: the orders the live agent's own capped base-stock code (`decide.capped_base_stock`)
  gives on each decision day, from the forecast the agent had for that day and the replayed inventory position,
  arriving after the SKU's expected lead time (the day the ERP simulator would deliver them).

A day, as in `env.InventorySim.step`: what is due arrives, the day's order is placed (lead time 0 arrives at
once), the day's demand is served from stock (the rest is lost, or backordered for a SKU with
``lost_sales: false``), returned units go back on hand (with ``returns_restock``). Costs follow the simulator so they
mean what `shelfcast agent evaluate` reports: holding on the end-of-day on hand, shortage per unit lost (per unit
backordered at the end of the day), and ordering = the fixed cost per order plus the unit cost per unit ordered.
Both replays start from the SKU's ``initial_on_hand`` with nothing on order.

The pure part (`simulate`, `replay_sku`, `report`) needs no servers; `read_inputs` reads Kafka and Redis.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, cast

import typer
from rich.console import Console
from rich.table import Table

from shelfcast.contracts import FeatureWindow, Forecast, Reorder
from shelfcast.errors import ContractError, ShelfcastError
from shelfcast.kafka import check_kafka, make_consumer
from shelfcast.settings import Settings, get_settings
from shelfcast.store import connect_redis, feature_key
from shelfcast_agent.decide import capped_base_stock, clock_for
from shelfcast_agent.settings import AgentSettings, SkuCatalog, SkuParams
from shelfcast_agent.state import describe_forecast

DAY_MS = 86_400_000
POLICIES = ("agent", "capped_base_stock")

# Orders placed on a day: (day index, inventory position before ordering) -> [(units, arrival day index)].
OrderRule = Callable[[int, float], list[tuple[int, int]]]


# ---------------------------------------------------------------------------------------------------- simulation
@dataclass
class Ledger:
    """Costs and service of one replay (or a sum of them)."""

    holding: float = 0.0
    shortage: float = 0.0
    ordering: float = 0.0
    units_demanded: float = 0.0
    units_sold: float = 0.0
    orders: int = 0
    units_ordered: float = 0.0

    @property
    def cost(self) -> float:
        return self.holding + self.shortage + self.ordering

    @property
    def fill_rate(self) -> float | None:
        return self.units_sold / self.units_demanded if self.units_demanded > 0 else None

    def __add__(self, other: Ledger) -> Ledger:
        names = ("holding", "shortage", "ordering", "units_demanded", "units_sold", "orders", "units_ordered")
        return Ledger(*(getattr(self, n) + getattr(other, n) for n in names))

    def as_json(self) -> dict[str, Any]:
        return {
            "cost": _num(self.cost),
            "holding": _num(self.holding),
            "shortage": _num(self.shortage),
            "ordering": _num(self.ordering),
            "units_demanded": _num(self.units_demanded),
            "units_sold": _num(self.units_sold),
            "fill_rate": None if self.fill_rate is None else round(self.fill_rate, 4),
            "orders": self.orders,
            "units_ordered": _num(self.units_ordered),
        }


@dataclass
class Trajectory:
    """One replay by day: end-of-day on hand, inventory position before ordering, units ordered and received."""

    ledger: Ledger = field(default_factory=Ledger)
    on_hand: list[float] = field(default_factory=list)
    position: list[float] = field(default_factory=list)
    ordered: list[float] = field(default_factory=list)
    received: list[float] = field(default_factory=list)

    def series(self) -> dict[str, list[float]]:
        return {name: [_num(v) for v in getattr(self, name)] for name in ("on_hand", "position", "ordered", "received")}


def simulate(
    demand: Sequence[float],
    returned: Sequence[float],
    params: SkuParams,
    rule: OrderRule,
    restock_returns: bool = True,
) -> Trajectory:
    """Replay one SKU day by day (module docstring) with the orders `rule` places."""
    days = len(demand)
    due = [0.0] * days
    on_hand, outstanding = float(params.initial_on_hand), 0.0
    out = Trajectory()
    for day in range(days):
        arrived = due[day]
        on_hand, outstanding = on_hand + arrived, outstanding - arrived
        position = on_hand + outstanding
        ordered = 0.0
        for qty, arrives in rule(day, position):
            if qty <= 0:
                continue
            ordered += qty
            out.ledger.orders += 1
            out.ledger.ordering += params.order_cost + params.unit_cost * qty
            if arrives <= day:
                on_hand, arrived = on_hand + qty, arrived + qty
            else:
                outstanding += qty
                if arrives < days:
                    due[arrives] += qty
        wanted = float(demand[day])
        on_hand, sold, short = serve(on_hand, wanted, params.lost_sales)
        if restock_returns:
            on_hand += returned[day]
        out.ledger.holding += params.holding_cost * max(on_hand, 0.0)
        out.ledger.shortage += params.shortage_cost * short
        out.ledger.units_demanded += wanted
        out.ledger.units_sold += sold
        out.ledger.units_ordered += ordered
        out.on_hand.append(on_hand)
        out.position.append(position)
        out.ordered.append(ordered)
        out.received.append(arrived)
    return out


def serve(on_hand: float, wanted: float, lost_sales: bool) -> tuple[float, float, float]:
    """A day's demand served from stock: (on hand after, units sold, units short). Lost sales: what is not on hand
    is lost; backorders: it is owed (on hand goes negative) and every unit owed at the end of the day is short."""
    sold = min(max(on_hand, 0.0), wanted)
    if lost_sales:
        return on_hand - sold, sold, wanted - sold
    after = on_hand - wanted
    return after, sold, max(-after, 0.0)


# ---------------------------------------------------------------------------------------------------- orders
@dataclass(frozen=True)
class PlannedOrder:
    day: int  # index of the decision day
    qty: int
    arrives: int  # index of the day it is on hand (may lie past the replayed days: never received)


def fixed_orders(orders: Iterable[PlannedOrder]) -> OrderRule:
    """The rule that places exactly these orders, whatever the position."""
    by_day: dict[int, list[tuple[int, int]]] = {}
    for order in orders:
        by_day.setdefault(order.day, []).append((order.qty, order.arrives))
    return lambda day, _position: by_day.get(day, [])


@dataclass(frozen=True)
class DemandView:
    """The demand a decision day's order is computed from: forecast quantiles and the first step that lies in it."""

    quantiles: dict[str, list[float]]
    first_step: int
    source: str


def base_stock_rule(views: Mapping[int, DemandView], params: SkuParams, review: int = 1) -> OrderRule:
    """The live agent's capped base-stock order on each decision day that has a view; arrival after the expected
    lead time, as the agent's `expected_at` has it."""

    def rule(day: int, position: float) -> list[tuple[int, int]]:
        view = views.get(day)
        if view is None:
            return []
        plan = capped_base_stock(position, view.quantiles, params, review, view.first_step, view.source)
        return [(plan.qty, day + params.expected_lead)]

    return rule


def is_daily(freq: str) -> bool:
    try:
        clock = clock_for(freq, 1)
    except ValueError:
        return False
    return clock.step_start(1) - clock.step_start(0) == DAY_MS


def demand_views(forecasts: Sequence[Forecast], first_day_ms: int, days: int, review: int = 1) -> dict[int, DemandView]:
    """Per decision day (index), the demand the agent decided on: the first forecast for that decision period (its
    trigger; later ones for a decided period change nothing), else the newest earlier forecast whose horizon still
    covers the day (the agent's missing-forecast fallback). Days before the SKU's first forecast, or past every
    horizon, have no view: the agent had no forecast to decide on (it would use its sales rate)."""
    clock = clock_for("D", review)
    daily = [f for f in forecasts if is_daily(f.freq)]
    triggers: dict[int, Forecast] = {}
    last = -1
    for forecast in daily:  # like the agent: a period is decided once, and never one older than the last decided
        period = clock.period_start(forecast.start)
        if period > last:
            triggers[period], last = forecast, period
    views: dict[int, DemandView] = {}
    for index in range(days):
        day_ms = first_day_ms + index * DAY_MS
        if clock.period_start(day_ms) != day_ms:
            continue
        step = clock.step(day_ms)
        trigger = triggers.get(day_ms)
        if trigger is not None:
            first = max(step - clock.step(trigger.start), 0)
            views[index] = DemandView(dict(trigger.quantiles), first, _describe(trigger))
            continue
        earlier = [f for f in daily if clock.period_start(f.start) < day_ms]
        if earlier:
            newest = max(earlier, key=lambda f: (f.start, f.issued_at))
            elapsed = step - clock.step(newest.start)
            if 0 <= elapsed < newest.horizon:
                views[index] = DemandView(
                    dict(newest.quantiles), elapsed, f"{_describe(newest)}, the newest (none for this period)"
                )
    return views


def _describe(forecast: Forecast) -> str:
    return describe_forecast(forecast.model, forecast.model_version, forecast.fallback)


def decision_day_ms(reorder: Reorder, params: SkuParams) -> int:
    """The decision period's start, from `decision_id` (`{sku}:{period_start_ms}`); without a readable one, the
    expected day minus the expected lead time."""
    tail = reorder.decision_id.rsplit(":", 1)[-1]
    if tail.isdigit():
        return int(tail) // DAY_MS * DAY_MS
    if reorder.expected_at is not None:
        return reorder.expected_at // DAY_MS * DAY_MS - params.expected_lead * DAY_MS
    raise ContractError(f"reorder {reorder.decision_id}: no decision period in its id and no expected_at")


def agent_orders(
    reorders: Sequence[Reorder], first_day_ms: int, days: int, params: SkuParams
) -> tuple[list[PlannedOrder], int]:
    """The agent's reorders as planned orders (one per `decision_id`, the first seen), and how many were decided
    outside the replayed days (left out)."""
    seen: set[str] = set()
    planned, outside = [], 0
    for reorder in reorders:
        if reorder.decision_id in seen:
            continue
        seen.add(reorder.decision_id)
        day = (decision_day_ms(reorder, params) - first_day_ms) // DAY_MS
        if not 0 <= day < days:
            outside += 1
            continue
        if reorder.expected_at is not None:
            arrives = (reorder.expected_at // DAY_MS * DAY_MS - first_day_ms) // DAY_MS
        else:
            arrives = day + params.expected_lead
        planned.append(PlannedOrder(day, reorder.qty, max(arrives, day)))
    return planned, outside


def daily_demand(windows: Iterable[FeatureWindow], first_day_ms: int, days: int) -> tuple[list[float], list[float]]:
    """Units bought and units returned per day from 1d windows; a day without a window sold nothing."""
    demand, returned = [0.0] * days, [0.0] * days
    for window in windows:
        index = (window.window_start // DAY_MS * DAY_MS - first_day_ms) // DAY_MS
        if 0 <= index < days:
            demand[index], returned[index] = float(window.units), float(window.returned_units)
    return demand, returned


# ---------------------------------------------------------------------------------------------------- per SKU, all
@dataclass
class SkuInputs:
    """What was recorded for one SKU, in the order the topics hold it."""

    windows: list[FeatureWindow] = field(default_factory=list)
    forecasts: list[Forecast] = field(default_factory=list)
    reorders: list[Reorder] = field(default_factory=list)


@dataclass
class SkuReplay:
    demand: list[float]
    runs: dict[str, Trajectory]
    orders_outside: int = 0
    reorders_without_expected_at: int = 0


def replay_sku(
    inputs: SkuInputs,
    params: SkuParams,
    first_day_ms: int,
    days: int,
    review: int = 1,
    restock_returns: bool = True,
) -> SkuReplay:
    """Both replays of one SKU over `days` days from `first_day_ms`."""
    demand, returned = daily_demand(inputs.windows, first_day_ms, days)
    planned, outside = agent_orders(inputs.reorders, first_day_ms, days, params)
    views = demand_views(inputs.forecasts, first_day_ms, days, review)
    rules = {"agent": fixed_orders(planned), "capped_base_stock": base_stock_rule(views, params, review)}
    runs = {name: simulate(demand, returned, params, rule, restock_returns) for name, rule in rules.items()}
    missing_eta = len({r.decision_id for r in inputs.reorders if r.expected_at is None})
    return SkuReplay(demand, runs, outside, missing_eta)


def day_range(inputs: Mapping[str, SkuInputs]) -> tuple[int, int]:
    """(first day ms, number of days) spanned by every SKU's 1d windows; (0, 0) without any."""
    starts = [w.window_start // DAY_MS * DAY_MS for i in inputs.values() for w in i.windows]
    if not starts:
        return 0, 0
    return min(starts), (max(starts) - min(starts)) // DAY_MS + 1


def report(
    inputs: Mapping[str, SkuInputs],
    catalog: Callable[[str], SkuParams],
    review: int = 1,
    restock_returns: bool = True,
    max_series: int = 12,
) -> dict[str, Any]:
    """Replay every SKU and sum up: the JSON of `shelfcast agent replay` (per-day series for the `max_series`
    SKUs with the most demand, ties by name)."""
    first_day_ms, days = day_range(inputs)
    replays = {
        sku: replay_sku(inputs[sku], catalog(sku), first_day_ms, days, review, restock_returns)
        for sku in sorted(inputs)
    }
    totals = {name: sum((r.runs[name].ledger for r in replays.values()), Ledger()) for name in POLICIES}
    baseline = totals["capped_base_stock"].cost
    chosen = sorted(replays, key=lambda s: (-sum(replays[s].demand), s))[:max_series]
    day_ms = [first_day_ms + i * DAY_MS for i in range(days)]
    reorders = sum(len({r.decision_id for r in i.reorders}) for i in inputs.values())
    without_eta = sum(r.reorders_without_expected_at for r in replays.values())
    return {
        "days": days,
        "skus": len(replays),
        "lead_time_source": _lead_time_source(reorders, without_eta),
        "totals": {
            **{name: ledger.as_json() for name, ledger in totals.items()},
            "cost_ratio": round(totals["agent"].cost / baseline, 4) if baseline > 0 else None,
        },
        "reorders": reorders,
        "reorders_outside_days": sum(r.orders_outside for r in replays.values()),
        "series": {
            sku: {
                "day_ms": day_ms,
                "demand": [_num(v) for v in replays[sku].demand],
                **{name: replays[sku].runs[name].series() for name in POLICIES},
            }
            for sku in chosen
        },
    }


def _lead_time_source(reorders: int, without_eta: int) -> str:
    agent = (
        "agent: each reorder's expected_at"
        if without_eta == 0
        else f"agent: expected_at, else decision day + SKU expected lead ({without_eta} of {reorders} reorders)"
    )
    return f"{agent}; capped_base_stock: SKU expected lead (rounded mean of lead_time min and max)"


def _num(value: float) -> float:
    """Whole numbers as ints, others to 4 decimals (keeps the JSON small and readable)."""
    return int(value) if float(value).is_integer() else round(value, 4)


# ---------------------------------------------------------------------------------------------------- servers
def read_records(settings: Settings, topics: Sequence[str], first_wait_s: float, quiet_s: float) -> dict[str, list]:
    """Every record of the topics, raw values by topic in the order read: from the start, by a consumer group of
    its own, until nothing came for `quiet_s` (joining a group takes a few seconds, hence `first_wait_s` first)."""
    consumer = make_consumer(settings, group_id=f"shelfcast-replay-{uuid.uuid4().hex[:8]}")
    consumer.subscribe(list(topics))
    values: dict[str, list[bytes | None]] = {topic: [] for topic in topics}
    deadline = time.monotonic() + first_wait_s
    try:
        while time.monotonic() < deadline:
            for msg in consumer.consume(1_000, timeout=0.5):
                if msg.error():
                    continue
                deadline = time.monotonic() + quiet_s
                values[cast(str, msg.topic())].append(msg.value())
    finally:
        consumer.close()
    return values


def parse_all(raw: Iterable[bytes | None], contract: type[Forecast] | type[Reorder]) -> tuple[list, int]:
    """The records that parse, and how many did not (the agent dead-letters those; here they are skipped)."""
    parsed, bad = [], 0
    for value in raw:
        try:
            parsed.append(contract.from_bytes(value))
        except ContractError:
            bad += 1
    return parsed, bad


def read_windows(settings: Settings, skus: Sequence[str]) -> dict[str, list[FeatureWindow]]:
    """Every SKU's 1d windows in the feature store, in one round trip."""
    client = connect_redis(settings.redis_url)
    pipe = client.pipeline(transaction=False)
    for sku in skus:
        pipe.zrange(feature_key(sku, "1d"), 0, -1)
    answers = cast(list[list[bytes]], pipe.execute())
    return {sku: [FeatureWindow.model_validate_json(m) for m in raw] for sku, raw in zip(skus, answers, strict=True)}


def read_inputs(
    settings: Settings, first_wait_s: float = 30.0, quiet_s: float = 5.0
) -> tuple[dict[str, SkuInputs], int]:
    """Per SKU with forecasts: its windows, forecasts and reorders; and how many records did not parse."""
    check_kafka(settings.kafka_bootstrap)
    topics = settings.topics
    raw = read_records(settings, [topics.forecasts, topics.reorders], first_wait_s, quiet_s)
    forecasts, bad_forecasts = parse_all(raw[topics.forecasts], Forecast)
    reorders, bad_reorders = parse_all(raw[topics.reorders], Reorder)
    inputs: dict[str, SkuInputs] = {}
    for forecast in forecasts:
        inputs.setdefault(forecast.sku, SkuInputs()).forecasts.append(forecast)
    for reorder in reorders:
        if reorder.sku in inputs:
            inputs[reorder.sku].reorders.append(reorder)
    for sku, windows in read_windows(settings, sorted(inputs)).items():
        inputs[sku].windows = windows
    return inputs, bad_forecasts + bad_reorders


# ---------------------------------------------------------------------------------------------------- command
def replay_command(
    json_out: Annotated[Path, typer.Option("--json", help="Where to write the replay.")],
    max_skus_series: Annotated[int, typer.Option(min=0, help="SKUs (most demand first) given per-day series.")] = 12,
    sku_params: Annotated[
        Path | None, typer.Option(help="SKU parameter file (default: SHELFCAST_AGENT_SKU_PARAMS).", exists=True)
    ] = None,
    first_wait: Annotated[float, typer.Option(min=1, help="Seconds to wait for the first record.")] = 30.0,
    quiet: Annotated[float, typer.Option(min=0.5, help="Seconds without records that end the reading.")] = 5.0,
) -> None:
    """Replay the agent's reorders and capped base-stock on the realised daily demand: cost and fill rate of each."""
    overrides: dict[str, Any] = {"sku_params": sku_params} if sku_params is not None else {}
    config = AgentSettings(**overrides)
    catalog = SkuCatalog.from_file(config.sku_params)
    settings, console = get_settings(), Console()
    with console.status("reading forecasts, reorders and daily windows"):
        inputs, skipped = read_inputs(settings, first_wait, quiet)
    if not inputs:
        raise ShelfcastError(f"nothing to replay: no forecasts on {settings.topics.forecasts}")
    payload = report(inputs, catalog, config.review_periods, config.returns_restock, max_skus_series)
    if payload["days"] == 0:
        raise ShelfcastError("nothing to replay: no 1d feature windows in Redis for the SKUs with forecasts")
    payload["skipped_records"] = skipped
    if config.budget_per_period is not None:
        payload["note"] = "capped_base_stock ignores the agent's budget per period (the agent's orders include it)"
    json_out.parent.mkdir(parents=True, exist_ok=True)
    json_out.write_text(json.dumps(payload, indent=2) + "\n")
    print_summary(payload, console)
    console.print(f"wrote {json_out}")


def print_summary(payload: Mapping[str, Any], console: Console) -> None:
    totals = payload["totals"]
    table = Table("", *POLICIES, title=f"replay: {payload['skus']} SKUs x {payload['days']} days")
    for key in ("cost", "holding", "shortage", "ordering", "units_demanded", "units_sold", "fill_rate", "orders"):
        table.add_row(key, *(_cell(totals[name][key]) for name in POLICIES))
    console.print(table)
    ratio = totals["cost_ratio"]
    console.print(f"cost ratio agent / capped base-stock: {'-' if ratio is None else f'{ratio:.3f}'}")


def _cell(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:,.3f}" if isinstance(value, float) else f"{value:,}"
