"""Connection-level limits and events: how many connections one client
address may hold, and telling a waiting handler that its client has gone.

A client that opens connection after connection (a leak, or an attack) would
otherwise take every descriptor the process has, and health checks with them.
Past ``--max-connections-per-client`` a new connection from that address is
closed at once, before any request on it is read; a warning says so, once per
address per minute, with a count.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from aiohttp import web
from aiohttp.web_protocol import RequestHandler

from .logs import Throttle

__all__ = ["ConnectionCap", "Disconnects"]

log = logging.getLogger("api")

#: Refusals are logged once per address per this many seconds, with a count.
LOG_WINDOW_S = 60.0


class ConnectionCap:
    """Counts a server's open connections by client address, and closes at
    once those past ``per_client`` from one address (0: no such limit) or past
    ``total`` in all (what the open-files limit leaves for connections), less
    what ``held_elsewhere()`` says the process holds besides (the prober's
    connections)."""

    def __init__(self, per_client: int, total: int | None = None) -> None:
        self.per_client = per_client
        self.total = total
        self.held_elsewhere: Callable[[], int] = lambda: 0
        self.open: dict[str, int] = {}
        self.connections = 0
        #: Connections closed for each reason, since the start.
        self.refused = 0
        self.refused_at_limit = 0
        self._address_of: dict[RequestHandler, str] = {}
        self._throttle = Throttle(LOG_WINDOW_S)

    def attach(self, server: web.Server) -> None:
        """Count ``server``'s connections (aiohttp tells its server of each one)."""
        made, lost = server.connection_made, server.connection_lost

        def connection_made(handler: RequestHandler, transport: asyncio.Transport) -> None:
            made(handler, transport)
            address = self._address_of[handler] = _address(transport)
            count = self.open.get(address, 0) + 1
            self.open[address] = count
            self.connections += 1
            if self.total is not None and self.connections > self.total - self.held_elsewhere():
                self.refused_at_limit += 1
                self._log_limit(address)
                transport.close()
            elif self.per_client and count > self.per_client:
                self.refused += 1
                self._log(address)
                transport.close()

        def connection_lost(handler: RequestHandler, exc: BaseException | None = None) -> None:
            address = self._address_of.pop(handler, None)
            if address is not None:
                self.connections -= 1
                count = self.open.get(address, 1) - 1
                if count > 0:
                    self.open[address] = count
                else:
                    self.open.pop(address, None)
            lost(handler, exc)

        server.connection_made = connection_made  # type: ignore[method-assign]
        server.connection_lost = connection_lost  # type: ignore[method-assign]

    def out_of_descriptors(self) -> None:
        """The event loop could not accept a connection: no descriptor was left."""
        self.refused_at_limit += 1
        self._log_limit("?")

    def stats(self) -> dict[str, int | None]:
        """What ``/health`` reports of connections."""
        return {
            "open": self.connections,
            "max": self.total,
            "refused_per_client": self.refused,
            "refused_at_limit": self.refused_at_limit,
        }

    def _log(self, address: str) -> None:
        before = self._throttle.admit(address)
        if before is None:
            return
        log.warning(
            "connection refused: too many from one client",
            extra={
                "client": address,
                "limit": self.per_client,
                "refused_before": before,
                "fix": "close idle connections, or raise --max-connections-per-client",
            },
        )

    def _log_limit(self, address: str) -> None:
        before = self._throttle.admit("\0limit")  # one line a minute for all clients together
        if before is None:
            return
        log.warning(
            "connection refused: the open-files limit is reached",
            extra={
                "client": address,
                "connections": self.connections,
                "limit": self.total,
                "refused_before": before,
                "fix": "raise the process's open-files limit (ulimit -n, LimitNOFILE=), "
                "or have clients hold fewer connections",
            },
        )


def _address(transport: asyncio.BaseTransport) -> str:
    peer = transport.get_extra_info("peername")
    if isinstance(peer, tuple) and peer:
        return str(peer[0])
    return str(peer or "?")


class Disconnects:
    """Tells a handler at once that its client has gone.

    aiohttp tells only its server when a connection is lost (and cancels no
    handler, so that no write is cut in half): a long-poll would otherwise
    hold its place until its ``wait`` ran out, up to minutes after the client
    left. Attached to the server that serves the application.
    """

    def __init__(self) -> None:
        self._waiting: dict[object, asyncio.Future[None]] = {}
        # The server's loop, once attached: on 3.11 asyncio.get_running_loop() is a getpid().
        self._loop: asyncio.AbstractEventLoop | None = None

    def attach(self, server: web.Server) -> None:
        self._loop = asyncio.get_running_loop()
        lost = server.connection_lost

        def connection_lost(handler: RequestHandler, exc: BaseException | None = None) -> None:
            gone = self._waiting.pop(handler, None)
            if gone is not None and not gone.done():
                gone.set_result(None)
            lost(handler, exc)

        server.connection_lost = connection_lost  # type: ignore[method-assign]

    @contextmanager
    def watch(self, request: web.BaseRequest) -> Iterator[asyncio.Future[None]]:
        """A future done when ``request``'s client goes, while in the block."""
        gone: asyncio.Future[None] = (self._loop or asyncio.get_running_loop()).create_future()
        transport = request.transport
        if transport is None or transport.is_closing():
            gone.set_result(None)
            yield gone
            return
        handler = request.protocol
        self._waiting[handler] = gone
        try:
            yield gone
        finally:
            if self._waiting.get(handler) is gone:
                del self._waiting[handler]
