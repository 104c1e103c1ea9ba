"""A recording HTTP proxy on 127.0.0.1 to put between the gateway and a real upstream.

It forwards each request to the upstream as it came and the upstream's answer back as it arrives
(a stream stays a stream), and keeps, per request, the request body and the exact bytes the
upstream sent. A relay test then compares what its client received with what the upstream sent
*for that same request*, never with a second generation (two runs of a model need not agree).

    with RecordingProxy(llama_server_root) as proxy:   # proxy.url goes where the upstream's would
        ...
        (exchange,) = proxy.new_exchanges(before, "/v1/chat/completions")
        exchange.body   # the upstream's body bytes, as sent (no transfer-encoding framing)
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from dataclasses import dataclass, field

import httpx

from doubles.loopback import LoopbackServer

# Headers that describe one connection, not the message: never forwarded as they are.
HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade", "proxy-connection",
              "content-length", "host"}


@dataclass
class Exchange:
    """One request as forwarded, and the upstream's answer to it."""

    method: str
    path: str
    request_body: bytes
    status: int | None = None
    headers: dict[str, str] = field(default_factory=dict)
    # The body in the pieces it arrived in from the upstream.
    chunks: list[bytes] = field(default_factory=list)
    # Set once the upstream's whole body is recorded (before the proxy's last write to its client).
    complete: threading.Event = field(default_factory=threading.Event)
    error: str | None = None

    @property
    def body(self) -> bytes:
        return b"".join(self.chunks)

    def sse_data(self) -> list[str]:
        """The `data:` payloads of an event stream's events, in order (`[DONE]` included)."""
        events = self.body.decode().replace("\r\n", "\n").split("\n\n")
        payloads = []
        for event in events:
            data = [line[len("data:"):].removeprefix(" ") for line in event.split("\n") if line.startswith("data:")]
            if data:
                payloads.append("\n".join(data))
        return payloads


class RecordingProxy(LoopbackServer):
    thread_name = "recording-proxy"
    label = "recording proxy"

    def __init__(self, upstream_root: str) -> None:
        super().__init__()
        self.upstream_root = upstream_root.rstrip("/")
        self.port = 0
        self.exchanges: list[Exchange] = []
        self._lock = threading.Lock()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def mark(self) -> int:
        """A mark for `new_exchanges`: how many exchanges there are now."""
        with self._lock:
            return len(self.exchanges)

    def new_exchanges(self, since: int, path: str) -> list[Exchange]:
        """The exchanges for `path` that began after the mark `since` (other traffic, such as the
        gateway's own model listings, is left out)."""
        with self._lock:
            return [e for e in self.exchanges[since:] if e.path == path]

    async def _main(self) -> None:
        serving = await self._serve_main(self._connection)
        if serving is None:
            return
        sock, server = serving
        async with httpx.AsyncClient(base_url=self.upstream_root, trust_env=False, timeout=300) as upstream:
            self._upstream = upstream
            self._ready.set()
            try:
                # No grace: a forwarded request is cancelled at once, not left to end on its own.
                await self._serve_until_stopped(server, grace_s=0)
            finally:
                sock.close()

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while await self._one_request(reader, writer):
                pass
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _one_request(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        """Forward one request and its answer; whether the connection may carry another."""
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except asyncio.IncompleteReadError:
            return False  # the client closed an idle connection
        lines = head.decode("latin-1").split("\r\n")
        method, target, _version = lines[0].split(" ", 2)
        headers: dict[str, str] = {}
        for line in lines[1:]:
            if ":" in line:
                name, value = line.split(":", 1)
                headers[name.strip().lower()] = value.strip()
        if "chunked" in headers.get("transfer-encoding", "").lower():
            writer.write(b"HTTP/1.1 501 Not Implemented\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
            await writer.drain()
            return False
        body = await reader.readexactly(int(headers.get("content-length", "0")))
        exchange = Exchange(method, target.split("?", 1)[0], body)
        with self._lock:
            self.exchanges.append(exchange)
        forwarded = {name: value for name, value in headers.items() if name not in HOP_BY_HOP}
        request = self._upstream.build_request(method, target, content=body, headers=forwarded)
        try:
            response = await self._upstream.send(request, stream=True)
        except httpx.HTTPError as error:
            exchange.error = repr(error)
            exchange.complete.set()
            writer.write(b"HTTP/1.1 502 Bad Gateway\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
            await writer.drain()
            return False
        try:
            exchange.status = response.status_code
            exchange.headers = {name.lower(): value for name, value in response.headers.items()}
            length = response.headers.get("content-length")
            chunked = length is None
            out = [f"HTTP/1.1 {response.status_code} {response.reason_phrase}"]
            out += [f"{name}: {value}" for name, value in response.headers.items() if name.lower() not in HOP_BY_HOP]
            out.append("transfer-encoding: chunked" if chunked else f"content-length: {length}")
            writer.write(("\r\n".join(out) + "\r\n\r\n").encode("latin-1"))
            await writer.drain()
            async for chunk in response.aiter_raw():
                if not chunk:
                    continue  # an empty chunk would end a chunked body early
                exchange.chunks.append(chunk)
                writer.write(b"%x\r\n%s\r\n" % (len(chunk), chunk) if chunked else chunk)
                await writer.drain()
        except httpx.HTTPError as error:
            exchange.error = repr(error)
            return False  # the client sees its answer cut short, as it would from the upstream
        finally:
            exchange.complete.set()
            await response.aclose()
        if chunked:
            writer.write(b"0\r\n\r\n")
            await writer.drain()
        return headers.get("connection", "").lower() != "close"
