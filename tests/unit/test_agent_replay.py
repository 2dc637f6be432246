"""`shelfcast agent replay`'s pure part: the day-by-day simulator (costs, lost sales, backorders, returns), the
agent's reorders arriving on `expected_at`, the baseline from the live agent's capped base-stock code, the forecast
each day is decided on, and the JSON `report` (also through the command, its readers replaced)."""

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from shelfcast.contracts import FeatureWindow, Forecast, Reorder
from shelfcast.errors import ShelfcastError
from shelfcast_agent import replay
from shelfcast_agent.cli import app
from shelfcast_agent.decide import capped_base_stock
from shelfcast_agent.replay import (
    DAY_MS,
    PlannedOrder,
    SkuInputs,
    agent_orders,
    base_stock_rule,
    demand_views,
    fixed_orders,
    replay_sku,
    report,
    simulate,
)
from shelfcast_agent.settings import SkuCatalog, SkuParams

D0 = 1_780_000_000_000 // DAY_MS * DAY_MS
SKU = "SKU-00001"
FLAT = {"p10": [2.0] * 7, "p50": [5.0] * 7, "p90": [8.0] * 7}


def params(**changes: object) -> SkuParams:
    base: dict = {"lead_time": 1, "holding_cost": 1.0, "shortage_cost": 4.0, "order_cost": 2.0, "unit_cost": 0.5}
    return SkuParams.model_validate({**base, **changes})


def window(day: int, units: int, returned: int = 0, sku: str = SKU) -> FeatureWindow:
    start = D0 + day * DAY_MS
    return FeatureWindow(
        sku=sku, granularity="1d", window_start=start, window_end=start + DAY_MS, units=units, returned_units=returned
    )


def forecast(day: int, quantiles: dict | None = None, issued_at: int = 0, sku: str = SKU) -> Forecast:
    q = quantiles or FLAT
    return Forecast(
        sku=sku,
        issued_at=D0 + issued_at,
        model="lstm",
        model_version="v1",
        horizon=len(q["p50"]),
        freq="D",
        start=D0 + day * DAY_MS,
        quantiles=q,
    )


def reorder(day: int, qty: int, arrives_day: int | None = None, sku: str = SKU) -> Reorder:
    return Reorder(
        decision_id=f"{sku}:{D0 + day * DAY_MS}",
        sku=sku,
        qty=qty,
        issued_at=D0,
        policy="capped-base-stock",
        policy_version="1",
        inventory_position=0.0,
        reason="test",
        expected_at=None if arrives_day is None else D0 + arrives_day * DAY_MS + 3_600_000,  # within that day
    )


def test_a_hand_checked_five_days_of_costs_and_series() -> None:
    # day 0: 5 on hand, order 6 (2 + 0.5 x 6 = 5 to order), sell 3, hold 2; day 1: 6 arrive, sell 4, hold 4;
    # day 2: sell 2, hold 2; day 3: hold 2; day 4: 5 wanted, 2 sold, 3 lost (shortage 12), hold 0.
    p = params(initial_on_hand=5)
    run = simulate([3, 4, 2, 0, 5], [0] * 5, p, fixed_orders([PlannedOrder(day=0, qty=6, arrives=1)]))
    ledger = run.ledger
    assert (ledger.holding, ledger.shortage, ledger.ordering, ledger.cost) == (10, 12, 5, 27)
    assert (ledger.units_demanded, ledger.units_sold, ledger.orders) == (14, 11, 1)
    assert ledger.fill_rate == pytest.approx(11 / 14)
    assert run.on_hand == [2, 4, 2, 2, 0]
    assert run.position == [5, 8, 4, 2, 2]  # before the day's order
    assert run.ordered == [6, 0, 0, 0, 0]
    assert run.received == [0, 6, 0, 0, 0]


def test_lost_sales_serve_only_what_is_on_hand_and_never_go_negative() -> None:
    run = simulate([3, 2], [0, 0], params(initial_on_hand=1), fixed_orders([]))
    assert run.on_hand == [0, 0]
    assert (run.ledger.units_sold, run.ledger.shortage, run.ledger.holding) == (1, 4 * 4, 0)
    assert run.ledger.fill_rate == pytest.approx(1 / 5)
    assert simulate([0], [0], params(), fixed_orders([])).ledger.fill_rate is None  # nothing demanded


def test_backorders_owe_the_units_and_pay_shortage_on_what_is_owed_each_day() -> None:
    p = params(initial_on_hand=2, lost_sales=False)
    run = simulate([5, 0], [0, 0], p, fixed_orders([PlannedOrder(0, 4, 1)]))
    assert run.on_hand == [-3, 1]
    assert (run.ledger.units_sold, run.ledger.shortage, run.ledger.holding) == (2, 3 * 4, 1)


def test_returns_go_back_on_hand_unless_restocking_is_off() -> None:
    p = params(initial_on_hand=1)
    assert simulate([1, 0], [2, 0], p, fixed_orders([])).on_hand == [2, 2]
    assert simulate([1, 0], [2, 0], p, fixed_orders([]), restock_returns=False).on_hand == [0, 0]


def test_a_lead_time_zero_order_is_sold_the_same_day_and_one_past_the_days_never_arrives() -> None:
    now = simulate([3], [0], params(), fixed_orders([PlannedOrder(0, 3, 0)]))
    assert (now.ledger.units_sold, now.received) == (3, [3])
    late = simulate([0, 0], [0, 0], params(), fixed_orders([PlannedOrder(0, 4, 5)]))
    assert late.received == [0, 0] and late.position == [0, 4] and late.ledger.units_ordered == 4


def test_an_agent_order_arrives_on_its_expected_at_day_else_after_the_expected_lead() -> None:
    p = params(lead_time={"min": 1, "max": 3})  # expected lead 2
    planned, outside = agent_orders([reorder(1, 5, arrives_day=4), reorder(2, 7)], D0, 10, p)
    assert planned == [PlannedOrder(1, 5, 4), PlannedOrder(2, 7, 4)] and outside == 0
    inputs = SkuInputs(windows=[window(d, 0) for d in range(6)], reorders=[reorder(1, 5, arrives_day=4)])
    run = replay_sku(inputs, p, D0, 6).runs["agent"]
    assert run.received == [0, 0, 0, 0, 5, 0]


def test_repeated_reorders_count_once_and_ones_outside_the_days_are_left_out() -> None:
    planned, outside = agent_orders([reorder(1, 5), reorder(1, 5), reorder(9, 3), reorder(-1, 2)], D0, 5, params())
    assert planned == [PlannedOrder(1, 5, 2)] and outside == 2


def test_the_baseline_orders_what_the_live_agents_capped_base_stock_orders() -> None:
    p = params(initial_on_hand=3)
    views = demand_views([forecast(0)], D0, 1)
    run = simulate([0], [0], p, base_stock_rule(views, p))
    expected = capped_base_stock(3.0, FLAT, p, 1, 0).qty
    assert expected > 0 and run.ordered == [expected]


def test_each_day_is_decided_on_its_first_forecast_else_the_newest_earlier_one_still_covering_it() -> None:
    other = {"p10": [1.0] * 3, "p50": [2.0] * 3, "p90": [3.0] * 3}
    forecasts = [forecast(1), forecast(1, other, issued_at=2), forecast(3, other), forecast(2, FLAT)]
    views = demand_views(forecasts, D0, 8)
    assert 0 not in views  # before the SKU's first forecast
    assert views[1].quantiles == FLAT and views[1].first_step == 0  # the first for the period, not the newest
    # day 2's own forecast came after day 3 was decided (ignored, as the agent does): the newest of day 1's, a step on
    assert views[2].quantiles == other and views[2].first_step == 1
    assert views[3].quantiles == other and views[3].first_step == 0
    assert views[5].first_step == 2 and 6 not in views  # past the 3-step horizon of day 3's forecast


def test_agent_orders_equal_to_the_baseline_cost_the_same() -> None:
    p = params(initial_on_hand=4)
    inputs = SkuInputs(
        windows=[window(d, u) for d, u in enumerate([3, 6, 4, 5, 7, 2, 5, 6])],
        forecasts=[forecast(d) for d in range(1, 8)],
    )
    baseline = replay_sku(inputs, p, D0, 8).runs["capped_base_stock"]
    assert baseline.ledger.orders > 1
    inputs.reorders = [reorder(d, int(q), arrives_day=d + 1) for d, q in enumerate(baseline.ordered) if q > 0]
    out = report({SKU: inputs}, lambda _sku: p)
    assert out["totals"]["cost_ratio"] == 1.0
    assert out["totals"]["agent"] == out["totals"]["capped_base_stock"]
    series = out["series"][SKU]
    assert series["agent"] == series["capped_base_stock"] and series["demand"] == [3, 6, 4, 5, 7, 2, 5, 6]


def test_the_report_totals_every_sku_and_gives_series_to_those_with_the_most_demand() -> None:
    def sku(n: int) -> str:
        return f"SKU-0000{n}"

    inputs = {
        sku(n): SkuInputs(
            windows=[window(d, n * 2, sku=sku(n)) for d in range(4)],
            forecasts=[forecast(d, sku=sku(n)) for d in range(1, 4)],
            reorders=[reorder(1, 5, sku=sku(n))],
        )
        for n in (1, 2, 3)
    }
    inputs[sku(1)].windows = inputs[sku(1)].windows[1:]  # the days span every SKU's windows
    out = report(inputs, SkuCatalog(), max_series=2)
    assert (out["days"], out["skus"], out["reorders"]) == (4, 3, 3)
    assert sorted(out["series"]) == [sku(2), sku(3)]
    assert out["series"][sku(3)]["day_ms"] == [D0 + d * DAY_MS for d in range(4)]
    assert out["totals"]["agent"]["units_demanded"] == 2 * 3 + 4 * 4 + 6 * 4
    assert out["totals"]["agent"]["orders"] == 3
    assert set(out["totals"]["agent"]) == {
        *("cost", "holding", "shortage", "ordering", "units_demanded", "units_sold", "fill_rate", "orders"),
        "units_ordered",
    }
    assert out["lead_time_source"].startswith("agent: expected_at, else decision day + SKU expected lead (3 of 3")


def test_the_command_writes_the_json_and_prints_the_totals(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    inputs = {SKU: SkuInputs(windows=[window(d, 4) for d in range(5)], forecasts=[forecast(d) for d in range(1, 5)])}
    monkeypatch.setattr(replay, "read_inputs", lambda *_args: (inputs, 1))
    out = tmp_path / "replay.json"
    result = CliRunner().invoke(app, ["replay", "--json", str(out), "--max-skus-series", "1"])
    assert result.exit_code == 0, result.output
    payload = json.loads(out.read_text())
    assert {"days", "skus", "lead_time_source", "totals", "series", "skipped_records"} <= set(payload)
    assert payload["skipped_records"] == 1 and list(payload["series"]) == [SKU]
    assert "capped_base_stock" in result.output and "cost ratio" in result.output


def test_nothing_to_replay_is_an_error_naming_what_is_missing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(replay, "read_inputs", lambda *_args: ({}, 0))
    result = CliRunner().invoke(app, ["replay", "--json", str(tmp_path / "r.json")])
    assert isinstance(result.exception, ShelfcastError) and "no forecasts" in str(result.exception)
    monkeypatch.setattr(replay, "read_inputs", lambda *_args: ({SKU: SkuInputs(forecasts=[forecast(1)])}, 0))
    result = CliRunner().invoke(app, ["replay", "--json", str(tmp_path / "r.json")])
    assert isinstance(result.exception, ShelfcastError) and "no 1d feature windows" in str(result.exception)
    assert not (tmp_path / "r.json").exists()
