"""The forecaster service on the real broker and Redis: HTTP API, cache, fallback, hot reload, scoring loop."""

import os
import shutil
import signal
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from confluent_kafka import Consumer, Message
from fastapi.testclient import TestClient
from prometheus_client import REGISTRY

from shelfcast.contracts import DeadLetter, FeatureWindow, Forecast
from shelfcast.infra import free_port, start_kafka
from shelfcast.kafka import ensure_topics, make_consumer, make_producer, produce
from shelfcast.settings import Settings, TopicNames
from shelfcast.store import FeatureStore, connect_redis
from shelfcast_forecaster.app import create_app
from shelfcast_forecaster.live_quality import score_windows
from shelfcast_forecaster.registry import SAVED_MODEL, ModelRegistry
from shelfcast_forecaster.scoring import MIN_HISTORY
from shelfcast_forecaster.service import BatchLedger, ForecastService, ScoringLoop, cache_key
from shelfcast_forecaster.settings import ForecasterSettings
from shelfcast_forecaster.train import train_and_publish

pytestmark = pytest.mark.integration

DAY_MS = 86_400_000
START_MS = int(pd.Timestamp("2026-03-02").value // 1_000_000)
H = 7
EXOGENOUS = ("views", "avg_price")


def daily_demand(sku_index: int, days: int) -> list[int]:
    return [(sku_index + d) % 5 + (3 if d % 7 in (5, 6) else 0) for d in range(days)]


def windows(sku: str, units: list[int], first_day: int = 0) -> list[FeatureWindow]:
    return [
        FeatureWindow(
            sku=sku,
            granularity="1d",
            window_start=START_MS + (first_day + d) * DAY_MS,
            window_end=START_MS + (first_day + d + 1) * DAY_MS,
            views=10 * u + 3,
            purchases=u,
            units=u,
            revenue=4.0 * u,
            avg_price=4.0,
        )
        for d, u in enumerate(units)
        if u
    ]


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> ModelRegistry:
    """A small model on 20 daily series, views and price as inputs beside demand, published as current."""
    rows = [
        {
            "unique_id": f"T{i}",
            "ds": pd.Timestamp("2026-01-01") + pd.Timedelta(days=d),
            "y": float(u),
            "views": 10.0 * u + 3,
            "avg_price": 4.0,
        }
        for i in range(20)
        for d, u in enumerate(daily_demand(i, 60))
    ]
    reg = ModelRegistry(tmp_path_factory.mktemp("registry"))
    train_and_publish(pd.DataFrame(rows), reg, H, "D", 7, "test", archs=("lstm",), epochs=2, exogenous=EXOGENOUS)
    assert reg.card(str(reg.current_version())).spec.exogenous == EXOGENOUS
    return reg


@pytest.fixture()
def run_settings(settings: Settings) -> Settings:
    """Topics of this test only, so the loop sees no other test's windows."""
    run = uuid.uuid4().hex[:8]
    topics = TopicNames(features=f"it.features.{run}", forecasts=f"it.forecasts.{run}", events_dlq=f"it.dlq.{run}")
    configured = settings.model_copy(update={"topics": topics})
    ensure_topics(configured, [topics.features, topics.forecasts, topics.events_dlq])
    return configured


@pytest.fixture()
def config(registry: ModelRegistry) -> ForecasterSettings:
    return ForecasterSettings(registry=registry.root, group_id=f"it-{uuid.uuid4().hex[:6]}", linger_ms=20)


@pytest.fixture()
def client(run_settings: Settings, config: ForecasterSettings, read_auth: dict[str, str]) -> Iterator[TestClient]:
    with TestClient(create_app(run_settings, config, stream=False), headers=read_auth) as test_client:
        yield test_client


def seed_store(settings: Settings, skus: dict[str, list[int]]) -> None:
    store = FeatureStore(connect_redis(settings.redis_url))
    for sku, units in skus.items():
        store.write(windows(sku, units))


@contextmanager
def scoring_loop(service: ForecastService, settings: Settings) -> Iterator[ScoringLoop]:
    """The stream scoring loop running in a thread while the block runs; stopped and joined after it."""
    loop = ScoringLoop(service, settings)
    stop = threading.Event()
    thread = threading.Thread(target=loop.run, args=(stop,))
    thread.start()
    try:
        yield loop
    finally:
        stop.set()
        thread.join(30)


def test_get_scores_from_history_then_serves_from_cache(client: TestClient, run_settings: Settings) -> None:
    sku = f"F-{uuid.uuid4().hex[:8]}"
    seed_store(run_settings, {sku: daily_demand(3, 40)})
    first = client.get(f"/v1/forecast/{sku}")
    assert first.status_code == 200, first.text
    forecast = Forecast.model_validate(first.json())
    assert forecast.sku == sku and not forecast.fallback and forecast.model == "lstm"
    assert forecast.horizon == H and forecast.freq == "D"
    assert forecast.start == START_MS + 40 * DAY_MS  # the day after the newest window
    assert len(forecast.quantiles["p50"]) == H
    again = client.get(f"/v1/forecast/{sku}")
    assert again.json()["issued_at"] == forecast.issued_at  # from the cache, not rescored
    assert connect_redis(run_settings.redis_url).get(cache_key(sku)) is not None


def test_unknown_and_invalid_skus(client: TestClient) -> None:
    unknown = client.get(f"/v1/forecast/NOPE-{uuid.uuid4().hex[:8]}")
    assert unknown.status_code == 404
    assert unknown.json()["error"]["code"] == "unknown_sku"
    assert "no 1d demand history" in unknown.json()["error"]["message"]
    assert client.get("/v1/forecast/bad%20sku").status_code == 422


def test_short_history_gets_the_flagged_fallback(client: TestClient, run_settings: Settings) -> None:
    sku = f"S-{uuid.uuid4().hex[:8]}"
    seed_store(run_settings, {sku: [2, 0, 4]})
    assert MIN_HISTORY > 3
    body = client.get(f"/v1/forecast/{sku}").json()
    assert body["fallback"] is True and body["model"] == "poisson-fallback"
    assert body["quantiles"]["p10"][0] <= body["quantiles"]["p50"][0] <= body["quantiles"]["p90"][0]
    assert body["quantiles"]["p90"][0] > 0


def test_batch_lists_unknown_skus_and_limits_size(client: TestClient, run_settings: Settings) -> None:
    known = [f"B{i}-{uuid.uuid4().hex[:6]}" for i in range(3)]
    seed_store(run_settings, {sku: daily_demand(i, 30) for i, sku in enumerate(known)})
    missing = f"M-{uuid.uuid4().hex[:6]}"
    response = client.post("/v1/forecast", json={"skus": [*known, missing, known[0]]})
    assert response.status_code == 200, response.text
    assert [f["sku"] for f in response.json()["forecasts"]] == known
    assert response.json()["unknown"] == [missing]
    too_many = client.post("/v1/forecast", json={"skus": [f"X{i}" for i in range(1_001)]})
    assert too_many.status_code == 413
    invalid = client.post("/v1/forecast", json={"skus": ["ok", "no spaces"]})
    assert invalid.status_code == 422
    assert "skus" in invalid.text


def test_hot_reload_follows_the_current_pointer(
    client: TestClient, registry: ModelRegistry, config: ForecasterSettings
) -> None:
    ready = client.get("/readyz").json()
    old = registry.card(ready["model_version"])
    new_version = f"{old.version}-copy-{uuid.uuid4().hex[:4]}"
    source = registry.path(old.version) / SAVED_MODEL
    registry.publish(lambda target: shutil.copytree(source, target), old.model_copy(update={"version": new_version}))
    deadline = time.monotonic() + 10 * config.reload_seconds
    while client.get("/readyz").json()["model_version"] != new_version:
        assert time.monotonic() < deadline, "the server did not reload the new current version"
        time.sleep(0.2)
    # a version the stream cannot feed (monthly, but the server reads daily windows) is refused; the old one serves
    monthly = f"{old.version}-monthly-{uuid.uuid4().hex[:4]}"
    spec = old.spec.model_copy(update={"freq": "MS"})
    registry.publish(
        lambda target: shutil.copytree(source, target), old.model_copy(update={"version": monthly, "spec": spec})
    )
    time.sleep(3 * config.reload_seconds)
    assert client.get("/readyz").json()["model_version"] == new_version
    assert 'shelfcast_forecaster_model_reloads_total{outcome="failed"}' in client.get("/metrics/").text
    registry.promote(old.version)  # leave the module's registry as it was


class ConsumerThatBreaks:
    """The real consumer, except that `consume` raises once ``broken`` is set (a fatal client error, a bug)."""

    def __init__(self, consumer: Consumer, broken: threading.Event) -> None:
        self.consumer, self.broken = consumer, broken

    def consume(self, *args: Any, **kwargs: Any) -> list[Any]:
        if self.broken.is_set():
            raise RuntimeError("consumer broke")
        return self.consumer.consume(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.consumer, name)


def test_healthz_and_readyz_answer_503_once_the_scoring_loop_died(
    run_settings: Settings,
    config: ForecasterSettings,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    broken = threading.Event()

    class BreakingLoop(ScoringLoop):
        def __init__(self, service: ForecastService, settings: Settings) -> None:
            super().__init__(service, settings)
            self.consumer = ConsumerThatBreaks(self.consumer, broken)  # type: ignore[assignment]

    monkeypatch.setattr("shelfcast_forecaster.app.ScoringLoop", BreakingLoop)
    up = "shelfcast_forecaster_scoring_loop_up"
    with TestClient(create_app(run_settings, config, stream=True)) as client:
        ready = client.get("/readyz")
        assert ready.status_code == 200, ready.text
        assert client.get("/healthz").json() == {"status": "ok"}
        assert REGISTRY.get_sample_value(up) == 1
        broken.set()
        thread: threading.Thread = client.app.state.loop_thread  # type: ignore[attr-defined]
        thread.join(10)
        assert not thread.is_alive()
        dead = client.get("/readyz")
        assert dead.status_code == 503
        assert dead.json() == {"status": "unavailable", "reason": "scoring loop stopped: RuntimeError: consumer broke"}
        health = client.get("/healthz")  # the orchestrator restarts the process
        assert health.status_code == 503
        assert health.json() == {"status": "dead", "reason": "scoring loop stopped: RuntimeError: consumer broke"}
        assert REGISTRY.get_sample_value(up) == 0
        assert f"{up} 0.0" in client.get("/metrics").text
    logged = [r for r in caplog.records if "scoring loop stopped" in r.getMessage()]
    assert len(logged) == 1 and logged[0].levelname == "ERROR" and logged[0].exc_info is not None
    assert str(logged[0].exc_info[1]) == "consumer broke"


def consume(consumer: Consumer, count: int, timeout: float = 60.0) -> list[bytes]:
    values, deadline = [], time.monotonic() + timeout
    while len(values) < count and time.monotonic() < deadline:
        msg = consumer.poll(0.5)
        if msg is not None and msg.error() is None:
            values.append(msg.value())
    return values


def test_scoring_loop_publishes_one_forecast_per_updated_sku(
    run_settings: Settings, config: ForecasterSettings
) -> None:
    skus = [f"L{i}-{uuid.uuid4().hex[:6]}" for i in range(5)]
    history = {sku: daily_demand(i, 30) for i, sku in enumerate(skus)}
    seed_store(run_settings, history)
    producer = make_producer(run_settings)
    for sku, units in history.items():
        for window in windows(sku, units)[-3:]:  # several updates per SKU: coalesced into one batch
            produce(producer, run_settings.topics.features, window)
    producer.produce(run_settings.topics.features, value=b"{not a window", key=b"x")
    producer.flush(10)

    service = ForecastService(connect_redis(run_settings.redis_url), config)
    assert service.reload_if_changed()
    with scoring_loop(service, run_settings):
        out = make_consumer(run_settings, f"it-{uuid.uuid4().hex[:6]}")
        out.subscribe([run_settings.topics.forecasts])
        forecasts = [Forecast.from_bytes(v) for v in consume(out, len(skus))]
        out.close()
        dlq = make_consumer(run_settings, f"it-{uuid.uuid4().hex[:6]}")
        dlq.subscribe([run_settings.topics.events_dlq])
        letters = [DeadLetter.from_bytes(v) for v in consume(dlq, 1)]
        dlq.close()
    assert sorted(f.sku for f in forecasts) == sorted(skus)
    assert all(f.start == START_MS + 30 * DAY_MS for f in forecasts if history[f.sku][-1])
    assert len(letters) == 1 and letters[0].stage == "forecaster"
    assert "not a feature window" in letters[0].reason
    cached = service.cached(skus)
    assert all(raw is not None for raw in cached)


def test_training_from_the_feature_store(run_settings: Settings, tmp_path: Path) -> None:
    from shelfcast_forecaster.scoring import feature_store_history

    sku = f"R-{uuid.uuid4().hex[:8]}"
    seed_store(run_settings, {sku: [0, 3, 0, 0, 5]})
    history = feature_store_history(FeatureStore(connect_redis(run_settings.redis_url)), "1d", 400, EXOGENOUS)
    rows = history[history["unique_id"] == sku]
    # zero-demand days are present (no window is no sale); the series runs to the store's newest day
    assert list(rows["y"].iloc[:4]) == [3.0, 0.0, 0.0, 5.0]
    assert list(rows["views"].iloc[:4]) == [33.0, 0.0, 0.0, 53.0]
    assert set(rows["avg_price"]) == {4.0}  # carried over the days without a window
    assert rows["ds"].iloc[0] == pd.Timestamp("2026-03-03")
    assert rows["ds"].iloc[-1] == history["ds"].max()


def test_scoring_loop_scores_arriving_actuals_against_the_cached_forecast(
    run_settings: Settings, config: ForecasterSettings
) -> None:
    skus = [f"Q{i}-{uuid.uuid4().hex[:6]}" for i in range(3)]
    seed_store(run_settings, {sku: daily_demand(i, 30) for i, sku in enumerate(skus)})
    service = ForecastService(connect_redis(run_settings.redis_url), config)
    assert service.reload_if_changed()
    earlier = service.score(skus, source="request")  # cached: what the next day's actuals are scored against
    unforecast = f"Q-new-{uuid.uuid4().hex[:6]}"
    actuals = [windows(sku, [4], first_day=30)[0] for sku in [*skus, unforecast]]
    FeatureStore(connect_redis(run_settings.redis_url)).write(actuals)
    expected = score_windows(actuals, earlier)
    assert expected and len(expected) <= len(skus)  # SKUs whose newest day sold nothing have forecasts starting later

    def sample(name: str, **labels: str) -> float:
        return REGISTRY.get_sample_value(f"shelfcast_forecaster_{name}_total", labels) or 0.0

    before = (sample("actuals_scored"), sample("pinball_loss", quantile="p50"), sample("actuals_in_band"))
    producer = make_producer(run_settings)
    for window in actuals:
        produce(producer, run_settings.topics.features, window)
    producer.flush(10)
    with scoring_loop(service, run_settings):  # left only once the loop stopped: its counts are done
        out = make_consumer(run_settings, f"it-{uuid.uuid4().hex[:6]}")
        out.subscribe([run_settings.topics.forecasts])
        assert len(consume(out, len(actuals))) == len(actuals)
        out.close()
    assert sample("actuals_scored") - before[0] == len(expected)
    p50 = sum(s.pinball["p50"] for s in expected)
    assert sample("pinball_loss", quantile="p50") - before[1] == pytest.approx(p50)
    assert sample("actuals_in_band") - before[2] == sum(1 for s in expected if s.in_band)


def read_all(settings: Settings, topic: str, count: int, timeout: float = 60.0) -> list[Message]:
    """The first ``count`` records of ``topic`` (fewer when ``timeout`` passes first), headers and all."""
    consumer = make_consumer(settings, f"it-{uuid.uuid4().hex[:6]}")
    consumer.subscribe([topic])
    out: list[Message] = []
    deadline = time.monotonic() + timeout
    try:
        while len(out) < count and time.monotonic() < deadline:
            msg = consumer.poll(0.5)
            if msg is not None and msg.error() is None:
                out.append(msg)
    finally:
        consumer.close()
    return out


def poisoned_scorer(service: ForecastService, nan_sku: str, raising_sku: str) -> None:
    """The loaded model answers NaN for ``nan_sku`` and raises on any batch that holds ``raising_sku``."""
    scorer = service.scorer
    assert scorer is not None
    real = scorer.quantiles

    def quantiles(demand: Any) -> Any:
        skus = [d.sku for d in demand]
        if raising_sku in skus:
            raise ValueError(f"cannot score {raising_sku}")
        out = real(demand)
        if nan_sku in skus:
            out[skus.index(nan_sku)] = float("nan")
        return out

    scorer.quantiles = quantiles  # type: ignore[method-assign]


def test_poison_windows_are_dead_lettered_with_the_reason_and_the_rest_is_forecast(
    run_settings: Settings, config: ForecasterSettings
) -> None:
    run = uuid.uuid4().hex[:6]
    good = [f"G{i}-{run}" for i in range(4)]
    nan_sku, raising, corrupt, future = f"NAN-{run}", f"RAISE-{run}", f"CORRUPT-{run}", f"FUT-{run}"
    history = {sku: daily_demand(i, 30) for i, sku in enumerate([*good, nan_sku, raising, corrupt])}
    seed_store(run_settings, history)
    redis_client = connect_redis(run_settings.redis_url)
    redis_client.zadd(f"sc:feat:{corrupt}:1d", {b"{this is not a window": START_MS + 40 * DAY_MS})
    now_day = int(time.time() * 1000) // DAY_MS * DAY_MS
    ahead = FeatureWindow(sku=future, granularity="1d", window_start=now_day + DAY_MS, window_end=now_day + 2 * DAY_MS)
    nan_counts = windows(good[0], [3])[0].model_dump_json().replace('"views":3', '"views":NaN').encode()
    inf_revenue = windows(good[1], [3])[0].model_dump_json().replace('"revenue":12.0', '"revenue":1e999').encode()
    assert b"NaN" in nan_counts and b"1e999" in inf_revenue

    producer = make_producer(run_settings)
    for sku in history:
        produce(producer, run_settings.topics.features, windows(sku, history[sku])[-1])
    produce(producer, run_settings.topics.features, ahead)
    producer.produce(run_settings.topics.features, value=b"{not a window", key=b"x")
    producer.produce(run_settings.topics.features, value=nan_counts, key=good[0].encode())
    producer.produce(run_settings.topics.features, value=inf_revenue, key=good[1].encode())
    assert producer.flush(10) == 0

    service = ForecastService(connect_redis(run_settings.redis_url), config)
    assert service.reload_if_changed()
    poisoned_scorer(service, nan_sku, raising)
    with scoring_loop(service, run_settings) as loop:
        published = read_all(run_settings, run_settings.topics.forecasts, len(good) + 1)
        letters = [DeadLetter.from_bytes(m.value()) for m in read_all(run_settings, run_settings.topics.events_dlq, 6)]
        # the loop goes on after them: a later window is forecast
        late = f"LATE-{run}"
        seed_store(run_settings, {late: daily_demand(1, 30)})
        produce(producer, run_settings.topics.features, windows(late, daily_demand(1, 30))[-1])
        assert producer.flush(10) == 0
        assert len(read_all(run_settings, run_settings.topics.forecasts, len(good) + 2)) == len(good) + 2
        assert loop.error is None
    forecasts = {Forecast.from_bytes(m.value()).sku: (Forecast.from_bytes(m.value()), m) for m in published}
    assert sorted(forecasts) == sorted([*good, nan_sku])  # each once, none for the poison
    assert all(not f.fallback and m.headers() is None for sku, (f, m) in forecasts.items() if sku != nan_sku)
    fallback, msg = forecasts[nan_sku]
    assert fallback.fallback and fallback.model == "poisson-fallback"
    assert dict(msg.headers() or []) == {"fallback_reason": b"non_finite"}
    assert all(v == v for values in fallback.quantiles.values() for v in values)  # no NaN on the wire

    assert all(letter.stage == "forecaster" for letter in letters)
    reasons = {letter.raw: letter.reason for letter in letters}
    assert len(reasons) == 6
    assert reasons[b"{not a window"].startswith("not a feature window")
    assert reasons[nan_counts].startswith("not a feature window: FeatureWindow: (record): Invalid JSON")
    assert reasons[inf_revenue].startswith("not a feature window: FeatureWindow: revenue")
    assert reasons[ahead.to_bytes()].startswith("future_ts: window_end")
    assert "SHELFCAST_MAX_CLOCK_SKEW_S = 300" in reasons[ahead.to_bytes()]
    by_sku = {FeatureWindow.from_bytes(r).sku: why for r, why in reasons.items() if why.startswith("no forecast")}
    assert sorted(by_sku) == sorted([corrupt, raising])
    assert by_sku[corrupt].startswith(f"no forecast for {corrupt}: history in Redis does not decode")
    assert by_sku[raising] == f"no forecast for {raising}: scoring raised ValueError: cannot score {raising}"


class KillingService(ForecastService):
    """Dies outside the per-record guards (a bug, or the process killed) on any batch that holds ``killer``."""

    killer = ""

    def cached_forecasts(self, skus: list[str]) -> dict[str, Forecast]:
        if self.killer in skus:
            raise RuntimeError(f"{self.killer} kills the loop")
        return super().cached_forecasts(skus)


def test_a_record_that_killed_the_loop_twice_is_skipped_to_the_dead_letters(
    run_settings: Settings, config: ForecasterSettings
) -> None:
    run = uuid.uuid4().hex[:6]
    skus = [f"K{i}-{run}" for i in range(4)]
    killer = skus[2]
    history = {sku: daily_demand(i, 30) for i, sku in enumerate(skus)}
    seed_store(run_settings, history)
    producer = make_producer(run_settings)
    for sku in skus:
        produce(producer, run_settings.topics.features, windows(sku, history[sku])[-1])
    assert producer.flush(10) == 0

    service = KillingService(connect_redis(run_settings.redis_url), config)
    service.killer = killer
    assert service.reload_if_changed()
    for attempt in (1, 2):  # the loop dies on the killer's batch; a restart resumes from the same offsets
        with scoring_loop(service, run_settings) as loop:
            deadline = time.monotonic() + 60
            while loop.error is None:
                assert time.monotonic() < deadline, f"attempt {attempt}: the loop did not die"
                time.sleep(0.2)
        assert str(loop.error) == f"{killer} kills the loop"
    with scoring_loop(service, run_settings) as loop:  # the third start skips what killed it twice
        assert len(read_all(run_settings, run_settings.topics.events_dlq, 1)) == 1
        time.sleep(2)  # anything more would come now
        assert loop.error is None
    topics = run_settings.topics
    forecast = {Forecast.from_bytes(m.value()).sku for m in read_all(run_settings, topics.forecasts, 99, 10)}
    letters = [DeadLetter.from_bytes(m.value()) for m in read_all(run_settings, topics.events_dlq, 99, 10)]
    skipped = {FeatureWindow.from_bytes(letter.raw).sku for letter in letters}
    assert killer in skipped and killer not in forecast
    assert all(letter.reason.startswith("killed the loop twice: ") for letter in letters)
    assert all(letter.stage == "forecaster" and letter.source_offset is not None for letter in letters)
    assert forecast | skipped == set(skus)  # nothing lost: each window forecast, or dead-lettered with the reason
    assert len(letters) == len(skipped)  # each record once
    assert not connect_redis(run_settings.redis_url).hgetall(f"sc:fcst:inflight:{config.group_id}")  # none in hand


class Collector:
    """Every record of a topic, read in a thread of its own from the start until `close`, by its position: a reader
    that loses its partitions while the broker is paused reads them again from the start (it commits nothing), and
    a record read twice is still one record."""

    def __init__(self, settings: Settings, topic: str) -> None:
        self.consumer = make_consumer(settings, f"it-{uuid.uuid4().hex[:6]}")
        self.consumer.subscribe([topic])
        self.records: dict[tuple[int, int], bytes] = {}
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._read)
        self.thread.start()

    def _read(self) -> None:
        while not self.done.is_set():
            msg = self.consumer.poll(0.2)
            if msg is not None and msg.error() is None:
                self.records[msg.partition(), msg.offset()] = msg.value()
        self.consumer.close()

    @property
    def values(self) -> list[bytes]:
        return list(self.records.values())

    def wait_for(self, count: int, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while len(self.values) < count:
            assert time.monotonic() < deadline, f"{len(self.values)} of {count} records after {timeout} s"
            time.sleep(0.1)

    def close(self) -> None:
        self.done.set()
        self.thread.join(30)


def test_paused_broker_under_the_scoring_loop_loses_nothing_and_publishes_nothing_twice(
    run_settings: Settings, config: ForecasterSettings, tmp_path: Path
) -> None:
    """The loop's broker is stopped (SIGSTOP) right after the loop consumed a day's windows and before it publishes
    their forecasts, for longer than the flush timeout, then resumed. Each (SKU, day) gets exactly one forecast."""
    broker = start_kafka(free_port(), tmp_path)
    try:
        own = run_settings.model_copy(update={"kafka_bootstrap": broker.address})
        ensure_topics(own, [own.topics.features, own.topics.forecasts, own.topics.events_dlq])
        paused_for = 8.0
        slow = config.model_copy(update={"flush_timeout_s": 2.0})  # the pause lasts 4 flush timeouts
        assert paused_for > 3 * slow.flush_timeout_s
        run = uuid.uuid4().hex[:6]
        skus = [f"P{i}-{run}" for i in range(20)]
        history_days, stream_days, pause_day = 20, 6, 22
        seed_store(own, {sku: [1 + (i + d) % 4 for d in range(history_days)] for i, sku in enumerate(skus)})
        store = FeatureStore(connect_redis(own.redis_url))

        service = ForecastService(connect_redis(own.redis_url), slow)
        assert service.reload_if_changed()
        paused = threading.Event()
        real_score = service.score_checked

        def pause_after_consuming(batch_skus: Any, source: str) -> Any:
            scored = real_score(batch_skus, source)
            if store_day(batch_skus) == pause_day and not paused.is_set():
                paused.set()
                os.kill(broker.pid, signal.SIGSTOP)
                threading.Timer(paused_for, os.kill, (broker.pid, signal.SIGCONT)).start()
            return scored

        def store_day(batch_skus: list[str]) -> int:
            newest = store.latest(batch_skus[0], "1d")
            return int((newest["window_start"].iloc[-1] - START_MS) // DAY_MS)

        service.score_checked = pause_after_consuming  # type: ignore[method-assign]
        forecasts = Collector(own, own.topics.forecasts)
        producer = make_producer(own)
        with scoring_loop(service, own) as loop:
            for day in range(history_days, history_days + stream_days):
                day_windows = [
                    FeatureWindow(
                        sku=sku,
                        granularity="1d",
                        window_start=START_MS + day * DAY_MS,
                        window_end=START_MS + (day + 1) * DAY_MS,
                        units=1 + (i + day) % 4,
                        purchases=1,
                    )
                    for i, sku in enumerate(skus)
                ]
                store.write(day_windows)  # as the features job does: Redis first, then the topic
                for window in day_windows:
                    produce(producer, own.topics.features, window)
                assert producer.flush(60) == 0
                forecasts.wait_for(len(skus) * (day - history_days + 1), timeout=90)
            time.sleep(3)  # a forecast sent twice would arrive by now
            assert loop.error is None
        forecasts.close()
        assert paused.is_set()
        published = [Forecast.from_bytes(v) for v in forecasts.values]
        keys = [(f.sku, f.start) for f in published]
        assert len(keys) == len(set(keys)), "a (SKU, window) was forecast twice"
        expected = {
            (sku, START_MS + (d + 1) * DAY_MS) for sku in skus for d in range(history_days, history_days + stream_days)
        }
        assert set(keys) == expected  # nothing lost
    finally:
        os.kill(broker.pid, signal.SIGCONT)
        broker.stop()


def test_batch_ledger_skips_only_what_was_in_hand_in_two_crashes(run_settings: Settings) -> None:
    client = connect_redis(run_settings.redis_url)
    ledger = BatchLedger(client, f"it-ledger-{uuid.uuid4().hex[:6]}")
    p0, p1 = ("features", 0), ("features", 1)
    assert ledger.begin({p0: (10, 20), p1: (5, 6)}) == {}
    assert ledger.begin({p0: (10, 15), p1: (5, 9)}) == {}  # the first died; the second starts at the same offsets
    assert ledger.begin({p0: (10, 30), p1: (5, 9)}) == {p0: (10, 15), p1: (5, 6)}  # in hand in both crashes
    ledger.done({p0: (10, 30)})
    assert ledger.resume_at([p0, p1]) == {p0: 31}
    assert ledger.begin({p0: (31, 40)}) == {}  # a new start counts afresh
    ledger.forget([p0])  # a stop, not a crash
    assert ledger.begin({p0: (31, 40)}) == {} and ledger.begin({p0: (31, 40)}) == {}
    client.hset(ledger.inflight_key, "features:1", "not:an:entry")
    assert ledger.begin({p1: (5, 9)}) == {}  # an entry that does not parse counts afresh
