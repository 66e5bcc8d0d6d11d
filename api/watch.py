"""``GET /api/v1/watch``: the registry's changes over a WebSocket.

The protocol, one JSON text message each:

- first ``{"type": "snapshot", "revision": R, "instances": [...]}``: the
  matching instances as of revision R;
- or, with ``?since=S``, the events after S, one by one; or, when the history
  no longer reaches back to S, ``{"type": "resync", ...}`` shaped like a
  snapshot;
- then one ``{"type": <change>, "revision": r, "instance": {...}}`` per change,
  with strictly increasing revisions (see ``registry.events.Change``).

Close codes: 1008 for bad parameters (the reason says which), 1013 for a
watcher that fell more than ``--watch-queue`` events behind, 1001 when the
registry shuts down. The server pings every ``--watch-ping-interval`` seconds
and closes a connection whose pong does not come back.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from aiohttp import WSCloseCode, WSMsgType, web

from model_registry import Registry
from model_registry.events import Closed, Event, Overflow, Watcher

from .hosts import require_origin
from .keys import LIFECYCLE, SETTINGS
from .metrics import METRICS, Metrics
from .params import model_name_param, revision_param
from .problem import ApiError
from .responses import SERVER, dumps
from .views import BUSY_RETRY_AFTER_S

__all__ = ["watch"]

#: A close reason must fit a control frame (125 bytes, 2 of them the code).
_MAX_REASON = 123

#: Seconds a closing handshake may take before the connection is dropped
#: (a stalled client cannot hold a watcher's memory for longer).
_CLOSE_TIMEOUT = 2.0


#: A watcher whose socket holds more than this unsent is written to by its sender
#: (which waits for the socket to drain), not at once by the feed.
_DIRECT_LIMIT = 64 * 1024


async def watch(request: web.Request, registry: Registry) -> web.StreamResponse:
    settings = request.app[SETTINGS]
    # Uncompressed: events are small, and a frame is then the same bytes for every
    # watcher, written by the feed itself (``_Session.sink``).
    ws = web.WebSocketResponse(heartbeat=settings.watch_ping_interval, timeout=_CLOSE_TIMEOUT, compress=False)
    ws.headers.update(SERVER)
    if not ws.can_prepare(request).ok:
        raise ApiError(
            400,
            "websocket_required",
            "GET /api/v1/watch is a WebSocket: connect with a WebSocket client, "
            "or long-poll GET /api/v1/instances?index=N&wait=30s",
        )
    require_origin(request.app[LIFECYCLE].hosts, request, "watch this registry")
    if registry.feed.watchers >= settings.max_watchers:
        raise ApiError(
            503,
            "too_many_watchers",
            f"{settings.max_watchers} watchers are already open (--max-watchers): retry later",
            headers={"Retry-After": str(BUSY_RETRY_AFTER_S)},
        )
    await ws.prepare(request)
    try:
        model_name = model_name_param(request, required=False)
        since = revision_param(request, "since")
    except ApiError as exc:
        await _close(ws, WSCloseCode.POLICY_VIOLATION, exc.detail)
        return ws
    with registry.feed.watch(model_name, settings.watch_queue) as watcher:
        session = _Session(ws, registry, watcher, request.app[METRICS], request.transport)
        sender = asyncio.create_task(session.run(since))
        # A sender stuck writing to a stalled socket never sees the overflow itself.
        watcher.on_overflow = lambda: None if session.closing else sender.cancel()
        try:
            async for _ in ws:  # reading lets aiohttp answer pings and see the client close
                pass
        finally:
            if not session.closing:
                sender.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sender
    return ws


class _Session:
    """One watcher's connection. Its sender task writes the snapshot (or the history),
    then whatever the watcher queues; once started, an event that finds nothing
    queued before it is written by the feed at once (``sink``): with ten thousand
    watchers, a change wakes no task at all, only writes one ready frame to each."""

    def __init__(
        self,
        ws: web.WebSocketResponse,
        registry: Registry,
        watcher: Watcher,
        metrics: Metrics,
        transport: asyncio.Transport | None,
    ) -> None:
        self.ws, self.registry, self.watcher, self.metrics = ws, registry, watcher, metrics
        self.transport = transport
        self.closing = False
        self.last = 0

    def sink(self, event: Event) -> bool:
        if event.revision <= self.last:
            return True  # in the snapshot or the history already
        transport = self.transport
        if (
            self.closing
            or transport is None
            or transport.is_closing()
            or transport.get_write_buffer_size() > _DIRECT_LIMIT
        ):
            return False  # the sender writes it, waiting for the socket to drain
        transport.write(event.encoded(_encode)[1])
        self.last = event.revision
        self.metrics.events_sent += 1
        return True

    async def run(self, since: int | None) -> None:
        try:
            await self._start(since)
            # From here every event is sent whole, in order, by the sender or the
            # sink: a frame is written at once, with no await between its parts.
            self.watcher.sink = self.sink
            while True:
                event = await self.watcher.next()
                if event.revision > self.last:  # else already in the snapshot's or the history's range
                    await self._send_event(event)
        except Overflow:
            await self._overflowed()
        except asyncio.CancelledError:
            if not self.watcher.overflowed:
                raise  # the client went away
            await self._overflowed()
        except Closed:
            if self.watcher.missed:
                await self._close(
                    WSCloseCode.TRY_AGAIN_LATER, "changes may have been missed; reconnect to resync"
                )
            else:
                await self._close(
                    WSCloseCode.GOING_AWAY, f"registry shutting down; reconnect with since={self.last}"
                )
        except ConnectionResetError:
            pass  # the client went away mid-write

    async def _start(self, since: int | None) -> None:
        """The snapshot, or the history after ``since``, or a resync."""
        feed = self.registry.feed
        self.last = feed.revision  # before the read: a change during it comes again as an event
        history = None if since is None else feed.since(since, self.watcher.model_name)
        if history is None:
            instances = await self.registry.instances(self.watcher.model_name)
            kind = "snapshot" if since is None else "resync"
            await self._send({"type": kind, "revision": self.last, "instances": instances})
            return
        self.last = since  # type: ignore[assignment]
        for event in history:
            await self._send_event(event)

    async def _send_event(self, event: Event) -> None:
        # Encoded once for every watcher of it (``Event.encoded``). The frame is
        # written before send_frame first awaits (draining), so it is sent: count it.
        self.last = event.revision
        self.metrics.events_sent += 1
        await self.ws.send_frame(event.encoded(_encode)[0], WSMsgType.TEXT)

    async def _send(self, data: dict[str, Any]) -> None:
        await self.ws.send_str(dumps(data).decode())

    async def _overflowed(self) -> None:
        self.metrics.watchers_cut_off += 1
        reason = f"too slow: over {self.watcher.limit} events behind; reconnect with since={self.last}"
        await self._close(WSCloseCode.TRY_AGAIN_LATER, reason)

    async def _close(self, code: int, reason: str) -> None:
        self.closing = True
        await _close(self.ws, code, reason, self.transport)


def _encode(event: Event) -> tuple[bytes, bytes]:
    """The event's JSON, and the whole WebSocket frame that carries it from a server
    (RFC 6455: FIN and text, its length, unmasked: the same for every watcher)."""
    payload = dumps({"type": event.type.value, "revision": event.revision, "instance": event.instance})
    size = len(payload)
    if size < 126:
        header = bytes((0x81, size))
    elif size < 1 << 16:
        header = bytes((0x81, 126)) + size.to_bytes(2, "big")
    else:
        header = bytes((0x81, 127)) + size.to_bytes(8, "big")
    return payload, header + payload


async def _close(
    ws: web.WebSocketResponse, code: int, reason: str, transport: asyncio.Transport | None = None
) -> None:
    """Close with ``code`` and ``reason``; a client that does not read (so the close
    cannot even be written) is dropped after ``_CLOSE_TIMEOUT``, with what it holds."""
    try:
        async with asyncio.timeout(_CLOSE_TIMEOUT):
            await ws.close(code=code, message=reason.encode()[:_MAX_REASON])
    except (TimeoutError, ConnectionResetError):
        if transport is not None:
            transport.abort()
