"""A fixed-latency OpenAI-compatible echo server, for timing what a proxy in front of it adds.

Run it with `.venv/bin/python benchmarks/echo_upstream.py --port P [--delay-ms 10] [--chunks 8]`;
benchmarks/llm_proxy.py starts it as its own process.

It answers, on 127.0.0.1 only:
  GET  /v1/models             one model (--model, default "echo")
  POST /v1/chat/completions   the last message's text, echoed
  POST /v1/completions        the prompt, echoed
  POST /v1/embeddings         a fixed 8-dimensional vector per input
  GET  /health                200
Non-streaming answers come --delay-ms after the request. With `"stream": true` the answer is
server-sent events: --chunks chunks (the echoed text split in that many pieces, the first one
carrying the role too, the last one the finish_reason), the first --delay-ms after the request
and each next one --delay-ms after the one before, then `data: [DONE]`.

It is a raw asyncio protocol over httptools (on uvloop when that is installed), HTTP/1.1 with
keep-alive, so that its own cost per request is small next to any proxy's; one process, one thread.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import sys
import time
from typing import Any

import httptools

REASONS = {200: b"OK", 400: b"Bad Request", 404: b"Not Found", 405: b"Method Not Allowed"}


class Config:
    def __init__(self, model: str, delay_s: float, chunks: int) -> None:
        self.model = model
        self.delay_s = delay_s
        self.chunks = chunks
        self.models_body = json.dumps({
            "object": "list",
            "data": [{"id": model, "object": "model", "created": 1700000000, "owned_by": "echo"}],
        }).encode()


class EchoProtocol(asyncio.Protocol):
    def __init__(self, config: Config) -> None:
        self.config = config
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self.url = b""
        self.body: list[bytes] = []
        self.pending: asyncio.Task[None] | None = None  # answers go out in request order

    # -- asyncio.Protocol --------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            self._write_plain(400, b'{"error":{"message":"bad request"}}', keep_alive=False)

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        if self.pending is not None:
            self.pending.cancel()

    # -- httptools callbacks -----------------------------------------------------------------------

    def on_message_begin(self) -> None:
        self.url = b""
        self.body = []

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_body(self, body: bytes) -> None:
        self.body.append(body)

    def on_message_complete(self) -> None:
        method = self.parser.get_method()
        keep_alive = self.parser.should_keep_alive()
        path = self.url.split(b"?", 1)[0]
        body = b"".join(self.body)
        previous = self.pending
        self.pending = asyncio.get_running_loop().create_task(self._answer(previous, method, path, body, keep_alive))

    # -- answers -----------------------------------------------------------------------------------

    async def _answer(self, previous: asyncio.Task[None] | None, method: bytes, path: bytes, body: bytes,
                      keep_alive: bool) -> None:
        if previous is not None and not previous.done():
            await previous
        if method == b"GET" and path == b"/v1/models":
            self._write_plain(200, self.config.models_body, keep_alive)
            return
        if method == b"GET" and path == b"/health":
            self._write_plain(200, b'{"status":"ok"}', keep_alive)
            return
        endpoint = {b"/v1/chat/completions": "chat", b"/v1/completions": "text", b"/v1/embeddings": "embeddings"}.get(path)
        if endpoint is None:
            self._write_plain(404, b'{"error":{"message":"not found","type":"not_found"}}', keep_alive)
            return
        if method != b"POST":
            self._write_plain(405, b'{"error":{"message":"use POST"}}', keep_alive)
            return
        try:
            payload: dict[str, Any] = json.loads(body)
        except ValueError:
            self._write_plain(400, b'{"error":{"message":"the body is not JSON"}}', keep_alive)
            return
        model = payload.get("model") or self.config.model
        if endpoint == "embeddings":
            await asyncio.sleep(self.config.delay_s)
            inputs = payload.get("input")
            count = len(inputs) if isinstance(inputs, list) else 1
            answer = {"object": "list", "model": model, "usage": {"prompt_tokens": count, "total_tokens": count},
                      "data": [{"object": "embedding", "index": i, "embedding": [0.125] * 8} for i in range(count)]}
            self._write_plain(200, json.dumps(answer).encode(), keep_alive)
            return
        text = echoed_text(payload, endpoint)
        created = int(time.time())
        ident = f"{'chatcmpl' if endpoint == 'chat' else 'cmpl'}-echo{id(body):x}"
        if payload.get("stream"):
            await self._stream(endpoint, ident, created, model, text, keep_alive)
            return
        await asyncio.sleep(self.config.delay_s)
        words = max(1, len(text.split()))
        usage = {"prompt_tokens": words, "completion_tokens": words, "total_tokens": 2 * words}
        if endpoint == "chat":
            answer = {"id": ident, "object": "chat.completion", "created": created, "model": model,
                      "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                                   "logprobs": None, "finish_reason": "stop"}], "usage": usage}
        else:
            answer = {"id": ident, "object": "text_completion", "created": created, "model": model,
                      "choices": [{"index": 0, "text": text, "logprobs": None, "finish_reason": "stop"}], "usage": usage}
        self._write_plain(200, json.dumps(answer).encode(), keep_alive)

    async def _stream(self, endpoint: str, ident: str, created: int, model: str, text: str, keep_alive: bool) -> None:
        transport = self.transport
        if transport is None:
            return
        transport.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream; charset=utf-8\r\n"
                        b"cache-control: no-cache\r\ntransfer-encoding: chunked\r\n"
                        + (b"" if keep_alive else b"connection: close\r\n") + b"\r\n")
        pieces = split_text(text, self.config.chunks)
        last = len(pieces) - 1
        for i, piece in enumerate(pieces):
            await asyncio.sleep(self.config.delay_s)
            if self.transport is None:
                return  # the client went away
            finish = "stop" if i == last else None
            if endpoint == "chat":
                delta: dict[str, Any] = {"role": "assistant", "content": piece} if i == 0 else {"content": piece}
                event = {"id": ident, "object": "chat.completion.chunk", "created": created, "model": model,
                         "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]}
            else:
                event = {"id": ident, "object": "text_completion", "created": created, "model": model,
                         "choices": [{"index": 0, "text": piece, "logprobs": None, "finish_reason": finish}]}
            self.transport.write(chunked(b"data: " + json.dumps(event).encode() + b"\n\n"))
        if self.transport is not None:
            self.transport.write(chunked(b"data: [DONE]\n\n") + b"0\r\n\r\n")
            if not keep_alive:
                self.transport.close()

    def _write_plain(self, status: int, body: bytes, keep_alive: bool) -> None:
        transport = self.transport
        if transport is None:
            return
        head = (b"HTTP/1.1 %d %s\r\ncontent-type: application/json\r\ncontent-length: %d\r\n%s\r\n"
                % (status, REASONS.get(status, b"Error"), len(body), b"" if keep_alive else b"connection: close\r\n"))
        transport.write(head + body)
        if not keep_alive:
            transport.close()


def chunked(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


def echoed_text(payload: dict[str, Any], endpoint: str) -> str:
    if endpoint == "chat":
        messages = payload.get("messages") or [{}]
        content = messages[-1].get("content", "") if isinstance(messages[-1], dict) else ""
        if isinstance(content, list):  # content parts
            content = " ".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
        return str(content)
    prompt = payload.get("prompt", "")
    return " ".join(map(str, prompt)) if isinstance(prompt, list) else str(prompt)


def split_text(text: str, chunks: int) -> list[str]:
    """`text` in `chunks` pieces (word boundaries where there are enough words) that join back to it."""
    words = text.split(" ")
    if len(words) >= chunks:
        per, extra = divmod(len(words), chunks)
        pieces, start = [], 0
        for i in range(chunks):
            end = start + per + (1 if i < extra else 0)
            pieces.append(" ".join(words[start:end]) + (" " if end < len(words) else ""))
            start = end
        return pieces
    return [text] + [""] * (chunks - 1) if text else [""] * chunks


async def serve(listener: socket.socket, config: Config) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: EchoProtocol(config), sock=listener, backlog=1024)
    host, port = listener.getsockname()[:2]
    print(f"echo upstream on http://{host}:{port}/v1 (model {config.model}, delay {config.delay_s * 1000:g} ms, "
          f"{config.chunks} chunks)", file=sys.stderr, flush=True)
    async with server:
        await server.serve_forever()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--port", type=int, help="bind this port on --host")
    where.add_argument("--fd", type=int, help="serve on a listening socket inherited from the parent (already bound)")
    parser.add_argument("--model", default="echo")
    parser.add_argument("--delay-ms", type=float, default=10.0,
                        help="before a non-streamed answer, before the first chunk and between chunks (default 10)")
    parser.add_argument("--chunks", type=int, default=8, help="chunks in a streamed answer (default 8)")
    args = parser.parse_args(argv)
    if args.chunks < 1:
        parser.error("--chunks must be at least 1")
    config = Config(args.model, args.delay_ms / 1000, args.chunks)
    try:
        import uvloop
    except ImportError:
        runner = asyncio.run
    else:
        runner = uvloop.run
    try:
        if args.fd is not None:
            listener = socket.socket(fileno=args.fd)
        else:
            listener = socket.create_server((args.host, args.port), backlog=1024)
        runner(serve(listener, config))
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
