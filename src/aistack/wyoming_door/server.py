"""The listening socket: a session per connection, all of them stopped with the gateway."""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import stat
from collections.abc import Sequence
from pathlib import Path
from urllib.parse import urlsplit

from .session import Services, WyomingSession

log = logging.getLogger("aistack.wyoming")


class WyomingDoor:
    """Listens where `uri` says (tcp://HOST:PORT or unix:///PATH).

    It binds with asyncio itself rather than through the library's AsyncServer, which keeps neither the
    address it bound (port 0 picks one) nor a way to wait for its connections to end at shutdown; each
    connection is the library's event handler all the same.
    """

    def __init__(self, uri: str, services: Services,
                 allowed_clients: Sequence[ipaddress.IPv4Network | ipaddress.IPv6Network] = ()) -> None:
        self.uri = uri
        self._services = services
        self._allowed_clients = tuple(allowed_clients)
        self._server: asyncio.Server | None = None
        self._unix_path: Path | None = None
        self._sessions: dict[asyncio.Task[None], WyomingSession] = {}
        self.address = uri

    @property
    def sessions(self) -> list[WyomingSession]:
        """The connections being served now."""
        return list(self._sessions.values())

    async def start(self) -> None:
        parsed = urlsplit(self.uri)
        if parsed.scheme == "tcp":
            assert parsed.hostname is not None and parsed.port is not None  # checked by WyomingSettings
            self._server = await asyncio.start_server(self._serve, host=parsed.hostname, port=parsed.port)
            host, port = self._server.sockets[0].getsockname()[:2]
            self.address = f"tcp://[{host}]:{port}" if ":" in host else f"tcp://{host}:{port}"
        else:
            path = Path(parsed.path)
            with contextlib.suppress(FileNotFoundError):
                if stat.S_ISSOCK(path.stat().st_mode):  # left behind by a gateway that did not stop cleanly
                    path.unlink()
            self._server = await asyncio.start_unix_server(self._serve, path=path)
            self._unix_path = path
            self.address = f"unix://{path}"
        log.info("Wyoming server (Home Assistant speech-to-text and text-to-speech) on %s", self.address)

    async def stop(self) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        server.close()
        for session in self.sessions:
            await session.stop()
        await asyncio.gather(*self._sessions, return_exceptions=True)
        await server.wait_closed()
        if self._unix_path is not None:
            self._unix_path.unlink(missing_ok=True)

    def admits(self, peer: object) -> bool:
        """Whether a TCP peer ((host, port, ...) as asyncio gives it) is one of wyoming.allowed_clients;
        with none set, and on a Unix socket, every client is."""
        if not self._allowed_clients or not isinstance(peer, tuple):
            return True
        try:
            address = ipaddress.ip_address(str(peer[0]).split("%")[0])
        except ValueError:
            return False
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        return any(address in network for network in self._allowed_clients)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername")
        if not self.admits(peer):
            log.warning("wyoming client %s refused: not in wyoming.allowed_clients", peer[0])
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()
            return
        task = asyncio.current_task()
        assert task is not None
        task.set_name("aistack-wyoming-session")
        session = WyomingSession(self._services, reader, writer)
        self._sessions[task] = session
        log.debug("wyoming client %s connected", peer)
        try:
            await session.run()
        except ConnectionError as error:
            log.debug("wyoming client %s dropped the connection: %s", peer, error)
        finally:
            del self._sessions[task]
            log.debug("wyoming client %s gone", peer)
