"""Inventory instances: one SKU's demand, lead time, costs and order rules, as read from an instances file.

Timing of one period (the same in the simulator, the policies and the DP reference):
1. the order due this period arrives and joins stock on hand;
2. the policy sees the state and orders `q` (0, or a multiple of `case_pack` in [moq, max_order]); with lead
   time L it arrives at the start of period t + L (L = 0: at once, before demand);
3. demand D is drawn; lost sales: sales = min(on_hand, D), the rest is lost; backorders: on hand goes negative;
4. cost = order_cost * [q > 0] + unit_cost * q + holding_cost * max(on_hand, 0)
          + shortage_cost * (units lost this period, or units on backorder at the end of it).
"""

import json
from pathlib import Path
from typing import Annotated, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

PositiveCost = Annotated[float, Field(ge=0, le=1e6)]
DEFAULT_SUITE = Path(__file__).with_name("suite.json")


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Demand(Strict):
    """Per-period demand: Poisson(mean), negative binomial (mean, dispersion: var = mean + mean^2 / dispersion),
    or a forecast given as quantiles (p10/p50/p90...) of one period's demand, sampled by interpolating them."""

    dist: Literal["poisson", "negbin", "quantiles"]
    mean: float = Field(gt=0, le=1e5)
    dispersion: float | None = Field(default=None, gt=0, description="negbin only")
    quantiles: dict[str, float] | None = Field(
        default=None, description="quantiles only, e.g. {p10: 2, p50: 5, p90: 9}"
    )

    @model_validator(mode="after")
    def _parameters_match_dist(self) -> Self:
        if (self.dist == "negbin") != (self.dispersion is not None):
            raise ValueError("dispersion is required for negbin and only for it")
        if (self.dist == "quantiles") != (self.quantiles is not None):
            raise ValueError("quantiles are required for dist=quantiles and only for it")
        if self.quantiles is not None:
            levels = sorted(self.quantiles, key=_quantile_level)
            values = [self.quantiles[level] for level in levels]
            if any(v < 0 for v in values) or values != sorted(values):
                raise ValueError("quantiles must be non-negative and non-decreasing")
        return self


def _quantile_level(name: str) -> float:
    if not (name.startswith("p") and name[1:].isdigit() and 0 < int(name[1:]) < 100):
        raise ValueError(f"quantile names are p1..p99, got {name!r}")
    return int(name[1:]) / 100


class LeadTime(Strict):
    """Periods from order to receipt: fixed (min == max) or uniform on [min, max], drawn per order."""

    min: int = Field(ge=0, le=8)
    max: int = Field(ge=0, le=8)

    @model_validator(mode="after")
    def _ordered(self) -> Self:
        if self.min > self.max:
            raise ValueError("lead_time.min is above lead_time.max")
        return self


class Pricing(Strict):
    """Optional price actions: mean demand scales by (price / base_price) ** -elasticity; each period the price
    moves by at most `max_step` (a fraction) and stays within [min_price, max_price]. Revenue counts as -cost."""

    base_price: float = Field(gt=0)
    elasticity: float = Field(gt=0, le=10)
    max_step: float = Field(default=0.05, gt=0, le=0.5)
    min_price: float = Field(gt=0)
    max_price: float = Field(gt=0)

    @model_validator(mode="after")
    def _base_price_within_bounds(self) -> Self:
        if not self.min_price <= self.base_price <= self.max_price:
            raise ValueError("pricing needs min_price <= base_price <= max_price")
        return self


class OrderRules(Strict):
    """What every SKU's inventory settings share: order rules, optional pricing, and a lead time that may be
    written as one number (`"lead_time": 2` is `{"min": 2, "max": 2}`). Subclasses declare `lead_time`."""

    moq: int = Field(default=0, ge=0)
    case_pack: int = Field(default=1, ge=1)
    max_order: int = Field(default=10_000, ge=1)
    pricing: Pricing | None = None

    @model_validator(mode="before")
    @classmethod
    def _lead_time_may_be_a_number(cls, data: object) -> object:
        if isinstance(data, dict) and isinstance(data.get("lead_time"), int):
            return {**data, "lead_time": {"min": data["lead_time"], "max": data["lead_time"]}}
        return data

    @model_validator(mode="after")
    def _orders_are_possible(self) -> Self:
        if self.moq > self.max_order or self.case_pack > self.max_order:
            raise ValueError("moq and case_pack must not exceed max_order")
        return self


class Instance(OrderRules):
    """One SKU's inventory problem, as in the instances file of `shelfcast agent evaluate`."""

    name: str = Field(min_length=1, max_length=64)
    demand: Demand
    lead_time: LeadTime
    holding_cost: PositiveCost
    shortage_cost: PositiveCost
    order_cost: PositiveCost = 0.0
    unit_cost: PositiveCost = 0.0
    lost_sales: bool
    horizon: int = Field(default=1_000, ge=1, le=100_000, description="periods per evaluation episode")

    @property
    def critical_ratio(self) -> float:
        """The newsvendor fractile p / (p + h)."""
        return self.shortage_cost / (self.shortage_cost + self.holding_cost)


class InstancesError(ValueError):
    """An instances file that cannot be used; the message names the file and the entry."""


def load_instances(path: Path = DEFAULT_SUITE) -> list[Instance]:
    """Read a JSON list of instances (or {"instances": [...]}); names must be unique."""
    try:
        raw = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise InstancesError(f"{path}: {exc}") from exc
    entries = raw.get("instances") if isinstance(raw, dict) else raw
    if not isinstance(entries, list) or not entries:
        raise InstancesError(f"{path}: expected a non-empty JSON list of instances")
    instances = []
    for index, entry in enumerate(entries):
        try:
            instances.append(Instance.model_validate(entry))
        except ValidationError as exc:
            name = entry.get("name", "?") if isinstance(entry, dict) else "?"
            raise InstancesError(f"{path}: instance {index} ({name}): {exc}") from exc
    names = [instance.name for instance in instances]
    if len(set(names)) != len(names):
        raise InstancesError(f"{path}: instance names repeat")
    return instances
