"""The agent's own decision clock on the real broker and Redis: purchases alone move it (never past the wall clock +
the skew) and every SKU is decided each period on the feature store's daily windows; the optional wall clock;
readiness that tells the truth; and a broker paused (`kill -STOP`) for longer than the flush timeout mid-stream,
with no decision_id twice on shelfcast.reorders and every recorded decision there."""

import json
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from typing import Any, cast

import pytest
from fastapi.testclient import TestClient

from shelfcast.contracts import Event, FeatureWindow, Forecast, Reorder
from shelfcast.infra import free_port, start_kafka
from shelfcast.kafka import ensure_topics, make_producer, produce
from shelfcast.settings import Settings, TopicNames
from shelfcast.store import FeatureStore, connect_redis
from shelfcast_agent.app import create_app
from shelfcast_agent.decide import decision_id
from shelfcast_agent.online import AgentLoop, Decided
from shelfcast_agent.settings import AgentSettings
from shelfcast_agent.state import DecisionRecord, Keys, LastDecision
from tests.integration.test_agent_online import read_all, state_of, uid, wait_for

pytestmark = pytest.mark.integration

DAY_MS = 86_400_000
D0 = 1_768_435_200_000  # 2026-01-15, a simulated (past) day
FLAT = {"p10": [2.0] * 7, "p50": [5.0] * 7, "p90": [8.0] * 7}


def topics_for(settings: Settings) -> Settings:
    run = uid()
    topics = TopicNames(**{field: f"it.clock.{field}.{run}" for field in TopicNames.model_fields})
    configured = settings.model_copy(update={"topics": topics})
    ensure_topics(configured)
    return configured


@pytest.fixture()
def run_settings(settings: Settings) -> Settings:
    return topics_for(settings)


def agent_config(tmp_path: Path, skus: list[str], **changes: object) -> AgentSettings:
    params = tmp_path / f"skus-{uid()}.json"
    params.write_text(json.dumps({"defaults": {"lead_time": 2}, "skus": {s: {} for s in skus}}))
    base: dict = {
        "keyspace": f"it:clock:{uid()}",
        "group_id": f"it-clock-{uid()}",
        "sku_params": params,
        "sweep_interval_s": 0.2,
        "pending_recover_after_s": 1.0,
        "missing_forecast_grace_s": 0.5,
    }
    return AgentSettings(**{**base, **changes})


def purchase(sku: str, ts: int, qty: int = 1) -> Event:
    return Event(event_id=f"e-{uid()}", type="purchase", sku=sku, ts=ts, qty=qty, price=10.0, currency="EUR")


def forecast(sku: str, start: int, scale: float = 1.0) -> Forecast:
    now = int(time.time() * 1000)
    quantiles = {q: [v * scale for v in values] for q, values in FLAT.items()}
    return Forecast(
        sku=sku,
        issued_at=now,
        model="lstm",
        model_version="v-test",
        horizon=7,
        freq="D",
        start=start,
        quantiles=quantiles,
    )


def send(settings: Settings, topic: str, records: list[Event] | list[Forecast]) -> None:
    producer = make_producer(settings)
    for record in records:
        produce(producer, topic, record)
    assert producer.flush(10) == 0


def decided_in(settings: Settings, sku: str, period: int) -> LastDecision | None:
    state = state_of(settings, sku)
    last = state.last_decision if state is not None else None
    return last if last is not None and last.period_ms == period else None


def decided(settings: Settings, skus: list[str], period: int, how: Callable[[Iterator[object]], bool]) -> bool:
    return how(decided_in(settings, s, period) for s in skus)


def reorders_on(settings: Settings) -> list[Reorder]:
    return [Reorder.from_bytes(v) for v in read_all(settings, settings.topics.reorders, timeout=30)]


class HeldLoop(AgentLoop):
    """The real loop, except that the first publishing of a decision for `held_period` waits for `go`: the test
    pauses the broker between the decisions' record in Redis and their produce."""

    held_period: int | None = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.reached, self.go = threading.Event(), threading.Event()

    def _publish(self, decided: list[Decided]) -> None:
        held = f":{self.held_period}"
        if not self.reached.is_set() and any(d.record.decision_id.endswith(held) for d in decided):
            self.reached.set()
            self.go.wait(60)
        super()._publish(decided)


class Running:
    """An `AgentLoop` (or `HeldLoop`) in a thread, stopped on exit."""

    def __init__(self, settings: Settings, config: AgentSettings, held_period: int | None = None) -> None:
        self.loop = HeldLoop(connect_redis(settings.redis_url), settings, config)
        self.loop.held_period = held_period
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.loop.run, args=(self.stop,), daemon=True)

    def __enter__(self) -> HeldLoop:
        self.thread.start()
        return self.loop

    def __exit__(self, *_: object) -> None:
        self.stop.set()
        self.thread.join(60)


def test_purchases_alone_move_the_clock_and_each_sku_is_decided_on_its_daily_windows(
    run_settings: Settings, tmp_path: Path
) -> None:
    """No forecast at all: purchases dated in a past simulated day move the clock to it; after the grace every SKU
    is decided for it: one with daily windows on them (7 units a day over 14 days), one without on its sales. A
    purchase dated a day ahead of the wall clock does not move the clock."""
    run = uid()
    windowed, bare = f"W-{run}", f"B-{run}"
    FeatureStore(connect_redis(run_settings.redis_url)).write(
        FeatureWindow(
            sku=windowed, granularity="1d", window_start=D0 - d * DAY_MS, window_end=D0 - (d - 1) * DAY_MS, units=7
        )
        for d in range(1, 15)
    )
    config = agent_config(tmp_path, [windowed, bare])
    events = run_settings.topics.events
    with Running(run_settings, config):
        send(run_settings, events, [purchase(windowed, D0 + 3_600_000), purchase(bare, D0 + 7_200_000, qty=3)])
        first = cast(LastDecision, wait_for(lambda: decided_in(run_settings, windowed, D0), what="W decided on D0"))
        other = cast(LastDecision, wait_for(lambda: decided_in(run_settings, bare, D0), what="B decided on D0"))
        assert first.fallback == "missing_forecast"
        assert "7.00 per period (mean of 14 days) from feature store daily windows (missing forecast)" in first.reason
        assert first.qty > 0 and "[fallback: missing forecast]" in first.reason
        assert other.fallback == "missing_forecast" and "sales rate 3.00 per period (no forecast)" in other.reason

        tomorrow = int(time.time() * 1000) + DAY_MS
        send(run_settings, events, [purchase(bare, tomorrow), purchase(windowed, D0 + DAY_MS + 60_000)])
        wait_for(lambda: decided_in(run_settings, windowed, D0 + DAY_MS), what="W decided on the next day")
        clock = connect_redis(run_settings.redis_url).hgetall(Keys(config.keyspace).clock)
        assert int(clock[b"period_ms"]) == D0 + DAY_MS and clock[b"freq"] == b"D"  # not tomorrow's
    assert decided_in(run_settings, bare, D0 + DAY_MS) is not None  # decided every period, with or without sales
    ids = [r.decision_id for r in reorders_on(run_settings)]
    assert decision_id(windowed, D0) in ids and len(ids) == len(set(ids))


def test_the_wall_clock_decides_with_no_traffic(run_settings: Settings, tmp_path: Path) -> None:
    """With wall_clock on, a SKU whose last decision was an old simulated day is decided for today without any new
    record."""
    sku = f"C-{uid()}"
    config = agent_config(tmp_path, [sku], wall_clock=True)
    send(run_settings, run_settings.topics.forecasts, [forecast(sku, D0)])
    today = int(time.time() * 1000) // DAY_MS * DAY_MS
    with Running(run_settings, config):
        assert wait_for(lambda: decided_in(run_settings, sku, D0), what="the forecast's day")
        decided = cast(LastDecision, wait_for(lambda: decided_in(run_settings, sku, today), what="today by the wall"))
    assert decided.fallback in ("missing_forecast", "stale_forecast")


def test_skus_deciding_weekly_do_not_hold_up_the_sweep_of_daily_ones(run_settings: Settings, tmp_path: Path) -> None:
    """Sweep pages of max_batch = 2: two weekly SKUs, decided for their week, come first in the late range every
    day of that week; the daily SKU behind them is still decided for the next day."""
    run = uid()
    weekly, daily = [f"WK{i}-{run}" for i in range(2)], f"DY-{run}"
    config = agent_config(tmp_path, [*weekly, daily], max_batch=2)
    week = [forecast(s, D0).model_copy(update={"freq": "W"}) for s in weekly]
    send(run_settings, run_settings.topics.forecasts, [*week, forecast(daily, D0)])
    with Running(run_settings, config):
        monday = D0 - 3 * DAY_MS  # 2026-01-15 is a Thursday
        for sku in weekly:
            wait_for(lambda sku=sku: decided_in(run_settings, sku, monday), what=f"{sku} decided for its week")
        wait_for(lambda: decided_in(run_settings, daily, D0), what="the daily SKU on its forecast")
        send(run_settings, run_settings.topics.events, [purchase(daily, D0 + DAY_MS + 3_600_000)])
        swept = cast(LastDecision, wait_for(lambda: decided_in(run_settings, daily, D0 + DAY_MS), what="next day"))
    assert swept.fallback == "missing_forecast"
    assert all(decided_in(run_settings, sku, monday) for sku in weekly)  # not due again within their week


def test_readiness_tells_the_truth(run_settings: Settings, tmp_path: Path, read_auth: dict[str, str]) -> None:
    """200 with the fallback state while the loop runs with its partitions; 503 with the reason once the consumer
    holds none, and once the loop's thread is gone."""
    sku = f"R-{uid()}"
    config = agent_config(tmp_path, [sku])
    with TestClient(create_app(run_settings, config), headers=read_auth) as client:
        wait_for(lambda: client.get("/readyz").status_code == 200, what="ready")
        body = client.get("/readyz").json()
        assert body["deciding_on_fallbacks"] is False and body["last_decision_fallback"] is None
        send(run_settings, run_settings.topics.events, [purchase(sku, D0)])
        wait_for(lambda: decided_in(run_settings, sku, D0), what="a fallback decision")
        body = client.get("/readyz").json()
        assert body["status"] == "ready" and body["deciding_on_fallbacks"] is True
        assert body["last_decision_fallback"] == "missing_forecast"

        loop = cast(AgentLoop, client.app.state.loop)  # type: ignore[attr-defined]
        loop.consumer.unassign()
        answer = client.get("/readyz")
        assert answer.status_code == 503 and "holds no partition" in answer.json()["reason"]
        client.app.state.stop.set()  # type: ignore[attr-defined]
        client.app.state.thread.join(30)  # type: ignore[attr-defined]
        answer = client.get("/readyz")
        assert answer.status_code == 503 and answer.json()["reason"] == "decision loop stopped"


def open_to_resend(redis_client: Any, keys: Keys, loop: AgentLoop) -> tuple[set[str], set[str]]:
    """The unconfirmed decisions, and those of them the recovery may resend: not in flight (the producer still
    holds every one of them while the broker is stopped). A decision recorded but not yet handed to the producer
    is briefly in the second set: asked a few times, only a lasting one counts."""
    for _ in range(5):
        unconfirmed = {i.decode() for i in cast(list[bytes], redis_client.zrange(keys.pending, 0, -1))}
        exposed = unconfirmed - set(loop._inflight)
        if not exposed:
            break
        time.sleep(0.05)
    return unconfirmed, exposed


@pytest.fixture()
def own_broker(settings: Settings, tmp_path: Path) -> Iterator[tuple[Settings, int]]:
    """A broker of this test only (it gets paused), with the session's Redis; its settings and PID."""
    broker = start_kafka(free_port(), tmp_path)
    try:
        yield topics_for(settings.model_copy(update={"kafka_bootstrap": broker.address})), broker.pid
    finally:
        os.kill(broker.pid, signal.SIGCONT)  # never leave it stopped
        broker.stop()


def test_a_broker_paused_longer_than_the_flush_timeout_mid_stream_duplicates_no_decision(
    own_broker: tuple[Settings, int], tmp_path: Path
) -> None:
    """30 SKUs x 4 periods of forecasts (demand growing, so each SKU orders each period) and purchases, decided in
    batches of 2. Once the third period's first decisions are recorded, before they are produced, the broker is
    stopped for 3 x flush_timeout_s: decisions pile up unconfirmed, their flushes time out, and the recovery of
    unconfirmed ones runs but leaves alone those the producer still holds. Then it is resumed: every SKU-period is
    decided, every recorded reorder is on the topic, none twice."""
    configured, pid = own_broker
    run = uid()
    skus = [f"P{i:02d}-{run}" for i in range(30)]
    config = agent_config(
        tmp_path,
        skus,
        max_batch=2,
        flush_timeout_s=2.0,
        missing_forecast_grace_s=3600,  # decisions by forecasts only: each SKU-period once, whatever the timing
        scan_timeout_s=10.0,
    )
    topics = configured.topics
    keys = Keys(config.keyspace)
    redis_client = connect_redis(configured.redis_url)
    periods = [D0 + p * DAY_MS for p in range(4)]
    with Running(configured, config, held_period=periods[2]) as loop:
        for index, period in enumerate(periods):
            send(configured, topics.events, [purchase(s, period + 60_000, qty=2) for s in skus])
            send(configured, topics.forecasts, [forecast(s, period, index + 1) for s in skus])  # growing: orders
            if index == 2:
                assert loop.reached.wait(60), "no decision of the third period"
                os.kill(pid, signal.SIGSTOP)
                loop.go.set()
                try:
                    time.sleep(1.5 * config.flush_timeout_s)
                    unconfirmed, exposed = open_to_resend(redis_client, keys, loop)
                    time.sleep(1.5 * config.flush_timeout_s)
                finally:
                    os.kill(pid, signal.SIGCONT)
                assert unconfirmed, "the pause came after the period's decisions were confirmed"
                assert not exposed, f"unconfirmed, still held by the producer, yet open to a resend: {exposed}"
            wait_for(partial(decided, configured, skus, period, all), 120, f"period {index} decided")
        wait_for(lambda: redis_client.zcard(keys.pending) == 0, 120, "every decision confirmed")
        assert loop.decisions_made == len(skus) * len(periods)

    reorders = reorders_on(configured)
    ids = [r.decision_id for r in reorders]
    twice = {i for i in ids if ids.count(i) > 1}
    assert not twice, f"decision ids on the topic twice: {sorted(twice)}"
    recorded_keys = [keys.decision(decision_id(s, p)) for s in skus for p in periods]
    recorded = [DecisionRecord.model_validate_json(r) for r in redis_client.mget(recorded_keys) if r is not None]
    expected = {r.decision_id for r in recorded if r.kind == "reorder"}
    assert expected and set(ids) == expected
    assert expected == {decision_id(s, p) for s in skus for p in periods}  # every SKU ordered every period
