"""The inventory agent's decision loop on the real broker and Redis: decisions and state from forecasts, purchases
and receipts; the HTTP API; dead letters; fallbacks; recovery of unconfirmed decisions; and kill -9 + restart with
no duplicate decision and the state equal to a recomputation from the records."""

import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from typing import TypeVar, cast

import numpy as np
import pytest
from confluent_kafka import OFFSET_BEGINNING, Message, TopicPartition
from fastapi.testclient import TestClient
from prometheus_client import REGISTRY

from shelfcast.contracts import MAX_UNITS, Contract, DeadLetter, Event, Forecast, PriceChange, Receipt, Reorder
from shelfcast.kafka import ensure_topics, make_consumer, make_producer, produce
from shelfcast.settings import Settings, TopicNames
from shelfcast.store import connect_redis
from shelfcast_agent.app import create_app
from shelfcast_agent.decide import capped_base_stock, decision_id
from shelfcast_agent.online import AgentLoop, Trigger, load_policy
from shelfcast_agent.settings import AgentSettings, SkuCatalog
from shelfcast_agent.state import DecisionRecord, InventoryState, Keys, LastDecision, inventory_key

pytestmark = pytest.mark.integration

T = TypeVar("T")
DAY_MS = 86_400_000
D0 = 1_780_000_000_000 // DAY_MS * DAY_MS  # a day start (2026-05-28)
FLAT = {"p10": [2.0] * 7, "p50": [5.0] * 7, "p90": [8.0] * 7}
PRICING = {"base_price": 10.0, "elasticity": 1.5, "max_step": 0.1, "min_price": 7.0, "max_price": 12.0}


def uid() -> str:
    return uuid.uuid4().hex[:8]


@pytest.fixture()
def run_settings(settings: Settings) -> Settings:
    """Topics of this test only."""
    run = uid()
    topics = TopicNames(
        events=f"it.events.{run}",
        events_dlq=f"it.dlq.{run}",
        forecasts=f"it.forecasts.{run}",
        reorders=f"it.reorders.{run}",
        prices=f"it.prices.{run}",
        receipts=f"it.receipts.{run}",
    )
    configured = settings.model_copy(update={"topics": topics})
    ensure_topics(configured, [v for k, v in topics.model_dump().items() if k != "features"])
    return configured


def agent_config(tmp_path: Path, skus: dict[str, dict], **changes: object) -> AgentSettings:
    params = tmp_path / f"skus-{uid()}.json"
    params.write_text(json.dumps({"defaults": {"lead_time": 2, "unit_cost": 1.0}, "skus": skus}))
    base: dict = {
        "keyspace": f"it:agent:{uid()}",
        "group_id": f"it-agent-{uid()}",
        "sku_params": params,
        "sweep_interval_s": 0.2,
        "pending_recover_after_s": 1.0,
    }
    return AgentSettings(**{**base, **changes})


def forecast(sku: str, start: int, quantiles: dict | None = None, issued_at: int | None = None) -> Forecast:
    q = quantiles or FLAT
    return Forecast(
        sku=sku,
        issued_at=issued_at or int(time.time() * 1000),
        model="lstm",
        model_version="v-test",
        horizon=len(q["p50"]),
        freq="D",
        start=start,
        quantiles=q,
    )


def purchase(sku: str, qty: int, kind: str = "purchase", event_id: str | None = None) -> Event:
    return Event(
        event_id=event_id or f"e-{uid()}",
        type=kind,  # type: ignore[arg-type]
        sku=sku,
        ts=D0,
        qty=qty,
        price=10.0,
        currency="EUR",
    )


def send(settings: Settings, topic_records: list[tuple[str, object]]) -> None:
    producer = make_producer(settings)
    for topic, record in topic_records:
        if isinstance(record, bytes):
            producer.produce(topic, value=record, key=b"x")
        else:
            produce(producer, topic, record)  # type: ignore[arg-type]
    assert producer.flush(10) == 0


def read_all(settings: Settings, topic: str, timeout: float = 20.0) -> list[bytes]:
    """Every record of `topic`, from the start to the end of each partition."""
    consumer = make_consumer(settings, f"it-read-{uid()}", **{"enable.partition.eof": True})
    meta = consumer.list_topics(topic, timeout=10).topics[topic]
    consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in meta.partitions])
    remaining, values = set(meta.partitions), []
    deadline = time.monotonic() + timeout
    while remaining and time.monotonic() < deadline:
        msg = consumer.poll(0.2)
        if msg is None:
            continue
        if msg.error() is not None:
            remaining.discard(msg.partition())
            continue
        values.append(msg.value())
    consumer.close()
    assert not remaining, f"{topic} not read to its end"
    return values


def wait_for(
    check: Callable[[], object], timeout: float = 30.0, what: str = "condition", interval: float = 0.1
) -> object:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out waiting for {what}")


def state_of(settings: Settings, sku: str) -> InventoryState | None:
    raw = connect_redis(settings.redis_url).get(inventory_key(sku))
    return InventoryState.model_validate_json(raw) if raw else None  # type: ignore[arg-type]


def last_decision(settings: Settings, sku: str) -> LastDecision | None:
    state = state_of(settings, sku)
    return state.last_decision if state is not None else None


@pytest.fixture()
def agent(
    run_settings: Settings, tmp_path: Path, read_auth: dict[str, str]
) -> Iterator[tuple[TestClient, AgentSettings, dict[str, str]]]:
    """The agent's app with its decision loop on this test's topics; SKU names unique to the test (their state
    keys `sc:inv:{sku}` are shared by the session's Redis)."""
    run = uid()
    names = {n: f"{n}-{run}" for n in ("A", "P", "C", "M", "S")}
    skus: dict[str, dict] = {
        names["A"]: {"initial_on_hand": 10},
        names["P"]: {"initial_on_hand": 100, "pricing": PRICING},
        names["C"]: {"initial_on_hand": 0, "moq": 20, "case_pack": 6},
    }
    # purchases move the decision clock too: the grace lets a forecast sent just after them decide their period
    config = agent_config(tmp_path, skus, missing_forecast_grace_s=5.0, forecast_max_age_s=86_400)
    with TestClient(create_app(run_settings, config), headers=read_auth) as client:
        wait_for(lambda: client.get("/readyz").status_code == 200, 30, "the agent to be ready")
        yield client, config, names


def records_on(settings: Settings, topic: str, parse: Callable[[bytes], T], at_least: int = 1) -> list[T]:
    """The records of `topic` once there are at least `at_least`."""

    def enough() -> list[T] | None:
        found = [parse(v) for v in read_all(settings, topic)]
        return found if len(found) >= at_least else None

    return wait_for(enough, what=f"{at_least} records on {topic}")  # type: ignore[return-value]


def reorders_on(settings: Settings, at_least: int = 1) -> list[Reorder]:
    return records_on(settings, settings.topics.reorders, Reorder.from_bytes, at_least)


def test_forecasts_purchases_and_receipts_make_reorders_and_state(
    agent: tuple[TestClient, AgentSettings, dict[str, str]], run_settings: Settings
) -> None:
    client, config, names = agent
    a, p, c = names["A"], names["P"], names["C"]
    topics = run_settings.topics
    catalog = SkuCatalog.from_file(config.sku_params)
    send(run_settings, [(topics.events, purchase(a, 3)), (topics.events, purchase(a, 1, "return"))])
    send(run_settings, [(topics.events, purchase(a, 1, "view"))])
    wait_for(lambda: (s := state_of(run_settings, a)) is not None and s.on_hand == 8, what="purchases applied")

    send(run_settings, [(topics.forecasts, forecast(s, D0)) for s in (a, p, c)])
    expected = capped_base_stock(8.0, FLAT, catalog(a))
    assert expected.qty > 0
    by_sku = {r.sku: r for r in reorders_on(run_settings, 2)}
    first = by_sku[a]
    assert first.decision_id == decision_id(a, D0) and first.qty == expected.qty
    assert first.inventory_position == 8 and first.policy == "capped-base-stock"
    assert first.expected_at == D0 + 2 * DAY_MS  # the decision period + the SKU's lead time of 2
    assert "inventory position 8 below order-up-to" in first.reason and "forecast lstm v-test" in first.reason
    moq = by_sku[c]
    assert moq.qty % 6 == 0 and moq.qty >= 20 and "made feasible (MOQ 20, case pack 6)" in moq.reason
    assert p not in by_sku  # 100 on hand: no order
    prices = records_on(run_settings, topics.prices, PriceChange.from_bytes)
    assert [(x.sku, x.old_price, x.new_price, x.decision_id) for x in prices] == [(p, 10.0, 9.0, f"{p}:{D0}:price")]

    body = client.get(f"/v1/inventory/{a}").json()
    assert body["on_hand"] == 8 and body["on_order"] == expected.qty
    assert body["inventory_position"] == 8 + expected.qty
    assert body["pipeline"][0]["decision_id"] == first.decision_id
    assert body["pipeline"][0]["eta_ms"] == D0 + 2 * DAY_MS
    assert body["last_decision"]["order_up_to"] == expected.order_up_to
    assert body["params"]["lead_time"] == {"min": 2, "max": 2}
    assert client.get(f"/v1/inventory/NOPE-{uid()}").status_code == 404
    assert client.get("/v1/inventory/bad%20sku").status_code == 422

    # the goods arrive; a repeated forecast for the same period decides nothing; the next period decides again
    receipt = Receipt(receipt_id=f"r-{uid()}", sku=a, qty=first.qty, received_at=D0, decision_id=first.decision_id)
    send(run_settings, [(topics.receipts, receipt), (topics.receipts, receipt)])  # delivered twice: applied once
    wait_for(lambda: state_of(run_settings, a).received > 0, what="receipt applied")  # type: ignore[union-attr]
    state = state_of(run_settings, a)
    assert state is not None and state.on_hand == 8 + first.qty and state.pipeline == []
    send(run_settings, [(topics.forecasts, forecast(a, D0))])
    send(run_settings, [(topics.forecasts, forecast(a, D0 + DAY_MS))])
    wait_for(
        lambda: state_of(run_settings, a).last_decision_period_ms == D0 + DAY_MS,  # type: ignore[union-attr]
        what="the second period's decision",
    )
    second = capped_base_stock(8.0 + first.qty, FLAT, catalog(a))
    ids = [r.decision_id for r in reorders_on(run_settings) if r.sku == a]
    assert ids == [decision_id(a, D0)] + ([decision_id(a, D0 + DAY_MS)] if second.qty else [])
    metrics = client.get("/metrics/").text
    assert 'shelfcast_agent_decisions_total{kind="reorder",policy="capped-base-stock"}' in metrics
    assert "shelfcast_agent_orders_units_total" in metrics


def test_poison_records_are_dead_lettered_and_the_loop_goes_on(
    agent: tuple[TestClient, AgentSettings, dict[str, str]], run_settings: Settings
) -> None:
    _, _, names = agent
    topics = run_settings.topics
    bad_event = purchase(names["S"], 1).model_dump() | {"qty": -1}
    bad_receipt = {"receipt_id": "r", "sku": names["S"], "qty": 0, "received_at": D0}
    send(
        run_settings,
        [
            (topics.forecasts, b"{not json"),
            (topics.events, json.dumps(bad_event).encode()),
            (topics.receipts, json.dumps(bad_receipt).encode()),
            (topics.forecasts, forecast(names["S"], D0).model_copy(update={"freq": "2MS"}).to_bytes()),
            (topics.forecasts, forecast(names["S"], D0)),
        ],
    )
    letters = records_on(run_settings, topics.events_dlq, DeadLetter.from_bytes, 4)
    assert {x.stage for x in letters} == {"agent"}
    by_topic = {x.source_topic: x for x in letters}
    assert set(by_topic) == {topics.forecasts, topics.events, topics.receipts}
    reasons = sorted(x.reason for x in letters if x.source_topic == topics.forecasts)
    assert reasons[0].startswith("forecast freq not usable for decision periods")
    assert reasons[1].startswith("not a valid forecast record")
    assert "qty" in by_topic[topics.events].reason and by_topic[topics.events].source_offset is not None
    assert by_topic[topics.receipts].raw == json.dumps(bad_receipt).encode()
    wait_for(lambda: state_of(run_settings, names["S"]) is not None, what="the valid forecast after the poison")


def run_loop(loop: AgentLoop) -> tuple[threading.Thread, threading.Event, list[BaseException]]:
    """`loop.run` in a thread; what kills it is kept (not left to the thread's excepthook)."""
    stop, died = threading.Event(), []

    def target() -> None:
        try:
            loop.run(stop)
        except BaseException as exc:  # the test looks at it
            died.append(exc)

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    return thread, stop, died


def letters_on(settings: Settings, at_least: int) -> list[DeadLetter]:
    return records_on(settings, settings.topics.events_dlq, DeadLetter.from_bytes, at_least)


def test_poison_forecasts_amid_good_ones_are_dead_lettered_and_the_good_skus_decided(
    run_settings: Settings, tmp_path: Path
) -> None:
    """One batch: good forecasts around a p50 = 1e300 forecast, a forecast with NaN bytes, and the forecast of a SKU
    whose decision raises (holding_cost 0: its order-up-to level is the demand's 100th percentile, infinite). The
    three are dead-lettered with their reasons, the good SKUs are decided, the loop keeps running."""
    run = uid()
    good = [f"G{i}-{run}" for i in range(4)]
    bad = f"Z-{run}"
    skus: dict[str, dict] = {s: {"initial_on_hand": 0} for s in good} | {bad: {"holding_cost": 0.0}}
    config = agent_config(tmp_path, skus, missing_forecast_grace_s=0.5)
    topics = run_settings.topics
    swept = {"source": "sweep", "outcome": "decision_failed"}
    sweep_failures = metric_value("shelfcast_agent_records_consumed_total", swept)
    overflow = forecast(good[0], D0).model_dump() | {"quantiles": {"p50": [1e300] * 7}}
    nan = forecast(good[1], D0).to_bytes().replace(b"[5.0,", b"[NaN,", 1)
    assert b"NaN" in nan
    send(
        run_settings,
        [
            (topics.events, purchase(bad, 2)),
            (topics.forecasts, forecast(good[0], D0)),
            (topics.forecasts, json.dumps(overflow).encode()),
            (topics.forecasts, forecast(good[1], D0)),
            (topics.forecasts, nan),
            (topics.forecasts, forecast(bad, D0)),
            (topics.forecasts, forecast(good[2], D0)),
        ],
    )
    loop = AgentLoop(connect_redis(run_settings.redis_url), run_settings, config)
    thread, stop, died = run_loop(loop)
    try:
        letters = letters_on(run_settings, 3)
        reasons = sorted(x.reason for x in letters)
        assert len(letters) == 3 and {x.source_topic for x in letters} == {topics.forecasts}
        assert reasons[0].startswith(f"decision failed for {bad}: DemandError: order-up-to level is not a finite")
        assert "the 1 quantile of demand over 3 periods (mean 15," in reasons[0]
        assert reasons[1] == "not a valid forecast record: Forecast: quantiles.p50.0: Input should be a finite number"
        assert "quantiles.p50.0: Input should be less than or equal to 10000000" in reasons[2]
        assert b"1e+300" in next(x.raw for x in letters if "10000000" in x.reason)
        for sku in good[:3]:
            decided = cast(LastDecision, wait_for(partial(last_decision, run_settings, sku), what=f"{sku} decided"))
            assert decided.period_ms == D0 and decided.qty > 0
        state = state_of(run_settings, bad)
        assert state is not None and state.last_decision is None and state.forecast is None  # nothing kept of it
        # undecided, the sweep tries it on its sales rate; that fails too (no record to dead-letter): counted
        wait_for(lambda: metric_value("shelfcast_agent_records_consumed_total", swept) > sweep_failures, 10, "sweep")
        send(run_settings, [(topics.forecasts, forecast(good[3], D0 + DAY_MS))])  # the loop goes on
        wait_for(partial(last_decision, run_settings, good[3]), what="a decision after the poison")
        assert thread.is_alive() and not died
    finally:
        stop.set()
        thread.join(30)


def test_a_record_that_fails_halfway_through_its_apply_step_is_undone_and_dead_lettered(
    run_settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A purchase whose apply step raises after it changed the state (injected: the state's own method fails after
    doing its work): its change is undone, it is dead-lettered with the reason, and the purchases before and after
    it in the same batch, of the same SKU, are applied."""
    sku = f"AP-{uid()}"
    config = agent_config(tmp_path, {sku: {"initial_on_hand": 20}})
    apply_event = InventoryState.apply_event

    def failing_halfway(self: InventoryState, event: Event, **rules: bool) -> bool:
        applied = apply_event(self, event, **rules)
        if event.event_id == "e-poison":
            raise RuntimeError("halfway through")
        return applied

    monkeypatch.setattr(InventoryState, "apply_event", failing_halfway)
    events = [purchase(sku, 1), purchase(sku, 5, event_id="e-poison"), purchase(sku, 2)]
    send(run_settings, [(run_settings.topics.events, e) for e in events])
    thread, stop, died = run_loop(AgentLoop(connect_redis(run_settings.redis_url), run_settings, config))
    try:
        (letter,) = letters_on(run_settings, 1)
        assert letter.reason == "processing failed: RuntimeError: halfway through"
        assert Event.from_bytes(letter.raw).event_id == "e-poison"
        wait_for(lambda: (s := state_of(run_settings, sku)) is not None and s.purchases == 3, what="the others")
        state = state_of(run_settings, sku)
        assert state is not None and state.on_hand == 17 and state.sold_since_decision == 3
        assert thread.is_alive() and not died
    finally:
        stop.set()
        thread.join(30)


def test_a_huge_but_valid_forecast_orders_no_more_than_recent_demand_allows(
    run_settings: Settings, tmp_path: Path
) -> None:
    """p10..p90 at the contract's ceiling (10M units per period): capped base-stock alone would order max_order
    (10,000 units); the recent-demand guard cuts it to 10 x the 25 sold, or to the floor for a SKU with no sales."""
    run = uid()
    sold, cold = f"H-{run}", f"HC-{run}"
    config = agent_config(tmp_path, {sold: {}, cold: {}})
    assert (config.max_order_demand_multiple, config.max_order_floor_units) == (10.0, 100)
    huge = {q: [float(MAX_UNITS)] * 7 for q in ("p10", "p50", "p90")}
    topics = run_settings.topics
    loop = AgentLoop(connect_redis(run_settings.redis_url), run_settings, config)
    thread, stop, _ = run_loop(loop)
    try:
        send(run_settings, [(topics.events, purchase(sold, 25))])
        wait_for(lambda: (s := state_of(run_settings, sold)) is not None and s.purchases == 25, what="the sale")
        send(run_settings, [(topics.forecasts, forecast(s, D0, huge)) for s in (sold, cold)])
        orders = {r.sku: r for r in reorders_on(run_settings, 2)}
    finally:
        stop.set()
        thread.join(30)
    assert orders[sold].qty == 250
    assert "capped from 10000 to 250 by recent demand: at most 10 x 1 x 25.00 sold per period" in orders[sold].reason
    assert orders[cold].qty == 100 and "capped from 10000 to 100 by recent demand" in orders[cold].reason


def test_corrupt_state_is_reset_and_the_record_that_found_it_dead_lettered(
    run_settings: Settings, tmp_path: Path
) -> None:
    """A stored state that is not JSON: the agent starts anyway (its inventory totals leave the SKU out), the
    purchase that finds it is dead-lettered, the SKU restarts from its defaults and later purchases apply to that."""
    run = uid()
    broken, fine = f"K-{run}", f"F-{run}"
    config = agent_config(tmp_path, {broken: {"initial_on_hand": 7}, fine: {"initial_on_hand": 5}})
    redis_client = connect_redis(run_settings.redis_url)
    redis_client.set(inventory_key(broken), b'{"sku": "' + broken.encode() + b'", "on_hand": "lots"')
    redis_client.zadd(Keys(config.keyspace).skus, {broken: 0})  # known to the agent: its start-up totals read it
    topics = run_settings.topics
    resets = metric_value("shelfcast_agent_state_resets_total", {})
    send(run_settings, [(topics.events, purchase(broken, 2)), (topics.events, purchase(fine, 1))])
    loop = AgentLoop(redis_client, run_settings, config)
    thread, stop, died = run_loop(loop)
    try:
        (letter,) = letters_on(run_settings, 1)
        assert letter.reason.startswith(f"corrupt state sc:inv:{broken}: ")
        assert f"reset to the SKU's defaults (the old value: {config.keyspace}:corrupt:{broken})" in letter.reason
        assert Event.from_bytes(letter.raw).sku == broken
        wait_for(lambda: (s := state_of(run_settings, fine)) is not None and s.on_hand == 4, what="the other SKU")
        state = state_of(run_settings, broken)
        assert state is not None and state.on_hand == 7 and state.purchases == 0  # its defaults
        assert redis_client.get(f"{config.keyspace}:corrupt:{broken}").startswith(b'{"sku"')  # type: ignore[union-attr]
        assert metric_value("shelfcast_agent_state_resets_total", {}) == resets + 1
        send(run_settings, [(topics.events, purchase(broken, 3))])  # later records apply to the new state
        wait_for(lambda: state_of(run_settings, broken).on_hand == 4, what="a purchase after the reset")  # type: ignore[union-attr]
        assert thread.is_alive() and not died
    finally:
        stop.set()
        thread.join(30)


def test_future_dated_records_and_unknown_skus_are_dead_lettered(run_settings: Settings, tmp_path: Path) -> None:
    """Beyond the agent's clock + max_clock_skew_s (300 s): a purchase, a return and a receipt; a forecast starting
    more than one period after that. Tomorrow's forecast and a purchase 60 s ahead are fine. With
    unknown_sku=dead_letter, a SKU not in the parameter file is dead-lettered."""
    run = uid()
    sku, stranger = f"T-{run}", f"U-{run}"
    config = agent_config(tmp_path, {sku: {"initial_on_hand": 50}}, unknown_sku="dead_letter")
    assert run_settings.max_clock_skew_s == 300
    now = int(time.time() * 1000)
    today = now // DAY_MS * DAY_MS
    hour_ahead = now + 3_600_000
    topics = run_settings.topics
    send(
        run_settings,
        [
            (topics.events, purchase(sku, 1).model_copy(update={"ts": hour_ahead})),
            (topics.events, purchase(sku, 1, "return").model_copy(update={"ts": hour_ahead})),
            (topics.events, purchase(sku, 2).model_copy(update={"ts": now + 60_000})),
            (topics.receipts, Receipt(receipt_id=f"r-{uid()}", sku=sku, qty=9, received_at=hour_ahead)),
            (topics.forecasts, forecast(sku, today + 3 * DAY_MS)),
            (topics.forecasts, forecast(sku, today + DAY_MS)),
            (topics.events, purchase(stranger, 1)),
            (topics.events, purchase(stranger, 1, "view").model_copy(update={"ts": hour_ahead})),  # ignored
        ],
    )
    loop = AgentLoop(connect_redis(run_settings.redis_url), run_settings, config)
    thread, stop, _ = run_loop(loop)
    try:
        letters = letters_on(run_settings, 5)
        decided = cast(LastDecision, wait_for(partial(last_decision, run_settings, sku), what="tomorrow's forecast"))
    finally:
        stop.set()
        thread.join(30)
    reasons = sorted(x.reason for x in letters)
    assert len(reasons) == 5, reasons
    future = [r for r in reasons if r.startswith("future_ts: ")]
    assert [r.split(" ")[1] for r in future] == ["forecast", "purchase", "receipt", "return"]
    assert "beyond this agent's clock + skew + one period" in future[0]
    assert reasons[-1].startswith(f"unknown_sku: {stranger} is not in the SKU parameter file")
    assert decided.period_ms == today + DAY_MS
    state = state_of(run_settings, sku)
    assert state is not None and state.on_hand == 48 and state.received == 0  # only the purchase 60 s ahead
    assert state_of(run_settings, stranger) is None


def test_a_corrupt_unconfirmed_decision_record_is_not_resent_and_does_not_stop_recovery(
    run_settings: Settings, tmp_path: Path
) -> None:
    config = agent_config(tmp_path, {})
    client = connect_redis(run_settings.redis_url)
    keys = Keys(config.keyspace)
    client.set(keys.decision("X:1"), b'{"decision_id": "X:1", "kind": "teleport"}')
    client.zadd(keys.pending, {"X:1": int(time.time() * 1000) - 5_000})
    loop = AgentLoop(client, run_settings, config, SkuCatalog())
    try:
        loop._recover_pending()
    finally:
        loop.consumer.close()
    assert client.zcard(keys.pending) == 0 and client.exists(keys.decision("X:1"))  # kept for whoever audits it
    assert read_all(run_settings, run_settings.topics.reorders) == []


class _Killed(BaseException):
    """What no handler in the loop catches (as none catches an out-of-memory kill)."""


class FragileLoop(AgentLoop):
    """The real loop, except that reading a record of a SKU named KILLER-... kills it."""

    def _parse_one(self, msg: Message, source: str) -> Contract:
        if b"KILLER-" in (msg.value() or b""):
            raise _Killed("this record kills the decision loop")
        return super()._parse_one(msg, source)


def test_a_record_that_killed_the_loop_twice_is_dead_lettered_on_restart(
    run_settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Run 1 (the app) dies on the record: /healthz answers 503. Run 2 applies the records that were in flight one
    by one and dies on it again. Run 3 dead-letters it unread, with the reason, and applies the others."""
    run = uid()
    skus = [f"R{i}-{run}" for i in range(3)]
    killer = f"KILLER-{run}"
    config = agent_config(tmp_path, {s: {"initial_on_hand": 10} for s in [*skus, killer]}, max_batch=50)
    topics = run_settings.topics
    events = [purchase(skus[0], 1), purchase(skus[1], 1), purchase(killer, 1), purchase(skus[2], 1)]
    send(run_settings, [(topics.events, e) for e in events])
    keys = Keys(config.keyspace)
    redis_client = connect_redis(run_settings.redis_url)

    monkeypatch.setattr("shelfcast_agent.app.AgentLoop", FragileLoop)
    with TestClient(create_app(run_settings, config)) as client:
        assert client.get("/healthz").status_code == 200
        wait_for(lambda: client.get("/healthz").status_code == 503, 60, "the first run to die")
        body = client.get("/healthz").json()
        assert body["status"] == "dead" and "decision loop died" in body["reason"]
    assert [k for k in redis_client.scan_iter(match=f"{keys.ks}:inflight:*")], "the crash left no ledger"

    second = FragileLoop(redis_client, run_settings, config)
    thread, _, died = run_loop(second)
    thread.join(60)
    assert not thread.is_alive() and isinstance(died[0], _Killed)
    (inflight,) = redis_client.scan_iter(match=f"{keys.ks}:inflight:*")
    first, last = redis_client.get(inflight).split(b":")  # type: ignore[union-attr]
    assert first == last  # it died on one record alone: the others before it were applied one by one
    counts = [v for k in redis_client.scan_iter(match=f"{keys.ks}:crashes:*") for v in redis_client.hvals(k)]
    assert counts and set(counts) == {b"1"}  # the killer and those not reached yet, each in flight in one crash

    third = FragileLoop(redis_client, run_settings, config)
    thread, stop, died = run_loop(third)
    try:
        (letter,) = letters_on(run_settings, 1)
        assert letter.reason == "killed the loop twice: in flight in 2 crashed runs; not processed"
        assert Event.from_bytes(letter.raw).sku == killer and letter.source_topic == topics.events
        for sku in skus:
            wait_for(lambda s=sku: state_of(run_settings, s) is not None, what=f"{sku}'s purchase")
            assert state_of(run_settings, sku).purchases == 1  # type: ignore[union-attr]  # applied once
        assert state_of(run_settings, killer) is None
        wait_for(lambda: not list(redis_client.scan_iter(match=f"{keys.ks}:crashes:*")), what="the ledger cleared")
        assert not list(redis_client.scan_iter(match=f"{keys.ks}:inflight:*"))
        assert thread.is_alive() and not died
    finally:
        stop.set()
        thread.join(30)


def metric_value(name: str, labels: dict[str, str]) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def metric(client: TestClient, name: str, labels: str) -> float:
    for line in client.get("/metrics/").text.splitlines():
        if line.startswith(f"{name}{{{labels}}} "):
            return float(line.split()[-1])
    return 0.0


def test_stale_and_missing_forecasts_fall_back_and_are_counted(
    agent: tuple[TestClient, AgentSettings, dict[str, str]], run_settings: Settings
) -> None:
    client, _, names = agent
    a, m = names["A"], names["M"]
    topics = run_settings.topics
    fallbacks = "shelfcast_agent_fallbacks_total"
    stale_before = metric(client, fallbacks, 'reason="stale_forecast"')
    missing_before = metric(client, fallbacks, 'reason="missing_forecast"')
    send(run_settings, [(topics.events, purchase(m, 4))])  # M sells, but never gets a forecast
    wait_for(lambda: state_of(run_settings, m) is not None, what="M's state")
    two_days_ago = int(time.time() * 1000) - 2 * DAY_MS
    send(run_settings, [(topics.forecasts, forecast(a, D0 + 9 * DAY_MS, issued_at=two_days_ago))])

    stale = cast(LastDecision, wait_for(lambda: last_decision(run_settings, a), what="A's decision"))
    assert stale.fallback == "stale_forecast" and "stale: 48.0 h old" in stale.reason
    assert "[fallback: stale forecast]" in stale.reason
    # the clock reached D0 + 9 days with A's forecast; M had none within the grace: decided on its sales rate
    missing = cast(LastDecision, wait_for(lambda: last_decision(run_settings, m), what="M's decision"))
    assert missing.fallback == "missing_forecast" and missing.period_ms == D0 + 9 * DAY_MS
    assert "sales rate 4.00 per period (no forecast)" in missing.reason
    assert metric(client, fallbacks, 'reason="stale_forecast"') == stale_before + 1
    assert metric(client, fallbacks, 'reason="missing_forecast"') == missing_before + 1
    reorder = next(r for r in reorders_on(run_settings) if r.sku == m)
    assert reorder.decision_id == decision_id(m, D0 + 9 * DAY_MS) and reorder.qty == missing.qty


def test_unconfirmed_decisions_are_checked_on_the_topic_before_sending_again(
    run_settings: Settings, tmp_path: Path
) -> None:
    """The crash window: a decision recorded, produced and acknowledged, but not marked sent; and one recorded and
    never produced. Recovery sends only the second."""
    config = agent_config(tmp_path, {})
    client = connect_redis(run_settings.redis_url)
    loop = AgentLoop(client, run_settings, config, SkuCatalog())
    keys = Keys(config.keyspace)
    sku = f"W-{uid()}"
    records = []
    for k in range(2):
        reorder = Reorder(
            decision_id=decision_id(sku, D0 + k * DAY_MS),
            sku=sku,
            qty=5,
            issued_at=D0,
            policy="capped-base-stock",
            policy_version="1",
            inventory_position=0,
            reason="test",
        )
        records.append(
            DecisionRecord(
                decision_id=reorder.decision_id,
                kind="reorder",
                topic=run_settings.topics.reorders,
                sku=sku,
                value=reorder.model_dump_json(),
                recorded_at=int(time.time() * 1000) - 5_000,
            )
        )
        client.set(keys.decision(reorder.decision_id), records[-1].model_dump_json())
        client.zadd(keys.pending, {reorder.decision_id: records[-1].recorded_at})
    send(run_settings, [(run_settings.topics.reorders, Reorder.model_validate_json(records[0].value))])

    loop._recover_pending()
    loop._recover_pending()  # nothing left to do
    ids = Counter(Reorder.from_bytes(v).decision_id for v in read_all(run_settings, run_settings.topics.reorders))
    assert ids == {records[0].decision_id: 1, records[1].decision_id: 1}
    assert client.zcard(keys.pending) == 0
    assert all(client.exists(keys.decision(rec.decision_id)) for rec in records)  # kept for audits
    loop.consumer.close()


def start_agent(settings: Settings, config: AgentSettings, log: Path) -> subprocess.Popen:
    """`python -m shelfcast_agent.cli_run --no-http` aimed at this test's broker, Redis, topics and keyspace."""
    env = {
        **os.environ,
        "SHELFCAST_KAFKA_BOOTSTRAP": settings.kafka_bootstrap,
        "SHELFCAST_REDIS_URL": settings.redis_url,
        "SHELFCAST_KAFKA_SESSION_TIMEOUT_MS": str(settings.kafka_session_timeout_ms),
        **{f"SHELFCAST_TOPICS__{k.upper()}": v for k, v in settings.topics.model_dump().items()},
        **{
            f"SHELFCAST_AGENT_{k.upper()}": str(v)
            for k, v in config.model_dump(exclude_none=True).items()
            if k in config.model_fields_set
        },
    }
    with log.open("ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "shelfcast_agent.cli_run", "--no-http"], env=env, stdout=out, stderr=out
        )


def test_kill_9_and_restart_decide_once_and_keep_the_state_exact(run_settings: Settings, tmp_path: Path) -> None:
    """Forecasts for many SKUs over several periods, purchases (some delivered twice), returns and receipts; the
    agent is killed with SIGKILL twice while records flow and restarted. Then: no decision_id twice on the
    decision topics, every SKU decided every period, and each SKU's state equals a recomputation from the records
    (half the SKUs lose sales beyond stock, half backorder them)."""
    run, n_skus, periods, initial = uid(), 100, 8, 20
    skus = [f"K{i:02d}-{run}" for i in range(n_skus)]
    params: dict[str, dict] = {
        s: {"initial_on_hand": initial, "lead_time": 1 + i % 3, "lost_sales": i % 2 == 0} for i, s in enumerate(skus)
    }
    for s in skus[::5]:
        params[s]["pricing"] = PRICING
    config = agent_config(tmp_path, params, max_batch=40, missing_forecast_grace_s=3600, pending_recover_after_s=1.0)
    topics = run_settings.topics
    rng = np.random.default_rng(11)
    events: dict[str, Event] = {}
    receipts: list[Receipt] = []
    receipted: set[str] = set()
    produced: Counter[str] = Counter()
    sent: list[tuple[str, object]] = []  # every record in the order produced
    keys = Keys(config.keyspace)
    redis_client = connect_redis(run_settings.redis_url)

    def feed(k: int) -> None:
        """Period k: purchases and returns (a fifth delivered twice), receipts for the orders on the topic so far
        (some partial), then a forecast for every SKU, all shuffled together."""
        batch: list[tuple[str, object]] = []
        for sku in skus:
            for _ in range(int(rng.integers(0, 4))):
                event = purchase(sku, int(rng.integers(1, 6)), "return" if rng.random() < 0.1 else "purchase")
                events[event.event_id] = event
                batch += [(topics.events, event)] * (2 if rng.random() < 0.2 else 1)
        for order in [Reorder.from_bytes(v) for v in read_all(run_settings, topics.reorders)]:
            if order.decision_id not in receipted and rng.random() < 0.7:
                qty = order.qty - 1 if order.qty > 1 and rng.random() < 0.3 else order.qty
                receipt = Receipt(
                    receipt_id=f"r-{uid()}", sku=order.sku, qty=qty, received_at=D0, decision_id=order.decision_id
                )
                receipts.append(receipt)
                receipted.add(order.decision_id)
                batch.append((topics.receipts, receipt))
        for i, sku in enumerate(skus):
            q = {name: [v * (1 + i % 4) for v in values] for name, values in FLAT.items()}
            batch.append((topics.forecasts, forecast(sku, D0 + k * DAY_MS, q)))
        shuffled = [batch[j] for j in rng.permutation(len(batch))]
        send(run_settings, shuffled)
        sent.extend(shuffled)
        produced.update(topic for topic, _ in batch)

    def decided(period: int) -> int:
        raw = cast(list[bytes | None], redis_client.mget([inventory_key(s) for s in skus]))
        states = [InventoryState.model_validate_json(r) for r in raw if r is not None]
        return sum(1 for s in states if (s.last_decision_period_ms or 0) >= D0 + period * DAY_MS)

    def started(period: int) -> bool:
        raw = cast(list[bytes | None], redis_client.mget([inventory_key(s) for s in skus]))
        return any(r is not None and b'"last_decision_period_ms":%d' % (D0 + period * DAY_MS) in r for r in raw)

    log = tmp_path / "agent.log"
    agent = None
    try:
        # two incarnations each find a backlog of three periods and are killed at their first decision
        for first, last in ((0, 2), (3, 5)):
            for k in range(first, last + 1):
                feed(k)
            agent = start_agent(run_settings, config, log)
            wait_for(partial(started, first), timeout=60, interval=0.005, what=f"period {first} decisions")
            agent.send_signal(signal.SIGKILL)
            agent.wait(10)
            assert decided(last) < n_skus, "killed too late: the backlog was already done"
        agent = start_agent(run_settings, config, log)
        wait_for(lambda: decided(5) == n_skus, timeout=60, what="the third incarnation to catch up")
        for k in range(6, periods):
            feed(k)  # with receipts for the orders of the earlier incarnations
            time.sleep(0.3)

        def finished() -> bool:
            """Every record applied (the stored next offsets add up to what was produced), nothing pending."""
            applied: Counter[str] = Counter()
            for key in redis_client.scan_iter(match=f"{config.keyspace}:offset:*"):
                topic = key.decode().split(":offset:")[1].rsplit(":", 1)[0]
                applied[topic] += int(redis_client.get(key))  # type: ignore[arg-type]
            return applied == produced and redis_client.zcard(keys.pending) == 0

        wait_for(finished, timeout=90, what="every SKU to decide every period")
    finally:
        if agent is not None:
            agent.send_signal(signal.SIGTERM)
            try:
                agent.wait(20)
            except subprocess.TimeoutExpired:
                agent.kill()
    text = log.read_text()
    assert text.count("assigned ") == 3, text[-3000:]  # three incarnations consumed
    assert receipts, "no receipt was exercised"

    reorders = [Reorder.from_bytes(v) for v in read_all(run_settings, topics.reorders)]
    duplicates = [i for i, c in Counter(r.decision_id for r in reorders).items() if c > 1]
    assert not duplicates, f"decision ids sent twice: {duplicates}"
    prices = [PriceChange.from_bytes(v) for v in read_all(run_settings, topics.prices)]
    assert not [i for i, c in Counter(p.decision_id for p in prices).items() if c > 1]
    valid_ids = {decision_id(s, D0 + k * DAY_MS) for s in skus for k in range(periods)}
    assert {r.decision_id for r in reorders} <= valid_ids and len(reorders) >= n_skus

    lost_some = 0
    for sku in skus:
        state = state_of(run_settings, sku)
        assert state is not None
        sold = sum(e.qty for e in events.values() if e.sku == sku and e.type == "purchase")
        returned = sum(e.qty for e in events.values() if e.sku == sku and e.type == "return")
        received = sum(r.qty for r in receipts if r.sku == sku)
        assert state.purchases == sold and state.returns == returned and state.received == received, sku
        backordered = initial - sold + returned + received
        outcomes = on_hand_outcomes(initial, sent, sku, lost_sales=params[sku]["lost_sales"])
        assert state.on_hand in outcomes, (sku, state.on_hand, sorted(outcomes))
        if params[sku]["lost_sales"]:
            lost_some += state.on_hand > backordered
        else:
            assert outcomes == {backordered} and state.on_hand == backordered, sku
        outstanding = {r.decision_id: r.qty for r in reorders if r.sku == sku}
        for receipt in (r for r in receipts if r.sku == sku):
            outstanding[receipt.decision_id] -= receipt.qty  # type: ignore[index]
        assert {o.decision_id: o.qty for o in state.pipeline} == {i: q for i, q in outstanding.items() if q > 0}, sku
        if params[sku].get("pricing"):
            assert state.price == ([p.new_price for p in prices if p.sku == sku] or [10.0])[-1]
    recorded = [
        DecisionRecord.model_validate_json(redis_client.get(k))  # type: ignore[arg-type]
        for k in redis_client.scan_iter(match=f"{config.keyspace}:decision:*", count=1000)
    ]
    assert sorted(d.decision_id for d in recorded if d.kind == "reorder") == sorted(r.decision_id for r in reorders)
    assert lost_some, "no lost-sales SKU ran out of stock"


def on_hand_outcomes(initial: float, sent: list[tuple[str, object]], sku: str, lost_sales: bool) -> set[float]:
    """The SKU's on hand after its events and receipts in every order the agent may apply them: each topic's records
    of one SKU in the order produced (one partition, a second delivery of an event skipped), the two topics
    interleaved in any way. A purchase beyond stock is lost (on hand stops at 0) for a lost-sales SKU, backordered
    (on hand goes negative) else; returns are restocked (the default)."""
    events: dict[str, Event] = {}
    for _, r in sent:
        if isinstance(r, Event) and r.sku == sku:
            events.setdefault(r.event_id, r)
    moves = [list(events.values()), [r for _, r in sent if isinstance(r, Receipt) and r.sku == sku]]

    def step(on_hand: float, record: Event | Receipt) -> float:
        if isinstance(record, Receipt) or record.type == "return":
            return on_hand + record.qty
        return max(on_hand - record.qty, 0.0) if lost_sales else on_hand - record.qty

    reach: dict[tuple[int, int], set[float]] = {(0, 0): {initial}}
    for i in range(len(moves[0]) + 1):
        for j in range(len(moves[1]) + 1):
            here = reach.get((i, j), set())
            if i < len(moves[0]):
                reach.setdefault((i + 1, j), set()).update(step(v, moves[0][i]) for v in here)
            if j < len(moves[1]):
                reach.setdefault((i, j + 1), set()).update(step(v, moves[1][j]) for v in here)
    return reach[len(moves[0]), len(moves[1])]


def tiny_dqn(path: Path, q_bounds: tuple[float, float]) -> Path:
    """An untrained DQN saved as `shelfcast agent train` saves one (enough to exercise the online hook)."""
    dqn = pytest.importorskip("shelfcast_agent.dqn")
    deltas = [float(d) for d in dqn.ACTION_DELTAS]
    model = dqn.build_network(len(dqn.FEATURE_FIELDS), len(deltas), (8,), deltas.index(0.0))
    model.get_layer("standardise").adapt(np.random.default_rng(0).random((64, len(dqn.FEATURE_FIELDS))))
    card = {
        "version": "t1",
        "feature_fields": list(dqn.FEATURE_FIELDS),
        "action_deltas": deltas,
        "config": {"hidden": [8]},
        "margin": 0.0,
        "q_bounds": list(q_bounds),
    }
    return dqn.DQNPolicy(model, card).save(path)


def test_a_learned_policy_decides_and_untrusted_answers_fall_back(run_settings: Settings, tmp_path: Path) -> None:
    sku = f"D-{uid()}"
    config = agent_config(tmp_path, {sku: {"initial_on_hand": 0}}, model_dir=tiny_dqn(tmp_path / "dqn", (-1e9, 1e9)))
    policy = load_policy(config)
    assert policy is not None and policy.name == "dqn" and policy.version == "t1"
    loop = AgentLoop(connect_redis(run_settings.redis_url), run_settings, config, policy=policy)
    stop = threading.Event()
    thread = threading.Thread(target=loop.run, args=(stop,))
    thread.start()
    try:
        send(run_settings, [(run_settings.topics.forecasts, forecast(sku, D0))])
        (reorder,) = reorders_on(run_settings)
    finally:
        stop.set()
        thread.join(30)
    assert reorder.policy == "dqn" and reorder.policy_version == "t1"
    assert reorder.reason.startswith("dqn t1 orders") and "capped base-stock would order" in reorder.reason

    state = InventoryState.new(sku, loop.catalog(sku))
    trigger = Trigger(D0 + DAY_MS, "D", forecast(sku, D0 + DAY_MS))
    before = metric_value("shelfcast_agent_fallbacks_total", {"reason": "q_out_of_range"})
    loop.policy.dqn.card["q_bounds"] = [1e8, 1e9]  # type: ignore[union-attr]  # nothing is trusted now
    (decided,) = loop._decide({sku: trigger}, {sku: state}, {}, int(time.time() * 1000))
    assert state.last_decision is not None and state.last_decision.fallback == "q_out_of_range"
    assert Reorder.model_validate_json(decided.record.value).policy == "capped-base-stock"
    loop._count([decided], {sku: trigger}, {sku: state})
    assert metric_value("shelfcast_agent_fallbacks_total", {"reason": "q_out_of_range"}) == before + 1

    missing = AgentLoop(loop.redis, run_settings, config.model_copy(update={"model_dir": tmp_path / "none"}))
    state = InventoryState.new(sku, loop.catalog(sku))
    missing._decide({sku: trigger}, {sku: state}, {}, int(time.time() * 1000))
    assert state.last_decision is not None and state.last_decision.fallback == "no_model"
    loop.consumer.close()
    missing.consumer.close()


def test_the_budget_per_period_cuts_orders_across_skus(run_settings: Settings, tmp_path: Path) -> None:
    skus = [f"G{i}-{uid()}" for i in range(3)]
    config = agent_config(tmp_path, {s: {"initial_on_hand": 0} for s in skus}, budget_per_period=40.0)
    loop = AgentLoop(connect_redis(run_settings.redis_url), run_settings, config)
    stop = threading.Event()
    thread = threading.Thread(target=loop.run, args=(stop,))
    thread.start()
    try:
        send(run_settings, [(run_settings.topics.forecasts, forecast(skus[0], D0))])
        reorders_on(run_settings, 1)  # the first SKU's order is in the budget before the others come
        send(run_settings, [(run_settings.topics.forecasts, forecast(s, D0)) for s in skus[1:]])
        reorders = reorders_on(run_settings, 3)
    finally:
        stop.set()
        thread.join(30)
    assert sorted(r.qty for r in reorders) == [10, 15, 15]  # each wants 15 (the cap); 40 to spend at 1 per unit
    (cut,) = [r for r in reorders if r.qty == 10]
    assert "cut from 15 to 10 by the period budget (10.00 left, 1 per unit)" in cut.reason
    spent = connect_redis(run_settings.redis_url).get(Keys(config.keyspace).budget(D0))
    assert float(spent) == 40.0  # type: ignore[arg-type]


def test_purchase_kpis_inventory_totals_and_emitted_records_are_counted(run_settings: Settings, tmp_path: Path) -> None:
    run = uid()
    a, p = f"A-{run}", f"P-{run}"
    skus: dict[str, dict] = {
        a: {"initial_on_hand": 10, "unit_cost": 2.5},
        p: {"initial_on_hand": 100, "pricing": PRICING},
    }
    config = agent_config(tmp_path, skus, forecast_max_age_s=86_400)
    topics = run_settings.topics
    names = ("units_demanded_total", "units_filled_total", "stockouts_total")
    before = [metric_value(f"shelfcast_agent_{n}", {}) for n in names]
    emitted = {t: metric_value("shelfcast_agent_emitted_total", {"topic": t}) for t in ("reorders", "prices")}
    with TestClient(create_app(run_settings, config)) as client:
        wait_for(lambda: client.get("/readyz").status_code == 200, 30, "the agent to be ready")
        sales = [purchase(a, 3), purchase(a, 9), purchase(a, 1, "return"), purchase(a, 2, "view")]
        send(run_settings, [(topics.events, e) for e in sales])
        wait_for(lambda: (s := state_of(run_settings, a)) is not None and s.on_hand == 1, what="purchases applied")

        # 3 of 3 filled; 7 of 9 (a stockout: A loses sales, so the other 2 are lost and on hand stops at 0); the
        # return (1 back on hand) and the view are no demand. The loop counts just after its
        # transaction commits, so the state can be seen a moment before the counters move: wait for them too.
        def counted() -> list[float]:
            return [metric_value(f"shelfcast_agent_{n}", {}) - b for n, b in zip(names, before, strict=True)]

        wait_for(lambda: counted() == [12, 10, 1], 10, "the purchase KPIs counted")

        send(run_settings, [(topics.forecasts, forecast(s, D0)) for s in (a, p)])
        order = next(r for r in reorders_on(run_settings) if r.sku == a)
        wait_for(
            lambda: metric(client, "shelfcast_agent_emitted_total", 'topic="prices"') == emitted["prices"] + 1,
            what="the price change counted on its ack",
        )
        assert metric(client, "shelfcast_agent_emitted_total", 'topic="reorders"') == emitted["reorders"] + 1

        redis_client = connect_redis(run_settings.redis_url)
        totals_key = Keys(config.keyspace).totals
        stored = {k.decode(): float(v) for k, v in redis_client.hgetall(totals_key).items()}  # type: ignore[union-attr]
        # A's 1 on hand at 2.5 with its order on the way; P's 100 at the default unit cost 1.0
        assert stored == pytest.approx({"on_hand": 101, "pipeline": order.qty, "value": 102.5})
        assert metric(client, "shelfcast_agent_inventory_units", 'kind="pipeline"') == order.qty
        assert metric_value("shelfcast_agent_inventory_value", {}) == pytest.approx(102.5)

        redis_client.delete(totals_key)
        AgentLoop(redis_client, run_settings, config)._rebuild_totals()
        rebuilt = {k.decode(): float(v) for k, v in redis_client.hgetall(totals_key).items()}  # type: ignore[union-attr]
        assert rebuilt == pytest.approx(stored)
