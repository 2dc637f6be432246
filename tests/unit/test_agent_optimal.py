from functools import partial

import numpy as np
import pytest
from scipy import stats

from shelfcast_agent.instances import load_instances
from shelfcast_agent.optimal import OptimalPolicy, optimal_cost, order_sizes, solve
from shelfcast_agent.policies import (
    Policy,
    Stacked,
    common_random_costs,
    fit_policies,
    mean_cost,
    newsvendor_base_stock,
)
from tests.unit.agent_instances import make_instance

SUITE = {instance.name: instance for instance in load_instances()}


make = partial(make_instance, demand={"dist": "poisson", "mean": 6})


ONE_A_PERIOD = {"dist": "quantiles", "mean": 1, "quantiles": {"p50": 1}}  # demand is exactly 1 every period


@pytest.mark.parametrize(("lost_sales", "lead"), [(True, 0), (True, 2), (False, 0), (False, 3)])
def test_tiny_instance_by_hand(lost_sales: bool, lead: int) -> None:
    """Demand 1 a period, K = 5, h = 1, c = 0.5, shortage 10 (never worth it): order T units every T periods,
    timed to arrive as stock runs out; per period K / T + h (T - 1) / 2 + c: T = 2: 3.0, T = 3: 2.667, T = 4:
    2.75. So the optimum is 8/3 + 1/2 whatever the lead time."""
    instance = make(
        demand=ONE_A_PERIOD, lead_time=lead, order_cost=5, unit_cost=0.5, shortage_cost=10, lost_sales=lost_sales
    )
    assert optimal_cost(instance) == pytest.approx(5 / 3 + 1 + 0.5, abs=1e-6)


def test_lost_sales_without_lead_time_is_the_best_base_stock() -> None:
    """L = 0, K = 0: order up to y each period; per period c E[min(D, y)] (replacing sales) + h E[(y - D)^+]
    + p E[(D - y)^+], minimised over y, computed here independently with scipy."""
    instance = make(unit_cost=1.5)
    d = np.arange(200)
    pmf = stats.poisson(6).pmf(d)
    per_level = [
        1.5 * pmf @ np.minimum(d, y) + pmf @ np.maximum(y - d, 0) + 9 * pmf @ np.maximum(d - y, 0) for y in range(30)
    ]
    assert optimal_cost(instance) == pytest.approx(min(per_level), rel=1e-7)


def test_backorder_optimum_is_the_newsvendor_base_stock_without_fixed_cost() -> None:
    """Backorders, K = 0: the optimum is c * mean + min_y G(y), G over L + 1 periods (Poisson(21) here), at the
    newsvendor level, and the DP's rule is order-up-to that level."""
    instance = make(demand={"dist": "poisson", "mean": 7}, lead_time=2, unit_cost=1.5, lost_sales=False)
    d = np.arange(300)
    pmf = stats.poisson(21).pmf(d)
    g = [pmf @ np.maximum(y - d, 0) + 9 * pmf @ np.maximum(d - y, 0) for y in range(60)]
    best = int(np.argmin(g))
    assert best == newsvendor_base_stock(instance)
    assert optimal_cost(instance) == pytest.approx(1.5 * 7 + g[best], rel=1e-7)
    solution = solve(instance)
    assert solution is not None and solution.model == "backorders"
    top = solution.low + len(solution.orders) - 1
    assert top >= best + 3
    positions = np.arange(best - 40, top + 1)
    table = solution.orders[positions - solution.low]
    np.testing.assert_array_equal(table, np.maximum(best - positions, 0))


def test_not_computable_instances_give_none() -> None:
    assert optimal_cost(make(lead_time=5)) is None  # lost sales beyond L = 3
    assert optimal_cost(make(lead_time={"min": 1, "max": 2}, lost_sales=False)) is None  # orders cross
    priced = make(pricing={"base_price": 10, "elasticity": 2, "min_price": 6, "max_price": 15})
    assert optimal_cost(priced) is None
    assert optimal_cost(make(lead_time=5, lost_sales=False)) is not None  # backorders: any fixed lead time


def test_order_sizes_follow_moq_case_pack_and_max_order() -> None:
    instance = make(moq=10, case_pack=5, max_order=42)
    assert order_sizes(instance, 100).tolist() == [0, 10, 15, 20, 25, 30, 35, 40]
    assert order_sizes(instance, 22).tolist() == [0, 10, 15, 20]
    solution = solve(SUITE["ls-poisson8-L1-p9-moq10-pack5"])
    assert solution is not None
    assert set(np.unique(solution.orders)) <= {0, 10, 15, 20, 25, 30, 35}
    assert np.any(solution.orders > 0)


def test_suite_spans_the_cases_and_its_dps_are_fast_and_untruncated() -> None:
    instances = list(SUITE.values())
    assert len(instances) >= 12
    solutions = {instance.name: solve(instance) for instance in instances}
    solved = [instance for instance in instances if solutions[instance.name] is not None]
    assert len(solved) >= 8
    assert {i.lead_time.max for i in solved} >= {0, 1, 2, 3}
    assert any(i.lead_time.max >= 4 or i.lead_time.min != i.lead_time.max for i in instances if i not in solved)
    assert {round(i.shortage_cost / i.holding_cost) for i in solved} >= {4, 9, 19, 39}
    assert {i.lost_sales for i in solved} == {True, False}
    assert {i.demand.dist for i in solved} >= {"poisson", "negbin"}
    assert any(i.order_cost > 0 for i in solved) and any(i.moq > 0 and i.case_pack > 1 for i in solved)
    assert any(i.pricing is not None for i in instances)
    assert all(i.demand.mean <= 10 and 500 <= i.horizon <= 2_000 for i in solved)
    for name, solution in solutions.items():
        if solution is not None:
            assert solution.seconds < 30, name
            assert solution.edge_mass < 1e-6, name
            assert solution.cost > 0, name


@pytest.mark.parametrize(
    "name", ["ls-poisson4-L3-p39", "ls-poisson5-L1-p9-K20", "ls-poisson8-L1-p9-moq10-pack5", "bo-poisson6-L1-p19-K40"]
)
def test_simulating_the_optimal_policy_gives_the_dp_cost(name: str) -> None:
    """The key check that the DP and the simulator agree on timing and costs."""
    instance = SUITE[name]
    solution = solve(instance)
    assert solution is not None
    policy = solution.policy()
    assert isinstance(policy, OptimalPolicy) and isinstance(policy, Policy)
    copies = 16
    costs = mean_cost(policy, [instance] * copies, seed=2024, periods=5_000)
    error = costs.std(ddof=1) / np.sqrt(copies)
    assert costs.mean() == pytest.approx(solution.cost, rel=0.02)
    assert abs(costs.mean() - solution.cost) < 4 * error + 1e-9


@pytest.mark.parametrize("name", ["ls-poisson5-L2-p4", "ls-poisson5-L1-p9-K20"])
def test_no_fitted_classical_policy_beats_the_dp(name: str) -> None:
    instance = SUITE[name]
    dp = optimal_cost(instance)
    solution = solve(instance)
    assert dp is not None and solution is not None
    fitted = fit_policies(instance, periods=1_500)
    policies = (*fitted.values(), solution.policy())
    costs = common_random_costs(
        Stacked(policies, (1,) * len(policies)), instance, len(policies), seeds=(31, 32), periods=4_000
    )
    classical, optimal = costs[:-1], costs[-1]
    noise = 0.01 * dp
    assert np.all(dp <= classical + noise)
    assert np.all(optimal <= classical + noise)  # same demand stream: the DP's rule is never clearly worse
    assert dp < classical.max()  # and the comparison has teeth: some classical policies are clearly worse
