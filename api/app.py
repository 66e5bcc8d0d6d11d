"""The application factory, used alike by ``model-registry serve`` and the tests."""

from __future__ import annotations

import random
from collections.abc import AsyncIterator

from aiohttp import web

from model_registry import Clock, Registry
from model_registry.compat import TimeoutAdvice
from model_registry.fastchat import FastChat
from model_registry.settings import Settings
from model_registry.storage import open_storage

from .fastchat import callbacks_context
from .keys import ADVICE, FASTCHAT, LIFECYCLE, REGISTRY, SETTINGS, Lifecycle
from .responses import MAX_BODY_BYTES
from .routes import setup_routes

__all__ = ["create_app"]


def create_app(
    settings: Settings, *, clock: Clock | None = None, rng: random.Random | None = None
) -> web.Application:
    app = web.Application(client_max_size=MAX_BODY_BYTES)
    app[SETTINGS] = settings
    app[LIFECYCLE] = lifecycle = Lifecycle()
    setup_routes(app, lifecycle)

    async def registry_context(app: web.Application) -> AsyncIterator[None]:
        # Storage opens (and migrates) before the registry starts its checker;
        # on the way out the checker stops before storage closes.
        async with (
            open_storage(
                settings.storage, pool=settings.pool, flush_interval=settings.flush_interval
            ) as storage,
            Registry(
                storage,
                heartbeat_interval=settings.heartbeat_interval,
                heartbeat_timeout=settings.heartbeat_timeout,
                evict_after=settings.evict_after,
                watch_history=settings.watch_history,
                failures=settings.failures,
                preservation=settings.preservation,
                clock=clock,
                rng=rng,
            ) as registry,
        ):
            app[REGISTRY] = lifecycle.registry = registry
            app[ADVICE] = advice = TimeoutAdvice(registry.heartbeat_timeout)
            app[FASTCHAT] = FastChat(registry, settings.fastchat_dispatch, advice)
            try:
                yield
            finally:
                lifecycle.registry = None

    app.cleanup_ctx.append(registry_context)
    app.cleanup_ctx.append(callbacks_context)
    return app
