"""The pipeline's output traced back to its input, and timed: what the demo's summary and `bench e2e` report.

A reorder for SKU s and decision period P (the agent's `decision_id` is `{s}:{P}`) should come from a forecast of s
starting at P, which the forecaster made when the daily window of s ending at P closed; that window's counts should
equal the distinct events of s on that day, less those the features job dead-lettered as too late for it.
Latency is wall time by the broker's timestamps: from ingest producing a purchase to the agent producing the reorder
it led to (at most one window's wall length plus the processing), and from the window's close (the first event
past its end plus the watermark delay) to the reorder, which is the processing alone, in stages: the window on the
features topic, the forecast, the reorder.
"""

import base64
import json
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, cast

import numpy as np

from shelfcast.contracts import DeadLetter, Event, FeatureWindow, Forecast, PriceChange, Receipt, Reorder
from shelfcast.kafka import Stamped

DAY_MS = 86_400_000
WATERMARK_DELAY_MS = 5_000  # the features job's default out-of-orderness
COUNTED = {"view": "views", "click": "clicks", "cart": "carts", "purchase": "purchases", "return": "returns"}
STAGES = ("close_to_window", "window_to_forecast", "forecast_to_reorder", "close_to_reorder")
WindowCounts = dict[str, int]  # FeatureWindow count fields: views, clicks, carts, purchases, returns


@dataclass
class Observed:
    """What the pipeline's topics and feature store hold after a run."""

    events: list[Stamped[Event]]  # one per event_id, the first sent
    daily_windows: dict[tuple[str, int], FeatureWindow]  # in Redis, by (SKU, window end)
    daily_windows_at: dict[tuple[str, int], int]  # when each first came out on the features topic
    forecasts: list[Stamped[Forecast]]
    reorders: list[Stamped[Reorder]]
    prices: list[Stamped[PriceChange]]
    receipts: list[Stamped[Receipt]]
    dead_letters: list[DeadLetter]


def latencies_ms(observed: Observed) -> dict[str, list[int]]:
    """Purchase -> reorder, and window close -> reorder in its stages (module docstring)."""
    purchases = [e for e in observed.events if e.record.type == "purchase"]
    periods = [decision_period(r.record) for r in observed.reorders]
    closes = window_closes_ms(observed.events, periods, WATERMARK_DELAY_MS)
    forecasts_at = first_at((f.at_ms, (f.record.sku, f.record.start)) for f in observed.forecasts)
    stages = stage_latencies_ms(observed.reorders, closes, observed.daily_windows_at, forecasts_at)
    return {"purchase_to_reorder": purchase_to_reorder_ms(purchases, observed.reorders), **stages}


def decision_period(decision: Reorder | PriceChange) -> int:
    """The period start in the agent's `decision_id`: `{sku}:{period}` for a reorder, `{sku}:{period}:price` for a
    price change (a SKU has no ':')."""
    return int(decision.decision_id.split(":")[1])


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


def window_closes_ms(
    events: Sequence[Stamped[Event]], periods: Iterable[int], watermark_delay_ms: int
) -> dict[int, int]:
    """For each period start P, when the daily window ending at P could first close: the earliest send of an event
    with event time past P + the watermark delay (none for a window no such event ever closed)."""
    ts = np.array([e.record.ts for e in events], dtype=np.int64)
    order = np.argsort(ts, kind="stable")
    ts = ts[order]
    sent = np.array([e.at_ms for e in events], dtype=np.int64)[order]
    earliest_after = np.minimum.accumulate(sent[::-1])[::-1]  # earliest send among events from here on
    closes = {}
    for period in set(periods):
        i = int(np.searchsorted(ts, period + watermark_delay_ms, side="left"))
        if i < len(ts):
            closes[period] = int(earliest_after[i])
    return closes


def stage_latencies_ms(
    reorders: Iterable[Stamped[Reorder]],
    closes: dict[int, int],
    windows_at: dict[tuple[str, int], int],
    forecasts_at: dict[tuple[str, int], int],
) -> dict[str, list[int]]:
    """Where each reorder's time went after its window could close: to the window on the features topic, to the
    forecast made from it, to the reorder; and the whole, window close to reorder."""
    stages: dict[str, list[int]] = {name: [] for name in STAGES}
    for stamped in reorders:
        key = (stamped.record.sku, decision_period(stamped.record))
        close, window, forecast = closes.get(key[1]), windows_at.get(key), forecasts_at.get(key)
        if close is not None:
            stages["close_to_reorder"].append(stamped.at_ms - close)
        if None not in (close, window, forecast):
            stages["close_to_window"].append(cast(int, window) - cast(int, close))
            stages["window_to_forecast"].append(cast(int, forecast) - cast(int, window))
            stages["forecast_to_reorder"].append(stamped.at_ms - cast(int, forecast))
    return stages


def first_at(records: Iterable[tuple[int, tuple[str, int]]]) -> dict[tuple[str, int], int]:
    """The earliest timestamp of each key: a window re-emitted by a late event, or re-scored, counts when first out."""
    first: dict[tuple[str, int], int] = {}
    for at_ms, key in records:
        first[key] = min(at_ms, first.get(key, at_ms))
    return first


def percentiles_s(latencies_ms: Sequence[int]) -> dict[str, Any]:
    if not latencies_ms:
        return {"n": 0, "p50": None, "p99": None, "max": None}
    values = np.asarray(latencies_ms, dtype=float) / 1000
    p50, p99 = np.percentile(values, [50, 99])
    return {"n": len(values), "p50": round(float(p50), 3), "p99": round(float(p99), 3), "max": float(values.max())}
