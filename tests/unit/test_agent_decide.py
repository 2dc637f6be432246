"""The online agent's pure parts: capped base-stock from forecast quantiles, guardrails, prices, periods, the
learned-policy hook, SKU parameters and the state's bookkeeping."""

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from shelfcast.contracts import MAX_UNITS, Event, Forecast, Receipt
from shelfcast_agent.decide import (
    DemandError,
    PeriodClock,
    PolicyAnswer,
    SkuView,
    apply_budget,
    cap_to_recent_demand,
    capped_base_stock,
    decision_id,
    feasible_floor,
    gamma_quantile,
    learned_orders,
    poisson_quantiles,
    price_rule,
    protection_demand,
    sim_for,
    step_moments,
)
from shelfcast_agent.env import MAX_LEAD, InventorySim, State
from shelfcast_agent.instances import Pricing
from shelfcast_agent.settings import SkuCatalog, SkuParams, SkuParamsError
from shelfcast_agent.state import CorruptState, InventoryState, Outstanding, StockTotals, parse_state

FLAT = {"p10": [2.0] * 7, "p50": [5.0] * 7, "p90": [8.0] * 7}
PRICING = Pricing(base_price=10.0, elasticity=1.5, max_step=0.1, min_price=7.0, max_price=12.0)


def params(**changes: object) -> SkuParams:
    return SkuParams.model_validate({"lead_time": 2, "holding_cost": 0.1, "shortage_cost": 1.0, **changes})


def test_step_moments_swanson_and_poisson() -> None:
    mean, var = step_moments({"p10": [2.0], "p50": [5.0], "p90": [9.0]})
    assert mean[0] == pytest.approx(0.3 * 2 + 0.4 * 5 + 0.3 * 9)
    assert var[0] == pytest.approx(((9 - 2) / (2 * stats.norm.ppf(0.9))) ** 2)
    mean, var = step_moments({"p50": [4.0, 0.0]})
    assert list(mean) == [4.0, 0.0] and list(var) == [4.0, 0.0]  # only a median: Poisson
    mean, _ = step_moments({"p5": [1.0], "p50": [5.0], "p95": [12.0]})
    assert mean[0] == pytest.approx(0.185 * 1 + 0.63 * 5 + 0.185 * 12)


def test_protection_demand_offsets_and_repeats_the_last_step() -> None:
    q = {"p10": [1.0, 2.0, 3.0], "p50": [1.0, 2.0, 3.0], "p90": [1.0, 2.0, 3.0]}
    mean, var, steps = protection_demand(q, 1, 4)  # steps 1, 2, then 2 repeated twice
    assert list(steps) == [2.0, 3.0, 3.0, 3.0] and mean == pytest.approx(11.0) and var == 0.0


def test_gamma_quantile_matches_scipy() -> None:
    mean, var = 15.0, 16.4
    expected = stats.gamma.ppf(0.9, a=mean**2 / var, scale=var / mean)
    assert gamma_quantile(mean, var, 0.9) == pytest.approx(expected)
    assert gamma_quantile(7.0, 0.0, 0.99) == 7.0
    assert gamma_quantile(0.0, 3.0, 0.9) == 0.0


def test_capped_base_stock_orders_up_to_the_fractile() -> None:
    p = params()
    plan = capped_base_stock(3.0, FLAT, p)
    mean, var, _ = protection_demand(FLAT, 0, 3)  # lead time 2 + review 1
    s = np.ceil(stats.gamma.ppf(1 / 1.1, a=mean**2 / var, scale=var / mean))
    assert plan.order_up_to == s
    assert plan.wanted == s - 3
    assert plan.cap == pytest.approx(3.0 * 5.0)  # cap_multiple x review x mean per period
    assert plan.qty == min(s - 3, 15)
    assert "inventory position 3 below order-up-to" in plan.reason and "p91 of 3-period" in plan.reason


def test_capped_base_stock_caps_rounds_and_holds() -> None:
    capped = capped_base_stock(-40.0, FLAT, params())
    assert capped.qty == 15 and "capped at 15" in capped.reason
    packed = capped_base_stock(3.0, FLAT, params(moq=20, case_pack=6, max_order=100))
    assert packed.qty == 24  # wanted 15 -> MOQ 20 -> 4 cases of 6
    assert "MOQ 20, case pack 6" in packed.reason
    small_max = capped_base_stock(-40.0, FLAT, params(max_order=10, case_pack=4))
    assert small_max.qty == 8
    hold = capped_base_stock(100.0, FLAT, params())
    assert hold.qty == 0 and "no order" in hold.reason
    zero = capped_base_stock(0.0, {"p10": [0.0], "p50": [0.0], "p90": [0.0]}, params())
    assert zero.qty == 0 and zero.order_up_to == 0


def test_review_period_widens_the_protection_interval() -> None:
    one = capped_base_stock(0.0, FLAT, params(), review=1)
    two = capped_base_stock(0.0, FLAT, params(), review=2)
    assert two.order_up_to > one.order_up_to and two.cap == pytest.approx(2 * one.cap)


def test_service_level_overrides_the_critical_ratio() -> None:
    low = capped_base_stock(0.0, FLAT, params(service_level=0.5))
    high = capped_base_stock(0.0, FLAT, params(service_level=0.99))
    assert low.order_up_to < high.order_up_to


def test_budget_cuts_to_the_largest_feasible_order() -> None:
    p = params(unit_cost=2.0, case_pack=5)
    plan = capped_base_stock(-40.0, FLAT, p)  # 15 units: cost 30
    assert apply_budget(plan, p, None) is plan
    assert apply_budget(plan, p, 30.0) is plan
    cut = apply_budget(plan, p, 25.0)  # 12.5 units affordable -> 10 (whole cases)
    assert cut.qty == 10 and cut.budget_cut and "cut from 15 to 10 by the period budget" in cut.reason
    assert apply_budget(plan, p, 5.0).qty == 0  # one case costs 10
    assert apply_budget(plan, p, -3.0).qty == 0
    assert feasible_floor(19, params(moq=12, case_pack=4)) == 16
    assert feasible_floor(11, params(moq=12, case_pack=4)) == 0


def test_price_rule_marks_down_and_back_up_within_bounds() -> None:
    p = params(pricing=PRICING)
    assert price_rule(10.0, params(), 100, 100, 10) is None  # no pricing configured
    down = price_rule(10.0, p, 40, 40, 20)
    assert down is not None and down.new_price == 9.0 and "markdown" in down.reason
    floor = price_rule(7.5, p, 40, 40, 20)
    assert floor is not None and floor.new_price == 7.0
    assert price_rule(7.0, p, 40, 40, 20) is None  # already at the minimum
    up = price_rule(9.0, p, 15, 25, 20)  # below S: back up towards the base price
    assert up is not None and up.new_price == 9.9
    assert price_rule(10.0, p, 15, 25, 20) is None  # at base and not scarce: hold
    scarce = price_rule(10.0, p, 5, 25, 20)  # below half of S: may rise above base, to max
    assert scarce is not None and scarce.new_price == 11.0
    assert price_rule(11.5, p, 5, 25, 20).new_price == 12.0  # type: ignore[union-attr]
    assert price_rule(10.0, p, 25, 25, 20) is None  # between S and 1.5 S: hold


def test_period_clock_and_decision_ids() -> None:
    day = 86_400_000
    ms = int(pd.Timestamp("2026-05-28 13:00").value // 1_000_000)
    daily = PeriodClock("D")
    assert daily.period_start(ms) == int(pd.Timestamp("2026-05-28").value // 1_000_000)
    assert daily.step_start(daily.step(ms) + 2) == daily.period_start(ms) + 2 * day
    weekly_review = PeriodClock("D", review=7)
    assert weekly_review.period(ms) % 7 == 0 and weekly_review.period_start(ms) <= ms
    monthly = PeriodClock("MS")
    assert pd.Timestamp(monthly.period_start(ms), unit="ms") == pd.Timestamp("2026-05-01")
    assert pd.Timestamp(monthly.step_start(monthly.step(ms) + 1), unit="ms") == pd.Timestamp("2026-06-01")
    with pytest.raises(ValueError):
        PeriodClock("2MS")
    assert decision_id("SKU-1", 123) == "SKU-1:123" and decision_id("SKU-1", 123, "price") == "SKU-1:123:price"


def test_poisson_quantiles() -> None:
    q = poisson_quantiles(4.0, 2)
    assert q["p50"] == [4.0, 4.0] and q["p10"][0] < 4.0 < q["p90"][0]
    assert poisson_quantiles(0.0, 1) == {"p10": [0.0], "p50": [0.0], "p90": [0.0]}


class StubPolicy:
    """A learned policy stand-in: anchor + 1 unit, with given Q-values and trust."""

    name, version = "stub", "0"

    def __init__(self, q: np.ndarray | None = None, in_range: np.ndarray | None = None) -> None:
        self.q, self.in_range = q, in_range
        self.seen: tuple = ()

    def order_for(self, sim: InventorySim, state: State, anchor: np.ndarray) -> PolicyAnswer:
        self.seen = (sim.observe(state), anchor)
        return PolicyAnswer(anchor + 1, self.q, self.in_range)


def views() -> list[SkuView]:
    slots = np.zeros(MAX_LEAD)
    slots[1] = 6
    return [
        SkuView("A", params(), 4.0, slots, None, {"p10": 2.0, "p50": 5.0, "p90": 8.0}, 9.0),
        SkuView("B", params(case_pack=10, pricing=PRICING), -2.0, np.zeros(MAX_LEAD), 9.0, {"p50": 3.0}, 0.0),
    ]


def test_learned_orders_see_the_training_observation_and_are_made_feasible() -> None:
    policy = StubPolicy()
    wanted, placed, problems = learned_orders(policy, views(), q_limit=1e6)
    assert list(wanted) == [10.0, 1.0] and list(placed) == [10.0, 10.0] and problems == [None, None]
    sim, state = sim_for(views())
    observation, anchor = policy.seen
    np.testing.assert_array_equal(observation, sim.observe(state))
    assert list(anchor) == [9.0, 0.0]
    assert observation[0, 0] == pytest.approx(4.0 / 5.0)  # on hand in units of mean demand per period
    assert state.price[1] == 9.0 and state.price[0] == 1.0


def test_learned_orders_flag_untrusted_answers() -> None:
    _, _, problems = learned_orders(StubPolicy(q=np.array([[1.0, 2.0], [np.nan, 0.0]])), views(), q_limit=1e6)
    assert problems == [None, "q_out_of_range"]
    _, _, problems = learned_orders(StubPolicy(q=np.array([[1.0, 2e7], [0.0, 0.0]])), views(), q_limit=1e6)
    assert problems == ["q_out_of_range", None]
    _, _, problems = learned_orders(StubPolicy(in_range=np.array([True, False])), views(), q_limit=1e6)
    assert problems == [None, "q_out_of_range"]


def test_sku_catalog_defaults_and_overrides(tmp_path: Path) -> None:
    path = tmp_path / "skus.json"
    path.write_text(
        json.dumps(
            {
                "defaults": {"lead_time": 3, "unit_cost": 2.5},
                "skus": {"SKU-1": {"moq": 12, "lead_time": {"min": 1, "max": 4}}},
            }
        )
    )
    catalog = SkuCatalog.from_file(path)
    assert catalog("SKU-1").moq == 12 and catalog("SKU-1").unit_cost == 2.5
    assert catalog("SKU-1").lead_time.max == 4 and catalog("SKU-1").expected_lead == 2
    assert catalog("other").lead_time.min == 3 and catalog("other").moq == 0
    assert SkuCatalog.from_file(None)("x").lead_time.max == 2
    for bad, message in [
        ({"skus": {"SKU-1": {"moq": -1}}}, "skus.SKU-1: moq"),
        ({"skus": {"SKU-1": {"colour": "red"}}}, "colour"),
        ({"skus": {"bad sku": {}}}, "not a valid SKU"),
        ({"defaults": {"moq": 20, "max_order": 10}}, "must not exceed max_order"),
        ({"skus": {"P": {"pricing": {**PRICING.model_dump(), "base_price": 20.0}}}}, "min_price <= base_price"),
        ({"other": {}}, "expected"),
    ]:
        path.write_text(json.dumps(bad))
        with pytest.raises(SkuParamsError, match=message):
            SkuCatalog.from_file(path)


def event(kind: str, qty: int) -> Event:
    return Event(event_id=f"{kind}-{qty}", type=kind, sku="S", ts=1_780_000_000_000, qty=qty, price=1, currency="EUR")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("lost_sales", "on_hand_after"),
    [
        (True, [3, 0, 0, 2, 0, 0]),  # 3 of 4 lost, then all 2; the return is sellable again, 1 of 3 lost
        (False, [3, -1, -3, -1, -4, -4]),  # backorders: owed units take the return; the view moves nothing
    ],
)
def test_purchases_beyond_stock_are_lost_or_backordered_as_the_sku_says(
    lost_sales: bool, on_hand_after: list[float]
) -> None:
    state = InventoryState.new("S", params(initial_on_hand=5, lost_sales=lost_sales))
    events = [("purchase", 2), ("purchase", 4), ("purchase", 2), ("return", 2), ("purchase", 3), ("view", 1)]
    seen = []
    for kind, qty in events:
        assert state.apply_event(event(kind, qty), lost_sales=lost_sales, returns_restock=True) == (kind != "view")
        seen.append(state.on_hand)
    assert seen == on_hand_after
    assert state.purchases == 11 and state.sold_since_decision == 11 and state.returns == 2  # demand, lost or not


def test_state_purchases_returns_and_receipts() -> None:
    state = InventoryState.new("S", params(initial_on_hand=5, pricing=PRICING))
    assert state.on_hand == 5 and state.price == 10.0
    assert state.apply_event(event("purchase", 7), lost_sales=True, returns_restock=True)
    assert state.on_hand == 0 and state.sold_since_decision == 7 and state.purchases == 7  # 2 lost, still demand
    assert state.apply_event(event("return", 1), lost_sales=True, returns_restock=True) and state.on_hand == 1
    assert state.apply_event(event("return", 1), lost_sales=True, returns_restock=False) and state.on_hand == 1
    assert state.returns == 2
    assert not state.apply_event(event("view", 0), lost_sales=True, returns_restock=True)
    state.pipeline = [
        Outstanding(decision_id="S:2", qty=10, ordered_period_ms=2, eta_ms=20, eta_step=12),
        Outstanding(decision_id="S:1", qty=4, ordered_period_ms=1, eta_ms=10, eta_step=11),
    ]
    assert state.inventory_position == 15
    slots = state.pipeline_slots(current_step=11)
    assert slots[0] == 14  # one due now (overdue counts as next period) and one next period
    receipt = Receipt(receipt_id="r1", sku="S", qty=6, received_at=1_780_000_000_000, decision_id="S:2")
    assert state.apply_receipt(receipt) == "matched"
    assert [(o.decision_id, o.qty) for o in state.pipeline] == [("S:2", 4), ("S:1", 4)] and state.on_hand == 7
    fifo = Receipt(receipt_id="r2", sku="S", qty=6, received_at=1_780_000_000_000)
    assert state.apply_receipt(fifo) == "fifo"  # the oldest ETA first: S:1 (4), then 2 of S:2
    assert [(o.decision_id, o.qty) for o in state.pipeline] == [("S:2", 2)] and state.on_hand == 13
    extra = Receipt(receipt_id="r3", sku="S", qty=5, received_at=1_780_000_000_000, decision_id="S:2")
    assert state.apply_receipt(extra) == "matched" and state.pipeline == [] and state.on_hand == 18
    unknown = Receipt(receipt_id="r4", sku="S", qty=1, received_at=1_780_000_000_000, decision_id="S:9")
    assert state.apply_receipt(unknown) == "unmatched" and state.on_hand == 19
    state.sold_since_decision = 6
    state.update_demand_rate(2)
    assert state.demand_rate == 3 and state.sold_since_decision == 0
    state.sold_since_decision = 5
    state.update_demand_rate(1)
    assert state.demand_rate == 4


@pytest.mark.parametrize(
    "quantiles",
    [
        {"p10": [1.0] * 3, "p50": [1e300] * 3, "p90": [1e300] * 3},  # the width overflows: variance inf
        {"p50": [1e300] * 3},  # Poisson: mean^2 / var overflows the gamma's shape
        {"p10": [1.0], "p50": [float("nan")], "p90": [3.0]},
    ],
)
def test_quantiles_that_overflow_raise_a_demand_error_instead_of_ordering(quantiles: dict) -> None:
    with pytest.raises(DemandError, match="not a finite number") as caught:
        capped_base_stock(0.0, quantiles, params(), source="forecast lstm v1")
    assert "from forecast lstm v1" in str(caught.value)


def test_huge_finite_quantiles_are_capped_by_recent_demand_not_max_order() -> None:
    """p10..p90 = 1e300 (all equal, so finite): capped base-stock alone wants max_order (the 10,000-unit reorder)."""
    huge = {"p10": [1e300] * 7, "p50": [1e300] * 7, "p90": [1e300] * 7}
    plan = capped_base_stock(0.0, huge, params())
    assert plan.qty == 10_000  # what reached the ERP before the guard
    sold = cap_to_recent_demand(plan, params(), recent_per_period=4.0, multiple=10.0, floor_units=25)
    assert sold.qty == 40 and sold.order_up_to == plan.order_up_to
    assert sold.reason.startswith(plan.reason)
    assert "capped from 10000 to 40 by recent demand: at most 10 x 1 x 4.00 sold per period, or 25 units" in sold.reason
    cold = cap_to_recent_demand(plan, params(case_pack=6), recent_per_period=0.0, multiple=10.0, floor_units=25)
    assert cold.qty == 24 and "or 25 units" in cold.reason  # the floor, made feasible (whole case packs)
    review = cap_to_recent_demand(plan, params(), recent_per_period=4.0, multiple=10.0, floor_units=0, review=2)
    assert review.qty == 80


def test_orders_within_the_recent_demand_limit_are_untouched() -> None:
    plan = capped_base_stock(0.0, FLAT, params())
    assert 0 < plan.qty <= 40
    assert cap_to_recent_demand(plan, params(), 4.0, 10.0, 0) is plan
    assert cap_to_recent_demand(plan, params(), float("nan"), 10.0, 100) is plan  # not finite: the floor holds


def test_recent_demand_is_the_smoothed_rate_or_the_latest_sales_rate() -> None:
    state = InventoryState(sku="A", sold_since_decision=6.0)
    assert state.recent_demand(3) == 2.0 and state.recent_demand(0) == 6.0
    state.demand_rate = 5.0
    assert state.recent_demand(3) == 5.0 and state.recent_demand(1) == 6.0


@pytest.mark.parametrize(
    ("raw", "problem"),
    [
        (b"{not json", "Invalid JSON"),
        (b'{"sku": "A", "on_hand": "lots"}', "on_hand"),
        (b'{"sku": "A", "on_hand": NaN}', "on_hand: Input should be a finite number"),
        (b'{"sku": "B", "on_hand": 1}', "it holds SKU 'B'"),
        (b'{"on_hand": 1}', "sku: Field required"),
    ],
)
def test_corrupt_stored_state_names_the_key_and_the_problem(raw: bytes, problem: str) -> None:
    with pytest.raises(CorruptState) as caught:
        parse_state("A", raw)
    assert str(caught.value).startswith("corrupt state sc:inv:A: ") and problem in str(caught.value)


def test_valid_stored_state_parses() -> None:
    state = InventoryState(sku="A", on_hand=3.0)
    assert parse_state("A", state.model_dump_json().encode()) == state


def test_the_catalog_knows_only_listed_skus() -> None:
    catalog = SkuCatalog({"lead_time": 3}, {"A": {"moq": 2}})
    assert catalog.knows("A") and not catalog.knows("B")
    assert catalog("B").lead_time.max == 3  # unknown SKUs still get the defaults when asked


@pytest.mark.parametrize("raw", [b"{not json", b"[1, 2]", b'{"on_hand": "lots"}', b'{"pipeline": [{}]}'])
def test_totals_of_a_state_that_does_not_parse_raise_corrupt_state(raw: bytes) -> None:
    with pytest.raises(CorruptState, match="stored state does not parse"):
        StockTotals.of_json(raw, 1.0)
    with pytest.raises(CorruptState, match="not finite"):
        StockTotals.of_json(b'{"on_hand": "inf"}', 1.0)


UNITS = st.floats(min_value=0, max_value=MAX_UNITS, allow_nan=False, allow_infinity=False)


@settings(max_examples=300, deadline=None)
@given(
    steps=st.lists(st.tuples(UNITS, UNITS, UNITS), min_size=1, max_size=14),
    position=st.floats(min_value=-1e6, max_value=1e8),
    lead=st.integers(min_value=1, max_value=4),
    recent=st.floats(min_value=0, max_value=1e6),
    service_level=st.none() | st.floats(min_value=0.01, max_value=0.999),
)
def test_any_contract_valid_forecast_gives_a_bounded_order(
    steps: list[tuple[float, float, float]], position: float, lead: int, recent: float, service_level: float | None
) -> None:
    """Whatever quantiles the contract lets through, capped base-stock and the recent-demand guard give a finite
    order-up-to level and an order within max_order and the guard's limit: no DemandError without an overflow."""
    lows, mids, highs = zip(*(sorted(step) for step in steps), strict=True)
    forecast = Forecast(
        sku="A",
        issued_at=1795506300000,
        model="m",
        model_version="1",
        horizon=len(steps),
        freq="D",
        start=1795564800000,
        quantiles={"p10": list(lows), "p50": list(mids), "p90": list(highs)},
    )
    sku = params(lead_time=lead, service_level=service_level)
    plan = capped_base_stock(position, forecast.quantiles, sku)
    assert math.isfinite(plan.order_up_to) and 0 <= plan.qty <= sku.max_order
    guarded = cap_to_recent_demand(plan, sku, recent, 10.0, 100)
    assert 0 <= guarded.qty <= max(10.0 * recent, 100) and guarded.qty <= plan.qty
