"""Online scoring: a published model version, compiled once, turned into `Forecast` records per SKU.

Demand of a SKU is the ``units`` of its feature windows at the model's granularity (``1d`` for ``freq="D"``);
a period without a window inside the SKU's known range had no events, so its demand is 0. A SKU's history runs
from its first window in the store to its newest one (its forecast origin); the scale is the mean demand over
that history, the same rule as in training.

A SKU with fewer than `MIN_HISTORY` periods of history gets the documented fallback instead of the network:
Poisson quantiles at its mean demand so far (``model="poisson-fallback"``, ``fallback=true``).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.stats import poisson

from shelfcast.contracts import FeatureWindow, Forecast
from shelfcast.store import FeatureStore
from shelfcast_forecaster.models import CompiledScoring, calendar_position, encode_windows, series_scale
from shelfcast_forecaster.registry import CARD, SAVED_MODEL, ModelCard

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
import tensorflow as tf

log = logging.getLogger(__name__)

MIN_HISTORY = 7
FALLBACK_MODEL = "poisson-fallback"
GRANULARITY_FREQ = {"1m": "min", "1h": "h", "1d": "D"}
PERIOD_MS = {"1m": 60_000, "1h": 3_600_000, "1d": 86_400_000}
MAX_BATCH = 4096


@dataclass(frozen=True)
class Demand:
    """One SKU's demand per period, oldest first, ending at the forecast origin."""

    sku: str
    origin_ms: int  # start of the newest period
    period_ms: int
    units: np.ndarray


def demand_from_windows(sku: str, windows: Sequence[FeatureWindow], granularity: str) -> Demand | None:
    """Dense per-period demand between the first and the newest window (None when there are no windows)."""
    if not windows:
        return None
    period = PERIOD_MS[granularity]
    starts = np.array([w.window_start for w in windows], dtype=np.int64)
    first = int(starts.min())
    index = (starts - first) // period
    units = np.zeros(int(index.max()) + 1, dtype=np.float32)
    np.add.at(units, index, [w.units for w in windows])
    return Demand(sku, first + period * (len(units) - 1), period, units)


def feature_store_history(store: FeatureStore, granularity: str, depth: int) -> pd.DataFrame:
    """Long-format training data (``unique_id, ds, y``) from the newest ``depth`` windows of every SKU in the
    store: the same demand as `demand_from_windows`, each SKU running to the newest period of any SKU."""
    skus = store.skus(granularity)
    demand = [
        d
        for sku, w in store.latest_many(skus, granularity, depth).items()
        if (d := demand_from_windows(sku, w, granularity)) is not None
    ]
    if not demand:
        raise ValueError(f"the feature store has no {granularity} windows")
    end = max(d.origin_ms for d in demand)
    frames = []
    for d in demand:
        units = np.concatenate([d.units, np.zeros((end - d.origin_ms) // d.period_ms, np.float32)])
        start = d.origin_ms - d.period_ms * (len(d.units) - 1)
        ds = pd.to_datetime(start + d.period_ms * np.arange(len(units)), unit="ms")
        frames.append(pd.DataFrame({"unique_id": d.sku, "ds": ds, "y": units.astype(np.float64)}))
    return pd.concat(frames, ignore_index=True)


class Scorer:
    """A model version from the registry: its card and its SavedModel behind one compiled ``tf.function``."""

    def __init__(self, version_dir: str | Path, jit: bool = True) -> None:
        version_dir = Path(version_dir)
        self.card = ModelCard.model_validate_json((version_dir / CARD).read_text())
        self.spec = self.card.spec
        self._saved = tf.saved_model.load(str(version_dir / SAVED_MODEL))
        self._scoring = CompiledScoring(lambda seq, static: self._saved.serve([seq, static]), jit=jit)
        self.device = "GPU" if tf.config.list_physical_devices("GPU") else "CPU"

    @property
    def version(self) -> str:
        return self.card.version

    def quantiles(self, demand: Sequence[Demand]) -> np.ndarray:
        """(len(demand), horizon, n_quantiles) forecasts in demand units from the network."""
        lookback = self.spec.lookback
        values = np.zeros((len(demand), lookback), dtype=np.float32)
        observed = np.zeros_like(values)
        scale = np.empty(len(demand), dtype=np.float32)
        origins = np.empty(len(demand), dtype=np.int64)
        for i, d in enumerate(demand):
            tail = d.units[-lookback:]
            values[i, lookback - len(tail) :] = tail
            observed[i, lookback - len(tail) :] = 1.0
            scale[i] = series_scale(d.units[None, :], np.ones((1, len(d.units))))[0]
            origins[i] = self._position(d.origin_ms)
        seq, static = encode_windows(values, observed, scale, origins, self.spec.season_length)
        batch = min(MAX_BATCH, 1 << max(0, (len(seq) - 1).bit_length()))  # few shapes: few compilations
        return self._scoring(seq, static, batch) * scale[:, None, None]

    def forecasts(self, demand: Sequence[Demand], issued_at: int) -> list[Forecast]:
        """One `Forecast` per SKU: the network where history suffices, the Poisson fallback otherwise."""
        enough = [d for d in demand if len(d.units) >= MIN_HISTORY]
        scored = dict(zip((d.sku for d in enough), self.quantiles(enough), strict=True)) if enough else {}
        return [self._record(d, scored.get(d.sku), issued_at) for d in demand]

    def _record(self, d: Demand, quantiles: np.ndarray | None, issued_at: int) -> Forecast:
        spec, fallback = self.spec, quantiles is None
        if quantiles is None:
            quantiles = fallback_quantiles(float(d.units.mean()), spec.quantiles, spec.horizon)
        values = np.maximum.accumulate(np.clip(quantiles, 0, None), axis=-1)  # float32 rounding: never crossing
        return Forecast(
            sku=d.sku,
            issued_at=issued_at,
            model=FALLBACK_MODEL if fallback else spec.arch,
            model_version=self.version,
            horizon=spec.horizon,
            freq=spec.freq,
            start=d.origin_ms + d.period_ms,
            quantiles={col: [round(float(v), 4) for v in values[:, i]] for i, col in enumerate(spec.columns)},
            fallback=fallback,
        )

    def _position(self, origin_ms: int) -> int:
        return calendar_position(pd.Timestamp(origin_ms, unit="ms"), self.spec.freq)


def fallback_quantiles(mean: float, quantiles: Sequence[float], horizon: int) -> np.ndarray:
    """(horizon, Q) Poisson quantiles at ``mean`` per period, the same at every step."""
    values = poisson.ppf(quantiles, max(mean, 0.0)) if mean > 0 else np.zeros(len(quantiles))
    return np.tile(np.asarray(values, dtype=np.float32), (horizon, 1))
