import datetime
import time

from shelfcast.pipeline import HISTORY_DAYS, START
from shelfcast.settings import Settings
from shelfcast_ingest.simulate import days_ahead_of_the_clock, paced_batches
from shelfcast_ingest.storefront import StorefrontConfig


def events(n: int, step_ms: int) -> list[dict]:
    return [{"event_id": str(i), "ts": 1_767_225_600_000 + i * step_ms} for i in range(n)]


def test_unpaced_batches_keep_order_and_size() -> None:
    batches = list(paced_batches(iter(events(1_050, 1_000)), batch=500, speed=0))
    assert [len(b) for b in batches] == [500, 500, 50]
    assert [e["event_id"] for b in batches for e in b] == [str(i) for i in range(1_050)]


def test_paced_batches_follow_simulated_time() -> None:
    # 2 simulated seconds at 10x: about 0.2 s of wall time, in several batches.
    started = time.monotonic()
    batches = list(paced_batches(iter(events(21, 100)), batch=500, speed=10))
    elapsed = time.monotonic() - started
    assert 0.18 <= elapsed < 1.0
    assert len(batches) > 1
    assert sum(len(b) for b in batches) == 21


def test_days_ahead_of_the_clock_counts_only_days_ending_past_the_skew() -> None:
    now_ms = 1_767_225_600_000 + 10 * 86_400_000  # 2026-01-11T00:00Z
    config = StorefrontConfig(skus=1, days=12, start=datetime.date(2026, 1, 1))
    assert days_ahead_of_the_clock(config, now_ms, max_clock_skew_s=300) == 2  # Jan 11 and Jan 12
    assert days_ahead_of_the_clock(config, now_ms, max_clock_skew_s=2 * 86_400) == 0  # a raised skew lets them in
    assert days_ahead_of_the_clock(StorefrontConfig(skus=1, days=10), now_ms, max_clock_skew_s=0) == 0


def test_the_demo_and_the_simulator_defaults_replay_the_past() -> None:
    """`shelfcast demo` (40 days from START, the forecaster's history before it) and `simulate storefront`
    (60 days from 2026-01-01) never run ahead of the wall clock, so the future_ts guards never hit them."""
    now_ms = int(time.time() * 1000)
    skew = Settings().max_clock_skew_s
    demo = StorefrontConfig(skus=1, days=40, start=START)
    history = StorefrontConfig(skus=1, days=HISTORY_DAYS, start=START - datetime.timedelta(days=HISTORY_DAYS))
    simulator = StorefrontConfig(skus=1, days=60)
    assert [days_ahead_of_the_clock(c, now_ms, skew) for c in (demo, history, simulator)] == [0, 0, 0]
