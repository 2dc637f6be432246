"""The API-key checks of the HTTP APIs: Bearer only, one of the configured keys, read and write keys kept apart,
and the read APIs fail closed at start-up."""

from pathlib import Path

import pytest
import redis
from pydantic import SecretStr
from starlette.requests import Request

from shelfcast.errors import InfraUnavailable, ShelfcastError
from shelfcast.http import ApiError, bearer_key_check, read_key_check
from shelfcast.infra import free_port
from shelfcast.settings import Settings, redacted_url
from shelfcast.store import connect_redis


def request_with(authorization: bytes | None) -> Request:
    headers = [] if authorization is None else [(b"authorization", authorization)]
    return Request({"type": "http", "method": "GET", "path": "/", "headers": headers})


def rejection(check, authorization: bytes | None) -> ApiError:  # type: ignore[no-untyped-def]
    with pytest.raises(ApiError) as raised:
        check(request_with(authorization))
    return raised.value


def test_only_a_configured_bearer_key_passes() -> None:
    check = bearer_key_check(["k-one", "k-two"], "test")
    check(request_with(b"Bearer k-one"))
    check(request_with(b"bearer   k-two  "))
    refusals = [
        rejection(check, header)
        for header in (None, b"", b"Bearer", b"Bearer ", b"Basic k-one", b"k-one", b"Bearer k-one2", b"Bearer \xff")
    ]
    assert {(r.status, r.code, r.message) for r in refusals} == {
        (401, "unauthorized", "missing or invalid API key (Authorization: Bearer <key>)")
    }, "every refusal must look the same, whatever was presented"
    assert {r.headers["WWW-Authenticate"] for r in refusals if r.headers} == {'Bearer realm="test"'}
    assert all(r.headers for r in refusals)


def test_no_keys_accept_nothing() -> None:
    assert rejection(bearer_key_check([], "test"), b"Bearer ").status == 401
    assert rejection(bearer_key_check([], "test"), b"Bearer anything").status == 401


def test_read_apis_fail_closed_without_a_read_key() -> None:
    with pytest.raises(ShelfcastError, match="no read API key configured: set SHELFCAST_READ_API_KEYS"):
        read_key_check(Settings(api_keys=[SecretStr("write")]), "svc")


def test_a_key_cannot_be_both_read_and_write() -> None:
    both = Settings(api_keys=[SecretStr("shared"), SecretStr("w")], read_api_keys=[SecretStr("shared")])
    with pytest.raises(ShelfcastError, match="also an ingest write key"):
        read_key_check(both, "svc")


def test_write_keys_do_not_read_and_read_keys_come_from_the_file_too(tmp_path: Path) -> None:
    keys = tmp_path / "read_keys"
    keys.write_text("# operators' read keys\n\nfrom-file\n")
    settings = Settings(api_keys=[SecretStr("write")], read_api_keys=[SecretStr("listed")], read_api_keys_file=keys)
    assert settings.load_read_api_keys() == {"listed", "from-file"}
    check = read_key_check(settings, "svc")
    check(request_with(b"Bearer from-file"))
    check(request_with(b"Bearer listed"))
    assert rejection(check, b"Bearer write").status == 401


def test_read_keys_come_from_the_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    keys.write_text("env-file-key\n")
    monkeypatch.setenv("SHELFCAST_READ_API_KEYS", '["env-key"]')
    monkeypatch.setenv("SHELFCAST_READ_API_KEYS_FILE", str(keys))
    assert Settings().load_read_api_keys() == {"env-key", "env-file-key"}


def test_redis_password_from_a_file_goes_into_the_url(tmp_path: Path) -> None:
    secret = tmp_path / "redis_password"
    secret.write_text("s3cr:et/@pw\n")
    settings = Settings(redis_url="redis://redis:6379/0", redis_password_file=secret)
    assert settings.redis_url == "redis://:s3cr%3Aet%2F%40pw@redis:6379/0"
    assert redis.Redis.from_url(settings.redis_url).connection_pool.connection_kwargs["password"] == "s3cr:et/@pw"
    assert Settings(redis_url="redis://redis:6379/0").redis_url == "redis://redis:6379/0"


def test_a_redis_password_never_shows_in_urls_for_people() -> None:
    assert redacted_url("redis://:s3cret@redis:6379/0") == "redis://:***@redis:6379/0"
    assert redacted_url("redis://bob:s3cret@redis:6379/0") == "redis://bob:***@redis:6379/0"
    assert redacted_url("redis://redis:6379/0") == "redis://redis:6379/0"


def test_an_unreachable_redis_error_does_not_carry_its_password() -> None:
    with pytest.raises(InfraUnavailable) as raised:
        connect_redis(f"redis://:s3cret@127.0.0.1:{free_port()}/0", timeout=0.5)
    assert "s3cret" not in str(raised.value) and ":***@127.0.0.1" in str(raised.value)
