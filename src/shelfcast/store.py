"""The Redis online feature store, behind a narrow interface (in the spirit of Feast's online store).

Layout: one sorted set per SKU and granularity, `sc:feat:{sku}:{gran}`, members are the window records
as JSON, scored by `window_end`. A write first removes whatever has the same `window_end`, so a replayed
or late-updated window overwrites itself. Each key keeps the newest `depth` windows and expires after `ttl`.
"""

from collections.abc import Iterable, Sequence
from typing import cast

import numpy as np
import orjson
import pandas as pd
import redis

from shelfcast.contracts import FeatureWindow
from shelfcast.errors import InfraUnavailable
from shelfcast.settings import redacted_url

KEY_PREFIX = "sc:feat:"


def feature_key(sku: str, granularity: str) -> str:
    return f"{KEY_PREFIX}{sku}:{granularity}"


def connect_redis(url: str, timeout: float = 3.0) -> redis.Redis:
    """A client that has answered PING, or `InfraUnavailable` naming the URL and what went wrong."""
    client = redis.Redis.from_url(url, socket_connect_timeout=timeout, socket_timeout=timeout)
    try:
        client.ping()
    except redis.RedisError as exc:
        raise InfraUnavailable(f"Redis unreachable at {redacted_url(url)}: {exc}") from None
    return client


class FeatureStore:
    def __init__(self, client: redis.Redis, depth: int = 2_000, ttl_seconds: int = 14 * 86_400) -> None:
        self._redis = client
        self.depth = depth
        self.ttl_seconds = ttl_seconds

    def write(self, windows: Iterable[FeatureWindow]) -> int:
        """Upsert windows in one atomic round trip; returns how many were written."""
        pipe = self._redis.pipeline(transaction=True)
        touched: set[str] = set()
        count = 0
        for window in windows:
            key = feature_key(window.sku, window.granularity)
            pipe.zremrangebyscore(key, window.window_end, window.window_end)
            pipe.zadd(key, {window.model_dump_json(): window.window_end})
            touched.add(key)
            count += 1
        for key in touched:
            pipe.zremrangebyrank(key, 0, -self.depth - 1)
            pipe.expire(key, self.ttl_seconds)
        if count:
            pipe.execute()
        return count

    def latest(self, sku: str, granularity: str, n: int = 1) -> pd.DataFrame:
        """The newest `n` windows, oldest first: one row per window, the `FeatureWindow` fields as columns."""
        raw = cast(list[bytes], self._redis.zrange(feature_key(sku, granularity), 0, n - 1, desc=True))
        return _frame(reversed(raw))

    def latest_values(
        self, skus: Iterable[str], granularity: str, n: int, fields: Sequence[str]
    ) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """Per SKU, the `window_start`s (k,) and numeric `fields` (k, len(fields)) of its newest `n` windows,
        oldest first, in one round trip (None as NaN; k = 0 for SKUs without windows). The scoring fast path:
        parsed with orjson and not re-validated, since `write` only stores validated windows."""
        unknown = [f for f in fields if f not in FeatureWindow.model_fields]
        if unknown:
            raise ValueError(f"unknown feature field(s) {unknown}")
        skus = list(skus)
        pipe = self._redis.pipeline(transaction=False)
        for sku in skus:
            pipe.zrange(feature_key(sku, granularity), 0, n - 1, desc=True)
        out = {}
        for sku, raw in zip(skus, cast(list[list[bytes]], pipe.execute()), strict=True):
            records = [orjson.loads(m) for m in reversed(raw)]
            starts = np.fromiter((r["window_start"] for r in records), np.int64, len(records))
            values = np.array([[r[f] for f in fields] for r in records], dtype=np.float64).reshape(-1, len(fields))
            out[sku] = (starts, values)
        return out

    def skus(self, granularity: str) -> list[str]:
        """Every SKU with windows at `granularity`, sorted (a SCAN: fine for training jobs, not per request)."""
        keys = self._redis.scan_iter(match=feature_key("*", granularity), count=1_000)
        return sorted({k.decode()[len(KEY_PREFIX) : -len(granularity) - 1] for k in keys})

    def history(self, sku: str, granularity: str, start_ms: int, end_ms: int) -> pd.DataFrame:
        """Windows whose `window_end` lies in [start_ms, end_ms], oldest first."""
        return _frame(self._between(sku, granularity, start_ms, end_ms))

    def windows(self, sku: str, granularity: str, start_ms: int, end_ms: int) -> list[FeatureWindow]:
        """`history` as records rather than a frame."""
        return [FeatureWindow.model_validate_json(m) for m in self._between(sku, granularity, start_ms, end_ms)]

    def _between(self, sku: str, granularity: str, start_ms: int, end_ms: int) -> list[bytes]:
        return cast(list[bytes], self._redis.zrange(feature_key(sku, granularity), start_ms, end_ms, byscore=True))


_COLUMNS = list(FeatureWindow.model_fields)


def _frame(members: Iterable[bytes]) -> pd.DataFrame:
    rows = [FeatureWindow.model_validate_json(m).model_dump() for m in members]
    return pd.DataFrame(rows, columns=_COLUMNS)
