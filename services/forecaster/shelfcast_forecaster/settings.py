"""Forecaster-only settings (`SHELFCAST_FORECASTER_*`); Kafka, Redis and topics come from the core settings."""

from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class ForecasterSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="SHELFCAST_FORECASTER_", extra="ignore")

    port: int = Field(default=8090, ge=1, le=65535)
    registry: Path = Field(default=Path(".shelfcast/models"), description="model registry root (see registry.py)")
    granularity: str = Field(default="1d", pattern="^(1m|1h|1d)$", description="feature windows the model reads")
    history_windows: int = Field(default=400, ge=1, le=2_000, description="newest windows read per SKU")
    cache_ttl_seconds: int = Field(default=7 * 86_400, ge=60)
    group_id: str = "shelfcast-forecaster"
    max_batch: int = Field(default=1_024, ge=1, le=4_096, description="SKUs scored per micro-batch")
    linger_ms: int = Field(default=50, ge=0, le=5_000, description="how long a micro-batch collects updates")
    reload_seconds: float = Field(default=2.0, gt=0, description="how often the registry's current is checked")
    max_request_skus: int = Field(default=1_000, ge=1)
    jit: bool | None = Field(default=None, description="XLA-compile scoring; unset: measure at load, keep the faster")
    max_forecast_multiple: float = Field(
        default=10.0,
        gt=1,
        le=1_000,
        description="a network quantile above this multiple of the SKU's largest period demand (at least 1) is "
        "implausible: the SKU gets the Poisson fallback instead",
    )
    flush_timeout_s: float = Field(
        default=30.0,
        gt=0,
        le=600,
        description="how long one wait for the broker to acknowledge a batch lasts before it is logged and waited "
        "on again (never sent again: that would publish it twice)",
    )
