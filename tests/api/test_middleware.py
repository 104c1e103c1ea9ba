"""The last-resort 500: an exception no handler knows becomes the envelope, and the server is not
handed the exception (which would drop the connection)."""

from __future__ import annotations

import asyncio

import httpx
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse, StreamingResponse
from starlette.routing import Route

from aistack.api.middleware import UnexpectedErrorMiddleware


async def broken(request) -> PlainTextResponse:
    raise ValueError("a bug")


async def broken_mid_stream(request) -> StreamingResponse:
    async def body():
        yield b"first"
        raise ValueError("a bug after the body started")

    return StreamingResponse(body())


async def fine(request) -> PlainTextResponse:
    return PlainTextResponse("ok")


def make_app() -> Starlette:
    app = Starlette(routes=[Route("/broken", broken), Route("/stream", broken_mid_stream), Route("/fine", fine)])
    app.add_middleware(UnexpectedErrorMiddleware)
    return app


def test_an_unexpected_error_is_the_500_envelope_and_does_not_reach_the_server(caplog) -> None:
    async def scenario() -> None:
        transport = httpx.ASGITransport(app=make_app())  # re-raises whatever the app lets through
        async with httpx.AsyncClient(transport=transport, base_url="http://aistack") as client:
            response = await client.get("/broken")
            assert response.status_code == 500
            error = response.json()["error"]
            assert error["kind"] == "unknown" and error["provider"] == "aistack"
            assert "ValueError" in error["message"] and "server log" in error["message"]
            assert (await client.get("/fine")).text == "ok"

    asyncio.run(scenario())
    assert any("unhandled error on GET /broken" in r.getMessage() for r in caplog.records)


def test_an_error_after_the_body_started_still_reaches_the_server() -> None:
    async def scenario() -> None:
        transport = httpx.ASGITransport(app=make_app())
        async with httpx.AsyncClient(transport=transport, base_url="http://aistack") as client:
            try:
                await client.get("/stream")
            except ValueError as error:
                return str(error)
        return None

    assert asyncio.run(scenario()) == "a bug after the body started"


def gateway_app():
    import tempfile
    from pathlib import Path

    from aistack.app import create_app
    from aistack.settings import Settings

    # Not started: these requests never reach an engine.
    return create_app(Settings(cache_dir=Path(tempfile.mkdtemp(prefix="aistack-mw-"))))


def test_a_500_carries_the_request_id_and_is_logged_with_it(caplog) -> None:
    app = gateway_app()

    async def broken_route() -> None:
        raise RuntimeError("a bug")

    app.router.add_api_route("/v1/broken", broken_route)

    async def scenario() -> httpx.Response:
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://localhost") as client:
            return await client.get("/v1/broken", headers={"x-request-id": "req-500"})

    with caplog.at_level("INFO", logger="aistack.access"):
        response = asyncio.run(scenario())
    assert response.status_code == 500 and response.json()["error"]["kind"] == "unknown"
    assert response.headers["x-request-id"] == "req-500"
    assert any(r.getMessage().startswith("req-500 GET /v1/broken 500") for r in caplog.records)


def test_a_content_length_that_is_no_number_is_a_400_envelope_with_the_request_id() -> None:
    # Before: the body limit's int() raised outside the last-resort handler: a plain-text 500 without an id.
    async def scenario() -> httpx.Response:
        transport = httpx.ASGITransport(app=gateway_app(), raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://localhost") as client:
            return await client.post("/v1/chat/completions", content=b"{}",
                                     headers={"content-type": "application/json", "content-length": b"\xb2"})

    response = asyncio.run(scenario())
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["kind"] == "malformed" and "Content-Length" in error["message"]
    assert response.headers["x-request-id"]


def test_an_upload_the_client_abandons_midway_is_logged_as_499(gateway) -> None:
    import socket
    from urllib.parse import urlsplit

    from conftest import wait_until

    address = urlsplit(gateway.url)
    boundary = "aistackboundary"
    head = (
        f"POST /v1/audio/transcriptions HTTP/1.1\r\nHost: {address.hostname}\r\nX-Request-Id: abandoned-upload\r\n"
        f"Content-Type: multipart/form-data; boundary={boundary}\r\nContent-Length: 100000\r\n\r\n"
    ).encode()
    part = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.wav\"\r\n"
            "Content-Type: audio/wav\r\n\r\n").encode() + b"\0" * 1000
    with socket.create_connection((address.hostname, address.port)) as client:
        client.sendall(head + part)  # 1 kB of the 100 kB it announced, then gone

    def logged() -> list[str]:
        return [line for line in gateway.log().splitlines() if "abandoned-upload POST /v1/audio/transcriptions" in line]

    assert wait_until(lambda: bool(logged())), gateway.log()[-2000:]
    assert " 499 " in logged()[0], logged()[0]
