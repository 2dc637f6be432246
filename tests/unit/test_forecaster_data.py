import gzip
from pathlib import Path

import pandas as pd
import pytest

from shelfcast.errors import ShelfcastError
from shelfcast_forecaster.data import CARPARTS_PATH, DataError, classify_demand, load_carparts, load_series

GOOD = "unique_id,ds,y,price\nB,2024-01-02,1,9.5\nA,2024-01-01,0,10\nA,2024-01-02,2.5,10\n"


def write(tmp_path: Path, text: str, name: str = "data.csv") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_load_series_csv_parses_sorts_and_keeps_exogenous(tmp_path: Path) -> None:
    df = load_series(write(tmp_path, GOOD))
    assert list(df.columns) == ["unique_id", "ds", "y", "price"]
    assert df["unique_id"].tolist() == ["A", "A", "B"]
    assert df["ds"].tolist() == [pd.Timestamp("2024-01-01"), pd.Timestamp("2024-01-02"), pd.Timestamp("2024-01-02")]
    assert df["y"].tolist() == [0.0, 2.5, 1.0]
    assert pd.api.types.is_numeric_dtype(df["price"])


def test_load_series_reads_csv_gz_and_parquet(tmp_path: Path) -> None:
    gz = tmp_path / "data.csv.gz"
    with gzip.open(gz, "wt") as out:
        out.write(GOOD)
    expected = load_series(write(tmp_path, GOOD))
    pd.testing.assert_frame_equal(load_series(gz), expected)
    parquet = tmp_path / "data.parquet"
    expected.to_parquet(parquet)
    pd.testing.assert_frame_equal(load_series(parquet), expected)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("unique_id,ds\nA,2024-01-01\n", r"data\.csv: missing column\(s\) y"),
        ("unique_id,ds,y\nA,2024-01-01,1\nA,2024-01-02,abc\n", r"data\.csv, line 3, column y: 'abc' is not a number"),
        ("unique_id,ds,y\nA,2024-01-01,1\nA,2024-01-02,-3\n", r"data\.csv, line 3, column y: '-3' is negative"),
        ("unique_id,ds,y\nA,2024-01-01,inf\n", r"data\.csv, line 2, column y: 'inf' is not finite"),
        ("unique_id,ds,y\nA,2024-01-01,\n", r"data\.csv, line 2, column y: missing value"),
        ("unique_id,ds,y\n,2024-01-01,1\n", r"data\.csv, line 2, column unique_id: missing value"),
        ("unique_id,ds,y\nA,2024-01-01,1\nA,someday,1\n", r"data\.csv, line 3, column ds: 'someday' is not a date"),
        (
            "unique_id,ds,y\nA,2024-01-01,1\nB,2024-01-01,1\nA,2024-01-01,2\n",
            r"data\.csv, line 4, column ds: duplicate of line 2 \(unique_id 'A', ds 2024-01-01",
        ),
        ("unique_id,ds,y\nA,2024-01-01,1\n\nA,2024-01-02,x\n", r"data\.csv, line 3: empty line"),
    ],
)
def test_load_series_errors_name_file_line_and_column(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(DataError, match=message):
        load_series(write(tmp_path, text))


def test_load_series_trailing_blank_lines_are_fine(tmp_path: Path) -> None:
    assert len(load_series(write(tmp_path, GOOD + "\n\n"))) == 3


def test_load_series_parquet_errors_count_rows(tmp_path: Path) -> None:
    path = tmp_path / "bad.parquet"
    pd.DataFrame(
        {"unique_id": ["A", "A"], "ds": pd.to_datetime(["2024-01-01", "2024-01-02"]), "y": [1.0, -1.0]}
    ).to_parquet(path)
    with pytest.raises(DataError, match=r"bad\.parquet, row 2, column y: "):
        load_series(path)


def test_load_series_rejects_unknown_format_and_missing_file(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"data\.xlsx: unknown format"):
        load_series(write(tmp_path, GOOD, "data.xlsx"))
    with pytest.raises(ShelfcastError, match="no such file"):
        load_series(tmp_path / "absent.csv")


def test_load_carparts_keeps_complete_series_in_long_format(tmp_path: Path) -> None:
    path = write(tmp_path, "month,p1,p2,p3\n1998-01,0,1,\n1998-02,2,0,1\n", "carparts.csv")
    df = load_carparts(path)
    assert sorted(df["unique_id"].unique()) == ["p1", "p2"]
    assert df["ds"].tolist() == [pd.Timestamp("1998-01-01"), pd.Timestamp("1998-02-01")] * 2
    assert df["y"].tolist() == [0.0, 2.0, 1.0, 0.0]


@pytest.mark.skipif(not CARPARTS_PATH.is_file(), reason="shared/data/carparts.csv.gz is not here")
def test_load_carparts_real_file() -> None:
    df = load_carparts()
    sizes = df.groupby("unique_id").size()
    assert len(sizes) == 2509
    assert set(sizes) == {51}
    assert df["ds"].min() == pd.Timestamp("1998-01-01")
    assert df["ds"].max() == pd.Timestamp("2002-03-01")
    assert (df["y"] >= 0).all()
    assert 0.7 < (df["y"] == 0).mean() < 0.8


def series(values: dict[str, list[float]]) -> pd.DataFrame:
    rows = [
        {"unique_id": uid, "ds": pd.Timestamp("2024-01-01") + pd.DateOffset(months=i), "y": float(v)}
        for uid, ys in values.items()
        for i, v in enumerate(ys)
    ]
    return pd.DataFrame(rows)


def test_classify_demand_syntetos_boylan_quadrants() -> None:
    df = series(
        {
            "smooth": [10, 11, 9, 10, 10, 12],  # ADI 1, CV² ~0.01
            "erratic": [1, 20, 1, 30, 2, 25],  # ADI 1, CV² ~1.03
            "intermittent": [0, 0, 5, 0, 0, 5, 0, 6],  # ADI 8/3, CV² ~0.01
            "lumpy": [0, 0, 1, 0, 0, 30, 0, 2],  # ADI 8/3, CV² ~2.24
            "one_demand": [0, 0, 3, 0],
            "all_zero": [0, 0, 0, 0],
        }
    )
    classes = classify_demand(df)
    assert classes.to_dict() == {
        "all_zero": "intermittent",
        "erratic": "erratic",
        "intermittent": "intermittent",
        "lumpy": "lumpy",
        "one_demand": "intermittent",
        "smooth": "smooth",
    }


def test_classify_demand_cutoffs_are_inclusive_above() -> None:
    # ADI = 33/25 = 1.32 exactly counts as high; 25 equal demands give CV² 0
    ys = [1.0] * 25 + [0.0] * 8
    assert classify_demand(series({"a": ys}))["a"] == "intermittent"
    assert classify_demand(series({"a": [1.0] * 25 + [0.0] * 7}))["a"] == "smooth"
