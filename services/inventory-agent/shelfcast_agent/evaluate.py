"""Evaluate inventory policies on instances: mean cost per period with 95% confidence intervals over seeds, the
optimum where the DP can compute it, and the gaps the issue asks for.

A small statsforecast-like API::

    results = evaluate(instances, default_policies(), seeds=10)   # long frame: instance x policy
    table = summary(results)                                      # wide: one row per instance, gaps in %

Protocol:
- Every policy runs on the same seeds (common random numbers): copy i under seed k draws exactly the demands and
  lead times of ``InventorySim(instances).reset(k)``, whatever the policy. Evaluation seeds are ``seed, seed + 1,
  ...`` (default 0..seeds-1); the classical policies are fitted on `dqn.FIT_SEEDS` (9001, 9002) and the DQN was
  trained and validated on its own seeds, so no policy is tuned on the evaluation seeds.
- One run per seed: ``warmup`` periods (not counted) from the simulator's starting stock, then ``periods`` periods
  (default: each instance's own ``horizon``). The cost of a run is its mean net cost per period (cost - revenue;
  prices are held at their base by every policy here). Per instance and policy: the mean over seeds and a
  Student-t 95% interval over the per-seed costs.
- ``optimal``: the DP's long-run average cost (`optimal.optimal_cost`, exact, no interval) where computable, and
  ``optimal_policy``: the DP's decision table simulated on the same seeds.
- Gaps in %: 100 (cost - reference) / |reference|; ``gap_<policy>_pct`` against the DP cost (the bar's measure; a
  simulated mean differs from the exact DP cost by its sampling noise, about 1-3% per instance at 10 x 1,000
  periods), ``dqn_vs_optimal_policy`` against the DP table simulated on the same seeds (paired, far less noisy),
  ``dqn_vs_best_classical`` against the classical policy with the lowest mean cost on these seeds (with a paired
  t-interval of the difference, the seeds being shared).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

from shelfcast_agent.dqn import CLASSICAL, DEFAULT_MODEL, FIT_SEEDS, Policy, best_classical, classical_fits
from shelfcast_agent.env import InventorySim, State
from shelfcast_agent.instances import Instance

PolicyFactory = Callable[[Sequence[Instance]], Policy]
DQN = "dqn"
OPTIMAL = "optimal"  # the DP cost (exact)
OPTIMAL_POLICY = "optimal_policy"  # the DP's table, simulated
CONFIDENCE = 0.95


# --- policies -----------------------------------------------------------------------------------------------------


class PerCopy:
    """One single-instance policy per copy (repeats share one object), each driving only its own copies."""

    def __init__(self, parts: Sequence[Policy], name: str):
        self.name = name
        groups: dict[int, tuple[Policy, list[int]]] = {}
        for row, part in enumerate(parts):
            groups.setdefault(id(part), (part, []))[1].append(row)
        self.groups = [(part, np.asarray(rows)) for part, rows in groups.values()]

    def order(self, sim: InventorySim, state: State) -> np.ndarray:
        wanted = np.zeros(len(state.on_hand))
        for part, rows in self.groups:
            view = State(state.on_hand[rows], state.pipeline[rows], state.price[rows], state.period)
            wanted[rows] = np.broadcast_to(part.order(sim, view), len(rows))
        return wanted


def classical_factory(name: str) -> PolicyFactory:
    """The classical policy ``name`` (one of `dqn.CLASSICAL`), fitted per instance by `policies.fit_policies`."""
    if name not in CLASSICAL:
        raise ValueError(f"unknown classical policy {name!r}; known: {', '.join(CLASSICAL)}")

    def factory(instances: Sequence[Instance]) -> Policy:
        return PerCopy([classical_fits(instance)[name] for instance in instances], name)

    return factory


class Departures:
    """How often a DQN ordered something else than its anchor would have: what its learning changed."""

    def __init__(self) -> None:
        self.decisions = 0
        self.departed = 0

    def count(self, orders: np.ndarray, anchor_orders: np.ndarray) -> None:
        self.decisions += len(orders)
        self.departed += int(np.count_nonzero(orders != anchor_orders))

    @property
    def pct(self) -> float | None:
        return 100 * self.departed / self.decisions if self.decisions else None


def dqn_factory(model: Path | Any = DEFAULT_MODEL, departures: Departures | None = None) -> PolicyFactory:
    """The DQN in a model directory (or a loaded `DQNPolicy`), anchored on the best classical fit per instance;
    ``departures`` counts its decisions that differ from the anchor's."""
    from shelfcast_agent.dqn import DQNPolicy

    policy = model if isinstance(model, DQNPolicy) else DQNPolicy.load(Path(model))

    def factory(instances: Sequence[Instance]) -> Policy:
        return _Bound(policy, best_classical(instances).policy, departures)

    return factory


class _Bound:
    """A DQN bound to a given anchor on whichever sim it is first asked about."""

    def __init__(self, dqn: Any, anchor: Policy, departures: Departures | None = None):
        self.dqn, self.anchor, self.departures, self.name = dqn, anchor, departures, DQN

    def order(self, sim: InventorySim, state: State) -> np.ndarray:
        if not self.dqn.has_anchor(sim):
            self.dqn.bind(sim, self.anchor)
        orders = np.asarray(self.dqn.order(sim, state))
        if self.departures is not None:
            self.departures.count(orders, np.asarray(self.anchor.order(sim, state)))
        return orders


def default_policies(
    model: Path | Any | None = DEFAULT_MODEL, departures: Departures | None = None
) -> dict[str, PolicyFactory]:
    """``dqn`` (unless ``model`` is None) and every classical policy."""
    policies: dict[str, PolicyFactory] = {} if model is None else {DQN: dqn_factory(model, departures)}
    return policies | {name: classical_factory(name) for name in CLASSICAL}


# --- running ------------------------------------------------------------------------------------------------------


def seeded_sim(instances: Sequence[Instance], seeds: Sequence[int]) -> InventorySim:
    """One sim over ``instances`` x ``seeds`` (seed-major): block k, copy i draws what copy i of
    ``InventorySim(instances).reset(seeds[k])`` draws."""
    sim = InventorySim([instance for _ in seeds for instance in instances])
    sim.reset(int(seeds[0]))
    sim.rngs = [
        np.random.default_rng(stream) for seed in seeds for stream in np.random.SeedSequence(seed).spawn(len(instances))
    ]
    return sim


def run_seeds(
    policy_factory: PolicyFactory,
    instances: Sequence[Instance],
    seeds: Sequence[int],
    *,
    periods: int | None = None,
    warmup: int = 100,
    record: Callable[[int, State, dict[str, np.ndarray], np.ndarray], None] | None = None,
) -> np.ndarray:
    """(len(seeds), len(instances)) mean net cost per period of each run (see the module doc)."""
    sim = seeded_sim(instances, seeds)
    policy = policy_factory(sim.instances)
    horizon = np.array([periods or instance.horizon for instance in instances] * len(seeds))
    total = np.zeros(sim.n)
    state = sim.state
    for period in range(warmup + int(horizon.max())):
        orders = np.asarray(policy.order(sim, state), dtype=float)
        before = state
        state, _, info = sim.step(orders)
        if record is not None:
            record(period, before, info, orders)
        counted = (period >= warmup) & (period - warmup < horizon)
        total += np.where(counted, info["cost"] - info["revenue"], 0.0)
    return (total / horizon).reshape(len(seeds), len(instances))


def t_interval(samples: np.ndarray, confidence: float = CONFIDENCE) -> tuple[float, float, float]:
    """(mean, low, high) of a Student-t interval for the mean of ``samples`` (one sample: the mean, no width)."""
    samples = np.asarray(samples, dtype=float)
    mean = float(samples.mean())
    if len(samples) < 2:
        return mean, mean, mean
    half = float(stats.t.ppf(0.5 + confidence / 2, len(samples) - 1) * samples.std(ddof=1) / math.sqrt(len(samples)))
    return mean, mean - half, mean + half


def evaluate(
    instances: Sequence[Instance],
    policies: Mapping[str, PolicyFactory],
    *,
    seeds: int = 10,
    seed: int = 0,
    periods: int | None = None,
    warmup: int = 100,
    optimal: bool = True,
    progress: Callable[[str], None] | None = None,
) -> pd.DataFrame:
    """One row per (instance, policy): mean cost per period, its 95% interval over the seeds, the per-seed costs.

    Columns: instance, policy, mean_cost, ci_low, ci_high, half_width, seeds, costs (list), seconds (the policy's
    fit + run time). ``optimal`` adds the DP cost (policy "optimal", no interval) and the simulated DP policy
    ("optimal_policy") for the instances where the DP is computable. ``results.attrs`` keeps the protocol."""
    if seeds < 1:
        raise ValueError("seeds must be at least 1")
    instances = list(instances)
    seed_list = list(range(seed, seed + seeds))
    rows: list[dict[str, Any]] = []

    def add(policy: str, index: int, costs: np.ndarray, seconds: float) -> None:
        mean, low, high = t_interval(costs)
        rows.append(
            {
                "instance": instances[index].name,
                "policy": policy,
                "mean_cost": mean,
                "ci_low": low,
                "ci_high": high,
                "half_width": (high - low) / 2,
                "seeds": len(costs),
                "costs": [float(c) for c in costs],
                "seconds": seconds,
            }
        )

    for name, factory in policies.items():
        if progress is not None:
            progress(name)
        started = time.perf_counter()
        costs = run_seeds(factory, instances, seed_list, periods=periods, warmup=warmup)
        seconds = time.perf_counter() - started
        for index in range(len(instances)):
            add(name, index, costs[:, index], seconds)
    if optimal:
        if progress is not None:
            progress(OPTIMAL)
        _add_optimal(instances, seed_list, periods, warmup, add)
    results = pd.DataFrame(rows)
    results.attrs["protocol"] = {
        "seeds": seed_list,
        "periods": periods if periods is not None else "each instance's horizon",
        "warmup": warmup,
        "confidence": CONFIDENCE,
        "fit_seeds": list(FIT_SEEDS),
        "cost": "mean net cost per period (cost - revenue); prices held at their base",
    }
    return results


def _add_optimal(
    instances: list[Instance],
    seeds: list[int],
    periods: int | None,
    warmup: int,
    add: Callable[[str, int, np.ndarray, float], None],
) -> None:
    from shelfcast_agent.optimal import solve

    started = time.perf_counter()
    solutions = {i: solve(instance) for i, instance in enumerate(instances)}
    solved = [i for i, solution in solutions.items() if solution is not None]
    seconds = time.perf_counter() - started
    for i in solved:
        solution = solutions[i]
        assert solution is not None
        add(OPTIMAL, i, np.array([solution.cost]), seconds)
    if not solved:
        return
    started = time.perf_counter()
    subset = [instances[i] for i in solved]
    # the subset keeps each instance's own random streams: copy j of the subset is copy solved[j] of the full sim
    sim = seeded_sim(subset, seeds)
    sim.rngs = [
        np.random.default_rng(streams[i])
        for seed in seeds
        for streams in [np.random.SeedSequence(seed).spawn(len(instances))]
        for i in solved
    ]
    tables = {i: solutions[i].policy() for i in solved}  # type: ignore[union-attr]
    policy = PerCopy([tables[i] for _ in seeds for i in solved], OPTIMAL_POLICY)
    costs = _run(sim, policy, [periods or instances[i].horizon for i in solved] * len(seeds), warmup)
    seconds = time.perf_counter() - started
    for j, i in enumerate(solved):
        add(OPTIMAL_POLICY, i, costs.reshape(len(seeds), len(solved))[:, j], seconds)


def _run(sim: InventorySim, policy: Policy, horizons: Sequence[int], warmup: int) -> np.ndarray:
    horizon = np.asarray(horizons)
    total = np.zeros(sim.n)
    state = sim.state
    for period in range(warmup + int(horizon.max())):
        state, _, info = sim.step(policy.order(sim, state))
        counted = (period >= warmup) & (period - warmup < horizon)
        total += np.where(counted, info["cost"] - info["revenue"], 0.0)
    return total / horizon


# --- gaps ---------------------------------------------------------------------------------------------------------


def gap_pct(cost: float, reference: float) -> float:
    """100 (cost - reference) / |reference|; NaN without a usable reference."""
    if not (np.isfinite(cost) and np.isfinite(reference)) or reference == 0:
        return math.nan
    return 100 * (cost - reference) / abs(reference)


def summary(results: pd.DataFrame, learned: str = DQN) -> pd.DataFrame:
    """One row per instance (in the order of ``results``): each policy's mean cost, ``optimal`` (DP), the best
    classical policy and its cost, and the gaps in %: every policy against the optimum (``gap_<policy>_pct``), and
    ``learned`` against the best classical (``dqn_vs_best_classical_pct``, with the paired 95% interval of the
    difference in % of the best classical's cost)."""
    order = list(dict.fromkeys(results["instance"]))
    costs = results.pivot(index="instance", columns="policy", values="mean_cost").reindex(order)
    classical = [name for name in CLASSICAL if name in costs.columns]
    table = costs.copy()
    table.columns.name = None
    if classical:
        table["best_classical"] = costs[classical].idxmin(axis=1)
        table["best_classical_cost"] = costs[classical].min(axis=1)
    reference = costs[OPTIMAL] if OPTIMAL in costs.columns else pd.Series(math.nan, index=costs.index)
    for policy in costs.columns:
        if policy != OPTIMAL:
            table[f"gap_{policy}_pct"] = [gap_pct(c, r) for c, r in zip(costs[policy], reference, strict=True)]
    if learned in costs.columns and OPTIMAL_POLICY in costs.columns:  # same seeds: a paired, low-noise comparison
        table[f"{learned}_vs_optimal_policy_pct"] = [
            gap_pct(c, r) for c, r in zip(costs[learned], costs[OPTIMAL_POLICY], strict=True)
        ]
    if learned in costs.columns and classical:
        table[f"{learned}_vs_best_classical_pct"] = [
            gap_pct(c, r) for c, r in zip(costs[learned], table["best_classical_cost"], strict=True)
        ]
        low, high = [], []
        per_seed = results.set_index(["instance", "policy"])["costs"]
        for instance, best in zip(table.index, table["best_classical"], strict=True):
            difference = np.asarray(per_seed[(instance, learned)]) - np.asarray(per_seed[(instance, best)])
            _, lo, hi = t_interval(difference)
            scale = abs(table.at[instance, "best_classical_cost"]) or math.nan
            low.append(100 * lo / scale)
            high.append(100 * hi / scale)
        table[f"{learned}_vs_best_classical_ci_low"] = low
        table[f"{learned}_vs_best_classical_ci_high"] = high
    return table


def headline(table: pd.DataFrame, learned: str = DQN) -> dict[str, Any]:
    """The issue's bar: mean gap of ``learned`` to the optimum where computable (<= 2%), and its worst gap to the
    best classical policy over the instances (<= 1%)."""
    out: dict[str, Any] = {"instances": len(table)}
    column = f"gap_{learned}_pct"
    if column in table.columns:
        gaps = table[column].dropna()
        out["optimum_computable"] = len(gaps)
        out[f"mean_gap_{learned}_vs_optimal_pct"] = float(gaps.mean()) if len(gaps) else None
        out["meets_optimal_bar"] = bool(len(gaps) and gaps.mean() <= 2.0)
    column = f"{learned}_vs_optimal_policy_pct"
    if column in table.columns:
        gaps = table[column].dropna()
        out[f"mean_gap_{learned}_vs_simulated_optimal_policy_pct"] = float(gaps.mean()) if len(gaps) else None
    column = f"{learned}_vs_best_classical_pct"
    if column in table.columns:
        out[f"worst_{learned}_vs_best_classical_pct"] = float(table[column].max())
        out["worst_instance"] = str(table[column].idxmax())
        out["meets_classical_bar"] = bool(table[column].max() <= 1.0)
    for name in CLASSICAL:
        if f"gap_{name}_pct" in table.columns:
            gaps = table[f"gap_{name}_pct"].dropna()
            out.setdefault("mean_gap_vs_optimal_pct", {})[name] = float(gaps.mean()) if len(gaps) else None
    return out


def to_json(results: pd.DataFrame, table: pd.DataFrame, **extra: Any) -> dict[str, Any]:
    """The JSON written by ``shelfcast agent evaluate --json``: protocol, per-instance costs with intervals and
    gaps, the headline, and ``extra`` (model card, timings)."""
    per_instance = []
    indexed = results.set_index(["instance", "policy"])
    for instance, row in table.iterrows():
        costs = {}
        for policy in indexed.loc[instance].index:
            entry = indexed.loc[(instance, policy)]
            costs[str(policy)] = {
                "mean": _num(entry["mean_cost"]),
                "ci_low": _num(entry["ci_low"]),
                "ci_high": _num(entry["ci_high"]),
                "seeds": int(entry["seeds"]),
            }
        gaps = {k: _num(v) for k, v in row.items() if str(k).endswith("_pct") or "_ci_" in str(k)}
        per_instance.append(
            {
                "instance": str(instance),
                "costs": costs,
                "optimal": _num(row.get(OPTIMAL, math.nan)),
                "best_classical": row.get("best_classical"),
                "gaps_pct": gaps,
            }
        )
    policies = [str(p) for p in dict.fromkeys(results["policy"])]
    return {
        "protocol": results.attrs.get("protocol", {}),
        "policies": policies,
        "instances": per_instance,
        "summary": headline(table),
        "seconds_per_policy": {p: _num(results[results["policy"] == p]["seconds"].iloc[0]) for p in policies},
        **extra,
    }


def _num(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


# --- trajectories (for the report) --------------------------------------------------------------------------------


def trajectory(
    instance: Instance, policies: Mapping[str, PolicyFactory], *, seed: int = 0, periods: int = 60, warmup: int = 100
) -> pd.DataFrame:
    """Per policy and period after the warm-up (same seed for all): on hand, inventory position before ordering,
    order placed, demand, shortage cost and net cost, for plotting."""
    frames = []
    for name, factory in policies.items():
        rows: list[dict[str, Any]] = []

        def record(
            period: int, state: State, info: dict[str, np.ndarray], orders: np.ndarray, rows: list = rows
        ) -> None:
            if period >= warmup:
                rows.append(
                    {
                        "period": period - warmup,
                        "on_hand": float(state.on_hand[0]),
                        "inventory_position": float(state.inventory_position[0]),
                        "order": float(info["placed"][0]),
                        "demand": float(info["demand"][0]),
                        "shortage_cost": float(info["shortage_cost"][0]),
                        "net_cost": float(info["cost"][0] - info["revenue"][0]),
                    }
                )

        run_seeds(factory, [instance], [seed], periods=periods, warmup=warmup, record=record)
        frames.append(pd.DataFrame(rows).assign(policy=name))
    return pd.concat(frames, ignore_index=True)
