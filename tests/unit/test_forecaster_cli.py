import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd


def test_backtest_cli_writes_metrics_per_model_and_the_forecasts(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    ds = pd.date_range("2024-01-01", periods=40, freq="MS")
    frames = [
        pd.DataFrame({"unique_id": f"s{i}", "ds": ds, "y": rng.poisson(3 if i % 2 else 0.3, len(ds))}) for i in range(6)
    ]
    data = tmp_path / "series.csv"
    pd.concat(frames).to_csv(data, index=False)
    out, forecasts = tmp_path / "metrics.json", tmp_path / "forecasts.csv"
    args = ["--data", data, "--horizon", "6", "--freq", "MS", "--season-length", "12", "--json", out]
    args += ["--forecasts", forecasts, "--no-keras", "--report", tmp_path / "report"]
    shelfcast = Path(sys.executable).with_name("shelfcast")
    result = subprocess.run(
        [shelfcast, "forecaster", "backtest", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(out.read_text())
    assert {"SeasonalNaive", "AutoETS", "CrostonOptimized", "TSB", "ADIDA", "chosen", "ensemble"} <= set(
        report["metrics"]
    )
    assert all(0 <= m["coverage"] <= 1 for m in report["metrics"].values())
    written = pd.read_csv(forecasts)
    assert list(written.columns) == ["unique_id", "ds", "cutoff", "model", "p10", "p50", "p90", "y"]
    assert len(written) == 7 * 6 * 6  # models x series x horizon
    assert "<img" in (tmp_path / "report" / "index.html").read_text()


def test_backtest_cli_names_the_file_line_and_column_of_bad_data(tmp_path: Path) -> None:
    data = tmp_path / "bad.csv"
    data.write_text("unique_id,ds,y\na,2024-01-01,1\na,2024-02-01,lots\n")
    args = ["--data", str(data), "--horizon", "1", "--freq", "MS", "--season-length", "1", "--json", "x.json"]
    result = subprocess.run(
        [Path(sys.executable).with_name("shelfcast"), "forecaster", "backtest", *args],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert result.returncode == 1
    [line] = result.stderr.strip().splitlines()
    assert "bad.csv, line 3, column y" in line


def test_train_cli_publishes_a_version_with_its_card(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    ds = pd.date_range("2026-01-01", periods=40, freq="D")
    frames = [pd.DataFrame({"unique_id": f"s{i}", "ds": ds, "y": rng.poisson(2 + i, len(ds))}) for i in range(8)]
    data = tmp_path / "daily.csv"
    pd.concat(frames).to_csv(data, index=False)
    registry = tmp_path / "models"
    args = ["--data", data, "--horizon", "7", "--freq", "D", "--season-length", "7", "--out", registry]
    result = subprocess.run(
        [
            Path(sys.executable).with_name("shelfcast"),
            "forecaster",
            "train",
            *map(str, args),
            "--epochs",
            "1",
            "--arch",
            "tcn",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    card = json.loads((registry / "current" / "card.json").read_text())
    assert card["spec"]["arch"] == "tcn" and card["spec"]["horizon"] == 7 and card["spec"]["freq"] == "D"
    assert card["data"]["series"] == 8 and card["data"]["rows"] == 8 * 40
    assert set(card["validation"]) == {"tcn", "SeasonalNaive"}
    assert (registry / "current" / "saved_model" / "saved_model.pb").is_file()
    assert card["version"] in result.stdout


def test_train_cli_needs_exactly_one_data_source(tmp_path: Path) -> None:
    args = ["--horizon", "7", "--freq", "D", "--season-length", "7", "--out", str(tmp_path)]
    result = subprocess.run(
        [Path(sys.executable).with_name("shelfcast"), "forecaster", "train", *args],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2
    assert "exactly one of --data or --dataset" in result.stderr
