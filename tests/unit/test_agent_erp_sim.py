"""The ERP simulator's book: deliveries fall due by the stream's days, once per decision."""

from shelfcast.contracts import Forecast, Reorder
from shelfcast_agent.erp_sim import DAY_MS, Deliveries

D0 = 1_767_225_600_000  # 2026-01-01


def forecast(start: int) -> Forecast:
    flat = [1.0, 1.0]
    return Forecast(
        sku="SKU-1",
        issued_at=D0,
        model="m",
        model_version="v",
        horizon=2,
        freq="D",
        start=start,
        quantiles={"p10": flat, "p50": flat, "p90": flat},
    )


def reorder(decision_id: str, qty: int = 5, expected_at: int | None = None) -> Reorder:
    return Reorder(
        decision_id=decision_id,
        sku="SKU-1",
        qty=qty,
        issued_at=D0,
        policy="capped-base-stock",
        policy_version="v",
        inventory_position=0.0,
        reason="test",
        expected_at=expected_at,
    )


def test_a_reorder_is_received_in_full_on_its_expected_day() -> None:
    book = Deliveries(lead_days=5)
    book.forecast(forecast(D0))  # the stream decides D0
    book.reorder(reorder("a", qty=7, expected_at=D0 + 2 * DAY_MS))
    assert book.receipts(now_ms=D0 + 99) == []
    book.forecast(forecast(D0 + DAY_MS))
    assert book.receipts(now_ms=D0 + 99) == []
    book.forecast(forecast(D0 + 2 * DAY_MS))
    (receipt,) = book.receipts(now_ms=D0 + 99)
    assert (receipt.receipt_id, receipt.decision_id, receipt.sku, receipt.qty) == ("rcpt:a", "a", "SKU-1", 7)
    assert receipt.received_at == D0 + 99 and book.receipts(now_ms=D0 + 100) == []


def test_a_reorder_read_after_its_day_is_delivered_at_once_and_one_without_a_day_after_lead_days() -> None:
    book = Deliveries(lead_days=2)
    book.forecast(forecast(D0 + 3 * DAY_MS))
    book.reorder(reorder("late", expected_at=D0 + DAY_MS))  # the forecasts ran ahead of the reorders
    book.reorder(reorder("no-day"))
    assert [r.decision_id for r in book.receipts(now_ms=D0)] == ["late"]
    book.forecast(forecast(D0 + 5 * DAY_MS))
    assert [r.decision_id for r in book.receipts(now_ms=D0)] == ["no-day"]


def test_the_clock_never_goes_back_and_a_repeated_decision_is_delivered_once() -> None:
    book = Deliveries(lead_days=1)
    book.forecast(forecast(D0 + 5 * DAY_MS))
    book.forecast(forecast(D0 + DAY_MS))  # an older forecast arriving late
    assert book.day_ms == D0 + 5 * DAY_MS
    book.reorder(reorder("a"))
    book.reorder(reorder("a"))
    book.reorder(reorder("b"))
    book.forecast(forecast(D0 + 6 * DAY_MS))
    assert [r.decision_id for r in book.receipts(now_ms=D0)] == ["a", "b"]


def test_nothing_falls_due_before_the_first_forecast() -> None:
    book = Deliveries(lead_days=0)
    book.reorder(reorder("a"))
    assert book.receipts(now_ms=D0) == []
    book.forecast(forecast(D0))
    assert [r.decision_id for r in book.receipts(now_ms=D0)] == ["a"]
