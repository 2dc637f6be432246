"""`shelfcast demo`: run the parts of the pipeline that are built, end to end, on embedded servers.

Built so far and run here: the embedded broker and Redis, the ingest service (a real `shelfcast ingest serve`
process), the PyFlink features job, the forecaster (trained first on `HISTORY_DAYS` of simulated sales before the
demo period, then serving and scoring the stream of daily windows), the inventory agent (capped base-stock on the
forecasts, reorders and price changes on Kafka), an ERP simulator delivering each reorder on the day the agent
expects it, by the stream's clock (receipts move stock on hand), and the storefront simulator sending to ingest over
HTTP, one simulated day every `seconds_per_day`; poison records written straight to Kafka must come out on the
dead-letter topic. The demo starts every service as its own process through the `shelfcast` command, so the core
imports no service.
Not built yet, and so not run: the HTML report.
"""

import datetime
import json
import os
import secrets
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar, cast

import httpx
from prometheus_client.parser import text_string_to_metric_families
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from shelfcast.contracts import DeadLetter, Forecast, PriceChange, Receipt, Reorder
from shelfcast.errors import ShelfcastError
from shelfcast.infra import Infra, ManagedProcess, free_port, start_service
from shelfcast.kafka import make_consumer, make_producer
from shelfcast.settings import Settings
from shelfcast.store import connect_redis, feature_key

NOT_BUILT = ["HTML report"]
LEAD_DAYS = 2  # the ERP simulator's for a reorder without expected_at: the agent's default SKU lead time
HISTORY_DAYS = 90
DEMO_INPUTS = ("views", "clicks", "carts")  # feature-window fields the forecaster reads beside demand
DEMO_START = datetime.date(2026, 1, 1)
POISON = [b"{not json", b'{"event_id": "x", "type": "teleport"}', b"\xff\xfe"]
REPORT_DIR = Path("reports/demo")
GRANULARITIES = ("1m", "1h", "1d")
T = TypeVar("T")


def demo_servers(settings: Settings) -> Settings:
    """The demo's settings: a broker and a Redis of its own on free ports (started and stopped by the demo), unless
    SHELFCAST_KAFKA_BOOTSTRAP / SHELFCAST_REDIS_URL name others. Servers left from earlier runs would leak their state
    into this one: the agent's stored offsets in Redis, say, are past the end of a fresh broker's topics."""
    update: dict[str, object] = {"state_dir": settings.state_dir / "demo"}
    if "kafka_bootstrap" not in settings.model_fields_set:
        update["kafka_bootstrap"] = f"127.0.0.1:{free_port()}"
    if "redis_url" not in settings.model_fields_set:
        update["redis_url"] = f"redis://127.0.0.1:{free_port()}/0"
    return settings.model_copy(update=update)


def run_demo(settings: Settings, skus: int, days: int, seconds_per_day: float, console: Console) -> dict:
    demo_settings = demo_servers(settings)
    infra = Infra(demo_settings)
    api_key = secrets.token_urlsafe(16)
    env = {
        "SHELFCAST_KAFKA_BOOTSTRAP": demo_settings.kafka_bootstrap,
        "SHELFCAST_REDIS_URL": demo_settings.redis_url,
        "SHELFCAST_STATE_DIR": str(demo_settings.state_dir),
        "SHELFCAST_API_KEYS": json.dumps([api_key]),
    }
    logs = demo_settings.state_dir / "logs"
    services: list[ManagedProcess] = []
    try:
        console.print("[bold]1/8[/] bringing up Kafka and Redis")
        infra.up()
        # first: the job takes 15-60 s to run, and the simulated days should reach it as they pass, not as a backlog
        console.print("[bold]2/8[/] starting the features job (PyFlink)")
        job = start_service("features", ["features", "run", "--fresh"], env, None, logs / "features.log")
        services.append(job)
        env["SHELFCAST_FORECASTER_REGISTRY"] = str(demo_settings.state_dir / "models")
        console.print(f"[bold]3/8[/] training the forecaster on {HISTORY_DAYS} simulated days before the demo")
        summary: dict = {"model": _train_forecaster(demo_settings.state_dir, skus, env)}
        console.print("[bold]4/8[/] starting the ingest service")
        url = f"http://127.0.0.1:{free_port()}"
        args = ["ingest", "serve", "--port", url.rsplit(":", 1)[1]]
        services.append(start_service("ingest", args, env, f"{url}/readyz", logs / "ingest.log"))
        console.print("[bold]5/8[/] starting the forecaster (HTTP API and stream scoring)")
        forecaster_url = f"http://127.0.0.1:{free_port()}"
        args = ["forecaster", "serve", "--port", forecaster_url.rsplit(":", 1)[1]]
        services.append(start_service("forecaster", args, env, f"{forecaster_url}/readyz", logs / "forecaster.log"))
        console.print("[bold]6/8[/] starting the inventory agent (capped base-stock) and the ERP simulator")
        agent_url = f"http://127.0.0.1:{free_port()}"
        args = ["agent", "run", "--port", agent_url.rsplit(":", 1)[1]]
        services.append(start_service("agent", args, env, f"{agent_url}/readyz", logs / "agent.log"))
        args = ["simulate", "erp", "--lead-days", str(LEAD_DAYS)]
        services.append(start_service("erp", args, env, None, logs / "erp.log"))
        console.print(f"[bold]7/8[/] simulating {skus} SKUs over {days} days ({seconds_per_day:g} s a day) into {url}")
        started = time.perf_counter()
        speed = 86_400 / seconds_per_day if seconds_per_day else 0
        live = ["--skus", str(skus), "--days", str(days), "--start", str(DEMO_START), "--target", "http"]
        live += ["--speed", str(speed)]
        _shelfcast(["simulate", "storefront", *live, "--url", url, "--api-key", api_key], env)
        summary["simulate_seconds"] = round(time.perf_counter() - started, 1)
        _write_poison(demo_settings)
        summary["windows_in_redis"] = _wait_for_windows(demo_settings, skus, job, console)
        summary["dead_letters"] = _dead_letters(demo_settings)
        forecasts = _read_topic(demo_settings, demo_settings.topics.forecasts, Forecast.from_bytes)
        summary["forecasts"] = {
            "published": len(forecasts),
            "skus": len({f.sku for f in forecasts}),
            "fallback": sum(f.fallback for f in forecasts),
        }
        summary["decisions"] = _decisions(demo_settings, {f.sku for f in forecasts})
        summary["inventory"] = _inventory(demo_settings, agent_url)
    except subprocess.CalledProcessError as exc:
        raise ShelfcastError(f"`{' '.join(exc.cmd[3:6])} ...` failed (exit {exc.returncode})") from None
    finally:
        for service in services:
            service.stop()
        stopped = infra.down()
        console.print(f"stopped what the demo started: {', '.join([s.name for s in services] + stopped)}")
    summary["not_built_yet"] = NOT_BUILT
    _report(summary, console)
    return summary


def _shelfcast(args: list[str], env: dict[str, str]) -> None:
    subprocess.run([sys.executable, "-m", "shelfcast", *args], check=True, env={**os.environ, **env})


def _train_forecaster(state_dir: Path, skus: int, env: dict[str, str]) -> dict:
    """Daily sales of the same catalogue over the days before the demo, then `forecaster train` on them."""
    history = state_dir / "history.csv"
    start = DEMO_START - datetime.timedelta(days=HISTORY_DAYS)
    past = ["--skus", str(skus), "--days", str(HISTORY_DAYS), "--start", str(start), "--target", "none"]
    _shelfcast(["simulate", "storefront", *past, "--history", str(history)], env)
    registry = Path(env["SHELFCAST_FORECASTER_REGISTRY"])
    train = ["--data", str(history), "--horizon", "14", "--freq", "D", "--season-length", "7", "--epochs", "15"]
    train += [f"--exogenous={field}" for field in DEMO_INPUTS]
    _shelfcast(["forecaster", "train", *train, "--out", str(registry)], env)
    card = json.loads((registry / "current" / "card.json").read_text())
    chosen = card["spec"]["arch"]
    return {"version": card["version"], "arch": chosen, "validation": card["validation"][chosen]}


def _write_poison(settings: Settings) -> None:
    """Records no storefront should send, straight onto the events topic: the job must dead-letter them."""
    producer = make_producer(settings)
    for raw in POISON:
        producer.produce(settings.topics.events, value=raw)
    producer.flush(30)


def _window_counts(settings: Settings, skus: int) -> dict[str, int]:
    redis = connect_redis(settings.redis_url)
    keys = {g: [feature_key(f"SKU-{i:05d}", g) for i in range(skus)] for g in GRANULARITIES}
    return {g: sum(cast(int, redis.zcard(key)) for key in keys[g]) for g in GRANULARITIES}


def _wait_for_windows(settings: Settings, skus: int, job: ManagedProcess, console: Console) -> dict[str, int]:
    """Window counts once they stop growing (the job catches up with the simulated backlog)."""
    counts, settled_at, deadline = _window_counts(settings, skus), time.monotonic(), time.monotonic() + 300
    with Progress(console=console) as progress:
        task = progress.add_task("8/8 waiting for the feature windows to settle", total=None)
        while time.monotonic() - settled_at < 10 and time.monotonic() < deadline:
            if not job.alive():
                raise ShelfcastError(f"the features job stopped; see {job.log}")
            time.sleep(1)
            latest = _window_counts(settings, skus)
            if latest != counts or not any(latest.values()):
                counts, settled_at = latest, time.monotonic()
            progress.update(task, description=f"8/8 feature windows in Redis: {sum(counts.values()):,}")
    return counts


def _read_topic(settings: Settings, topic: str, parse: Callable[[bytes], T]) -> list[T]:
    """Every record of a topic, parsed (a record that does not parse fails the demo): read from the start by a
    group of its own until nothing came for 5 s (joining the group takes a few seconds, hence 30 s at first)."""
    consumer = make_consumer(settings, group_id=f"shelfcast-demo-{uuid.uuid4().hex[:8]}")
    consumer.subscribe([topic])
    records: list[T] = []
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        msg = consumer.poll(0.5)
        if msg is None or msg.error():
            continue
        deadline = time.monotonic() + 5
        records.append(parse(msg.value() or b""))
    consumer.close()
    return records


def _dead_letters(settings: Settings) -> dict[str, dict[str, int]]:
    """Dead letters on the topic by the stage that rejected them (each consumer of the events topic dead-letters
    what it cannot use), and by kind: invalid records and events too late for a window."""
    counts: dict[str, Counter[str]] = {}
    for letter in _read_topic(settings, settings.topics.events_dlq, DeadLetter.from_bytes):
        kind = "late" if letter.reason.startswith("late") else "invalid"
        counts.setdefault(letter.stage, Counter())[kind] += 1
    return {stage: dict(kinds) for stage, kinds in sorted(counts.items())}


def _decisions(settings: Settings, forecast_skus: set[str]) -> dict:
    """The agent's reorders and price changes, and whether each traces back to a forecast of its SKU."""
    reorders = _read_topic(settings, settings.topics.reorders, Reorder.from_bytes)
    prices = _read_topic(settings, settings.topics.prices, PriceChange.from_bytes)
    return {
        "reorders": len(reorders),
        "reorder_decision_ids": len({r.decision_id for r in reorders}),
        "reorder_skus": len({r.sku for r in reorders}),
        "units_ordered": sum(r.qty for r in reorders),
        "price_changes": len(prices),
        "policies": sorted({r.policy for r in reorders}),
        "untraced_reorders": sum(r.sku not in forecast_skus for r in reorders),
    }


def _inventory(settings: Settings, agent_url: str) -> dict:
    """Receipts the ERP simulator delivered, and the agent's fill rate and stock-outs from its `/metrics`."""
    receipts = _read_topic(settings, settings.topics.receipts, Receipt.from_bytes)
    text = httpx.get(f"{agent_url}/metrics", timeout=10, follow_redirects=True).text
    values = {s.name: s.value for family in text_string_to_metric_families(text) for s in family.samples}
    demanded = values.get("shelfcast_agent_units_demanded_total", 0.0)
    filled = values.get("shelfcast_agent_units_filled_total", 0.0)
    return {
        "receipts": len(receipts),
        "units_received": sum(r.qty for r in receipts),
        "units_demanded": demanded,
        "units_filled": filled,
        "fill_rate": round(filled / demanded, 4) if demanded else None,
        "stockouts": values.get("shelfcast_agent_stockouts_total", 0.0),
    }


def _report(summary: dict, console: Console) -> None:
    REPORT_DIR.mkdir(parents=True, exist_ok=True)
    (REPORT_DIR / "summary.json").write_text(json.dumps(summary, indent=2))
    table = Table("figure", "value", title="Shelfcast demo")
    for key, value in summary.items():
        table.add_row(key, ", ".join(value) if isinstance(value, list) else json.dumps(value))
    console.print(table)
    console.print(f"summary written to {REPORT_DIR / 'summary.json'}")
