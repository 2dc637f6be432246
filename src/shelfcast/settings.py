"""Settings from `SHELFCAST_*` environment variables; every service reads the same ones.

Nested values use a double underscore: `SHELFCAST_TOPICS__EVENTS=my.events`.
"""

from functools import lru_cache
from pathlib import Path

from pydantic import BaseModel, Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


class TopicNames(BaseModel):
    events: str = "shelfcast.events"
    events_dlq: str = "shelfcast.events.dlq"
    features: str = "shelfcast.features"
    forecasts: str = "shelfcast.forecasts"
    reorders: str = "shelfcast.reorders"
    prices: str = "shelfcast.prices"
    receipts: str = "shelfcast.receipts"

    def all(self) -> list[str]:
        return list(self.model_dump().values())


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="SHELFCAST_", env_nested_delimiter="__", extra="ignore")

    kafka_bootstrap: str = "127.0.0.1:19092"
    kafka_partitions: int = Field(default=3, ge=1, le=256)
    kafka_replication_factor: int = Field(default=1, ge=1, le=16)
    kafka_session_timeout_ms: int = Field(default=10_000, ge=1_000, le=300_000)
    redis_url: str = "redis://127.0.0.1:6379/0"
    state_dir: Path = Path(".shelfcast")
    topics: TopicNames = TopicNames()

    api_keys: list[SecretStr] = Field(default_factory=list, description="JSON list of accepted API keys")
    api_keys_file: Path | None = Field(default=None, description="a file with one API key per line")
    read_api_keys: list[SecretStr] = Field(
        default_factory=list, description="JSON list of keys that read the forecaster's and the agent's APIs"
    )
    read_api_keys_file: Path | None = Field(default=None, description="a file with one read API key per line")

    ingest_port: int = Field(default=8080, ge=1, le=65535)
    max_clock_skew_s: int = Field(
        default=300,
        ge=0,
        le=366 * 86_400,
        description="how far ahead of a service's own clock a record's time may be before it is rejected as future_ts",
    )

    def load_api_keys(self) -> set[str]:
        """Keys from `SHELFCAST_API_KEYS` and, when set, `SHELFCAST_API_KEYS_FILE` (blank lines and # ignored)."""
        return _load_keys(self.api_keys, self.api_keys_file)

    def load_read_api_keys(self) -> set[str]:
        """Read keys from `SHELFCAST_READ_API_KEYS` and `SHELFCAST_READ_API_KEYS_FILE`, as `load_api_keys`."""
        return _load_keys(self.read_api_keys, self.read_api_keys_file)


def _load_keys(listed: list[SecretStr], file: Path | None) -> set[str]:
    keys = {k.get_secret_value() for k in listed}
    if file is not None:
        for line in file.read_text().splitlines():
            line = line.strip()
            if line and not line.startswith("#"):
                keys.add(line)
    return keys


@lru_cache
def get_settings() -> Settings:
    """The process-wide settings; tests build `Settings(...)` directly instead."""
    return Settings()
