"""The agent's unit tests write small instances the same way: one base, overridden field by field."""

from shelfcast_agent.instances import Instance

BASE = {
    "name": "x",
    "demand": {"dist": "poisson", "mean": 5},
    "lead_time": 0,
    "holding_cost": 1,
    "shortage_cost": 9,
    "lost_sales": True,
}


def make_instance(**fields: object) -> Instance:
    """A validated instance: `BASE` with `fields` replacing whole top-level fields."""
    return Instance.model_validate(BASE | fields)
