"""Classical inventory policies, their newsvendor and simulation fits, and the cost of running a policy.

Every policy is a small frozen dataclass that drives N copies at once: its parameters are per-copy arrays (a
scalar broadcasts), and `order(sim, state)` returns the wanted units per copy, which the simulator then makes
feasible (MOQ, case pack, max order; see `env.feasible_order`). Classical policies never move prices.

- `BaseStock(level)`: order up to S: max(S - IP, 0).
- `CappedBaseStock(level, cap)`: min(max(S - IP, 0), cap), the good simple policy for lost sales.
- `SS(s, S)`: if IP <= s order S - IP.
- `RQ(r, Q)`: if IP <= r order the fewest whole batches of Q that lift IP above r.

IP is the inventory position (on hand + pipeline). Fits, one place each:
- `newsvendor_base_stock(instance)`: the level at the critical fractile p / (p + h) of demand over L + 1
  periods (a uniform mixture over L where the lead time is random). For lost sales the same fractile is used:
  it is the textbook "newsvendor" baseline, not the best base-stock level.
- `fit_policies(instance, seeds=..., periods=...)`: "newsvendor" plus simulation-tuned "base_stock",
  "capped_base_stock", "s_S" and "r_Q". Each search is a grid around the newsvendor numbers, coarse then
  fine, and every candidate of every policy runs as one copy of ONE `InventorySim` with common random numbers
  (every candidate sees the same demand and lead-time stream), so a whole grid is one simulation.
- `mean_cost(policy, instances, seed=..., periods=...)`: mean cost per period per copy after a warm-up, the
  number the evaluator and the fits compare.
"""

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import numpy as np
import numpy.typing as npt
from scipy import stats

from shelfcast_agent.env import InventorySim, State, _quantile_curve
from shelfcast_agent.instances import Demand, Instance

TAIL = 1e-12  # demand pmfs are cut where less than this probability remains (the rest is put on the last value)


@runtime_checkable
class Policy(Protocol):
    """Wanted order units per copy (shape (N,)) for the state of N copies; the simulator makes them feasible."""

    @property
    def name(self) -> str: ...  # read-only, so that frozen dataclasses qualify

    def order(self, sim: InventorySim, state: State) -> np.ndarray: ...


def _param(value: npt.ArrayLike) -> np.ndarray:
    return np.atleast_1d(np.asarray(value, dtype=float))


def _listed(value: np.ndarray) -> float | list[float]:
    return float(value[0]) if value.size == 1 else [float(v) for v in value]


@dataclass(frozen=True, eq=False)
class BaseStock:
    """Order up to `level`: max(level - IP, 0)."""

    level: npt.ArrayLike
    name: str = "base_stock"

    def __post_init__(self) -> None:
        object.__setattr__(self, "level", _param(self.level))

    def order(self, sim: InventorySim, state: State) -> np.ndarray:
        return np.maximum(np.asarray(self.level) - state.inventory_position, 0.0)

    def params(self) -> dict[str, float | list[float]]:
        return {"level": _listed(np.asarray(self.level))}


@dataclass(frozen=True, eq=False)
class CappedBaseStock:
    """Order up to `level`, but never more than `cap` units at once: min(max(level - IP, 0), cap)."""

    level: npt.ArrayLike
    cap: npt.ArrayLike
    name: str = "capped_base_stock"

    def __post_init__(self) -> None:
        object.__setattr__(self, "level", _param(self.level))
        object.__setattr__(self, "cap", _param(self.cap))

    def order(self, sim: InventorySim, state: State) -> np.ndarray:
        wanted = np.maximum(np.asarray(self.level) - state.inventory_position, 0.0)
        return np.minimum(wanted, np.asarray(self.cap))

    def params(self) -> dict[str, float | list[float]]:
        return {"level": _listed(np.asarray(self.level)), "cap": _listed(np.asarray(self.cap))}


@dataclass(frozen=True, eq=False)
class SS:
    """(s, S): when IP <= s, order up to S; otherwise nothing."""

    s: npt.ArrayLike
    S: npt.ArrayLike
    name: str = "s_S"

    def __post_init__(self) -> None:
        object.__setattr__(self, "s", _param(self.s))
        object.__setattr__(self, "S", _param(self.S))

    def order(self, sim: InventorySim, state: State) -> np.ndarray:
        position = state.inventory_position
        return np.where(position <= np.asarray(self.s), np.maximum(np.asarray(self.S) - position, 0.0), 0.0)

    def params(self) -> dict[str, float | list[float]]:
        return {"s": _listed(np.asarray(self.s)), "S": _listed(np.asarray(self.S))}


@dataclass(frozen=True, eq=False)
class RQ:
    """(r, Q): when IP <= r, order n * Q with the smallest n that lifts IP above r; otherwise nothing."""

    r: npt.ArrayLike
    Q: npt.ArrayLike
    name: str = "r_Q"

    def __post_init__(self) -> None:
        object.__setattr__(self, "r", _param(self.r))
        object.__setattr__(self, "Q", _param(self.Q))
        if np.any(np.asarray(self.Q) <= 0):
            raise ValueError("Q must be positive")

    def order(self, sim: InventorySim, state: State) -> np.ndarray:
        position = state.inventory_position
        r, batch = np.asarray(self.r), np.asarray(self.Q)
        batches = np.floor((r - position) / batch) + 1
        return np.where(position <= r, batches * batch, 0.0)

    def params(self) -> dict[str, float | list[float]]:
        return {"r": _listed(np.asarray(self.r)), "Q": _listed(np.asarray(self.Q))}


@dataclass(frozen=True, eq=False)
class Stacked:
    """Several policies side by side: part k drives the next `sizes[k]` copies and sees only their state (the
    simulator is passed whole). One simulation can then run different policies, or per-instance fits, at once."""

    parts: tuple[Policy, ...]
    sizes: tuple[int, ...]
    name: str = "stacked"
    _bounds: np.ndarray = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if len(self.parts) != len(self.sizes) or not self.parts:
            raise ValueError("one size per part, and at least one part")
        object.__setattr__(self, "_bounds", np.concatenate([[0], np.cumsum(self.sizes)]))

    def order(self, sim: InventorySim, state: State) -> np.ndarray:
        if len(state.on_hand) != self._bounds[-1]:
            raise ValueError(f"the parts drive {self._bounds[-1]} copies, the state has {len(state.on_hand)}")
        wanted = np.zeros(len(state.on_hand))
        for part, start, stop in zip(self.parts, self._bounds[:-1], self._bounds[1:], strict=True):
            rows = slice(int(start), int(stop))
            part_state = State(state.on_hand[rows], state.pipeline[rows], state.price[rows], state.period)
            wanted[rows] = np.broadcast_to(part.order(sim, part_state), stop - start)
        return wanted


# ---------------------------------------------------------------------------------------------- demand laws


def period_pmf(demand: Demand, tail: float = TAIL) -> np.ndarray:
    """The pmf of one period's demand on 0, 1, ..., as the simulator draws it. For dist=quantiles it is exact:
    the simulator rounds the piecewise-linear inverse CDF through the quantiles, so P(D <= k) is the measure
    of the levels u with curve(u) < k + 1/2."""
    if demand.dist == "quantiles":
        assert demand.quantiles is not None
        levels, values = _quantile_curve(demand.quantiles)
        top = int(np.rint(values[-1]))
        thresholds = np.arange(top + 1) + 0.5
        width = np.diff(levels)
        low, high = values[:-1], values[1:]
        rise = np.where(high > low, high - low, 1.0)
        share = np.where(
            high > low,
            np.clip((thresholds[:, None] - low) / rise, 0.0, 1.0),
            (low < thresholds[:, None]).astype(float),
        )
        cdf = np.minimum((share * width).sum(axis=1), 1.0)
        cdf[-1] = 1.0
        return np.diff(np.concatenate([[0.0], cdf]))
    return _sum_pmf(demand, 1, tail)


def _sum_pmf(demand: Demand, periods: int, tail: float) -> np.ndarray:
    """The pmf of demand summed over `periods` independent periods (tail lumped on the last value)."""
    if periods == 0:
        return np.ones(1)
    if demand.dist == "quantiles":
        one = period_pmf(demand)
        pmf = one
        for _ in range(periods - 1):
            pmf = np.convolve(pmf, one)
        return pmf
    law = _scipy_law(demand, periods)
    top = int(law.isf(tail)) + 1
    pmf = law.pmf(np.arange(top + 1))
    pmf[-1] += max(1.0 - pmf.sum(), 0.0)
    return pmf / pmf.sum()


def _scipy_law(demand: Demand, periods: int) -> stats.rv_discrete:
    if demand.dist == "poisson":
        return stats.poisson(demand.mean * periods)
    assert demand.dispersion is not None
    # numpy's negative_binomial(n, p) = failures before n successes = scipy's nbinom(n, p); sums add n
    return stats.nbinom(demand.dispersion * periods, demand.dispersion / (demand.dispersion + demand.mean))


def lead_time_demand_pmf(instance: Instance, extra_periods: int = 1, tail: float = TAIL) -> np.ndarray:
    """The pmf of demand over L + `extra_periods` periods (L + 1: lead time plus the review period), a uniform
    mixture over L in [lead_time.min, lead_time.max] when the lead time is random."""
    leads = range(instance.lead_time.min, instance.lead_time.max + 1)
    parts = [_sum_pmf(instance.demand, lead + extra_periods, tail) for lead in leads]
    pmf = np.zeros(max(len(part) for part in parts))
    for part in parts:
        pmf[: len(part)] += part / len(parts)
    return pmf


def pmf_mean(pmf: np.ndarray) -> float:
    return float(np.arange(len(pmf)) @ pmf)


def pmf_std(pmf: np.ndarray) -> float:
    support = np.arange(len(pmf))
    mean = support @ pmf
    return float(np.sqrt(max(((support - mean) ** 2) @ pmf, 0.0)))


def pmf_quantile(pmf: np.ndarray, level: float) -> int:
    """The smallest k with P(D <= k) >= level."""
    cdf = np.cumsum(pmf)
    return min(int(np.searchsorted(cdf, level - 1e-12)), len(pmf) - 1)


def newsvendor_base_stock(instance: Instance) -> float:
    """The newsvendor base-stock level: the critical fractile p / (p + h) of demand over the lead time plus one
    review period (L + 1 periods; a uniform mixture over L for random lead times). Used as is for lost sales
    too: the classic baseline, which overstocks there (a lost sale ends its shortage, a backorder does not)."""
    return float(pmf_quantile(lead_time_demand_pmf(instance), instance.critical_ratio))


# -------------------------------------------------------------------------------------------- simulation


def simulate(
    policy: Policy, instances: Sequence[Instance], *, seed: int, periods: int, warmup: int = 100
) -> dict[str, np.ndarray]:
    """Run `policy` on one copy per instance for `warmup + periods` periods from `sim.reset(seed)`; per copy, the
    mean per period after the warm-up of every field of the simulator's info ("cost", "holding_cost",
    "shortage_cost", "ordering_cost", "revenue", "demand", "sales", "lost", "placed"), plus "net_cost"
    (cost - revenue, what a priced instance is judged on) and "fill_rate" (sales / demand)."""
    sim = InventorySim(instances)
    sim.reset(seed)
    return _run(sim, policy, periods=periods, warmup=warmup)


def mean_cost(
    policy: Policy, instances: Sequence[Instance], *, seed: int, periods: int, warmup: int = 100
) -> np.ndarray:
    """Per copy (one per instance), the mean cost per period over `periods` periods after `warmup` periods."""
    return simulate(policy, instances, seed=seed, periods=periods, warmup=warmup)["cost"]


def _run(sim: InventorySim, policy: Policy, *, periods: int, warmup: int) -> dict[str, np.ndarray]:
    if periods < 1 or warmup < 0:
        raise ValueError("periods must be positive and warmup non-negative")
    state = sim.state
    totals: dict[str, np.ndarray] = {}
    for period in range(warmup + periods):
        state, _, info = sim.step(policy.order(sim, state))
        if period >= warmup:
            for key, value in info.items():
                totals[key] = totals.get(key, 0.0) + value
    means = {key: value / periods for key, value in totals.items()}
    means["net_cost"] = means["cost"] - means["revenue"]
    means["fill_rate"] = means["sales"] / np.maximum(means["demand"], 1e-12)
    return means


def common_random_costs(
    policy: Policy, instance: Instance, copies: int, *, seeds: Sequence[int], periods: int, warmup: int = 100
) -> np.ndarray:
    """Mean net cost per period of `copies` candidates (the copies `policy` drives) on one instance, with common
    random numbers: for each seed every candidate sees the same demands and lead times (one simulation of
    copies x len(seeds) copies, candidates fastest). Returns the mean over seeds, shape (copies,)."""
    seeds = list(seeds)
    sim = InventorySim([instance] * (copies * len(seeds)))
    sim.reset(seeds[0])
    # the same generator state for every candidate of a seed: candidate j of seed k draws what candidate 0 draws
    sim.rngs = [np.random.default_rng(np.random.SeedSequence(seed)) for seed in seeds for _ in range(copies)]
    repeated = Stacked(tuple(policy for _ in seeds), tuple(copies for _ in seeds))
    costs = _run(sim, repeated, periods=periods, warmup=warmup)["net_cost"]
    return costs.reshape(len(seeds), copies).mean(axis=0)


# ------------------------------------------------------------------------------------------------ fitting


def _around(center: float, step: int, below: int, above: int, low: float = 0.0) -> np.ndarray:
    values = np.round(center) + step * np.arange(-below, above + 1)
    return np.unique(np.maximum(values, low))


def _order_unit(instance: Instance) -> int:
    """The smallest order the simulator places (MOQ and case pack), at least 1."""
    return max(1, math.ceil(max(instance.moq, 1) / instance.case_pack) * instance.case_pack)


def _candidates(instance: Instance, centre: dict[str, tuple[float, ...]] | None) -> dict[str, Policy]:
    """Grids per policy: coarse around the newsvendor numbers (centre None), or fine around a previous best."""
    mean = pmf_mean(period_pmf(instance.demand))
    lead_pmf = lead_time_demand_pmf(instance)
    level = newsvendor_base_stock(instance)
    sigma = max(pmf_std(lead_pmf), 1.0)
    unit = _order_unit(instance)
    eoq = math.sqrt(2 * instance.order_cost * mean / max(instance.holding_cost, 1e-9))
    batch = max(mean, eoq, unit)
    s = max(1, round(sigma / 2))
    if centre is None:
        b = max(1, round(batch / 4))
        base = _around(level, s, 5, 3)
        big = _around(level + (batch if eoq > mean else 0), s, 4, 2)
        caps = np.unique(np.round(np.append(np.array([0.75, 1.0, 1.5, 2.0, 3.0]) * max(mean, unit), big[-1])))
        reorder = _around(level - mean, s, 4, 2, low=-math.inf)
        lots = _around(batch, b, 3, 3, low=1.0)
    else:  # step 1 around the best, as wide as the coarse step
        w = max(2, math.ceil(s / 2))
        base = _around(centre["base_stock"][0], 1, w, w)
        big = _around(centre["capped_base_stock"][0], 1, w, w)
        caps = _around(centre["capped_base_stock"][1], 1, 2, 2, low=1.0)
        reorder = _around(centre["s_S"][0], 1, w, w, low=-math.inf)
        lots = _around(centre["s_S"][1] - centre["s_S"][0], 1, 1, 1, low=1.0)
    capped_s, capped_c = (grid.ravel() for grid in np.meshgrid(big, caps, indexing="ij"))
    if centre is not None:  # the best plain base stock is a capped one too (with no cap): keep it in the running
        capped_s = np.append(capped_s, centre["base_stock"][0])
        capped_c = np.append(capped_c, instance.max_order)
    ss_s, ss_gap = np.meshgrid(reorder, lots, indexing="ij")
    if centre is None:
        rq_r, rq_q = ss_s, ss_gap
    else:
        rq_r, rq_q = np.meshgrid(
            _around(centre["r_Q"][0], 1, w, w, low=-math.inf),
            _around(centre["r_Q"][1], 1, 1, 1, low=1.0),
            indexing="ij",
        )
    return {
        "base_stock": BaseStock(base),
        "capped_base_stock": CappedBaseStock(capped_s, capped_c),
        "s_S": SS(ss_s.ravel(), ss_s.ravel() + ss_gap.ravel()),
        "r_Q": RQ(rq_r.ravel(), rq_q.ravel()),
    }


def _copies(policy: Policy) -> int:
    return max(np.size(value) for value in vars(policy).values() if isinstance(value, np.ndarray))


def _best(policy: Policy, index: int) -> tuple[float, ...]:
    return tuple(float(value[index]) for value in vars(policy).values() if isinstance(value, np.ndarray))


def fit_policies(
    instance: Instance, *, seeds: Sequence[int] = (9_001,), periods: int = 3_000, warmup: int = 100
) -> dict[str, Policy]:
    """Classical policies for one instance: "newsvendor" (`newsvendor_base_stock`, not simulated) and the best
    "base_stock", "capped_base_stock", "s_S" and "r_Q" by simulated mean net cost per period (cost - revenue;
    plain cost where there is no pricing). Two rounds: a coarse grid around the newsvendor numbers simulated for
    `periods // 3` periods, then step-1 neighbours of each best for `periods`; in each round every candidate of
    every policy is one copy of one simulation, with common random numbers (per seed, every candidate sees the
    same demands and lead times). Keep `seeds` apart from the seeds an evaluation uses."""
    found: dict[str, tuple[float, ...]] | None = None
    for length in (max(periods // 3, 100), periods):
        grids = _candidates(instance, found)
        sizes = tuple(_copies(policy) for policy in grids.values())
        costs = common_random_costs(
            Stacked(tuple(grids.values()), sizes), instance, sum(sizes), seeds=seeds, periods=length, warmup=warmup
        )
        bounds = np.concatenate([[0], np.cumsum(sizes)])
        found = {
            name: _best(policy, int(np.argmin(costs[start:stop])))
            for (name, policy), start, stop in zip(grids.items(), bounds[:-1], bounds[1:], strict=True)
        }
    assert found is not None
    return {
        "newsvendor": BaseStock(newsvendor_base_stock(instance), name="newsvendor"),
        "base_stock": BaseStock(found["base_stock"][0]),
        "capped_base_stock": CappedBaseStock(found["capped_base_stock"][0], found["capped_base_stock"][1]),
        "s_S": SS(found["s_S"][0], found["s_S"][1]),
        "r_Q": RQ(found["r_Q"][0], found["r_Q"][1]),
    }
