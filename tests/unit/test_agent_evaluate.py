"""The evaluator: common random numbers, t-intervals, the optimum where computable, and the gaps."""

import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from shelfcast_agent.env import InventorySim
from shelfcast_agent.evaluate import (
    OPTIMAL,
    OPTIMAL_POLICY,
    evaluate,
    gap_pct,
    headline,
    seeded_sim,
    summary,
    t_interval,
)
from shelfcast_agent.instances import Instance
from shelfcast_agent.policies import BaseStock


def _instance(name: str, **overrides: object) -> Instance:
    data: dict = {
        "name": name,
        "demand": {"dist": "poisson", "mean": 3},
        "lead_time": 1,
        "holding_cost": 1,
        "shortage_cost": 9,
        "lost_sales": False,
        "horizon": 1_500,
    }
    return Instance.model_validate(data | overrides)


def test_t_interval_of_a_toy_sample() -> None:
    mean, low, high = t_interval(np.array([1.0, 2.0, 3.0, 4.0]))
    half = stats.t.ppf(0.975, 3) * np.std([1, 2, 3, 4], ddof=1) / 2
    assert mean == 2.5 and low == pytest.approx(2.5 - half) and high == pytest.approx(2.5 + half)
    assert half == pytest.approx(2.054, abs=1e-3)
    assert t_interval(np.array([7.0])) == (7.0, 7.0, 7.0)


def test_seeded_sim_gives_each_copy_the_streams_of_a_plain_reset() -> None:
    instances = [_instance("a"), _instance("b", lead_time={"min": 0, "max": 2})]
    together = seeded_sim(instances, [4, 9])
    demands = np.array([together.step(np.zeros(4))[2]["demand"] for _ in range(20)])
    for block, seed in enumerate((4, 9)):
        alone = InventorySim(instances)
        alone.reset(seed)
        expected = np.array([alone.step(np.zeros(2))[2]["demand"] for _ in range(20)])
        np.testing.assert_array_equal(demands[:, 2 * block : 2 * block + 2], expected)


def test_evaluate_uses_common_random_numbers_and_adds_the_optimum_where_computable() -> None:
    instances = [_instance("fixed"), _instance("random-lead", lead_time={"min": 1, "max": 2})]

    def level(s: float):
        return lambda copies: BaseStock(np.full(len(copies), s))

    policies = {"low": level(4), "good": level(8), "again": level(8)}
    results = evaluate(instances, policies, seeds=4, warmup=20)
    assert {"instance", "policy", "mean_cost", "ci_low", "ci_high", "half_width", "seeds", "costs"} <= set(results)
    by = results.set_index(["instance", "policy"])
    # the same policy twice: identical per-seed costs (same demands); different policies differ
    assert by.loc[("fixed", "good"), "costs"] == by.loc[("fixed", "again"), "costs"]
    assert by.loc[("fixed", "good"), "costs"] != by.loc[("fixed", "low"), "costs"]
    row = by.loc[("fixed", "good")]
    assert row["ci_low"] < row["mean_cost"] < row["ci_high"] and row["seeds"] == 4
    assert by.loc[("fixed", "good"), "mean_cost"] < by.loc[("fixed", "low"), "mean_cost"]
    # the DP is computable for the fixed lead time only; its simulated table is about its cost
    assert ("fixed", OPTIMAL) in by.index and ("random-lead", OPTIMAL) not in by.index
    assert by.loc[("fixed", OPTIMAL), "mean_cost"] <= by.loc[("fixed", "good"), "mean_cost"] * 1.05
    assert by.loc[("fixed", OPTIMAL_POLICY), "mean_cost"] == pytest.approx(
        by.loc[("fixed", OPTIMAL), "mean_cost"], rel=0.06
    )


def test_summary_gaps_on_a_toy() -> None:
    rows = []
    per_seed = {
        ("x", "dqn"): [10.0, 11.0, 12.0],
        ("x", "base_stock"): [11.0, 11.0, 14.0],
        ("x", "s_S"): [10.0, 10.0, 13.0],
        ("x", OPTIMAL): [10.0],
        ("y", "dqn"): [5.0, 5.0, 5.0],
        ("y", "base_stock"): [4.0, 4.0, 4.0],
        ("y", "s_S"): [6.0, 6.0, 6.0],
    }
    for (instance, policy), costs in per_seed.items():
        mean, low, high = t_interval(np.array(costs))
        rows.append(
            {"instance": instance, "policy": policy, "mean_cost": mean, "ci_low": low, "ci_high": high, "costs": costs}
        )
    table = summary(pd.DataFrame(rows))
    assert list(table.index) == ["x", "y"]
    assert table.loc["x", "best_classical"] == "s_S" and table.loc["y", "best_classical"] == "base_stock"
    assert table.loc["x", "gap_dqn_pct"] == pytest.approx(10.0)  # 11 vs optimum 10
    assert table.loc["x", "gap_s_S_pct"] == pytest.approx(100 * (11 - 10) / 10)
    assert math.isnan(table.loc["y", "gap_dqn_pct"])  # no optimum there
    assert table.loc["x", "dqn_vs_best_classical_pct"] == pytest.approx(0.0)
    assert table.loc["y", "dqn_vs_best_classical_pct"] == pytest.approx(25.0)
    # paired interval of dqn - s_S on x: differences [0, 1, -1] -> mean 0, +-t * 1 / sqrt(3), in % of 11
    half = stats.t.ppf(0.975, 2) / math.sqrt(3)
    assert table.loc["x", "dqn_vs_best_classical_ci_high"] == pytest.approx(100 * half / 11)
    head = headline(table)
    assert head["mean_gap_dqn_vs_optimal_pct"] == pytest.approx(10.0) and not head["meets_optimal_bar"]
    assert head["worst_instance"] == "y" and not head["meets_classical_bar"]
    assert gap_pct(-9.0, -10.0) == pytest.approx(10.0)  # a priced instance: less profit is a positive gap
    assert math.isnan(gap_pct(1.0, 0.0))


def test_departures_count_the_dqn_decisions_that_differ_from_its_anchor() -> None:
    from shelfcast_agent import dqn
    from shelfcast_agent.evaluate import DQN, Departures, dqn_factory

    instances = [_instance("fixed", horizon=200)]
    untrained = dqn.untrained_policy(hidden=(8,))
    shares = {}
    for margin in (0.0, math.inf):  # greedy on random Q-values, and a band no correction can clear
        untrained.margin = margin
        departures = Departures()
        evaluate(instances, {DQN: dqn_factory(untrained, departures)}, seeds=2, warmup=10, optimal=False)
        assert departures.decisions == 2 * (10 + 200)
        shares[margin] = departures.pct
    assert shares[math.inf] == 0.0
    assert shares[0.0] is not None and shares[0.0] > 0.0
    assert Departures().pct is None
