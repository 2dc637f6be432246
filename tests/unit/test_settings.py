from pathlib import Path

import pytest
from pydantic import ValidationError

from shelfcast.settings import Settings


def test_settings_come_from_shelfcast_environment_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SHELFCAST_KAFKA_BOOTSTRAP", "kafka-1:9092,kafka-2:9092")
    monkeypatch.setenv("SHELFCAST_REDIS_URL", "redis://cache:6380/2")
    monkeypatch.setenv("SHELFCAST_TOPICS__EVENTS", "acme.events")
    monkeypatch.setenv("SHELFCAST_KAFKA_PARTITIONS", "12")
    settings = Settings()
    assert settings.kafka_bootstrap == "kafka-1:9092,kafka-2:9092"
    assert settings.redis_url == "redis://cache:6380/2"
    assert settings.topics.events == "acme.events"
    assert settings.topics.reorders == "shelfcast.reorders"
    assert settings.kafka_partitions == 12


def test_api_keys_from_env_and_file(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    keys_file = tmp_path / "keys"
    keys_file.write_text("# storefront keys\nfile-key\n\n")
    monkeypatch.setenv("SHELFCAST_API_KEYS", '["env-key"]')
    monkeypatch.setenv("SHELFCAST_API_KEYS_FILE", str(keys_file))
    settings = Settings()
    assert settings.load_api_keys() == {"env-key", "file-key"}
    assert "env-key" not in repr(settings)


def test_invalid_setting_names_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SHELFCAST_KAFKA_PARTITIONS", "0")
    with pytest.raises(ValidationError, match="kafka_partitions"):
        Settings()
