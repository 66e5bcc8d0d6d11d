"""``postgresql+asyncpg://...``: one database shared by several replicas.

Reads go to the database, so every replica sees every other's registrations at
once. Heartbeats are the exception that makes it fast: a beat for an instance
this replica already knows to be healthy changes no state, so it is answered
from the replica's own copy of the record and written behind, with the other
pending beats, in one statement at most ``flush_interval`` seconds later. A beat
for an instance this replica has not seen, or last saw unhealthy (a health
transition), is written before it is answered; so is every beat while the
database is failing, so that beats fail (503) rather than pile up unwritten.

What that means across replicas: another replica sees a heartbeat's new
timestamp and load within ``flush_interval``; a crash loses at most that much
of them, never a registration or a transition. The flush is an upsert, so a
beat for an instance purged meanwhile registers it again, as any heartbeat of
an unknown instance does.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Iterable, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import Integer, bindparam, case, func, text, true, update

from model_registry_sdk.record import InstanceKey, ModelInstance

from .base import Census, Edit
from .errors import StorageUnavailable
from .index import OneOrMore, add_key, keys_of, remove_key
from .interning import clone, collector_paused, compact
from .notify import CHANNEL, Notifier, Remote
from .options import PoolOptions
from .schema import SELECT_ALL, instances
from .shares import ProbeShares
from .sql import SQLStorage
from .tasks import cancelled

__all__ = ["PostgresStorage"]

log = logging.getLogger(__name__)

FLUSH_INTERVAL = 1.0
_CHUNK = 1000
_LOAD_CHUNK = 20_000  # rows read at a time at start-up
_NOTIFY = text("SELECT pg_notify(:channel, :payload)")

# The row of one instance, by its key's bound parameters.
_BY_KEY = (
    (instances.c.model_name == bindparam("b_model"))
    & (instances.c.host == bindparam("b_host"))
    & (instances.c.port == bindparam("b_port"))
)

# Write-behind beats update what is there and create nothing: an instance
# deleted meanwhile (purged or evicted, perhaps through another replica) stays
# deleted, and its worker's next beat, which this replica then takes to the
# database, registers it again in the open (logged, announced to watchers).
_FLUSH = (
    update(instances)
    .where(_BY_KEY)
    .values(
        last_heartbeat=bindparam("b_heard", type_=instances.c.last_heartbeat.type),
        queue_length=func.coalesce(bindparam("b_load", type_=Integer), instances.c.queue_length),
        waiting=bindparam("b_waiting", type_=Integer),
        running=bindparam("b_running", type_=Integer),
        kv_cache_usage=bindparam("b_kv", type_=instances.c.kv_cache_usage.type),
        load_at=bindparam("b_load_at", type_=instances.c.load_at.type),
        healthy=true(),
        unhealthy_since=None,
        # A beat revives an unhealthy row (and so clears why it was); a healthy
        # one keeps its reason (a cooldown's).
        state_reason=case((instances.c.healthy, instances.c.state_reason), else_=None),
    )
)


# An engine's load, scraped or reported: only the load, never the health.
_LOAD_FLUSH = (
    update(instances)
    .where(_BY_KEY)
    .values(
        waiting=bindparam("b_waiting", type_=Integer),
        running=bindparam("b_running", type_=Integer),
        kv_cache_usage=bindparam("b_kv", type_=instances.c.kv_cache_usage.type),
        load_at=bindparam("b_load_at", type_=instances.c.load_at.type),
    )
)


def _beat_row(record: ModelInstance) -> dict:
    return {
        "b_model": record.model_name,
        "b_host": record.host,
        "b_port": record.port,
        "b_heard": record.last_heartbeat,
        "b_load": record.queue_length,
        "b_waiting": record.waiting,
        "b_running": record.running,
        "b_kv": record.kv_cache_usage,
        "b_load_at": record.load_at,
    }


class PostgresStorage(SQLStorage):
    def __init__(
        self,
        url: str,
        *,
        migrate: bool = True,
        pool: PoolOptions | None = None,
        flush_interval: float = FLUSH_INTERVAL,
    ) -> None:
        super().__init__(url, migrate=migrate, pool=pool)
        self.flush_interval = flush_interval
        self._known: dict[InstanceKey, ModelInstance] = {}  # this replica's copies
        # (host, port) -> the key or keys known there (``add_key``): FastChat's beats name an address.
        self._addresses: dict[tuple[str, int], OneOrMore] = {}
        self._per_model: dict[str, int] = {}  # model -> its records in ``_known``
        self._pending: dict[InstanceKey, ModelInstance] = {}  # beats not yet written
        self._loads: dict[InstanceKey, ModelInstance] = {}  # engine loads not yet written
        self._flushes = self._flush_failures = 0  # for the metrics
        self._flush_seconds = 0.0
        self._flusher: asyncio.Task[None] | None = None
        # Set when a write failed: until one succeeds, beats are written before
        # they are answered (so they fail, 503, while the database is away), and
        # a crash still loses no more than ``flush_interval`` of them.
        self._degraded = False
        self._notifier: Notifier | None = None
        self._shares: ProbeShares | None = None
        self._subscriber: Remote | None = None

    async def _open(self) -> None:
        await super()._open()
        await self._load()
        self._flusher = asyncio.create_task(self._flush_forever(), name="postgres-heartbeats")
        assert self._engine is not None
        dsn = self._engine.url.set(drivername="postgresql").render_as_string(hide_password=False)
        self._notifier = Notifier(dsn, self._remote, self._notify)
        self._notifier.start()
        try:  # so that changes made right after the start reach this replica
            async with asyncio.timeout(self._pool.connect_timeout):
                await self._notifier.listening.wait()
        except TimeoutError:
            log.warning("not yet listening for other replicas' changes; will keep trying")

    async def _load(self) -> None:
        """Know the fleet from the start, so that its beats take the fast path at
        once rather than after a first, written, beat each: every row, read in
        chunks through a cursor while the last is filed (a million in a few
        seconds: ``docs/scale.md``). The driver decodes the columns (JSON too:
        SQLAlchemy gives it the codec), so a row is the record's fields in order."""
        async with self._guard("load the instances", bounded=False), self._engine.connect() as conn:  # type: ignore[union-attr]
            raw = (await conn.get_raw_connection()).driver_connection
            async with raw.transaction(isolation="repeatable_read", readonly=True):
                cursor = await raw.cursor(SELECT_ALL)
                with collector_paused():
                    await self._read_ahead(lambda: cursor.fetch(_LOAD_CHUNK), self._file_rows)

    def _file_rows(self, rows: Sequence[Any]) -> None:
        file = self._file
        for row in rows:
            file(compact(ModelInstance(*row)))

    def announce(self, change: str, record: ModelInstance) -> None:
        if self._notifier is not None:
            self._notifier.announce(change, record)

    def subscribe(self, callback: Remote | None) -> None:
        self._subscriber = callback

    async def _notify(self, payloads: list[str]) -> None:
        async with self._write("announce changes to the other replicas") as conn:
            for payload in payloads:
                await conn.execute(_NOTIFY, {"channel": CHANNEL, "payload": payload})

    def _remote(self, change: str, key: InstanceKey | None, record: ModelInstance | None) -> None:
        if key is None:
            # Changes may have been missed: what this replica knows may be stale,
            # so it knows nothing until the database tells it again (beats wait
            # for a write each until then; those pending are still written).
            self._known.clear()
            self._addresses.clear()
            self._per_model.clear()
        elif change in ("evicted", "purged", "deregistered"):
            # Gone, or unhealthy: either way this replica's next beat of it must
            # ask the database (and re-register it if it was purged).
            self._forget(key)
        elif record is not None:
            self._remember(record)
        if self._subscriber is not None:
            self._subscriber(change, key, record)

    async def _close(self) -> None:
        if self._shares is not None:
            await self._shares.stop()
        if self._notifier is not None:
            await self._notifier.stop()
        await cancelled([self._flusher])
        try:
            await self.flush()
        except Exception as exc:  # closing anyway; say what was lost
            log.warning("could not write %d pending heartbeats on close: %s", len(self._pending), exc)
        await super()._close()

    async def probe_shares(self) -> Callable[[InstanceKey], bool] | None:
        if self._shares is None:
            assert self._engine is not None
            dsn = self._engine.url.set(drivername="postgresql").render_as_string(hide_password=False)
            self._shares = ProbeShares(dsn, connect_timeout=self._pool.connect_timeout)
            self._shares.start()
            with contextlib.suppress(TimeoutError):  # probing none until the first round
                async with asyncio.timeout(self._pool.connect_timeout):
                    await self._shares.ready.wait()
        return self._shares.owns

    def _remember(self, record: ModelInstance | None) -> ModelInstance | None:
        if record is not None:
            self._file(clone(record))
        return record

    def _file(self, record: ModelInstance) -> None:
        """Keep ``record`` as this replica's copy (it is not copied again)."""
        key = record.key
        if key not in self._known:
            add_key(self._addresses, (key.host, key.port), key)
            self._per_model[key.model_name] = self._per_model.get(key.model_name, 0) + 1
        self._known[key] = record

    def _forget(self, key: InstanceKey) -> None:
        self._pending.pop(key, None)
        self._loads.pop(key, None)
        if self._known.pop(key, None) is not None:
            remove_key(self._addresses, (key.host, key.port), key)
            left = self._per_model[key.model_name] - 1
            if left:
                self._per_model[key.model_name] = left
            else:
                del self._per_model[key.model_name]

    def sizes(self, model_name: str) -> tuple[int, int]:
        return len(self._known), self._per_model.get(model_name, 0)

    def records_now(self) -> Iterable[ModelInstance] | None:
        # What this replica knows; right after a missed notification, nothing: ask the database.
        return self._known.values() if self._known else None

    def at_now(self, host: str, port: int) -> list[ModelInstance] | None:
        # What this replica knows there, when it knows anything: a model another
        # replica added a moment ago is beaten by the worker's next beat.
        there = self._addresses.get((host, port))
        if there is None or self._degraded:
            return None
        return [self._known[k] for k in keys_of(there)]  # this replica's copies: read at once, not kept

    # -- heartbeats: behind, when they change nothing ---------------------------

    def beat(self, key: InstanceKey, now: datetime, queue_length: int | None) -> ModelInstance | None:
        known = self._known.get(key)
        if known is None or not known.healthy or self._degraded:
            return None
        known.last_heartbeat = now
        if queue_length is not None:
            known.queue_length = queue_length
        self._pending[key] = known
        return clone(known)

    async def touch(
        self, key: InstanceKey, now: datetime, queue_length: int | None
    ) -> tuple[ModelInstance, bool] | None:
        beaten = self.beat(key, now, queue_length)
        if beaten is not None:
            return beaten, False
        try:
            touched = await super().touch(key, now, queue_length)
        except StorageUnavailable:
            self._degraded = True
            raise
        self._degraded = False
        if touched is not None:
            self._remember(touched[0])
        return touched

    async def flush(self) -> int:
        """Write the pending heartbeats now; returns how many."""
        pending, self._pending = self._pending, {}
        loads, self._loads = self._loads, {}
        if not pending and not loads:
            return 0
        records = list(pending.values())
        loaded = [r for key, r in loads.items() if key not in pending]
        started = time.perf_counter()
        try:
            async with self._write("write heartbeats") as conn:
                for statement, rows in ((_FLUSH, records), (_LOAD_FLUSH, loaded)):
                    for start in range(0, len(rows), _CHUNK):
                        await conn.execute(statement, [_beat_row(r) for r in rows[start : start + _CHUNK]])
        except BaseException:
            self._flush_failures += 1
            self._degraded = True
            for key, record in pending.items():  # keep them, unless a newer beat came meanwhile
                self._pending.setdefault(key, record)
            for key, record in loads.items():
                self._loads.setdefault(key, record)
            raise
        self._degraded = False
        self._flushes += 1
        self._flush_seconds += time.perf_counter() - started
        return len(records)

    def stats(self) -> dict[str, Any]:
        return {
            **super().stats(),
            "pending": len(self._pending),
            "flushes": self._flushes,
            "flush_failures": self._flush_failures,
            "flush_seconds": self._flush_seconds,
        }

    async def _flush_forever(self) -> None:
        while True:
            await asyncio.sleep(self.flush_interval)
            try:
                await self.flush()
            except Exception as exc:
                log.warning("could not write heartbeats; will retry: %s", exc)

    # -- everything else: through the database, remembering what it says ---------

    async def upsert(self, record: ModelInstance) -> tuple[ModelInstance, bool]:
        stored, created = await super().upsert(record)
        self._remember(stored)
        return stored, created

    async def upsert_many(self, records: Sequence[ModelInstance]) -> list[tuple[ModelInstance, bool]]:
        results = await super().upsert_many(records)
        for stored, _ in results:
            self._remember(stored)
        return results

    async def insert(self, record: ModelInstance) -> ModelInstance | None:
        return self._remember(await super().insert(record))

    async def override(self, key: InstanceKey, change: Edit) -> ModelInstance | None:
        return self._remember(await super().override(key, change))

    async def set_ready(self, key: InstanceKey, ready: bool) -> ModelInstance | None:
        return self._remember(await super().set_ready(key, ready))

    async def set_cooldown(
        self, key: InstanceKey, until: datetime | None, reason: str | None = None
    ) -> ModelInstance | None:
        return self._remember(await super().set_cooldown(key, until, reason))

    async def mark_unhealthy(
        self, key: InstanceKey, now: datetime, reason: str | None = None
    ) -> ModelInstance | None:
        if key in self._pending:  # its last beat (time, load) is written first, not lost
            await self.flush()
        return self._remember(await super().mark_unhealthy(key, now, reason))

    async def pass_check(self, key: InstanceKey, heard_after: datetime) -> ModelInstance | None:
        return self._remember(await super().pass_check(key, heard_after))

    def set_load(
        self, key: InstanceKey, waiting: int | None, running: int | None, kv: float | None, at: datetime
    ) -> ModelInstance | None:
        known = self._known.get(key)
        if known is None:
            return None
        known.waiting, known.running, known.kv_cache_usage, known.load_at = waiting, running, kv, at
        self._loads[key] = known  # written behind; a pending beat of it carries its load too
        return clone(known)

    async def delete(self, key: InstanceKey) -> ModelInstance | None:
        self._forget(key)
        return await super().delete(key)

    async def expire(self, cutoff: datetime, now: datetime, reason: str | None = None) -> list[ModelInstance]:
        await self.flush()  # judge this replica's beats by what they are, not by what is written
        expired = await super().expire(cutoff, now, reason)
        for record in expired:
            self._remember(record)
        return expired

    async def census(self, expire_cutoff: datetime, evict_cutoff: datetime) -> Census:
        await self.flush()  # count this replica's beats as they are
        return await super().census(expire_cutoff, evict_cutoff)

    async def evict(self, cutoff: datetime) -> list[ModelInstance]:
        evicted = await super().evict(cutoff)
        for record in evicted:
            self._forget(record.key)
        return evicted

    async def get(self, key: InstanceKey) -> ModelInstance | None:
        return self._remember(await super().get(key))
