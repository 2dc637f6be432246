"""Redis unavailable for a while, on real servers: the session's broker and a Redis of the test's own that it stops
and later restarts (same port, same data directory; its data saved on shutdown, as a persistent Redis keeps it).

The first test runs ingest, the forecaster and the inventory agent as real `shelfcast` processes and shows:
- ingest does not need Redis: it keeps answering 200 and the events it accepts are on the events topic;
- the forecaster and the agent stay up while Redis is down: `/healthz` 200, `/readyz` 503 naming Redis (a readiness
  probe takes them out of rotation, the liveness probe on `/healthz` leaves them running), their APIs 503 with
  Retry-After;
- records they had consumed when Redis went away are not lost: the feature windows the forecaster took from the topic
  are forecast, the forecasts the agent took are decided, once Redis is back, and no decision is sent twice;
- after the outage they go on by themselves: windows written after it are forecast, and decided on;
- the metrics show it: the forecaster's last-forecast timestamp stalls through the outage, and the agent's decision
  latency of the batch it held through it is over 5 s.
The second test runs both loops in this process with a short `max.poll.interval.ms`, for an outage longer than it:
the consumers lose their partitions while the loops wait out Redis, and both must rejoin and go on.
The features job is not run (it takes 15-60 s to start): the tests write its windows to Redis and to the features
topic themselves, in its writer's order (Redis first, then the topic).
"""

import json
import logging
import re
import secrets
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import pandas as pd
import pytest
import redis
from confluent_kafka import OFFSET_BEGINNING, TopicPartition
from prometheus_client.parser import text_string_to_metric_families

from shelfcast.contracts import Event, FeatureWindow, Forecast, Reorder
from shelfcast.errors import InfraUnavailable
from shelfcast.infra import ManagedProcess, free_port, start_redis, start_service
from shelfcast.kafka import ensure_topics, make_consumer, make_producer, produce
from shelfcast.settings import Settings, TopicNames
from shelfcast.store import FeatureStore, connect_redis
from shelfcast_agent.decide import decision_id
from shelfcast_agent.online import AgentLoop
from shelfcast_agent.settings import AgentSettings
from shelfcast_agent.state import InventoryState, inventory_key
from shelfcast_forecaster.service import ForecastService, ScoringLoop
from shelfcast_forecaster.settings import ForecasterSettings

pytestmark = pytest.mark.integration

DAY_MS = 86_400_000
START_MS = int(pd.Timestamp("2026-03-02").value // 1_000_000)
HISTORY_DAYS = 30
HORIZON = 7
MAX_POLL_MS = 6_000  # a consumer's max.poll.interval.ms in the long-outage test (librdkafka: >= session timeout)
MAX_POLL_EXCEEDED = re.compile(r"\[(rdkafka#consumer-\d+)\].*maximum poll interval .* exceeded")
HOLD_S = 6.0  # how long the outage lasts after both services met it with records in hand
FLAT = {"p10": [2.0] * HORIZON, "p50": [5.0] * HORIZON, "p90": [8.0] * HORIZON}


def uid() -> str:
    return uuid.uuid4().hex[:8]


def demand(sku_index: int, days: int) -> list[int]:
    """Daily units, never zero (a day without sales has no window, and the newest day sets a forecast's start)."""
    return [2 + (sku_index + d) % 4 + (2 if d % 7 in (5, 6) else 0) for d in range(days)]


def daily_windows(sku: str, units: list[int]) -> list[FeatureWindow]:
    return [
        FeatureWindow(
            sku=sku,
            granularity="1d",
            window_start=START_MS + d * DAY_MS,
            window_end=START_MS + (d + 1) * DAY_MS,
            views=10 * u,
            purchases=u,
            units=u,
            revenue=4.0 * u,
            avg_price=4.0,
        )
        for d, u in enumerate(units)
    ]


def wait_for(check: Callable[[], object], timeout: float, what: str, interval: float = 0.2) -> object:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := check():
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


class TopicTail:
    """Every record of a topic from its start, read by assignment (no group join) and kept across waits."""

    def __init__(self, settings: Settings, topic: str) -> None:
        self.consumer = make_consumer(settings, f"it-tail-{uid()}")
        partitions = self.consumer.list_topics(topic, timeout=10).topics[topic].partitions
        self.consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in partitions])
        self.values: list[bytes] = []

    def until(self, done: Callable[[list[bytes]], bool], timeout: float, what: str) -> list[bytes]:
        deadline = time.monotonic() + timeout
        while not done(self.values):
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
            self.values += [m.value() for m in self.consumer.consume(500, timeout=0.2) if m.error() is None]
        return self.values

    def close(self) -> None:
        self.consumer.close()


@dataclass
class Service:
    process: ManagedProcess
    url: str

    def get(self, path: str, headers: dict[str, str] | None = None) -> httpx.Response:
        return httpx.get(f"{self.url}{path}", timeout=5, follow_redirects=True, headers=headers)

    def log_since(self, offset: int) -> str:
        return Path(self.process.log).read_text(errors="replace")[offset:]

    def log_size(self) -> int:
        return len(Path(self.process.log).read_text(errors="replace"))

    def metrics(self) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        text = self.get("/metrics/").text
        return {
            (s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text)
            for s in family.samples
        }


class RestartableRedis:
    """This test's Redis: stopped and started again on the same port and data directory."""

    def __init__(self, work_dir: Path) -> None:
        self.port, self.work_dir = free_port(), work_dir
        self.process = start_redis(self.port, work_dir)
        self.url = self.process.address

    def stop(self) -> None:
        self.process.stop()

    def restart(self) -> None:
        self.process = start_redis(self.port, self.work_dir)


@dataclass
class Stack:
    settings: Settings
    redis: RestartableRedis
    api_key: str
    ingest: Service
    forecaster: Service
    agent: Service


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small daily model (one epoch of an LSTM on a few series) published as the registry's current version."""
    from shelfcast_forecaster.registry import ModelRegistry
    from shelfcast_forecaster.train import train_and_publish

    rows = [
        {"unique_id": f"T{i}", "ds": pd.Timestamp("2026-01-01") + pd.Timedelta(days=d), "y": float(u)}
        for i in range(6)
        for d, u in enumerate(demand(i, 60))
    ]
    reg = ModelRegistry(tmp_path_factory.mktemp("registry"))
    train_and_publish(pd.DataFrame(rows), reg, HORIZON, "D", 7, "test", archs=("lstm",), epochs=1)
    return reg.root


def scoped_settings(settings: Settings, redis_url: str, state_dir: Path) -> Settings:
    """The session's broker, this test's Redis, and topics of this test only."""
    run = uid()
    names = ("events", "events_dlq", "features", "forecasts", "reorders", "prices", "receipts")
    topics = TopicNames(**{name: f"it.rel.{name}.{run}" for name in names})
    scoped = settings.model_copy(update={"redis_url": redis_url, "topics": topics, "state_dir": state_dir})
    ensure_topics(scoped)
    return scoped


def service_env(settings: Settings, registry: Path, api_key: str) -> dict[str, str]:
    run = uid()
    return {
        "SHELFCAST_KAFKA_BOOTSTRAP": settings.kafka_bootstrap,
        "SHELFCAST_KAFKA_SESSION_TIMEOUT_MS": str(settings.kafka_session_timeout_ms),
        "SHELFCAST_REDIS_URL": settings.redis_url,
        "SHELFCAST_STATE_DIR": str(settings.state_dir),
        "SHELFCAST_API_KEYS": json.dumps([api_key]),
        "SHELFCAST_READ_API_KEYS": json.dumps(sorted(settings.load_read_api_keys())),
        **{f"SHELFCAST_TOPICS__{k.upper()}": v for k, v in settings.topics.model_dump().items()},
        "SHELFCAST_FORECASTER_REGISTRY": str(registry),
        "SHELFCAST_FORECASTER_GROUP_ID": f"it-rel-forecaster-{run}",
        "SHELFCAST_FORECASTER_JIT": "false",  # no compile-and-measure at load: a faster start
        "SHELFCAST_FORECASTER_LINGER_MS": "20",
        "SHELFCAST_AGENT_GROUP_ID": f"it-rel-agent-{run}",
        "SHELFCAST_AGENT_KEYSPACE": f"it:rel:{run}",
        # No missing-forecast sweep or pending recovery during the test (each also waits out an outage, but in
        # place of the batch path): the loop meets the outage with the batch of records it has just consumed.
        "SHELFCAST_AGENT_SWEEP_INTERVAL_S": "3600",
    }


def start(name: str, args: list[str], env: dict[str, str], logs: Path) -> Service:
    url = f"http://127.0.0.1:{free_port()}"
    process = start_service(name, [*args, "--port", url.rsplit(":", 1)[1]], env, f"{url}/readyz", logs / f"{name}.log")
    return Service(process, url)


@pytest.fixture()
def stack(settings: Settings, registry: Path, tmp_path: Path) -> Iterator[Stack]:
    redis_server = RestartableRedis(tmp_path / "redis")
    scoped = scoped_settings(settings, redis_server.url, tmp_path / "state")
    api_key = secrets.token_urlsafe(16)
    env = service_env(scoped, registry, api_key)
    commands = {"ingest": ["ingest", "serve"], "forecaster": ["forecaster", "serve"], "agent": ["agent", "run"]}
    with ThreadPoolExecutor(len(commands)) as pool:  # each takes seconds to import and start: at once
        starting = [pool.submit(start, name, args, env, tmp_path / "logs") for name, args in commands.items()]
    services = [f.result() for f in starting if f.exception() is None]
    try:
        assert len(services) == len(commands), [str(f.exception()) for f in starting if f.exception()]
        yield Stack(scoped, redis_server, api_key, *services)
    finally:
        for service in services:
            service.process.stop()
        redis_server.stop()


def seed_history(settings: Settings, skus: list[str]) -> None:
    """Each SKU's daily windows in the feature store, as the features job's writer puts them there."""
    store = FeatureStore(connect_redis(settings.redis_url))
    for i, sku in enumerate(skus):
        store.write(daily_windows(sku, demand(i, HISTORY_DAYS)))


def announce_newest(settings: Settings, skus: list[str]) -> None:
    """Each SKU's newest window on the features topic, as the writer sends it after writing it to Redis."""
    producer = make_producer(settings)
    for i, sku in enumerate(skus):
        produce(producer, settings.topics.features, daily_windows(sku, demand(i, HISTORY_DAYS))[-1])
    assert producer.flush(10) == 0


def send_forecasts(settings: Settings, skus: list[str], start_ms: int) -> None:
    producer = make_producer(settings)
    for sku in skus:
        forecast = Forecast(
            sku=sku,
            issued_at=int(time.time() * 1000),
            model="lstm",
            model_version="v-test",
            horizon=HORIZON,
            freq="D",
            start=start_ms,
            quantiles=FLAT,
        )
        produce(producer, settings.topics.forecasts, forecast)
    assert producer.flush(10) == 0


def post_events(stack: Stack, skus: list[str], n: int) -> list[str]:
    """`n` purchases through ingest; returns their event ids (the answer must be 200 with all of them accepted)."""
    events = [
        Event(
            event_id=f"e-{uid()}",
            type="purchase",
            sku=skus[k % len(skus)],
            ts=START_MS,
            qty=1,
            price=4.0,
            currency="EUR",
        )
        for k in range(n)
    ]
    response = httpx.post(
        f"{stack.ingest.url}/v1/events",
        content=json.dumps([e.model_dump(mode="json") for e in events]),
        headers={"Authorization": f"Bearer {stack.api_key}", "Content-Type": "application/json"},
        timeout=10,
    )
    assert response.status_code == 200 and response.json()["accepted"] == n, response.text
    return [e.event_id for e in events]


def forecasts_for(tail: TopicTail, skus: list[str], timeout: float, what: str) -> dict[str, list[Forecast]]:
    def by_sku() -> dict[str, list[Forecast]]:
        found: dict[str, list[Forecast]] = {}
        for raw in tail.values:
            forecast = Forecast.from_bytes(raw)
            found.setdefault(forecast.sku, []).append(forecast)
        return found

    tail.until(lambda _: set(skus) <= set(by_sku()), timeout, what)
    return by_sku()


def decided_periods(settings: Settings, skus: list[str]) -> dict[str, int | None]:
    raw = connect_redis(settings.redis_url).mget([inventory_key(s) for s in skus])
    states = [InventoryState.model_validate_json(r) if r else None for r in raw]  # type: ignore[union-attr]
    return {s: state.last_decision_period_ms if state else None for s, state in zip(skus, states, strict=True)}


def wait_decided(settings: Settings, wanted: dict[str, int], timeout: float, what: str) -> None:
    def done() -> bool:
        try:
            return decided_periods(settings, list(wanted)) == wanted
        except (redis.RedisError, InfraUnavailable):  # not back yet
            return False

    wait_for(done, timeout, what)


def histogram_above(metrics: dict, name: str, le: str) -> float:
    """Observations of histogram `name` greater than the bucket bound `le`."""
    total = metrics.get((f"{name}_bucket", (("le", "+Inf"),)), 0.0)
    return total - metrics.get((f"{name}_bucket", (("le", le),)), 0.0)


def gauge(metrics: dict, name: str) -> float:
    return metrics.get((name, ()), 0.0)


def test_redis_outage_ingest_accepts_and_the_forecaster_and_agent_recover_without_loss(
    stack: Stack, read_auth: dict[str, str]
) -> None:
    run = uid()
    before, during, after = ([f"{group}{i}-{run}" for i in range(3)] for group in "ABC")
    held = [f"H{i}-{run}" for i in range(3)]  # forecasts the agent consumes while Redis is down
    settings = stack.settings
    forecasts = TopicTail(settings, settings.topics.forecasts)
    events = TopicTail(settings, settings.topics.events)
    next_day = START_MS + HISTORY_DAYS * DAY_MS  # the start of a forecast from the 30 days of history
    try:
        # before: the pipeline works (otherwise nothing below would mean anything)
        seed_history(settings, before + during)  # `during`'s windows reached Redis just before it went away
        announce_newest(settings, before)
        first = forecasts_for(forecasts, before, 60, "forecasts before the outage")
        assert {f.start for sku in before for f in first[sku]} == {next_day}
        wait_decided(settings, dict.fromkeys(before, next_day), 30, "the agent's decisions before the outage")
        last_forecast_before = gauge(stack.forecaster.metrics(), "shelfcast_forecaster_last_forecast_timestamp_seconds")
        latency_metric = "shelfcast_agent_decision_latency_seconds"
        slow_before = histogram_above(stack.agent.metrics(), latency_metric, "5.0")

        # the outage: Redis saves its data on the way down (as a persistent Redis would) and is gone
        connect_redis(settings.redis_url).config_set("save", "3600 1")
        logs_at = {"forecaster": stack.forecaster.log_size(), "agent": stack.agent.log_size()}
        stack.redis.stop()
        with pytest.raises(InfraUnavailable):
            connect_redis(settings.redis_url, timeout=1)
        # in flight when Redis went away: windows to the forecaster, forecasts to the agent (the only records on
        # their topics now, so the batch each service meets the outage with holds some of them)
        announce_newest(settings, during)
        send_forecasts(settings, held, next_day)
        for service, name in ((stack.forecaster, "forecaster"), (stack.agent, "agent")):
            wait_for(
                lambda s=service, n=name: "retrying in" in s.log_since(logs_at[n]),  # type: ignore[misc]
                30,
                f"the {name} to meet the outage with records in hand",
            )
        met_at = time.monotonic()
        accepted = post_events(stack, before, 20) + post_events(stack, during, 20)
        events.until(lambda values: set(accepted) <= {json.loads(v)["event_id"] for v in values}, 30, "the events")
        assert stack.ingest.get("/readyz").status_code == 200  # ingest never needed Redis
        for service in (stack.forecaster, stack.agent):
            assert service.process.alive(), service.log_since(0)[-2000:]
            assert service.get("/healthz").status_code == 200
            ready = service.get("/readyz")
            assert ready.status_code == 503 and ready.json()["reason"].startswith("Redis"), ready.text
        for service, path in ((stack.forecaster, "/v1/forecast/"), (stack.agent, "/v1/inventory/")):
            answer = service.get(f"{path}{before[0]}", read_auth)  # served from Redis: 503, retry later
            assert answer.status_code == 503 and answer.headers["Retry-After"] == "1", answer.text
            assert answer.json()["error"]["code"] == "redis_unavailable"
        time.sleep(max(0.0, HOLD_S - (time.monotonic() - met_at)))  # the outage lasts; this asserts nothing
        stalled = gauge(stack.forecaster.metrics(), "shelfcast_forecaster_last_forecast_timestamp_seconds")
        assert stalled == last_forecast_before, "a forecast was published while Redis was down"

        # Redis is back with its data: nothing consumed during the outage was lost, and the stream goes on
        stack.redis.restart()
        back_at = time.time()
        for service in (stack.forecaster, stack.agent):
            wait_for(lambda s=service: s.get("/readyz").status_code == 200, 30, "ready again")  # type: ignore[misc]
        recovered = forecasts_for(forecasts, during, 60, "forecasts of the windows consumed during the outage")
        assert {f.start for sku in during for f in recovered[sku]} == {next_day}
        wait_decided(settings, dict.fromkeys(held, next_day), 60, "decisions on the forecasts held through the outage")
        seed_history(settings, after)
        announce_newest(settings, after)
        forecasts_for(forecasts, after, 60, "forecasts of windows written after the outage")
        wait_decided(
            settings, dict.fromkeys(before + during + after + held, next_day), 60, "decisions on every forecast"
        )

        reorders = TopicTail(settings, settings.topics.reorders)
        ids = [Reorder.from_bytes(v).decision_id for v in reorders.until(lambda v: len(v) >= 12, 30, "12 reorders")]
        reorders.close()
        assert sorted(ids) == sorted(decision_id(s, next_day) for s in before + during + after + held)
        assert not [i for i, c in Counter(ids).items() if c > 1], "a decision was sent twice"
        forecaster_metrics, agent_metrics = stack.forecaster.metrics(), stack.agent.metrics()
        assert gauge(forecaster_metrics, "shelfcast_forecaster_last_forecast_timestamp_seconds") >= back_at
        # the decisions of the batch the agent held through the outage took longer than HOLD_S (> 5 s)
        assert histogram_above(agent_metrics, latency_metric, "5.0") > slow_before
        for service in (stack.forecaster, stack.agent):
            assert service.process.alive()
    finally:
        forecasts.close()
        events.close()


def short_poll_consumer(settings: Settings, group_id: str, **overrides: object) -> object:
    return make_consumer(settings, group_id, **{"max.poll.interval.ms": MAX_POLL_MS, **overrides})


@contextmanager
def running(target: Callable[[threading.Event], None]) -> Iterator[threading.Thread]:
    stop = threading.Event()
    thread = threading.Thread(target=target, args=(stop,), daemon=True)
    thread.start()
    try:
        yield thread
    finally:
        stop.set()
        thread.join(30)


def test_an_outage_longer_than_the_poll_interval_does_not_stop_the_loops(
    settings: Settings, registry: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A loop that waits out Redis does not poll its consumer; past `max.poll.interval.ms` (5 min by default, 6 s
    here) librdkafka leaves the group, the partitions are lost and the next commit fails. The forecaster's scoring
    loop and the agent's decision loop (in this process, on real servers, their consumers with that short interval)
    must go on: rejoin, forecast and decide what came during and after the outage, decide nothing twice."""
    redis_server = RestartableRedis(tmp_path / "redis")
    scoped = scoped_settings(settings, redis_server.url, tmp_path / "state")
    run = uid()
    config = ForecasterSettings(registry=registry, group_id=f"it-rel-f-{run}", jit=False, linger_ms=20)
    service = ForecastService(connect_redis(scoped.redis_url), config)
    assert service.reload_if_changed()
    scoring = ScoringLoop(service, scoped)
    scoring.consumer.close()
    scoring.consumer = short_poll_consumer(scoped, config.group_id)  # type: ignore[assignment]
    agent_config = AgentSettings(group_id=f"it-rel-a-{run}", keyspace=f"it:rel:{run}", sweep_interval_s=3600)
    agent = AgentLoop(connect_redis(scoped.redis_url), scoped, agent_config)
    agent.consumer.close()
    agent.consumer = short_poll_consumer(scoped, agent_config.group_id, **{"fetch.wait.max.ms": 10})  # type: ignore[assignment]
    before, during, after, held = ([f"{group}{i}-{run}" for i in range(2)] for group in "LMNO")
    next_day = START_MS + HISTORY_DAYS * DAY_MS
    forecasts = TopicTail(scoped, scoped.topics.forecasts)
    caplog.set_level(logging.WARNING)
    try:
        with running(scoring.run) as scoring_thread, running(agent.run) as agent_thread:
            seed_history(scoped, before + during)
            announce_newest(scoped, before)
            forecasts_for(forecasts, before, 60, "forecasts before the outage")
            wait_decided(scoped, dict.fromkeys(before, next_day), 30, "decisions before the outage")

            connect_redis(scoped.redis_url).config_set("save", "3600 1")
            redis_server.stop()
            announce_newest(scoped, during)  # the forecaster forecasts them; the agent decides on those forecasts
            send_forecasts(scoped, held, next_day)  # and a batch for the agent to hold through the outage
            time.sleep(MAX_POLL_MS / 1000 + 4)  # the outage outlasts the poll interval; this asserts nothing
            redis_server.restart()

            forecasts_for(forecasts, during, 60, "forecasts of the windows consumed during the outage")
            wait_decided(scoped, dict.fromkeys(during + held, next_day), 60, "decisions on them and the held ones")
            seed_history(scoped, after)
            announce_newest(scoped, after)
            forecasts_for(forecasts, after, 60, "forecasts of windows written after the outage")
            wait_decided(scoped, dict.fromkeys(after, next_day), 60, "decisions on them")
            assert scoring_thread.is_alive() and agent_thread.is_alive()
        exceeded = {m.group(1) for r in caplog.records if (m := MAX_POLL_EXCEEDED.search(r.getMessage()))}
        assert len(exceeded) == 2, f"both consumers must have left their group: {exceeded}"
        reorders = TopicTail(scoped, scoped.topics.reorders)
        ids = [Reorder.from_bytes(v).decision_id for v in reorders.until(lambda v: len(v) >= 8, 30, "8 reorders")]
        reorders.close()
        assert sorted(ids) == sorted(decision_id(s, next_day) for s in before + during + after + held)
    finally:
        forecasts.close()
        redis_server.stop()
