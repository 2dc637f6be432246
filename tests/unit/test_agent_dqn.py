"""The DQN's parts: replay ring, double-DQN targets, residual actions, the period model, save/load, a tiny training."""

from functools import partial
from pathlib import Path

import numpy as np
import pytest

from shelfcast_agent import dqn
from shelfcast_agent.env import InventorySim, feasible_order
from shelfcast_agent.policies import RQ, SS, BaseStock, CappedBaseStock
from tests.unit.agent_instances import make_instance

_instance = partial(make_instance, name="toy", lead_time=1, lost_sales=False)


def test_replay_buffer_is_a_ring_that_overwrites_the_oldest_first() -> None:
    buffer = dqn.ReplayBuffer(5, {"x": ((2,), np.float32), "a": ((), np.int32)})
    buffer.add(x=np.array([[0, 0], [1, 1], [2, 2]]), a=np.array([0, 1, 2]))
    assert len(buffer) == 3 and buffer.cursor == 3
    buffer.add(x=np.array([[3, 3], [4, 4], [5, 5], [6, 6]]), a=np.array([3, 4, 5, 6]))
    assert len(buffer) == 5 and buffer.cursor == 2
    assert buffer.data["a"].tolist() == [5, 6, 2, 3, 4]  # 0 and 1 were the oldest
    assert buffer.data["x"][:, 0].tolist() == [5, 6, 2, 3, 4]
    sample = buffer.sample(200, np.random.default_rng(0))
    assert set(sample["a"].tolist()) == {2, 3, 4, 5, 6}
    assert (sample["x"][:, 0] == sample["a"]).all()  # fields of one transition stay together
    buffer.add(x=np.arange(14).reshape(7, 2), a=np.arange(7))  # larger than the ring: the newest 5 stay
    assert sorted(buffer.data["a"].tolist()) == [2, 3, 4, 5, 6] and len(buffer) == 5
    with pytest.raises(ValueError):
        buffer.add(x=np.zeros((1, 2)))


def test_double_dqn_target_lets_the_online_net_choose_and_the_target_net_value() -> None:
    reward = np.array([1.0, 0.0])
    discount = np.array([0.9, 0.5])
    online = np.array([[1.0, 2.0, 0.0], [3.0, 0.0, 1.0]])  # chooses action 1, then action 0
    target = np.array([[10.0, 20.0, 30.0], [40.0, 50.0, 60.0]])  # a plain max would take 30 and 60
    np.testing.assert_allclose(dqn.double_dqn_targets(reward, discount, online, target).numpy(), [19.0, 20.0])
    # with a margin, the anchor's action (0) stays unless the best beats it by more: row 0 gains only 1
    kept = dqn.double_dqn_targets(reward, discount, online, target, margin=1.5, zero_action=0)
    np.testing.assert_allclose(kept.numpy(), [10.0, 20.0])
    # several possible next states per transition, averaged by their probabilities
    online3 = np.stack([online, online[::-1]], axis=1)  # (B=2, P=2, A=3)
    target3 = np.stack([target, target[::-1]], axis=1)
    weights = np.array([[0.25, 0.75], [0.5, 0.5]])
    expected = [1 + 0.9 * (0.25 * 20 + 0.75 * 40), 0 + 0.5 * (0.5 * 40 + 0.5 * 20)]
    np.testing.assert_allclose(dqn.double_dqn_targets(reward, discount, online3, target3, weights).numpy(), expected)


def test_residual_actions_add_mean_demand_steps_to_the_anchor() -> None:
    deltas = (-0.5, -0.1, 0.0, 0.1, 0.5)
    units = dqn.action_units(np.array([10.0, 2.0]), deltas)
    assert units.tolist() == [[-5, -1, 0, 1, 5], [-1, -1, 0, 1, 1]]  # at least one unit from the anchor
    anchor = np.array([3.0, 0.0])
    orders = dqn.residual_orders(anchor, np.array([0, 0]), units)
    assert orders.tolist() == [0.0, 0.0]  # never below 0
    assert dqn.residual_orders(anchor, np.array([2, 2]), units).tolist() == [3.0, 0.0]  # delta 0 is the anchor
    assert dqn.residual_orders(anchor, np.array([4, 3]), units).tolist() == [8.0, 1.0]
    q = np.array([[0.0, 0.0, 1.0, 1.05, 0.0], [0.0, 0.0, 1.0, 1.5, 0.0]])
    assert dqn.greedy_actions(q, 0.0, 2).tolist() == [3, 3]
    assert dqn.greedy_actions(q, 0.1, 2).tolist() == [2, 3]  # a gain within the margin keeps the anchor


def test_classical_anchor_orders_like_the_policies_it_is_built_from() -> None:
    policies = [BaseStock(12), CappedBaseStock(15, 4), SS(6, 14), RQ(5, 7)]
    anchor = dqn.ClassicalAnchor.of(policies)
    sim = InventorySim([_instance()] * 4)
    state = sim.reset(0)
    for position in np.arange(-5, 20):
        state.on_hand[:] = position
        expected = [float(p.order(sim, state)[0]) for p in policies]
        np.testing.assert_allclose(anchor.order(sim, state), expected)
    np.testing.assert_allclose(anchor.rows(np.array([3, 3, 0])).orders_at(np.full(3, 2.0)), [7.0, 7.0, 10.0])


@pytest.mark.parametrize(
    "overrides",
    [
        {"lost_sales": True, "lead_time": 2},
        {"lead_time": 0, "order_cost": 10, "unit_cost": 2},
        {"lead_time": {"min": 1, "max": 3}, "demand": {"dist": "negbin", "mean": 6, "dispersion": 2}},
        {
            "lost_sales": True,
            "moq": 6,
            "case_pack": 4,
            "demand": {"dist": "quantiles", "mean": 5, "quantiles": {"p10": 2, "p50": 5, "p90": 9}},
        },
        {
            "lost_sales": True,
            "unit_cost": 4,
            "pricing": {"base_price": 10, "elasticity": 2, "min_price": 6, "max_price": 15},
        },
    ],
)
def test_the_training_period_model_is_the_simulator_step(overrides: dict) -> None:
    instance = _instance(**overrides)
    sim = InventorySim([instance] * 8)
    model = dqn.PeriodModel.of(sim)
    state = sim.reset(3)
    rng = np.random.default_rng(1)
    for _ in range(30):
        wanted = rng.integers(0, 15, sim.n).astype(float)
        placed = feasible_order(wanted, sim.moq, sim.case_pack, sim.max_order)
        np.testing.assert_allclose(model.feasible(wanted), placed)
        on_hand, pipeline = state.on_hand.copy(), state.pipeline.copy()
        state, _, info = sim.step(wanted)
        matched = np.zeros(sim.n, bool)
        for lead in range(instance.lead_time.min, instance.lead_time.max + 1):
            leads = np.full(sim.n, lead)
            nxt, pipe, cost = dqn.advance(model, on_hand, pipeline, placed, leads, info["demand"])
            same = np.isclose(nxt, state.on_hand) & np.isclose(cost, info["cost"] - info["revenue"])
            matched |= same & np.isclose(pipe, state.pipeline).all(axis=1)
        assert matched.all()


def test_model_draws_follow_the_demand_law() -> None:
    instance = _instance(lead_time={"min": 0, "max": 2}, demand={"dist": "negbin", "mean": 6, "dispersion": 2})
    model = dqn.PeriodModel.of(InventorySim([instance])).rows(np.zeros(40_000, int))
    rng = np.random.default_rng(0)
    demand, lead = model.draw(rng.random(40_000), rng.random(40_000))
    assert abs(demand.mean() - 6) < 0.1 and abs(demand.var() - (6 + 36 / 2)) < 1.5
    assert np.bincount(lead).tolist() == pytest.approx([40_000 / 3] * 3, rel=0.05)


def test_save_and_load_give_the_same_q_values(tmp_path: Path) -> None:
    policy = dqn.untrained_policy(hidden=(8,))
    observations = np.random.default_rng(2).normal(size=(5, len(dqn.FEATURE_FIELDS))).astype(np.float32)
    before = policy.q_values(observations)
    policy.save(tmp_path / "model")
    loaded = dqn.DQNPolicy.load(tmp_path / "model")
    np.testing.assert_array_equal(loaded.q_values(observations), before)
    assert loaded.policy_version == policy.policy_version
    card = (tmp_path / "model" / dqn.CARD_FILE).read_text()
    (tmp_path / "model" / dqn.CARD_FILE).write_text(card.replace('"on_hand"', '"stock"'))
    with pytest.raises(ValueError, match="other state features"):
        dqn.DQNPolicy.load(tmp_path / "model")


def test_the_shipped_model_loads_and_says_what_it_is() -> None:
    policy = dqn.DQNPolicy.load()
    card = policy.card
    assert card["feature_fields"] == list(dqn.FEATURE_FIELDS)
    assert 0.0 in card["action_deltas"] and card["train_seconds"] > 0
    assert (dqn.DEFAULT_MODEL / dqn.WEIGHTS_FILE).stat().st_size < 2_000_000
    low, high = policy.q_bounds
    assert low < 0 < high


def test_a_tiny_training_run_beats_a_random_policy_and_stays_near_its_anchor() -> None:
    instance = _instance(name="easy", lost_sales=True, lead_time=1)
    config = dqn.TrainConfig(
        steps=120,
        random_instances=0,
        copies=4,
        hidden=(16,),
        batch=32,
        paths=4,
        horizon=4,
        learning_starts=20,
        validate_every=60,
        validation_periods=150,
        validation_seeds=1,
        margins=(0.0, 0.1),
    )
    result = dqn.train([instance], config, seed=0)
    assert len(result.history) == 2 and result.seconds > 0
    policy = result.policy
    sim = InventorySim([instance] * 4)
    sim.reset(11)
    learned = dqn.run_policy(sim, policy, periods=300, warmup=50).mean()

    class Random:
        def __init__(self) -> None:
            self.rng = np.random.default_rng(0)

        def order(self, sim: InventorySim, state: object) -> np.ndarray:
            return self.rng.integers(0, 11, sim.n).astype(float)

    sim.reset(11)
    random = dqn.run_policy(sim, Random(), periods=300, warmup=50).mean()
    sim.reset(11)
    anchored = dqn.run_policy(sim, dqn.best_classical([instance] * 4).policy, periods=300, warmup=50).mean()
    assert learned < 0.8 * random
    assert learned < 1.1 * anchored
    units, q = policy.order_for(sim, sim.state)
    assert units.shape == (4,) and q.shape == (4, len(dqn.ACTION_DELTAS))
    assert policy.q_in_range(q).all()
