"""Property tests of the topic contracts, 1,000 examples each: whatever bytes arrive, `from_bytes` either returns a
record within the contract's bounds or raises `ContractError` (never anything else), and valid records round-trip."""

import itertools
import json
import math
from typing import Any

from hypothesis import event, example, given, settings
from hypothesis import strategies as st

from shelfcast.contracts import (
    MAX_TS_MS,
    MAX_UNITS,
    MIN_TS_MS,
    TOPIC_CONTRACTS,
    Contract,
    Forecast,
    Reorder,
)
from shelfcast.errors import ContractError

THOROUGH = settings(max_examples=1_000, deadline=None)
CONTRACTS = sorted(set(TOPIC_CONTRACTS.values()), key=lambda c: c.__name__)
TS = 1_795_506_300_000
VALID: dict[str, dict[str, Any]] = {
    "Event": {
        "event_id": "e-1",
        "type": "purchase",
        "sku": "SKU-1",
        "ts": TS,
        "qty": 2,
        "price": 3.5,
        "currency": "EUR",
    },
    "DeadLetter": {"raw_b64": "eA==", "reason": "bad", "stage": "features", "failed_at": TS},
    "FeatureWindow": {
        "sku": "SKU-1",
        "granularity": "1d",
        "window_start": TS,
        "window_end": TS + 86_400_000,
        "units": 3,
    },
    "Forecast": {
        "sku": "SKU-1",
        "issued_at": TS,
        "model": "lstm",
        "model_version": "v1",
        "horizon": 2,
        "freq": "D",
        "start": TS,
        "quantiles": {"p10": [1.0, 2.0], "p50": [2.0, 3.0], "p90": [4.0, 5.0]},
    },
    "Reorder": {
        "decision_id": "SKU-1:1",
        "sku": "SKU-1",
        "qty": 10,
        "issued_at": TS,
        "policy": "capped-base-stock",
        "policy_version": "1",
        "inventory_position": 4.0,
        "reason": "below order-up-to",
    },
    "PriceChange": {
        "decision_id": "SKU-1:1:price",
        "sku": "SKU-1",
        "old_price": 10.0,
        "new_price": 9.5,
        "issued_at": TS,
        "policy": "markdown",
        "reason": "overstock",
    },
    "Receipt": {"receipt_id": "r-1", "sku": "SKU-1", "qty": 10, "received_at": TS},
}
# Numbers at and past every bound: overflow (1e300), negatives, float precision, huge integers.
NASTY_NUMBERS = st.sampled_from([0, -1, -0.0, 1e-300, 1e300, -1e300, 2**63, -(2**63), 2**64, MAX_UNITS, MAX_UNITS + 1])
PLAUSIBLE_NUMBERS = (
    st.integers(0, 1_000)
    | st.floats(0, 1_000)
    | st.integers(MIN_TS_MS, MAX_TS_MS)
    | st.sampled_from([MIN_TS_MS - 1, MIN_TS_MS, MAX_TS_MS - 1, MAX_TS_MS, MAX_UNITS, MAX_UNITS + 1])
)
json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | NASTY_NUMBERS
    | st.text(max_size=30),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=10,
)


def parse(contract: type[Contract], raw: bytes | str | None) -> Contract | None:
    """The record, or None when the contract refused it with a ContractError (anything else fails the test)."""
    try:
        record = contract.from_bytes(raw)
    except ContractError:
        event(f"{contract.__name__} refused")
        return None
    event(f"{contract.__name__} accepted")
    return record


def assert_within_bounds(record: Contract) -> None:
    """What every accepted record promises its consumers."""
    dumped = record.model_dump()
    for value in _leaves(dumped):
        if isinstance(value, float):
            assert math.isfinite(value), dumped
    for name in ("ts", "issued_at", "start", "window_start", "window_end", "received_at", "failed_at", "expected_at"):
        if dumped.get(name) is not None:
            assert MIN_TS_MS <= dumped[name] < MAX_TS_MS, (name, dumped)
    if isinstance(record, Forecast):
        assert "p50" in record.quantiles
        ordered = sorted(record.quantiles, key=lambda q: int(q[1:]))
        for name in ordered:
            assert len(record.quantiles[name]) == record.horizon
            assert all(0 <= v <= MAX_UNITS for v in record.quantiles[name]), record.quantiles
        for lower, upper in itertools.pairwise(ordered):
            assert all(a <= b + 1e-9 for a, b in zip(record.quantiles[lower], record.quantiles[upper], strict=True))
    if isinstance(record, Reorder):
        assert 1 <= record.qty <= MAX_UNITS
    # and it round-trips: what a producer writes, a consumer reads back unchanged
    assert type(record).from_bytes(record.to_bytes()) == record


def _leaves(value: Any) -> list[Any]:
    if isinstance(value, dict):
        return [leaf for item in value.values() for leaf in _leaves(item)]
    if isinstance(value, list):
        return [leaf for item in value for leaf in _leaves(item)]
    return [value]


@THOROUGH
@given(contract=st.sampled_from(CONTRACTS), raw=st.binary(max_size=200) | st.text(max_size=200) | st.none())
@example(contract=Forecast, raw=b'{"quantiles": {"p50": [1e400]}}')
@example(contract=Forecast, raw=b"NaN")
@example(contract=Reorder, raw=b"\xff\xfe")
def test_arbitrary_bytes_are_a_record_or_a_contract_error(contract: type[Contract], raw: bytes | str | None) -> None:
    record = parse(contract, raw)
    if record is not None:
        assert_within_bounds(record)


@THOROUGH
@given(contract=st.sampled_from(CONTRACTS), value=json_values)
def test_arbitrary_json_is_a_record_or_a_contract_error(contract: type[Contract], value: Any) -> None:
    record = parse(contract, json.dumps(value))
    if record is not None:
        assert_within_bounds(record)


@st.composite
def near_valid(draw: st.DrawFn) -> tuple[type[Contract], str]:
    """A valid record of some contract with a few fields replaced (often by nasty numbers), dropped or added: the
    malformations that get furthest into validation."""
    contract = draw(st.sampled_from(CONTRACTS))
    record = json.loads(json.dumps(VALID[contract.__name__]))
    for field in draw(st.lists(st.sampled_from(sorted(record)), max_size=2)):
        action = draw(st.sampled_from(["replace", "nasty", "drop", "plausible", "plausible"]))
        if action == "drop":
            record.pop(field, None)
        elif action == "plausible" and isinstance(record.get(field), int | float):  # in or just past its bounds
            record[field] = draw(PLAUSIBLE_NUMBERS)
        else:
            record[field] = draw(NASTY_NUMBERS if action == "nasty" else json_values)
    if "quantiles" in record and isinstance(record["quantiles"], dict) and draw(st.booleans()):
        name = draw(st.sampled_from(["p10", "p50", "p90", "p0", "p100", "mean"]))
        record["quantiles"][name] = draw(st.lists(NASTY_NUMBERS | st.floats(allow_nan=False), max_size=3))
    if draw(st.integers(0, 4)) == 0:  # an unknown field: refused, so only now and then
        record.update(draw(st.dictionaries(st.text(max_size=8), json_values, max_size=1)))
    return contract, json.dumps(record)


@THOROUGH
@given(case=near_valid())
@example(case=(Forecast, json.dumps({**VALID["Forecast"], "quantiles": {"p10": [1e300] * 2, "p50": [1e300] * 2}})))
@example(case=(Reorder, json.dumps({**VALID["Reorder"], "qty": 10_000_000_000})))
def test_near_valid_records_are_a_record_within_bounds_or_a_contract_error(case: tuple[type[Contract], str]) -> None:
    contract, raw = case
    record = parse(contract, raw)
    if record is not None:
        assert_within_bounds(record)


units = st.floats(min_value=0, max_value=MAX_UNITS, allow_nan=False, allow_infinity=False)


@st.composite
def valid_forecasts(draw: st.DrawFn) -> Forecast:
    horizon = draw(st.integers(1, 30))
    names = sorted(draw(st.sets(st.integers(1, 99), max_size=4)) | {50})
    columns = [sorted(draw(st.lists(units, min_size=len(names), max_size=len(names)))) for _ in range(horizon)]
    return Forecast(
        sku=draw(st.from_regex(r"\A[A-Za-z0-9][A-Za-z0-9._\-/]{0,20}\Z")),
        issued_at=draw(st.integers(MIN_TS_MS, MAX_TS_MS - 1)),
        model=draw(st.text(min_size=1, max_size=64)),
        model_version="v1",
        horizon=horizon,
        freq="D",
        start=draw(st.integers(MIN_TS_MS, MAX_TS_MS - 1)),
        quantiles={f"p{q}": [column[i] for column in columns] for i, q in enumerate(names)},
        fallback=draw(st.booleans()),
    )


@THOROUGH
@given(forecast=valid_forecasts())
def test_valid_forecasts_round_trip_within_bounds(forecast: Forecast) -> None:
    assert_within_bounds(forecast)
    assert Forecast.from_bytes(forecast.to_bytes().decode()) == forecast
