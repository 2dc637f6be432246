"""Session-wide real servers: a Tansu broker and a Redis on free loopback ports, stopped at the end."""

from collections.abc import Iterator
from pathlib import Path

import pytest
from pydantic import SecretStr

from shelfcast.infra import free_port, start_kafka, start_redis
from shelfcast.kafka import ensure_topics
from shelfcast.settings import Settings

READ_KEY = "it-read-key"  # the read API key of the forecaster and agent apps the tests start


@pytest.fixture(scope="session")
def kafka_bootstrap(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    broker = start_kafka(free_port(), tmp_path_factory.mktemp("kafka"))
    yield broker.address
    broker.stop()


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    server = start_redis(free_port(), tmp_path_factory.mktemp("redis"))
    yield server.address
    server.stop()


@pytest.fixture(scope="session")
def settings(kafka_bootstrap: str, redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Settings:
    """Settings aimed at the session's servers, with every Shelfcast topic created."""
    configured = Settings(
        kafka_bootstrap=kafka_bootstrap,
        redis_url=redis_url,
        kafka_session_timeout_ms=6_000,  # the embedded broker's group join takes about half of this
        state_dir=Path(tmp_path_factory.mktemp("state")),
        read_api_keys=[SecretStr(READ_KEY)],
    )
    ensure_topics(configured)
    return configured


@pytest.fixture(scope="session")
def read_auth() -> dict[str, str]:
    """The header that reads the forecaster's and the agent's APIs of apps built from `settings`."""
    return {"Authorization": f"Bearer {READ_KEY}"}
