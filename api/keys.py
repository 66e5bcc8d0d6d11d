"""Typed keys for the state that hangs off the application (no module globals)."""

from __future__ import annotations

from dataclasses import dataclass

from aiohttp import web

from registry import Registry
from registry.settings import Settings

__all__ = ["LIFECYCLE", "REGISTRY", "SETTINGS", "Lifecycle"]


@dataclass(slots=True)
class Lifecycle:
    """Whether the process is draining: set by the server on SIGTERM/SIGINT,
    read by ``/health`` and by the middleware that turns new requests away."""

    draining: bool = False


REGISTRY = web.AppKey("registry", Registry)
SETTINGS = web.AppKey("settings", Settings)
LIFECYCLE = web.AppKey("lifecycle", Lifecycle)
