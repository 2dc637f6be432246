import math

import numpy as np
import pandas as pd
import pytest

from shelfcast_forecaster.metrics import evaluate, naive_scales, pinball, series_scores

T0 = pd.Timestamp("2024-01-01")


def month(i: int) -> pd.Timestamp:
    return T0 + pd.DateOffset(months=i)


def train_frame(values: dict[str, list[float]]) -> pd.DataFrame:
    rows = [{"unique_id": uid, "ds": month(i), "y": float(v)} for uid, ys in values.items() for i, v in enumerate(ys)]
    return pd.DataFrame(rows)


def forecast_rows(uid: str, start: int, cutoff: int, model: str, **columns: list[float]) -> list[dict]:
    n = len(columns["y"])
    return [
        {"unique_id": uid, "ds": month(start + i), "cutoff": month(cutoff), "model": model}
        | {k: float(v[i]) for k, v in columns.items()}
        for i in range(n)
    ]


@pytest.fixture
def example() -> tuple[pd.DataFrame, pd.DataFrame]:
    """Season length 2. A: seasonal diffs of [1, 3, 2, 6] are 1 and 3 (MAE 2, MSE 5); B is constant (scale 0)."""
    train = train_frame({"A": [1, 3, 2, 6], "B": [5, 5, 5, 5]})
    rows = forecast_rows("A", 4, 3, "m", y=[4, 4], p10=[1, 5], p50=[2, 7], p90=[3, 8])
    rows += forecast_rows("B", 4, 3, "m", y=[5, 5], p10=[4, 4], p50=[5, 5], p90=[6, 6])
    return pd.DataFrame(rows), train


def test_pinball_loss() -> None:
    y = np.array([4.0, 4.0])
    assert pinball(y, np.array([1.0, 5.0]), 0.1).tolist() == pytest.approx([0.3, 0.9])
    assert pinball(y, np.array([2.0, 7.0]), 0.5).tolist() == pytest.approx([1.0, 1.5])
    assert pinball(y, np.array([3.0, 8.0]), 0.9).tolist() == pytest.approx([0.9, 0.4])


def test_mase_and_rmsse_use_in_sample_seasonal_naive(example) -> None:
    forecasts, train = example
    row = evaluate(forecasts, train, season_length=2).iloc[0]
    assert row["mase"] == pytest.approx(2.5 / 2)  # errors 2 and -3
    assert row["rmsse"] == pytest.approx(math.sqrt(6.5 / 5))
    assert (row["n_series"], row["n_skipped"]) == (1, 1)  # B's scale is zero


def test_scaled_pinball_divides_mean_quantile_loss_by_mase_scale(example) -> None:
    forecasts, train = example
    # per-quantile means: p10 0.6, p50 1.25, p90 0.65
    assert evaluate(forecasts, train, 2).iloc[0]["scaled_pinball"] == pytest.approx((0.6 + 1.25 + 0.65) / 3 / 2)


def test_wape_bias_coverage_over_all_points_including_skipped_series(example) -> None:
    forecasts, train = example
    row = evaluate(forecasts, train, 2).iloc[0]
    assert row["wape"] == pytest.approx(5 / 18)
    assert row["bias"] == pytest.approx(1 / 18)
    assert row["coverage"] == pytest.approx(0.5)  # A's two points fall outside, B's two inside


def test_short_series_fall_back_to_lag_one_naive() -> None:
    train = train_frame({"C": [2, 4], "D": [3]})  # C shorter than m + 1 = 3; D has no naive error at all
    rows = forecast_rows("C", 2, 1, "m", y=[3], p10=[1], p50=[1], p90=[1])
    rows += forecast_rows("D", 1, 0, "m", y=[3], p10=[3], p50=[3], p90=[3])
    row = evaluate(pd.DataFrame(rows), train, season_length=2).iloc[0]
    assert row["mase"] == pytest.approx(2 / 2)
    assert row["rmsse"] == pytest.approx(math.sqrt(4 / 4))
    assert (row["n_series"], row["n_skipped"]) == (1, 1)


def test_scale_uses_only_history_up_to_each_cutoff() -> None:
    train = train_frame({"A": [0, 1, 3, 10, 30]})
    cutoffs = pd.DataFrame({"unique_id": ["A", "A"], "cutoff": [month(2), month(4)]})
    scales = naive_scales(train, cutoffs, season_length=1)
    assert scales["mae_scale"].tolist() == pytest.approx([1.5, 7.5])  # |1|,|2| then |1|,|2|,|7|,|20|


def test_mean_over_series_is_unweighted_and_rows_are_per_model() -> None:
    train = train_frame({"A": [0, 1, 0, 1], "B": [0, 10, 0, 10]})  # lag-1 scales 1 and 10
    rows = forecast_rows("A", 4, 3, "x", y=[1], p10=[0], p50=[0], p90=[2])  # MASE 1
    rows += forecast_rows("B", 4, 3, "x", y=[10], p10=[0], p50=[7], p90=[20])  # MASE 0.3
    rows += forecast_rows("A", 4, 3, "y", y=[1], p10=[1], p50=[1], p90=[1])  # MASE 0
    result = evaluate(pd.DataFrame(rows), train, season_length=1).set_index("model")
    assert result.loc["x", "mase"] == pytest.approx((1 + 0.3) / 2)
    assert result.loc["y", "mase"] == 0
    assert result.loc["y", "coverage"] == 1
    scores = series_scores(pd.DataFrame(rows), train, 1)
    assert len(scores) == 3
