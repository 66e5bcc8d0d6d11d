"""Typed keys for the state that hangs off the application (no module globals)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from aiohttp import ClientSession, web

from model_registry import Registry
from model_registry.auth import Tokens
from model_registry.compat import TimeoutAdvice
from model_registry.fastchat import FastChat
from model_registry.settings import Settings

from .auth import Auth
from .connections import ConnectionCap, Disconnects
from .hosts import AllowedHosts
from .prober import Prober

__all__ = [
    "ADVICE",
    "CALLBACKS",
    "CONNECTIONS",
    "DISCONNECTS",
    "FASTCHAT",
    "TOKENS",
    "PROBER",
    "LIFECYCLE",
    "REGISTRY",
    "SETTINGS",
    "Lifecycle",
]


@dataclass(slots=True)
class Lifecycle:
    """The running registry, draining state and the requests in flight.

    ``registry`` is set once storage is open and the registry started; the
    per-route guard (``api.errors.guard``) hands it to each view. ``draining``
    is set by the server on SIGTERM/SIGINT and read by ``/health`` and by the
    guard, which turns new requests away; the guard also counts the requests
    it lets through, so the server can wait for them.
    """

    registry: Registry | None = None
    draining: bool = False
    in_flight: int = 0
    #: Set when requests must authenticate (``api.auth``); ``None`` leaves every route open.
    auth: Auth | None = None
    #: The ``Host`` names requests may carry (``api.hosts``); ``None``: any (``--allowed-hosts '*'``).
    hosts: AllowedHosts | None = None

    async def wait_idle(self, timeout: float, poll: float = 0.02) -> bool:
        """Wait up to ``timeout`` s for the requests in flight; True if none is left.

        Polls: a request then costs two integer updates, not two event
        operations, and a shutdown waits at most ``poll`` s longer."""
        loop = asyncio.get_running_loop()
        give_up = loop.time() + timeout
        while self.in_flight:
            if loop.time() >= give_up:
                return False
            await asyncio.sleep(poll)
        return True


REGISTRY = web.AppKey("registry", Registry)
SETTINGS = web.AppKey("settings", Settings)
LIFECYCLE = web.AppKey("lifecycle", Lifecycle)
#: FastChat's controller operations over the running registry.
FASTCHAT = web.AppKey("fastchat", FastChat)
#: The HTTP client that calls workers back (FastChat's /worker_get_status).
CALLBACKS = web.AppKey("callbacks", ClientSession)
#: Tells operators, once, when the heartbeat timeout is too short for an upstream's workers.
ADVICE = web.AppKey("advice", TimeoutAdvice)
#: The API tokens (managed through /api/v1/tokens even while authentication is off).
TOKENS = web.AppKey("tokens", Tokens)
PROBER = web.AppKey("prober", Prober)
#: Tells long-polls that their client has gone (attached to the server by ``serve``).
DISCONNECTS = web.AppKey("disconnects", Disconnects)
#: The connections by client address, and those refused (attached to the server by ``serve``).
CONNECTIONS = web.AppKey("connections", ConnectionCap)
