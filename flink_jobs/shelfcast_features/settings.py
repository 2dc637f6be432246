"""Settings of the features job (`SHELFCAST_FEATURES_*`); Kafka, Redis and topics come from the core settings."""

import re

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

_GRANULARITY = re.compile(r"^([1-9][0-9]?)([smhd])$")
_UNIT_MS = {"s": 1_000, "m": 60_000, "h": 3_600_000, "d": 86_400_000}


def granularity_ms(granularity: str) -> int:
    """'5m' -> 300000."""
    match = _GRANULARITY.match(granularity)
    if match is None:
        raise ValueError(f"granularity {granularity!r} is not like 30s, 1m, 1h or 1d")
    return int(match.group(1)) * _UNIT_MS[match.group(2)]


class FeatureJobSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="SHELFCAST_FEATURES_", extra="ignore")

    granularities: list[str] = Field(default=["1m", "1h", "1d"])
    out_of_orderness_ms: int = Field(default=5_000, ge=0, description="watermark delay behind the newest event")
    allowed_lateness_ms: int = Field(default=60_000, ge=0, description="late events within this update their window")
    # Duplicates are retries, seconds to minutes after the first delivery (the storefront simulator's: at most
    # 120 s). The job keeps each event_id on its heap for this long of processing time, ~300 bytes each (measured),
    # so the dedupe state is about events/s x TTL x 300 B: 24 h at 2,200 events/s would be 57 GB. A copy later
    # than this counts again in the windows still open (the day's, up to a day), and is late for the others.
    dedupe_ttl_minutes: int = Field(default=10, ge=1, description="how long an event_id is remembered")
    # The local mini-cluster runs in the JVM PyFlink starts; without -Xmx it takes a quarter of the machine's
    # RAM, and G1 grows into it (6 GB here, its live data under 0.4 GB). Not used with --jobmanager.
    local_heap_mb: int = Field(default=1536, ge=256, description="heap (-Xms = -Xmx) of the local mini-cluster's JVM")
    # Too short, and while catching up on a backlog the partition read first runs the watermark past the
    # others' records, which then count as late. Too long, and one silent partition holds every window open.
    idle_timeout_ms: int = Field(default=30_000, ge=100, description="a partition silent this long holds no watermark")
    checkpoint_interval_ms: int = Field(default=10_000, ge=500)
    checkpoint_dir: str | None = Field(
        default=None, description="a URI (file://, s3://); default: {state_dir}/flink/checkpoints on this machine"
    )
    parallelism: int = Field(default=1, ge=1, le=64)
    redis_depth: int = Field(default=2_000, ge=1, description="windows kept per SKU and granularity")
    redis_ttl_s: int = Field(default=14 * 86_400, ge=60)
    group_id: str = "shelfcast-features"
    metrics_port: int = Field(
        default=9250, ge=0, le=65535, description="the writer's /metrics (next free of 15 after it if taken); 0: off"
    )

    @field_validator("granularities")
    @classmethod
    def _known_granularities(cls, values: list[str]) -> list[str]:
        for value in values:
            granularity_ms(value)
        if not values or len(set(values)) != len(values):
            raise ValueError("granularities must be a non-empty list without repeats")
        return values
