"""`shelfcast demo`, shortened, on servers of its own: what `make demo` runs."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from shelfcast.infra import free_port

pytestmark = pytest.mark.integration


def test_demo_traces_every_reorder_to_its_forecast_window_and_events_and_reports_latency_cost_and_plots(
    tmp_path: Path,
) -> None:
    env = {
        **os.environ,
        "SHELFCAST_KAFKA_BOOTSTRAP": f"127.0.0.1:{free_port()}",
        "SHELFCAST_REDIS_URL": f"redis://127.0.0.1:{free_port()}/0",
        "SHELFCAST_STATE_DIR": str(tmp_path / "state"),
    }
    shelfcast = Path(sys.executable).with_name("shelfcast")
    result = subprocess.run(
        [shelfcast, "demo", "--skus", "10", "--days", "5", "--seconds-per-day", "6"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    summary = json.loads((tmp_path / "reports" / "demo" / "summary.json").read_text())
    assert all(summary["windows_in_redis"][g] > 0 for g in ("1m", "1h", "1d"))
    assert summary["windows_in_redis"]["1m"] > summary["windows_in_redis"]["1h"] > summary["windows_in_redis"]["1d"]
    # the poison, and only it (the simulator sends valid events), from each consumer of the events topic
    assert {stage: kinds.get("invalid") for stage, kinds in summary["dead_letters"].items()} == {
        "agent": 3,
        "features": 3,
    }
    assert summary["model"]["arch"] in ("lstm", "tcn") and summary["model"]["version"]
    forecasts = summary["forecasts"]  # daily windows close as simulated time passes, and each is scored
    assert 0 < forecasts["skus"] <= 10 and forecasts["published"] >= forecasts["skus"]
    assert forecasts["fallback"] == forecasts["published"]  # 5 days of history: too little for the network
    decisions = summary["decisions"]  # nothing on hand at first: the agent orders for SKUs that have a forecast
    assert 0 < decisions["reorder_skus"] <= forecasts["skus"] and decisions["units_ordered"] > 0
    assert decisions["reorder_decision_ids"] == decisions["reorders"]  # no decision sent twice
    # the shipped DQN decides; capped base-stock only where the agent falls back
    assert "dqn" in decisions["policies"] and set(decisions["policies"]) <= {"dqn", "capped-base-stock"}
    # each reorder's decision period has a forecast of its SKU, made from that SKU's daily window ending there,
    # whose counts are exactly the distinct on-time events the storefront sent for it that day
    traced = summary["trace"]
    assert traced["reorders"] == decisions["reorders"]
    assert traced["with_forecast"] == traced["with_daily_window"] == traced["window_equals_its_events"]
    assert traced["window_equals_its_events"] == traced["reorders"]
    assert summary["events"]["sent"] == sum(summary["events"]["by_type"].values())
    latency = summary["latency"]
    assert latency["purchase_to_reorder_s"]["n"] > 0 and latency["close_to_reorder_s"]["n"] == traced["reorders"]
    stages = ("close_to_window_s", "window_to_forecast_s", "forecast_to_reorder_s")
    assert all(latency[stage]["n"] > 0 for stage in stages)
    assert 0 < latency["purchase_to_reorder_s"]["p50"] <= latency["purchase_to_reorder_s"]["p99"]
    inventory = summary["inventory"]  # orders of the first days arrive 2 stream days later, the last ones do not
    assert 0 < inventory["receipts"] < decisions["reorders"]
    assert 0 < inventory["units_received"] < decisions["units_ordered"]
    assert 0 < inventory["live_units_filled"] <= inventory["live_units_demanded"]
    cost = summary["cost_vs_baseline"]  # both replayed on the same demand
    assert cost["agent"]["units_demanded"] == cost["capped_base_stock"]["units_demanded"] > 0
    assert cost["cost_ratio"] == pytest.approx(cost["agent"]["cost"] / cost["capped_base_stock"]["cost"], abs=1e-3)
    page = (tmp_path / "reports" / "demo" / "index.html").read_text()
    for plot in ("demand", "inventory", "cost", "latency"):
        assert f'src="{plot}.png"' in page and (tmp_path / "reports" / "demo" / f"{plot}.png").stat().st_size > 0
    printed = " ".join(result.stdout.split())  # the console wraps long lines
    assert "stopped what the demo started: features, ingest, forecaster, agent, erp, kafka, redis" in printed
    assert not (tmp_path / "state" / "demo" / "infra.json").exists()
