"""Settings from `SHELFCAST_*` environment variables; every service reads the same ones.

Nested values use a double underscore: `SHELFCAST_TOPICS__EVENTS=my.events`.
"""

import time
from functools import lru_cache
from pathlib import Path
from urllib.parse import quote, urlsplit, urlunsplit

from pydantic import BaseModel, Field, SecretStr, model_validator
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
    redis_password_file: Path | None = Field(
        default=None, description="a file holding Redis's password, put into redis_url (a compose or k8s secret)"
    )
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

    @model_validator(mode="after")
    def _redis_password_from_file(self) -> "Settings":
        if self.redis_password_file is not None:
            self.redis_url = url_with_password(self.redis_url, self.redis_password_file.read_text().strip())
        return self

    def latest_plausible_ms(self, now_ms: int | None = None) -> int:
        """The latest record time (epoch ms) taken as real at `now_ms` (default: this process's clock): anything
        later is `future_ts`."""
        now = int(time.time() * 1000) if now_ms is None else now_ms
        return now + self.max_clock_skew_s * 1000

    def load_api_keys(self) -> set[str]:
        """Keys from `SHELFCAST_API_KEYS` and, when set, `SHELFCAST_API_KEYS_FILE` (blank lines and # ignored)."""
        return _load_keys(self.api_keys, self.api_keys_file)

    def load_read_api_keys(self) -> set[str]:
        """Read keys from `SHELFCAST_READ_API_KEYS` and `SHELFCAST_READ_API_KEYS_FILE`, as `load_api_keys`."""
        return _load_keys(self.read_api_keys, self.read_api_keys_file)


def url_with_password(url: str, password: str) -> str:
    """`redis://host:6379/0` -> `redis://:PASSWORD@host:6379/0` (a user name in the URL is kept)."""
    parts = urlsplit(url)
    user = parts.username or ""
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=f"{user}:{quote(password, safe='')}@{host}"))


def redacted_url(url: str) -> str:
    """The URL as logs, errors and model cards may show it: any password replaced by `***`."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=f"{parts.username or ''}:***@{host}"))


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
