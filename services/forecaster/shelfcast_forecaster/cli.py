"""`shelfcast forecaster backtest`: rolling-origin backtests, Nixtla style, on long-format data."""

import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.table import Table

if TYPE_CHECKING:
    import pandas as pd

app = typer.Typer(no_args_is_help=True, help="Demand forecasts: backtests, training to a model registry, serving.")


class Layout(StrEnum):
    long = "long"
    carparts = "carparts"


@app.command("backtest")
def backtest_command(
    horizon: Annotated[int, typer.Option(min=1, help="Periods forecast from each cutoff.")],
    freq: Annotated[str, typer.Option(help="pandas frequency of ds, e.g. D, W, MS.")],
    season_length: Annotated[int, typer.Option(min=1)],
    json_out: Annotated[Path, typer.Option("--json", help="Where to write the metrics.")],
    data: Annotated[Path | None, typer.Option(help="Long format (unique_id, ds, y, ...) as CSV or Parquet.")] = None,
    dataset: Annotated[str | None, typer.Option(help="A bundled real dataset instead: chicago, visnights.")] = None,
    windows: Annotated[int, typer.Option(min=1)] = 1,
    forecasts: Annotated[Path | None, typer.Option(help="Also write every forecast here (CSV).")] = None,
    report_dir: Annotated[
        Path | None, typer.Option("--report", help="Also write an HTML report with plots into this folder.")
    ] = None,
    layout: Annotated[Layout, typer.Option(help="carparts: the wide layout of ../shared/data/carparts.csv.gz")] = (
        Layout.long
    ),
    keras: Annotated[
        bool, typer.Option(help="Include the global Keras models (lstm, tcn) beside the baselines.")
    ] = True,
) -> None:
    """Backtest every model, the per-class choice and the ensemble (MASE, RMSSE, WAPE, pinball, bias, coverage)."""
    from shelfcast_forecaster.backtest import backtest
    from shelfcast_forecaster.metrics import evaluate

    console = Console()
    df, source = _load(data, layout, dataset)
    started = time.perf_counter()
    with console.status(f"backtesting {df['unique_id'].nunique():,} series, {windows} window(s) of {horizon}"):
        result = backtest(df, horizon, freq, season_length, windows=windows, forecasters=_forecasters(keras))
    seconds = time.perf_counter() - started
    scores = evaluate(result, df, season_length).set_index("model")
    selection = {str(cutoff): vars(choice) for cutoff, choice in result.attrs["selection"].items()}
    report = {
        "data": source,
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
    if report_dir is not None:
        from shelfcast_forecaster.report import write_report

        page = write_report(result, scores, df, report_dir, title=f"Backtest: {source}", season_length=season_length)
        console.print(f"report: {page}")
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


@app.command("train")
def train_command(
    out: Annotated[Path, typer.Option(help="Model registry root: versions/<version>/ and the `current` pointer.")],
    horizon: Annotated[int, typer.Option(min=1, help="Periods each forecast covers.")],
    freq: Annotated[str, typer.Option(help="pandas frequency of ds, e.g. D, W, MS.")],
    season_length: Annotated[int, typer.Option(min=1)],
    layout: Annotated[Layout, typer.Option(help="carparts: the wide layout of ../shared/data/carparts.csv.gz")] = (
        Layout.long
    ),
    data: Annotated[Path | None, typer.Option(help="Long format (unique_id, ds, y, ...) as CSV or Parquet.")] = None,
    dataset: Annotated[str | None, typer.Option(help="A bundled real dataset instead: chicago, visnights.")] = None,
    from_redis: Annotated[
        str | None, typer.Option(help="Train on the feature store's windows of this granularity (1m, 1h, 1d).")
    ] = None,
    arch: Annotated[
        list[str] | None, typer.Option(help="Candidate architectures (default lstm and tcn); validation picks one.")
    ] = None,
    exogenous: Annotated[
        list[str] | None,
        typer.Option(help="Input columns beside demand, feature-window fields (views, clicks, carts, avg_price...)."),
    ] = None,
    epochs: Annotated[int, typer.Option(min=1)] = 40,
    seed: Annotated[int, typer.Option()] = 0,
) -> None:
    """Validate each architecture on the last horizon, refit the best on all data, publish it as `current`."""
    from shelfcast_forecaster.models import ARCHITECTURES
    from shelfcast_forecaster.registry import ModelRegistry
    from shelfcast_forecaster.train import train_and_publish

    console = Console()
    df, source = _training_data(data, layout, dataset, from_redis, tuple(exogenous or ()))
    with console.status("training") as status, _bad_input_as_usage_error():
        card = train_and_publish(
            df,
            ModelRegistry(out),
            horizon,
            freq,
            season_length,
            source,
            tuple(arch or ARCHITECTURES),
            epochs,
            seed,
            tuple(exogenous or ()),
            progress=status.update,
        )
    table = Table("model", "scaled_pinball", "rmsse", "coverage", title=f"validation, last {horizon} periods")
    for name, row in card.validation.items():
        table.add_row(name, *(f"{row[k]:.4f}" for k in ("scaled_pinball", "rmsse", "coverage")))
    console.print(table)
    console.print(f"published {card.version} ({card.spec.arch}) to {out}; it is now current")


@contextmanager
def _bad_input_as_usage_error() -> Iterator[None]:
    """Data or options the model cannot use (missing columns, too little history) as a one-line usage error."""
    try:
        yield
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None


def _load(data: Path | None, layout: Layout, dataset: str | None) -> tuple["pd.DataFrame", str]:
    """The series of a file (``--data``) or of a bundled dataset (``--dataset``), and where they came from."""
    from shelfcast_forecaster.data import load_carparts, load_series
    from shelfcast_forecaster.datasets import load_dataset

    if (data is None) == (dataset is None):
        raise typer.BadParameter("give exactly one of --data or --dataset")
    if dataset is not None:
        try:
            return load_dataset(dataset), f"dataset {dataset}"
        except ValueError as exc:
            raise typer.BadParameter(str(exc), param_hint="--dataset") from None
    assert data is not None
    return (load_carparts(data) if layout is Layout.carparts else load_series(data)), str(data)


def _training_data(
    data: Path | None, layout: Layout, dataset: str | None, from_redis: str | None, exogenous: tuple[str, ...]
) -> tuple["pd.DataFrame", str]:
    if from_redis is None:
        return _load(data, layout, dataset)
    if data is not None or dataset is not None:
        raise typer.BadParameter("give exactly one of --data, --dataset or --from-redis")
    from shelfcast.settings import get_settings, redacted_url
    from shelfcast.store import FeatureStore, connect_redis
    from shelfcast_forecaster.scoring import feature_store_history
    from shelfcast_forecaster.settings import ForecasterSettings

    settings = get_settings()
    store = FeatureStore(connect_redis(settings.redis_url))
    depth = ForecasterSettings().history_windows
    history = feature_store_history(store, str(from_redis), depth, exogenous)
    return history, f"{redacted_url(settings.redis_url)} {from_redis} windows"


@app.command("serve")
def serve_command(
    host: Annotated[str, typer.Option(help="Interface to listen on.")] = "127.0.0.1",
    port: Annotated[int | None, typer.Option(help="Port (default: SHELFCAST_FORECASTER_PORT).")] = None,
    stream: Annotated[bool, typer.Option(help="Run the Kafka scoring loop beside the HTTP API.")] = True,
) -> None:
    """Serve forecasts over HTTP, score `shelfcast.features` into `shelfcast.forecasts`, hot-reload the model."""
    import uvicorn

    from shelfcast_forecaster.app import create_app
    from shelfcast_forecaster.settings import ForecasterSettings

    config = ForecasterSettings()
    uvicorn.run(
        create_app(config=config, stream=stream),
        host=host,
        port=port or config.port,
        loop="uvloop",
        http="httptools",
        access_log=False,
    )
