import math

import numpy as np
import pytest

from shelfcast_agent.env import MAX_LEAD, DemandSampler, InventorySim, State
from shelfcast_agent.instances import load_instances
from shelfcast_agent.policies import (
    RQ,
    SS,
    BaseStock,
    CappedBaseStock,
    Policy,
    Stacked,
    common_random_costs,
    fit_policies,
    lead_time_demand_pmf,
    mean_cost,
    newsvendor_base_stock,
    period_pmf,
    simulate,
)
from tests.unit.agent_instances import make_instance


def state_at(positions: list[float]) -> State:
    """Copies whose inventory position is split between on hand and the first pipeline slot."""
    n = len(positions)
    pipeline = np.zeros((n, MAX_LEAD))
    pipeline[:, 0] = 2.0
    return State(np.array(positions) - 2.0, pipeline, np.ones(n), 0)


SIM = InventorySim([make_instance()])  # classical policies read only the state


def test_base_stock_orders_up_to_the_level_per_copy() -> None:
    state = state_at([-3, 4, 10, 12])
    assert BaseStock(10).order(SIM, state).tolist() == [13, 6, 0, 0]
    assert BaseStock([10, 10, 20, 5]).order(SIM, state).tolist() == [13, 6, 10, 0]


def test_capped_base_stock_caps_each_order() -> None:
    state = state_at([-3, 4, 8, 12])
    assert CappedBaseStock(10, 5).order(SIM, state).tolist() == [5, 5, 2, 0]
    assert CappedBaseStock(10, [20, 1, 5, 5]).order(SIM, state).tolist() == [13, 1, 2, 0]


def test_s_S_orders_up_to_S_only_at_or_below_s() -> None:
    state = state_at([2, 5, 6, 11])
    assert SS(5, 12).order(SIM, state).tolist() == [10, 7, 0, 0]


def test_r_Q_orders_whole_batches_that_lift_the_position_above_r() -> None:
    positions = np.array([-7.0, 0.0, 3.0, 4.0, 5.0])
    order = RQ(4, 3).order(SIM, state_at(list(positions)))
    assert order.tolist() == [12, 6, 3, 3, 0]
    ordered = order > 0
    assert np.all(positions[ordered] + order[ordered] > 4)
    assert np.all(positions[ordered] + order[ordered] - 3 <= 4)  # one batch fewer would not do
    with pytest.raises(ValueError):
        RQ(4, 0)


def test_policies_satisfy_the_protocol_and_carry_names() -> None:
    policies = [BaseStock(1), CappedBaseStock(1, 1), SS(0, 1), RQ(0, 1), BaseStock(1, name="newsvendor")]
    assert all(isinstance(policy, Policy) for policy in policies)
    assert [p.name for p in policies] == ["base_stock", "capped_base_stock", "s_S", "r_Q", "newsvendor"]
    assert SS([1, 2], 3).params() == {"s": [1.0, 2.0], "S": 3.0}


def test_stacked_gives_each_part_its_own_copies() -> None:
    stacked = Stacked((BaseStock(10), SS(3, 20)), (1, 2))
    assert stacked.order(SIM, state_at([4, 2, 4])).tolist() == [6, 18, 0]
    with pytest.raises(ValueError):
        stacked.order(SIM, state_at([4, 2]))


def poisson_cdf(mean: float, k: int) -> float:
    return sum(math.exp(-mean) * mean**i / math.factorial(i) for i in range(k + 1))


def test_newsvendor_level_matches_a_hand_calculation() -> None:
    # Poisson(5), L = 0, fractile 9 / 10: P(D <= 7) = 0.867 < 0.9 <= P(D <= 8) = 0.932
    assert poisson_cdf(5, 7) < 0.9 <= poisson_cdf(5, 8)
    assert newsvendor_base_stock(make_instance()) == 8
    # L = 1: two periods, Poisson(10): P(<= 13) = 0.864, P(<= 14) = 0.917
    assert newsvendor_base_stock(make_instance(lead_time=1)) == 14
    # fractile 4/5 on Poisson(5): P(<= 6) = 0.762, P(<= 7) = 0.867
    assert newsvendor_base_stock(make_instance(shortage_cost=4)) == 7
    # random lead time 0..2: the level where the mixture of Poisson(5), (10), (15) first reaches 0.9
    mixture = [sum(poisson_cdf(5 * (lead + 1), k) for lead in range(3)) / 3 for k in range(40)]
    expected = next(k for k, value in enumerate(mixture) if value >= 0.9)
    assert newsvendor_base_stock(make_instance(lead_time={"min": 0, "max": 2})) == expected


def test_quantile_demand_pmf_is_the_simulators_law() -> None:
    demand = make_instance(
        demand={"dist": "quantiles", "mean": 5, "quantiles": {"p10": 2, "p50": 5, "p90": 9.3}}
    ).demand
    pmf = period_pmf(demand)
    assert pmf.sum() == pytest.approx(1.0)
    sampler = DemandSampler(make_instance(demand=demand.model_dump()))
    rng = np.random.default_rng(0)
    draws = np.array([sampler.sample(rng) for _ in range(60_000)]).astype(int)
    empirical = np.bincount(draws, minlength=len(pmf)) / len(draws)
    assert len(empirical) == len(pmf)
    np.testing.assert_allclose(empirical, pmf, atol=0.006)


def test_lead_time_demand_of_negbin_adds_dispersion() -> None:
    instance = make_instance(demand={"dist": "negbin", "mean": 4, "dispersion": 2}, lead_time=2)
    pmf = lead_time_demand_pmf(instance)
    support = np.arange(len(pmf))
    assert support @ pmf == pytest.approx(12, rel=1e-6)
    assert ((support - 12) ** 2) @ pmf == pytest.approx(3 * (4 + 16 / 2), rel=1e-5)  # 3 periods of var m + m^2/k


def test_mean_cost_is_the_mean_after_warmup_of_the_simulators_cost() -> None:
    instances = [make_instance(), make_instance(name="y", lost_sales=False, lead_time=2)]
    policy = BaseStock([9, 20])
    costs = mean_cost(policy, instances, seed=5, periods=300, warmup=50)
    sim = InventorySim(instances)
    state = sim.reset(5)
    seen = []
    for _ in range(350):
        state, _, info = sim.step(policy.order(sim, state))
        seen.append(info["cost"])
    np.testing.assert_allclose(costs, np.mean(seen[50:], axis=0))
    assert costs.shape == (2,)


def test_classical_policies_hold_the_price_of_priced_instances() -> None:
    priced = make_instance(pricing={"base_price": 10, "elasticity": 2, "min_price": 6, "max_price": 15})
    result = simulate(BaseStock(12), [priced], seed=1, periods=200)
    assert result["revenue"][0] == pytest.approx(10 * result["sales"][0])
    assert result["net_cost"][0] == pytest.approx(result["cost"][0] - result["revenue"][0])


def test_common_random_numbers_give_identical_candidates_identical_costs() -> None:
    costs = common_random_costs(BaseStock([10, 10, 12]), make_instance(lead_time=1), 3, seeds=(1, 2), periods=300)
    assert costs[0] == costs[1]
    assert costs[0] != costs[2]


def test_fitted_capped_base_stock_beats_plain_base_stock_on_lost_sales() -> None:
    instance = next(i for i in load_instances() if i.name == "ls-poisson5-L2-p4")
    fitted = fit_policies(instance)
    assert set(fitted) == {"newsvendor", "base_stock", "capped_base_stock", "s_S", "r_Q"}
    assert fitted["newsvendor"].name == "newsvendor"
    names = ["newsvendor", "base_stock", "capped_base_stock"]
    costs = common_random_costs(
        Stacked(tuple(fitted[n] for n in names), (1, 1, 1)), instance, 3, seeds=(71, 72), periods=4_000
    )
    newsvendor, base, capped = costs
    assert capped < base - 0.05  # about 4.43 against 4.64
    assert base < newsvendor  # the newsvendor level overstocks under lost sales


def test_fitted_s_S_pays_the_fixed_cost_less_often_than_base_stock() -> None:
    instance = make_instance(
        order_cost=40, lost_sales=False, lead_time=1, shortage_cost=19, demand={"dist": "poisson", "mean": 6}
    )
    fitted = fit_policies(instance, periods=1_500)
    s_S = fitted["s_S"]
    assert isinstance(s_S, SS)
    s, big_s = np.asarray(s_S.s)[0], np.asarray(s_S.S)[0]
    assert big_s - s >= 10  # batches near the EOQ (sqrt(2 * 40 * 6) = 22), not one period's demand
    costs = common_random_costs(
        Stacked((fitted["base_stock"], fitted["s_S"], fitted["r_Q"]), (1, 1, 1)), instance, 3, seeds=(5,), periods=3_000
    )
    assert costs[1] < 0.6 * costs[0] and costs[2] < 0.6 * costs[0]
