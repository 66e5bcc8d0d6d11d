"""``watch``: the registry's changes as one endless async iterator.

    async with contextlib.aclosing(client.watch("glm-4@llm")) as events:
        async for event in events:
            if event.instances is not None:   # "snapshot" or "resync": start over
                ...
            else:                             # one change to event.instance
                ...

The iterator keeps a WebSocket open to ``GET /api/v1/watch`` and, whenever it
drops, opens another and resumes after the last revision it yielded, so the
consumer sees every change exactly once, or a ``resync`` (a snapshot) when the
registry no longer has the changes it missed (it restarted, or too many
happened meanwhile). Per connection, in order:

1. connect to the client's current URL with ``since`` = the last revision
   seen (none at first: the registry answers with a ``snapshot``);
2. yield every message as a ``WatchEvent``;
3. when the connection ends: closed with 1008 (bad parameters), raise
   ``InvalidRequest``, as a 422 would; closed because the client was,
   raise ``ClientClosed``; otherwise connect again. (A 4xx answer to the
   upgrade, from a registry without ``/api/v1/watch``, raises its
   ``RegistryClientError`` at once, as any 4xx does.)

After a connection that delivered something the next one is opened at once,
on the same URL, unless it ended with 1001 (that registry is shutting down).
A connection that failed or delivered nothing moves to the next URL: at once
if that one was not tried since the last delivery, else after a wait that
grows as the client's ``Retry`` says (exponential backoff, full jitter, capped
at ``max_backoff``). The iterator never gives up by itself: ``attempts`` and
``deadline`` do not apply to it.

Leaving the loop with ``break`` closes the WebSocket when the generator is
finalised; ``contextlib.aclosing`` (or ``await events.aclose()``) closes it
at once.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Any

import orjson
from aiohttp import WSCloseCode, WSMsgType

from .errors import ClientClosed, InvalidRequest, RegistryUnavailable
from .record import ModelInstance, from_wire
from .transport import Transport

__all__ = ["RESYNC", "SNAPSHOT", "WatchEvent", "watch"]

log = logging.getLogger("model_registry_sdk.watch")

SNAPSHOT = "snapshot"
RESYNC = "resync"

_PATH = "/api/v1/watch"

#: Seconds between the client's own pings: a registry host that vanished
#: without closing the connection is noticed within 1.5 times this.
PING_INTERVAL = 15.0

_ENDED = (WSMsgType.CLOSE, WSMsgType.CLOSING, WSMsgType.CLOSED, WSMsgType.ERROR)


@dataclass(frozen=True, slots=True)
class WatchEvent:
    """One message of the watch.

    ``type`` is ``"snapshot"`` or ``"resync"`` with ``instances`` (replace
    what you know), or a change (``record.Change``: registered,
    updated, unhealthy, healthy, enabled, disabled, cooldown, restored,
    deregistered, evicted) with the ``instance`` as it is after it.
    """

    type: str
    revision: int
    instance: ModelInstance | None = None
    instances: list[ModelInstance] | None = None


def event_from(message: Mapping[str, Any]) -> WatchEvent:
    if "instances" in message:
        instances = [from_wire(item) for item in message["instances"]]
        return WatchEvent(message["type"], message["revision"], instances=instances)
    return WatchEvent(message["type"], message["revision"], instance=from_wire(message["instance"]))


async def watch(
    transport: Transport, model_name: str | None = None, *, ping_interval: float = PING_INTERVAL
) -> AsyncIterator[WatchEvent]:
    """The changes of ``model_name`` (or of every model); see the module's docstring."""
    since: int | None = None
    tried: set[str] = set()  # URLs tried since something was last delivered
    retries = 0  # backoff waits since then
    while True:
        url = transport.current_url
        tried.add(url)
        delivered = False
        try:
            ws = await transport.websocket(_PATH, _params(model_name, since), heartbeat=ping_interval)
        except RegistryUnavailable as exc:
            log.debug("watch: %s", exc)
        else:
            reason = ""
            async with ws:  # closes the socket however the block is left, a consumer's break included
                while True:
                    message = await ws.receive()
                    if message.type is WSMsgType.TEXT:
                        event = event_from(orjson.loads(message.data))
                        since, delivered, tried, retries = event.revision, True, {url}, 0
                        yield event
                    elif message.type in _ENDED:
                        reason = message.extra if isinstance(message.extra, str) else ""
                        break
            if transport.closed:
                raise ClientClosed()
            if ws.close_code == WSCloseCode.POLICY_VIOLATION:
                # The WebSocket form of a 422: the reason names the parameter first.
                field = reason.split(":", 1)[0] if ":" in reason else None
                raise InvalidRequest(422, "invalid_input", reason, field)
            log.info("watch: %s closed the connection (%s %s); reconnecting", url, ws.close_code, reason)
            if ws.close_code == WSCloseCode.GOING_AWAY or not delivered:
                transport.fail_over()
        if not delivered and transport.current_url in tried:
            await transport.pause(transport.retry.delay(retries))
            retries += 1
            if transport.closed:
                raise ClientClosed()


def _params(model_name: str | None, since: int | None) -> dict[str, str]:
    params = {} if model_name is None else {"model_name": model_name}
    if since is not None:
        params["since"] = str(since)
    return params
