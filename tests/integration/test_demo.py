"""`shelfcast demo`, shortened, on servers of its own: what `make demo` runs."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from shelfcast.infra import free_port
from shelfcast_ingest.storefront import Storefront, StorefrontConfig

pytestmark = pytest.mark.integration


def test_demo_delivers_every_simulated_event_through_ingest_and_dead_letters_the_poison(tmp_path: Path) -> None:
    env = {
        **os.environ,
        "SHELFCAST_KAFKA_BOOTSTRAP": f"127.0.0.1:{free_port()}",
        "SHELFCAST_REDIS_URL": f"redis://127.0.0.1:{free_port()}/0",
        "SHELFCAST_STATE_DIR": str(tmp_path / "state"),
    }
    shelfcast = Path(sys.executable).with_name("shelfcast")
    result = subprocess.run(
        [shelfcast, "demo", "--skus", "10", "--days", "2"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    summary = json.loads((tmp_path / "reports" / "demo" / "summary.json").read_text())
    sent = sum(
        1 for _ in Storefront(StorefrontConfig(skus=10, days=2, duplicate_rate=0.01, disorder_rate=0.02)).events()
    )
    assert summary["events_on_topic"] == sum(summary["events_by_type"].values()) == sent
    assert summary["dead_lettered"] == summary["poison_records_written"] == 3
    assert "stopped what the demo started: ingest, kafka, redis" in result.stdout
    assert not (tmp_path / "state" / "demo" / "infra.json").exists()
