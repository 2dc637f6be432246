"""`shelfcast bench ingest`: the HTTP path against the raw producer, measured in one run on one broker.

Each rate is measured `--rounds` times and the median reported (this 2-core machine is noisy).

1. raw: pre-serialised events through a bare confluent-kafka producer (same config: idempotent, acks=all,
   lz4), timed to the last acknowledgement: the ceiling for anything we put in front of it.
2. http: the same events as 500-event JSON batches to a real `shelfcast ingest serve` process, several
   requests in flight, timed to the last 200 (each 200 means every event in it was acknowledged).
3. latency: batches offered at a fixed rate (open loop), latency of each from send to 200.
"""

import asyncio
import json
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Annotated

import aiohttp
import numpy as np
import orjson
import typer
from rich.console import Console
from rich.progress import Progress

from shelfcast.contracts import Event
from shelfcast.infra import ManagedProcess, free_port, start_kafka, start_service
from shelfcast.kafka import ensure_topics, make_producer
from shelfcast.settings import Settings
from shelfcast_ingest.storefront import Storefront, StorefrontConfig

BENCH_KEY = "bench-key"


def _events(n: int) -> list[dict]:
    stream = Storefront(StorefrontConfig(skus=500, days=365, seed=1)).events()
    return [next(stream) for _ in range(n)]


def _raw_rate(settings: Settings, events: list[dict], progress: Progress) -> float:
    records = [(e["sku"].encode(), Event.model_validate(e).to_bytes()) for e in events]
    producer = make_producer(settings)
    task = progress.add_task("raw producer", total=len(records))
    started = time.perf_counter()
    for i, (key, value) in enumerate(records):
        while True:
            try:
                producer.produce(settings.topics.events, value=value, key=key)
                break
            except BufferError:
                producer.poll(0.01)
        if i % 10_000 == 0:
            producer.poll(0)
            progress.update(task, completed=i)
    if producer.flush(60):
        raise RuntimeError("raw producer: not every record was acknowledged")
    progress.update(task, completed=len(records))
    return len(records) / (time.perf_counter() - started)


async def _post(client: aiohttp.ClientSession, body: bytes) -> float:
    started = time.perf_counter()
    async with client.post("/v1/events", data=body) as response:
        if response.status != 200:
            raise RuntimeError(f"ingest answered {response.status}: {(await response.text())[:200]}")
        await response.read()
    return time.perf_counter() - started


async def _http_rate(base_url: str, bodies: list[bytes], in_flight: int, progress: Progress) -> float:
    task = progress.add_task("http -> acked", total=len(bodies))
    queue = list(reversed(bodies))

    async def worker(client: aiohttp.ClientSession) -> None:
        while queue:
            await _post(client, queue.pop())
            progress.advance(task)

    async with _client(base_url) as client:
        started = time.perf_counter()
        await asyncio.gather(*(worker(client) for _ in range(in_flight)))
        return time.perf_counter() - started


async def _latencies(base_url: str, bodies: list[bytes], per_second: float, progress: Progress) -> list[float]:
    task = progress.add_task(f"latency at {per_second:g} batches/s", total=len(bodies))
    async with _client(base_url) as client:
        start = time.perf_counter()
        pending = []
        for i, body in enumerate(bodies):
            await asyncio.sleep(max(0.0, start + i / per_second - time.perf_counter()))
            pending.append(asyncio.create_task(_post(client, body)))
            pending[-1].add_done_callback(lambda _t: progress.advance(task))
        return list(await asyncio.gather(*pending))


def _client(base_url: str) -> aiohttp.ClientSession:
    """aiohttp, not httpx: the load generator shares the cores with the server, and with httpx's heavier
    requests the measured ratio was 0.44-0.56x instead of 0.57-0.77x."""
    headers = {"Authorization": f"Bearer {BENCH_KEY}", "Content-Type": "application/json"}
    return aiohttp.ClientSession(
        base_url=base_url,
        headers=headers,
        timeout=aiohttp.ClientTimeout(total=30),
        connector=aiohttp.TCPConnector(limit=64),
    )


def _serve(settings: Settings, base_url: str, log_dir: Path, workers: int) -> ManagedProcess:
    env = {"SHELFCAST_KAFKA_BOOTSTRAP": settings.kafka_bootstrap, "SHELFCAST_API_KEYS": json.dumps([BENCH_KEY])}
    port = base_url.rsplit(":", 1)[1]
    args = ["ingest", "serve", "--port", port, "--workers", str(workers)]
    return start_service("ingest", args, env, f"{base_url}/readyz", log_dir / "ingest.log")


def run_bench(
    events: int, batch: int, in_flight: int, load: float, load_seconds: float, rounds: int, workers: int
) -> dict:
    with tempfile.TemporaryDirectory(prefix="shelfcast-bench-") as tmp:
        broker = start_kafka(free_port(), Path(tmp))
        settings = Settings(kafka_bootstrap=broker.address, state_dir=Path(tmp))
        ensure_topics(settings)
        server = None
        try:
            sample = _events(events)
            bodies = [orjson.dumps(sample[i : i + batch]) for i in range(0, len(sample), batch)]
            with Progress() as progress:
                raw = statistics.median(_raw_rate(settings, sample, progress) for _ in range(rounds))
                base_url = f"http://127.0.0.1:{free_port()}"
                server = _serve(settings, base_url, Path(tmp), workers)
                http_seconds = statistics.median(
                    asyncio.run(_http_rate(base_url, bodies, in_flight, progress)) for _ in range(rounds)
                )
                offered = [bodies[i % len(bodies)] for i in range(int(load * load_seconds))]
                latencies = np.array(asyncio.run(_latencies(base_url, offered, load, progress))) * 1000
        finally:
            if server is not None:
                server.stop()
            broker.stop()
    http = len(sample) / http_seconds
    p50, p99 = (float(np.percentile(latencies, q)) for q in (50, 99))
    return {
        "events": len(sample),
        "rounds": rounds,
        "how": "median of the rounds for each rate; both rates on the same broker in the same run",
        "batch_size": batch,
        "requests_in_flight": in_flight,
        "ingest_workers": workers,
        "raw_producer_events_per_s": round(raw),
        "http_acked_events_per_s": round(http),
        "http_to_raw_ratio": round(http / raw, 3),
        "latency_ms": {
            "offered_batches_per_s": load,
            "offered_events_per_s": load * batch,
            "batches": len(latencies),
            "p50": round(p50, 2),
            "p99": round(p99, 2),
        },
        "targets": {"http_to_raw_ratio >= 0.5": http / raw >= 0.5, "p99_ms <= 50": p99 <= 50},
        "cpus": os.cpu_count(),
    }


def bench_ingest(
    json_out: Annotated[Path, typer.Option("--json", help="Where to write the results.")],
    events: Annotated[int, typer.Option(min=1_000)] = 200_000,
    batch: Annotated[int, typer.Option(min=1, max=10_000)] = 500,
    in_flight: Annotated[int, typer.Option(min=1, max=64, help="Concurrent requests in the throughput run.")] = 16,
    load: Annotated[float, typer.Option(min=0.1, help="Offered batches per second in the latency run.")] = 20.0,
    load_seconds: Annotated[float, typer.Option(min=1)] = 15.0,
    rounds: Annotated[int, typer.Option(min=1, max=20, help="Repeat each rate; the median is reported.")] = 3,
    workers: Annotated[int, typer.Option(min=1, max=16, help="Ingest worker processes.")] = 2,
) -> None:
    """Raw producer rate vs HTTP -> acked rate, and batch latency p50/p99 at a fixed offered load."""
    result = run_bench(events, batch, in_flight, load, load_seconds, rounds, workers)
    json_out.parent.mkdir(parents=True, exist_ok=True)
    json_out.write_text(json.dumps(result, indent=2))
    Console().print_json(data=result)
