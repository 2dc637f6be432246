import numpy as np
import pandas as pd
import pytest
from statsforecast import StatsForecast
from statsforecast.models import TSB

from shelfcast_forecaster.backtest import backtest, default_forecasters, window_cutoffs
from shelfcast_forecaster.baselines import MODELS, TSB_ALPHA_D, TSB_ALPHA_P, forecast_baselines
from shelfcast_forecaster.data import CARPARTS_PATH, classify_demand, load_carparts
from shelfcast_forecaster.metrics import evaluate

H, M = 3, 4


def synthetic(periods: int = 24, seed: int = 0) -> pd.DataFrame:
    """Two smooth seasonal series and two intermittent ones, monthly."""
    rng = np.random.default_rng(seed)
    ds = pd.date_range("2020-01-01", periods=periods, freq="MS")
    season = np.tile([0.0, 5.0, 10.0, 5.0], periods // M + 1)[:periods]
    values = {
        "smooth1": 20 + season + rng.normal(0, 1, periods),
        "smooth2": 50 + 2 * season + rng.normal(0, 2, periods),
        "sparse1": rng.binomial(1, 0.3, periods) * rng.integers(1, 4, periods),
        "sparse2": rng.binomial(1, 0.2, periods) * rng.integers(1, 20, periods),
    }
    frames = [pd.DataFrame({"unique_id": uid, "ds": ds, "y": np.clip(y, 0, None)}) for uid, y in values.items()]
    return pd.concat(frames, ignore_index=True)


def check_shape(result: pd.DataFrame, df: pd.DataFrame) -> None:
    assert list(result.columns) == ["unique_id", "ds", "cutoff", "model", "p10", "p50", "p90", "y"]
    assert set(result["model"]) == {*MODELS, "ensemble", "chosen"}
    assert (result.groupby(["unique_id", "cutoff", "model"]).size() == H).all()
    assert (result["ds"] > result["cutoff"]).all()
    assert (result[["p10", "p50", "p90"]] >= 0).all().all()
    assert (result["p10"] <= result["p50"]).all()
    assert (result["p50"] <= result["p90"]).all()
    truth = result.merge(df, on=["unique_id", "ds"], suffixes=("", "_true"))
    np.testing.assert_array_equal(truth["y"], truth["y_true"])


def test_forecast_baselines_long_format_non_negative_ordered() -> None:
    df = synthetic()
    fcst = forecast_baselines(df, h=H, freq="MS", season_length=M)
    assert list(fcst.columns) == ["unique_id", "ds", "model", "p10", "p50", "p90"]
    assert len(fcst) == 4 * len(MODELS) * H
    assert (fcst["p10"] >= 0).all()
    assert ((fcst["p10"] <= fcst["p50"]) & (fcst["p50"] <= fcst["p90"])).all()
    assert fcst["ds"].min() == df["ds"].max() + pd.DateOffset(months=1)
    naive = fcst[(fcst["model"] == "SeasonalNaive") & (fcst["unique_id"] == "smooth1")]
    last_season = df[df["unique_id"] == "smooth1"]["y"].to_numpy()[-M:][:H]
    np.testing.assert_allclose(naive["p50"], last_season)


def test_intermittent_quantiles_come_from_in_sample_residuals() -> None:
    ds = pd.date_range("2020-01-01", periods=20, freq="MS")
    df = pd.DataFrame({"unique_id": "a", "ds": ds, "y": [0.0, 0.0, 0.0, 4.0] * 5})
    fcst = forecast_baselines(df, h=2, freq="MS", season_length=M, models=["TSB"])
    sf = StatsForecast(models=[TSB(alpha_d=TSB_ALPHA_D, alpha_p=TSB_ALPHA_P)], freq="MS")
    point = sf.forecast(df=df, h=2, fitted=True)["TSB"].to_numpy()
    fitted = sf.forecast_fitted_values()
    residuals = (fitted["y"] - fitted["TSB"]).dropna().to_numpy()
    np.testing.assert_allclose(fcst["p50"], point)
    np.testing.assert_allclose(fcst["p10"], np.clip(point + np.quantile(residuals, 0.1), 0, None))
    np.testing.assert_allclose(fcst["p90"], point + np.quantile(residuals, 0.9))
    assert (fcst["p90"] > fcst["p50"] + 2).all()  # a demand of 4 every 4th month
    with pytest.raises(ValueError, match="unknown baseline"):
        forecast_baselines(df, h=2, freq="MS", season_length=M, models=["Prophet"])


def test_backtest_one_window_shape_and_selection() -> None:
    df = synthetic()
    result = backtest(df, h=H, freq="MS", season_length=M)
    check_shape(result, df)
    assert result["cutoff"].unique().tolist() == [df["ds"].max() - pd.DateOffset(months=H)]
    selection = result.attrs["selection"][result["cutoff"].iloc[0]]
    classes = classify_demand(df[df["ds"] <= result["cutoff"].iloc[0]])
    for uid, cls in classes.items():
        chosen = result[(result["unique_id"] == uid) & (result["model"] == "chosen")].reset_index(drop=True)
        source = result[(result["unique_id"] == uid) & (result["model"] == selection.chosen[cls])]
        pd.testing.assert_frame_equal(chosen.drop(columns="model"), source.drop(columns="model").reset_index(drop=True))
        assert len(selection.top[cls]) == 2


def test_backtest_rolling_windows_and_no_leakage() -> None:
    df = synthetic(periods=30)
    result = backtest(df, h=H, freq="MS", season_length=M, windows=2, step=2)
    check_shape(result, df)
    last = df["ds"].max()
    assert sorted(result["cutoff"].unique()) == [last - pd.DateOffset(months=5), last - pd.DateOffset(months=3)]
    future_changed = df.assign(y=np.where(df["ds"] > last - pd.DateOffset(months=5), 999.0, df["y"]))
    again = backtest(future_changed, h=H, freq="MS", season_length=M, windows=2, step=2)
    first = result["cutoff"] == result["cutoff"].min()
    cols = ["unique_id", "ds", "model", "p10", "p50", "p90"]
    pd.testing.assert_frame_equal(
        result.loc[first, cols].reset_index(drop=True), again.loc[first.to_numpy(), cols].reset_index(drop=True)
    )


def test_backtest_accepts_extra_forecasters() -> None:
    def last_value(train: pd.DataFrame, h: int, freq: str, season_length: int) -> pd.DataFrame:
        last = train.sort_values("ds").groupby("unique_id").tail(1)
        rows = [
            {"unique_id": r.unique_id, "ds": r.ds + pd.DateOffset(months=i), "p10": 0.0, "p50": r.y, "p90": 2 * r.y}
            for r in last.itertuples()
            for i in range(1, h + 1)
        ]
        return pd.DataFrame(rows)

    forecasters = {"last": last_value, "SeasonalNaive": default_forecasters()["SeasonalNaive"]}
    result = backtest(synthetic(), h=H, freq="MS", season_length=M, forecasters=forecasters)
    assert set(result["model"]) == {"last", "SeasonalNaive", "ensemble", "chosen"}


def test_window_cutoffs_need_room_for_inner_validation() -> None:
    df = synthetic(periods=8)
    with pytest.raises(ValueError, match="too few"):
        window_cutoffs(df, h=3, windows=1)
    assert window_cutoffs(df, h=2, windows=2, step=1) == [pd.Timestamp("2020-05-01"), pd.Timestamp("2020-06-01")]


@pytest.mark.skipif(not CARPARTS_PATH.is_file(), reason="shared/data/carparts.csv.gz is not here")
def test_backtest_carparts_sample() -> None:
    df = load_carparts()
    sample = df[df["unique_id"].isin(sorted(df["unique_id"].unique())[::25])]  # 101 series
    result = backtest(sample, h=12, freq="MS", season_length=12)
    check_shape_h = result.groupby(["unique_id", "model"]).size()
    assert (check_shape_h == 12).all()
    assert result["cutoff"].unique().tolist() == [pd.Timestamp("2001-03-01")]
    scores = evaluate(result, sample, season_length=12).set_index("model")
    assert set(scores.index) == {*MODELS, "ensemble", "chosen"}
    assert scores["mase"].between(0.3, 3).all()
    assert scores["coverage"].between(0.4, 1).all()
