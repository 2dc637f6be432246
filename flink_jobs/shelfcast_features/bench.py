"""`shelfcast bench features`: throughput, window latency and memory of the features job, on its own servers.

1. backlog: N storefront events are on the topic before the job starts; progress is read from the offsets
   the job commits at each checkpoint. Steady state is the rate between 10% and 90% of the backlog, so the
   start-up (JVM, planner, Python workers) is left out; it is reported on its own.
2. live: events stamped with the current time at a fixed rate; for every 1-minute window that closes,
   latency = the features record's Kafka timestamp (written right after Redis) - (window end + watermark delay).
3. memory: peak RSS of the job's whole process tree (the Python driver, the JVM, the Python workers).
4. where the time goes: CPU seconds per process kind during the backlog.
"""

import json
import os
import random
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Annotated

import numpy as np
import typer
from confluent_kafka import TopicPartition
from rich.console import Console
from rich.progress import Progress

from shelfcast.infra import ManagedProcess, free_port, start_kafka, start_redis, start_service
from shelfcast.kafka import ensure_topics, make_consumer, make_producer
from shelfcast.settings import Settings
from shelfcast_features.settings import FeatureJobSettings

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")


def _tree(root: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    pids, todo = [], [root]
    while todo:
        pid = todo.pop()
        pids.append(pid)
        todo += children.get(pid, [])
    return pids


def _usage(root: int) -> dict[str, tuple[float, int]]:
    """Per process kind (jvm, python): CPU seconds and resident bytes, summed over the tree."""
    usage: dict[str, tuple[float, int]] = {}
    for pid in _tree(root):
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            exe = os.readlink(f"/proc/{pid}/exe")
        except OSError:
            continue
        kind = "jvm" if exe.endswith("java") else "python"
        cpu, rss = usage.get(kind, (0.0, 0))
        usage[kind] = (cpu + (int(fields[11]) + int(fields[12])) / CLOCK_TICKS, rss + int(fields[21]) * PAGE)
    return usage


class Sampler(threading.Thread):
    """Peak RSS of the job's process tree, sampled twice a second."""

    def __init__(self, root: int) -> None:
        super().__init__(daemon=True)
        self.root, self.peak_rss, self.stopped = root, 0, threading.Event()

    def run(self) -> None:
        while not self.stopped.wait(0.5):
            self.peak_rss = max(self.peak_rss, sum(rss for _, rss in _usage(self.root).values()))


def _backlog(settings: Settings, n: int, skus: int, store_rate: int) -> None:
    """N events in event-time order, `store_rate` per second of event time, the storefront's mix of types."""
    producer = make_producer(settings)
    rng = random.Random(1)
    step_ms = 1000 / store_rate
    start = int(time.time() * 1000 - n * step_ms) - 3_600_000
    kinds = ["view"] * 88 + ["click"] * 7 + ["cart"] * 3 + ["purchase"] * 2
    for i in range(n):
        kind = rng.choice(kinds)
        event = {
            "event_id": f"b-{i}",
            "type": kind,
            "sku": f"SKU-{rng.randrange(skus):05d}",
            "ts": start + int(i * step_ms),
        }
        event |= {"qty": 1, "price": 9.99, "currency": "EUR"}
        while True:
            try:
                producer.produce(
                    settings.topics.events, value=json.dumps(event).encode(), key=str(event["sku"]).encode()
                )
                break
            except BufferError:
                producer.poll(0.05)
    producer.flush(120)


def _committed(settings: Settings, group_id: str) -> int:
    consumer = make_consumer(settings, group_id)
    partitions = [TopicPartition(settings.topics.events, p) for p in range(settings.kafka_partitions)]
    offsets = consumer.committed(partitions, timeout=10)
    consumer.close()
    return sum(max(tp.offset, 0) for tp in offsets)


def _live(settings: Settings, seconds: float, rate: int, skus: int, ooo_ms: int, progress: Progress) -> list[float]:
    """Events stamped now at `rate`/s; the latency of each 1-minute window that closes meanwhile."""
    consumer = make_consumer(settings, f"bench-{uuid.uuid4().hex[:6]}")
    consumer.subscribe([settings.topics.features])
    producer = make_producer(settings)
    rng = random.Random(2)
    started = time.time()
    measure_from_ms = int(started * 1000) + 5_000  # windows ending before this also carry the backlog's burst
    latencies: list[float] = []
    task = progress.add_task(f"live at {rate}/s", total=seconds)
    sent = 0
    while (elapsed := time.time() - started) < seconds:
        due = int(elapsed * rate)
        for _ in range(due - sent):
            sku = f"SKU-{rng.randrange(skus):05d}"
            event = {"event_id": f"l-{sent}", "type": "view", "sku": sku, "ts": int(time.time() * 1000)}
            event |= {"qty": 1, "price": 9.99, "currency": "EUR"}
            producer.produce(settings.topics.events, value=json.dumps(event).encode(), key=sku.encode())
            sent += 1
        producer.poll(0)
        while (msg := consumer.poll(0.005)) is not None:
            if msg.error():
                continue
            window = json.loads(msg.value() or b"{}")
            if window["granularity"] == "1m" and window["window_end"] > measure_from_ms:
                latencies.append(msg.timestamp()[1] - (window["window_end"] + ooo_ms))
        progress.update(task, completed=elapsed)
    consumer.close()
    return latencies


def run_bench(events: int, skus: int, store_rate: int, live_seconds: float, live_rate: int) -> dict:
    # Progress is only seen at checkpoints; snapshotting the dedupe state every second cost ~20% throughput.
    job = FeatureJobSettings(checkpoint_interval_ms=5_000)
    with tempfile.TemporaryDirectory(prefix="shelfcast-bench-features-") as tmp:
        root = Path(tmp)
        broker, redis = start_kafka(free_port(), root), start_redis(free_port(), root)
        settings = Settings(kafka_bootstrap=broker.address, redis_url=redis.address, state_dir=root / "state")
        ensure_topics(settings)
        proc: ManagedProcess | None = None
        try:
            with Progress() as progress:
                task = progress.add_task("writing the backlog", total=None)
                _backlog(settings, events, skus, store_rate)
                progress.update(task, total=1, completed=1)
                env = {
                    "SHELFCAST_KAFKA_BOOTSTRAP": settings.kafka_bootstrap,
                    "SHELFCAST_REDIS_URL": settings.redis_url,
                    "SHELFCAST_STATE_DIR": str(settings.state_dir),
                    "SHELFCAST_FEATURES_CHECKPOINT_INTERVAL_MS": str(job.checkpoint_interval_ms),
                }
                started = time.monotonic()
                proc = start_service("features", ["features", "run"], env, None, root / "features.log")
                sampler = Sampler(proc.pid)
                sampler.start()
                samples = _follow_backlog(settings, job.group_id, events, started, progress)
                cpu = {kind: round(c, 1) for kind, (c, _) in _usage(proc.pid).items()}
                latencies = _live(settings, live_seconds, live_rate, skus, job.out_of_orderness_ms, progress)
                sampler.stopped.set()
        finally:
            if proc is not None:
                proc.stop()
            broker.stop()
            redis.stop()
    report = _report(events, skus, samples, cpu, latencies, sampler.peak_rss, live_rate, job)
    return {"backlog_events_per_s_of_event_time": store_rate, **report}


def _follow_backlog(
    settings: Settings, group_id: str, events: int, started: float, progress: Progress
) -> list[tuple[float, int]]:
    task = progress.add_task("job reading the backlog", total=events)
    samples: list[tuple[float, int]] = []
    deadline = started + 900
    while (not samples or samples[-1][1] < events) and time.monotonic() < deadline:
        time.sleep(0.5)
        samples.append((time.monotonic() - started, _committed(settings, group_id)))
        progress.update(task, completed=samples[-1][1])
    return samples


def _report(
    events: int,
    skus: int,
    samples: list[tuple[float, int]],
    cpu: dict[str, float],
    latencies: list[float],
    peak_rss: int,
    live_rate: int,
    job: FeatureJobSettings,
) -> dict:
    def first_sample_past(fraction: float) -> tuple[float, int]:
        return next((t, done) for t, done in samples if done >= fraction * events)

    # Offsets move only at checkpoints: take the events actually committed between the two samples.
    (t10, done10), (t90, done90) = first_sample_past(0.1), first_sample_past(0.9)
    first = next(t for t, done in samples if done > 0)
    lat = np.array(latencies) if latencies else np.array([np.nan])
    return {
        "events": events,
        "skus": skus,
        "granularities": job.granularities,
        # None: one checkpoint's commit covered 10-90% of the backlog, too small to time (raise --events).
        "steady_state_events_per_s": round((done90 - done10) / (t90 - t10)) if t90 > t10 else None,
        "startup_s": round(first, 1),
        "backlog_done_s": round(samples[-1][0], 1),
        "cpu_s_startup_and_backlog": cpu,
        "window_close_to_redis_ms": {
            "live_events_per_s": live_rate,
            "windows": len(latencies),
            "p50": round(float(np.percentile(lat, 50)), 1),
            "p99": round(float(np.percentile(lat, 99)), 1),
        },
        "peak_rss_mb": round(peak_rss / 2**20),
        "note": "progress is read from offsets committed at checkpoints (every 5 s): rates are +-5 s coarse",
    }


def bench_features(
    json_out: Annotated[Path, typer.Option("--json", help="Where to write the results.")],
    events: Annotated[int, typer.Option(min=10_000)] = 2_000_000,
    skus: Annotated[int, typer.Option(min=1)] = 500,
    store_rate: Annotated[
        int, typer.Option(min=1, help="Backlog density: events per second of event time (windows per event).")
    ] = 5_000,
    live_seconds: Annotated[float, typer.Option(min=10)] = 75.0,
    live_rate: Annotated[int, typer.Option(min=1)] = 2_000,
) -> None:
    """Steady-state events/s, window-close -> Redis latency p50/p99, and peak RSS of the features job."""
    result = run_bench(events, skus, store_rate, live_seconds, live_rate)
    json_out.parent.mkdir(parents=True, exist_ok=True)
    json_out.write_text(json.dumps(result, indent=2))
    Console().print_json(data=result)
