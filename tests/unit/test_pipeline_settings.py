"""The pipeline (the demo, the system benchmarks) runs on servers of its own unless the environment names others."""

from pathlib import Path

import pytest

from shelfcast.pipeline import own_servers
from shelfcast.settings import Settings


def test_the_pipeline_gets_a_fresh_broker_and_redis_on_free_loopback_ports(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("SHELFCAST_KAFKA_BOOTSTRAP", raising=False)
    monkeypatch.delenv("SHELFCAST_REDIS_URL", raising=False)
    base = Settings(state_dir=tmp_path)
    demo = own_servers(base, "demo")
    assert demo.state_dir == tmp_path / "demo"
    assert demo.kafka_bootstrap.startswith("127.0.0.1:") and demo.kafka_bootstrap != base.kafka_bootstrap
    assert demo.redis_url.startswith("redis://127.0.0.1:") and demo.redis_url != base.redis_url


def test_servers_named_in_the_environment_are_kept(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SHELFCAST_KAFKA_BOOTSTRAP", "broker.example:9092")
    monkeypatch.setenv("SHELFCAST_REDIS_URL", "redis://cache.example:6379/3")
    demo = own_servers(Settings(state_dir=tmp_path), "demo")
    assert (demo.kafka_bootstrap, demo.redis_url) == ("broker.example:9092", "redis://cache.example:6379/3")
