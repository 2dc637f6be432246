"""`shelfcast bench agent`: the inventory agent measured on a real broker and Redis (its own embedded ones).

Sections of the JSON (each a function returning a dict; a section another command writes is kept when the file
already exists, so the sections can come from separate runs):

- ``online``: `online_decisions_per_second`. ``--periods`` rounds; in each, one period of ``--skus`` forecasts (14
  steps of p10/p50/p90) with ``--events`` purchases per SKU among them is written, then a decision loop
  (`online.AgentLoop`, the one `shelfcast agent run` runs; a fresh consumer group each round, its offsets and the
  inventory carried over in Redis) decides it, timed from its partition assignment until every record is applied
  and every decision acknowledged by the broker. Decisions/s counts the SKU-periods decided (orders and holds;
  about half order here). Rounds keep one period per SKU in a batch: from a backlog of several periods the loop
  rightly decides only the newest one a batch holds. Then ``--latency-samples`` single forecasts, one at a time,
  with the loop idle: from producing the forecast to its reorder acknowledged by the broker, p50/p99.
- ``training``: `training_to_quality`. The DQN trained as `shelfcast agent train` trains it (``--train-steps``
  periods on the default suite plus random instances), then evaluated on the suite as `shelfcast agent evaluate`
  does (10 seeds): wall time in all, up to the validation whose weights were kept, and the quality reached there
  (the issue's bar, and how often the DQN ordered other than its classical anchor). Peak RSS is the process's.
"""

from __future__ import annotations

import json
import os
import platform
import resource
import statistics
import tempfile
import threading
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Annotated, Any, cast

import numpy as np
import redis
import typer
from rich.console import Console

from shelfcast.contracts import Event, Forecast
from shelfcast.infra import free_port, start_kafka, start_redis
from shelfcast.kafka import ensure_topics, make_producer, produce
from shelfcast.settings import Settings, TopicNames
from shelfcast.store import connect_redis
from shelfcast_agent.decide import OrderPolicy, decision_id
from shelfcast_agent.online import AgentLoop, load_policy
from shelfcast_agent.settings import AgentSettings, SkuCatalog
from shelfcast_agent.state import Keys

DAY_MS = 86_400_000
ORIGIN_MS = 1_780_000_000_000 // DAY_MS * DAY_MS
HORIZON = 14


def _forecast(sku: str, level: float, start: int, rng: np.random.Generator) -> Forecast:
    p50 = np.maximum(rng.normal(level, 0.2 * level, HORIZON), 0.0)
    p10, p90 = 0.5 * p50, 1.6 * p50 + 1.0
    return Forecast(
        sku=sku,
        issued_at=int(time.time() * 1000),
        model="bench",
        model_version="v1",
        horizon=HORIZON,
        freq="D",
        start=start,
        quantiles={"p10": p10.round(2).tolist(), "p50": p50.round(2).tolist(), "p90": p90.round(2).tolist()},
    )


def _applied(client: redis.Redis, keyspace: str) -> Counter[str]:
    """Records applied per topic: the sum of the stored next offsets (partitions start at 0 on a fresh broker)."""
    applied: Counter[str] = Counter()
    for key in client.scan_iter(match=f"{keyspace}:offset:*"):
        topic = key.decode().split(":offset:")[1].rsplit(":", 1)[0]
        applied[topic] += int(cast(bytes, client.get(key)))
    return applied


def _decide_round(
    settings: Settings,
    config: AgentSettings,
    catalog: SkuCatalog,
    policy: OrderPolicy | None,
    client: redis.Redis,
    keys: Keys,
    produced: Counter[str],
) -> tuple[AgentLoop, float]:
    """A fresh decision loop (a group of its own; the offsets are in Redis) until everything produced is applied
    and every decision acknowledged; seconds from its partition assignment to then."""
    loop = AgentLoop(
        client,
        settings,
        config.model_copy(update={"group_id": f"{config.group_id}-{uuid.uuid4().hex[:6]}"}),
        catalog,
        policy,
    )
    stop = threading.Event()
    thread = threading.Thread(target=loop.run, args=(stop,), name="decisions", daemon=True)
    thread.start()
    try:
        if not loop.ready.wait(60):
            raise RuntimeError("the decision loop got no partitions within 60 s")
        started = time.perf_counter()
        deadline = time.monotonic() + 900
        while _applied(client, config.keyspace) != produced or client.zcard(keys.pending):
            if time.monotonic() > deadline or not thread.is_alive():
                raise RuntimeError("the round was not decided within 15 minutes")
            time.sleep(0.025)  # the loop shares this process's GIL: poll gently
        return loop, time.perf_counter() - started
    finally:
        stop.set()
        thread.join(30)


def online_decisions_per_second(
    settings: Settings,
    skus: int = 2_000,
    periods: int = 5,
    events: int = 2,
    max_batch: int = 2_000,
    latency_samples: int = 50,
    policy: OrderPolicy | None = None,
) -> dict[str, Any]:
    """The ``online`` section (module docstring). `settings` points at a broker and a Redis; topics and keys are
    made fresh for the run."""
    run = uuid.uuid4().hex[:8]
    topics = TopicNames(
        **{name: f"bench.{name}.{run}" for name in TopicNames.model_fields if name != "features"}  # type: ignore[arg-type]
    )
    settings = settings.model_copy(update={"topics": topics})
    ensure_topics(settings, [v for k, v in topics.model_dump().items() if k != "features"])
    names = [f"B{i:06d}" for i in range(skus)]
    pricing = {"base_price": 10.0, "elasticity": 1.5, "min_price": 7.0, "max_price": 12.0}
    catalog = SkuCatalog(
        {"lead_time": 2, "initial_on_hand": 10, "unit_cost": 1.0}, {s: {"pricing": pricing} for s in names[::10]}
    )
    config = AgentSettings(
        keyspace=f"bench:agent:{run}",
        group_id=f"bench-agent-{run}",
        max_batch=max_batch,
        missing_forecast_grace_s=3_600,
    )
    client = connect_redis(settings.redis_url)
    keys = Keys(config.keyspace)
    rng = np.random.default_rng(3)
    levels = rng.lognormal(1.0, 1.0, skus)
    producer = make_producer(settings, **{"queue.buffering.max.messages": 1_000_000})
    produced: Counter[str] = Counter()
    rounds: list[dict[str, float]] = []
    made = sent = 0
    for period in range(periods):
        start = ORIGIN_MS + period * DAY_MS
        for sku, level in zip(names, levels, strict=True):
            for n in range(events):
                qty = int(rng.poisson(level / max(events, 1)) + 1)
                event = Event(
                    event_id=f"{sku}-{period}-{n}",
                    type="purchase",
                    sku=sku,
                    ts=start,
                    qty=qty,
                    price=10,
                    currency="EUR",
                )
                produce(producer, topics.events, event)
            produce(producer, topics.forecasts, _forecast(sku, float(level), start, rng))
            produced[topics.events] += events
            produced[topics.forecasts] += 1
            producer.poll(0)
        producer.flush(120)
        loop, seconds = _decide_round(settings, config, catalog, policy, client, keys, produced)
        rounds.append({"seconds": round(seconds, 3), "decisions_per_s": round(loop.decisions_made / seconds, 1)})
        made, sent = made + loop.decisions_made, sent + loop.decisions_sent
    seconds = sum(r["seconds"] for r in rounds)

    loop = AgentLoop(
        client, settings, config.model_copy(update={"group_id": f"{config.group_id}-live"}), catalog, policy
    )
    stop = threading.Event()
    thread = threading.Thread(target=loop.run, args=(stop,), name="decisions", daemon=True)
    thread.start()
    latencies = []
    try:
        if not loop.ready.wait(60):
            raise RuntimeError("the decision loop got no partitions within 60 s")
        live_start = ORIGIN_MS + (periods + 1) * DAY_MS
        for i in range(latency_samples):
            sku = f"L{i:05d}"  # a new SKU with nothing on hand: it orders
            wanted = decision_id(sku, live_start)
            produced_at = time.perf_counter()
            produce(producer, topics.forecasts, _forecast(sku, 5.0, live_start, rng))
            producer.flush(10)
            while True:
                check = client.pipeline(transaction=False)
                check.exists(keys.decision(wanted))
                check.zscore(keys.pending, wanted)
                recorded, pending = check.execute()
                if recorded and pending is None:  # recorded, and no longer waiting for the broker
                    break
                if time.perf_counter() - produced_at > 30:
                    raise RuntimeError(f"no decision for {sku} within 30 s")
                time.sleep(0.0005)
            latencies.append(time.perf_counter() - produced_at)
    finally:
        stop.set()
        thread.join(30)
    ms = sorted(1000 * x for x in latencies)
    return {
        "policy": loop.policy_name,
        "skus": skus,
        "periods": periods,
        "purchases_per_sku_and_period": events,
        "max_batch": max_batch,
        "decisions": made,
        "records": skus * periods * (events + 1),
        "decision_records_published": sent,
        "seconds": round(seconds, 3),
        "decisions_per_s": round(made / seconds, 1),
        "records_per_s": round(skus * periods * (events + 1) / seconds, 1),
        "rounds": rounds,
        "single_forecast_to_acked_decision_ms": {
            "samples": len(ms),
            "p50": round(statistics.median(ms), 2) if ms else None,
            "p99": round(ms[min(len(ms) - 1, int(0.99 * len(ms)))], 2) if ms else None,
        },
    }


def training_to_quality(steps: int, seed: int, eval_seeds: int, console: Console) -> dict[str, Any]:
    """The ``training`` section (module docstring)."""
    from shelfcast_agent.cli import train_with_progress
    from shelfcast_agent.dqn import TrainConfig
    from shelfcast_agent.evaluate import Departures, default_policies, evaluate, headline, summary
    from shelfcast_agent.instances import DEFAULT_SUITE, load_instances

    suite = load_instances(DEFAULT_SUITE)
    config = TrainConfig(steps=steps, validate_every=min(TrainConfig.validate_every, steps))
    result = train_with_progress(suite, config, seed, console)
    kept = result.policy.card["validation"]
    started = time.perf_counter()
    departures = Departures()
    with console.status(f"evaluating the trained DQN on {len(suite)} instances x {eval_seeds} seeds"):
        table = summary(evaluate(suite, default_policies(result.policy, departures), seeds=eval_seeds))
    return {
        "steps": steps,
        "random_instances": config.random_instances,
        "seed": seed,
        "train_seconds": round(result.seconds, 1),
        "seconds_to_kept_weights": kept.get("seconds"),
        "kept_weights_at_step": kept["step"],
        "validation_mean_gap_vs_anchor_pct": kept["validation_mean_gap_pct"],
        "margin": kept["margin"],
        "evaluation": headline(table),
        "dqn_departures_pct": departures.pct,
        "evaluate_seconds": round(time.perf_counter() - started, 1),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }


def machine() -> dict[str, Any]:
    return {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()}


def write_sections(path: Path, sections: dict[str, Any]) -> dict[str, Any]:
    """Merge `sections` into the JSON at `path` (other sections already there are kept) and write it."""
    existing: dict[str, Any] = {}
    if path.exists():
        try:
            existing = json.loads(path.read_text())
        except json.JSONDecodeError:
            existing = {}
    result = {**existing, "machine": machine(), **sections}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2) + "\n")
    return result


def bench_agent(
    json_out: Annotated[Path, typer.Option("--json", help="Where to write the results (other sections are kept).")],
    skus: Annotated[int, typer.Option(min=1, help="SKUs in the backlog.")] = 2_000,
    periods: Annotated[int, typer.Option(min=1, help="Decision periods in the backlog.")] = 5,
    events: Annotated[int, typer.Option(min=0, help="Purchases per SKU and period.")] = 2,
    max_batch: Annotated[int, typer.Option(min=1, help="Records per state transaction.")] = 2_000,
    latency_samples: Annotated[int, typer.Option(min=0, help="Single forecasts timed end to end.")] = 50,
    model_dir: Annotated[Path | None, typer.Option(help="Decide with this trained DQN.")] = None,
    online: Annotated[bool, typer.Option(help="Measure the online loop.")] = True,
    train_steps: Annotated[int, typer.Option(min=0, help="Train the DQN this long and evaluate it (0: skip).")] = 8_000,
    train_seed: Annotated[int, typer.Option()] = 0,
    eval_seeds: Annotated[int, typer.Option(min=2, help="Evaluation seeds for the trained DQN.")] = 10,
) -> None:
    """Online decisions/s of the agent's decision loop on a real broker and Redis, single-decision latency, and the
    DQN's training wall time to the quality it reaches on the default suite."""
    policy = load_policy(AgentSettings(model_dir=model_dir)) if model_dir is not None else None
    if model_dir is not None and policy is None:
        raise typer.BadParameter(f"no DQN could be loaded from {model_dir}", param_hint="--model-dir")
    console = Console()
    sections: dict[str, Any] = {}
    if train_steps >= 2:  # first, so that its peak RSS is its own
        sections["training"] = training_to_quality(train_steps, train_seed, eval_seeds, console)
        write_sections(json_out, sections)
    if online:
        sections["online"] = _online_section(skus, periods, events, max_batch, latency_samples, policy)
    result = write_sections(json_out, sections)
    console.print_json(data=result)


def _online_section(
    skus: int, periods: int, events: int, max_batch: int, latency_samples: int, policy: OrderPolicy | None
) -> dict[str, Any]:
    """`online_decisions_per_second` on an embedded broker and Redis of its own."""
    with tempfile.TemporaryDirectory(prefix="shelfcast-bench-agent-") as tmp:
        root = Path(tmp)
        broker, redis_server = start_kafka(free_port(), root), start_redis(free_port(), root)
        try:
            settings = Settings(kafka_bootstrap=broker.address, redis_url=redis_server.address, state_dir=root)
            return online_decisions_per_second(settings, skus, periods, events, max_batch, latency_samples, policy)
        finally:
            broker.stop()
            redis_server.stop()


if __name__ == "__main__":
    typer.run(bench_agent)
