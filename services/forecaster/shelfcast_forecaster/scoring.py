"""Online scoring: a published model version, compiled once, turned into `Forecast` records per SKU.

Demand of a SKU is the ``units`` of its feature windows at the model's granularity (``1d`` for ``freq="D"``);
a period without a window inside the SKU's known range had no events, so its demand is 0. A SKU's history runs
from its first window in the store to its newest one (its forecast origin); the scale is the mean demand over
that history, the same rule as in training.

A SKU with fewer than `MIN_HISTORY` periods of history gets the documented fallback instead of the network:
Poisson quantiles at its mean demand so far (``model="poisson-fallback"``, ``fallback=true``). So does a SKU whose
network output is not finite, or implausible: a quantile above ``max_forecast_multiple`` times the SKU's largest
period demand (at least 1). A SKU whose history in Redis does not decode to finite, non-negative demand is rejected
with the reason (`read_demand_checked`), never scored.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import tensorflow as tf
from scipy.stats import poisson

from shelfcast.contracts import MAX_UNITS, Forecast
from shelfcast.store import FeatureStore
from shelfcast_forecaster.models import (
    EPSILON,
    CompiledScoring,
    calendar_position,
    encode_windows,
    fill_forward,
)
from shelfcast_forecaster.registry import CARD, SAVED_MODEL, ModelCard

log = logging.getLogger(__name__)

MIN_HISTORY = 7
FALLBACK_MODEL = "poisson-fallback"
SHORT_HISTORY, NON_FINITE, IMPLAUSIBLE = "short_history", "non_finite", "implausible"
FALLBACK_REASONS = (SHORT_HISTORY, NON_FINITE, IMPLAUSIBLE)
GRANULARITY_FREQ = {"1m": "min", "1h": "h", "1d": "D"}
PERIOD_MS = {"1m": 60_000, "1h": 3_600_000, "1d": 86_400_000}
MAX_BATCH = 4096
WARM_UP_ORIGIN_MS = 1_767_225_600_000  # 2026-01-01: any date on every supported calendar
LEVEL_FIELDS = frozenset({"avg_price", "ctr", "conversion"})  # carried forward over periods without a window


@dataclass(frozen=True)
class Demand:
    """One SKU's demand per period, oldest first, ending at the forecast origin."""

    sku: str
    origin_ms: int  # start of the newest period
    period_ms: int
    units: np.ndarray  # (T,)
    exog: np.ndarray | None = None  # (T, E): the model's exogenous fields, when it has any


def demand_from_windows(
    sku: str, starts: np.ndarray, values: np.ndarray, granularity: str, exogenous: Sequence[str] = ()
) -> Demand | None:
    """Dense per-period demand between the first and the newest window (None when there are no windows).

    ``values`` (k, 1 + E) holds ``units`` then the ``exogenous`` fields of each window (`FeatureStore.latest_values`).
    A period without a window had no events: counts are 0 there, and `LEVEL_FIELDS` keep their previous value.
    """
    if not len(starts):
        return None
    period = PERIOD_MS[granularity]
    first = int(starts.min())
    index = (starts - first) // period
    length = int(index.max()) + 1
    units = np.zeros(length, dtype=np.float32)
    units[index] = values[:, 0]
    exog = None
    if exogenous:
        levels = np.array([name in LEVEL_FIELDS for name in exogenous])
        exog = np.where(levels, np.nan, 0.0)[None, :].repeat(length, axis=0).astype(np.float32)
        exog[index] = values[:, 1:]
        exog = fill_forward(exog[None])[0]
    return Demand(sku, first + period * (length - 1), period, units, exog)


def read_demand(store: FeatureStore, skus: Sequence[str], granularity: str, depth: int, exogenous=()) -> list[Demand]:
    """`demand_from_windows` of each SKU's newest ``depth`` windows; SKUs without windows are left out, and a SKU
    whose history does not decode raises `ValueError`."""
    demand, rejected = read_demand_checked(store, skus, granularity, depth, exogenous)
    if rejected:
        raise ValueError("; ".join(f"{sku}: {reason}" for sku, reason in rejected.items()))
    return demand


def read_demand_checked(
    store: FeatureStore, skus: Sequence[str], granularity: str, depth: int, exogenous=()
) -> tuple[list[Demand], dict[str, str]]:
    """`read_demand`, but a SKU whose stored windows do not decode to finite, non-negative demand is left out and
    returned with the reason (SKU -> reason) instead of failing the others. Redis errors propagate."""
    fields = ["units", *exogenous]
    try:
        values = store.latest_values(skus, granularity, depth, fields)
    except (ValueError, KeyError, TypeError):  # one corrupt member fails the batch read: find it SKU by SKU
        values, rejected = {}, {}
        for sku in skus:
            try:
                values |= store.latest_values([sku], granularity, depth, fields)
            except (ValueError, KeyError, TypeError) as exc:
                rejected[sku] = f"history in Redis does not decode: {type(exc).__name__}: {exc}"
    else:
        rejected = {}
    demand = []
    for sku, (starts, rows) in values.items():
        d = demand_from_windows(sku, starts, rows, granularity, exogenous)
        if d is None:
            continue
        if not np.isfinite(d.units).all() or (d.units < 0).any() or (d.units > MAX_UNITS).any():
            rejected[sku] = f"history in Redis has units that are not finite or not within 0..{MAX_UNITS:,} a period"
        else:
            demand.append(d)
    return demand, rejected


def feature_store_history(store: FeatureStore, granularity: str, depth: int, exogenous=()) -> pd.DataFrame:
    """Long-format training data (``unique_id, ds, y`` and the ``exogenous`` fields) from the newest ``depth``
    windows of every SKU in the store: the same demand as `demand_from_windows`, each SKU running to the newest
    period of any SKU."""
    demand = read_demand(store, store.skus(granularity), granularity, depth, exogenous)
    if not demand:
        raise ValueError(f"the feature store has no {granularity} windows")
    end = max(d.origin_ms for d in demand)
    frames = []
    for d in demand:
        gap = (end - d.origin_ms) // d.period_ms
        start = d.origin_ms - d.period_ms * (len(d.units) - 1)
        ds = pd.to_datetime(start + d.period_ms * np.arange(len(d.units) + gap), unit="ms")
        frame = pd.DataFrame({"unique_id": d.sku, "ds": ds, "y": np.concatenate([d.units, np.zeros(gap)])})
        for e, name in enumerate(exogenous):
            assert d.exog is not None
            after = d.exog[-1, e] if name in LEVEL_FIELDS else 0.0
            frame[name] = np.concatenate([d.exog[:, e], np.full(gap, after)])
        frames.append(frame)
    return pd.concat(frames, ignore_index=True)


class Scorer:
    """A model version from the registry: its card and its SavedModel behind one compiled ``tf.function``."""

    def __init__(self, version_dir: str | Path, jit: bool | None = None, max_forecast_multiple: float = 10.0) -> None:
        """``jit``: XLA-compile the scoring function or not; None: `warm_up` times both and keeps the faster.
        ``max_forecast_multiple``: network quantiles above this multiple of a SKU's largest period demand (at
        least 1) are implausible, and that SKU gets the fallback."""
        version_dir = Path(version_dir)
        self.max_forecast_multiple = max_forecast_multiple
        self.card = ModelCard.model_validate_json((version_dir / CARD).read_text())
        self.spec = self.card.spec
        self._saved = tf.saved_model.load(str(version_dir / SAVED_MODEL))
        candidates = [True, False] if jit is None else [jit]
        self._candidates = [CompiledScoring(self._serve, jit=j) for j in candidates]
        self._scoring = self._candidates[0]
        self.device = "GPU" if tf.config.list_physical_devices("GPU") else "CPU"

    def _serve(self, seq, static):
        return self._saved.serve([seq, static])

    @property
    def jit(self) -> bool:
        return self._scoring.jit

    @property
    def version(self) -> str:
        return self.card.version

    def quantiles(self, demand: Sequence[Demand]) -> np.ndarray:
        """(len(demand), horizon, n_quantiles) forecasts in demand units from the network."""
        values, observed = _windows([d.units for d in demand], self.spec.lookback)
        n = len(demand)
        lengths = np.fromiter((len(d.units) for d in demand), np.float32, n)
        scale = np.fromiter((d.units.sum() for d in demand), np.float32, n) / lengths + EPSILON  # `series_scale`
        positions = {ms: self._position(ms) for ms in {d.origin_ms for d in demand}}
        origins = np.fromiter((positions[d.origin_ms] for d in demand), np.int64, n)
        exog = exog_scale = None
        if self.spec.exogenous:
            series = [_exog(d, len(self.spec.exogenous)) for d in demand]
            exog = _windows(series, self.spec.lookback)[0]
            exog_scale = np.stack([np.abs(x).mean(axis=0) for x in series]) + EPSILON  # as `exog_scales`
        seq, static = encode_windows(values, observed, scale, origins, self.spec.season_length, exog, exog_scale)
        batch = min(MAX_BATCH, 1 << max(0, (len(seq) - 1).bit_length()))  # few shapes: few compilations
        return self._scoring(seq, static, batch) * scale[:, None, None]

    def warm_up(self) -> None:
        """Pick the faster compilation mode where there is a choice, then compile every batch shape `quantiles`
        uses, so that no request pays for a compilation."""
        ones = np.ones(self.spec.lookback, np.float32)
        exog = np.ones((self.spec.lookback, len(self.spec.exogenous)), np.float32)
        warm = Demand("warm-up", WARM_UP_ORIGIN_MS, PERIOD_MS["1d"], ones, exog)
        if len(self._candidates) > 1:
            self._scoring = min(self._candidates, key=lambda c: self._seconds_per_batch(c, [warm] * MAX_BATCH))
            log.info("scoring %s XLA: it was faster on a %d-SKU batch", "with" if self.jit else "without", MAX_BATCH)
            self._candidates = [self._scoring]
        size = 1
        while size <= MAX_BATCH:
            self.quantiles([warm] * size)
            size *= 2

    def _seconds_per_batch(self, candidate: CompiledScoring, demand: list[Demand]) -> float:
        self._scoring = candidate
        self.quantiles(demand)  # compiles
        timings = []
        for _ in range(3):
            started = time.perf_counter()
            self.quantiles(demand)
            timings.append(time.perf_counter() - started)
        return sorted(timings)[1]

    def forecasts(self, demand: Sequence[Demand], issued_at: int) -> list[Forecast]:
        """One `Forecast` per SKU: the network where history suffices, the Poisson fallback otherwise."""
        return self.forecasts_with_reasons(demand, issued_at)[0]

    def forecasts_with_reasons(self, demand: Sequence[Demand], issued_at: int) -> tuple[list[Forecast], dict[str, str]]:
        """`forecasts`, and SKU -> why for each one that got the fallback (`FALLBACK_REASONS`)."""
        enough = [d for d in demand if len(d.units) >= MIN_HISTORY]
        reasons = {d.sku: SHORT_HISTORY for d in demand if len(d.units) < MIN_HISTORY}
        scored = {}
        if enough:
            raw = self.quantiles(enough)
            verdicts = implausible(raw, enough, self.max_forecast_multiple)
            for d, values, verdict in zip(enough, _as_lists(raw), verdicts, strict=True):
                if verdict is None:
                    scored[d.sku] = values
                else:
                    reasons[d.sku] = verdict
        return [self._record(d, scored.get(d.sku), issued_at) for d in demand], reasons

    def _record(self, d: Demand, quantiles: list[list[float]] | None, issued_at: int) -> Forecast:
        spec, fallback = self.spec, quantiles is None
        if quantiles is None:
            quantiles = _as_lists(fallback_quantiles(float(d.units.mean()), spec.quantiles, spec.horizon)[None])[0]
        # `_as_lists` makes the values non-negative, non-crossing and `horizon` long, so the record is built
        # without re-validation, which cost more than the network itself.
        return Forecast.model_construct(
            sku=d.sku,
            issued_at=issued_at,
            model=FALLBACK_MODEL if fallback else spec.arch,
            model_version=self.version,
            horizon=spec.horizon,
            freq=spec.freq,
            start=d.origin_ms + d.period_ms,
            quantiles=dict(zip(spec.columns, quantiles, strict=True)),
            fallback=fallback,
        )

    def _position(self, origin_ms: int) -> int:
        return calendar_position(pd.Timestamp(origin_ms, unit="ms"), self.spec.freq)


def implausible(raw: np.ndarray, demand: Sequence[Demand], multiple: float) -> list[str | None]:
    """Per SKU of ``raw`` (S, h, Q) network quantiles: `NON_FINITE`, `IMPLAUSIBLE` (a quantile above ``multiple``
    times the SKU's largest period demand, at least 1, or above the contract's `MAX_UNITS`), or None when its
    forecast can be published."""
    finite = np.isfinite(raw).all(axis=(1, 2))
    largest = np.fromiter((d.units.max() for d in demand), np.float64, len(demand))
    ceiling = np.minimum(multiple * np.maximum(1.0, largest), MAX_UNITS)
    peak = np.where(finite, np.nan_to_num(raw, nan=0.0, posinf=0.0, neginf=0.0).max(axis=(1, 2)), 0.0)
    verdicts = zip(finite, peak, ceiling, strict=True)
    return [NON_FINITE if not ok else IMPLAUSIBLE if top > cap else None for ok, top, cap in verdicts]


def _windows(series: Sequence[np.ndarray], lookback: int) -> tuple[np.ndarray, np.ndarray]:
    """The last ``lookback`` periods of each series ((T,) or (T, E)), left-padded with zeros marked unobserved."""
    if series and all(len(x) >= lookback for x in series):
        values = np.stack([x[-lookback:] for x in series])
        return values, np.ones(values.shape[:2], np.float32)
    values = np.zeros((len(series), lookback, *np.shape(series[0])[1:]) if series else (0, lookback), np.float32)
    observed = np.zeros((len(series), lookback), np.float32)
    for i, x in enumerate(series):
        tail = x[-lookback:]
        values[i, lookback - len(tail) :] = tail
        observed[i, lookback - len(tail) :] = 1.0
    return values, observed


def _exog(d: Demand, n_fields: int) -> np.ndarray:
    if d.exog is None or d.exog.shape[1] != n_fields:
        raise ValueError(f"{d.sku}: the model needs {n_fields} exogenous field(s) per period")
    return d.exog


def _as_lists(quantiles: np.ndarray) -> list[list[list[float]]]:
    """(S, h, Q) -> per SKU, per quantile, the h values: clipped at 0, made non-crossing (a cumulative max over
    the quantiles, which also absorbs float32 rounding), rounded to 4 decimals."""
    ordered = np.maximum.accumulate(np.clip(quantiles, 0, None), axis=-1)
    return np.round(ordered, 4).transpose(0, 2, 1).tolist()


def fallback_quantiles(mean: float, quantiles: Sequence[float], horizon: int) -> np.ndarray:
    """(horizon, Q) Poisson quantiles at ``mean`` per period, the same at every step, at most `MAX_UNITS`."""
    values = poisson.ppf(quantiles, max(mean, 0.0)) if mean > 0 else np.zeros(len(quantiles))
    return np.tile(np.minimum(np.asarray(values, dtype=np.float32), MAX_UNITS), (horizon, 1))
