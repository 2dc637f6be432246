import numpy as np
import pandas as pd
import pytest

from shelfcast_forecaster.backtest import QUANTILE_COLUMNS
from shelfcast_forecaster.metrics import pinball
from shelfcast_forecaster.models import KerasQuantileForecaster

H, M = 4, 4
SMALL = {"units": 8, "epochs": 3, "batch_size": 64}


def seasonal_panel(n_series: int = 24, periods: int = 40, seed: int = 0) -> pd.DataFrame:
    """Strongly seasonal monthly series at different levels, a few of them intermittent."""
    rng = np.random.default_rng(seed)
    ds = pd.date_range("2020-01-01", periods=periods, freq="MS")
    pattern = np.tile([0.2, 0.6, 1.8, 1.4], periods // M + 1)[:periods]
    frames = []
    for i in range(n_series):
        level = rng.uniform(5, 50)
        y = rng.poisson(level * np.roll(pattern, i % 2))
        if i % 6 == 5:
            y = y * rng.binomial(1, 0.5, periods)
        frames.append(pd.DataFrame({"unique_id": f"s{i:02d}", "ds": ds, "y": y.astype(float)}))
    return pd.concat(frames, ignore_index=True)


def split(df: pd.DataFrame, h: int = H) -> tuple[pd.DataFrame, pd.DataFrame]:
    cutoff = np.sort(df["ds"].unique())[-h - 1]
    return df[df["ds"] <= cutoff], df[df["ds"] > cutoff]


@pytest.mark.parametrize("arch", ["lstm", "tcn"])
def test_frame_shape_dates_and_quantile_order(arch):
    train, _ = split(seasonal_panel(n_series=6, periods=20))
    # one series shorter than the lookback (2 * M = 8): left-padded, still forecast
    train = train[(train["unique_id"] != "s00") | (train["ds"] >= "2021-01-01")]
    out = KerasQuantileForecaster(arch, **SMALL)(train, H, "MS", M)
    assert list(out.columns) == ["unique_id", "ds", *QUANTILE_COLUMNS]
    assert len(out) == 6 * H
    assert sorted(out["unique_id"].unique()) == sorted(train["unique_id"].unique())
    last = train.groupby("unique_id")["ds"].max()
    for uid, group in out.groupby("unique_id"):
        expected = pd.date_range(last[uid], periods=H + 1, freq="MS")[1:]
        assert list(group["ds"]) == list(expected)
    values = out[QUANTILE_COLUMNS]
    assert np.isfinite(values.to_numpy()).all()
    assert (values >= 0).all().all()
    assert (out["p10"] <= out["p50"]).all()
    assert (out["p50"] <= out["p90"]).all()


def test_forecasts_follow_each_series_own_end_date():
    train, _ = split(seasonal_panel(n_series=4, periods=20))
    train = train[(train["unique_id"] != "s01") | (train["ds"] <= "2021-01-01")]
    out = KerasQuantileForecaster("tcn", **SMALL)(train, H, "MS", M)
    s01 = out.loc[out["unique_id"] == "s01", "ds"]
    assert list(s01) == list(pd.date_range("2021-02-01", periods=H, freq="MS"))


def test_same_seed_same_forecasts():
    train, _ = split(seasonal_panel(n_series=6, periods=20))
    first = KerasQuantileForecaster("lstm", seed=3, **SMALL)(train, H, "MS", M)
    second = KerasQuantileForecaster("lstm", seed=3, **SMALL)(train, H, "MS", M)
    pd.testing.assert_frame_equal(first, second)


def test_more_quantiles_stay_ordered():
    train, _ = split(seasonal_panel(n_series=4, periods=20))
    model = KerasQuantileForecaster("tcn", quantiles=(0.05, 0.1, 0.5, 0.9, 0.975), **SMALL)
    out = model(train, H, "MS", M)
    assert model.columns == ["p5", "p10", "p50", "p90", "p97.5"]
    values = out[model.columns].to_numpy()
    assert (np.diff(values, axis=1) >= 0).all()
    assert (values >= 0).all()


def test_rejects_bad_arguments():
    with pytest.raises(ValueError, match="arch"):
        KerasQuantileForecaster("transformer")
    with pytest.raises(ValueError, match="quantiles"):
        KerasQuantileForecaster(quantiles=(0.9, 0.1))
    train, _ = split(seasonal_panel(n_series=2, periods=12))
    shifted = train.assign(ds=train["ds"] + pd.Timedelta(days=3))
    with pytest.raises(ValueError, match="calendar"):
        KerasQuantileForecaster(**SMALL)(pd.concat([train, shifted.iloc[:1]]), H, "MS", M)


@pytest.mark.parametrize("arch", ["lstm", "tcn"])
def test_beats_flat_mean_on_seasonal_panel(arch):
    """A flat forecast at the series mean cannot follow the season; a model that learned it must beat it."""
    train, test = split(seasonal_panel())
    model = KerasQuantileForecaster(arch, units=16, epochs=30, batch_size=64, learning_rate=1e-2, patience=5)
    out = model(train, H, "MS", M).merge(test, on=["unique_id", "ds"])
    mean = train.groupby("unique_id")["y"].mean()
    flat = out["unique_id"].map(mean).to_numpy()
    y = out["y"].to_numpy()
    levels = {"p10": 0.1, "p50": 0.5, "p90": 0.9}
    model_loss = np.mean([pinball(y, out[c].to_numpy(), q).mean() for c, q in levels.items()])
    flat_loss = np.mean([pinball(y, flat, q).mean() for q in levels.values()])
    assert model_loss < 0.8 * flat_loss


def test_mixed_precision_trains_exports_and_scores_in_float32(tmp_path):
    """The GPU path's policy, forced on CPU: float16 hidden layers, float32 outputs, a loadable SavedModel."""
    import tensorflow as tf

    from shelfcast_forecaster.models import encode_windows

    train, _ = split(seasonal_panel(n_series=6, periods=20))
    model = KerasQuantileForecaster("lstm", mixed_precision=True, **SMALL).fit(train, H, "MS", M)
    assert model.model is not None and model.model.layers[2].dtype_policy.name == "mixed_float16"
    assert np.isfinite(model.predict(train)[model.columns].to_numpy()).all()
    loaded = tf.saved_model.load(str(model.export(tmp_path / "saved")))
    lookback = model.spec.lookback
    seq, static = encode_windows(np.ones((2, lookback)), np.ones((2, lookback)), np.ones(2), 700, M)
    out = loaded.serve([tf.constant(seq), tf.constant(static)])
    assert out.dtype == tf.float32 and out.shape == (2, H, 3)


def test_exogenous_columns_are_input_channels_and_required():
    train, _ = split(seasonal_panel(n_series=6, periods=20))
    train = train.assign(views=train["y"] * 10 + 1, price=np.where(train["y"] > 0, 9.5, np.nan))
    model = KerasQuantileForecaster("tcn", exogenous=("views", "price"), **SMALL).fit(train, H, "MS", M)
    assert model.spec is not None and model.spec.exogenous == ("views", "price")
    assert model.model is not None and model.model.inputs[0].shape[-1] == 5 + 2
    assert np.isfinite(model.predict(train)[model.columns].to_numpy()).all()
    with pytest.raises(ValueError, match="missing column"):
        model.predict(train.drop(columns="price"))
