"""`shelfcast infra` as an operator runs it: real processes, started and stopped."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from shelfcast.infra import free_port

pytestmark = pytest.mark.integration

SHELFCAST = [str(Path(sys.executable).with_name("shelfcast"))]


def run(args: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        SHELFCAST + args, env={**os.environ, **env}, cwd=cwd, capture_output=True, text=True, timeout=120
    )


def pid_alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def test_up_status_down_starts_and_stops_only_its_own_servers(tmp_path: Path) -> None:
    env = {
        "SHELFCAST_KAFKA_BOOTSTRAP": f"127.0.0.1:{free_port()}",
        "SHELFCAST_REDIS_URL": f"redis://127.0.0.1:{free_port()}/0",
        "SHELFCAST_STATE_DIR": str(tmp_path / "state"),
    }
    up = run(["infra", "up"], env, tmp_path)
    assert up.returncode == 0, up.stderr
    try:
        status = run(["infra", "status", "--json"], env, tmp_path)
        assert status.returncode == 0, status.stderr
        report = json.loads(status.stdout)
        assert report["kafka"]["ok"] and report["redis"]["ok"]
        assert report["kafka"]["bootstrap"] == env["SHELFCAST_KAFKA_BOOTSTRAP"]
        assert report["redis"]["url"] == env["SHELFCAST_REDIS_URL"]
        assert "shelfcast.events" in report["kafka"]["topics"]
        pids = [report["kafka"]["embedded_pid"], report["redis"]["embedded_pid"]]
        assert all(pid_alive(p) for p in pids)

        again = run(["infra", "up"], env, tmp_path)  # idempotent: reuses what runs
        assert again.returncode == 0, again.stderr
        assert json.loads(run(["infra", "status", "--json"], env, tmp_path).stdout) == report
    finally:
        down = run(["infra", "down"], env, tmp_path)
    assert down.returncode == 0, down.stderr
    assert not any(pid_alive(p) for p in pids)
    after = run(["infra", "status", "--json"], env, tmp_path)
    assert after.returncode == 1
    assert not json.loads(after.stdout)["kafka"]["ok"]


def test_unreachable_broker_is_one_line_naming_it(tmp_path: Path) -> None:
    bootstrap = f"127.0.0.1:{free_port()}"
    env = {"SHELFCAST_KAFKA_BOOTSTRAP": bootstrap, "SHELFCAST_STATE_DIR": str(tmp_path)}
    result = run(["infra", "up", "--no-embedded"], env, tmp_path)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [f"error: Kafka broker unreachable at {bootstrap}: Connection refused"]


def test_unreachable_redis_is_one_line_naming_it(tmp_path: Path, kafka_bootstrap: str) -> None:
    url = f"redis://127.0.0.1:{free_port()}/0"
    env = {
        "SHELFCAST_KAFKA_BOOTSTRAP": kafka_bootstrap,
        "SHELFCAST_REDIS_URL": url,
        "SHELFCAST_STATE_DIR": str(tmp_path),
    }
    result = run(["infra", "up", "--no-embedded"], env, tmp_path)
    assert result.returncode == 1
    [line] = result.stderr.strip().splitlines()
    assert line.startswith(f"error: Redis unreachable at {url}: ")
    assert "Connection refused" in line


def test_invalid_setting_is_one_line(tmp_path: Path) -> None:
    result = run(["infra", "status"], {"SHELFCAST_KAFKA_PARTITIONS": "zero"}, tmp_path)
    assert result.returncode == 2
    [line] = result.stderr.strip().splitlines()
    assert "kafka_partitions" in line
