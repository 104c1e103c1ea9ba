"""What the test doubles share: an asyncio server on 127.0.0.1, run in a thread of its own.

A subclass names its thread (`thread_name`) and itself in errors (`label`), and writes `_main`: bind
with `_bind_socket`, report a failure with `_startup_failed`, set `_ready` once it serves, and
return when `_stopping` is set. `start()` serves (again, on the same port, after `stop()`);
`stop()` cuts open connections and refuses new ones; `with double:` does both.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
from typing import Any, Self


class LoopbackServer:
    thread_name = "loopback-double"
    label = "loopback double"
    port: int

    def __init__(self) -> None:
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping: asyncio.Event | None = None
        self._ready = threading.Event()
        self._startup_error: BaseException | None = None

    def start(self) -> Self:
        if self._thread is not None and self._thread.is_alive():
            return self
        self._ready = threading.Event()
        self._startup_error = None
        self._thread = threading.Thread(target=lambda: asyncio.run(self._run()), name=self.thread_name, daemon=True)
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError(f"the {self.label} did not start")
        if self._startup_error is not None:
            raise RuntimeError(f"the {self.label} did not start") from self._startup_error
        return self

    def stop(self) -> None:
        """Stop serving: open connections are cut and new ones refused (`start()` serves again, same port)."""
        loop, stopping = self._loop, self._stopping
        if loop is not None and stopping is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(stopping.set)
        if self._thread is not None:
            self._thread.join(10)
        listening: threading.Event | None = getattr(self, "listening", None)  # where a double has one
        if listening is not None:
            listening.clear()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    async def _run(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stopping = asyncio.Event()
        await self._main()

    async def _main(self) -> None:
        raise NotImplementedError

    def _bind_socket(self, port: int) -> socket.socket:
        """A TCP socket bound to 127.0.0.1:`port` (0: a free one), not listening yet; closed again if binding fails."""
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(("127.0.0.1", port))
        except BaseException:
            sock.close()
            raise
        return sock

    def _startup_failed(self, error: BaseException, *sockets: socket.socket | None) -> None:
        """`_main` could not start serving: close what it bound and hand `error` to `start()`."""
        for sock in sockets:
            if sock is not None:
                sock.close()
        self._startup_error = error
        self._ready.set()


class ClientWatch:
    """Notices, while a response is being made, that the client closed its end or the server stops."""

    def __init__(self, reader: asyncio.StreamReader, stopping: asyncio.Event) -> None:
        self._read = asyncio.ensure_future(reader.read(1))
        self._stop = asyncio.ensure_future(stopping.wait())

    @property
    def gone(self) -> bool:
        # A read cancelled by close() is the watch ending, not the client leaving.
        return self._read.done() and not self._read.cancelled()

    @property
    def stopping(self) -> bool:
        return self._stop.done() and not self._stop.cancelled()

    async def pause(self, seconds: float, *extra: asyncio.Future[Any]) -> str | None:
        """Wait `seconds` (or until one of `extra` is done); "gone" or "stopping" if that came first."""
        if seconds > 0:
            await asyncio.wait({self._read, self._stop, *extra}, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
        if self.gone:
            return "gone"
        if self.stopping:
            return "stopping"
        return None

    async def close(self) -> None:
        """Stop watching; awaited, so the reader is free again for the connection's next request."""
        for task in (self._read, self._stop):
            if not task.done():
                task.cancel()
        await asyncio.gather(self._read, self._stop, return_exceptions=True)
