"""``sqlite+aiosqlite:///PATH``: served from memory, kept on disk.

One process owns a SQLite file, so its ``InstanceIndex`` can be the truth
every read is served from (no query per read) while a ``Journal`` keeps the
file in step: registrations, deregistrations and health transitions are
committed before the call returns, many callers to a transaction; heartbeats
that change no state are written within ``flush_interval``. At start the whole
file is loaded into the index.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime
from typing import Any

from model_registry_sdk.record import InstanceKey, ModelInstance

from .base import Edit
from .errors import StorageUnavailable, in_our_words
from .index import Each, IndexReads, InstanceIndex, evict_in_slices, expire_in_slices
from .interning import collector_paused
from .journal import Journal, record_of
from .schema import SELECT_ALL
from .sql import BUSY_TIMEOUT_MS, SQLStorage

__all__ = ["SQLiteStorage"]

#: Default bound on the heartbeat timestamps a crash can lose, in seconds.
FLUSH_INTERVAL = 1.0
#: Rows read and filed at a time at start-up: some 20 ms of the loop's time.
_LOAD_CHUNK = 2_000
_COMMIT_CHUNK = 50_000  # rows a sweep commits at a time
#: The share of the records past which an expiry is written as one statement over the
#: table (about 0.2 µs a row of the table, in the database) rather than row by row
#: (some 10 µs a row marked, most of it the interpreter's): a mass failure's.
_EXPIRE_AT_ONCE = 0.02


class SQLiteStorage(IndexReads, SQLStorage):  # reads come from the index, not SQL
    def __init__(self, url: str, *, migrate: bool = True, flush_interval: float = FLUSH_INTERVAL) -> None:
        super().__init__(url, migrate=migrate)
        self.flush_interval = flush_interval
        self._index = InstanceIndex()
        self._journal: Journal | None = None

    async def _open(self) -> None:
        await super()._open()
        await self._load()
        self._index.loaded()
        self._journal = Journal(self._index, self._engine, self.flush_interval)  # type: ignore[arg-type]
        await self._journal.start()

    async def _load(self) -> None:
        """Every row into the index, read here, on the loop's thread, a chunk at a
        time with the loop let run between chunks (nothing is served yet).

        Not through the driver's thread: the reading and the filing are both mostly
        Python's work, so they would take turns at the interpreter anyway, and each
        turn is a hand-over between threads (a million rows: 9.8 s that way, 8.7 s
        this way). A lock held by another process is waited for, as by the driver
        (``busy_timeout``), and then refused."""
        try:
            # The URL's options, as the driver reads them (``?uri=true&mode=ro``, ``?timeout=``).
            args, options = self._engine.dialect.create_connect_args(self._url)  # type: ignore[union-attr]
            connection = sqlite3.connect(*args, **{"timeout": BUSY_TIMEOUT_MS / 1000, **options})
            try:
                cursor = connection.execute(SELECT_ALL)
                file = self._index.load_more
                with collector_paused():
                    while rows := cursor.fetchmany(_LOAD_CHUNK):
                        file(map(record_of, rows))
                        await asyncio.sleep(0)
            finally:
                connection.close()
        except sqlite3.Error as exc:
            raise StorageUnavailable(
                f"sqlite storage failed to load the instances: {in_our_words(exc)}"
            ) from exc

    def stats(self) -> dict[str, Any]:
        stats = super().stats()
        journal = self._journal
        if journal is not None:
            stats.update(
                pending=journal.pending,
                flushes=journal.transactions,
                flush_failures=journal.failures,
                flush_seconds=journal.seconds,
            )
        return stats

    async def _close(self) -> None:
        if self._journal is not None:
            await self._journal.stop()
        await super()._close()

    async def _commit(self, keys: list[InstanceKey], *, marked: bool = False) -> None:
        assert self._journal is not None, "storage is not open"
        async with self._guard("write to the database"):
            await self._journal.now(keys, marked=marked)

    # -- writes: change the index, then make it durable -----------------------

    async def upsert(self, record: ModelInstance) -> tuple[ModelInstance, bool]:
        stored, created = self._index.upsert(record)
        await self._commit([stored.key])
        return stored, created

    async def upsert_many(self, records: Sequence[ModelInstance]) -> list[tuple[ModelInstance, bool]]:
        results = [self._index.upsert(record) for record in records]
        await self._commit([stored.key for stored, _ in results])  # one transaction for all
        return results

    async def override(self, key: InstanceKey, change: Edit) -> ModelInstance | None:
        record = self._index.override(key, change)
        if record is not None:
            await self._commit([key])
        return record

    async def set_ready(self, key: InstanceKey, ready: bool) -> ModelInstance | None:
        record = self._index.set_ready(key, ready)
        if record is not None:
            await self._commit([key])
        return record

    async def overdue_starts(self, now: datetime, default_grace: float) -> list[ModelInstance]:
        return self._index.overdue_starts(now, default_grace)

    async def set_cooldown(
        self, key: InstanceKey, until: datetime | None, reason: str | None = None
    ) -> ModelInstance | None:
        record = self._index.set_cooldown(key, until, reason)
        if record is not None:
            await self._commit([key])
        return record

    async def insert(self, record: ModelInstance) -> ModelInstance | None:
        stored = self._index.insert(record)
        if stored is not None:
            await self._commit([stored.key])
        return stored

    def beat(self, key: InstanceKey, now: datetime, queue_length: int | None) -> ModelInstance | None:
        journal = self._journal
        if journal is None or not journal.healthy:  # beats go through touch, and fail
            return None
        record = self._index.beat(key, now, queue_length)
        if record is not None:
            journal.later(key)  # written within the flush interval
        return record

    async def touch(
        self, key: InstanceKey, now: datetime, queue_length: int | None
    ) -> tuple[ModelInstance, bool] | None:
        touched = self._index.touch(key, now, queue_length)
        if touched is None:
            return None
        record, revived = touched
        if revived or not self._journal.healthy:  # type: ignore[union-attr]
            # A health transition is durable before we answer; and while the
            # file cannot be written, beats fail rather than pile up unwritten.
            await self._commit([key])
        else:
            self._journal.later(key)  # type: ignore[union-attr]
        return record, revived

    async def mark_unhealthy(
        self, key: InstanceKey, now: datetime, reason: str | None = None
    ) -> ModelInstance | None:
        record = self._index.mark_unhealthy(key, now, reason)
        if record is not None:
            await self._commit([key])
        return record

    async def pass_check(self, key: InstanceKey, heard_after: datetime) -> ModelInstance | None:
        record = self._index.pass_check(key, heard_after)
        if record is not None:
            await self._commit([key])
        return record

    def set_load(
        self, key: InstanceKey, waiting: int | None, running: int | None, kv: float | None, at: datetime
    ) -> ModelInstance | None:
        record = self._index.set_load(key, waiting, running, kv, at)
        if record is not None and self._journal is not None:
            self._journal.later(key)
        return record

    async def delete(self, key: InstanceKey) -> ModelInstance | None:
        record = self._index.delete(key)
        if record is not None:
            await self._commit([key])
        return record

    async def expire(self, cutoff: datetime, now: datetime, reason: str | None = None) -> list[ModelInstance]:
        """``expire_in_slices``; when it marked many (``_EXPIRE_AT_ONCE`` of the records),
        written as one statement (``Journal.expired``), otherwise row by row."""
        journal = self._journal
        assert journal is not None, "storage is not open"
        journal.sweeping()
        keys: list[InstanceKey] = []
        try:
            try:
                taken = await expire_in_slices(self._index, cutoff, now, reason, keys)
            except BaseException:
                journal.behind(keys)  # marked so far: written whole
                raise
            if len(taken) < _EXPIRE_AT_ONCE * len(self._index):
                await self._commit_in_chunks(keys, marked=True)
            elif taken:
                async with self._guard("write to the database"):
                    await journal.expired(cutoff, now, reason)
        finally:
            journal.swept()
        return taken

    async def evict(self, cutoff: datetime) -> list[ModelInstance]:
        return await self._swept(lambda each: evict_in_slices(self._index, cutoff, each), False)

    async def _swept(
        self, sweep: Callable[[Each], Awaitable[list[ModelInstance]]], marked: bool
    ) -> list[ModelInstance]:
        """Run ``sweep`` over the index, then commit what it changed in transactions of
        at most ``_COMMIT_CHUNK`` keys, one after another, each within the storage's
        time limit. The keys are gathered slice by slice as the sweep takes them
        (listing a million at the end held the loop for two seconds). Writing while
        the sweep goes on was tried: the driver's thread then takes the interpreter
        from the loop at every row, and the loop's lag doubled for a tenth off the
        duration. What a failed (or cancelled) write leaves is the journal's to write
        with its next transaction."""
        assert self._journal is not None, "storage is not open"
        keys: list[InstanceKey] = []
        try:
            taken = await sweep(lambda chunk: keys.extend(r.key for r in chunk))
        except BaseException:
            self._journal.behind(keys)
            raise
        await self._commit_in_chunks(keys, marked=marked)
        return taken

    async def _commit_in_chunks(self, keys: list[InstanceKey], *, marked: bool) -> None:
        """Commit ``keys`` in transactions of at most ``_COMMIT_CHUNK``, one after another;
        what a failed (or cancelled) one leaves is the journal's to write with its next."""
        assert self._journal is not None, "storage is not open"
        for start in range(0, len(keys), _COMMIT_CHUNK):
            try:
                await self._commit(keys[start : start + _COMMIT_CHUNK], marked=marked)
            except BaseException:
                self._journal.behind(keys[start:])
                raise
