"""Typed keys for the state that hangs off the application (no module globals)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from aiohttp import web

from registry import Registry
from registry.settings import Settings

__all__ = ["LIFECYCLE", "REGISTRY", "SETTINGS", "Lifecycle"]


@dataclass(slots=True)
class Lifecycle:
    """Draining state and the requests in flight.

    ``draining`` is set by the server on SIGTERM/SIGINT and read by ``/health``
    and by the middleware that turns new requests away; the same middleware
    counts the requests it lets through, so the server can wait for them.
    """

    draining: bool = False
    in_flight: int = 0
    _idle: asyncio.Event = field(default_factory=asyncio.Event)

    def __post_init__(self) -> None:
        self._idle.set()

    def started(self) -> None:
        self.in_flight += 1
        self._idle.clear()

    def finished(self) -> None:
        self.in_flight -= 1
        if self.in_flight == 0:
            self._idle.set()

    async def wait_idle(self, timeout: float) -> bool:
        """Wait up to ``timeout`` s for the requests in flight; True if none is left."""
        try:
            await asyncio.wait_for(self._idle.wait(), timeout)
        except TimeoutError:
            return False
        return True


REGISTRY = web.AppKey("registry", Registry)
SETTINGS = web.AppKey("settings", Settings)
LIFECYCLE = web.AppKey("lifecycle", Lifecycle)
