from __future__ import annotations

from collections.abc import Awaitable, Callable

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from model_registry import ManualClock
from model_registry.api import create_app
from model_registry.api.keys import CONNECTIONS, DISCONNECTS
from model_registry.api.responses import SERVER_OPTIONS
from model_registry.settings import Settings


@pytest.fixture
def settings(storage_url: str) -> Settings:
    return Settings(storage=storage_url, heartbeat_interval=5, heartbeat_timeout=30, evict_after=600)


@pytest.fixture
def app(settings: Settings, clock: ManualClock) -> web.Application:
    return create_app(settings, clock=clock)


@pytest.fixture
async def client(
    app: web.Application, aiohttp_client: Callable[[web.Application], Awaitable[TestClient]]
) -> TestClient:
    """A real HTTP server on loopback, built by the same factory as `serve`."""
    return await serve_app(aiohttp_client, app)


async def serve_app(aiohttp_client: Callable[..., Awaitable[TestClient]], app: web.Application) -> TestClient:
    """Serve ``app`` on loopback as ``serve`` does: its server options, and
    its server telling long-polls of clients that have gone, and counting connections."""
    client = await aiohttp_client(app, server_kwargs=SERVER_OPTIONS)
    app[DISCONNECTS].attach(client.server.runner.server)
    app[CONNECTIONS].attach(client.server.runner.server)
    return client
