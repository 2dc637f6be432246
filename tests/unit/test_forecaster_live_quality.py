"""Live forecast quality: pinball loss, which forecast step covers a window, and what is not scored."""

import pytest
from prometheus_client import REGISTRY

from shelfcast.contracts import FeatureWindow, Forecast
from shelfcast_forecaster.live_quality import (
    covering_step,
    parse_cached,
    pinball_loss,
    score_actual,
    score_windows,
)
from shelfcast_forecaster.monitoring import count_live_quality

DAY = 86_400_000
START = 1_767_225_600_000  # 2026-01-01


def forecast(sku: str = "SKU-1", freq: str = "D", start: int = START) -> Forecast:
    return Forecast(
        sku=sku,
        issued_at=start - 1,
        model="lstm",
        model_version="v1",
        horizon=3,
        freq=freq,
        start=start,
        quantiles={"p10": [1.0, 2.0, 3.0], "p50": [4.0, 5.0, 6.0], "p90": [7.0, 8.0, 9.0]},
    )


def window(units: int, start: int = START, sku: str = "SKU-1") -> FeatureWindow:
    return FeatureWindow(sku=sku, granularity="1d", window_start=start, window_end=start + DAY, units=units)


@pytest.mark.parametrize(
    ("actual", "predicted", "tau", "loss"),
    [(10, 4, 0.9, 5.4), (10, 4, 0.1, 0.6), (2, 4, 0.9, 0.2), (2, 4, 0.1, 1.8), (4, 4, 0.5, 0.0), (0, 3, 0.5, 1.5)],
)
def test_pinball_loss(actual: float, predicted: float, tau: float, loss: float) -> None:
    assert pinball_loss(actual, predicted, tau) == pytest.approx(loss)


def test_the_step_whose_period_starts_at_the_window() -> None:
    f = forecast()
    assert [covering_step(f, START + k * DAY) for k in range(3)] == [0, 1, 2]
    assert covering_step(f, START + 3 * DAY) is None  # past the horizon
    assert covering_step(f, START - DAY) is None  # before the forecast: the data it was made from
    assert covering_step(f, START + DAY // 2) is None  # not on the forecast's period grid
    assert covering_step(forecast(freq="h"), START + 2 * 3_600_000) == 2
    assert covering_step(forecast(freq="W"), START) is None  # a freq the service does not serve


def test_score_uses_the_covering_step_of_each_quantile() -> None:
    score = score_actual(forecast(), window(units=6, start=START + DAY))  # step 1: p10 2, p50 5, p90 8
    assert score is not None
    assert score.pinball == pytest.approx({"p10": 0.4, "p50": 0.5, "p90": 0.2})
    assert score.in_band is True
    above, on_the_bound = score_actual(forecast(), window(units=9)), score_actual(forecast(), window(units=1))
    assert above is not None and above.in_band is False
    assert on_the_bound is not None and on_the_bound.in_band is True


def test_nothing_is_scored_without_a_covering_forecast() -> None:
    assert score_actual(None, window(3)) is None
    assert score_actual(forecast(sku="SKU-2"), window(3)) is None
    windows = [window(3), window(3, sku="SKU-2"), window(3, start=START + 5 * DAY)]
    assert len(score_windows(windows, {"SKU-1": forecast()})) == 1
    assert score_windows(windows, {}) == []


def test_cached_forecast_round_trip_and_garbage() -> None:
    parsed = parse_cached(forecast().to_bytes())
    assert parsed is not None and parsed.start == START and parsed.quantiles["p90"] == [7.0, 8.0, 9.0]
    assert parse_cached(None) is None
    assert parse_cached(b"not json") is None
    assert parse_cached(b"[1, 2]") is None


def test_counters_add_the_scores() -> None:
    def sample(name: str, **labels: str) -> float:
        return REGISTRY.get_sample_value(name, labels) or 0.0

    before = (sample("shelfcast_forecaster_actuals_scored_total"), sample("shelfcast_forecaster_actuals_in_band_total"))
    p90_before = sample("shelfcast_forecaster_pinball_loss_total", quantile="p90")
    count_live_quality(score_windows([window(6, START + DAY), window(9)], {"SKU-1": forecast()}))
    assert sample("shelfcast_forecaster_actuals_scored_total") - before[0] == 2
    assert sample("shelfcast_forecaster_actuals_in_band_total") - before[1] == 1
    assert sample("shelfcast_forecaster_pinball_loss_total", quantile="p90") - p90_before == pytest.approx(0.2 + 1.8)
