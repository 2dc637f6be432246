import contextlib
import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from shelfcast.contracts import (
    MAX_UNITS,
    Contract,
    DeadLetter,
    Event,
    FeatureWindow,
    Forecast,
    PriceChange,
    Receipt,
    Reorder,
)
from shelfcast.errors import ContractError

VALID_EVENT = {
    "event_id": "e-1",
    "type": "purchase",
    "sku": "SKU-00042",
    "ts": "2026-11-24T07:45:00Z",
    "qty": 2,
    "price": 19.99,
    "currency": "EUR",
}


def event_bytes(**changes: object) -> bytes:
    return json.dumps({**VALID_EVENT, **changes}).encode()


def test_event_timestamps_normalise_to_utc_epoch_ms() -> None:
    assert Event.from_bytes(event_bytes()).ts == 1795506300000
    assert Event.from_bytes(event_bytes(ts="2026-11-24T08:45:00+01:00")).ts == 1795506300000
    assert Event.from_bytes(event_bytes(ts=1795506300000)).ts == 1795506300000


def test_event_wire_format_carries_schema_version_and_epoch_ms() -> None:
    wire = json.loads(Event.from_bytes(event_bytes()).to_bytes())
    assert wire["schema_version"] == 1
    assert wire["ts"] == 1795506300000


@pytest.mark.parametrize(
    ("changes", "field", "reason"),
    [
        ({"ts": 1795506300}, "ts", "seconds instead of milliseconds"),
        ({"ts": "2026-11-24T07:45:00"}, "ts", "UTC offset"),
        ({"ts": "yesterday"}, "ts", "RFC 3339"),
        ({"type": "teleport"}, "type", "'view'"),
        ({"sku": "SKU:1"}, "sku", "pattern"),
        ({"sku": ""}, "sku", "pattern"),
        ({"qty": -1}, "qty", "greater than or equal to 0"),
        ({"price": "NaN"}, "price", "finite"),
        ({"currency": "euro"}, "currency", "pattern"),
        ({"surprise": 1}, "surprise", "Extra inputs"),
    ],
)
def test_invalid_event_names_the_field_and_reason(changes: dict, field: str, reason: str) -> None:
    with pytest.raises(ContractError) as caught:
        Event.from_bytes(event_bytes(**changes))
    message = str(caught.value)
    assert f"{field}: " in message
    assert reason in message


def test_missing_field_is_named() -> None:
    record = {k: v for k, v in VALID_EVENT.items() if k != "price"}
    with pytest.raises(ContractError, match="price: Field required"):
        Event.from_bytes(json.dumps(record))


def test_malformed_json_and_empty_records_are_contract_errors() -> None:
    with pytest.raises(ContractError, match="Invalid JSON"):
        Event.from_bytes(b"{not json")
    with pytest.raises(ContractError, match="empty record"):
        Event.from_bytes(None)


@given(
    st.dictionaries(st.text(max_size=12), st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text()))
)
def test_arbitrary_json_objects_never_escape_as_anything_but_contract_errors(record: dict) -> None:
    with contextlib.suppress(ContractError):
        Event.from_bytes(json.dumps(record))


@given(st.binary(max_size=64))
def test_arbitrary_bytes_never_escape_as_anything_but_contract_errors(raw: bytes) -> None:
    with contextlib.suppress(ContractError):
        Event.from_bytes(raw)


def test_kafka_key_is_the_sku_and_dead_letters_have_none() -> None:
    assert Event.from_bytes(event_bytes()).kafka_key == b"SKU-00042"
    assert DeadLetter.wrap(b"x", "bad", stage="test").kafka_key is None


def test_dead_letter_keeps_the_raw_bytes_exactly() -> None:
    raw = b"\xff\x00{broken"
    letter = DeadLetter.from_bytes(DeadLetter.wrap(raw, "reason", stage="test", source_offset=7).to_bytes())
    assert letter.raw == raw
    assert letter.source_offset == 7


def test_feature_window_must_end_after_it_starts() -> None:
    with pytest.raises(ContractError, match="window_end must be after window_start"):
        FeatureWindow.from_bytes(
            json.dumps({"sku": "A", "granularity": "1m", "window_start": 1795506300000, "window_end": 1795506300000})
        )


def forecast(quantiles: dict) -> bytes:
    return json.dumps(
        {
            "sku": "A",
            "issued_at": 1795506300000,
            "model": "lstm",
            "model_version": "1",
            "horizon": 2,
            "freq": "D",
            "start": 1795564800000,
            "quantiles": quantiles,
        }
    ).encode()


def test_forecast_quantiles_must_match_the_horizon_and_not_cross() -> None:
    assert Forecast.from_bytes(forecast({"p10": [1, 2], "p50": [2, 2], "p90": [3, 4]})).horizon == 2
    with pytest.raises(ContractError, match="p90 has 1 values, horizon is 2"):
        Forecast.from_bytes(forecast({"p50": [2, 2], "p90": [3]}))
    with pytest.raises(ContractError, match="p10 is above p50"):
        Forecast.from_bytes(forecast({"p10": [3, 2], "p50": [2, 2]}))
    with pytest.raises(ContractError, match="must include p50"):
        Forecast.from_bytes(forecast({"p10": [1, 1], "p90": [2, 2]}))
    with pytest.raises(ContractError, match=r"quantiles\.p5x"):
        Forecast.from_bytes(forecast({"p5x": [1, 1], "p50": [2, 2]}))


@pytest.mark.parametrize(
    ("p50", "reason"),
    [
        (1e300, "less than or equal to 10000000"),
        (10_000_000.5, "less than or equal to 10000000"),
        ("NaN", "finite"),
        ("Infinity", "finite"),
        (-1.0, "greater than or equal to 0"),
    ],
)
def test_forecast_quantiles_are_finite_plausible_units(p50: object, reason: str) -> None:
    with pytest.raises(ContractError) as caught:
        Forecast.from_bytes(forecast({"p50": [2, p50]}))
    assert "quantiles.p50.1: " in str(caught.value) and reason in str(caught.value)


def test_nan_literal_bytes_in_a_forecast_are_a_contract_error() -> None:
    raw = forecast({"p50": [2, 3]}).replace(b"[2, 3]", b"[2, NaN]")
    with pytest.raises(ContractError, match="quantiles"):
        Forecast.from_bytes(raw)


def test_forecast_quantiles_at_the_ceiling_are_accepted() -> None:
    assert Forecast.from_bytes(forecast({"p50": [0, MAX_UNITS]})).quantiles["p50"] == [0, MAX_UNITS]


REORDER = {
    "decision_id": "A:1",
    "sku": "A",
    "qty": 5,
    "issued_at": 1795506300000,
    "policy": "capped-base-stock",
    "policy_version": "1",
    "inventory_position": 3.0,
    "reason": "test",
}


@pytest.mark.parametrize(
    ("model", "record", "field"),
    [
        (Reorder, REORDER | {"qty": MAX_UNITS + 1}, "qty"),
        (Reorder, REORDER | {"qty": 0}, "qty"),
        (Reorder, REORDER | {"inventory_position": 1e300}, "inventory_position"),
        (Receipt, {"receipt_id": "r", "sku": "A", "qty": MAX_UNITS + 1, "received_at": 1795506300000}, "qty"),
        (
            PriceChange,
            {
                "decision_id": "A:1:price",
                "sku": "A",
                "old_price": 1.0,
                "new_price": 1e300,
                "issued_at": 1795506300000,
                "policy": "p",
                "reason": "r",
            },
            "new_price",
        ),
    ],
)
def test_orders_receipts_and_prices_are_bounded(model: type[Contract], record: dict, field: str) -> None:
    with pytest.raises(ContractError, match=f"{field}: "):
        model.from_bytes(json.dumps(record))
