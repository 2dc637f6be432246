"""docker-compose.yml's Redis command, run here on a real Redis server: it requires the password from its secret,
and a client configured as the services are (SHELFCAST_REDIS_PASSWORD_FILE) gets in while one without it does not."""

import subprocess
import time
from pathlib import Path

import pytest
import redis
import yaml

from shelfcast.infra import free_port, redis_binary
from shelfcast.settings import Settings
from shelfcast.store import connect_redis

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]


def compose_redis_script(secret: Path, config: Path, port: int) -> str:
    """The `sh -c` script of compose's redis service, aimed at files here and a free port."""
    command = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]["redis"]["command"]
    assert command[:2] == ["sh", "-c"]
    script = command[2].replace("$$", "$")  # compose's escape for a literal $
    script = script.replace("/run/secrets/redis_password", str(secret)).replace("/tmp/redis.conf", str(config))
    assert "exec redis-server " in script
    server = f"exec {redis_binary()} "
    return script.replace("exec redis-server ", server) + f" --port {port} --bind 127.0.0.1 --dir {config.parent}"


def test_compose_redis_requires_the_password_the_services_use(tmp_path: Path) -> None:
    secret = tmp_path / "redis_password"
    secret.write_text("0f3a9c-secret\n")
    port = free_port()
    server = subprocess.Popen(["sh", "-c", compose_redis_script(secret, tmp_path / "redis.conf", port)])
    try:
        url = f"redis://127.0.0.1:{port}/0"
        deadline = time.monotonic() + 20
        while not _answers(url):
            assert time.monotonic() < deadline and server.poll() is None, "the compose Redis did not start"
            time.sleep(0.1)
        with pytest.raises(redis.AuthenticationError):
            redis.Redis.from_url(url).set("k", "v")
        client = connect_redis(Settings(redis_url=url, redis_password_file=secret).redis_url)
        assert client.set("k", "v") and client.get("k") == b"v"
        assert client.config_get("appendonly") == {"appendonly": "yes"}
    finally:
        server.terminate()
        server.wait(10)


def _answers(url: str) -> bool:
    try:
        redis.Redis.from_url(url).ping()
    except redis.AuthenticationError:
        return True  # up, and asking for the password
    except redis.ConnectionError:
        return False
    return True
