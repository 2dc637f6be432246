"""The whole Shelfcast system as local processes on one machine: what `shelfcast demo` and the system benchmarks
(`shelfcast bench e2e`, `shelfcast bench soak`) run.

`running_pipeline` brings up an embedded broker and Redis of its own, the PyFlink features job, the forecaster
(trained first on simulated sales of the same catalogue before `START`), ingest, the inventory agent (the DQN shipped
with it, a residual policy around capped base-stock) and an ERP simulator delivering each reorder on the day the
agent expects it; on leaving it stops every process it started.
Each service runs as its own `shelfcast ...` process, so the core imports no service.
"""

import csv
import datetime
import json
import os
import secrets
import statistics
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from rich.console import Console

from shelfcast.errors import ShelfcastError
from shelfcast.infra import Infra, ManagedProcess, free_port, start_service
from shelfcast.settings import Settings

LEAD_DAYS = 2  # the ERP simulator's for a reorder without expected_at: the agent's default SKU lead time
HISTORY_DAYS = 90
INPUTS = ("views", "clicks", "carts")  # feature-window fields the forecaster reads beside demand
START = datetime.date(2026, 1, 1)  # the first simulated day the pipeline runs on; history is before it
PRICE_MOVES = {"elasticity": 1.5, "max_step": 0.05}  # the agent's markdown and scarcity steps, within +-20%


@dataclass
class Pipeline:
    """A running pipeline: settings aimed at its servers, the environment its processes share, where they listen."""

    settings: Settings
    env: dict[str, str]
    api_key: str
    read_key: str  # reads the forecaster's and the agent's APIs; the ingest key above does not
    ingest_url: str
    forecaster_url: str
    agent_url: str
    services: list[ManagedProcess] = field(default_factory=list)
    model: dict = field(default_factory=dict)

    def service(self, name: str) -> ManagedProcess:
        return next(s for s in self.services if s.name == name)

    def shelfcast(self, args: list[str]) -> None:
        """Run `shelfcast ARGS` in the foreground with the pipeline's environment."""
        try:
            subprocess.run([sys.executable, "-m", "shelfcast", *args], check=True, env={**os.environ, **self.env})
        except subprocess.CalledProcessError as exc:
            raise ShelfcastError(f"`shelfcast {' '.join(args[:3])} ...` failed (exit {exc.returncode})") from None


def own_servers(settings: Settings, name: str) -> Settings:
    """Settings for a broker and a Redis of the pipeline's own on free ports (started and stopped with it), unless
    SHELFCAST_KAFKA_BOOTSTRAP / SHELFCAST_REDIS_URL name others. Servers left from earlier runs would leak their state
    into this one: the agent's stored offsets in Redis, say, are past the end of a fresh broker's topics."""
    update: dict[str, object] = {"state_dir": settings.state_dir / name}
    if "kafka_bootstrap" not in settings.model_fields_set:
        update["kafka_bootstrap"] = f"127.0.0.1:{free_port()}"
    if "redis_url" not in settings.model_fields_set:
        update["redis_url"] = f"redis://127.0.0.1:{free_port()}/0"
    return settings.model_copy(update=update)


@contextmanager
def running_pipeline(settings: Settings, skus: int, console: Console, name: str = "demo") -> Iterator[Pipeline]:
    """Start everything (progress on `console`), yield the pipeline, stop everything even on failure."""
    own = own_servers(settings, name)
    infra = Infra(own)
    api_key, read_key = secrets.token_urlsafe(16), secrets.token_urlsafe(16)
    env = {
        "SHELFCAST_KAFKA_BOOTSTRAP": own.kafka_bootstrap,
        "SHELFCAST_REDIS_URL": own.redis_url,
        "SHELFCAST_STATE_DIR": str(own.state_dir),
        "SHELFCAST_API_KEYS": json.dumps([api_key]),
        "SHELFCAST_READ_API_KEYS": json.dumps([read_key]),
        "SHELFCAST_FORECASTER_REGISTRY": str(own.state_dir / "models"),
    }
    urls = {service: f"http://127.0.0.1:{free_port()}" for service in ("ingest", "forecaster", "agent")}
    pipeline = Pipeline(own, env, api_key, read_key, urls["ingest"], urls["forecaster"], urls["agent"])
    try:
        _start(pipeline, infra, skus, console)
        yield pipeline
    finally:
        for service in pipeline.services:
            service.stop()
        stopped = infra.down()
        console.print(f"stopped what the {name} started: {', '.join([s.name for s in pipeline.services] + stopped)}")


def _start(pipeline: Pipeline, infra: Infra, skus: int, console: Console) -> None:
    logs = pipeline.settings.state_dir / "logs"

    def start(name: str, args: list[str], url: str | None) -> None:
        ready = f"{url}/readyz" if url else None
        port = ["--port", url.rsplit(":", 1)[1]] if url else []
        pipeline.services.append(start_service(name, [*args, *port], pipeline.env, ready, logs / f"{name}.log"))

    console.print("[bold]starting[/] Kafka and Redis")
    infra.up()
    # first: the job takes 15-60 s to run, and the simulated days should reach it as they pass, not as a backlog
    console.print("[bold]starting[/] the features job (PyFlink)")
    start("features", ["features", "run", "--fresh"], None)
    console.print(f"[bold]training[/] the forecaster on {HISTORY_DAYS} simulated days before {START}")
    pipeline.model = _train_forecaster(pipeline, skus)
    pipeline.env["SHELFCAST_AGENT_SKU_PARAMS"] = str(_write_sku_params(pipeline.settings.state_dir))
    console.print("[bold]starting[/] ingest, the forecaster, the inventory agent and the ERP simulator")
    start("ingest", ["ingest", "serve"], pipeline.ingest_url)
    start("forecaster", ["forecaster", "serve"], pipeline.forecaster_url)
    start("agent", ["agent", "run", "--dqn"], pipeline.agent_url)
    start("erp", ["simulate", "erp", "--lead-days", str(LEAD_DAYS)], None)


def _train_forecaster(pipeline: Pipeline, skus: int) -> dict:
    """Daily sales of the same catalogue over the days before `START`, then `forecaster train` on them."""
    history = pipeline.settings.state_dir / "history.csv"
    start = START - datetime.timedelta(days=HISTORY_DAYS)
    past = ["--skus", str(skus), "--days", str(HISTORY_DAYS), "--start", str(start), "--target", "none"]
    pipeline.shelfcast(["simulate", "storefront", *past, "--history", str(history)])
    registry = Path(pipeline.env["SHELFCAST_FORECASTER_REGISTRY"])
    train = ["--data", str(history), "--horizon", "14", "--freq", "D", "--season-length", "7", "--epochs", "15"]
    train += [f"--exogenous={field}" for field in INPUTS]
    pipeline.shelfcast(["forecaster", "train", *train, "--out", str(registry)])
    card = json.loads((registry / "current" / "card.json").read_text())
    chosen = card["spec"]["arch"]
    return {"version": card["version"], "arch": chosen, "validation": card["validation"][chosen]}


def _write_sku_params(state_dir: Path) -> Path:
    """The agent's SKU parameters: defaults for costs and lead time, and bounded price moves around each SKU's
    median price in the training history (the storefront does not react to them: its catalogue is fixed)."""
    prices: dict[str, list[float]] = {}
    with (state_dir / "history.csv").open(newline="") as history:
        for row in csv.DictReader(history):
            prices.setdefault(row["unique_id"], []).append(float(row["price"]))
    skus = {}
    for sku, seen in prices.items():
        base = round(statistics.median(seen), 2)
        pricing = {"base_price": base, "min_price": round(0.8 * base, 2), "max_price": round(1.2 * base, 2)}
        skus[sku] = {"pricing": {**pricing, **PRICE_MOVES}}
    path = state_dir / "sku_params.json"
    path.write_text(json.dumps({"defaults": {}, "skus": skus}, indent=1))
    return path


def simulate_storefront(pipeline: Pipeline, skus: int, days: int, seconds_per_day: float) -> None:
    """The storefront simulator sending `days` from `START` to ingest over HTTP, one day every `seconds_per_day`
    (the same catalogue as the training history: both use the simulator's default seed)."""
    speed = 86_400 / seconds_per_day if seconds_per_day else 0
    live = ["--skus", str(skus), "--days", str(days), "--start", str(START), "--target", "http"]
    live += ["--speed", str(speed), "--url", pipeline.ingest_url, "--api-key", pipeline.api_key]
    pipeline.shelfcast(["simulate", "storefront", *live])
