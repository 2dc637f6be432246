"""`shelfcast agent replay` on the real broker and Redis: it reads the forecasts and reorders topics and the 1d
windows named by the usual environment, skips records that do not parse, and gives the same replay as the pure
`report` on the records written."""

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from shelfcast.contracts import FeatureWindow, Forecast, Reorder
from shelfcast.kafka import ensure_topics, make_producer, produce
from shelfcast.settings import Settings, TopicNames
from shelfcast.store import FeatureStore, connect_redis
from shelfcast_agent.replay import DAY_MS, SkuInputs, report
from shelfcast_agent.settings import SkuCatalog

pytestmark = pytest.mark.integration

D0 = 1_780_000_000_000 // DAY_MS * DAY_MS
FLAT = {"p10": [2.0] * 7, "p50": [5.0] * 7, "p90": [8.0] * 7}
PARAMS = {"defaults": {"lead_time": 1, "holding_cost": 0.5, "shortage_cost": 3.0, "order_cost": 1.0}}


def uid() -> str:
    return uuid.uuid4().hex[:8]


def window(sku: str, day: int, units: int) -> FeatureWindow:
    start = D0 + day * DAY_MS
    return FeatureWindow(sku=sku, granularity="1d", window_start=start, window_end=start + DAY_MS, units=units)


def forecast(sku: str, day: int) -> Forecast:
    return Forecast(
        sku=sku, issued_at=D0, model="lstm", model_version="v1", horizon=7, freq="D", start=D0 + day * DAY_MS,
        quantiles=FLAT,
    )  # fmt: skip


def reorder(sku: str, day: int, qty: int) -> Reorder:
    return Reorder(
        decision_id=f"{sku}:{D0 + day * DAY_MS}", sku=sku, qty=qty, issued_at=D0, policy="capped-base-stock",
        policy_version="1", inventory_position=0.0, reason="test", expected_at=D0 + (day + 1) * DAY_MS,
    )  # fmt: skip


def test_replay_reads_the_topics_and_windows_and_matches_the_pure_report(settings: Settings, tmp_path: Path) -> None:
    run = uid()
    topics = TopicNames(forecasts=f"it.forecasts.{run}", reorders=f"it.reorders.{run}")
    scoped = settings.model_copy(update={"topics": topics})
    ensure_topics(scoped, [topics.forecasts, topics.reorders])
    skus = [f"IT-REPLAY-{run}-{n}" for n in (1, 2)]
    demand = {skus[0]: [4, 6, 5, 7, 3, 6], skus[1]: [1, 0, 2, 0, 1, 3]}
    inputs = {
        sku: SkuInputs(
            windows=[window(sku, day, units) for day, units in enumerate(demand[sku])],
            forecasts=[forecast(sku, day) for day in range(1, 6)],
            reorders=[reorder(sku, 1, 12), reorder(sku, 3, 6)] if sku == skus[0] else [],
        )
        for sku in skus
    }
    FeatureStore(connect_redis(settings.redis_url)).write(w for i in inputs.values() for w in i.windows)
    producer = make_producer(scoped)
    for i in inputs.values():
        for record in [*i.forecasts, *i.reorders]:
            produce(producer, topics.forecasts if isinstance(record, Forecast) else topics.reorders, record)
    produce(producer, topics.reorders, reorder(skus[0], 1, 12))  # sent twice: delivered and counted once
    producer.produce(topics.forecasts, value=b"{not json", key=b"x")
    assert producer.flush(10) == 0

    params = tmp_path / "skus.json"
    params.write_text(json.dumps(PARAMS))
    env = {
        **os.environ,
        "SHELFCAST_KAFKA_BOOTSTRAP": settings.kafka_bootstrap,
        "SHELFCAST_REDIS_URL": settings.redis_url,
        "SHELFCAST_KAFKA_SESSION_TIMEOUT_MS": "6000",
        "SHELFCAST_TOPICS__FORECASTS": topics.forecasts,
        "SHELFCAST_TOPICS__REORDERS": topics.reorders,
        "SHELFCAST_AGENT_SKU_PARAMS": str(params),
    }
    out = tmp_path / "replay.json"
    args = ["agent", "replay", "--json", str(out), "--max-skus-series", "1", "--quiet", "2"]
    done = subprocess.run([sys.executable, "-m", "shelfcast", *args], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "cost ratio agent / capped base-stock" in done.stdout

    payload = json.loads(out.read_text())
    expected = report(inputs, SkuCatalog(PARAMS["defaults"]), max_series=1)
    assert (payload["days"], payload["skus"], payload["skipped_records"]) == (6, 2, 1)
    assert payload["totals"] == expected["totals"]
    assert payload["series"] == expected["series"] and list(payload["series"]) == [skus[0]]
    agent = payload["totals"]["agent"]
    assert agent["orders"] == 2 and agent["units_demanded"] == sum(map(sum, demand.values()))
    assert payload["series"][skus[0]]["agent"]["received"] == [0, 0, 12, 0, 6, 0]
    assert payload["lead_time_source"].startswith("agent: each reorder's expected_at")
