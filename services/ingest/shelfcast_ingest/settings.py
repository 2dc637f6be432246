"""Ingest-only settings (`SHELFCAST_INGEST_*`); Kafka, topics and API keys come from the core settings."""

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class IngestSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="SHELFCAST_INGEST_", extra="ignore")

    max_body_bytes: int = Field(default=5 * 1024 * 1024, ge=1024)
    max_events: int = Field(default=10_000, ge=1)
    queue_max_events: int = Field(default=200_000, ge=1_000, description="producer queue; full means 503")
