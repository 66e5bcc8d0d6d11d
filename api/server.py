"""Running the service: bind, serve, and shut down in order on SIGTERM/SIGINT.

Shutdown order (aiohttp's runner does steps 3-6 in ``cleanup``):

1. the signal sets ``draining``: from then on ``/health`` answers 503 and every
   other new request gets 503 with ``Connection: close``, so load balancers
   and clients see the replica leave while it still answers;
2. requests already in flight run to completion, for up to
   ``shutdown_timeout`` seconds less a short reserve;
3. ``runner.cleanup()``: the listening socket closes (new connections are
   refused) and idle keep-alive connections close;
4. handlers still running after that get the reserve, then are cancelled;
5. cleanup contexts unwind: the checker stops, then storage closes.

So the process is gone within ``shutdown_timeout`` of the signal.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import resource
import signal
import ssl
from collections.abc import Callable
from typing import Any

from aiohttp import web

from model_registry import Clock
from model_registry.settings import Settings
from model_registry.storage import redact

from .app import StartupError, create_app
from .collector import Collector
from .connections import ConnectionCap
from .keys import CONNECTIONS, DISCONNECTS, LIFECYCLE, PROBER, REGISTRY
from .responses import SERVER_OPTIONS

__all__ = ["StartupError", "serve"]

log = logging.getLogger("api.server")


def _bind_error(exc: OSError, settings: Settings) -> StartupError:
    if exc.errno == errno.EADDRINUSE:
        return StartupError(
            f"port {settings.port} is already in use on {settings.host}: "
            "stop the other process or pass --port (or set REGISTRY_PORT)"
        )
    if exc.errno == errno.EACCES:
        return StartupError(
            f"not allowed to listen on port {settings.port}: "
            "pick a port above 1023 with --port or run with the needed privilege"
        )
    return StartupError(
        f"cannot listen on {settings.host}:{settings.port}: {exc.strerror or exc}: "
        "check --host names an address of this machine"
    )


#: Descriptors kept for what is not a client's connection (database files, sockets, logs).
RESERVED_FILES = 32


def raise_open_files_limit() -> int:
    """Raise the soft limit on open files to the hard one (a registry holds a
    connection per watcher and per long-poll, far past the usual 1,024), and
    return the limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    # An unlimited hard limit cannot be a soft one on Linux (nr_open caps it).
    target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
    if soft == resource.RLIM_INFINITY:
        return target
    if soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError) as exc:
            log.warning(
                "could not raise the open-files limit", extra={"soft": soft, "hard": hard, "why": str(exc)}
            )
            return soft
    return max(soft, target)


async def serve(settings: Settings, *, clock: Clock | None = None) -> None:
    """Serve until SIGTERM or SIGINT, then drain and return."""
    open_files = raise_open_files_limit()
    # The prober's connections come out of the same descriptors as clients'
    # (see ``held_elsewhere`` below): those it may keep idle, at most half.
    probe_idle = min(settings.probe_idle_connections, open_files // 2)
    settings = settings.model_copy(update={"probe_idle_connections": probe_idle})
    app = create_app(settings, clock=clock)
    access_log = logging.getLogger("aiohttp.access") if settings.log_level == "debug" else None
    reserve = min(1.0, settings.shutdown_timeout / 4)  # for aiohttp's own wait, step 4
    runner = web.AppRunner(
        app,
        handle_signals=False,
        shutdown_timeout=reserve,
        access_log=access_log,
        keepalive_timeout=settings.idle_timeout,  # aiohttp starts it at connect, too
        **SERVER_OPTIONS,
    )
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    collector = Collector()
    try:
        await runner.setup()
        assert runner.server is not None
        app[DISCONNECTS].attach(runner.server)
        connections = app[CONNECTIONS]
        connections.total = max(1, open_files - RESERVED_FILES)
        connections.held_elsewhere = app[PROBER].descriptors
        connections.attach(runner.server)
        loop.set_exception_handler(_accept_failures(connections))
        site = web.TCPSite(runner, settings.host, settings.port, ssl_context=_tls(settings))
        try:
            await site.start()
        except OSError as exc:
            raise _bind_error(exc, settings) from None
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        # Everything loaded so far lives as long as the process, and so will most
        # of what survives each full collection: keep the collector off it.
        collector.start()
        host, port = runner.addresses[0][:2]  # the real port when 0 was asked
        shown = f"[{host}]" if ":" in host else host
        log.info(
            "serving",
            extra={
                "url": f"{'https' if settings.tls_cert else 'http'}://{shown}:{port}",
                "auth": "on" if settings.auth else "off",
                "storage": redact(settings.storage),
                "loop": _loop_name(loop),
                # Each connection holds a descriptor; a few are kept for storage and logs.
                "connections_max": connections.total,
            },
        )
        await stop.wait()
        lifecycle = app[LIFECYCLE]
        lifecycle.draining = True
        app[REGISTRY].feed.close()  # watchers and long-polls answer now, not at the timeout
        log.info(
            "shutting down", extra={"in_flight": lifecycle.in_flight, "timeout_s": settings.shutdown_timeout}
        )
        if not await lifecycle.wait_idle(settings.shutdown_timeout - reserve):
            log.warning(
                "requests still running at the shutdown timeout", extra={"in_flight": lifecycle.in_flight}
            )
    finally:
        await collector.stop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(signum)
        await runner.cleanup()
    log.info("stopped")


def _accept_failures(
    connections: ConnectionCap,
) -> Callable[[asyncio.AbstractEventLoop, dict[str, Any]], None]:
    """An event-loop exception handler that counts and logs (once a minute) the
    connections the loop could not accept for lack of descriptors, instead of
    a traceback each; anything else goes to the default handler."""

    def handle(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        exc = context.get("exception")
        if isinstance(exc, OSError) and exc.errno in (errno.EMFILE, errno.ENFILE):
            connections.out_of_descriptors()
        else:
            loop.default_exception_handler(context)

    return handle


def _tls(settings: Settings) -> ssl.SSLContext | None:
    """The server's TLS context (1.2 or newer), requiring client certificates
    with ``--tls-client-ca``; ``None`` without ``--tls-cert``."""
    if settings.tls_cert is None:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(settings.tls_cert, settings.tls_key)
        if settings.tls_client_ca is not None:
            context.load_verify_locations(settings.tls_client_ca)
            context.verify_mode = ssl.CERT_REQUIRED
    except (OSError, ssl.SSLError) as exc:
        raise StartupError(
            f"cannot use the TLS files ({exc}): check that --tls-cert and --tls-key are a PEM "
            "certificate chain and its private key, and --tls-client-ca a PEM CA bundle"
        ) from None
    return context


def _loop_name(loop: asyncio.AbstractEventLoop) -> str:
    return "uvloop" if type(loop).__module__.startswith("uvloop") else "asyncio"
