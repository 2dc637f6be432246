"""`shelfcast demo`: run the parts of the pipeline that are built, end to end, on embedded servers.

Built so far and run here: the embedded broker and Redis, the ingest service (a real `shelfcast ingest
serve` process), the storefront simulator sending to it over HTTP, and a consumer group reading the events
topic back, dead-lettering poison records written straight to Kafka. The demo starts every service as
its own process through the `shelfcast` command, so the core imports no service.
Not built yet, and so not run: the PyFlink features job, the forecaster and the inventory agent.
"""

import json
import os
import secrets
import subprocess
import sys
import time
import uuid
from collections import Counter
from pathlib import Path

from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from shelfcast.contracts import Event
from shelfcast.errors import ContractError, ShelfcastError
from shelfcast.infra import Infra, free_port, start_service
from shelfcast.kafka import DeadLetterWriter, make_consumer, make_producer
from shelfcast.settings import Settings

NOT_BUILT = ["PyFlink features job", "forecaster", "inventory agent", "HTML report"]
POISON = [b"{not json", b'{"event_id": "x", "type": "teleport"}', b"\xff\xfe"]
REPORT_DIR = Path("reports/demo")


def run_demo(settings: Settings, skus: int, days: int, console: Console) -> dict:
    demo_settings = settings.model_copy(update={"state_dir": settings.state_dir / "demo"})
    infra = Infra(demo_settings)
    api_key = secrets.token_urlsafe(16)
    env = {
        "SHELFCAST_KAFKA_BOOTSTRAP": settings.kafka_bootstrap,
        "SHELFCAST_REDIS_URL": settings.redis_url,
        "SHELFCAST_API_KEYS": json.dumps([api_key]),
    }
    ingest = None
    try:
        console.print("[bold]1/4[/] bringing up Kafka and Redis")
        infra.up()
        console.print("[bold]2/4[/] starting the ingest service")
        url = f"http://127.0.0.1:{free_port()}"
        args = ["ingest", "serve", "--port", url.rsplit(":", 1)[1]]
        ingest = start_service("ingest", args, env, f"{url}/readyz", demo_settings.state_dir / "logs" / "ingest.log")
        console.print(f"[bold]3/4[/] simulating {skus} SKUs over {days} days into {url}")
        started = time.perf_counter()
        simulate = ["simulate", "storefront", "--skus", str(skus), "--days", str(days), "--target", "http"]
        simulate += ["--url", url, "--api-key", api_key]
        subprocess.run([sys.executable, "-m", "shelfcast", *simulate], check=True, env={**os.environ, **env})
        http_s = time.perf_counter() - started
        summary = _read_back(demo_settings, console)
        summary["http_events_per_s"] = round(summary["events_on_topic"] / http_s)
    except subprocess.CalledProcessError as exc:
        raise ShelfcastError(f"the storefront simulator failed (exit {exc.returncode})") from None
    finally:
        if ingest is not None:
            ingest.stop()
        stopped = infra.down()
        console.print(f"stopped what the demo started: {', '.join(['ingest', *stopped])}")
    summary["not_built_yet"] = NOT_BUILT
    _report(summary, console)
    return summary


def _read_back(settings: Settings, console: Console) -> dict:
    """Write poison straight to Kafka, then read the events topic in a consumer group to the end."""
    run_id = uuid.uuid4().hex[:8]
    producer = make_producer(settings)
    for raw in POISON:
        producer.produce(settings.topics.events, value=raw)
    producer.flush(30)

    consumer = make_consumer(settings, group_id=f"shelfcast-demo-{run_id}")
    consumer.subscribe([settings.topics.events])
    dlq = DeadLetterWriter(producer, settings.topics.events_dlq, stage="demo")
    by_type: Counter[str] = Counter()
    dead = 0
    # The embedded broker's end offsets are unreliable: read until nothing arrives for a while
    # (longer before the first record: joining the group takes a few seconds).
    deadline = time.monotonic() + 60
    with Progress(console=console) as progress:
        task = progress.add_task("4/4 reading the events topic back", total=None)
        while time.monotonic() < deadline:
            msg = consumer.poll(0.5)
            if msg is None or msg.error():
                continue
            deadline = time.monotonic() + 5
            try:
                by_type[Event.from_bytes(msg.value()).type] += 1
            except ContractError as exc:
                dlq.send_message(msg, str(exc))
                dead += 1
            progress.advance(task)
        consumer.commit(asynchronous=False)
    consumer.close()
    producer.flush(30)
    return {
        "events_on_topic": sum(by_type.values()),
        "events_by_type": dict(by_type),
        "poison_records_written": len(POISON),
        "dead_lettered": dead,
    }


def _report(summary: dict, console: Console) -> None:
    REPORT_DIR.mkdir(parents=True, exist_ok=True)
    (REPORT_DIR / "summary.json").write_text(json.dumps(summary, indent=2))
    table = Table("figure", "value", title="Shelfcast demo")
    for key, value in summary.items():
        table.add_row(key, ", ".join(value) if isinstance(value, list) else str(value))
    console.print(table)
    console.print(f"summary written to {REPORT_DIR / 'summary.json'}")
