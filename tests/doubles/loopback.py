"""What the test doubles share: an asyncio server on 127.0.0.1, run in a thread of its own.

A subclass names its thread (`thread_name`) and itself in errors (`label`), and writes `_main`: get
its serving socket from `_listening_socket` and serve it with `_start_server` (or both at once, on the
main port, with `_serve_main`), report a failure with `_startup_failed`, set `_ready` once it serves,
and return after `_serve_until_stopped`. `start()` serves (again, at the same address,
after `stop()`); `stop()` cuts open connections and refuses new ones; `close()` also gives the port
up; `with double:` starts and closes.

A double's port is never free between a `stop()` and the next `start()`: from its first start until
`close()` it is held by a socket that is bound and never listens (see `_listening_socket`), so while
the double is down a connect is refused, as at a stopped server, and no other process can take the
port meanwhile. A test restarts a double with `stop()` / `start()` on the same object, never by
building another double on a port it remembered.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Any, Self

ConnectionHandler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


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
        # Per role ("main", or another port a double serves): the socket that holds its port.
        self._held_ports: dict[str, socket.socket] = {}
        self._closed = False
        # Open connections, so that stopping can cut them.
        self._connections: set[asyncio.Task[None]] = set()
        self._writers: set[asyncio.StreamWriter] = set()

    def start(self) -> Self:
        if self._closed:
            raise RuntimeError(f"the {self.label} was closed: its port is given up, so it cannot serve there again")
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

    def close(self) -> None:
        """Stop, and give the port up (the double cannot be started again)."""
        self.stop()
        self._closed = True
        for holder in self._held_ports.values():
            holder.close()
        self._held_ports.clear()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    async def _run(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stopping = asyncio.Event()
        await self._main()

    async def _main(self) -> None:
        raise NotImplementedError

    def _listening_socket(self, role: str = "main") -> socket.socket:
        """A TCP socket for this double's port `role`, bound and ready to listen; the same port on every start.

        The first call binds a holder on 127.0.0.1 port 0, kept until `close()`: bound, never
        listening, so when nothing serves the port a connect is refused (as at `conftest.refused_url`).
        The serving socket joins it with SO_REUSEPORT, which only sockets of this user that set the
        option too could do, and a port-0 bind is never given a port that is in use; so the port is
        never free for another process to take between a `stop()` and a `start()`."""
        holder = self._held_ports.get(role)
        if holder is None:
            holder = _port_sharing_socket(0)
            self._held_ports[role] = holder
        return _port_sharing_socket(holder.getsockname()[1])

    async def _start_server(self, handle: ConnectionHandler, sock: socket.socket, backlog: int = 64) -> asyncio.Server:
        """Serve `handle(reader, writer)` for each connection on `sock`; the connection is cut when
        the double stops (`_serve_until_stopped`) and closed once `handle` returns."""

        async def connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            task = asyncio.current_task()
            assert task is not None
            self._connections.add(task)
            self._writers.add(writer)
            try:
                await handle(reader, writer)
            finally:
                self._writers.discard(writer)
                self._connections.discard(task)
                with contextlib.suppress(Exception):
                    writer.close()

        return await asyncio.start_server(connection, sock=sock, backlog=backlog)

    async def _serve_main(self, handle: ConnectionHandler, backlog: int = 64) -> tuple[socket.socket, asyncio.Server] | None:
        """Serve `handle` on this double's main port; None, the failure handed to `start()`, if that failed."""
        sock: socket.socket | None = None
        try:
            sock = self._listening_socket()
            self.port = sock.getsockname()[1]
            return sock, await self._start_server(handle, sock, backlog)
        except BaseException as error:
            self._startup_failed(error, sock)
            return None

    async def _serve_until_stopped(self, *servers: asyncio.Server, grace_s: float = 2.0) -> None:
        """Wait for `stop()`, then close `servers`, cut every open connection and give their
        handlers `grace_s` seconds to end before they are cancelled."""
        assert self._stopping is not None
        await self._stopping.wait()
        for server in servers:
            server.close()
        for writer in list(self._writers):
            writer.transport.abort()
        pending = set(self._connections)
        if pending and grace_s > 0:
            _, pending = await asyncio.wait(pending, timeout=grace_s)
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        for server in servers:
            await server.wait_closed()

    def _startup_failed(self, error: BaseException, *sockets: socket.socket | None) -> None:
        """`_main` could not start serving: close what it bound and hand `error` to `start()`."""
        for sock in sockets:
            if sock is not None:
                sock.close()
        self._startup_error = error
        self._ready.set()


def _port_sharing_socket(port: int) -> socket.socket:
    """A TCP socket bound to 127.0.0.1:`port` with SO_REUSEPORT, not listening; closed again if binding fails."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind(("127.0.0.1", port))
    except BaseException:
        sock.close()
        raise
    return sock


class ReleaseGate:
    """Where a response waits until the test lets it go: `release()` from any thread lets one waiter on
    (a release given while none waits is kept for the next), `wake()` makes waiters look again at
    whether they still have to wait (as when a double leaves step mode). `reached` / `waiting` /
    `wait_until_reached()` tell how many waits began and how many are under way.

    Its asyncio side lives on the double's loop: `bind()` it at the start of every `_main`."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._releases = 0
        self._reached = 0
        self._waiting = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._event: asyncio.Event | None = None

    def bind(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._event = asyncio.Event()

    def release(self, count: int = 1) -> None:
        with self._cond:
            self._releases += count
        self.wake()

    def wake(self) -> None:
        loop, event = self._loop, self._event
        if loop is not None and event is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(event.set)

    @property
    def reached(self) -> int:
        with self._cond:
            return self._reached

    @property
    def waiting(self) -> int:
        with self._cond:
            return self._waiting

    def wait_until_reached(self, count: int, timeout: float) -> bool:
        """Block until `count` waits in all began (True) or `timeout` passes (False)."""
        with self._cond:
            return self._cond.wait_for(lambda: self._reached >= count, timeout)

    async def wait(self, watch: ClientWatch, *, closed: Callable[[], bool] = lambda: True,
                   timeout: float | None = None) -> str | None:
        """Take a release, waiting for one while `closed()` holds, for at most `timeout` seconds (None:
        without end); "gone" or "stopping" if the client left or the server stops first."""
        event = self._event
        assert event is not None, "ReleaseGate.bind() was not called on the serving loop"
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            self._reached += 1
            self._waiting += 1
            self._cond.notify_all()
        try:
            while closed():
                # Cleared before the count is read, so a release or wake() that comes after is not missed.
                event.clear()
                with self._cond:
                    if self._releases > 0:
                        self._releases -= 1
                        return None
                if not closed():
                    break
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    return None
                waiter = asyncio.ensure_future(event.wait())
                try:
                    ended = await watch.pause(left, waiter)
                finally:
                    waiter.cancel()
                if ended:
                    return ended
            return None
        finally:
            with self._cond:
                self._waiting -= 1


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

    async def pause(self, seconds: float | None, *extra: asyncio.Future[Any]) -> str | None:
        """Wait `seconds` (None: without end) or until one of `extra` is done; "gone" or "stopping" if that came first."""
        if seconds is None or seconds > 0:
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
