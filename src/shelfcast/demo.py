"""`shelfcast demo`: the whole pipeline end to end on embedded servers, then a report of what it did.

`shelfcast.pipeline` starts every part (broker, Redis, features job, trained forecaster, ingest, agent, ERP
simulator); here the storefront simulator sends one simulated day every `seconds_per_day` to ingest over HTTP, and
halfway through, poison records go straight onto the events topic (they must come out on the dead-letter topic and
the pipeline must go on). Then the demo reads back what every topic holds and the daily windows in Redis, traces
each reorder to its forecast, window and events, times purchase -> reorder, asks `shelfcast agent replay` what the
agent's orders cost against capped base-stock on the demand that happened, and writes `reports/demo/summary.json`
and `reports/demo/index.html` (`shelfcast.demo_report`).
"""

import datetime
import json
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, cast

import httpx
from prometheus_client.parser import text_string_to_metric_families
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from shelfcast import trace
from shelfcast.contracts import Contract, DeadLetter, Event, FeatureWindow, Forecast, PriceChange, Receipt, Reorder
from shelfcast.demo_report import headline, write_report
from shelfcast.errors import ShelfcastError
from shelfcast.kafka import make_producer, read_topic
from shelfcast.pipeline import START, Pipeline, running_pipeline, simulate_storefront
from shelfcast.settings import Settings
from shelfcast.store import FeatureStore, connect_redis, feature_key

POISON = [b"{not json", b'{"event_id": "x", "type": "teleport"}', b"\xff\xfe"]
REPORT_DIR = Path("reports/demo")
GRANULARITIES = ("1m", "1h", "1d")


def run_demo(settings: Settings, skus: int, days: int, seconds_per_day: float, console: Console) -> dict:
    started = time.perf_counter()
    with running_pipeline(settings, skus, console) as pipeline:
        run, windows = drive(pipeline, skus, days, seconds_per_day, console)
        observed = observe(pipeline.settings, skus, days, console)
        replay = _replay(pipeline)
        live = _live_inventory(pipeline.agent_url)
    latencies = trace.latencies_ms(observed)
    summary = {
        "run": {**run, "total_seconds": round(time.perf_counter() - started, 1)},
        "model": pipeline.model,
        "windows_in_redis": windows,
        **summarise(observed, latencies, seconds_per_day),
        "inventory": {**_receipts(observed), **live},
        "cost_vs_baseline": replay.get("totals"),
    }
    REPORT_DIR.mkdir(parents=True, exist_ok=True)
    (REPORT_DIR / "summary.json").write_text(json.dumps(summary, indent=2))
    write_report(REPORT_DIR, summary, observed, replay, latencies)
    _print(summary, console)
    return summary


def drive(
    pipeline: Pipeline, skus: int, days: int, seconds_per_day: float, console: Console
) -> tuple[dict[str, Any], dict[str, int]]:
    """The paced storefront through the pipeline, poison halfway; the run's figures and the feature windows in Redis
    once they settle."""
    console.print(f"[bold]simulating[/] {skus} SKUs over {days} days ({seconds_per_day:g} s a day)")
    poison = threading.Timer(days * seconds_per_day / 2, _write_poison, [pipeline.settings])
    poison.start()
    started = time.perf_counter()
    try:
        simulate_storefront(pipeline, skus, days, seconds_per_day)
    except BaseException:
        poison.cancel()  # a failed run should not wait out the timer
        raise
    finally:
        poison.join()
    simulated = time.perf_counter() - started
    run = {"skus": skus, "days": days, "seconds_per_day": seconds_per_day, "simulate_seconds": round(simulated, 1)}
    return run, _wait_for_windows(pipeline, skus, console)


def summarise(observed: trace.Observed, latencies: dict[str, list[int]], seconds_per_day: float) -> dict[str, Any]:
    """The summary's figures on the pipeline's records: counts, the trace and the end-to-end latency
    (`trace.latencies_ms` of the same records)."""
    events = [e.record for e in observed.events]
    forecasts = [f.record for f in observed.forecasts]
    reorders = [r.record for r in observed.reorders]
    late = trace.late_for_daily_windows(observed.dead_letters)
    windows = {key: {f: getattr(w, f) for f in trace.COUNTED.values()} for key, w in observed.daily_windows.items()}
    target = round(2 + seconds_per_day, 3)
    p99 = trace.percentiles_s(latencies["purchase_to_reorder"])["p99"]
    return {
        "events": {
            "sent": len(events),
            "by_type": dict(Counter(e.type for e in events)),
            "units_bought": sum(e.qty for e in events if e.type == "purchase"),
        },
        "dead_letters": _dead_letters(observed.dead_letters),
        "forecasts": {
            "published": len(forecasts),
            "skus": len({f.sku for f in forecasts}),
            "fallback": sum(f.fallback for f in forecasts),
        },
        "decisions": {
            "reorders": len(reorders),
            "reorder_decision_ids": len({r.decision_id for r in reorders}),
            "reorder_skus": len({r.sku for r in reorders}),
            "units_ordered": sum(r.qty for r in reorders),
            "price_changes": len(observed.prices),
            "policies": sorted({r.policy for r in reorders}),
        },
        "trace": trace.trace_reorders(reorders, forecasts, windows, trace.daily_event_counts(events, late)),
        "latency": {
            **{f"{name}_s": trace.percentiles_s(values) for name, values in latencies.items()},
            "window_s": seconds_per_day,
            "target_p99_s": target,
            "meets_target": p99 is not None and p99 <= target,
        },
    }


def _write_poison(settings: Settings) -> None:
    """Records no storefront should send, straight onto the events topic: each consumer must dead-letter them."""
    producer = make_producer(settings)
    for raw in POISON:
        producer.produce(settings.topics.events, value=raw)
    producer.flush(30)


def _window_counts(settings: Settings, skus: int) -> dict[str, int]:
    redis = connect_redis(settings.redis_url)
    keys = {g: [feature_key(_sku(i), g) for i in range(skus)] for g in GRANULARITIES}
    return {g: sum(cast(int, redis.zcard(key)) for key in keys[g]) for g in GRANULARITIES}


def _sku(i: int) -> str:
    return f"SKU-{i:05d}"  # the storefront simulator's SKU names


def _wait_for_windows(pipeline: Pipeline, skus: int, console: Console) -> dict[str, int]:
    """Window counts once they stop growing (the job catches up with the simulated backlog)."""
    job = pipeline.service("features")
    counts, settled_at, deadline = _window_counts(pipeline.settings, skus), time.monotonic(), time.monotonic() + 300
    with Progress(console=console) as progress:
        task = progress.add_task("waiting for the feature windows to settle", total=None)
        while time.monotonic() - settled_at < 10 and time.monotonic() < deadline:
            if not job.alive():
                raise ShelfcastError(f"the features job stopped; see {job.log}")
            time.sleep(1)
            latest = _window_counts(pipeline.settings, skus)
            if latest != counts or not any(latest.values()):
                counts, settled_at = latest, time.monotonic()
            progress.update(task, description=f"feature windows in Redis: {sum(counts.values()):,}")
    return counts


def observe(settings: Settings, skus: int, days: int, console: Console) -> trace.Observed:
    """Every topic read back (in parallel: each read waits for 5 quiet seconds) and the daily windows."""
    console.print("[bold]reading back[/] every topic and the daily windows")
    topics: dict[str, tuple[str, type[Contract]]] = {
        "events": (settings.topics.events, Event),
        "forecasts": (settings.topics.forecasts, Forecast),
        "reorders": (settings.topics.reorders, Reorder),
        "prices": (settings.topics.prices, PriceChange),
        "receipts": (settings.topics.receipts, Receipt),
        "dead_letters": (settings.topics.events_dlq, DeadLetter),
        "windows": (settings.topics.features, FeatureWindow),
    }
    with ThreadPoolExecutor(len(topics)) as pool:
        reads = {
            name: pool.submit(read_topic, settings, topic, contract, skip_invalid=name == "events")
            for name, (topic, contract) in topics.items()
        }
        got: dict[str, Any] = {name: future.result() for name, future in reads.items()}
    store = FeatureStore(connect_redis(settings.redis_url))
    first, last = trace.day_end(_ms(START)), trace.day_end(_ms(START)) + days * trace.DAY_MS
    daily = {}
    for i in range(skus):
        for window in store.windows(_sku(i), "1d", first, last):
            daily[(window.sku, window.window_end)] = window
    daily_at = ((w.at_ms, (w.record.sku, w.record.window_end)) for w in got["windows"] if w.record.granularity == "1d")
    return trace.Observed(
        events=trace.first_sent(got["events"]),
        daily_windows_at=trace.first_at(daily_at),
        forecasts=got["forecasts"],
        reorders=got["reorders"],
        prices=got["prices"],
        receipts=got["receipts"],
        dead_letters=[d.record for d in got["dead_letters"]],
        daily_windows=daily,
    )


def _ms(day: datetime.date) -> int:
    return int(datetime.datetime.combine(day, datetime.time(), datetime.UTC).timestamp() * 1000)


def _dead_letters(letters: list[DeadLetter]) -> dict[str, dict[str, int]]:
    """Dead letters by the stage that rejected them (each consumer of the events topic dead-letters what it cannot
    use), and by kind: invalid records and events too late for a window."""
    counts: dict[str, Counter[str]] = {}
    for letter in letters:
        kind = "late" if letter.reason.startswith("late") else "invalid"
        counts.setdefault(letter.stage, Counter())[kind] += 1
    return {stage: dict(kinds) for stage, kinds in sorted(counts.items())}


def _receipts(observed: trace.Observed) -> dict[str, int]:
    return {"receipts": len(observed.receipts), "units_received": sum(r.record.qty for r in observed.receipts)}


def _live_inventory(agent_url: str) -> dict:
    """The agent's own fill rate and stock-outs from its `/metrics` (time compression distorts them: see README)."""
    text = httpx.get(f"{agent_url}/metrics", timeout=10, follow_redirects=True).text
    values = {s.name: s.value for family in text_string_to_metric_families(text) for s in family.samples}
    demanded = values.get("shelfcast_agent_units_demanded_total", 0.0)
    filled = values.get("shelfcast_agent_units_filled_total", 0.0)
    return {
        "live_units_demanded": demanded,
        "live_units_filled": filled,
        "live_fill_rate": round(filled / demanded, 4) if demanded else None,
        "live_stockouts": values.get("shelfcast_agent_stockouts_total", 0.0),
    }


def _replay(pipeline: Pipeline) -> dict:
    """`shelfcast agent replay`: the agent's orders and capped base-stock's on the demand that happened."""
    out = pipeline.settings.state_dir / "replay.json"
    pipeline.shelfcast(["agent", "replay", "--json", str(out)])
    return cast(dict, json.loads(out.read_text()))


def _print(summary: dict, console: Console) -> None:
    """The headline figures; everything else is in summary.json."""
    table = Table("figure", "value", title="Shelfcast demo")
    for name, value in headline(summary).items():
        table.add_row(name, value)
    console.print(table)
    console.print(f"report: {REPORT_DIR / 'index.html'}, all figures: {REPORT_DIR / 'summary.json'}")
