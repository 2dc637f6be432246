"""The agent's service KPIs: units demanded and filled, stockouts, and inventory totals over SKUs."""

import pytest
from prometheus_client import REGISTRY

from shelfcast.contracts import Event
from shelfcast_agent.monitoring import count_purchases, show_totals
from shelfcast_agent.settings import SkuParams
from shelfcast_agent.state import InventoryState, Outstanding, PurchaseFlow, StockTotals, filled_units


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


@pytest.mark.parametrize(
    ("on_hand", "qty", "filled"), [(10, 3, 3), (3, 3, 3), (2, 5, 2), (0, 4, 0), (-3, 2, 0), (2.5, 4, 2.5)]
)
def test_filled_units_are_what_was_on_hand(on_hand: float, qty: float, filled: float) -> None:
    assert filled_units(on_hand, qty) == filled


def test_purchase_flow_counts_demand_fill_and_stockouts() -> None:
    flow = PurchaseFlow()
    for before, qty in [(10, 3), (7, 7), (0, 2), (-2, 1), (5, 6)]:
        flow.add(before, qty)
    assert (flow.demanded, flow.filled, flow.stockouts) == (19, 15, 3)


@pytest.mark.parametrize(("lost_sales", "on_hand"), [(True, 0), (False, -6)])
def test_a_purchase_takes_off_hand_the_units_filled_or_all_when_backordered(lost_sales: bool, on_hand: float) -> None:
    s, flow = InventoryState(sku="SKU-1", on_hand=4), PurchaseFlow()
    for i, qty in enumerate((3, 2, 5)):
        before = s.on_hand
        sale = Event(
            event_id=f"e{i}", type="purchase", sku="SKU-1", ts=1_780_000_000_000, qty=qty, price=1.0, currency="EUR"
        )
        assert s.apply_event(sale, lost_sales=lost_sales, returns_restock=True)
        flow.add(before, qty)
    assert (flow.demanded, flow.filled, flow.stockouts) == (10, 4, 2)  # the same stockouts either way
    assert s.on_hand == on_hand == 4 - (flow.filled if lost_sales else flow.demanded)
    assert StockTotals.of_state(s, 2.0) == StockTotals(0, 0, 0)


def state(on_hand: float, orders: tuple[float, ...] = ()) -> InventoryState:
    pipeline = [
        Outstanding(decision_id=f"d{i}", qty=q, ordered_period_ms=0, eta_ms=0, eta_step=1) for i, q in enumerate(orders)
    ]
    return InventoryState(sku="SKU-1", on_hand=on_hand, pipeline=pipeline)


def test_stock_totals_of_a_state_and_of_its_json() -> None:
    s = state(8, (5, 7))
    totals = StockTotals.of_state(s, unit_cost=2.5)
    assert totals == StockTotals(8, 12, 20)
    assert StockTotals.of_json(s.model_dump_json().encode(), 2.5) == totals
    assert StockTotals.of_state(state(-4, (6,)), 2.5) == StockTotals(0, 6, 0)  # backordered: nothing on hand
    fresh = InventoryState.new("SKU-2", SkuParams(initial_on_hand=6)).model_dump_json().encode()
    assert StockTotals.of_json(fresh, 3.0) == StockTotals(6, 0, 18)


def test_totals_change_by_the_difference_of_the_changed_states() -> None:
    before, after = StockTotals.of_state(state(8, (5,)), 2.0), StockTotals.of_state(state(3, (5, 4)), 2.0)
    assert after - before == StockTotals(-5, 4, -10)
    assert before + (after - before) == after
    assert sum([before, after], StockTotals()) == StockTotals(11, 14, 22)


def test_metrics_add_the_flow_and_show_the_totals() -> None:
    names = ("shelfcast_agent_units_demanded_total", "shelfcast_agent_units_filled_total")
    demanded, filled = (sample(n) for n in names)
    stockouts = sample("shelfcast_agent_stockouts_total")
    count_purchases(PurchaseFlow(demanded=9, filled=7, stockouts=1))
    assert (sample(names[0]) - demanded, sample(names[1]) - filled) == (9, 7)
    assert sample("shelfcast_agent_stockouts_total") - stockouts == 1
    show_totals(StockTotals(on_hand=40, pipeline=12, value=100))
    assert sample("shelfcast_agent_inventory_units", kind="on_hand") == 40
    assert sample("shelfcast_agent_inventory_units", kind="pipeline") == 12
    assert sample("shelfcast_agent_inventory_value") == 100
    assert REGISTRY.get_sample_value("shelfcast_agent_emitted_total", {"topic": "prices"}) is not None
