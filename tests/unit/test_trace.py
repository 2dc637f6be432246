"""Tracing reorders to forecasts, windows and events, and the end-to-end latency, on hand-made records."""

import base64

from shelfcast import trace
from shelfcast.contracts import DeadLetter, Event, Forecast, PriceChange, Reorder
from shelfcast.kafka import Stamped
from shelfcast.system_bench import FLAT_GROWTH, memory_trend

DAY = trace.DAY_MS
P = 20_450 * DAY  # a decision period: the start of a day in 2025


def event(event_id: str, kind: str, ts: int, sku: str = "A") -> Event:
    return Event(event_id=event_id, type=kind, sku=sku, ts=ts, qty=1, price=1.0, currency="EUR")


def reorder(sku: str, period: int) -> Reorder:
    return Reorder(
        decision_id=f"{sku}:{period}",
        sku=sku,
        qty=5,
        issued_at=period,
        policy="capped-base-stock",
        policy_version="1",
        inventory_position=0.0,
        reason="below S",
    )


def forecast(sku: str, start: int) -> Forecast:
    return Forecast(
        sku=sku, issued_at=start, model="m", model_version="1", horizon=1, freq="D", start=start, quantiles={"p50": [1]}
    )


def late_letter(late: Event, reason: str) -> DeadLetter:
    raw = base64.b64encode(late.model_dump_json().encode()).decode()
    return DeadLetter(raw_b64=raw, reason=reason, stage="features", failed_at=P)


def test_a_decision_period_comes_from_the_decision_id_and_a_day_ends_at_the_next_midnight() -> None:
    assert trace.decision_period(reorder("SKU-00001", P)) == P
    price = PriceChange(
        decision_id=f"SKU-00001:{P}:price",
        sku="SKU-00001",
        old_price=10.0,
        new_price=9.5,
        issued_at=P + DAY,
        policy="bounded-markdown",
        reason="markdown",
    )
    assert trace.decision_period(price) == P
    assert trace.day_end(P - 1) == P and trace.day_end(P) == P + DAY


def test_duplicates_count_once_as_first_sent_and_only_daily_lateness_excludes_an_event() -> None:
    sent = trace.first_sent([Stamped(5, event("e1", "view", P - 10)), Stamped(9, event("e1", "view", P - 10))])
    assert [s.at_ms for s in sent] == [5]
    letters = [
        late_letter(event("e2", "click", P - 5), "late: the 1d window of this event closed"),
        late_letter(event("e3", "click", P - 5), "late: the 1m window of this event closed"),
    ]
    late = trace.late_for_daily_windows(letters)
    assert late == {"e2"}
    counts = trace.daily_event_counts([event("e1", "view", P - 10), event("e2", "click", P - 5)], late)
    assert counts == {("A", P): {"views": 1, "clicks": 0, "carts": 0, "purchases": 0, "returns": 0}}


def test_each_step_of_the_trace_is_counted() -> None:
    counts = {"views": 3, "clicks": 1, "carts": 0, "purchases": 1, "returns": 0}
    reorders = [reorder("A", P), reorder("B", P), reorder("C", P), reorder("D", P)]
    forecasts = [forecast(sku, P) for sku in "ABC"]  # D has none
    windows = {("A", P): counts, ("B", P): {**counts, "views": 2}}  # C has no window; B's differs from its events
    events = {("A", P): counts, ("B", P): counts}
    assert trace.trace_reorders(reorders, forecasts, windows, events) == {
        "reorders": 4,
        "with_forecast": 3,
        "with_daily_window": 2,
        "window_equals_its_events": 1,
    }


def test_latency_runs_from_each_purchase_of_the_day_before_to_the_reorder() -> None:
    purchases = [
        Stamped(1_000, event("p1", "purchase", P - DAY + 5)),  # the day before P: decided at P
        Stamped(3_000, event("p2", "purchase", P - 1)),
        Stamped(4_000, event("p3", "purchase", P + 1)),  # day P: a later decision
        Stamped(2_000, event("p4", "purchase", P - 1, sku="B")),  # another SKU
    ]
    assert sorted(trace.purchase_to_reorder_ms(purchases, [Stamped(10_000, reorder("A", P))])) == [7_000, 9_000]


def test_a_window_closes_with_the_first_event_sent_past_its_end_and_the_watermark_delay() -> None:
    events = [
        Stamped(1_000, event("a", "view", P - 1)),
        Stamped(4_000, event("b", "view", P + 4_000)),  # within the delay: no window closes yet
        Stamped(6_000, event("c", "view", P + 9_000)),
        Stamped(5_000, event("d", "view", P + 60_000)),  # sent before c although later in event time
    ]
    assert trace.window_closes_ms(events, [P, P, P + DAY], watermark_delay_ms=5_000) == {P: 5_000}  # not day P's


def test_the_time_after_a_window_closes_splits_into_its_stages() -> None:
    reorders = [Stamped(9_000, reorder("A", P)), Stamped(9_500, reorder("B", P)), Stamped(9_900, reorder("A", P + DAY))]
    windows_at = trace.first_at([(6_500, ("A", P)), (6_000, ("A", P)), (6_200, ("B", P))])  # A's re-emitted later
    assert windows_at == {("A", P): 6_000, ("B", P): 6_200}
    stages = trace.stage_latencies_ms(reorders, {P: 5_000}, windows_at, {("A", P): 8_000})  # B has no forecast
    assert stages == {
        "close_to_window": [1_000],
        "window_to_forecast": [2_000],
        "forecast_to_reorder": [1_000],
        "close_to_reorder": [4_000, 4_500],
    }


def test_percentiles_in_seconds_and_none_without_samples() -> None:
    assert trace.percentiles_s([]) == {"n": 0, "p50": None, "p99": None, "max": None}
    figures = trace.percentiles_s(list(range(1, 1001)))
    assert figures["n"] == 1000 and figures["p50"] == 0.5 and 0.98 < figures["p99"] < 1.0 and figures["max"] == 1.0


def test_memory_is_flat_when_the_end_stays_near_the_warm_level_and_not_when_it_climbs() -> None:
    steady = [(t * 60.0, 500.0 + (t % 3)) for t in range(20)]
    climbing = [(t * 60.0, 500.0 + 40 * t) for t in range(20)]
    assert memory_trend(steady)["flat"] and abs(memory_trend(steady)["slope_mb_per_min"]) < 1
    trend = memory_trend(climbing)
    assert not trend["flat"] and trend["slope_mb_per_min"] == 40.0 and trend["growth"] > FLAT_GROWTH
    assert memory_trend(steady[:3]) == {"samples": 3, "flat": False, "why": "too few samples"}
