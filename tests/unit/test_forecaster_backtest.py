import numpy as np
import pandas as pd
import pytest
from statsforecast import StatsForecast
from statsforecast.models import TSB

from shelfcast_forecaster.backtest import (
    TOP_K,
    backtest,
    choose,
    default_forecasters,
    relative_scores,
    window_cutoffs,
)
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
    check_shape_models(result, df, {*MODELS, "ensemble", "chosen"})


def check_shape_models(result: pd.DataFrame, df: pd.DataFrame, models: set[str]) -> None:
    assert list(result.columns) == ["unique_id", "ds", "cutoff", "model", "p10", "p50", "p90", "y"]
    assert set(result["model"]) == models
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
        assert len(selection.top[cls]) == TOP_K == 3
        relative = {model: scores["relative"] for model, scores in selection.validation[cls].items()}
        members = sorted((m for m in relative if m != "ensemble"), key=relative.__getitem__)[:TOP_K]
        assert sorted(selection.top[cls]) == sorted(members)


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
    cutoff = result["cutoff"].min()
    assert result.attrs["selection"][cutoff] == again.attrs["selection"][cutoff]  # chosen on training data only


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


def offset_forecaster(df: pd.DataFrame, errors: list[float]):
    """A fake that forecasts the true y + ``errors[step]`` (all three quantiles equal): a known error profile.

    With equal quantiles the pinball loss is half the absolute error, so the error profile alone fixes the
    ranking on both metrics."""

    def forecast(train: pd.DataFrame, h: int, freq: str, season_length: int) -> pd.DataFrame:
        last = train["ds"].max()
        future = df[(df["ds"] > last) & (df["ds"] <= last + pd.DateOffset(months=h))]
        future = future.sort_values(["unique_id", "ds"])
        p = future["y"].to_numpy() + np.asarray(errors, dtype=float)[future.groupby("unique_id").cumcount()]
        return future[["unique_id", "ds"]].assign(p10=p, p50=p, p90=p)

    return forecast


def test_selection_weighs_both_metrics_and_prefers_the_combination() -> None:
    # "spiky" is exact but once far off: best on pinball (mean |error| 0.8), worst on RMSSE (sqrt(5.76/3) = 1.39).
    # "steady" is off by 1 every step: worst on pinball (1.0), best on RMSSE (1.0). Their mean (errors 1.7, 0.5,
    # 0.5) lies between them on both (0.9 and 1.06), so neither beats it on both metrics: chosen is the ensemble,
    # where a pinball-only choice would take "spiky" and an RMSSE-only choice "steady".
    df = synthetic()
    spiky, steady = [2.4, 0.0, 0.0], [1.0, 1.0, 1.0]
    forecasters = {"spiky": offset_forecaster(df, spiky), "steady": offset_forecaster(df, steady)}
    result = backtest(df, h=H, freq="MS", season_length=M, forecasters=forecasters)
    check_shape_models(result, df, {"spiky", "steady", "ensemble", "chosen"})
    selection = result.attrs["selection"][result["cutoff"].iloc[0]]
    assert set(selection.chosen.values()) == {"ensemble"}
    for cls, scores in selection.validation.items():
        assert selection.top[cls] == ["steady", "spiky"]  # relative (1.25 + 1) / 2 < (1 + 1.386) / 2
        assert scores["spiky"]["scaled_pinball"] / scores["steady"]["scaled_pinball"] == pytest.approx(0.8)
        assert scores["spiky"]["rmsse"] / scores["steady"]["rmsse"] == pytest.approx(np.sqrt(5.76 / 3))
        assert scores["ensemble"]["scaled_pinball"] / scores["steady"]["scaled_pinball"] == pytest.approx(0.9)
        assert scores["ensemble"]["rmsse"] / scores["steady"]["rmsse"] == pytest.approx(np.sqrt(3.39 / 3))
        assert scores["ensemble"]["relative"] == pytest.approx((0.9 / 0.8 + np.sqrt(3.39 / 3)) / 2)
    wide = result.pivot_table(index=["unique_id", "ds"], columns="model", values=["p10", "p50", "p90"])
    for q in ("p10", "p50", "p90"):  # the ensemble is the per-quantile mean of its members
        np.testing.assert_allclose(wide[(q, "ensemble")], (wide[(q, "spiky")] + wide[(q, "steady")]) / 2)
        np.testing.assert_allclose(wide[(q, "chosen")], wide[(q, "ensemble")])


def test_a_forecaster_better_on_both_metrics_replaces_the_ensemble() -> None:
    df = synthetic()
    forecasters = {
        "spiky": offset_forecaster(df, [2.4, 0.0, 0.0]),
        "steady": offset_forecaster(df, [1.0, 1.0, 1.0]),
        "sharp": offset_forecaster(df, [0.3, 0.3, 0.3]),  # beats the mean of all three on both metrics
        "wide": offset_forecaster(df, [5.0, 5.0, 5.0]),  # never among the TOP_K = 3
    }
    result = backtest(df, h=H, freq="MS", season_length=M, forecasters=forecasters)
    selection = result.attrs["selection"][result["cutoff"].iloc[0]]
    assert set(selection.chosen.values()) == {"sharp"}
    assert all(top == ["sharp", "steady", "spiky"] for top in selection.top.values())
    wide = result.pivot_table(index=["unique_id", "ds"], columns="model", values="p50")
    np.testing.assert_allclose(wide["ensemble"], (wide["sharp"] + wide["steady"] + wide["spiky"]) / 3)
    np.testing.assert_allclose(wide["chosen"], wide["sharp"])


def class_table(pinball: dict[str, float], rmsse: dict[str, float]) -> pd.DataFrame:
    """One class's scores in the ``(metric, model)`` column layout of `class_scores`."""
    columns = pd.MultiIndex.from_tuples([("scaled_pinball", m) for m in pinball] + [("rmsse", m) for m in rmsse])
    return pd.DataFrame([[*pinball.values(), *rmsse.values()]], index=["intermittent"], columns=columns)


def test_relative_scores() -> None:
    table = class_table({"a": 0.5, "b": 0.4, "c": 0.8}, {"a": 0.6, "b": 0.9, "c": 0.6})
    relative = relative_scores(table).loc["intermittent"]
    assert relative.to_dict() == pytest.approx({"a": (1.25 + 1) / 2, "b": (1 + 1.5) / 2, "c": (2 + 1) / 2})
    perfect = relative_scores(class_table({"a": 0.0, "b": 0.2}, {"a": 0.0, "b": 0.3})).loc["intermittent"]
    assert perfect["a"] == 1.0 and perfect["b"] == np.inf


def test_choose_keeps_the_ensemble_unless_beaten_on_both_metrics() -> None:
    def chosen(pinball: dict[str, float], rmsse: dict[str, float]) -> str:
        table = class_table(pinball, rmsse)
        return choose(table.loc["intermittent"], relative_scores(table).loc["intermittent"])

    # a wins pinball, b wins RMSSE, neither both: the ensemble stays
    assert chosen({"ensemble": 0.5, "a": 0.4, "b": 0.6}, {"ensemble": 0.8, "a": 0.9, "b": 0.7}) == "ensemble"
    # a tie is not a win
    assert chosen({"ensemble": 0.5, "a": 0.5}, {"ensemble": 0.8, "a": 0.7}) == "ensemble"
    # a and c both beat it; c has the lower relative score ((7/6 + 7/6) / 2 against (1.5 + 1) / 2)
    pinball, rmsse = {"ensemble": 0.5, "a": 0.45, "b": 0.3, "c": 0.35}, {"ensemble": 0.8, "a": 0.6, "b": 0.9, "c": 0.7}
    assert chosen(pinball, rmsse) == "c"


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
