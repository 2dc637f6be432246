"""The pipeline's output traced back to its input, and timed: what the demo's summary and `bench e2e` report.

A reorder for SKU s and decision period P (the agent's `decision_id` is `{s}:{P}`) should come from a forecast of s
starting at P, which the forecaster made when the daily window of s ending at P closed; that window's counts should
equal the distinct events of s on that day, less those the features job dead-lettered as too late for it.
Latency is wall time by the broker's timestamps: from ingest producing a purchase to the agent producing the reorder
it led to (at most one window's wall length plus the processing), and from the window's close (the first event
past its end plus the watermark delay) to the reorder, which is the processing alone.
"""

import base64
import json
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from shelfcast.contracts import DeadLetter, Event, Forecast, Reorder
from shelfcast.kafka import Stamped

DAY_MS = 86_400_000
WATERMARK_DELAY_MS = 5_000  # the features job's default out-of-orderness
COUNTED = {"view": "views", "click": "clicks", "cart": "carts", "purchase": "purchases", "return": "returns"}
WindowCounts = dict[str, int]  # FeatureWindow count fields: views, clicks, carts, purchases, returns


def decision_period(reorder: Reorder) -> int:
    return int(reorder.decision_id.rsplit(":", 1)[1])


def day_end(ts_ms: int) -> int:
    return ts_ms - ts_ms % DAY_MS + DAY_MS


def first_sent(events: Iterable[Stamped[Event]]) -> list[Stamped[Event]]:
    """One per event_id, the first sent: the storefront retries and duplicates some, and windows count them once."""
    seen: dict[str, Stamped[Event]] = {}
    for stamped in events:
        seen.setdefault(stamped.record.event_id, stamped)
    return list(seen.values())


def late_for_daily_windows(letters: Iterable[DeadLetter]) -> set[str]:
    """Event ids the features job dead-lettered as too late for their daily window."""
    late = set()
    for letter in letters:
        if letter.stage == "features" and letter.reason.startswith("late: the 1d window"):
            late.add(json.loads(base64.b64decode(letter.raw_b64))["event_id"])
    return late


def daily_event_counts(events: Iterable[Event], late: set[str]) -> dict[tuple[str, int], WindowCounts]:
    """Per (SKU, day end): the window count fields the day's on-time events should add up to."""
    counts: dict[tuple[str, int], Counter[str]] = defaultdict(Counter)
    for event in events:
        if event.event_id not in late:
            counts[(event.sku, day_end(event.ts))][COUNTED[event.type]] += 1
    return {key: {field: c[field] for field in COUNTED.values()} for key, c in counts.items()}


def trace_reorders(
    reorders: Sequence[Reorder],
    forecasts: Iterable[Forecast],
    windows: dict[tuple[str, int], WindowCounts],
    event_counts: dict[tuple[str, int], WindowCounts],
) -> dict[str, int]:
    """How many reorders trace back step by step: to a forecast, to its daily window, to the events of that day."""
    forecast_keys = {(f.sku, f.start) for f in forecasts}
    keys = [(r.sku, decision_period(r)) for r in reorders]
    with_forecast = [key for key in keys if key in forecast_keys]
    with_window = [key for key in with_forecast if key in windows]
    return {
        "reorders": len(reorders),
        "with_forecast": len(with_forecast),
        "with_daily_window": len(with_window),
        "window_equals_its_events": sum(windows[key] == event_counts.get(key) for key in with_window),
    }


def purchase_to_reorder_ms(purchases: Iterable[Stamped[Event]], reorders: Iterable[Stamped[Reorder]]) -> list[int]:
    """For every reorder, from each purchase of its SKU on the day before its decision period to the reorder."""
    sent: dict[tuple[str, int], list[int]] = defaultdict(list)
    for purchase in purchases:
        sent[(purchase.record.sku, day_end(purchase.record.ts))].append(purchase.at_ms)
    key = lambda r: (r.record.sku, decision_period(r.record))  # noqa: E731
    return [r.at_ms - at for r in reorders for at in sent.get(key(r), [])]


def close_to_reorder_ms(
    events: Sequence[Stamped[Event]], reorders: Iterable[Stamped[Reorder]], watermark_delay_ms: int
) -> list[int]:
    """For every reorder, from the first event sent with event time past its window's end + the watermark delay
    (no window can close before it) to the reorder; none for a window no such event ever closed."""
    ts = np.array([e.record.ts for e in events], dtype=np.int64)
    order = np.argsort(ts, kind="stable")
    ts = ts[order]
    sent = np.array([e.at_ms for e in events], dtype=np.int64)[order]
    earliest_after = np.minimum.accumulate(sent[::-1])[::-1]  # earliest send among events from here on
    latencies = []
    for reorder in reorders:
        i = int(np.searchsorted(ts, decision_period(reorder.record) + watermark_delay_ms, side="left"))
        if i < len(ts):
            latencies.append(reorder.at_ms - int(earliest_after[i]))
    return latencies


def percentiles_s(latencies_ms: Sequence[int]) -> dict[str, Any]:
    if not latencies_ms:
        return {"n": 0, "p50": None, "p99": None, "max": None}
    values = np.asarray(latencies_ms, dtype=float) / 1000
    p50, p99 = np.percentile(values, [50, 99])
    return {"n": len(values), "p50": round(float(p50), 3), "p99": round(float(p99), 3), "max": float(values.max())}
