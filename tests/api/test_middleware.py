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
