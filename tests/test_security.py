"""The access policy every door asks: keys and scopes, the Authorization scheme, Host and Origin."""

from __future__ import annotations

from pathlib import Path

import pytest

from aistack.errors import AistackError, ErrorKind
from aistack.security import (
    AccessPolicy,
    AccessScope,
    key_from_authorization,
    key_from_subprotocols,
    read_key_file,
)
from aistack.settings import Settings

USER, ADMIN = AccessScope.USER, AccessScope.ADMIN


def policy(**kwargs) -> AccessPolicy:
    return AccessPolicy([(USER, "user-key"), (ADMIN, "admin-key")], **kwargs)


def refusal(call) -> AistackError:
    with pytest.raises(AistackError) as caught:
        call()
    return caught.value


def test_the_bearer_scheme_is_case_insensitive_and_a_bare_key_is_no_key() -> None:
    assert key_from_authorization("Bearer abc") == "abc"
    assert key_from_authorization("bearer abc") == "abc"
    assert key_from_authorization("BEARER   abc ") == "abc"
    assert key_from_authorization(None) is None
    # A bare key, another scheme or an empty token: presented wrongly, never taken as the key.
    assert key_from_authorization("abc") == ""
    assert key_from_authorization("Basic abc") == ""
    assert key_from_authorization("Bearer ") == ""


def test_a_websocket_hands_its_key_over_as_a_subprotocol() -> None:
    assert key_from_subprotocols(["realtime", "openai-insecure-api-key.sk-1"]) == "sk-1"
    assert key_from_subprotocols(["realtime"]) is None


def test_each_key_grants_its_scope_and_admin_includes_user() -> None:
    access = policy()
    assert access.authorize("user-key", USER) == USER
    assert access.authorize("admin-key", USER) == ADMIN
    assert access.authorize("admin-key", ADMIN) == ADMIN
    forbidden = refusal(lambda: access.authorize("user-key", ADMIN))
    assert forbidden.kind == ErrorKind.FORBIDDEN and forbidden.status_code == 403
    for wrong in (None, "", "nope", "user-key-and-more"):
        unauthorized = refusal(lambda wrong=wrong: access.authorize(wrong, USER))
        assert unauthorized.kind == ErrorKind.UNAUTHORIZED and unauthorized.status_code == 401
        assert "user-key" not in unauthorized.message and "admin-key" not in unauthorized.message
    assert "Bearer" in refusal(lambda: access.authorize("", USER)).message
    # Open routes answer anyone, and say what the caller is.
    assert access.authorize(None, AccessScope.NONE) == AccessScope.NONE
    assert access.authorize("admin-key", AccessScope.NONE) == ADMIN


def test_every_key_is_compared_in_constant_time_whichever_matches(monkeypatch: pytest.MonkeyPatch) -> None:
    # Timing must not tell which key came close or how long it is: hmac.compare_digest on equal-length
    # digests, against every key, the first match included.
    import hmac

    compared: list[tuple[int, int]] = []
    original = hmac.compare_digest

    def counting(a: bytes, b: bytes) -> bool:
        compared.append((len(a), len(b)))
        return original(a, b)

    monkeypatch.setattr("aistack.security.hmac.compare_digest", counting)
    access = AccessPolicy([(ADMIN, "admin-key"), (USER, "u"), (USER, "a-much-longer-user-key-" * 8)])
    for presented, scope in (("admin-key", ADMIN), ("u", USER), ("nope", AccessScope.NONE)):
        compared.clear()
        assert access.scope_of(presented) == scope
        assert len(compared) == 3 and len({length for pair in compared for length in pair}) == 1


def test_without_keys_every_caller_is_admin() -> None:
    access = AccessPolicy([])
    assert not access.has_keys
    assert access.authorize(None, ADMIN) == ADMIN


def test_routes_and_their_scopes() -> None:
    access = policy()
    assert access.required_scope("/v1/audio/transcriptions") == USER
    assert access.required_scope("/v1/realtime") == USER
    assert access.required_scope("/docs") == USER and access.required_scope("/openapi.json") == USER
    assert access.required_scope("/admin/models") == ADMIN
    assert access.required_scope("/metrics") == ADMIN
    assert policy(public_metrics=True).required_scope("/metrics") == AccessScope.NONE
    for open_path in ("/health", "/ready", "/"):
        assert access.required_scope(open_path) == AccessScope.NONE


def test_a_key_file_holds_one_key_a_line_with_an_optional_scope(tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    keys.write_text("# the team\nalice-key\nuser bob-key\nadmin root-key\n\n")
    assert read_key_file(keys) == [(USER, "alice-key"), (USER, "bob-key"), (ADMIN, "root-key")]
    keys.write_text("superuser secret-value\n")
    with pytest.raises(ValueError) as caught:
        read_key_file(keys)
    assert "line 1" in str(caught.value) and "secret-value" not in str(caught.value)


def test_settings_give_keys_from_every_source(tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    keys.write_text("admin from-file\n")
    settings = Settings(cache_dir=tmp_path, api_key="legacy",
                        security={"user_keys": ["u1"], "admin_keys": ["a1"], "key_file": keys})
    access = AccessPolicy.from_settings(settings)
    assert access.authorize("legacy", ADMIN) == ADMIN  # the one key of earlier versions kept its reach
    assert access.authorize("u1", USER) == USER
    assert access.authorize("a1", ADMIN) == ADMIN and access.authorize("from-file", ADMIN) == ADMIN


def test_host_names_other_than_loopback_ip_literals_and_configured_ones_are_refused() -> None:
    access = policy(allowed_hosts=["aistack.lan"])
    for host in (None, "localhost", "localhost:11500", "127.0.0.1:11500", "[::1]:11500", "app.localhost",
                 "192.168.1.20:11500", "AISTACK.LAN:11500"):
        access.check_host(host)
    for rebound in ("evil.example", "evil.example:11500", "localhost.evil.example"):
        error = refusal(lambda rebound=rebound: access.check_host(rebound))
        assert error.kind == ErrorKind.MALFORMED and "ALLOWED_HOSTS" in error.message
    policy(allowed_hosts=["*"]).check_host("evil.example")


def test_origins_other_than_the_gateways_own_and_configured_ones_are_refused() -> None:
    access = policy(allowed_origins=["https://app.example"])
    access.check_origin(None, "127.0.0.1:11500")
    access.check_origin("http://127.0.0.1:11500", "127.0.0.1:11500")  # the gateway's own page (the console)
    access.check_origin("http://127.0.0.1:11500", "127.0.0.1:11500", "ws")  # its page opening a WebSocket
    refusal(lambda: access.check_origin("http://evil.example", "127.0.0.1:11500", "ws"))
    access.check_origin("http://localhost", "localhost:80")
    access.check_origin("https://app.example", "127.0.0.1:11500")
    access.check_origin("https://APP.example/", "127.0.0.1:11500")
    for foreign in ("http://evil.example", "null", "http://127.0.0.1:9999", "https://127.0.0.1:11500"):
        error = refusal(lambda foreign=foreign: access.check_origin(foreign, "127.0.0.1:11500"))
        assert error.kind == ErrorKind.FORBIDDEN and "ALLOWED_ORIGINS" in error.message


def test_a_websocket_handshake_is_admitted_by_one_call() -> None:
    access = policy()
    own = [(b"host", b"127.0.0.1:11500"), (b"origin", b"http://127.0.0.1:11500")]
    assert access.admit("/v1/realtime", own, "ws", ["realtime", "openai-insecure-api-key.user-key"]) == USER
    assert access.admit("/v1/realtime", [*own, (b"authorization", b"bearer admin-key")], "ws") == ADMIN
    assert refusal(lambda: access.admit("/v1/realtime", own, "ws")).kind == ErrorKind.UNAUTHORIZED
    foreign = [(b"host", b"127.0.0.1:11500"), (b"origin", b"http://evil.example")]
    assert refusal(lambda: access.admit("/v1/realtime", foreign, "ws", ["openai-insecure-api-key.user-key"])).kind \
        == ErrorKind.FORBIDDEN
    rebound = [(b"host", b"evil.example:11500")]
    assert refusal(lambda: access.admit("/v1/realtime", rebound, "ws", ["openai-insecure-api-key.user-key"])).kind \
        == ErrorKind.MALFORMED
