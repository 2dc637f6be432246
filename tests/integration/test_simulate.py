"""`shelfcast simulate storefront` into the real broker."""

import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pandas as pd
import pytest

from shelfcast.contracts import Event
from shelfcast.kafka import ensure_topics, make_consumer
from shelfcast.settings import Settings
from shelfcast_ingest.storefront import Storefront, StorefrontConfig

pytestmark = pytest.mark.integration


def test_simulator_to_kafka_delivers_every_event_and_writes_history(settings: Settings, tmp_path: Path) -> None:
    topic = f"it.sim.{uuid.uuid4().hex[:8]}"
    ensure_topics(settings, [topic])
    env = {**os.environ, "SHELFCAST_KAFKA_BOOTSTRAP": settings.kafka_bootstrap, "SHELFCAST_TOPICS__EVENTS": topic}
    args = ["--skus", "8", "--days", "3", "--seed", "5", "--target", "kafka", "--history", str(tmp_path / "h.csv")]
    shelfcast = Path(sys.executable).with_name("shelfcast")
    result = subprocess.run(
        [shelfcast, "simulate", "storefront", *args], env=env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr

    config = StorefrontConfig(skus=8, days=3, seed=5, duplicate_rate=0.01, disorder_rate=0.02)
    expected = [e["event_id"] for e in Storefront(config).events()]
    consumer = make_consumer(settings, f"it-{uuid.uuid4().hex[:6]}")
    consumer.subscribe([topic])
    seen: list[str] = []
    deadline = time.monotonic() + 60
    while len(seen) < len(expected) and time.monotonic() < deadline:
        msg = consumer.poll(0.5)
        if msg is not None and not msg.error():
            seen.append(Event.from_bytes(msg.value()).event_id)
    consumer.close()
    assert sorted(seen) == sorted(expected)

    history = pd.read_csv(tmp_path / "h.csv")
    assert list(history.columns[:3]) == ["unique_id", "ds", "y"]
    assert len(history) == 8 * 3
