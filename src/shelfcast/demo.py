"""`shelfcast demo`: run the parts of the pipeline that are built, end to end, on embedded servers.

Built so far: contracts, the embedded broker and Redis, producing keyed contract events, consuming them
in a consumer group, dead-lettering malformed records. Not built yet, and so not run here: the ingest
HTTP service, the PyFlink features job, the forecaster and the inventory agent.
"""

import json
import random
import time
import uuid
from collections import Counter
from pathlib import Path

from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from shelfcast.contracts import Event
from shelfcast.errors import ContractError, ShelfcastError
from shelfcast.infra import Infra
from shelfcast.kafka import DeadLetterWriter, make_consumer, make_producer, produce
from shelfcast.settings import Settings

NOT_BUILT = ["ingest HTTP service", "PyFlink features job", "forecaster", "inventory agent", "HTML report"]
RUN_HEADER = "shelfcast-demo-run"
POISON = [b"{not json", b'{"event_id": "x", "type": "teleport"}', b"\xff\xfe"]
# view -> click -> cart -> purchase funnel weights, with a few returns
EVENT_MIX = {"view": 0.70, "click": 0.18, "cart": 0.07, "purchase": 0.04, "return": 0.01}


def sample_events(run_id: str, skus: int, n: int, seed: int = 7) -> list[Event]:
    """Random contract-valid events: a stand-in until the storefront simulator exists."""
    rng = random.Random(seed)
    now_ms = int(time.time() * 1000)
    types = rng.choices(list(EVENT_MIX), weights=list(EVENT_MIX.values()), k=n)
    return [
        Event(
            event_id=f"{run_id}-{i}",
            type=kind,
            sku=f"SKU-{rng.randrange(skus):05d}",
            ts=now_ms - rng.randrange(3_600_000),
            qty=rng.randint(1, 3) if kind in ("purchase", "return") else 1,
            price=round(rng.uniform(5, 200), 2),
            currency="EUR",
        )
        for i, kind in enumerate(types)
    ]


def run_demo(settings: Settings, skus: int, events: int, console: Console) -> dict:
    demo_settings = settings.model_copy(update={"state_dir": settings.state_dir / "demo"})
    infra = Infra(demo_settings)
    try:
        console.print("[bold]1/3[/] bringing up Kafka and Redis")
        infra.up()
        summary = _produce_and_consume(demo_settings, skus, events)
    finally:
        stopped = infra.down()
        console.print(f"stopped what the demo started: {', '.join(stopped) or 'nothing'}")
    _report(summary, console)
    return summary


def _produce_and_consume(settings: Settings, skus: int, n: int) -> dict:
    run_id = uuid.uuid4().hex[:8]
    # Tag this run's records: a broker that was already up may hold an earlier run's events.
    tag = {RUN_HEADER: run_id.encode()}
    batch = sample_events(run_id, skus, n)
    producer = make_producer(settings)
    started = time.perf_counter()
    with Progress() as progress:
        task = progress.add_task("2/3 producing events", total=len(batch) + len(POISON))
        for event in batch:
            produce(producer, settings.topics.events, event, headers=tag)
            progress.advance(task)
        for raw in POISON:
            producer.produce(settings.topics.events, value=raw, headers=tag)
            progress.advance(task)
        if producer.flush(30):
            raise ShelfcastError(f"the broker at {settings.kafka_bootstrap} did not acknowledge every event")
    produce_s = time.perf_counter() - started

    consumer = make_consumer(settings, group_id=f"shelfcast-demo-{run_id}")
    consumer.subscribe([settings.topics.events])
    dlq = DeadLetterWriter(producer, settings.topics.events_dlq, stage="demo")
    by_type: Counter[str] = Counter()
    expected = len(batch) + len(POISON)
    seen = dead = 0
    deadline = time.monotonic() + 120
    with Progress() as progress:
        task = progress.add_task("3/3 consuming in a consumer group", total=expected)
        while seen < expected and time.monotonic() < deadline:
            msg = consumer.poll(0.5)
            if msg is None or msg.error() or (RUN_HEADER, run_id.encode()) not in (msg.headers() or []):
                continue
            try:
                event = Event.from_bytes(msg.value())
            except ContractError as exc:
                dlq.send_message(msg, str(exc))
                dead += 1
            else:
                by_type[event.type] += 1
            seen += 1
            progress.advance(task)
        consumer.commit(asynchronous=False)
    consumer.close()
    producer.flush(30)
    return {
        "run_id": run_id,
        "events_produced": len(batch),
        "poison_records_produced": len(POISON),
        "events_consumed_by_type": dict(by_type),
        "dead_lettered": dead,
        "produce_events_per_s": round(len(batch) / produce_s),
        "not_built_yet": NOT_BUILT,
    }


def _report(summary: dict, console: Console) -> None:
    out = Path("reports/demo")
    out.mkdir(parents=True, exist_ok=True)
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    table = Table("figure", "value", title="Shelfcast demo")
    for key, value in summary.items():
        table.add_row(key, ", ".join(value) if isinstance(value, list) else str(value))
    console.print(table)
    console.print(f"summary written to {out / 'summary.json'}")
