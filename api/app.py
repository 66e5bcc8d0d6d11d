"""The application factory, used alike by ``model-registry serve`` and the tests."""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import AsyncIterator

from aiohttp import web

from model_registry import Clock, Registry
from model_registry.auth import Tokens
from model_registry.compat import TimeoutAdvice
from model_registry.fastchat import FastChat
from model_registry.settings import Settings
from model_registry.storage import open_storage
from model_registry.storage.tasks import cancelled

from .auth import Auth
from .connections import ConnectionCap, Disconnects
from .fastchat import callbacks_context
from .hosts import AllowedHosts
from .keys import (
    ADVICE,
    CONNECTIONS,
    DISCONNECTS,
    FASTCHAT,
    LIFECYCLE,
    PROBER,
    REGISTRY,
    SETTINGS,
    TOKENS,
    Lifecycle,
)
from .metrics import METRICS, Metrics
from .prober import Prober
from .responses import BODY_TIMEOUT, MAX_BODY_BYTES
from .routes import setup_routes
from .views import LISTINGS, POLL_ANSWERS, PollAnswers

__all__ = ["StartupError", "create_app"]

log = logging.getLogger("api.server")

_NO_TOKEN = (
    "authentication is on (listening on {host}), but there is no token to authenticate with: "
    "set REGISTRY_ADMIN_TOKEN or pass --admin-token-file, or listen on 127.0.0.1, or pass "
    "--insecure-no-auth to let anyone register, drain and purge"
)
#: Seconds between the warnings that a non-loopback registry is open to anyone.
OPEN_WARNING_PERIOD_S = 3600.0


class StartupError(Exception):
    """The service cannot start; the message names the cause and the fix."""


def _warn_open(settings: Settings) -> asyncio.Task[None]:
    async def warn() -> None:
        while True:
            log.warning(
                "authentication is off on a non-loopback address (--insecure-no-auth): anyone who can "
                "reach this port can register, drain or purge instances; set REGISTRY_ADMIN_TOKEN",
                extra={"host": settings.host},
            )
            await asyncio.sleep(OPEN_WARNING_PERIOD_S)

    return asyncio.create_task(warn(), name="registry-open-warning")


def create_app(
    settings: Settings, *, clock: Clock | None = None, rng: random.Random | None = None
) -> web.Application:
    app = web.Application(client_max_size=MAX_BODY_BYTES)
    app[SETTINGS] = settings
    app[BODY_TIMEOUT] = settings.body_timeout
    app[LIFECYCLE] = lifecycle = Lifecycle(hosts=AllowedHosts.of(settings.host, settings.allowed_hosts))
    app[DISCONNECTS] = Disconnects()
    app[POLL_ANSWERS] = PollAnswers()
    LISTINGS.resize(settings.listing_cache * 2**20)  # the process's one cache of listings
    app[CONNECTIONS] = ConnectionCap(settings.max_connections_per_client)
    app[METRICS] = Metrics()
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
                max_instances=settings.max_instances,
                max_instances_per_model=settings.max_instances_per_model,
                probe_allowed_hosts=settings.probe_hosts,
                startup_grace=settings.startup_grace,
                clock=clock,
                rng=rng,
            ) as registry,
        ):
            tokens = Tokens(storage, registry.clock, bootstrap=settings.bootstrap_token)
            await tokens.load()
            if settings.auth:
                if tokens.empty:
                    raise StartupError(_NO_TOKEN.format(host=settings.host))
                lifecycle.auth = Auth(tokens)
            if storage.durable:  # replicas may share it: see their revocations within 2 s
                tokens.start()
            app[TOKENS] = tokens
            app[REGISTRY] = lifecycle.registry = registry
            app[POLL_ANSWERS].follow(registry)
            app[ADVICE] = advice = TimeoutAdvice(registry.heartbeat_timeout)
            app[FASTCHAT] = FastChat(registry, settings.fastchat_dispatch, advice)
            warning = _warn_open(settings) if not settings.auth and not settings.loopback else None
            app[PROBER] = prober = Prober(
                registry,
                concurrency=settings.probe_concurrency,
                idle_connections=settings.probe_idle_connections,
                owns=await storage.probe_shares(),
            )
            await prober.start()
            app[METRICS].prober = prober
            app[METRICS].lag.start()
            try:
                yield
            finally:
                lifecycle.registry = None
                await app[METRICS].lag.stop()
                await prober.stop()
                await tokens.stop()
                await cancelled([warning])

    app.cleanup_ctx.append(registry_context)
    app.cleanup_ctx.append(callbacks_context)
    return app
