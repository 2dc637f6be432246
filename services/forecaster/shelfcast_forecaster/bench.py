"""`shelfcast bench forecaster`: batch scoring throughput and single-SKU HTTP latency, on a real Redis.

Setup (not timed): a Redis of its own, a small model trained on simulated history and published to a
temporary registry, and ``--skus`` synthetic demand histories.

1. network: SKUs/s through the published SavedModel, XLA-compiled ``tf.function``, against the same model through
   a plain ``tf.function`` in the same process (the ratio is the figure to compare across machines);
2. records: SKUs/s to `Forecast` records through the serving scorer, which times both modes at load and keeps
   the faster (the network plus building each record);
3. store: SKUs/s of the full online path for ``--store-skus`` SKUs: history read from Redis, scored, cached;
4. http: ``GET /v1/forecast/{sku}`` against a real ``shelfcast forecaster serve`` process, one request at a time,
   p50/p99 for cached SKUs (the common path) and for cache misses (scored on demand).
Each rate is the median of ``--rounds``.
"""

from __future__ import annotations

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
import typer
from rich.console import Console
from rich.progress import Progress

from shelfcast.contracts import FeatureWindow
from shelfcast.infra import free_port, start_redis, start_service
from shelfcast.store import FeatureStore, connect_redis
from shelfcast_forecaster.registry import ModelRegistry
from shelfcast_forecaster.scoring import Demand, Scorer
from shelfcast_forecaster.service import ForecastService, cache_key
from shelfcast_forecaster.settings import ForecasterSettings

READ_KEY = "bench-read-key"  # the read API key of the forecaster process the benchmark starts

DAY_MS = 86_400_000
ORIGIN_MS = 1_780_000_000_000 // DAY_MS * DAY_MS
HISTORY_DAYS = 60


def _train(registry: ModelRegistry, arch: str, progress: Progress) -> None:
    """A small model on 300 simulated weekly-seasonal Poisson series (training cost is not what is measured)."""
    import pandas as pd

    from shelfcast_forecaster.train import train_and_publish

    task = progress.add_task(f"training a small {arch} (not timed)", total=None)
    rng = np.random.default_rng(1)
    days = pd.date_range("2026-01-01", periods=120, freq="D")
    weekly = 1 + 0.5 * (days.dayofweek.to_numpy() >= 5)
    levels = rng.lognormal(0.0, 1.2, 300)
    y = rng.poisson(levels[:, None] * weekly[None, :])
    df = pd.DataFrame({"unique_id": np.repeat([f"T{i}" for i in range(300)], len(days)), "ds": np.tile(days, 300)})
    train_and_publish(df.assign(y=y.ravel().astype(float)), registry, 14, "D", 7, "simulated", (arch,), epochs=3)
    progress.update(task, total=1, completed=1)


def _demand(n: int, seed: int = 0) -> list[Demand]:
    rng = np.random.default_rng(seed)
    levels = rng.lognormal(0.0, 1.2, n)
    units = rng.poisson(levels[:, None], (n, HISTORY_DAYS)).astype(np.float32)
    return [Demand(f"SKU-{i:06d}", ORIGIN_MS, DAY_MS, units[i]) for i in range(n)]


def _rate(fn, n: int, rounds: int) -> float:
    fn()  # warm-up: traces and compiles
    return statistics.median(n / _seconds(fn) for _ in range(rounds))


def _seconds(fn) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def _fill_store(store: FeatureStore, demand: list[Demand], progress: Progress) -> None:
    task = progress.add_task("writing histories to Redis (not timed)", total=len(demand))
    for start in range(0, len(demand), 500):
        chunk = demand[start : start + 500]
        store.write(w for d in chunk for w in _windows(d))
        progress.advance(task, len(chunk))


def _windows(d: Demand) -> list[FeatureWindow]:
    first = d.origin_ms - d.period_ms * (len(d.units) - 1)
    return [
        FeatureWindow(
            sku=d.sku,
            granularity="1d",
            window_start=first + i * d.period_ms,
            window_end=first + (i + 1) * d.period_ms,
            purchases=int(u),
            units=int(u),
        )
        for i, u in enumerate(d.units)
        if u > 0
    ]


async def _latencies(base_url: str, skus: list[str], progress: Progress, label: str) -> np.ndarray:
    task = progress.add_task(f"GET one SKU at a time: {label}", total=len(skus))
    out = []
    auth = {"Authorization": f"Bearer {READ_KEY}"}
    async with aiohttp.ClientSession(base_url, connector=aiohttp.TCPConnector(limit=1), headers=auth) as client:
        for sku in skus:
            started = time.perf_counter()
            async with client.get(f"/v1/forecast/{sku}") as response:
                await response.read()
                if response.status != 200:
                    raise RuntimeError(f"forecaster answered {response.status} for {sku}")
            out.append(time.perf_counter() - started)
            progress.advance(task)
    return np.array(out) * 1000


def _percentiles(ms: np.ndarray) -> dict[str, float]:
    return {
        "requests": len(ms),
        "p50": round(float(np.percentile(ms, 50)), 3),
        "p99": round(float(np.percentile(ms, 99)), 3),
    }


def run_bench(skus: int, store_skus: int, requests: int, rounds: int, arch: str) -> dict:
    import tensorflow as tf

    with tempfile.TemporaryDirectory(prefix="shelfcast-bench-") as tmp, Progress() as progress:
        redis_server = start_redis(free_port(), Path(tmp))
        server = None
        try:
            registry = ModelRegistry(Path(tmp) / "models")
            _train(registry, arch, progress)
            version_dir = registry.path(str(registry.current_version()))
            demand = _demand(skus)
            task = progress.add_task(f"batch scoring {skus:,} SKUs", total=4)
            xla, plain = Scorer(version_dir, jit=True), Scorer(version_dir, jit=False)
            network = _rate(lambda: xla.quantiles(demand), skus, rounds)
            progress.advance(task)
            network_plain = _rate(lambda: plain.quantiles(demand), skus, rounds)
            progress.advance(task)
            auto = Scorer(version_dir)
            auto.warm_up()
            now = int(time.time() * 1000)
            records = _rate(lambda: auto.forecasts(demand, now), skus, rounds)
            progress.advance(task)

            config = ForecasterSettings(registry=registry.root)
            service = ForecastService(connect_redis(redis_server.address), config)
            service.reload_if_changed()
            online = [d for d in demand if d.units.any()][:store_skus]  # a SKU that never sold has no windows: 404
            _fill_store(service.store, online, progress)
            names = [d.sku for d in online]
            batches = [names[i : i + config.max_batch] for i in range(0, len(names), config.max_batch)]
            store_rate = _rate(lambda: [service.score(b, source="bench") for b in batches], len(names), rounds)
            progress.advance(task)

            port = free_port()
            env = {
                "SHELFCAST_REDIS_URL": redis_server.address,
                "SHELFCAST_FORECASTER_REGISTRY": str(registry.root),
                "SHELFCAST_READ_API_KEYS": json.dumps([READ_KEY]),
            }
            args = ["forecaster", "serve", "--no-stream", "--port", str(port)]
            base_url = f"http://127.0.0.1:{port}"
            server = start_service("forecaster", args, env, f"{base_url}/readyz", Path(tmp) / "forecaster.log")
            rng = np.random.default_rng(2)
            hits = [names[i] for i in rng.integers(0, len(names), requests)]
            cached = asyncio.run(_latencies(base_url, hits, progress, "cached"))
            misses = names[: min(len(names), max(50, requests // 20))]
            service.redis.delete(*(cache_key(s) for s in misses))
            uncached = asyncio.run(_latencies(base_url, misses, progress, "cache miss, scored now"))
        finally:
            if server is not None:
                server.stop()
            redis_server.stop()
    http_cached = _percentiles(cached)
    return {
        "skus": skus,
        "rounds": rounds,
        "how": "median of the rounds for each rate, all in one process after a warm-up call",
        "model": {
            "arch": arch,
            "lookback": xla.spec.lookback,
            "horizon": xla.spec.horizon,
            "history_days": HISTORY_DAYS,
        },
        "device": xla.device,
        "tensorflow": tf.__version__,
        "batch_skus_per_s": {
            "network_xla": round(network),
            "network_plain_tf_function": round(network_plain),
            "xla_to_plain_ratio": round(network / network_plain, 3),
            "serving_picks_xla": auto.jit,
            "forecast_records": round(records),
            "online_from_redis": round(store_rate),
            "online_skus": len(names),
        },
        "http_single_sku_ms": {"cached": http_cached, "cache_miss": _percentiles(uncached)},
        "targets": {
            "network_skus_per_s >= 20000": max(network, network_plain) >= 20_000,
            "http_cached_p99_ms <= 10": http_cached["p99"] <= 10,
        },
        "cpus": os.cpu_count(),
    }


def bench_forecaster(
    json_out: Annotated[Path, typer.Option("--json", help="Where to write the results.")],
    skus: Annotated[int, typer.Option(min=100, help="SKUs scored in the batch measurements.")] = 100_000,
    store_skus: Annotated[int, typer.Option(min=10, help="SKUs in the Redis-backed online measurement.")] = 10_000,
    requests: Annotated[int, typer.Option(min=10, help="Single-SKU HTTP requests (cached).")] = 5_000,
    rounds: Annotated[int, typer.Option(min=1, max=20, help="Repeat each rate; the median is reported.")] = 3,
    arch: Annotated[str, typer.Option(help="lstm or tcn")] = "lstm",
) -> None:
    """Batch scoring SKUs/s (XLA vs plain, records, online from Redis) and single-SKU HTTP p50/p99."""
    result = run_bench(skus, min(store_skus, skus), requests, rounds, arch)
    json_out.parent.mkdir(parents=True, exist_ok=True)
    json_out.write_text(json.dumps(result, indent=2))
    Console().print_json(data=result)
