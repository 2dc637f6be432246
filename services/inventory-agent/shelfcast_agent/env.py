"""The inventory simulator: a numpy core over N SKU copies, and the Gymnasium single and vector environments on it.

`InventorySim` steps N independent copies at once (each may be a different instance); it is what policies,
the DP check and the DQN use for speed. `InventoryEnv` (one SKU) and `InventoryVectorEnv` (many) are the
Gymnasium faces of the same core. Timing and costs are those of `instances.py`. Given a seed, every run is
identical: each copy draws its demand and lead times from its own generator, so copy i's random numbers do
not depend on the other copies or on the actions taken (common random numbers across policies).
"""

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces
from gymnasium.vector import VectorEnv
from gymnasium.vector.utils import batch_space

from shelfcast_agent.instances import Instance

MAX_LEAD = 8  # the pipeline is this many periods long for every instance, so observations have one shape
PRICE_MOVES = np.array([-1.0, 0.0, 1.0])  # price action 0, 1, 2: down one step, hold, up one step
OBSERVATION_FIELDS = (
    *("on_hand", *(f"pipeline_{k}" for k in range(1, MAX_LEAD + 1))),
    "inventory_position",
    "critical_ratio",
    "order_cost",
    "lead_time_min",
    "lead_time_max",
    "lost_sales",
    "demand_cv",
    "relative_price",
)


@dataclass
class State:
    """What a policy sees before ordering, for N copies (after this period's arrival, before its demand)."""

    on_hand: np.ndarray  # (N,) units; negative = backordered
    pipeline: np.ndarray  # (N, MAX_LEAD) units arriving in 1, 2, ... MAX_LEAD periods
    price: np.ndarray  # (N,) current price (1.0 where the instance has no pricing)
    period: int

    @property
    def inventory_position(self) -> np.ndarray:
        return self.on_hand + self.pipeline.sum(axis=1)


def feasible_order(quantity: np.ndarray, moq: np.ndarray, case_pack: np.ndarray, max_order: np.ndarray) -> np.ndarray:
    """The order actually placed for a wanted quantity: 0 stays 0; otherwise at least the MOQ, rounded up to
    whole case packs, and never above max_order (rounded down to whole packs there)."""
    wanted = np.clip(np.rint(quantity), 0, max_order)
    placed = np.maximum(wanted, moq)
    placed = np.ceil(placed / case_pack) * case_pack
    placed = np.where(placed > max_order, np.floor(max_order / case_pack) * case_pack, placed)
    return np.where(wanted > 0, placed, 0.0)


class DemandSampler:
    """Per-period demand of one instance at a price multiplier, drawn from that copy's own generator."""

    def __init__(self, instance: Instance):
        self.demand = instance.demand
        if self.demand.quantiles is not None:
            self._levels, self._values = _quantile_curve(self.demand.quantiles)

    def sample(self, rng: np.random.Generator, scale: float = 1.0) -> float:
        demand = self.demand
        if demand.dist == "poisson":
            return float(rng.poisson(demand.mean * scale))
        if demand.dist == "negbin":
            assert demand.dispersion is not None
            mean = demand.mean * scale
            return float(rng.negative_binomial(demand.dispersion, demand.dispersion / (demand.dispersion + mean)))
        return float(np.rint(np.interp(rng.random(), self._levels, self._values) * scale))

    @property
    def cv(self) -> float:
        """Coefficient of variation of one period's demand."""
        demand = self.demand
        if demand.dist == "poisson":
            return float(demand.mean**-0.5)
        if demand.dist == "negbin":
            assert demand.dispersion is not None
            return float(np.sqrt(1 / demand.mean + 1 / demand.dispersion))
        width = np.interp([0.1, 0.9], self._levels, self._values)
        return float((width[1] - width[0]) / 2.563 / max(demand.mean, 1e-9))  # p90 - p10 of a normal is 2.563 sd


def _quantile_curve(quantiles: dict[str, float]) -> tuple[np.ndarray, np.ndarray]:
    """Inverse CDF through the given quantiles, extended linearly to levels 0 and 1 (clipped at 0)."""
    levels = np.array(sorted(int(name[1:]) / 100 for name in quantiles))
    values = np.array([quantiles[f"p{round(level * 100)}"] for level in levels], dtype=float)
    if len(levels) == 1:
        return np.array([0.0, 1.0]), np.array([values[0], values[0]])
    low_slope = (values[1] - values[0]) / (levels[1] - levels[0])
    high_slope = (values[-1] - values[-2]) / (levels[-1] - levels[-2])
    low = max(values[0] - low_slope * levels[0], 0.0)
    high = values[-1] + high_slope * (1 - levels[-1])
    return np.concatenate([[0.0], levels, [1.0]]), np.concatenate([[low], values, [high]])


class InventorySim:
    """N copies of periodic-review inventory, one instance each, stepped together."""

    def __init__(self, instances: Sequence[Instance]):
        if not instances:
            raise ValueError("at least one instance is needed")
        if any(instance.lead_time.max > MAX_LEAD for instance in instances):
            raise ValueError(f"lead times above {MAX_LEAD} periods are not supported")
        self.instances = list(instances)
        self.samplers = [DemandSampler(instance) for instance in instances]

        def column(values: Any) -> np.ndarray:
            return np.array(list(values), dtype=float)

        self.holding = column(i.holding_cost for i in instances)
        self.shortage = column(i.shortage_cost for i in instances)
        self.order_cost = column(i.order_cost for i in instances)
        self.unit_cost = column(i.unit_cost for i in instances)
        self.lost_sales = np.array([i.lost_sales for i in instances])
        self.lead_min = np.array([i.lead_time.min for i in instances])
        self.lead_max = np.array([i.lead_time.max for i in instances])
        self.moq = column(i.moq for i in instances)
        self.case_pack = column(i.case_pack for i in instances)
        self.max_order = column(i.max_order for i in instances)
        self.mean = column(i.demand.mean for i in instances)
        self.base_price = column(i.pricing.base_price if i.pricing else 1.0 for i in instances)
        self.elasticity = column(i.pricing.elasticity if i.pricing else 0.0 for i in instances)
        self.price_step = column(i.pricing.max_step if i.pricing else 0.0 for i in instances)
        self.min_price = column(i.pricing.min_price if i.pricing else 1.0 for i in instances)
        self.max_price = column(i.pricing.max_price if i.pricing else 1.0 for i in instances)
        self.cv = column(sampler.cv for sampler in self.samplers)
        self.rngs: list[np.random.Generator] = []
        self.state = State(np.zeros(self.n), np.zeros((self.n, MAX_LEAD)), self.base_price.copy(), 0)

    @property
    def n(self) -> int:
        return len(self.instances)

    def reset(self, seed: int | None = None) -> State:
        """Start every copy with (mean demand x (max lead time + 1)) on hand, nothing in the pipeline, base price."""
        seeds = np.random.SeedSequence(seed).spawn(self.n)
        self.rngs = [np.random.default_rng(s) for s in seeds]
        on_hand = np.ceil(self.mean * (self.lead_max + 1))
        self.state = State(on_hand, np.zeros((self.n, MAX_LEAD)), self.base_price.copy(), 0)
        return self.state

    def demand_scale(self, price: np.ndarray) -> np.ndarray:
        """Mean demand multiplier at a price: (price / base price) ** -elasticity (1 without pricing)."""
        return (price / self.base_price) ** -self.elasticity

    def step(self, order: np.ndarray, price_move: np.ndarray | None = None) -> tuple[State, np.ndarray, dict]:
        """Order (wanted units per copy) and optionally move prices (-1, 0, +1 steps); returns the next state,
        the reward (revenue where priced, minus all costs) and the period's breakdown per copy."""
        if not self.rngs:
            raise RuntimeError("call reset() before step()")
        state = self.state
        placed = feasible_order(np.asarray(order, dtype=float), self.moq, self.case_pack, self.max_order)
        price = state.price
        if price_move is not None:
            moved = price * (1 + np.clip(np.asarray(price_move, dtype=float), -1, 1) * self.price_step)
            price = np.clip(moved, self.min_price, self.max_price)
        # Only random lead times draw (integers(lo, lo + 1) consumes no random bits, so the streams are the same).
        lead = self.lead_min.copy()
        for row in np.flatnonzero(self.lead_max > self.lead_min):
            lead[row] = self.rngs[row].integers(self.lead_min[row], self.lead_max[row] + 1)
        scale = self.demand_scale(price)
        demand = np.array([s.sample(rng, k) for s, rng, k in zip(self.samplers, self.rngs, scale, strict=True)])

        on_hand = state.on_hand + np.where(lead == 0, placed, 0.0)
        pipeline = state.pipeline.copy()
        rows = np.flatnonzero(lead > 0)
        pipeline[rows, lead[rows] - 1] += placed[rows]

        sales = np.where(self.lost_sales, np.minimum(np.maximum(on_hand, 0), demand), demand)
        lost = np.where(self.lost_sales, demand - sales, 0.0)
        on_hand = on_hand - sales
        short = np.where(self.lost_sales, lost, np.maximum(-on_hand, 0))
        holding = self.holding * np.maximum(on_hand, 0)
        ordering = self.order_cost * (placed > 0) + self.unit_cost * placed
        shortage = self.shortage * short
        cost = holding + ordering + shortage
        revenue = np.where(self.elasticity > 0, price * sales, 0.0)

        arrival = pipeline[:, 0]
        pipeline = np.concatenate([pipeline[:, 1:], np.zeros((self.n, 1))], axis=1)
        self.state = State(on_hand + arrival, pipeline, price, state.period + 1)
        info = {
            "placed": placed,
            "demand": demand,
            "sales": sales,
            "lost": lost,
            "cost": cost,
            "holding_cost": holding,
            "ordering_cost": ordering,
            "shortage_cost": shortage,
            "revenue": revenue,
        }
        return self.state, revenue - cost, info

    def observe(self, state: State | None = None) -> np.ndarray:
        """Normalised observations (N, len(OBSERVATION_FIELDS)): stock in units of mean demand per period, lead
        times over MAX_LEAD, costs as ratios, so that one network can read every instance."""
        state = state or self.state
        mean = self.mean * self.demand_scale(state.price)
        per_period = np.maximum(mean, 1e-9)[:, None]
        stock = np.concatenate([state.on_hand[:, None], state.pipeline], axis=1) / per_period
        position = state.inventory_position / (per_period[:, 0] * (self.lead_max + 1))
        costs = self.holding + self.shortage
        features = [
            position,
            self.shortage / np.maximum(costs, 1e-9),
            self.order_cost / np.maximum(costs * per_period[:, 0], 1e-9),
            self.lead_min / MAX_LEAD,
            self.lead_max / MAX_LEAD,
            self.lost_sales.astype(float),
            self.cv,
            state.price / self.base_price - 1,
        ]
        return np.concatenate([stock, np.stack(features, axis=1)], axis=1).astype(np.float32)


def _observation_space(n: int | None = None) -> spaces.Box:
    shape = (len(OBSERVATION_FIELDS),) if n is None else (n, len(OBSERVATION_FIELDS))
    return spaces.Box(-np.inf, np.inf, shape=shape, dtype=np.float32)


def _action_space(instance: Instance) -> spaces.Space:
    """Units to order (0..max_order, made feasible by `feasible_order`), and a price move where the instance
    prices: MultiDiscrete([max_order + 1, 3]) with 0 / 1 / 2 = down / hold / up."""
    if instance.pricing is None:
        return spaces.Discrete(instance.max_order + 1)
    return spaces.MultiDiscrete([instance.max_order + 1, len(PRICE_MOVES)])


class InventoryEnv(gym.Env[np.ndarray, Any]):
    """One SKU. Observation: `OBSERVATION_FIELDS` (see `InventorySim.observe`); action: see `_action_space`;
    reward: revenue minus cost of the period; an episode is truncated after `instance.horizon` periods."""

    metadata = {"render_modes": []}  # noqa: RUF012 (Gymnasium's own convention)

    def __init__(self, instance: Instance):
        self.instance = instance
        self.sim = InventorySim([instance])
        self.observation_space = _observation_space()
        self.action_space = _action_space(instance)

    def reset(self, *, seed: int | None = None, options: dict | None = None) -> tuple[np.ndarray, dict]:
        super().reset(seed=seed)
        if seed is None:
            seed = int(self.np_random.integers(2**31))
        self.sim.reset(seed)
        return self.sim.observe()[0], {}

    def step(self, action: Any) -> tuple[np.ndarray, float, bool, bool, dict]:
        order, move = _split_action(np.asarray(action)[None], self.instance.pricing is not None)
        state, reward, info = self.sim.step(order, move)
        truncated = state.period >= self.instance.horizon
        return self.sim.observe()[0], float(reward[0]), False, truncated, {k: float(v[0]) for k, v in info.items()}


def _split_action(actions: np.ndarray, priced: bool) -> tuple[np.ndarray, np.ndarray | None]:
    if not priced:
        return actions.reshape(-1).astype(float), None
    actions = actions.reshape(-1, 2)
    return actions[:, 0].astype(float), PRICE_MOVES[actions[:, 1].astype(int)]


class InventoryVectorEnv(VectorEnv):
    """Many SKUs (one instance each) in lockstep. Actions: an (N,) array of units, or (N, 2) with price moves
    when any instance prices (ignored for the ones that do not). Copies whose horizon ends are reset in place
    on the same step (`autoreset` same-step), their final observation in info["final_obs"]."""

    metadata = {"autoreset_mode": gym.vector.AutoresetMode.SAME_STEP}  # noqa: RUF012

    def __init__(self, instances: Sequence[Instance]):
        self.sim = InventorySim(instances)
        self.num_envs = self.sim.n
        self.priced = any(instance.pricing is not None for instance in instances)
        self.horizon = np.array([instance.horizon for instance in instances])
        self.single_observation_space = _observation_space()
        self.observation_space = batch_space(self.single_observation_space, self.num_envs)
        largest = max(instance.max_order for instance in instances)
        self.single_action_space = (
            spaces.MultiDiscrete([largest + 1, len(PRICE_MOVES)]) if self.priced else spaces.Discrete(largest + 1)
        )
        self.action_space = batch_space(self.single_action_space, self.num_envs)
        self._started = np.zeros(self.num_envs, dtype=int)
        self._seed = 0

    def reset(self, *, seed: int | None = None, options: dict | None = None) -> tuple[np.ndarray, dict]:
        self._seed = 0 if seed is None else seed
        self.sim.reset(self._seed)
        self._started[:] = 0
        return self.sim.observe(), {}

    def step(self, actions: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, dict]:
        order, move = _split_action(np.asarray(actions), self.priced)
        state, reward, info = self.sim.step(order, move)
        truncated = state.period - self._started >= self.horizon
        terminated = np.zeros(self.num_envs, dtype=bool)
        if truncated.any():
            info["final_obs"] = self.sim.observe()
            self._restart(np.flatnonzero(truncated))
        return self.sim.observe(), reward, terminated, truncated, info

    def _restart(self, rows: np.ndarray) -> None:
        """Put finished copies back to their starting stock, keeping their random streams running."""
        state = self.sim.state
        state.on_hand[rows] = np.ceil(self.sim.mean[rows] * (self.sim.lead_max[rows] + 1))
        state.pipeline[rows] = 0
        state.price[rows] = self.sim.base_price[rows]
        self._started[rows] = state.period
