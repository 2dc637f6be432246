from functools import partial

import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

from shelfcast_agent.env import MAX_LEAD, InventoryEnv, InventorySim, InventoryVectorEnv, feasible_order
from tests.unit.agent_instances import make_instance

make = partial(make_instance, lead_time=1)


PRICED = make(pricing={"base_price": 10, "elasticity": 2, "max_step": 0.05, "min_price": 6, "max_price": 15})


def run(sim: InventorySim, orders: list[np.ndarray], seed: int = 3) -> list[dict]:
    sim.reset(seed)
    infos = []
    for order in orders:
        state, reward, info = sim.step(order)
        infos.append({**info, "on_hand": state.on_hand.copy(), "pipeline": state.pipeline.copy(), "reward": reward})
    return infos


def random_orders(n: int, periods: int, high: int = 12, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, high, n).astype(float) for _ in range(periods)]


def test_a_seed_fixes_the_whole_run_and_another_seed_changes_it() -> None:
    instances = [make(), make(name="y", lost_sales=False, lead_time={"min": 0, "max": 3})]
    orders = random_orders(2, 50)
    first, again = run(InventorySim(instances), orders), run(InventorySim(instances), orders)
    other = run(InventorySim(instances), orders, seed=4)
    for a, b in zip(first, again, strict=True):
        for key in a:
            np.testing.assert_array_equal(a[key], b[key])
    assert any(not np.array_equal(a["demand"], c["demand"]) for a, c in zip(first, other, strict=True))


def test_demand_stream_is_common_whatever_the_actions_and_the_other_copies() -> None:
    instances = [
        make(),
        make(name="y", lead_time={"min": 1, "max": 4}, demand={"dist": "negbin", "mean": 4, "dispersion": 2}),
    ]
    lazy = run(InventorySim(instances), [np.zeros(2)] * 60)
    busy = run(InventorySim(instances), random_orders(2, 60, high=30))
    np.testing.assert_array_equal([i["demand"] for i in lazy], [i["demand"] for i in busy])
    assert np.std([i["demand"] for i in lazy]) > 0
    # copy 0 draws the same with or without other copies beside it
    alone = run(InventorySim(instances[:1]), [np.zeros(1)] * 60)
    np.testing.assert_array_equal([i["demand"][0] for i in alone], [i["demand"][0] for i in lazy])


def test_feasible_order_rules() -> None:
    wanted = np.array([0.0, -3.0, 0.4, 2.4, 3.0, 11.0, 27.0, 500.0])
    n = len(wanted)
    plain = feasible_order(wanted, np.zeros(n), np.ones(n), np.full(n, 100.0))
    assert plain.tolist() == [0, 0, 0, 2, 3, 11, 27, 100]
    packed = feasible_order(wanted, np.full(n, 10.0), np.full(n, 5.0), np.full(n, 48.0))
    # 0 stays 0; anything positive is at least the MOQ, rounded up to packs, and at most max_order in whole packs
    assert packed.tolist() == [0, 0, 0, 10, 10, 15, 30, 45]
    assert np.all((packed == 0) | ((packed >= 10) & (packed % 5 == 0) & (packed <= 48)))


def test_lost_sales_never_go_negative_and_lose_the_excess() -> None:
    sim = InventorySim([make(demand={"dist": "poisson", "mean": 9})] * 4)
    infos = run(sim, random_orders(4, 200, high=8))
    on_hand = np.array([i["on_hand"] for i in infos])
    demand, sales, lost = (np.array([i[k] for i in infos]) for k in ("demand", "sales", "lost"))
    assert on_hand.min() >= 0
    assert lost.sum() > 0  # ordering at most 7 a period against a mean of 9: shortages happen
    np.testing.assert_array_equal(sales + lost, demand)
    np.testing.assert_allclose([i["shortage_cost"] for i in infos], 9 * lost)


def test_backorders_go_negative_and_are_charged_every_period_they_wait() -> None:
    instance = make(lost_sales=False, lead_time=0)
    sim = InventorySim([instance])
    infos = run(sim, [np.zeros(1)] * 30)
    on_hand = np.array([i["on_hand"][0] for i in infos])
    assert on_hand[-1] < 0
    assert np.all(np.diff(on_hand) <= 0)  # nothing ordered: stock only falls
    np.testing.assert_allclose([i["shortage_cost"][0] for i in infos], 9 * np.maximum(-on_hand, 0))
    np.testing.assert_array_equal([i["sales"][0] for i in infos], [i["demand"][0] for i in infos])


@pytest.mark.parametrize("lost_sales", [True, False])
def test_cost_accounting_and_lead_time_timing(lost_sales: bool) -> None:
    lead = 2
    instance = make(lost_sales=lost_sales, lead_time=lead, order_cost=7, unit_cost=3, holding_cost=0.5)
    sim = InventorySim([instance] * 3)
    state = sim.reset(11)
    position = state.inventory_position.copy()
    on_hand = state.on_hand.copy()
    placed_history = []
    for order in random_orders(3, 80, high=9, seed=5):
        state, reward, info = sim.step(order)
        placed_history.append(info["placed"])
        expected_parts = info["holding_cost"] + info["ordering_cost"] + info["shortage_cost"]
        np.testing.assert_allclose(info["cost"], expected_parts)
        np.testing.assert_allclose(reward, -info["cost"])
        np.testing.assert_allclose(info["ordering_cost"], 7 * (info["placed"] > 0) + 3 * info["placed"])
        # end-of-period stock = stock before demand (this period's arrival already in) minus sales
        end = on_hand + (info["placed"] if lead == 0 else 0) - info["sales"]
        np.testing.assert_allclose(info["holding_cost"], 0.5 * np.maximum(end, 0))
        arrival = placed_history[-lead] if len(placed_history) >= lead else np.zeros(3)
        np.testing.assert_allclose(state.on_hand, end + arrival)  # what was ordered L periods ago arrives now
        position = position + info["placed"] - info["sales"]
        np.testing.assert_allclose(state.inventory_position, position)
        on_hand = state.on_hand.copy()
    assert state.pipeline.shape == (3, MAX_LEAD)
    assert np.all(state.pipeline[:, lead - 1 :] == 0)


@pytest.mark.filterwarnings("ignore:.*Box observation space m:UserWarning")  # unbounded by design
def test_gymnasium_checker_passes_for_plain_and_priced_instances() -> None:
    check_env(InventoryEnv(make()), skip_render_check=True)
    check_env(InventoryEnv(PRICED), skip_render_check=True)


def test_single_env_truncates_at_the_horizon() -> None:
    env = InventoryEnv(make(horizon=7))
    env.reset(seed=1)
    flags = [env.step(3)[3] for _ in range(7)]
    assert flags == [False] * 6 + [True]


def test_vector_env_resets_finished_copies_on_the_same_step() -> None:
    instances = [make(horizon=5), make(name="y", horizon=8, lost_sales=False)]
    env = InventoryVectorEnv(instances)
    start, _ = env.reset(seed=2)
    truncated_at: list[list[int]] = [[], []]
    for period in range(1, 17):
        obs, _, terminated, truncated, info = env.step(np.array([0, 0]))
        assert not terminated.any()
        for k in np.flatnonzero(truncated):
            truncated_at[k].append(period)
            assert "final_obs" in info
            np.testing.assert_allclose(obs[k], start[k])  # back to its starting stock with an empty pipeline
    assert truncated_at == [[5, 10, 15], [8, 16]]


def test_classical_runs_keep_the_price_and_price_moves_stay_in_bounds() -> None:
    sim = InventorySim([PRICED] * 2)
    sim.reset(0)
    for _ in range(40):
        state, _, _ = sim.step(np.full(2, 6.0))
    assert state.price.tolist() == [10.0, 10.0]
    for _ in range(40):
        state, reward, info = sim.step(np.full(2, 6.0), np.array([1.0, -1.0]))
    assert state.price[0] == pytest.approx(15.0) and state.price[1] == pytest.approx(6.0)
    np.testing.assert_allclose(info["revenue"], state.price * info["sales"])
    np.testing.assert_allclose(reward, info["revenue"] - info["cost"])
