"""Agent-only settings (`SHELFCAST_AGENT_*`) and the per-SKU parameter file; Kafka, Redis and topics come from the
core settings.

The SKU parameter file (`SHELFCAST_AGENT_SKU_PARAMS`) is JSON: built-in defaults, overridden by the file's
``defaults``, overridden field by field by its ``skus`` entries; a SKU that is not listed uses the defaults::

    {"defaults": {"lead_time": 2, "holding_cost": 0.1, "shortage_cost": 2.0, "unit_cost": 4.0, "case_pack": 6},
     "skus": {"SKU-00001": {"lead_time": {"min": 1, "max": 3}, "moq": 12,
                            "pricing": {"base_price": 9.9, "elasticity": 1.5, "min_price": 6, "max_price": 12}}}}
"""

from __future__ import annotations

import json
import re
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any, Literal, Self

from pydantic import Field, ValidationError, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from shelfcast.contracts import SKU_PATTERN, describe_errors
from shelfcast.errors import ShelfcastError
from shelfcast_agent.instances import LeadTime, OrderRules

PositiveCost = Annotated[float, Field(ge=0, le=1e6)]


class AgentSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="SHELFCAST_AGENT_", extra="ignore")

    port: int = Field(default=8100, ge=1, le=65535)
    group_id: str = "shelfcast-agent"
    keyspace: str = Field(
        default="sc:agent",
        pattern=r"^[A-Za-z0-9:._\-]{1,64}$",
        description="prefix of the agent's own Redis keys (offsets, decisions, budget); SKU state is sc:inv:{sku}",
    )
    sku_params: Path | None = Field(default=None, description="JSON file of SKU parameters (defaults + overrides)")
    model_dir: Path | None = Field(default=None, description="a trained DQN; unset or absent: capped base-stock")
    review_periods: int = Field(default=1, ge=1, le=366, description="forecast periods between two decisions")
    forecast_max_age_s: float = Field(default=36 * 3600, gt=0, description="older forecasts are stale: fallback")
    missing_forecast_grace_s: float = Field(
        default=600, gt=0, description="after the period clock moves, how long SKUs may wait for their forecast"
    )
    sweep_interval_s: float = Field(default=1.0, gt=0)
    wall_clock: bool = Field(
        default=False,
        description="the decision clock also follows the wall clock (production: periods pass with no traffic);"
        " off, it follows the newest forecast period and purchase/return time, so replays of past days work",
    )
    decision_freq: str = Field(
        default="D", description="decision period of purchase- and wall-clock-driven periods before any forecast"
    )
    budget_per_period: float | None = Field(default=None, gt=0, description="sum of unit_cost * qty per period")
    q_value_limit: float = Field(default=1e6, gt=0, description="DQN answers with |Q| above this are not trusted")
    markdown_above: float = Field(default=1.5, gt=1, description="price down one step when position > this x S")
    scarce_below: float = Field(
        default=0.5, gt=0, lt=1, description="price may rise above base when position < this x S"
    )
    returns_restock: bool = Field(default=True, description="returned units go back on hand")
    dedupe_window_s: int = Field(default=2 * 86_400, ge=60, description="event and receipt ids remembered this long")
    decision_ttl_s: int = Field(default=30 * 86_400, ge=3600, description="how long sent decision records are kept")
    pending_recover_after_s: float = Field(
        default=30.0, gt=0, description="an unconfirmed decision this old (not this process's) is checked and re-sent"
    )
    scan_timeout_s: float = Field(default=60.0, gt=0, description="limit on reading a decision topic to its end")
    max_batch: int = Field(default=2_000, ge=1, le=100_000, description="records per transaction")
    poll_timeout_s: float = Field(default=0.1, gt=0, le=5)
    fetch_wait_max_ms: int = Field(
        default=10, ge=0, le=500, description="broker-side wait of an idle fetch (decision latency when idle)"
    )
    flush_timeout_s: float = Field(default=30.0, gt=0)
    max_order_demand_multiple: float = Field(
        default=10.0, gt=0, le=1_000, description="orders are capped at this x review x recent sales per period"
    )
    max_order_floor_units: int = Field(
        default=100, ge=0, le=10_000_000, description="the recent-demand cap never goes below this (cold-start SKUs)"
    )
    unknown_sku: Literal["default", "dead_letter"] = Field(
        default="default", description="records of SKUs not in the SKU parameter file: default parameters, or DLQ"
    )


class SkuParams(OrderRules):
    """One SKU's inventory parameters (the `Instance` fields the online agent needs, plus its own rules)."""

    lead_time: LeadTime = LeadTime(min=2, max=2)
    holding_cost: PositiveCost = 0.1
    shortage_cost: PositiveCost = 1.0
    order_cost: PositiveCost = 0.0
    unit_cost: PositiveCost = 1.0
    lost_sales: bool = True
    service_level: float | None = Field(
        default=None, gt=0, lt=1, description="order-up-to fractile; default the critical ratio p / (p + h)"
    )
    cap_multiple: float = Field(default=3.0, gt=0, le=1_000, description="order cap: this x review x mean demand")
    initial_on_hand: int = Field(default=0, ge=0, description="stock on hand when the agent first sees the SKU")
    default_demand: float = Field(default=0.0, ge=0, description="demand per period used with no forecast or sales")

    @model_validator(mode="after")
    def _has_a_fractile(self) -> Self:
        if self.holding_cost + self.shortage_cost <= 0 and self.service_level is None:
            raise ValueError("holding_cost + shortage_cost must be positive (or set service_level)")
        return self

    @property
    def fractile(self) -> float:
        """The order-up-to level's quantile: `service_level`, else the newsvendor critical ratio p / (p + h)."""
        if self.service_level is not None:
            return self.service_level
        return self.shortage_cost / (self.shortage_cost + self.holding_cost)

    @property
    def protection_periods(self) -> int:
        """Lead time counted in the order-up-to level: the longest one (conservative for random lead times)."""
        return self.lead_time.max

    @property
    def expected_lead(self) -> int:
        """Periods until an order is expected: the rounded mean lead time."""
        return round((self.lead_time.min + self.lead_time.max) / 2)


class SkuParamsError(ShelfcastError):
    """A SKU parameter file that cannot be used; the message names the file and the entry."""


_SKU_RE = re.compile(SKU_PATTERN)


class SkuCatalog:
    """SKU -> `SkuParams`: the file's defaults, overridden per SKU; SKUs not listed get the defaults."""

    def __init__(self, defaults: dict[str, Any] | None = None, overrides: dict[str, dict[str, Any]] | None = None):
        self._defaults_raw = dict(defaults or {})
        try:
            self.defaults = SkuParams.model_validate(self._defaults_raw)
        except ValidationError as exc:
            raise SkuParamsError(f"defaults: {describe_errors(exc)}") from None
        self._params: dict[str, SkuParams] = {}
        for sku, entry in (overrides or {}).items():
            if not _SKU_RE.match(sku):
                raise SkuParamsError(f"skus.{sku}: not a valid SKU")
            if not isinstance(entry, dict):
                raise SkuParamsError(f"skus.{sku}: expected an object of parameters")
            try:
                self._params[sku] = SkuParams.model_validate({**self._defaults_raw, **entry})
            except ValidationError as exc:
                raise SkuParamsError(f"skus.{sku}: {describe_errors(exc)}") from None

    @classmethod
    def from_file(cls, path: Path | None) -> SkuCatalog:
        if path is None:
            return cls()
        try:
            raw = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise SkuParamsError(f"{path}: {exc}") from None
        if not isinstance(raw, dict) or set(raw) - {"defaults", "skus"}:
            raise SkuParamsError(f'{path}: expected {{"defaults": {{...}}, "skus": {{sku: {{...}}}}}}')
        try:
            return cls(raw.get("defaults"), raw.get("skus"))
        except SkuParamsError as exc:
            raise SkuParamsError(f"{path}: {exc}") from None

    def __call__(self, sku: str) -> SkuParams:
        return self._params.get(sku, self.defaults)

    def knows(self, sku: str) -> bool:
        """Whether the file lists the SKU (an unlisted one gets the defaults)."""
        return sku in self._params

    def listed(self) -> list[str]:
        return sorted(self._params)


@lru_cache
def catalog_for(path: Path | None) -> SkuCatalog:
    return SkuCatalog.from_file(path)
