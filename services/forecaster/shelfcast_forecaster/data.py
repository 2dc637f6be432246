"""Training and backtest data: long-format series (Nixtla convention), the carparts set, demand classes.

Long format: one row per (``unique_id``, ``ds``) with the target ``y`` and optional exogenous columns.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from shelfcast.errors import ShelfcastError

REQUIRED_COLUMNS = ("unique_id", "ds", "y")
# The repository's sibling folder `shared/` (see DESIGN.md, "Data for training and backtests").
CARPARTS_PATH = Path(__file__).resolve().parents[4] / "shared" / "data" / "carparts.csv.gz"

# Syntetos-Boylan cut-offs (Syntetos, Boylan and Croston 2005).
ADI_CUTOFF = 1.32
CV2_CUTOFF = 0.49


class DataError(ShelfcastError):
    """A data file cannot be used; the message names the file and, where it applies, the line and column."""


def load_series(path: str | Path) -> pd.DataFrame:
    """Read long-format series from CSV (``.csv``, ``.csv.gz``) or Parquet (``.parquet``, ``.pq``).

    Returns the rows sorted by ``unique_id, ds`` with ``unique_id`` as str, ``ds`` as datetime and ``y`` as
    float; exogenous columns are kept (numeric where they parse as numbers). Raises `DataError` naming the file,
    the line (CSV: as a person counts them, the header is line 1) or row (Parquet: 1-based, no header) and the
    column of the first problem found: a missing column, a missing id, a date or number that does not parse,
    a non-finite or negative ``y``, a duplicate (``unique_id``, ``ds``).
    """
    path = Path(path)
    frame, first_line = _read_raw(path)
    where = _locator(path, first_line)
    missing = [c for c in REQUIRED_COLUMNS if c not in frame.columns]
    if missing:
        found = ", ".join(map(str, frame.columns)) or "none"
        raise DataError(f"{path}: missing column(s) {', '.join(missing)} (found: {found})")
    frame["unique_id"] = _check_ids(frame["unique_id"], where)
    frame["ds"] = _parse_dates(frame["ds"], where)
    frame["y"] = _parse_target(frame["y"], where)
    _check_duplicates(frame, where)
    return frame.sort_values(["unique_id", "ds"], kind="stable").reset_index(drop=True)


def _read_raw(path: Path) -> tuple[pd.DataFrame, int]:
    """The file as read, with the number a person gives its first data row (CSV: 2, Parquet: 1)."""
    name = path.name.lower()
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    try:
        if name.endswith((".csv", ".csv.gz")):
            return _read_csv(path), 2
        if name.endswith((".parquet", ".pq")):
            return pd.read_parquet(path), 1
    except (ValueError, OSError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: cannot be read: {exc}") from exc
    raise DataError(f"{path}: unknown format (expected .csv, .csv.gz, .parquet or .pq)")


def _read_csv(path: Path) -> pd.DataFrame:
    """All cells as text so that messages can quote them; blank lines kept so row i is line i + 2."""
    frame = pd.read_csv(path, dtype=str, keep_default_na=False, na_filter=False, skip_blank_lines=False)
    blank = (frame == "").all(axis=1)
    trailing = blank.astype(int)[::-1].cumprod()[::-1].astype(bool)  # empty lines at the end of the file are harmless
    inner_blank = _first((blank & ~trailing).to_numpy())
    if inner_blank is not None:
        raise DataError(f"{path}, line {inner_blank + 2}: empty line")
    frame = frame.loc[~trailing].copy()
    for column in frame.columns.difference(REQUIRED_COLUMNS):
        frame[column] = _maybe_numeric(frame[column])
    return frame


def _maybe_numeric(column: pd.Series) -> pd.Series:
    values = column.replace("", np.nan)
    try:
        return pd.to_numeric(values)
    except (ValueError, TypeError):
        return values


def _locator(path: Path, first_line: int):
    kind = "line" if first_line == 2 else "row"

    def where(position: int, column: str) -> str:
        return f"{path}, {kind} {position + first_line}, column {column}"

    return where


def _is_missing(column: pd.Series) -> np.ndarray:
    missing = column.isna().to_numpy()
    if column.dtype == object:
        missing |= column.astype(str).str.strip().eq("").to_numpy()
    return missing


def _first(mask: np.ndarray) -> int | None:
    hits = np.flatnonzero(mask)
    return int(hits[0]) if hits.size else None


def _check_ids(column: pd.Series, where) -> pd.Series:
    bad = _first(_is_missing(column))
    if bad is not None:
        raise DataError(f"{where(bad, 'unique_id')}: missing value")
    return column.astype(str)


def _parse_dates(column: pd.Series, where) -> pd.Series:
    bad = _first(_is_missing(column))
    if bad is not None:
        raise DataError(f"{where(bad, 'ds')}: missing value")
    if pd.api.types.is_datetime64_any_dtype(column):
        return column
    parsed = pd.to_datetime(column, errors="coerce", format="ISO8601")
    if parsed.isna().any():  # not ISO 8601 throughout: let pandas infer one format from the first value
        parsed = pd.to_datetime(column, errors="coerce")
    bad = _first(parsed.isna().to_numpy())
    if bad is not None:
        raise DataError(f"{where(bad, 'ds')}: {column.iloc[bad]!r} is not a date")
    return parsed


def _parse_target(column: pd.Series, where) -> pd.Series:
    bad = _first(_is_missing(column))
    if bad is not None:
        raise DataError(f"{where(bad, 'y')}: missing value")
    if pd.api.types.is_bool_dtype(column):
        raise DataError(f"{where(0, 'y')}: booleans are not demand")
    values = pd.to_numeric(column, errors="coerce").astype(float)
    bad = _first(values.isna().to_numpy())
    if bad is not None:
        raise DataError(f"{where(bad, 'y')}: {column.iloc[bad]!r} is not a number")
    bad = _first(~np.isfinite(values.to_numpy()))
    if bad is not None:
        raise DataError(f"{where(bad, 'y')}: {column.iloc[bad]!r} is not finite")
    bad = _first(values.to_numpy() < 0)
    if bad is not None:
        raise DataError(f"{where(bad, 'y')}: {column.iloc[bad]!r} is negative (demand is >= 0)")
    return values


def _check_duplicates(frame: pd.DataFrame, where) -> None:
    keys = frame[["unique_id", "ds"]].reset_index(drop=True)
    repeated = keys.duplicated(keep="first").to_numpy()
    bad = _first(repeated)
    if bad is None:
        return
    uid, ds = keys.iloc[bad]
    original = _first(((keys["unique_id"] == uid) & (keys["ds"] == ds)).to_numpy())
    earlier = where(original, "ds").split(", ")[1]  # "line N" / "row N"
    raise DataError(f"{where(bad, 'ds')}: duplicate of {earlier} (unique_id {uid!r}, ds {ds})")


def load_carparts(path: str | Path = CARPARTS_PATH) -> pd.DataFrame:
    """The carparts set (wide: ``month`` as ``YYYY-MM`` then one column per part) in long format.

    Keeps only the complete series (2,509 of 2,674, 51 months each); ``ds`` is the month start,
    ``unique_id`` the part number as str, ``y`` float. Sorted by ``unique_id, ds``.
    """
    path = Path(path)
    try:
        wide = pd.read_csv(path)
    except (ValueError, OSError) as exc:
        raise DataError(f"{path}: cannot be read: {exc}") from exc
    if "month" not in wide.columns:
        raise DataError(f"{path}: missing column month (expected the carparts layout: month, then one column per part)")
    months = pd.to_datetime(wide.pop("month"), format="%Y-%m", errors="coerce")
    bad = _first(months.isna().to_numpy())
    if bad is not None:
        raise DataError(f"{path}, line {bad + 2}, column month: not a YYYY-MM month")
    complete = wide.loc[:, wide.notna().all()].astype(float)
    complete.index = pd.Index(months, name="ds")
    long = complete.melt(ignore_index=False, var_name="unique_id", value_name="y").reset_index()
    if (long["y"] < 0).any():
        raise DataError(f"{path}: negative demand in column(s) {sorted(long.loc[long['y'] < 0, 'unique_id'].unique())}")
    long["unique_id"] = long["unique_id"].astype(str)
    return long[["unique_id", "ds", "y"]].sort_values(["unique_id", "ds"], kind="stable").reset_index(drop=True)


def classify_demand(df: pd.DataFrame) -> pd.Series:
    """Syntetos-Boylan demand class of each series: "smooth", "erratic", "intermittent" or "lumpy".

    ADI = number of periods / number of non-zero demands; CV² = (sample std / mean)² of the non-zero demands
    (ddof=1). ADI < 1.32 and CV² < 0.49: smooth; ADI < 1.32, CV² >= 0.49: erratic; ADI >= 1.32, CV² < 0.49:
    intermittent; both at or above: lumpy. A series with fewer than 2 non-zero demands (CV² undefined, all-zero
    series included) counts as "intermittent". Returns a Series indexed by ``unique_id``, named ``demand_class``.
    """
    y = df["y"].to_numpy(dtype=float)
    nonzero = pd.Series(np.where(y > 0, y, np.nan), index=df["unique_id"].to_numpy())
    grouped = nonzero.groupby(level=0, sort=True)
    periods, demands = grouped.size(), grouped.count()
    adi = periods / demands.where(demands > 0)
    cv2 = (grouped.std(ddof=1) / grouped.mean()) ** 2
    high_adi, high_cv2 = adi >= ADI_CUTOFF, cv2 >= CV2_CUTOFF
    classes = np.select(
        [demands < 2, ~high_adi & ~high_cv2, ~high_adi & high_cv2, high_adi & ~high_cv2],
        ["intermittent", "smooth", "erratic", "intermittent"],
        default="lumpy",
    )
    result = pd.Series(classes, index=periods.index, name="demand_class")
    result.index.name = "unique_id"
    return result
