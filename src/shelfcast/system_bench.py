"""Benchmarks of the whole pipeline on one machine (`shelfcast.pipeline`), writing JSON.

- `shelfcast bench e2e`: purchase event -> reorder event latency, p50/p99, at a fixed load (the storefront
  simulator's catalogue, one simulated day every `--seconds-per-day`). The daily window is the baseline: a purchase
  waits up to one window for it to close, so the target is p99 <= 2 s + the window's wall length.
- `shelfcast bench soak`: the same pipeline for `--minutes` at a fixed rate, sampling every service's resident memory
  (its process and children: the features job runs a JVM); memory is flat when its median over the last fifth of
  the run is within `FLAT_GROWTH` of its median over the second fifth (the first fifth is warm-up).
"""

import json
import math
import threading
import time
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import psutil
import typer
from rich.console import Console

from shelfcast import trace
from shelfcast.demo import drive, observe, summarise
from shelfcast.pipeline import Pipeline, running_pipeline
from shelfcast.settings import get_settings

FLAT_GROWTH = 1.10
console = Console()


def bench_e2e(
    json_out: Annotated[Path, typer.Option("--json", help="Write the results here.")],
    skus: Annotated[int, typer.Option(min=1, max=10_000)] = 50,
    days: Annotated[int, typer.Option(min=3, max=365)] = 10,
    seconds_per_day: Annotated[float, typer.Option(min=1, max=600, help="The daily window's wall length.")] = 5.0,
) -> None:
    """Purchase -> reorder latency through the whole pipeline, p50/p99, against 2 s + the window."""
    with running_pipeline(get_settings(), skus, console, name="bench-e2e") as pipeline:
        run, _ = drive(pipeline, skus, days, seconds_per_day, console)
        observed = observe(pipeline.settings, skus, days, console)
    figures = summarise(observed, trace.latencies_ms(observed), seconds_per_day)
    latency = figures["latency"]
    p99 = latency["purchase_to_reorder_s"]["p99"]
    result = {
        "bench": "e2e",
        "load": {**run, "events": figures["events"]["sent"], "events_per_s": _rate(figures, run)},
        "latency": latency,
        "p99_over_target": round(p99 / latency["target_p99_s"], 3) if p99 is not None else None,
        "trace": figures["trace"],
    }
    _write(json_out, result)


def bench_soak(
    json_out: Annotated[Path, typer.Option("--json", help="Write the results here (and a memory plot beside).")],
    minutes: Annotated[float, typer.Option(min=1, max=240)] = 10.0,
    skus: Annotated[int, typer.Option(min=1, max=10_000)] = 100,
    seconds_per_day: Annotated[float, typer.Option(min=1, max=600)] = 5.0,
    sample_every_s: Annotated[float, typer.Option(min=0.5, max=60)] = 5.0,
) -> None:
    """The pipeline at a fixed event rate for `--minutes`: is every service's memory flat?"""
    days = max(3, math.ceil(minutes * 60 / seconds_per_day))
    with running_pipeline(get_settings(), skus, console, name="bench-soak") as pipeline:
        sampler = MemorySampler(pipeline, sample_every_s)
        sampler.start()
        try:
            run, windows = drive(pipeline, skus, days, seconds_per_day, console)
        finally:
            sampler.stop()
        alive = {s.name: s.alive() for s in pipeline.services}
    memory = {name: memory_trend(samples) for name, samples in sampler.samples.items()}
    result = {
        "bench": "soak",
        "load": {**run, "windows_in_redis": windows, "daily_windows_possible": skus * days},
        "services_alive_at_end": alive,
        "memory": memory,
        "cpu_cores": sampler.cpu_cores(),
        "flat": all(m["flat"] for m in memory.values()),
        "flat_means": f"median RSS of the last fifth <= {FLAT_GROWTH} x that of the second fifth",
    }
    _plot_memory(sampler.samples, json_out.with_suffix(".png"))
    _write(json_out, result)


class MemorySampler:
    """Every `every_s`, the resident memory (MB) and CPU time (s) of each service process tree, in a thread of its
    own."""

    def __init__(self, pipeline: Pipeline, every_s: float) -> None:
        self.processes = {s.name: psutil.Process(s.pid) for s in pipeline.services}
        self.every_s = every_s
        self.samples: dict[str, list[tuple[float, float]]] = {name: [] for name in self.processes}
        self.cpu: dict[str, list[tuple[float, float]]] = {name: [] for name in self.processes}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._started = time.monotonic()

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(self.every_s):
            at = time.monotonic() - self._started
            for name, process in self.processes.items():
                usage = _tree_usage(process)
                if usage is not None:
                    self.samples[name].append((at, usage[0] / 2**20))
                    self.cpu[name].append((at, usage[1]))

    def cpu_cores(self) -> dict[str, float]:
        """Mean CPU cores each service tree used between the first and the last sample."""
        return {
            name: round((points[-1][1] - points[0][1]) / (points[-1][0] - points[0][0]), 2)
            for name, points in self.cpu.items()
            if len(points) > 1
        }


def _tree_usage(process: psutil.Process) -> tuple[int, float] | None:
    """Resident bytes and CPU seconds (user + system) of a process and its children."""
    try:
        tree = [process, *process.children(recursive=True)]
        return sum(p.memory_info().rss for p in tree), sum(sum(p.cpu_times()[:2]) for p in tree)
    except psutil.NoSuchProcess:
        return None


def memory_trend(samples: list[tuple[float, float]]) -> dict[str, Any]:
    """Warm (median of the second fifth), end (median of the last fifth), their ratio, the peak, and the slope over
    the second half (MB per minute, least squares)."""
    if len(samples) < 5:
        return {"samples": len(samples), "flat": False, "why": "too few samples"}
    at, mb = (np.array(column, dtype=float) for column in zip(*samples, strict=True))
    fifth = len(mb) // 5
    warm, end = float(np.median(mb[fifth : 2 * fifth])), float(np.median(mb[-fifth:]))
    half = len(mb) // 2
    slope = float(np.polyfit(at[half:] / 60, mb[half:], 1)[0])
    return {
        "samples": len(mb),
        "warm_mb": round(warm, 1),
        "end_mb": round(end, 1),
        "peak_mb": round(float(mb.max()), 1),
        "growth": round(end / warm, 3),
        "slope_mb_per_min": round(slope, 2),
        "flat": end <= FLAT_GROWTH * warm,
    }


def _plot_memory(samples: dict[str, list[tuple[float, float]]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(10, 4), layout="constrained")
    for name, points in samples.items():
        if points:
            ax.plot([t / 60 for t, _ in points], [mb for _, mb in points], label=name)
    ax.set_xlabel("minutes")
    ax.set_ylabel("resident memory, MB (process tree)")
    ax.legend(fontsize=8)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)


def _rate(figures: dict, run: dict) -> float:
    return round(figures["events"]["sent"] / run["simulate_seconds"], 1) if run["simulate_seconds"] else 0.0


def _write(path: Path, result: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2))
    console.print_json(json.dumps(result))
    console.print(f"wrote {path}")
