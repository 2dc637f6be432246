"""Pure parts of training and serving: the registry, data fingerprints, demand assembly, fallback, calendar."""

from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from confluent_kafka import Message
from scipy.stats import poisson

from shelfcast.contracts import FeatureWindow
from shelfcast_forecaster.models import calendar_position
from shelfcast_forecaster.registry import CARD, ModelCard, ModelRegistry, ModelSpec, fingerprint, new_version
from shelfcast_forecaster.scoring import (
    FALLBACK_MODEL,
    IMPLAUSIBLE,
    NON_FINITE,
    SHORT_HISTORY,
    Demand,
    Scorer,
    _as_lists,
    demand_from_windows,
    fallback_quantiles,
    implausible,
)
from shelfcast_forecaster.service import Batch

DAY_MS = 86_400_000


def frame() -> pd.DataFrame:
    ds = pd.date_range("2026-01-01", periods=4, freq="D")
    return pd.DataFrame({"unique_id": ["a"] * 4 + ["b"] * 4, "ds": list(ds) * 2, "y": [1.0, 0, 2, 3, 0, 0, 5, 1]})


def card(version: str) -> ModelCard:
    spec = ModelSpec(arch="lstm", lookback=14, horizon=7, freq="D", season_length=7, quantiles=(0.1, 0.5, 0.9))
    return ModelCard(
        version=version,
        created_at=datetime.now(UTC),
        spec=spec,
        data=fingerprint(frame(), "test"),
        validation={"lstm": {"scaled_pinball": 0.3}},
        chosen_by="test",
        inputs="test",
        framework={},
    )


def fake_export(directory: Path) -> None:
    directory.mkdir(parents=True)
    (directory / "saved_model.pb").write_bytes(b"model")


def test_publish_promotes_and_lists_versions(tmp_path: Path) -> None:
    registry = ModelRegistry(tmp_path)
    assert registry.current_version() is None and registry.versions() == []
    registry.publish(fake_export, card("v1"))
    registry.publish(fake_export, card("v2"), promote=False)
    assert registry.versions() == ["v1", "v2"]
    assert registry.current_version() == "v1"
    registry.promote("v2")
    assert registry.current_version() == "v2"
    assert registry.card("v2").spec.columns == ["p10", "p50", "p90"]
    assert (registry.pointer / CARD).is_file()  # the pointer resolves to the version directory


def test_publish_is_all_or_nothing(tmp_path: Path) -> None:
    registry = ModelRegistry(tmp_path)
    registry.publish(fake_export, card("v1"))

    def broken_export(directory: Path) -> None:
        fake_export(directory)
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        registry.publish(broken_export, card("v2"))
    assert registry.versions() == ["v1"] and registry.current_version() == "v1"
    assert [p.name for p in registry.versions_dir.iterdir()] == ["v1"]  # no staging left behind
    with pytest.raises(FileExistsError):
        registry.publish(fake_export, card("v1"))
    with pytest.raises(FileNotFoundError):
        registry.promote("v9")


def test_fingerprint_ignores_row_order_but_not_values() -> None:
    df = frame()
    assert fingerprint(df, "x").sha256 == fingerprint(df.iloc[::-1], "x").sha256
    assert fingerprint(df, "x").sha256 != fingerprint(df.assign(y=df["y"] + 1), "x").sha256
    data = fingerprint(df, "x")
    assert (data.series, data.rows) == (2, 8)
    assert new_version(data, datetime(2026, 11, 24, 18, 0, tzinfo=UTC)) == f"20261124T180000Z-{data.sha256[:8]}"


def test_demand_fills_days_without_windows_with_zeros() -> None:
    start = 1_767_225_600_000
    starts = np.array([start, start + 3 * DAY_MS, start + 4 * DAY_MS])
    demand = demand_from_windows("a", starts, np.array([[2.0], [5.0], [1.0]]), "1d")
    assert demand is not None
    assert demand.units.tolist() == [2, 0, 0, 5, 1]
    assert demand.origin_ms == start + 4 * DAY_MS and demand.period_ms == DAY_MS
    assert demand.exog is None
    assert demand_from_windows("a", np.array([], np.int64), np.zeros((0, 1)), "1d") is None


def test_exogenous_counts_are_zero_and_prices_carry_forward_without_a_window() -> None:
    start = 1_767_225_600_000
    starts = np.array([start + DAY_MS, start + 3 * DAY_MS])
    values = np.array([[2.0, 10.0, 4.5], [1.0, 7.0, np.nan]])  # units, views, avg_price (None: no purchase)
    demand = demand_from_windows("a", starts, values, "1d", exogenous=("views", "avg_price"))
    assert demand is not None and demand.exog is not None
    assert demand.units.tolist() == [2, 0, 1]
    assert demand.exog[:, 0].tolist() == [10, 0, 7]  # no window: no views
    assert demand.exog[:, 1].tolist() == [4.5, 4.5, 4.5]  # no window or no purchase: the last price holds


def test_fallback_is_poisson_at_the_mean_and_zero_without_demand() -> None:
    values = fallback_quantiles(4.0, (0.1, 0.5, 0.9), horizon=3)
    assert values.shape == (3, 3)
    assert values[0].tolist() == poisson.ppf([0.1, 0.5, 0.9], 4.0).tolist()
    assert (fallback_quantiles(0.0, (0.1, 0.5, 0.9), horizon=2) == 0).all()
    assert fallback_quantiles(9_999_999.0, (0.1, 0.5, 0.9), horizon=1).max() == 10_000_000  # the contract's ceiling


def test_records_never_cross_and_never_go_negative() -> None:
    raw = np.array([[[-1.0, 2.0, 1.5], [0.2, 0.1, 0.3]]])  # 1 SKU, h=2, Q=3
    [per_quantile] = _as_lists(raw)
    assert per_quantile == [[0.0, 0.2], [2.0, 0.2], [2.0, 0.3]]


def test_calendar_position_is_periods_since_a_monday() -> None:
    monday = pd.Timestamp("2026-11-23")
    assert calendar_position(monday, "D") % 7 == 0
    assert calendar_position(monday + pd.Timedelta(days=1), "D") == calendar_position(monday, "D") + 1
    assert (
        calendar_position(pd.Timestamp("2026-12-01"), "MS") - calendar_position(pd.Timestamp("2025-12-01"), "MS") == 12
    )
    with pytest.raises(ValueError, match="calendar"):
        calendar_position(pd.Timestamp("2026-12-02"), "MS")


def demand(sku: str, units: list[float]) -> Demand:
    return Demand(sku, 1_767_225_600_000, DAY_MS, np.asarray(units, np.float32))


def test_non_finite_or_implausible_network_output_is_flagged_per_sku() -> None:
    history = [demand("ok", [2, 4, 3]), demand("nan", [2, 4, 3]), demand("inf", [2, 4, 3]), demand("big", [2, 4, 3])]
    raw = np.full((4, 2, 3), 3.0)
    raw[1, 1, 2] = np.nan
    raw[2, 0, 0] = np.inf
    raw[3, 1, 2] = 40.01  # over 10 x the largest day (4)
    assert implausible(raw, history, multiple=10.0) == [None, NON_FINITE, NON_FINITE, IMPLAUSIBLE]
    raw[3, 1, 2] = 40.0
    assert implausible(raw, history, multiple=10.0)[3] is None
    # a SKU that never sold: the ceiling is the multiple of one unit, not 0
    assert implausible(np.full((1, 2, 3), 9.0), [demand("zeros", [0, 0])], multiple=10.0) == [None]
    assert implausible(np.full((1, 2, 3), 1e300), [demand("zeros", [0, 0])], multiple=10.0) == [IMPLAUSIBLE]
    # a huge history does not license a forecast beyond what the contract allows
    assert implausible(np.full((1, 2, 3), 2e7), [demand("huge", [5e6, 6e6])], multiple=10.0) == [IMPLAUSIBLE]


class FixedOutputScorer(Scorer):
    """A `Scorer` whose network answers ``raw`` (no SavedModel): the record-building path only."""

    def __init__(self, raw: np.ndarray) -> None:
        self.card = card("v1")
        self.spec = self.card.spec
        self.max_forecast_multiple = 10.0
        self.raw = raw

    def quantiles(self, demand: object) -> np.ndarray:
        return self.raw


def test_a_poisoned_network_output_becomes_the_flagged_fallback_not_a_forecast() -> None:
    long = [1.0, 2.0, 3.0, 2.0, 1.0, 2.0, 3.0, 2.0]  # 8 days: the network's turn
    raw = np.full((2, 7, 3), 2.0)
    raw[1] = 1e300
    scorer = FixedOutputScorer(raw)
    history = [demand("fine", long), demand("poisoned", long), demand("new", [1.0, 3.0])]
    forecasts, reasons = scorer.forecasts_with_reasons(history, issued_at=1_767_225_600_000)
    by_sku = {f.sku: f for f in forecasts}
    assert reasons == {"poisoned": IMPLAUSIBLE, "new": SHORT_HISTORY}
    assert by_sku["fine"].model == "lstm" and not by_sku["fine"].fallback
    assert by_sku["fine"].quantiles["p50"] == [2.0] * 7
    poisoned = by_sku["poisoned"]
    assert poisoned.fallback and poisoned.model == FALLBACK_MODEL
    assert poisoned.quantiles["p50"] == [float(poisson.ppf(0.5, np.mean(long)))] * 7
    assert type(poisoned).model_validate_json(poisoned.to_bytes()) == poisoned  # a valid record on the wire
    raw[0, 3, 1] = np.nan
    assert scorer.forecasts_with_reasons(history[:2], issued_at=1_767_225_600_000)[1] == {
        "fine": NON_FINITE,
        "poisoned": IMPLAUSIBLE,
    }


def window_message(sku: str, partition: int, offset: int, day: int = 0) -> tuple[Message, FeatureWindow]:
    start = 1_767_225_600_000 + day * DAY_MS
    window = FeatureWindow(sku=sku, granularity="1d", window_start=start, window_end=start + DAY_MS, units=day)
    return Message(topic="f", partition=partition, offset=offset, value=window.to_bytes()), window


def batch_of(*records: tuple[Message, FeatureWindow]) -> Batch:
    batch = Batch()
    for msg, window in records:
        batch.saw(msg)
        batch.records.append((msg, window))
    return batch


def test_batch_keeps_offsets_per_partition_and_the_newest_update_of_each_window() -> None:
    batch = batch_of(
        window_message("a", 0, 10), window_message("b", 1, 4), window_message("a", 0, 11), window_message("a", 0, 12, 1)
    )
    batch.saw(Message(topic="f", partition=1, offset=5, value=b"not a window"))  # consumed, not a record
    assert batch.offsets == {("f", 0): (10, 12), ("f", 1): (4, 5)}
    assert batch.skus == ["a", "b"]
    assert [(w.sku, w.window_start) for w in batch.windows] == [
        ("a", 1_767_225_600_000),
        ("b", 1_767_225_600_000),
        ("a", 1_767_225_600_000 + DAY_MS),
    ]
    taken = batch.take_sku("a")
    assert [m.offset() for m in taken] == [10, 11, 12] and batch.skus == ["b"]


def test_batch_take_through_removes_the_killers_and_starts_after_them() -> None:
    batch = batch_of(
        window_message("a", 0, 10), window_message("b", 0, 11), window_message("c", 0, 12), window_message("d", 1, 7)
    )
    taken = batch.take_through({("f", 0): 11, ("f", 1): 7})
    assert [(m.partition(), m.offset()) for m in taken] == [(0, 10), (0, 11), (1, 7)]
    assert batch.skus == ["c"]
    assert batch.offsets == {("f", 0): (12, 12)}  # partition 1 has nothing left
