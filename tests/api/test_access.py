"""Keys, scopes and the browser rules at the HTTP door, on the real app (not started: every request
here is answered before an engine would be needed, or by a route that needs none)."""

from __future__ import annotations

import asyncio
import json
import logging
import socket
from pathlib import Path

import httpx
import pytest

from aistack.app import create_app
from aistack.settings import Settings

GATEWAY = "http://127.0.0.1:11500"
EVIL = {"Origin": "http://evil.example"}


def call(app, method: str, path: str, base_url: str = GATEWAY, **kwargs) -> httpx.Response:
    async def scenario() -> httpx.Response:
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url=base_url) as client:
            return await client.request(method, path, **kwargs)

    return asyncio.run(scenario())


@pytest.fixture
def open_app(tmp_path: Path):
    return create_app(Settings(cache_dir=tmp_path))


@pytest.fixture
def keyed_app(tmp_path: Path):
    missing_gguf = tmp_path / "models" / "absent.gguf"
    return create_app(Settings(cache_dir=tmp_path, security={"user_keys": ["u-key"], "admin_keys": ["a-key"]},
                               llm={"embedded": {"gguf": missing_gguf}}))


def assert_envelope(response: httpx.Response, status: int, kind: str) -> dict:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["kind"] == kind and error["code"] == kind
    return error


def test_a_foreign_web_page_cannot_drive_a_keyless_gateway(open_app) -> None:
    # Before: each of these answered 200 (or reached its route) with Origin: evil.example.
    chat = call(open_app, "POST", "/v1/chat/completions", headers={**EVIL, "Content-Type": "text/plain"},
                content=json.dumps({"model": "m", "messages": [{"role": "user", "content": "hi"}]}))
    assert_envelope(chat, 403, "forbidden")
    upload = call(open_app, "POST", "/v1/audio/transcriptions", headers=EVIL,
                  files={"file": ("a.wav", b"RIFF....", "audio/wav")}, data={"model": "whisper-1"})
    assert "evil.example" in assert_envelope(upload, 403, "forbidden")["message"]
    unload = call(open_app, "POST", "/admin/models/whisper-tiny.en/unload", headers=EVIL)
    assert_envelope(unload, 403, "forbidden")
    preflight = call(open_app, "OPTIONS", "/v1/models", headers={**EVIL, "Access-Control-Request-Method": "POST"})
    assert_envelope(preflight, 403, "forbidden")
    assert "access-control-allow-origin" not in preflight.headers


def test_the_gateways_own_pages_and_clients_without_an_origin_are_served(open_app) -> None:
    own = call(open_app, "GET", "/health", headers={"Origin": GATEWAY})
    assert own.status_code == 200 and "access-control-allow-origin" not in own.headers
    assert call(open_app, "GET", "/health").status_code == 200


def test_a_rebound_host_name_is_refused(open_app) -> None:
    rebound = call(open_app, "GET", "/v1/models", base_url="http://evil.example:11500")
    assert "evil.example" in assert_envelope(rebound, 400, "malformed")["message"]
    assert call(open_app, "GET", "/health", base_url="http://localhost:11500").status_code == 200


def test_cors_headers_go_to_configured_origins_only(tmp_path: Path) -> None:
    app = create_app(Settings(cache_dir=tmp_path, security={"allowed_origins": ["https://app.example"]}))
    preflight = call(app, "OPTIONS", "/v1/models", headers={
        "Origin": "https://app.example", "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization, content-type"})
    assert preflight.status_code == 200
    assert preflight.headers["access-control-allow-origin"] == "https://app.example"
    simple = call(app, "GET", "/health", headers={"Origin": "https://app.example"})
    assert simple.headers["access-control-allow-origin"] == "https://app.example"
    assert_envelope(call(app, "GET", "/health", headers=EVIL), 403, "forbidden")


def test_keys_and_scopes(keyed_app) -> None:
    assert call(keyed_app, "GET", "/health").status_code == 200
    missing = call(keyed_app, "GET", "/v1/models")
    assert_envelope(missing, 401, "unauthorized")
    assert missing.headers["www-authenticate"] == "Bearer"
    assert_envelope(call(keyed_app, "GET", "/v1/models", headers={"Authorization": "Bearer wrong"}), 401, "unauthorized")
    # Before: a bare key without the scheme was let in, and the lower-case scheme was refused.
    bare = call(keyed_app, "GET", "/openapi.json", headers={"Authorization": "u-key"})
    assert "Bearer" in assert_envelope(bare, 401, "unauthorized")["message"]
    assert call(keyed_app, "GET", "/openapi.json", headers={"Authorization": "bearer u-key"}).status_code == 200
    assert_envelope(call(keyed_app, "GET", "/docs"), 401, "unauthorized")
    # A user key on an admin route: 403; an admin key passes (the route then says 404 for a path it lacks).
    user_on_admin = call(keyed_app, "GET", "/admin/nothing-here", headers={"Authorization": "Bearer u-key"})
    assert "admin" in assert_envelope(user_on_admin, 403, "forbidden")["message"]
    assert_envelope(call(keyed_app, "GET", "/metrics", headers={"Authorization": "Bearer u-key"}), 403, "forbidden")
    admin = call(keyed_app, "GET", "/admin/nothing-here", headers={"Authorization": "Bearer a-key"})
    assert_envelope(admin, 404, "not_found")
    for response in (missing, bare, user_on_admin):
        assert "u-key" not in response.text and "a-key" not in response.text


def test_ready_shows_paths_pids_and_ports_to_admins_only(keyed_app, tmp_path: Path) -> None:
    anonymous = call(keyed_app, "GET", "/ready")
    user = call(keyed_app, "GET", "/ready", headers={"Authorization": "Bearer u-key"})
    admin = call(keyed_app, "GET", "/ready", headers={"Authorization": "Bearer a-key"})
    assert anonymous.status_code == user.status_code == admin.status_code == 200
    assert str(tmp_path) in admin.text and admin.json()["embedded_llm"]["gguf"].endswith("absent.gguf")
    for redacted in (anonymous, user):
        body = redacted.json()
        assert str(tmp_path) not in redacted.text and "/home/" not in redacted.text and "site-packages" not in redacted.text
        assert set(body["embedded_llm"]) <= {"provider", "state", "model", "restarts", "retrying", "retry_in_s"}
        assert body["engines"] and body["devices"] is not None
        missing = [u for engine in body["engines"].values() for u in engine["unavailable"]]
        assert missing and all(u["reason"] == "not available here" for u in missing)


def test_a_control_character_in_the_path_cannot_forge_an_access_log_line(open_app, caplog) -> None:
    with caplog.at_level(logging.INFO, logger="aistack.access"):
        response = call(open_app, "GET", "/v1/x%0a0000 GET /forged 200%0d%1b[31m")
    assert response.status_code == 404
    lines = [r.getMessage() for r in caplog.records if r.name == "aistack.access"]
    assert len(lines) == 1 and "\n" not in lines[0] and "\r" not in lines[0] and "\x1b" not in lines[0]
    assert "/v1/x\\x0a0000 GET /forged 200\\x0d\\x1b[31m" in lines[0]


def test_a_body_that_trickles_past_the_time_limit_is_refused(tmp_path: Path) -> None:
    app = create_app(Settings(cache_dir=tmp_path, server={"body_timeout_s": 0.5}))
    sent: list[dict] = []
    never = asyncio.Event()

    async def scenario() -> None:
        first = True

        async def receive() -> dict:
            nonlocal first
            if first:
                first = False
                return {"type": "http.request", "body": b'{"model": ', "more_body": True}
            await never.wait()  # the rest of the body never comes
            return {"type": "http.disconnect"}

        async def send(message: dict) -> None:
            sent.append(message)

        scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
                 "scheme": "http", "path": "/v1/chat/completions", "raw_path": b"/v1/chat/completions",
                 "query_string": b"", "root_path": "", "server": ("127.0.0.1", 11500), "client": ("127.0.0.1", 5),
                 "headers": [(b"host", b"127.0.0.1:11500"), (b"content-type", b"application/json")]}
        await asyncio.wait_for(app(scope, receive, send), 60)

    asyncio.run(scenario())
    start = next(m for m in sent if m["type"] == "http.response.start")
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    assert start["status"] == 400
    assert (b"connection", b"close") in start["headers"]
    error = json.loads(body)["error"]
    assert error["kind"] == "malformed" and "BODY_TIMEOUT_S" in error["message"]


def test_the_json_access_log_is_one_object_a_request(tmp_path: Path, caplog) -> None:
    app = create_app(Settings(cache_dir=tmp_path, server={"access_log_format": "json"}))
    with caplog.at_level(logging.INFO, logger="aistack.access"):
        call(app, "GET", "/v1/x%0aforged", headers={"X-Request-Id": "trace-7"})
    lines = [r.getMessage() for r in caplog.records if r.name == "aistack.access"]
    assert len(lines) == 1 and "\n" not in lines[0]
    entry = json.loads(lines[0])
    assert entry["request_id"] == "trace-7" and entry["path"] == "/v1/x\nforged" and entry["status"] == 404
    assert entry["method"] == "GET" and entry["duration_ms"] >= 0


@pytest.mark.slow
def test_a_foreign_page_cannot_open_the_realtime_websocket_of_a_keyless_gateway(make_inprocess_gateway) -> None:
    # Browsers apply no CORS to WebSockets: the handshake's Origin and Host are the only guard.
    import websockets

    gateway = make_inprocess_gateway()
    ws_url = gateway.url.replace("http://", "ws://") + "/v1/realtime"

    async def handshake(**options) -> int | str:
        try:
            async with websockets.connect(ws_url, open_timeout=30, **options) as socket_:
                return json.loads(await socket_.recv())["type"]
        except websockets.InvalidStatus as refused:
            return refused.response.status_code

    def rebound_handshake() -> bytes:
        address = httpx.URL(gateway.url)
        with socket.create_connection((address.host, address.port), timeout=30) as raw:
            raw.sendall(b"GET /v1/realtime HTTP/1.1\r\nHost: evil.example\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                        b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")
            return raw.recv(65536)

    assert asyncio.run(handshake(origin="http://evil.example")) == 403
    assert rebound_handshake().startswith(b"HTTP/1.1 400")  # DNS rebinding
    assert asyncio.run(handshake(origin=gateway.url)) == "session.created"
    assert asyncio.run(handshake()) == "session.created"  # no Origin: not a browser
