"""Changes between replicas over PostgreSQL's LISTEN/NOTIFY.

Each replica announces the changes it makes (``announce`` only queues them; a
sender task writes them in order, batched, one ``pg_notify`` per message) and
listens on one dedicated connection for the others'. A message carries the
changed records themselves when they fit in a notification (PostgreSQL allows
some 8,000 bytes); a record too large for one travels by key, and the receiver
reads it from the database.

Delivery is at most once: a listener that loses its connection reconnects, and
what was announced meanwhile is not replayed. It says so instead: once it
listens again it hands ``on_remote`` the change ``"resync"`` (no key, no
record), and the registry sends its watchers to a fresh snapshot.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import Callable
from datetime import datetime
from typing import Any

import asyncpg
import orjson

from model_registry_sdk.record import InstanceKey, ModelInstance

from .tasks import cancelled

__all__ = ["CHANNEL", "RESYNC", "Notifier", "Remote"]

log = logging.getLogger(__name__)

CHANNEL = "model_registry_changes"
_MAX_PAYLOAD = 7900  # bytes; PostgreSQL's limit is 8000
_DATETIMES = ("last_heartbeat", "registered_at", "unhealthy_since", "cooldown_until", "load_at")
_RECONNECT_DELAY = 1.0

#: What a listener is handed: the change, the record's key, and the record when it came
#: along; or ``("resync", None, None)`` when changes may have been missed.
Remote = Callable[[str, InstanceKey | None, ModelInstance | None], None]
RESYNC = "resync"


def _encode(change: str, record: ModelInstance) -> dict[str, Any]:
    fields = dict(record.__dict__)
    for name in _DATETIMES:
        if fields[name] is not None:
            fields[name] = fields[name].isoformat()
    return {"c": change, "r": fields}


def _decode(item: dict[str, Any]) -> tuple[str, InstanceKey, ModelInstance | None]:
    if "k" in item:
        return item["c"], InstanceKey(*item["k"]), None
    fields = item["r"]
    for name in _DATETIMES:
        if fields[name] is not None:
            fields[name] = datetime.fromisoformat(fields[name])
    record = ModelInstance(**fields)
    return item["c"], record.key, record


class Notifier:
    def __init__(self, dsn: str, on_remote: Remote, send: Callable[[list[str]], Any]) -> None:
        """``send`` writes payloads with ``pg_notify`` through the pool (in order);
        ``on_remote`` receives every change announced by another process."""
        self.origin = uuid.uuid4().hex[:12]
        self._dsn, self._on_remote, self._send = dsn, on_remote, send
        self._outbox: list[dict[str, Any]] = []
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self.listening = asyncio.Event()

    def start(self) -> None:
        self._tasks = [
            asyncio.create_task(self._send_forever(), name="notify-send"),
            asyncio.create_task(self._listen_forever(), name="notify-listen"),
        ]

    async def stop(self) -> None:
        await cancelled(self._tasks)
        if self._outbox:
            with contextlib.suppress(Exception):
                await self._flush()

    def announce(self, change: str, record: ModelInstance) -> None:
        self._outbox.append(_encode(change, record))
        self._wake.set()

    # -- sending -----------------------------------------------------------------

    async def _send_forever(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            try:
                await self._flush()
            except Exception as exc:
                log.warning("could not tell the other replicas about %d changes: %s", len(self._outbox), exc)
                self._outbox.clear()  # at most once: watchers resync on resume
                await asyncio.sleep(_RECONNECT_DELAY)

    async def _flush(self) -> None:
        items, self._outbox = self._outbox, []
        if items:
            await self._send(list(self._payloads(items)))

    def _payloads(self, items: list[dict[str, Any]]):
        batch: list[bytes] = []
        size = 0
        for item in items:
            encoded = orjson.dumps(item)
            if len(encoded) > _MAX_PAYLOAD - 100:
                record = item["r"]
                key = [record["model_name"], record["host"], record["port"]]
                encoded = orjson.dumps({"c": item["c"], "k": key})
            if batch and size + len(encoded) > _MAX_PAYLOAD - 100:
                yield self._message(batch)
                batch, size = [], 0
            batch.append(encoded)
            size += len(encoded) + 1
        if batch:
            yield self._message(batch)

    def _message(self, batch: list[bytes]) -> str:
        return f'{{"o":"{self.origin}","e":[{",".join(b.decode() for b in batch)}]}}'

    # -- listening ---------------------------------------------------------------

    async def _listen_forever(self) -> None:
        listened = False
        while True:
            try:
                conn = await asyncpg.connect(self._dsn)
            except (OSError, asyncpg.PostgresError) as exc:
                log.warning("cannot listen for other replicas' changes; retrying: %s", exc)
                await asyncio.sleep(_RECONNECT_DELAY)
                continue
            lost = asyncio.Event()
            conn.add_termination_listener(lambda _, lost=lost: lost.set())
            try:
                await conn.add_listener(CHANNEL, self._received)
                self.listening.set()
                if listened:  # what the others announced while we were away is lost
                    self._on_remote(RESYNC, None, None)
                listened = True
                await lost.wait()
                log.warning("lost the connection that listens for other replicas' changes; reconnecting")
            finally:
                self.listening.clear()
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(conn.close(), 2)

    def _received(self, _conn: Any, _pid: int, _channel: str, payload: str) -> None:
        try:
            message = orjson.loads(payload)
            if message["o"] == self.origin:
                return
            for item in message["e"]:
                self._on_remote(*_decode(item))
        except Exception:
            log.exception("could not read a change from another replica")
