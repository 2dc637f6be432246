"""`shelfcast forecaster backtest`: rolling-origin backtests, Nixtla style, on long-format data."""

import json
import time
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.table import Table

if TYPE_CHECKING:
    import pandas as pd

app = typer.Typer(no_args_is_help=True, help="Demand forecasts: backtests (training and serving not built yet).")


class Layout(StrEnum):
    long = "long"
    carparts = "carparts"


@app.command("backtest")
def backtest_command(
    data: Annotated[Path, typer.Option(help="Long format (unique_id, ds, y, ...) as CSV or Parquet.")],
    horizon: Annotated[int, typer.Option(min=1, help="Periods forecast from each cutoff.")],
    freq: Annotated[str, typer.Option(help="pandas frequency of ds, e.g. D, W, MS.")],
    season_length: Annotated[int, typer.Option(min=1)],
    json_out: Annotated[Path, typer.Option("--json", help="Where to write the metrics.")],
    windows: Annotated[int, typer.Option(min=1)] = 1,
    forecasts: Annotated[Path | None, typer.Option(help="Also write every forecast here (CSV).")] = None,
    layout: Annotated[Layout, typer.Option(help="carparts: the wide layout of ../shared/data/carparts.csv.gz")] = (
        Layout.long
    ),
    keras: Annotated[
        bool, typer.Option(help="Include the global Keras models (lstm, tcn) beside the baselines.")
    ] = True,
) -> None:
    """Backtest every model, the per-class choice and the ensemble (MASE, RMSSE, WAPE, pinball, bias, coverage)."""
    from shelfcast_forecaster.backtest import backtest
    from shelfcast_forecaster.data import load_carparts, load_series
    from shelfcast_forecaster.metrics import evaluate

    console = Console()
    df = load_carparts(data) if layout is Layout.carparts else load_series(data)
    started = time.perf_counter()
    with console.status(f"backtesting {df['unique_id'].nunique():,} series, {windows} window(s) of {horizon}"):
        result = backtest(df, horizon, freq, season_length, windows=windows, forecasters=_forecasters(keras))
    seconds = time.perf_counter() - started
    scores = evaluate(result, df, season_length).set_index("model")
    selection = {str(cutoff): vars(choice) for cutoff, choice in result.attrs["selection"].items()}
    report = {
        "data": str(data),
        "protocol": {"horizon": horizon, "freq": freq, "season_length": season_length, "windows": windows},
        "series": int(df["unique_id"].nunique()),
        "seconds": round(seconds, 1),
        "metrics": json.loads(scores.to_json(orient="index")),
        "selection": selection,
    }
    json_out.parent.mkdir(parents=True, exist_ok=True)
    json_out.write_text(json.dumps(report, indent=2, default=str))
    if forecasts is not None:
        result.to_csv(forecasts, index=False)
    _print(scores, console)


def _forecasters(keras: bool) -> dict:
    from shelfcast_forecaster.backtest import default_forecasters

    forecasters = dict(default_forecasters())
    if keras:
        from shelfcast_forecaster.models import KerasQuantileForecaster

        forecasters |= {arch: KerasQuantileForecaster(arch) for arch in ("lstm", "tcn")}
    return forecasters


def _print(scores: "pd.DataFrame", console: Console) -> None:
    table = Table("model", *scores.columns, title="backtest")
    for model, row in scores.iterrows():
        table.add_row(str(model), *(str(int(v)) if float(v).is_integer() else f"{v:.4f}" for v in row))
    console.print(table)
