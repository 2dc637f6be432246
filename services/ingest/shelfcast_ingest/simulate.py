"""`shelfcast simulate storefront`: drive the pipeline with a simulated storefront, over HTTP or straight to Kafka.

Events leave in delivery order, paced so that `--speed` simulated seconds pass per wall-clock second
(`--speed 0`: as fast as the target takes them). `--history` writes the daily sales history in long format.
"""

import datetime
import time
from collections.abc import Iterator
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import httpx
import orjson
import typer
from rich.console import Console
from rich.progress import Progress

from shelfcast.contracts import Event
from shelfcast.errors import ShelfcastError
from shelfcast.kafka import make_producer, produce
from shelfcast.settings import get_settings
from shelfcast_ingest.storefront import DAY_MS, Storefront, StorefrontConfig

PACING_RESOLUTION_S = 0.01


class Target(StrEnum):
    http = "http"
    kafka = "kafka"
    none = "none"


def paced_batches(events: Iterator[dict], batch: int, speed: float) -> Iterator[list[dict]]:
    """Batches of up to `batch` events, none sent before its time at `speed`x (0: no pacing)."""
    pending: list[dict] = []
    t0_sim = t0_wall = 0.0
    for event in events:
        if speed > 0:
            if not t0_sim:
                t0_sim, t0_wall = event["ts"], time.monotonic()
            wait = t0_wall + (event["ts"] - t0_sim) / 1000 / speed - time.monotonic()
            if wait > PACING_RESOLUTION_S:
                if pending:
                    yield pending
                    pending = []
                time.sleep(wait)
        pending.append(event)
        if len(pending) >= batch:
            yield pending
            pending = []
    if pending:
        yield pending


class HttpSender:
    """POSTs batches to the ingest API; retries 503s after Retry-After, raises on anything else."""

    def __init__(self, url: str, api_key: str) -> None:
        headers = {"Authorization": f"Bearer {api_key}", "Content-Type": "application/json"}
        self._client = httpx.Client(base_url=url, headers=headers, timeout=30)

    def send(self, events: list[dict]) -> int:
        body = orjson.dumps(events)
        for _attempt in range(30):
            response = self._client.post("/v1/events", content=body)
            if response.status_code != 503:
                break
            time.sleep(float(response.headers.get("Retry-After", "1")))
        if response.status_code != 200:
            raise ShelfcastError(f"ingest at {self._client.base_url} answered {response.status_code}: {response.text}")
        return response.json()["accepted"]

    def close(self) -> None:
        self._client.close()


class KafkaSender:
    """Produces validated events straight onto the events topic (the storefront-to-Kafka path)."""

    def __init__(self) -> None:
        self._settings = get_settings()
        self._producer = make_producer(self._settings)

    def send(self, events: list[dict]) -> int:
        for event in events:
            while True:
                try:
                    produce(self._producer, self._settings.topics.events, Event.model_validate(event))
                    break
                except BufferError:
                    self._producer.poll(0.05)
        self._producer.poll(0)
        return len(events)

    def close(self) -> None:
        if self._producer.flush(60):
            raise ShelfcastError(f"the broker at {self._settings.kafka_bootstrap} did not acknowledge every event")


def write_history(storefront: Storefront, path: Path) -> None:
    history = storefront.daily_history()
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".parquet":
        history.to_parquet(path, index=False)
    else:
        history.to_csv(path, index=False)


def days_ahead_of_the_clock(config: StorefrontConfig, now_ms: int, max_clock_skew_s: int) -> int:
    """How many of the simulated days end more than the allowed skew after `now_ms`. Their events would be
    rejected by ingest and dead-lettered by the features job as `future_ts`: replays are of the past."""
    first_ms = int(datetime.datetime.combine(config.start, datetime.time(), datetime.UTC).timestamp() * 1000)
    latest_ms = now_ms + max_clock_skew_s * 1000
    return sum(1 for d in range(config.days) if first_ms + (d + 1) * DAY_MS > latest_ms)


def simulate_storefront(
    skus: Annotated[int, typer.Option(min=1, max=100_000)] = 200,
    days: Annotated[int, typer.Option(min=1, max=3_650)] = 60,
    speed: Annotated[float, typer.Option(min=0, help="Simulated seconds per wall second; 0 = unpaced.")] = 0.0,
    target: Annotated[Target, typer.Option(help="Where events go: ingest over HTTP, Kafka, or nowhere.")] = Target.http,
    seed: Annotated[int, typer.Option(min=0)] = 0,
    start: Annotated[datetime.datetime, typer.Option(formats=["%Y-%m-%d"])] = datetime.datetime(2026, 1, 1),
    duplicate_rate: Annotated[float, typer.Option(min=0, max=1)] = 0.01,
    disorder_rate: Annotated[float, typer.Option(min=0, max=1)] = 0.02,
    batch: Annotated[int, typer.Option(min=1, max=10_000)] = 500,
    url: Annotated[str | None, typer.Option(help="Ingest URL (default: local SHELFCAST_INGEST_PORT).")] = None,
    api_key: Annotated[str | None, typer.Option(envvar="SHELFCAST_SIMULATOR_API_KEY")] = None,
    history: Annotated[Path | None, typer.Option(help="Write the daily sales history here (.csv or .parquet).")] = None,
) -> None:
    """A realistic catalog's events, deterministic given --seed, sent through the pipeline."""
    config = StorefrontConfig(
        skus=skus,
        days=days,
        seed=seed,
        start=start.date(),
        duplicate_rate=duplicate_rate,
        disorder_rate=disorder_rate,
    )
    storefront = Storefront(config)
    console = Console()
    if history is not None:
        write_history(storefront, history)
        console.print(f"daily history of {skus} SKUs x {days} days written to {history}")
    if target is Target.none:
        return
    skew_s = get_settings().max_clock_skew_s
    ahead = days_ahead_of_the_clock(config, int(time.time() * 1000), skew_s)
    if ahead:
        console.print(
            f"[yellow]warning:[/] the last {ahead} simulated days are ahead of this machine's clock: ingest rejects"
            f" and the features job dead-letters their events as future_ts (SHELFCAST_MAX_CLOCK_SKEW_S={skew_s})"
        )
    sender = _sender(target, url, api_key)
    sent = 0
    first_ms = int(datetime.datetime.combine(config.start, datetime.time(), datetime.UTC).timestamp() * 1000)
    with Progress(console=console) as progress:
        task = progress.add_task(f"simulated days -> {target}", total=days)
        try:
            for events in paced_batches(storefront.events(), batch, speed):
                sent += sender.send(events)
                progress.update(task, completed=(events[-1]["ts"] - first_ms) // DAY_MS, description=f"{sent:,} events")
        finally:
            sender.close()
        progress.update(task, completed=days)
    console.print(f"sent {sent:,} events for {skus} SKUs over {days} simulated days to {target}")


def _sender(target: Target, url: str | None, api_key: str | None) -> HttpSender | KafkaSender:
    if target is Target.kafka:
        return KafkaSender()
    settings = get_settings()
    key = api_key or next(iter(settings.load_api_keys()), None)
    if key is None:
        raise ShelfcastError("no API key: pass --api-key, or set SHELFCAST_SIMULATOR_API_KEY or SHELFCAST_API_KEYS")
    return HttpSender(url or f"http://127.0.0.1:{settings.ingest_port}", key)
