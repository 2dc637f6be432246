import time

from shelfcast_ingest.simulate import paced_batches


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
