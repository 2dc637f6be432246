"""Online decisions, pure: (inventory state, forecast quantiles, SKU parameters) -> an order and a price.

Capped base-stock from forecast quantiles (the default policy, and the fallback of every other one):

1. Each forecast step's p10/p50/p90 become a mean and a variance: Swanson's rule, mean = 0.3 p10 + 0.4 p50 +
   0.3 p90, and sd = (p90 - p10) / 2.563 (the p10-p90 width of a normal). Other symmetric pairs work too (p5/p95
   weigh 0.185 / 0.63 / 0.185); with p50 only, Poisson: variance = mean.
2. The protection interval is the lead time (its maximum) plus the review period: steps [k, k + L + R) of the
   forecast, where k is how many of its steps have already passed; steps beyond its horizon repeat the last one.
   Means and variances add up (steps taken as independent: correlated demand would need a wider band).
3. That sum is fitted with a gamma distribution (same mean and variance; a point mass when the variance is 0), and
   the order-up-to level S is its quantile at the fractile p / (p + h) (or the SKU's `service_level`), rounded up.
4. The order is S - inventory position (on hand + on order), at most `cap_multiple` x R x the mean demand of one
   period (capped base-stock: one bad period cannot trigger a huge order), and at least 0; then made feasible by
   `env.feasible_order` (0, or MOQ rounded up to whole case packs, at most max_order).

Guardrails applied after the policy: an order is at most `multiple` x R x the SKU's recent sales per period, never
capped below an absolute floor of units (so a SKU with no sales yet can still order; `cap_to_recent_demand`: the
forecast-based cap of step 4 cannot catch a forecast that is itself wrong); a budget per period (the order is cut
down to the largest feasible quantity that fits; the reason says so) and price bounds. Quantiles whose demand is not
a finite number raise `DemandError`: the caller dead-letters the record that carried them.

The price rule (SKUs with `pricing` only): one step down (`max_step`, not below `min_price`) when the position after
ordering is above `markdown_above` x S; one step up when the position before ordering is below S, up to the base
price, or up to `max_price` when it is below `scarce_below` x S; otherwise hold.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Protocol

import numpy as np
import pandas as pd
from pandas.tseries.frequencies import to_offset
from scipy.special import gammaincinv, ndtri

from shelfcast_agent.env import MAX_LEAD, InventorySim, State, feasible_order
from shelfcast_agent.instances import Demand, Instance
from shelfcast_agent.settings import SkuParams

BASE_STOCK = "capped-base-stock"
BASE_STOCK_VERSION = "1"
_MEAN_WEIGHTS = {10: 0.3, 5: 0.185}  # Swanson's rule (p10/p50/p90) and Pearson-Tukey (p5/p50/p95)


# ---------------------------------------------------------------------------------------------------- periods
_PERIOD_ALIASES = {"MS": "M", "ME": "M", "QS-JAN": "Q-DEC", "QE-DEC": "Q-DEC", "YS-JAN": "Y-DEC", "YE-DEC": "Y-DEC"}


class PeriodClock:
    """Decision periods of a forecast frequency: fixed-length ones (D, h, 15min...) by arithmetic on epoch ms,
    calendar ones (MS, W, QS...) through pandas periods. A decision period is `review` forecast steps long."""

    def __init__(self, freq: str, review: int = 1) -> None:
        offset = to_offset(freq)
        self.freq, self.review = freq, review
        self._step_ms: int | None = None
        self._alias: str | None = None
        if isinstance(offset, pd.offsets.Tick):
            self._step_ms = int(offset.nanos // 1_000_000)
        else:
            code = offset.rule_code
            self._alias = _PERIOD_ALIASES.get(code, code if code.startswith("W-") else None)
            if offset.n != 1 or self._alias is None:
                raise ValueError(f"frequency {freq!r}: use a fixed step (D, h, 15min...) or one of MS, QS, YS, W")

    def step(self, ms: int) -> int:
        """Index of the forecast step that contains `ms`."""
        if self._step_ms is not None:
            return ms // self._step_ms
        return int(pd.Period(pd.Timestamp(ms, unit="ms"), freq=self._alias).ordinal)

    def step_start(self, index: int) -> int:
        if self._step_ms is not None:
            return index * self._step_ms
        return int(pd.Period(ordinal=index, freq=self._alias).start_time.value // 1_000_000)

    def period(self, ms: int) -> int:
        """Index (in forecast steps) of the start of the decision period that contains `ms`."""
        return self.step(ms) // self.review * self.review

    def period_start(self, ms: int) -> int:
        return self.step_start(self.period(ms))


@lru_cache(maxsize=64)
def clock_for(freq: str, review: int) -> PeriodClock:
    return PeriodClock(freq, review)


def decision_id(sku: str, period_start_ms: int, kind: str = "reorder") -> str:
    """Deterministic: one reorder and one price decision per SKU per period, whoever computes it and how often."""
    return f"{sku}:{period_start_ms}" if kind == "reorder" else f"{sku}:{period_start_ms}:{kind}"


# ---------------------------------------------------------------------------------------------------- demand
def step_moments(quantiles: Mapping[str, Sequence[float]]) -> tuple[np.ndarray, np.ndarray]:
    """Mean and variance of each forecast step's demand, from its quantiles (see the module docstring)."""
    p50 = np.asarray(quantiles["p50"], dtype=float)
    lows = sorted(int(q[1:]) for q in quantiles if int(q[1:]) < 50 and f"p{100 - int(q[1:])}" in quantiles)
    if not lows:
        return p50, np.maximum(p50, 0.0)
    low_level = lows[0]  # the widest symmetric pair
    lo = np.asarray(quantiles[f"p{low_level}"], dtype=float)
    hi = np.asarray(quantiles[f"p{100 - low_level}"], dtype=float)
    w = _MEAN_WEIGHTS.get(low_level)
    mean = w * lo + (1 - 2 * w) * p50 + w * hi if w is not None else (lo + p50 + hi) / 3
    sd = (hi - lo) / (2 * float(ndtri(1 - low_level / 100)))
    return np.maximum(mean, 0.0), np.maximum(sd, 0.0) ** 2


def protection_demand(
    quantiles: Mapping[str, Sequence[float]], first_step: int, periods: int
) -> tuple[float, float, np.ndarray]:
    """(mean, variance) of the demand over `periods` forecast steps from `first_step`, and the per-step means;
    steps past the horizon repeat the last one."""
    mean, var = step_moments(quantiles)
    steps = np.minimum(np.arange(first_step, first_step + periods), len(mean) - 1)
    return float(mean[steps].sum()), float(var[steps].sum()), mean[steps]


def poisson_quantiles(rate: float, horizon: int) -> dict[str, list[float]]:
    """Quantiles of Poisson(rate) per period (normal approximation, floored at 0): the demand estimate when there
    is no usable forecast, only a sales rate or the SKU's default demand."""
    sd = math.sqrt(max(rate, 0.0))
    z = float(ndtri(0.9))
    return {
        "p10": [max(rate - z * sd, 0.0)] * horizon,
        "p50": [rate] * horizon,
        "p90": [rate + z * sd] * horizon,
    }


def gamma_quantile(mean: float, var: float, level: float) -> float:
    """Quantile of the gamma distribution with this mean and variance (a point mass at the mean when var is 0)."""
    if mean <= 0:
        return 0.0
    if var <= 1e-12:
        return mean
    shape, scale = mean * mean / var, var / mean
    return float(gammaincinv(shape, level) * scale)


class DemandError(ValueError):
    """Quantiles from which no order can be computed (their demand overflows to inf or NaN): the record that carried
    them is dead-lettered with this message, never ordered against."""


# ---------------------------------------------------------------------------------------------------- orders
@dataclass(frozen=True)
class OrderPlan:
    qty: int  # what is ordered: feasible, within the cap and the budget
    wanted: float  # S - position before the cap
    order_up_to: float  # S
    cap: float
    position: float
    mean_per_period: float
    reason: str
    budget_cut: bool = False


def feasible_floor(qty: float, params: SkuParams) -> int:
    """The largest feasible order not above `qty` (whole case packs, at least the MOQ, at most max_order), or 0."""
    top = min(math.floor(qty + 1e-9), params.max_order)
    placed = top // params.case_pack * params.case_pack
    return placed if placed >= max(params.moq, 1) else 0


def make_feasible(qty: float, params: SkuParams) -> int:
    value = feasible_order(np.array([qty]), params.moq, params.case_pack, params.max_order)[0]  # type: ignore[arg-type]
    return int(value)


def capped_base_stock(
    position: float,
    quantiles: Mapping[str, Sequence[float]],
    params: SkuParams,
    review: int = 1,
    first_step: int = 0,
    source: str = "forecast",
) -> OrderPlan:
    """The capped base-stock order (module docstring, steps 1-4); `source` describes the demand in the reason."""
    periods = params.protection_periods + review
    with np.errstate(over="ignore", invalid="ignore"):  # an overflow is reported below, as a DemandError
        mean, var, _ = protection_demand(quantiles, first_step, periods)
    level = params.fractile
    quantile = gamma_quantile(mean, var, level) if math.isfinite(mean) and math.isfinite(var) else math.nan
    if not math.isfinite(quantile):
        raise DemandError(
            f"order-up-to level is not a finite number: the {level:g} quantile of demand over {periods} periods"
            f" (mean {mean:g}, variance {var:g}) from {source}"
        )
    order_up_to = float(math.ceil(quantile - 1e-9))
    per_period = mean / periods
    cap = max(params.cap_multiple * review * per_period, float(max(params.moq, params.case_pack, 1)))
    wanted = max(order_up_to - position, 0.0)
    capped = min(wanted, cap)
    qty = make_feasible(capped, params) if capped >= 0.5 else 0
    fractile = f"p{round(level * 100)}"
    basis = f"{fractile} of {periods}-period lead-time + review demand (mean {mean:.1f}) from {source}"
    if wanted <= 0:
        reason = f"inventory position {position:g} at or above order-up-to {order_up_to:g} ({basis}): no order"
    else:
        reason = f"inventory position {position:g} below order-up-to {order_up_to:g} ({basis})"
        if capped < wanted:
            reason += f"; capped at {capped:.0f} ({params.cap_multiple:g} x {review} x mean demand {per_period:.2f})"
        if qty != round(capped):
            reason += _rounding_note(capped, qty, params)
    return OrderPlan(qty, wanted, order_up_to, cap, position, per_period, reason)


def _rounding_note(wanted: float, qty: int, params: SkuParams) -> str:
    rules = [f"MOQ {params.moq}"] if params.moq else []
    rules += [f"case pack {params.case_pack}"] if params.case_pack > 1 else []
    rules += [f"max order {params.max_order}"] if wanted > params.max_order else []
    return f"; {round(wanted)} made feasible ({', '.join(rules) or 'whole units'}): {qty}"


def cap_to_recent_demand(
    plan: OrderPlan, params: SkuParams, recent_per_period: float, multiple: float, floor_units: float, review: int = 1
) -> OrderPlan:
    """Cut an order above `multiple` x `review` x the SKU's recent sales per period (at least `floor_units`) to the
    largest feasible quantity within that limit; the reason says so."""
    recent = max(recent_per_period, 0.0) if math.isfinite(recent_per_period) else 0.0
    limit = max(multiple * review * recent, floor_units)
    if plan.qty <= limit:
        return plan
    allowed = feasible_floor(limit, params)
    reason = (
        f"{plan.reason}; capped from {plan.qty} to {allowed} by recent demand: at most {multiple:g} x {review} x"
        f" {recent:.2f} sold per period, or {floor_units:g} units"
    )
    return OrderPlan(
        allowed, plan.wanted, plan.order_up_to, plan.cap, plan.position, plan.mean_per_period, reason, plan.budget_cut
    )


def apply_budget(plan: OrderPlan, params: SkuParams, remaining: float | None) -> OrderPlan:
    """Cut an order to the largest feasible quantity whose cost (unit_cost x qty) fits the remaining budget."""
    if remaining is None or plan.qty == 0 or params.unit_cost <= 0:
        return plan
    cost = params.unit_cost * plan.qty
    if cost <= remaining + 1e-9:
        return plan
    allowed = feasible_floor(max(remaining, 0.0) / params.unit_cost, params)
    reason = (
        f"{plan.reason}; cut from {plan.qty} to {allowed} by the period budget"
        f" ({max(remaining, 0.0):.2f} left, {params.unit_cost:g} per unit)"
    )
    return OrderPlan(
        allowed, plan.wanted, plan.order_up_to, plan.cap, plan.position, plan.mean_per_period, reason, True
    )


# ---------------------------------------------------------------------------------------------------- prices
@dataclass(frozen=True)
class PricePlan:
    old_price: float
    new_price: float
    reason: str


def price_rule(
    price: float,
    params: SkuParams,
    position_before: float,
    position_after: float,
    order_up_to: float,
    markdown_above: float = 1.5,
    scarce_below: float = 0.5,
) -> PricePlan | None:
    """One bounded price step, or None to hold (module docstring). Prices are rounded to cents."""
    pricing = params.pricing
    if pricing is None:
        return None
    step = pricing.max_step
    if position_after > markdown_above * order_up_to and price > pricing.min_price:
        new = max(round(price * (1 - step), 2), pricing.min_price)
        why = f"markdown: position {position_after:g} after ordering is above {markdown_above:g} x order-up-to"
    elif position_before < order_up_to:
        ceiling = pricing.max_price if position_before < scarce_below * order_up_to else pricing.base_price
        if price >= ceiling:
            return None
        new = min(round(price * (1 + step), 2), ceiling)
        why = f"scarce: position {position_before:g} below order-up-to {order_up_to:g}, price back up"
    else:
        return None
    new = min(max(new, pricing.min_price), pricing.max_price)
    if abs(new - price) < 0.005:
        return None
    return PricePlan(price, new, f"{why} ({price:g} -> {new:g}, bounds {pricing.min_price:g}-{pricing.max_price:g})")


# ---------------------------------------------------------------------------------------------------- learned
@dataclass
class PolicyAnswer:
    """Units to order per SKU, the Q-values behind them when the policy has any, and per SKU whether the policy
    itself trusts its answer (e.g. Q-values inside the range seen in validation)."""

    quantities: np.ndarray
    q_values: np.ndarray | None = None
    in_range: np.ndarray | None = None


class OrderPolicy(Protocol):
    """A learned ordering policy (the DQN) over one `InventorySim` whose copies are the SKUs deciding now, its
    state set from theirs (observations: `sim.observe(state)`, as in training); `anchor` is the capped base-stock
    order of each SKU (a residual policy corrects it)."""

    name: str
    version: str

    def order_for(self, sim: InventorySim, state: State, anchor: np.ndarray) -> PolicyAnswer: ...


@dataclass
class SkuView:
    """What a learned policy needs of one SKU at a decision."""

    sku: str
    params: SkuParams
    on_hand: float
    pipeline_slots: np.ndarray  # (MAX_LEAD,) units arriving in 1..MAX_LEAD periods
    price: float | None
    per_period: dict[str, float]  # quantiles of one period's demand (mean over the protection interval)
    anchor: float = 0.0  # the capped base-stock order (before feasibility)


def per_period_quantiles(
    quantiles: Mapping[str, Sequence[float]], first_step: int, periods: int
) -> tuple[dict[str, float], float]:
    """Stationary per-period quantiles for the simulator's `Demand` (each quantile averaged over the protection
    interval) and the mean per period."""
    out = {}
    for name, values in quantiles.items():
        arr = np.asarray(values, dtype=float)
        steps = np.minimum(np.arange(first_step, first_step + periods), len(arr) - 1)
        out[name] = float(arr[steps].mean())
    mean, _, _ = protection_demand(quantiles, first_step, periods)
    return out, mean / periods


def instance_for(view: SkuView) -> Instance:
    """The simulator instance of one SKU now: its parameters, demand = the forecast's per-period quantiles."""
    p = view.params
    mean, _ = step_moments({k: [v] for k, v in view.per_period.items()})
    return Instance(
        name=view.sku,
        demand=Demand(dist="quantiles", mean=min(max(float(mean[0]), 1e-6), 1e5), quantiles=view.per_period),
        lead_time=p.lead_time,
        holding_cost=p.holding_cost,
        shortage_cost=p.shortage_cost,
        order_cost=p.order_cost,
        unit_cost=p.unit_cost,
        lost_sales=p.lost_sales,
        moq=p.moq,
        case_pack=p.case_pack,
        max_order=p.max_order,
        pricing=p.pricing,
    )


def sim_for(views: Sequence[SkuView]) -> tuple[InventorySim, State]:
    """An `InventorySim` over the SKUs with its state set from theirs (`sim.observe()` is then exactly the
    observation the DQN was trained on)."""
    sim = InventorySim([instance_for(v) for v in views])
    on_hand = np.array([v.on_hand for v in views], dtype=float)
    pipeline = np.stack([v.pipeline_slots for v in views]).astype(float).reshape(len(views), MAX_LEAD)
    price = np.array([v.price if v.price is not None else base for v, base in zip(views, sim.base_price, strict=True)])
    sim.state = State(on_hand, pipeline, price, 0)
    return sim, sim.state


def learned_orders(
    policy: OrderPolicy, views: Sequence[SkuView], q_limit: float
) -> tuple[np.ndarray, np.ndarray, list[str | None]]:
    """Ask the policy for all SKUs at once. Returns wanted units, feasible units, and per SKU None or the reason to
    fall back: `q_out_of_range` (Q-values not finite, beyond +-q_limit, outside the policy's own trusted range, or
    a quantity that is not a finite number in [0, max_order])."""
    sim, state = sim_for(views)
    answer = policy.order_for(sim, state, np.array([v.anchor for v in views], dtype=float))
    wanted = np.asarray(answer.quantities, dtype=float).reshape(len(views))
    bad = ~np.isfinite(wanted) | (wanted < 0) | (wanted > np.array([v.params.max_order for v in views]))
    if answer.q_values is not None:
        q = np.asarray(answer.q_values, dtype=float).reshape(len(views), -1)
        bad |= ~np.isfinite(q).all(axis=1) | (np.abs(q) > q_limit).any(axis=1)
    if answer.in_range is not None:
        bad |= ~np.asarray(answer.in_range, dtype=bool).reshape(len(views))
    problems: list[str | None] = ["q_out_of_range" if b else None for b in bad]
    safe = np.where(np.isfinite(wanted), np.maximum(wanted, 0.0), 0.0)
    moq = np.array([v.params.moq for v in views], dtype=float)
    pack = np.array([v.params.case_pack for v in views], dtype=float)
    top = np.array([v.params.max_order for v in views], dtype=float)
    return wanted, feasible_order(safe, moq, pack, top), problems
