"""A synthetic storefront: a deterministic catalog, its daily demand history and the event stream behind it.

Expected units of a SKU on a day are

    base_demand * weekly * yearly * trend * (price / base_price) ** elasticity

That demand drives the SKU's traffic (views, with negative-binomial day-to-day noise), which thins through the
funnel view -> click -> cart -> purchase at per-SKU conversion rates; a purchase is one order of 1-3 units, and
each sold unit may come back a few days later as a return. Pure numpy and pandas, no I/O.

Every random draw comes from a generator seeded by `(seed, stream, day)`, so a seed reproduces the same catalog,
history and stream, and `daily_history()` aggregates exactly the events that `events()` yields.
"""

import datetime
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np
import pandas as pd

DAY_MS = 86_400_000
TYPES = ("view", "click", "cart", "purchase", "return")
VIEW, CLICK, CART, PURCHASE, RETURN = range(len(TYPES))
CHANNELS = ("web", "app")

# Share of UTC traffic per hour: quiet at night, a lunchtime bump, an evening peak.
_HOURLY = np.array([6, 4, 3, 2.5, 2.5, 3.5, 7, 12, 17, 20, 21, 22, 24, 23, 22, 22, 23, 26, 30, 34, 36, 32, 23, 12])
_HOURLY = _HOURLY / _HOURLY.sum()
_WEEKLY = np.array([-0.4, -0.4, -0.3, -0.2, 0.1, 0.6, 0.6])  # Monday..Sunday, mean 0, scaled per SKU
_ORDER_QTY = np.array([1, 2, 3])
_ORDER_QTY_P = np.array([0.75, 0.18, 0.07])
_MEAN_ORDER_QTY = float(_ORDER_QTY @ _ORDER_QTY_P)
_DISPERSION = 4.0  # gamma shape of the daily traffic noise: orders are negative binomial, var = m + m**2 / 4
_VIEWS_PER_SESSION = 3.0
_APP_SHARE = 0.4
_SECONDS_BETWEEN_VIEWS = 40.0
_FUNNEL_SECONDS = np.array([(1.0, 15.0), (2.0, 60.0), (5.0, 180.0)])  # view->click, ->cart, ->purchase: min, mean
_DAYS_PER_PRICE_CHANGE = 90
_DAYS_PER_PROMO = 45
_RETURN_LAG_DAYS = (2, 14)
_FAST_MOVER_UNITS = 10.0
# Stream keys of the random generators, so that no two purposes share draws.
_CATALOG, _PRICES, _DAYS, _DELIVERY = range(4)


@dataclass(frozen=True)
class StorefrontConfig:
    skus: int = 200
    days: int = 60
    seed: int = 0
    start: datetime.date = datetime.date(2026, 1, 1)
    currency: str = "EUR"
    duplicate_rate: float = 0.0  # fraction of events delivered twice (same event_id, same content)
    disorder_rate: float = 0.0  # fraction of events delivered late, out of event-time order
    max_disorder_seconds: float = 120.0  # how late a disordered event is delivered, at most

    def __post_init__(self) -> None:
        if self.skus < 1 or self.days < 1:
            raise ValueError("skus and days must be at least 1")
        if self.seed < 0:
            raise ValueError("seed must be >= 0")
        if not re.fullmatch(r"[A-Z]{3}", self.currency):
            raise ValueError("currency must be 3 uppercase letters")
        if not (0 <= self.duplicate_rate <= 1 and 0 <= self.disorder_rate <= 1):
            raise ValueError("duplicate_rate and disorder_rate must be within 0..1")
        if self.max_disorder_seconds < 0:
            raise ValueError("max_disorder_seconds must be >= 0")


class _Batch(NamedTuple):
    """Events as parallel arrays."""

    kind: np.ndarray  # index into TYPES
    sku: np.ndarray  # row of the catalog
    ts: np.ndarray  # epoch ms
    qty: np.ndarray
    price: np.ndarray
    session_day: np.ndarray  # day index of the session (a return belongs to its purchase's session)
    session: np.ndarray  # session number within that day
    channel: np.ndarray  # index into CHANNELS

    def take(self, index: np.ndarray) -> "_Batch":
        return _Batch(*(column[index] for column in self))

    @staticmethod
    def concat(batches: list["_Batch"]) -> "_Batch":
        return _Batch(*(np.concatenate(columns) for columns in zip(*batches, strict=True)))


class _Day(NamedTuple):
    number: int  # days since the start
    sessions: int
    events: _Batch  # in event-time order


def _rng(seed: int, stream: int, day: int = 0) -> np.random.Generator:
    return np.random.default_rng([seed, stream, day])


def _shelf_price(price: np.ndarray) -> np.ndarray:
    """Round up to a .99 ending."""
    return np.round(np.maximum(np.ceil(price) - 0.01, 0.99), 2)


def _time_of_day_ms(rng: np.random.Generator, n: int) -> np.ndarray:
    hours = rng.choice(24, size=n, p=_HOURLY)
    return hours * 3_600_000 + rng.integers(0, 3_600_000, size=n)


def _make_catalog(config: StorefrontConfig) -> pd.DataFrame:
    rng, n = _rng(config.seed, _CATALOG), config.skus
    # Heavy tail: the median SKU sells half a unit a day (zero on most days), the top ones dozens.
    base_demand = np.minimum(rng.lognormal(np.log(0.5), 1.5, n), 1000.0)
    catalog = pd.DataFrame(
        {
            "unique_id": [f"SKU-{i:05d}" for i in range(n)],
            "base_demand": base_demand,
            "base_price": _shelf_price(np.clip(rng.lognormal(np.log(25.0), 1.0, n), 2.0, 500.0)),
            "elasticity": rng.uniform(-3.0, -0.8, n),
            "weekly_amplitude": rng.uniform(0.05, 0.5, n),
            "yearly_amplitude": rng.uniform(0.0, 0.4, n),
            "yearly_peak_doy": rng.integers(1, 366, n),
            "trend_per_year": rng.normal(0.0, 0.25, n),
            "return_rate": rng.uniform(0.02, 0.10, n),
            "view_to_click": rng.uniform(0.05, 0.15, n),
            "click_to_cart": rng.uniform(0.2, 0.4, n),
            "cart_to_purchase": rng.uniform(0.3, 0.6, n),
        }
    )
    # Syntetos-Boylan: intermittent when the mean interval between selling days exceeds 1.32 days.
    p_selling_day = 1 - (1 + base_demand / _MEAN_ORDER_QTY / _DISPERSION) ** -_DISPERSION
    catalog["demand_class"] = np.where(
        base_demand >= _FAST_MOVER_UNITS, "fast", np.where(1 / p_selling_day > 1.32, "intermittent", "smooth")
    )
    return catalog


def _price_schedule(config: StorefrontConfig, base_price: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Selling price and promo flag, each (days, skus): permanent price changes plus discounted promo windows."""
    rng, days, skus = _rng(config.seed, _PRICES), config.days, config.skus
    changed = rng.random((days, skus)) < 1 / _DAYS_PER_PRICE_CHANGE
    factors = np.where(changed, rng.uniform(0.85, 1.2, (days, skus)), 1.0)
    list_price = _shelf_price(base_price * np.cumprod(factors, axis=0))

    promos = rng.poisson(days / _DAYS_PER_PROMO, skus)
    sku = np.repeat(np.arange(skus), promos)
    first = rng.integers(0, days, sku.size)
    length = rng.integers(3, 11, sku.size)
    discount = np.round(rng.uniform(0.1, 0.4, sku.size) * 20) / 20
    offset = np.arange(length.sum()) - np.repeat(np.cumsum(length) - length, length)
    day = np.repeat(first, length) + offset
    inside = day < days
    discounts = np.zeros((days, skus))
    np.maximum.at(discounts, (day[inside], np.repeat(sku, length)[inside]), np.repeat(discount, length)[inside])

    promo = discounts > 0
    return np.where(promo, np.round(list_price * (1 - discounts), 2), list_price), promo.astype(np.int8)


class Storefront:
    """A deterministic simulated shop: `catalog`, `daily_history()` and `events()` for one `StorefrontConfig`."""

    def __init__(self, config: StorefrontConfig) -> None:
        self.config = config
        self.catalog = _make_catalog(config)
        self._dates = [config.start + datetime.timedelta(days=d) for d in range(config.days)]
        self._day_tags = [date.strftime("%Y%m%d") for date in self._dates]
        epoch_day = (config.start - datetime.date(1970, 1, 1)).days
        self._day_start_ms = (epoch_day + np.arange(config.days)) * DAY_MS
        self._sku_ids = self.catalog["unique_id"].to_numpy(dtype=object)
        self._funnel = self.catalog[["view_to_click", "click_to_cart", "cart_to_purchase"]].to_numpy().T.copy()
        self._return_rate = self.catalog["return_rate"].to_numpy()
        self._price, self._promo = _price_schedule(config, self.catalog["base_price"].to_numpy())
        self._views_mean = self._expected_units() / (_MEAN_ORDER_QTY * self._funnel.prod(axis=0))

    def _expected_units(self) -> np.ndarray:
        """Mean units per (day, SKU) before noise."""
        c = self.catalog
        t = np.arange(self.config.days)[:, None]
        weekday = np.array([date.weekday() for date in self._dates])[:, None]
        day_of_year = np.array([date.timetuple().tm_yday for date in self._dates])[:, None]
        weekly = 1 + c["weekly_amplitude"].to_numpy() * _WEEKLY[weekday]
        season = np.cos(2 * np.pi * (day_of_year - c["yearly_peak_doy"].to_numpy()) / 365.25)
        yearly = 1 + c["yearly_amplitude"].to_numpy() * season
        trend = np.exp(c["trend_per_year"].to_numpy() * t / 365.25)
        price_effect = (self._price / c["base_price"].to_numpy()) ** c["elasticity"].to_numpy()
        return c["base_demand"].to_numpy() * weekly * yearly * trend * price_effect

    # -- simulation ---------------------------------------------------------------------------------------

    def _simulate(self) -> Iterator[_Day]:
        """Each day's events in event-time order; returns are carried over to the day they happen."""
        pending: dict[int, list[_Batch]] = {}
        for d in range(self.config.days):
            rng = _rng(self.config.seed, _DAYS, d)
            batches, sessions = self._shopping(d, rng)
            self._schedule_returns(d, batches[PURCHASE], rng, pending)
            events = _Batch.concat(batches + pending.pop(d, []))
            yield _Day(d, sessions, events.take(np.argsort(events.ts, kind="stable")))

    def _shopping(self, d: int, rng: np.random.Generator) -> tuple[list[_Batch], int]:
        """Views, clicks, carts and purchases of day `d` (one batch per type) and the number of sessions."""
        views = rng.poisson(self._views_mean[d] * rng.gamma(_DISPERSION, 1 / _DISPERSION, self.config.skus))
        # Thinning: each step converts a binomial share of the previous one, per SKU.
        reached = [views]
        for rate in self._funnel:
            reached.append(rng.binomial(reached[-1], rate))
        sku = np.repeat(np.arange(self.config.skus), views)
        rank = np.arange(sku.size) - np.repeat(np.cumsum(views) - views, views)
        depth = sum((rank < r[sku]).astype(np.int64) for r in reached[1:])  # 0 = only viewed .. 3 = bought
        shuffle = rng.permutation(sku.size)
        sku, depth = sku[shuffle], depth[shuffle]

        session, sessions, times = self._sessions(d, rng, depth)
        channel = (rng.random(sessions) < _APP_SHARE).astype(np.int64)[session]
        cart_qty = rng.choice(_ORDER_QTY, size=sku.size, p=_ORDER_QTY_P)
        price = self._price[d]
        batches = []
        for kind in (VIEW, CLICK, CART, PURCHASE):
            m, n = depth >= kind, int((depth >= kind).sum())
            batch = _Batch(
                kind=np.full(n, kind),
                sku=sku[m],
                ts=times[m, kind],
                qty=cart_qty[m] if kind >= CART else np.ones(n, dtype=np.int64),
                price=price[sku[m]],
                session_day=np.full(n, d),
                session=session[m],
                channel=channel[m],
            )
            batches.append(batch)
        return batches, sessions

    def _sessions(self, d: int, rng: np.random.Generator, depth: np.ndarray) -> tuple[np.ndarray, int, np.ndarray]:
        """Group the day's views into sessions; return each view's session, the count, and (views, 4) timestamps."""
        n = depth.size
        session = np.searchsorted(np.cumsum(rng.geometric(1 / _VIEWS_PER_SESSION, n)), np.arange(n), side="right")
        sessions = int(session[-1]) + 1 if n else 0
        first = np.flatnonzero(np.r_[True, session[1:] != session[:-1]]) if n else np.zeros(0, dtype=np.int64)

        browsing = np.cumsum(rng.exponential(_SECONDS_BETWEEN_VIEWS * 1000, n))
        offsets = np.empty((n, 4), dtype=np.int64)
        offsets[:, VIEW] = browsing - browsing[first][session]
        delays = _FUNNEL_SECONDS[:, 0] + rng.exponential(_FUNNEL_SECONDS[:, 1] - _FUNNEL_SECONDS[:, 0], (n, 3))
        offsets[:, CLICK:] = offsets[:, [VIEW]] + np.cumsum(delays * 1000, axis=1).astype(np.int64)

        # A session starts at a time drawn from the daily profile, early enough to end within the day.
        last = np.take_along_axis(offsets, depth[:, None], axis=1)[:, 0]
        span = np.maximum.reduceat(last, first) if n else np.zeros(0, dtype=np.int64)
        start = np.clip(_time_of_day_ms(rng, sessions), 0, np.maximum(DAY_MS - 1 - span, 0))
        return session, sessions, self._day_start_ms[d] + start[session][:, None] + offsets

    def _schedule_returns(self, d: int, bought: _Batch, rng: np.random.Generator, pending: dict) -> None:
        """Each sold unit comes back with its SKU's return rate, a few days later; none after the last day."""
        returned = rng.binomial(bought.qty, self._return_rate[bought.sku])
        lag = rng.integers(_RETURN_LAG_DAYS[0], _RETURN_LAG_DAYS[1] + 1, bought.qty.size)
        keep = (returned > 0) & (d + lag < self.config.days)
        returns = bought.take(keep)._replace(kind=np.full(keep.sum(), RETURN), qty=returned[keep])
        returns = returns._replace(ts=self._day_start_ms[d + lag[keep]] + _time_of_day_ms(rng, keep.sum()))
        for day in np.unique(lag[keep]):
            pending.setdefault(d + int(day), []).append(returns.take(lag[keep] == day))

    # -- public API ----------------------------------------------------------------------------------------

    def daily_history(self) -> pd.DataFrame:
        """Long format (unique_id, ds, y, price, promo, views, clicks, carts, purchases, returns), zeros included."""
        skus, days = self.config.skus, self.config.days
        counts = np.zeros((days, len(TYPES), skus), dtype=np.int64)
        units = np.zeros((days, len(TYPES), skus), dtype=np.int64)
        for day in self._simulate():
            key = day.events.kind * skus + day.events.sku
            counts[day.number] = np.bincount(key, minlength=len(TYPES) * skus).reshape(len(TYPES), skus)
            qty = np.bincount(key, weights=day.events.qty, minlength=len(TYPES) * skus)
            units[day.number] = np.rint(qty).astype(np.int64).reshape(len(TYPES), skus)

        def per_sku(values: np.ndarray) -> np.ndarray:  # (days, skus) -> SKU-major, day-minor
            return values.T.ravel()

        return pd.DataFrame(
            {
                "unique_id": np.repeat(self._sku_ids, days),
                "ds": np.tile(pd.date_range(self.config.start, periods=days, freq="D"), skus),
                "y": per_sku(units[:, PURCHASE]),
                "price": per_sku(self._price),
                "promo": per_sku(self._promo),
                "views": per_sku(counts[:, VIEW]),
                "clicks": per_sku(counts[:, CLICK]),
                "carts": per_sku(counts[:, CART]),
                "purchases": per_sku(counts[:, PURCHASE]),
                "returns": per_sku(units[:, RETURN]),
            }
        )

    def events(self) -> Iterator[dict[str, Any]]:
        """Every event as a dict for `Event.model_validate`, in delivery order, generated lazily day by day.

        Delivery follows event time, except that `disorder_rate` of the events are moved after a later event at
        most `max_disorder_seconds` younger, and `duplicate_rate` of them are delivered a second time likewise.
        """
        for day in self._simulate():
            yield from self._deliver(day)

    # -- delivery ------------------------------------------------------------------------------------------

    def _deliver(self, day: _Day) -> Iterator[dict[str, Any]]:
        events, order = day.events, self._delivery_order(day)
        prefix = f"{self.config.seed}-{self._day_tags[day.number]}-"
        event_ids = np.array([f"{prefix}{n}" for n in range(events.ts.size)], dtype=object)
        columns = (
            event_ids[order],
            np.array(TYPES, dtype=object)[events.kind[order]],
            self._sku_ids[events.sku[order]],
            events.ts[order],
            events.qty[order],
            events.price[order],
            self._session_ids(day)[order],
            np.array(CHANNELS, dtype=object)[events.channel[order]],
        )
        currency = self.config.currency
        for event_id, kind, sku, ts, qty, price, session_id, channel in zip(
            *(c.tolist() for c in columns), strict=True
        ):
            yield {
                "event_id": event_id,
                "type": kind,
                "sku": sku,
                "ts": ts,
                "qty": qty,
                "price": price,
                "currency": currency,
                "session_id": session_id,
                "channel": channel,
            }

    def _session_ids(self, day: _Day) -> np.ndarray:
        seed, events = self.config.seed, day.events
        prefix = f"s{seed}-{self._day_tags[day.number]}-"
        own = np.array([f"{prefix}{n}" for n in range(day.sessions)], dtype=object)
        ids = np.empty(events.ts.size, dtype=object)
        today = events.session_day == day.number
        ids[today] = own[events.session[today]]
        earlier = zip(events.session_day[~today].tolist(), events.session[~today].tolist(), strict=True)
        ids[~today] = [f"s{seed}-{self._day_tags[d]}-{n}" for d, n in earlier]
        return ids

    def _delivery_order(self, day: _Day) -> np.ndarray:
        """Indices into the day's events in delivery order, duplicates included."""
        rng, ts = _rng(self.config.seed, _DELIVERY, day.number), day.events.ts
        slot = np.arange(ts.size, dtype=float)
        late = np.flatnonzero(rng.random(ts.size) < self.config.disorder_rate)
        slot[late] = self._later_slot(ts, late, rng)
        copies = np.flatnonzero(rng.random(ts.size) < self.config.duplicate_rate)
        index = np.concatenate([np.arange(ts.size), copies])
        return index[np.argsort(np.concatenate([slot, self._later_slot(ts, copies, rng)]), kind="stable")]

    def _later_slot(self, ts: np.ndarray, index: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """A delivery slot right after a random event up to max_disorder_seconds after ts[index] (same day);
        right after the event itself where there is none."""
        first = np.searchsorted(ts, ts[index], side="right")
        end = np.searchsorted(ts, ts[index] + int(self.config.max_disorder_seconds * 1000), side="right")
        pick = first + (rng.random(index.size) * (end - first)).astype(np.int64)
        return np.where(first < end, pick, index) + rng.uniform(0.01, 0.99, index.size)
