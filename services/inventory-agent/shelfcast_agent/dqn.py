"""A double DQN that orders as a learned correction around a fitted classical policy; one network for many SKUs.

Action: a *residual*. Per SKU an anchor (the classical policy that did best for that instance on the fitting
seeds, `best_classical`) suggests an order, and the network picks one of `ACTION_DELTAS` (in units of mean demand
per period, rounded, at least one unit) to add to it; delta 0 is exactly the anchor. Q-learning only has to learn
corrections, and a network that learned nothing useful behaves like the best classical policy.

State (`FEATURE_FIELDS`): `InventorySim.observe()` (stock and pipeline in mean demands, cost ratios, lead times,
demand cv, price) plus the anchor's order, quantiles of demand over the protection period (lead time + 1) in
units of mean demand x (max lead + 1), unit cost, log mean demand and the order rules. Instance parameters are
in the state, so one network serves every SKU.

Training (`train`): the given instances plus random ones drawn around them run as copies of one vectorised
`InventorySim` under epsilon-greedy actions; the states go to a numpy ring replay buffer. Each update takes B
replayed states and builds targets for *every* action of each: the simulator's period model (`advance`, checked
against `InventorySim.step` in the tests) rolls each action out for `horizon` periods (the action's order, then
the anchor) on M sampled demand / lead-time paths that are the same for every action of a state (common random
numbers), and bootstraps with the double-DQN value of the last state (online net chooses, Polyak-averaged target
net values; the choice keeps the anchor unless another action beats it by `target_margin`). Rewards are costs
relative to the anchor's fitted cost on the instance, -(cost - anchor cost) / anchor cost, so every SKU weighs
the same whatever its scale. The loss is the Huber loss of the anchor action's value plus the Huber loss of the
other actions' advantages over it: the shared paths make the target advantages nearly noise-free, while the
values carry the paths' noise. Why not one sampled transition per update: the return noise of a sampled period
is hundreds of times larger than the few-percent differences between good orders, and a Q-network trained on
it learned corrections that lost money. The update runs XLA-compiled in a `tf.function`; the weights kept are
those that did best on held-out validation seeds (never the evaluation seeds).

Acting is greedy; a correction is taken only when its Q-value beats the anchor's (delta 0) by more than the
`margin` chosen on validation (from `TrainConfig.margins`; 0 means plain greedy).

Seeds: classical fits use `FIT_SEEDS` (as `policies.fit_policies`), training `TRAIN_SEED + seed`, validation
`VALIDATION_SEED`; `evaluate` uses seeds from 0 up, so none of these overlap with it.
"""

from __future__ import annotations

import hashlib
import json
import math
import subprocess
import time
import weakref
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from shelfcast_agent.env import MAX_LEAD, OBSERVATION_FIELDS, InventorySim, State
from shelfcast_agent.instances import Instance

ACTION_DELTAS = (-0.5, -0.25, -0.1, 0.0, 0.1, 0.25, 0.5)  # added to the anchor's order, mean demands
EXTRA_FIELDS = (
    "anchor_order",
    "ltd_p10",
    "ltd_p50",
    "ltd_p90",
    "ltd_critical",
    "unit_cost",
    "log_mean",
    "case_pack",
    "moq",
    "max_order",
)
FEATURE_FIELDS = (*OBSERVATION_FIELDS, *EXTRA_FIELDS)
DEMAND_POINTS = 64  # values of the demand law the training rollouts draw from (exact up to this many)
FIT_SEEDS = (9_001, 9_002)  # `policies.fit_policies`' own default: the classical fits and the anchor choice
TRAIN_SEED = 7_100_000
VALIDATION_SEED = 7_200_000
FEATURE_CLIP = 50.0
WEIGHTS_FILE = "model.weights.h5"
CARD_FILE = "card.json"
DEFAULT_MODEL = Path(__file__).with_name("models") / "dqn-default"
CLASSICAL = ("newsvendor", "base_stock", "capped_base_stock", "s_S", "r_Q")


class Policy(Protocol):
    """What every policy offers (the classical ones, the optimum, the DQN): wanted units for all copies of a sim."""

    def order(self, sim: InventorySim, state: State) -> np.ndarray: ...


# --- actions ------------------------------------------------------------------------------------------------------


def action_units(mean: np.ndarray, deltas: Sequence[float] = ACTION_DELTAS) -> np.ndarray:
    """(N, A) units each action adds to the anchor's order: delta x mean demand, rounded, at least one unit away
    from 0 for a non-zero delta (so the smallest corrections of a slow mover do not collapse onto the anchor)."""
    grid = np.asarray(deltas, dtype=float)[None, :]
    units = np.maximum(np.rint(np.abs(grid) * np.asarray(mean, dtype=float)[:, None]), 1.0)
    return np.where(grid == 0, 0.0, np.sign(grid) * units)


def residual_orders(anchor_orders: np.ndarray, actions: np.ndarray, units: np.ndarray) -> np.ndarray:
    """The order of each copy: the anchor's order plus the chosen action's units, never below 0."""
    rows = np.arange(len(actions))
    return np.maximum(np.asarray(anchor_orders, dtype=float) + units[rows, actions], 0.0)


def greedy_actions(q: np.ndarray, margin: float = 0.0, zero_action: int = ACTION_DELTAS.index(0.0)) -> np.ndarray:
    """argmax of Q per row, except that the anchor's action stays unless the best beats it by more than margin."""
    q = np.asarray(q)
    best = np.argmax(q, axis=1)
    rows = np.arange(len(q))
    keep = q[rows, best] - q[rows, zero_action] <= margin
    return np.where(keep, zero_action, best)


# --- the classical anchor -----------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class ClassicalAnchor:
    """Any of the classical policies per copy, as arrays, so that one call serves a mix (and any rows of it).

    kind 0 (order-up-to family): if IP <= s order min(max(S - IP, 0), cap); base-stock: s = S, cap = inf;
    capped base-stock: s = S; (s, S): cap = inf. kind 1, (r, Q): if IP <= r order the fewest batches of Q that
    lift IP above r (s holds r)."""

    kind: np.ndarray
    s: np.ndarray
    S: np.ndarray
    cap: np.ndarray
    Q: np.ndarray
    names: tuple[str, ...] = ()
    name: str = "best_classical"

    @classmethod
    def of(cls, policies: Sequence[Any]) -> ClassicalAnchor:
        """From `policies` objects (BaseStock, CappedBaseStock, SS, RQ), one per copy."""
        rows = [_classical_row(p) for p in policies]
        kind, s, big, cap, batch = (np.array(column, dtype=float) for column in zip(*rows, strict=True))
        return cls(kind, s, big, cap, batch, tuple(str(p.name) for p in policies))

    def rows(self, index: np.ndarray) -> ClassicalAnchor:
        names = tuple(self.names[i] for i in index) if self.names else ()
        return ClassicalAnchor(self.kind[index], self.s[index], self.S[index], self.cap[index], self.Q[index], names)

    def orders_at(self, position: np.ndarray) -> np.ndarray:
        """Wanted units at these inventory positions (one per copy, or broadcast against the copies)."""
        up_to = np.where(position <= self.s, np.minimum(np.maximum(self.S - position, 0.0), self.cap), 0.0)
        batch = np.maximum(self.Q, 1e-9)
        batches = np.where(position <= self.s, (np.floor((self.s - position) / batch) + 1) * batch, 0.0)
        return np.where(self.kind == 1, batches, up_to)

    def order(self, sim: InventorySim, state: State) -> np.ndarray:
        return self.orders_at(state.inventory_position)


def _classical_row(policy: Any) -> tuple[float, float, float, float, float]:
    from shelfcast_agent.policies import RQ, SS, BaseStock, CappedBaseStock

    def one(value: Any) -> float:
        array = np.atleast_1d(np.asarray(value, dtype=float))
        if array.size != 1:
            raise ValueError("anchors are built from one-instance classical policies")
        return float(array[0])

    if isinstance(policy, CappedBaseStock):
        return 0, one(policy.level), one(policy.level), one(policy.cap), 0.0
    if isinstance(policy, BaseStock):
        return 0, one(policy.level), one(policy.level), math.inf, 0.0
    if isinstance(policy, SS):
        return 0, one(policy.s), one(policy.S), math.inf, 0.0
    if isinstance(policy, RQ):
        return 1, one(policy.r), 0.0, math.inf, one(policy.Q)
    raise TypeError(f"not a classical policy: {type(policy).__name__}")


@dataclass
class Anchor:
    """The anchor of each copy of a sim and its mean net cost per period there (fitting seeds)."""

    policy: ClassicalAnchor
    cost: np.ndarray


_FITS: dict[tuple[str, bool], dict[str, Any]] = {}


def _key(instance: Instance) -> str:
    return instance.model_copy(update={"name": "-"}).model_dump_json()


def classical_fits(instance: Instance, *, quick: bool = False) -> dict[str, Any]:
    """`policies.fit_policies` for one instance, remembered for the process (keyed by the parameters, not the
    name). ``quick``: one seed and 300 periods (for the random training instances; about 5x faster)."""
    from shelfcast_agent.policies import fit_policies

    key = (_key(instance), quick)
    if key not in _FITS:
        options: dict[str, Any] = {"seeds": FIT_SEEDS[:1], "periods": 300} if quick else {"seeds": FIT_SEEDS}
        _FITS[key] = fit_policies(instance, **options)
    return _FITS[key]


def classical_costs(instances: Sequence[Instance], fits: Sequence[dict[str, Any]]) -> np.ndarray:
    """(len(instances), len(CLASSICAL)) mean net cost per period of each fitted classical policy on the fitting
    seeds, all policies of an instance on the same random numbers."""
    layout = [(i, name) for i in range(len(instances)) for name in CLASSICAL]
    anchor = ClassicalAnchor.of([fits[i][name] for i, name in layout])
    total = np.zeros(len(layout))
    for seed in FIT_SEEDS:
        sim = InventorySim([instances[i] for i, _ in layout])
        sim.reset(seed)
        streams = np.random.SeedSequence(seed).spawn(len(instances))
        sim.rngs = [np.random.default_rng(streams[i]) for i, _ in layout]
        total += run_policy(sim, anchor, periods=1_000, warmup=100)
    return (total / len(FIT_SEEDS)).reshape(len(instances), len(CLASSICAL))


def run_policy(sim: InventorySim, policy: Policy, *, periods: int, warmup: int) -> np.ndarray:
    """Mean net cost (cost - revenue) per period per copy, from the sim's current state; prices held."""
    state = sim.state
    total = np.zeros(sim.n)
    for period in range(warmup + periods):
        state, _, info = sim.step(policy.order(sim, state))
        if period >= warmup:
            total += info["cost"] - info["revenue"]
    return total / periods


def best_classical(
    instances: Sequence[Instance], *, quick: Sequence[bool] | None = None, fits: Sequence[dict[str, Any]] | None = None
) -> Anchor:
    """Per instance, the fitted classical policy with the lowest cost on the fitting seeds; copies laid out like
    ``instances`` (repeated instances are fitted once). ``fits``: already fitted policies, one dict per instance."""
    flags = list(quick) if quick is not None else [False] * len(instances)
    unique: dict[tuple[str, bool], int] = {}
    firsts: list[int] = []
    for i, (instance, fast) in enumerate(zip(instances, flags, strict=True)):
        if (_key(instance), fast) not in unique:
            unique[(_key(instance), fast)] = len(unique)
            firsts.append(i)
    ordered = [instances[i] for i in firsts]
    if fits is None:
        fitted = [classical_fits(inst, quick=flags[i]) for inst, i in zip(ordered, firsts, strict=True)]
    else:
        fitted = [fits[i] for i in firsts]
    costs = classical_costs(ordered, fitted)
    choice = costs.argmin(axis=1)
    rows = np.array([unique[(_key(i), f)] for i, f in zip(instances, flags, strict=True)])
    anchor = ClassicalAnchor.of([fitted[r][CLASSICAL[choice[r]]] for r in rows])
    return Anchor(anchor, costs[rows, choice[rows]])


# --- demand outcomes and the period model -------------------------------------------------------------------------


def demand_points(instance: Instance, points: int = DEMAND_POINTS) -> tuple[np.ndarray, np.ndarray]:
    """``points`` demand values and their probabilities summarising one period's demand law (base price): the
    exact pmf where it has at most ``points`` values above 1e-9; otherwise neighbours are merged (at their
    conditional mean, so the mean stays exact), always the adjacent pair of least joint probability, so the
    likely middle stays exact and the tails are lumped."""
    from shelfcast_agent.policies import period_pmf

    pmf = period_pmf(instance.demand)
    support = np.arange(len(pmf), dtype=float)
    keep = pmf > 1e-9
    weights, values = pmf[keep] / pmf[keep].sum(), support[keep]
    if len(weights) > 8 * points:  # a wide law: equal-probability bins first, then the merging below
        middle = np.cumsum(weights) - weights / 2
        bins = np.minimum((middle * 8 * points).astype(int), 8 * points - 1)
        mass = np.bincount(bins, weights, 8 * points)
        values = np.bincount(bins, weights * values, 8 * points)[mass > 0] / mass[mass > 0]
        weights = mass[mass > 0]
    mass_list, value_list = list(weights), list(values)
    while len(mass_list) > points:
        pair = int(np.argmin(np.add(mass_list[:-1], mass_list[1:])))
        joint = mass_list[pair] + mass_list[pair + 1]
        value_list[pair] = (mass_list[pair] * value_list[pair] + mass_list[pair + 1] * value_list[pair + 1]) / joint
        mass_list[pair] = joint
        del mass_list[pair + 1], value_list[pair + 1]
    out_values, out_weights = np.zeros(points), np.zeros(points)
    out_values[: len(value_list)], out_weights[: len(mass_list)] = value_list, mass_list
    return out_values, out_weights


@dataclass
class PeriodModel:
    """Per copy (or per row: `rows`), everything a period's outcome depends on, taken from a sim, so that whole
    periods can be simulated for any rows (`advance`, `rollouts`) apart from the sim's own random generators."""

    lost_sales: np.ndarray
    holding: np.ndarray
    shortage: np.ndarray
    order_cost: np.ndarray
    unit_cost: np.ndarray
    price: np.ndarray  # revenue per unit sold (0 without pricing); prices are held at their base
    moq: np.ndarray
    case_pack: np.ndarray
    max_order: np.ndarray
    lead_min: np.ndarray
    lead_max: np.ndarray
    copy: np.ndarray  # which copy's demand law each row draws from
    demand: np.ndarray  # (copies, points) demand values of each copy (`demand_points`)
    cdf: np.ndarray  # (copies x points,) their cumulative probabilities, + the copy's index (globally sorted)

    @classmethod
    def of(cls, sim: InventorySim, points: int = DEMAND_POINTS) -> PeriodModel:
        values, weights = zip(*(demand_points(instance, points) for instance in sim.instances), strict=True)
        cdf = np.minimum(np.cumsum(np.stack(weights), axis=1), 1.0)
        cdf[:, -1] = 1.0
        return cls(
            sim.lost_sales.copy(),
            sim.holding.copy(),
            sim.shortage.copy(),
            sim.order_cost.copy(),
            sim.unit_cost.copy(),
            np.where(sim.elasticity > 0, sim.base_price, 0.0),
            sim.moq.copy(),
            sim.case_pack.copy(),
            sim.max_order.copy(),
            sim.lead_min.copy(),
            sim.lead_max.copy(),
            np.arange(sim.n),
            np.stack(values),
            (cdf + np.arange(sim.n)[:, None]).ravel(),
        )

    def rows(self, index: np.ndarray) -> PeriodModel:
        """The model of the given rows (copies may repeat); the demand tables stay shared."""
        names = [f for f in self.__dataclass_fields__ if f not in ("demand", "cdf")]
        return PeriodModel(**{f: getattr(self, f)[index] for f in names}, demand=self.demand, cdf=self.cdf)

    def draw(self, u_demand: np.ndarray, u_lead: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Demand and lead time per row from uniform numbers in [0, 1) (inverse CDFs)."""
        points = self.demand.shape[1]
        position = np.searchsorted(self.cdf, u_demand + self.copy, side="right")
        index = np.clip(position - self.copy * points, 0, points - 1)
        demand = self.demand[self.copy, index]
        lead = self.lead_min + np.floor(u_lead * (self.lead_max - self.lead_min + 1)).astype(int)
        return demand, np.minimum(lead, self.lead_max)

    def feasible(self, wanted: np.ndarray) -> np.ndarray:
        from shelfcast_agent.env import feasible_order

        return feasible_order(wanted, self.moq, self.case_pack, self.max_order)


def advance(
    model: PeriodModel,
    on_hand: np.ndarray,
    pipeline: np.ndarray,
    placed: np.ndarray,
    lead: np.ndarray,
    demand: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One period of `InventorySim.step` per row (prices held): the feasible order ``placed`` with lead time
    ``lead`` and the period's ``demand``; returns next on hand, next pipeline and net cost (cost - revenue)."""
    rows = np.arange(len(on_hand))
    stock = on_hand + np.where(lead == 0, placed, 0.0)
    pipe = pipeline.copy()
    later = lead > 0
    pipe[rows[later], lead[later] - 1] += placed[later]
    sales = np.where(model.lost_sales, np.minimum(np.maximum(stock, 0.0), demand), demand)
    left = stock - sales
    short = np.where(model.lost_sales, demand - sales, np.maximum(-left, 0.0))
    cost = (
        model.holding * np.maximum(left, 0.0)
        + model.shortage * short
        + model.order_cost * (placed > 0)
        + model.unit_cost * placed
        - model.price * sales
    )
    next_pipe = np.concatenate([pipe[:, 1:], np.zeros((len(pipe), 1))], axis=1)
    return left + pipe[:, 0], next_pipe, cost


def rollouts(
    model: PeriodModel,
    anchor: ClassicalAnchor,
    on_hand: np.ndarray,
    pipeline: np.ndarray,
    first_order: np.ndarray,
    uniforms: np.ndarray,
    reference: np.ndarray,
    scale: np.ndarray,
    gamma: float,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per row: order ``first_order`` now, then follow the anchor for the remaining periods, on the demand and
    lead-time path given by ``uniforms`` (rows, periods, 2). Returns the discounted sum of the relative rewards
    -(net cost - reference) / scale and the state after the last period (on hand, pipeline)."""
    total = np.zeros(len(on_hand))
    wanted = first_order
    for k in range(uniforms.shape[1]):
        if k > 0:
            wanted = anchor.orders_at(on_hand + pipeline.sum(axis=1))
        demand, lead = model.draw(uniforms[:, k, 0], uniforms[:, k, 1])
        on_hand, pipeline, cost = advance(model, on_hand, pipeline, model.feasible(wanted), lead, demand)
        total += gamma**k * -(cost - reference) / scale
    return total, on_hand, pipeline


# --- state --------------------------------------------------------------------------------------------------------


def sample_demand(instance: Instance, rng: np.random.Generator, size: int | tuple[int, ...]) -> np.ndarray:
    """Many draws of one period's demand (the distributions of `env.DemandSampler`, vectorised)."""
    from shelfcast_agent.env import _quantile_curve

    demand = instance.demand
    if demand.dist == "poisson":
        return rng.poisson(demand.mean, size).astype(float)
    if demand.dist == "negbin":
        assert demand.dispersion is not None
        p = demand.dispersion / (demand.dispersion + demand.mean)
        return rng.negative_binomial(demand.dispersion, p, size).astype(float)
    assert demand.quantiles is not None
    levels, values = _quantile_curve(demand.quantiles)
    return np.rint(np.interp(rng.random(size), levels, values))


_STATIC: dict[str, np.ndarray] = {}


def static_features(instances: Sequence[Instance], draws: int = 2_000) -> np.ndarray:
    """Per instance, the state features that do not change (see the module doc); Monte Carlo with a fixed seed,
    remembered per instance parameters."""
    rows = []
    for instance in instances:
        key = _key(instance)
        if key not in _STATIC:
            _STATIC[key] = _static_row(instance, draws)
        rows.append(_STATIC[key])
    return np.asarray(rows, dtype=np.float32).reshape(len(instances), len(EXTRA_FIELDS) - 1)


def _static_row(instance: Instance, draws: int) -> np.ndarray:
    rng = np.random.default_rng(20_240_601)
    lead = rng.integers(instance.lead_time.min, instance.lead_time.max + 1, draws)
    demand = sample_demand(instance, rng, (draws, MAX_LEAD + 1))
    total = (demand * (np.arange(MAX_LEAD + 1)[None, :] <= lead[:, None])).sum(axis=1)
    mean = instance.demand.mean
    quantiles = np.quantile(total, [0.1, 0.5, 0.9, instance.critical_ratio]) / (mean * (instance.lead_time.max + 1))
    return np.array(
        [
            *quantiles,
            instance.unit_cost / max(instance.holding_cost + instance.shortage_cost, 1e-9),
            np.log(mean) / 5,
            min(instance.case_pack / mean, 10.0),
            min(instance.moq / mean, 10.0),
            min(instance.max_order / mean, 20.0) / 20,
        ]
    )


def features(sim: Any, state: State, anchor_orders: np.ndarray, static: np.ndarray) -> np.ndarray:
    """(N, len(FEATURE_FIELDS)) float32: the simulator's observation, the anchor's order in mean demands, and
    the static features; clipped to +-FEATURE_CLIP. ``sim``: an `InventorySim` or `SimRows` of one."""
    mean = np.maximum(sim.mean * sim.demand_scale(state.price), 1e-9)
    anchor = (np.asarray(anchor_orders, dtype=float) / mean)[:, None]
    stacked = np.concatenate([InventorySim.observe(sim, state), anchor.astype(np.float32), static], axis=1)
    return np.clip(stacked, -FEATURE_CLIP, FEATURE_CLIP).astype(np.float32)


class SimRows:
    """Rows of a sim's per-copy parameters (repeats allowed): what `InventorySim.observe` reads, so that states
    built outside the sim (the demand outcomes of replayed transitions) get exactly the same observation."""

    FIELDS = ("mean", "base_price", "elasticity", "lead_min", "lead_max", "holding", "shortage", "order_cost")
    FIELDS_2 = ("lost_sales", "cv")

    def __init__(self, sim: InventorySim, index: np.ndarray):
        for name in (*self.FIELDS, *self.FIELDS_2):
            setattr(self, name, getattr(sim, name)[index])

    def demand_scale(self, price: np.ndarray) -> np.ndarray:
        return InventorySim.demand_scale(self, price)  # type: ignore[arg-type]


# --- replay -------------------------------------------------------------------------------------------------------


class ReplayBuffer:
    """A numpy ring of transitions: named fields of fixed shapes; once full, the oldest are overwritten first."""

    def __init__(self, capacity: int, fields: dict[str, tuple[tuple[int, ...], Any]]):
        if capacity < 1:
            raise ValueError("capacity must be positive")
        self.capacity = capacity
        self.data = {name: np.zeros((capacity, *shape), dtype) for name, (shape, dtype) in fields.items()}
        self.cursor = 0  # where the next transition goes
        self.size = 0

    def __len__(self) -> int:
        return self.size

    def add(self, **batch: np.ndarray) -> None:
        if set(batch) != set(self.data):
            raise ValueError(f"fields {sorted(batch)} are not {sorted(self.data)}")
        n = len(next(iter(batch.values())))
        keep = min(n, self.capacity)  # only the newest `capacity` of a huge batch can stay
        slots = (self.cursor + np.arange(keep)) % self.capacity
        for name, values in batch.items():
            self.data[name][slots] = np.asarray(values)[n - keep :]
        self.cursor = int((self.cursor + keep) % self.capacity)
        self.size = min(self.size + keep, self.capacity)

    def sample(self, batch: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
        if self.size == 0:
            raise ValueError("the replay buffer is empty")
        index = rng.integers(0, self.size, batch)
        return {name: values[index] for name, values in self.data.items()}


# --- network and update ------------------------------------------------------------------------------------------


def build_network(n_features: int, n_actions: int, hidden: Sequence[int], zero_action: int | None = None) -> Any:
    """An MLP from standardised features to one Q-value per action, dueling: Q(s, a) = V(s) + A(s, a) - A(s, 0),
    so the anchor's action (delta 0, index ``zero_action``) is worth V(s) and every other action is valued by
    its advantage over the anchor. The Normalization layer's statistics come from the first replay data and are
    saved with the weights."""
    import keras

    zero = (n_actions - 1) // 2 if zero_action is None else zero_action
    inputs = keras.Input((n_features,), name="features")
    x = keras.layers.Normalization(name="standardise")(inputs)
    for i, width in enumerate(hidden):
        x = keras.layers.Dense(width, activation="relu", name=f"hidden_{i}")(x)
    value = keras.layers.Dense(1, name="value")(x)
    advantage = keras.layers.Dense(
        n_actions, name="advantage", kernel_initializer=keras.initializers.VarianceScaling(0.01)
    )(x)
    outputs = _anchor_advantage(zero, name="q")([value, advantage])
    return keras.Model(inputs, outputs, name="dqn")


def _anchor_advantage_layer() -> Any:
    import keras

    class AnchorAdvantage(keras.layers.Layer):
        """[V (B, 1), A (B, n)] -> V + A - A[:, zero]."""

        def __init__(self, zero: int, **kwargs: Any):
            super().__init__(**kwargs)
            self.zero = zero

        def call(self, inputs: Any) -> Any:
            value, advantage = inputs
            return value + advantage - advantage[:, self.zero : self.zero + 1]

        def get_config(self) -> dict[str, Any]:
            return {**super().get_config(), "zero": self.zero}

    return AnchorAdvantage


def _anchor_advantage(zero: int, name: str) -> Any:
    return _anchor_advantage_layer()(zero, name=name)


def double_dqn_targets(
    reward: Any,
    discount: Any,
    next_q_online: Any,
    next_q_target: Any,
    weights: Any | None = None,
    margin: float | None = None,
    zero_action: int = 0,
) -> Any:
    """reward + discount * Q_target(s', a*), a* = argmax_a Q_online(s', a): the online net chooses, the target net
    values (double DQN). With ``margin``, a* stays the anchor's action ``zero_action`` unless the online net's best
    beats it by more than ``margin``: the target then follows the policy that is deployed (see `greedy_actions`).

    next_q_*: (B, A) for one next state per transition, or (B, P, A) for P possible next states with
    probabilities ``weights`` (B, P), averaged. numpy arrays or TF tensors; returns a float32 tensor (B,)."""
    import tensorflow as tf

    online = tf.convert_to_tensor(next_q_online, tf.float32)
    target = tf.convert_to_tensor(next_q_target, tf.float32)
    choice = tf.argmax(online, axis=-1, output_type=tf.int32)
    if margin is not None:
        gain = tf.reduce_max(online, axis=-1) - online[..., zero_action]
        choice = tf.where(gain > margin, choice, tf.fill(tf.shape(choice), tf.constant(zero_action, tf.int32)))
    value = tf.gather(target, choice, batch_dims=len(online.shape) - 1)
    if weights is not None:
        value = tf.reduce_sum(tf.convert_to_tensor(weights, tf.float32) * value, axis=-1)
    return tf.convert_to_tensor(reward, tf.float32) + tf.convert_to_tensor(discount, tf.float32) * value


class Learner:
    """The online and target networks, the optimiser and the compiled update (Polyak-averaged target).

    One update regresses Q(s, a) of every action of B replayed states on targets (B, A) built from B x A x M
    rollouts (`train`): mean over M paths of the rollout's discounted reward + gamma^n x the double-DQN value of
    its last state."""

    def __init__(self, n_features: int, n_actions: int, config: TrainConfig):
        import keras
        import tensorflow as tf

        zero = config.action_deltas.index(0.0)
        self.online = build_network(n_features, n_actions, config.hidden, zero)
        self.target = build_network(n_features, n_actions, config.hidden, zero)
        self.target.set_weights(self.online.get_weights())
        self.optimizer = keras.optimizers.Adam(config.lr, clipnorm=10.0)
        loss_fn = keras.losses.Huber(delta=config.huber)
        online, target, optimizer, tau = self.online, self.target, self.optimizer, config.tau
        shape = (config.batch, n_actions, config.paths)
        discount = config.gamma**config.horizon

        @tf.function(jit_compile=True)
        def update(obs, returns, last_obs):  # type: ignore[no-untyped-def]
            values = double_dqn_targets(
                returns, discount, online(last_obs), target(last_obs), margin=config.target_margin, zero_action=zero
            )
            targets = tf.stop_gradient(tf.reduce_mean(tf.reshape(values, shape), axis=2))
            anchor_target = targets[:, zero : zero + 1]
            with tf.GradientTape() as tape:
                q = online(obs, training=True)
                anchor_q = q[:, zero : zero + 1]
                # the anchor's value, and each action's advantage over it: the paths are shared by the actions of
                # a state, so the target advantages are nearly free of the paths' noise; fitting them apart keeps
                # that noise (which is in the values) out of the advantages
                loss = loss_fn(anchor_target, anchor_q) + config.advantage_weight * loss_fn(
                    targets - anchor_target, q - anchor_q
                )
            variables = online.trainable_variables
            optimizer.apply_gradients(zip(tape.gradient(loss, variables), variables, strict=True))
            for mine, theirs in zip(target.trainable_variables, variables, strict=True):
                mine.assign((1 - tau) * mine + tau * theirs)
            return loss

        self.update = update
        self.q = compiled_q(self.online)

    def adapt(self, sample: np.ndarray) -> None:
        """Standardise both networks' inputs by a sample of features."""
        for net in (self.online, self.target):
            net.get_layer("standardise").adapt(sample)


def compiled_q(model: Any) -> Callable[[np.ndarray], np.ndarray]:
    """Q-values of a batch of features through one traced function (never `model.predict` per step)."""
    import tensorflow as tf

    n_features = int(model.inputs[0].shape[-1])

    @tf.function(input_signature=[tf.TensorSpec([None, n_features], tf.float32)])
    def q(x):  # type: ignore[no-untyped-def]
        return model(x, training=False)

    def call(observations: np.ndarray) -> np.ndarray:
        return q(np.asarray(observations, dtype=np.float32)).numpy()

    return call


# --- the policy ---------------------------------------------------------------------------------------------------


@dataclass
class _Bound:
    anchor: Policy
    static: np.ndarray
    units: np.ndarray


class DQNPolicy:
    """The trained network acting on any `InventorySim`: the anchor's order plus the greedy correction.

    A sim seen for the first time gets its anchors from ``anchor_fit`` (default `best_classical`: classical
    policies fitted by simulation, seconds per instance), unless `bind` gave one. `order` follows the `Policy`
    protocol; `order_for` also returns the Q-values; `q_values` scores a batch of `features` rows; `q_in_range`
    says which rows stayed in the range seen on validation (outside it the network extrapolates)."""

    name = "dqn"

    def __init__(
        self, model: Any, card: dict[str, Any], anchor_fit: Callable[[Sequence[Instance]], Policy] | None = None
    ):
        self.model = model
        self.card = card
        self.deltas = tuple(float(d) for d in card["action_deltas"])
        self.zero_action = self.deltas.index(0.0)
        self.margin = float(card.get("margin", 0.0))
        self.anchor_fit = anchor_fit
        self._q = compiled_q(model)
        self._bound: weakref.WeakKeyDictionary[InventorySim, _Bound] = weakref.WeakKeyDictionary()

    @property
    def policy_version(self) -> str:
        return str(self.card["version"])

    @property
    def q_bounds(self) -> tuple[float, float]:
        low, high = self.card.get("q_bounds", (-math.inf, math.inf))
        return float(low), float(high)

    def q_in_range(self, q: np.ndarray) -> np.ndarray:
        """(B,) True where every Q-value of the row is finite and within `q_bounds`."""
        low, high = self.q_bounds
        q = np.asarray(q, dtype=float)
        return np.all(np.isfinite(q) & (q >= low) & (q <= high), axis=1)

    def bind(self, sim: InventorySim, anchor: Policy) -> DQNPolicy:
        """Use this anchor for ``sim`` from now on (instead of fitting one on first use)."""
        self._bound[sim] = _Bound(anchor, static_features(sim.instances), action_units(sim.mean, self.deltas))
        return self

    def has_anchor(self, sim: InventorySim) -> bool:
        return sim in self._bound

    def _for(self, sim: InventorySim) -> _Bound:
        if sim not in self._bound:
            anchor = self.anchor_fit(sim.instances) if self.anchor_fit else best_classical(sim.instances).policy
            self.bind(sim, anchor)
        return self._bound[sim]

    def q_values(self, observations: np.ndarray) -> np.ndarray:
        """(B, len(action_deltas)) Q-values of a batch of `features` rows."""
        return self._q(observations)

    def features(self, sim: InventorySim, state: State) -> tuple[np.ndarray, np.ndarray]:
        """The network's input for every copy, and the anchor's orders it holds."""
        bound = self._for(sim)
        anchor_orders = np.asarray(bound.anchor.order(sim, state), dtype=float)
        return features(sim, state, anchor_orders, bound.static), anchor_orders

    def order_for(self, sim: InventorySim, state: State) -> tuple[np.ndarray, np.ndarray]:
        """Wanted units per copy (the simulator makes them feasible: MOQ, case pack, max order) and Q-values."""
        obs, anchor_orders = self.features(sim, state)
        q = self.q_values(obs)
        actions = greedy_actions(q, self.margin, self.zero_action)
        return residual_orders(anchor_orders, actions, self._bound[sim].units), q

    def order(self, sim: InventorySim, state: State) -> np.ndarray:
        return self.order_for(sim, state)[0]

    def save(self, path: Path) -> Path:
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        self.model.save_weights(path / WEIGHTS_FILE)
        (path / CARD_FILE).write_text(json.dumps(self.card, indent=2, default=_json_default) + "\n")
        return path

    @classmethod
    def load(
        cls, path: Path = DEFAULT_MODEL, anchor_fit: Callable[[Sequence[Instance]], Policy] | None = None
    ) -> DQNPolicy:
        path = Path(path)
        try:
            card = json.loads((path / CARD_FILE).read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise ValueError(f"{path}: not a DQN model directory ({exc})") from exc
        if tuple(card.get("feature_fields", ())) != FEATURE_FIELDS:
            raise ValueError(f"{path}: the model reads other state features than this code computes")
        deltas = [float(d) for d in card["action_deltas"]]
        model = build_network(len(FEATURE_FIELDS), len(deltas), card["config"]["hidden"], deltas.index(0.0))
        model.load_weights(path / WEIGHTS_FILE)
        return cls(model, card, anchor_fit)


def untrained_policy(hidden: Sequence[int] = (16,), seed: int = 0) -> DQNPolicy:
    """A randomly initialised network behind `DQNPolicy` (standardised on random features), for tests and demos."""
    import keras

    keras.utils.set_random_seed(seed)
    model = build_network(len(FEATURE_FIELDS), len(ACTION_DELTAS), hidden, ACTION_DELTAS.index(0.0))
    model.get_layer("standardise").adapt(np.random.default_rng(seed).normal(size=(64, len(FEATURE_FIELDS))))
    card = {
        "version": f"untrained-{weights_digest(model)}",
        "feature_fields": list(FEATURE_FIELDS),
        "action_deltas": list(ACTION_DELTAS),
        "margin": 0.0,
        "config": {"hidden": list(hidden)},
    }
    return DQNPolicy(model, card)


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"not JSON serialisable: {type(value)}")


def weights_digest(model: Any) -> str:
    digest = hashlib.sha256()
    for weight in model.get_weights():
        digest.update(np.ascontiguousarray(weight).tobytes())
    return digest.hexdigest()[:8]


def _git_sha() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "--short=8", "HEAD"], capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


# --- training -----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TrainConfig:
    steps: int = 8_000  # simulator periods; each steps every training copy once
    random_instances: int = 48  # drawn around the given ones, on top of them
    copies: int = 2  # copies of each training instance (different random streams)
    hidden: tuple[int, ...] = (128, 128)
    gamma: float = 0.95
    lr: float = 3e-4
    batch: int = 128  # replayed states per update; each gets targets for every action
    paths: int = 8  # demand and lead-time paths per state, shared by its actions (common random numbers)
    horizon: int = 12  # periods rolled out before bootstrapping (the first order, then the anchor)
    advantage_weight: float = 10.0  # of the advantage loss beside the anchor-value loss
    demand_points: int = DEMAND_POINTS
    buffer: int = 300_000
    tau: float = 0.01  # Polyak rate of the target network per update
    huber: float = 1.0
    epsilon_start: float = 1.0
    epsilon_end: float = 0.05
    epsilon_fraction: float = 0.3  # of the steps, linear decay
    learning_starts: int = 100  # steps of data before the first update
    validate_every: int = 1_000
    validation_periods: int = 1_000
    validation_seeds: int = 2
    margins: tuple[float, ...] = (0.0, 0.02, 0.05, 0.1, 0.2)  # candidate safety bands, chosen on validation
    target_margin: float | None = 0.05  # the band of the policy the targets follow (None: plain double DQN)
    action_deltas: tuple[float, ...] = ACTION_DELTAS


@dataclass
class TrainResult:
    policy: DQNPolicy
    history: list[dict[str, Any]]
    seconds: float


def random_instances(base: Sequence[Instance], n: int, seed: int) -> list[Instance]:
    """``n`` instances drawn around ``base``: each perturbs one base instance's demand mean (and dispersion or
    quantiles), shortage cost, order cost and lead times, keeping its demand family, lost sales / backorders and
    order rules and pricing (prices are held in training)."""
    rng = np.random.default_rng([seed, 17])
    drawn = []
    for i in range(n):
        source = base[int(rng.integers(len(base)))]
        data = source.model_dump()
        demand = data["demand"]
        factor = float(np.exp(rng.normal(0, 0.35)))
        demand["mean"] = float(np.clip(demand["mean"] * factor, 0.5, 1e5))
        if demand.get("quantiles"):
            demand["quantiles"] = {k: float(v * factor) for k, v in demand["quantiles"].items()}
        if demand.get("dispersion"):
            demand["dispersion"] = float(demand["dispersion"] * np.exp(rng.normal(0, 0.4)))
        data["shortage_cost"] = float(np.clip(source.shortage_cost * np.exp(rng.normal(0, 0.5)), 0.05, 1e6))
        data["order_cost"] = float(source.order_cost * np.exp(rng.normal(0, 0.4)))
        shift = int(rng.integers(-1, 2))
        low = int(np.clip(source.lead_time.min + shift, 0, MAX_LEAD))
        data["lead_time"] = {"min": low, "max": int(np.clip(source.lead_time.max + shift, low, MAX_LEAD))}
        data["name"] = f"random-{i}-{source.name}"[:64]
        drawn.append(Instance.model_validate(data))
    return drawn


def train(
    instances: Sequence[Instance],
    config: TrainConfig | None = None,
    *,
    seed: int = 0,
    progress: Callable[[int, dict[str, Any]], None] | None = None,
) -> TrainResult:
    """Train on ``instances`` (prices held at their base) plus ``config.random_instances`` drawn around them;
    every ``validate_every`` steps run the greedy policy on ``instances`` with validation seeds, keep the best
    weights and margin. ``progress(step, record)`` is called every 50 steps and after each validation."""
    import keras

    config = config or TrainConfig()
    started = time.perf_counter()
    keras.utils.set_random_seed(seed)
    rng = np.random.default_rng([seed, 1])
    base = list(instances)
    pool = base + random_instances(base, config.random_instances, seed)
    train_set = pool * config.copies
    quick = ([False] * len(base) + [True] * config.random_instances) * config.copies
    anchor = best_classical(train_set, quick=quick)
    sim = InventorySim(train_set)
    static = static_features(train_set)
    units = action_units(sim.mean, config.action_deltas)
    model = PeriodModel.of(sim, config.demand_points)
    scale = np.maximum(np.abs(anchor.cost), 1e-6)
    validation = _Validation(base, config)
    if progress is not None:
        progress(0, {"setup_seconds": round(time.perf_counter() - started, 1)})

    n_actions = len(config.action_deltas)
    learner = Learner(len(FEATURE_FIELDS), n_actions, config)
    buffer = ReplayBuffer(
        config.buffer,
        {
            "obs": ((len(FEATURE_FIELDS),), np.float32),
            "copy": ((), np.int32),
            "on_hand": ((), np.float32),
            "pipeline": ((MAX_LEAD,), np.float32),
        },
    )
    state = sim.reset(TRAIN_SEED + seed)
    history: list[dict[str, Any]] = []
    best: tuple[float, list[np.ndarray], float, dict[str, Any]] | None = None
    losses: list[float] = []
    adapted = False
    zero = config.action_deltas.index(0.0)
    for step in range(config.steps):
        anchor_orders = anchor.policy.order(sim, state)
        obs = features(sim, state, anchor_orders, static)
        buffer.add(obs=obs, copy=np.arange(sim.n), on_hand=state.on_hand, pipeline=state.pipeline)
        epsilon = _epsilon(step, config)
        explore = rng.random(sim.n) < epsilon
        greedy = greedy_actions(learner.q(obs), 0.0, zero) if adapted else np.full(sim.n, zero)
        actions = np.where(explore, rng.integers(0, n_actions, sim.n), greedy)
        state, _, _ = sim.step(residual_orders(anchor_orders, actions, units))
        if step + 1 == config.learning_starts:
            learner.adapt(buffer.data["obs"][: len(buffer)])
            adapted = True
        if adapted:
            batch = buffer.sample(config.batch, rng)
            returns, last_obs = _rollout_inputs(batch, sim, anchor, model, static, units, scale, config, rng)
            losses.append(float(learner.update(batch["obs"], returns, last_obs)))
        if adapted and ((step + 1) % config.validate_every == 0 or step + 1 == config.steps):
            score, margin, detail = validation.run(learner.online)
            record = {
                "step": step + 1,
                "seconds": round(time.perf_counter() - started, 1),
                "epsilon": epsilon,
                "loss": float(np.mean(losses[-200:])),
                **detail,
            }
            history.append(record)
            if best is None or score < best[0]:
                best = (score, learner.online.get_weights(), margin, record)
            if progress is not None:
                progress(step + 1, record)
        elif progress is not None and (step + 1) % 50 == 0:
            progress(step + 1, {"epsilon": epsilon})
    if best is None:
        raise ValueError("no validation ran: steps must exceed learning_starts")
    learner.online.set_weights(best[1])
    seconds = time.perf_counter() - started
    card = {
        "version": f"{datetime.now(UTC):%Y%m%dT%H%M%SZ}-{weights_digest(learner.online)}",
        "kind": "double DQN, residual around the best classical policy per instance, model-based n-step targets",
        "feature_fields": list(FEATURE_FIELDS),
        "action_deltas": list(config.action_deltas),
        "action": "order = anchor order + delta x mean demand (rounded, at least 1 unit), never below 0",
        "margin": best[2],
        "q_bounds": validation.q_bounds(learner.online),
        "config": asdict(config),
        "seed": seed,
        "training_instances": [i.name for i in base],
        "train_seconds": round(seconds, 1),
        "validation": best[3],
        "code": _git_sha(),
        "trained_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    return TrainResult(DQNPolicy(learner.online, card), history, seconds)


def _rollout_inputs(
    batch: dict[str, np.ndarray],
    sim: InventorySim,
    anchor: Anchor,
    model: PeriodModel,
    static: np.ndarray,
    units: np.ndarray,
    scale: np.ndarray,
    config: TrainConfig,
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray]:
    """For B replayed states, every action and M random paths (the same paths for every action of a state):
    the rollouts' discounted relative rewards (B x A x M,) and the features of their last states."""
    b, n_actions, m = len(batch["copy"]), units.shape[1], config.paths
    copies = np.repeat(batch["copy"], n_actions * m)  # rows ordered (state, action, path)
    on_hand = np.repeat(batch["on_hand"].astype(float), n_actions * m)
    pipeline = np.repeat(batch["pipeline"].astype(float), n_actions * m, axis=0)
    anchors = anchor.policy.rows(copies)
    first = anchors.orders_at(on_hand + pipeline.sum(axis=1))
    actions = np.tile(np.repeat(np.arange(n_actions), m), b)
    first = np.maximum(first + units[copies, actions], 0.0)
    paths = rng.random((b, 1, m, config.horizon, 2))
    uniforms = np.broadcast_to(paths, (b, n_actions, m, config.horizon, 2)).reshape(-1, config.horizon, 2)
    returns, on_hand, pipeline = rollouts(
        model.rows(copies),
        anchors,
        on_hand,
        pipeline,
        first,
        uniforms,
        anchor.cost[copies],
        scale[copies],
        config.gamma,
    )
    state = State(on_hand, pipeline, sim.base_price[copies], 0)
    last = features(SimRows(sim, copies), state, anchors.orders_at(state.inventory_position), static[copies])
    return returns.astype(np.float32), last


def _epsilon(step: int, config: TrainConfig) -> float:
    fraction = min(step / max(config.epsilon_fraction * config.steps, 1), 1.0)
    return float(config.epsilon_start + fraction * (config.epsilon_end - config.epsilon_start))


class _Validation:
    """Greedy runs on the base instances with validation seeds: cost relative to the anchor, per instance."""

    def __init__(self, instances: Sequence[Instance], config: TrainConfig):
        self.names = [i.name for i in instances]
        self.config = config
        copies = list(instances) * config.validation_seeds
        self.anchor = best_classical(copies).policy
        self.sim = InventorySim(copies)
        self.static = static_features(copies)
        self.units = action_units(self.sim.mean, config.action_deltas)
        self.anchor_cost = self._run(None, 0.0)[0]
        self.last_gaps: dict[str, float] = {}

    def _run(self, q: Callable[[np.ndarray], np.ndarray] | None, margin: float) -> tuple[np.ndarray, np.ndarray]:
        sim, config = self.sim, self.config
        state = sim.reset(VALIDATION_SEED)
        total = np.zeros(sim.n)
        warmup = 100
        seen = []
        for period in range(config.validation_periods + warmup):
            anchor_orders = self.anchor.order(sim, state)
            if q is None:
                orders = anchor_orders
            else:
                values = q(features(sim, state, anchor_orders, self.static))
                seen.append(values)
                actions = greedy_actions(values, margin, config.action_deltas.index(0.0))
                orders = residual_orders(anchor_orders, actions, self.units)
            state, _, info = sim.step(orders)
            if period >= warmup:
                total += info["cost"] - info["revenue"]
        per_instance = (total / config.validation_periods).reshape(config.validation_seeds, -1).mean(axis=0)
        return per_instance, (np.concatenate(seen) if seen else np.zeros((0, 1)))

    def run(self, model: Any) -> tuple[float, float, dict[str, Any]]:
        """Score (mean relative cost vs the anchor plus the worst one's excess), the best margin, details."""
        q = compiled_q(model)
        best: tuple[float, float, np.ndarray] | None = None
        for margin in self.config.margins:
            cost, _ = self._run(q, margin)
            relative = (cost - self.anchor_cost) / np.maximum(np.abs(self.anchor_cost), 1e-9)
            score = float(relative.mean() + max(relative.max(), 0.0))
            if best is None or score < best[0] - 1e-9:
                best = (score, margin, relative)
        assert best is not None
        self.last_gaps = dict(zip(self.names, (100 * best[2]).round(2).tolist(), strict=True))
        detail = {
            "validation_mean_gap_pct": round(100 * float(best[2].mean()), 3),
            "validation_worst_gap_pct": round(100 * float(best[2].max()), 3),
            "validation_gaps_pct": self.last_gaps,
            "margin": best[1],
        }
        return best[0], best[1], detail

    def q_bounds(self, model: Any) -> list[float]:
        """The Q range on a validation run, widened by its own width (at least 1) on each side."""
        _, values = self._run(compiled_q(model), 0.0)
        low, high = float(values.min()), float(values.max())
        pad = max(high - low, 1.0)
        return [low - pad, high + pad]


__all__ = [
    "ACTION_DELTAS",
    "FEATURE_FIELDS",
    "Anchor",
    "ClassicalAnchor",
    "DQNPolicy",
    "ReplayBuffer",
    "TrainConfig",
    "action_units",
    "best_classical",
    "double_dqn_targets",
    "greedy_actions",
    "residual_orders",
    "train",
]
