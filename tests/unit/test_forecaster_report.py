import re
from pathlib import Path

import numpy as np
import pandas as pd

from shelfcast_forecaster.backtest import backtest
from shelfcast_forecaster.metrics import evaluate
from shelfcast_forecaster.report import headline, pick_series, selection_table, write_report

H, M = 3, 4
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
HOSTILE = "<script>alert(1)</script>"


def synthetic(periods: int = 24, seed: int = 0) -> pd.DataFrame:
    """Smooth seasonal series (one with a hostile name) and intermittent ones, monthly."""
    rng = np.random.default_rng(seed)
    ds = pd.date_range("2020-01-01", periods=periods, freq="MS")
    season = np.tile([0.0, 5.0, 10.0, 5.0], periods // M + 1)[:periods]
    values = {
        HOSTILE: 50 + 2 * season + rng.normal(0, 2, periods),
        "smooth": 20 + season + rng.normal(0, 1, periods),
        "sparse1": rng.binomial(1, 0.3, periods) * rng.integers(1, 4, periods),
        "sparse2": rng.binomial(1, 0.2, periods) * rng.integers(1, 20, periods),
        "zeros": np.zeros(periods),
    }
    frames = [pd.DataFrame({"unique_id": uid, "ds": ds, "y": np.clip(y, 0, None)}) for uid, y in values.items()]
    return pd.concat(frames, ignore_index=True)


def _future(train: pd.DataFrame, h: int, point) -> pd.DataFrame:
    """Quantile frame for ``h`` months after each series' last date; ``point(series_y)`` gives p50 per step."""
    rows = []
    for uid, part in train.sort_values("ds").groupby("unique_id"):
        p50 = np.resize(np.asarray(point(part["y"].to_numpy()), dtype=float), h)
        dates = pd.date_range(part["ds"].max() + pd.DateOffset(months=1), periods=h, freq="MS")
        rows.append(pd.DataFrame({"unique_id": uid, "ds": dates, "p10": 0.7 * p50, "p50": p50, "p90": 1.3 * p50 + 1}))
    return pd.concat(rows, ignore_index=True)


def seasonal_naive(train: pd.DataFrame, h: int, freq: str, season_length: int) -> pd.DataFrame:
    return _future(train, h, lambda y: y[-season_length:])


def mean(train: pd.DataFrame, h: int, freq: str, season_length: int) -> pd.DataFrame:
    return _future(train, h, lambda y: [y.mean()])


def last_value(train: pd.DataFrame, h: int, freq: str, season_length: int) -> pd.DataFrame:
    return _future(train, h, lambda y: [y[-1]])


def run(forecasters: dict, windows: int = 1) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    df = synthetic()
    result = backtest(df, h=H, freq="MS", season_length=M, windows=windows, forecasters=forecasters)
    return df, result, evaluate(result, df, season_length=M)


def images(page: str, out_dir: Path) -> list[Path]:
    return [out_dir / src for src in re.findall(r'<img src="([^"]+)"', page)]


def test_report_writes_page_and_pngs(tmp_path: Path) -> None:
    forecasters = {"SeasonalNaive": seasonal_naive, "mean": mean, "<b>last</b>": last_value}
    df, result, scores = run(forecasters, windows=2)
    path = write_report(result, scores, df, tmp_path / "report", title="Synthetic & co", season_length=M, samples=4)
    assert path == tmp_path / "report" / "index.html"
    page = path.read_text(encoding="utf-8")
    pngs = images(page, path.parent)
    assert {p.name for p in pngs} == {"relative.png", "calibration.png", "samples.png"}
    for png in pngs:
        assert png.read_bytes().startswith(PNG_SIGNATURE)
    for model in ["SeasonalNaive", "mean", "ensemble", "chosen"]:
        assert f"<th>{model}</th>" in page
    assert '<tr class="chosen">' in page
    assert "<script>" not in page and "<b>" not in page
    assert "&lt;script&gt;" in page and "&lt;b&gt;last&lt;/b&gt;" in page
    assert "Synthetic &amp; co" in page
    assert "https://" not in page and "http://" not in page


def test_report_without_seasonal_naive(tmp_path: Path) -> None:
    df, result, scores = run({"mean": mean, "last": last_value})
    page = write_report(result, scores.set_index("model"), df, tmp_path, title="t", season_length=M).read_text()
    assert "SeasonalNaive is not among the models" in page
    assert {p.name for p in images(page, tmp_path)} == {"calibration.png", "samples.png"}
    assert all(p.read_bytes().startswith(PNG_SIGNATURE) for p in images(page, tmp_path))
    assert "has no baseline to compare with" in page


def test_protocol_derived_and_overridden(tmp_path: Path) -> None:
    df, result, scores = run({"SeasonalNaive": seasonal_naive, "mean": mean})
    page = write_report(
        result, scores, df, tmp_path, title="t", season_length=M, protocol={"windows": 7, "data": "<x>.csv"}
    ).read_text()
    assert "<dt>horizon</dt><dd>3</dd>" in page
    assert "<dt>freq</dt><dd>MS</dd>" in page
    assert "<dt>series</dt><dd>5</dd>" in page
    assert "<dt>windows</dt><dd>7</dd>" in page
    assert "&lt;x&gt;.csv" in page


def test_headline_percentages() -> None:
    scores = pd.DataFrame(
        {"rmsse": [1.0, 0.8, 0.9], "scaled_pinball": [0.5, 0.4, 0.45]}, index=["SeasonalNaive", "AutoETS", "chosen"]
    )
    text = headline(scores)
    assert "RMSSE -10.0% vs SeasonalNaive, +12.5% vs AutoETS, the best statsforecast baseline" in text
    assert "scaled pinball -10.0% vs SeasonalNaive, +12.5% vs AutoETS" in text


def test_pick_series_is_deterministic_and_covers_classes() -> None:
    train = synthetic()
    classes = pd.Series({HOSTILE: "smooth", "smooth": "smooth", "sparse1": "lumpy", "sparse2": "intermittent"})
    picks = pick_series(train, classes, 3)
    assert picks == pick_series(train.sample(frac=1, random_state=1), classes, 3)
    assert picks[0] == HOSTILE  # the highest volume
    assert {"sparse1", "sparse2"} <= set(picks)
    assert len(pick_series(train, classes, 50)) == train["unique_id"].nunique()


def test_selection_table_shares() -> None:
    df, result, _ = run({"SeasonalNaive": seasonal_naive, "mean": mean}, windows=2)
    table = selection_table(result, df)
    assert table["cutoff"].nunique() == 2
    assert (table.groupby("cutoff")["series"].sum() == df["unique_id"].nunique()).all()
    assert set(table["chosen"]) <= {"SeasonalNaive", "mean", "ensemble"}
