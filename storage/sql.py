"""SQL backends through SQLAlchemy's asyncio engine: SQLite and PostgreSQL.

Both run the same statements. Each primitive is one statement, or, for
``upsert``, an insert-if-absent followed by an update inside one transaction,
retried if a concurrent delete slips between them: never a read followed by a
write.

SQLite is served by ``storage.sqlite.SQLiteStorage``, which reuses this class's
lifecycle (engine, pragmas, migrations, error wrapping) and replaces every
primitive with its index and journal.

PostgreSQL may be shared by several replicas. Schema migrations and the
checker's expiry sweep each take an advisory lock, so replicas starting
together migrate once and sweep one at a time; the sweep's conditional update
makes each health transition happen, and be reported, exactly once anyway.
Every wait is bounded (``PoolOptions``): pool checkout, connect, statement.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from datetime import datetime
from typing import Any

import orjson
from sqlalchemy import case, delete, event, false, func, literal, select, text, true, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine
from sqlalchemy.sql import ColumnElement

from model_registry_sdk.record import (
    CHECK_REASON,
    DERIVED_FIELDS,
    GRACE_REASON,
    OVERRIDABLE_FIELDS,
    STARTING_CHECK,
    InstanceKey,
    ModelInstance,
    ModelSummary,
    apply_overrides,
    held,
)

from . import migrations
from .base import Census, Edit, Storage, StoredToken
from .errors import StorageUnavailable, in_our_words
from .options import PoolOptions
from .schema import EVICTABLE, EXPIRABLE, instances, tokens

__all__ = ["SQLStorage"]

log = logging.getLogger(__name__)

_t = instances
_KEY_COLUMNS = ("model_name", "host", "port")
#: What a re-registration leaves as it is (the pins are applied over the rest).
_KEPT_ON_UPSERT = frozenset({*_KEY_COLUMNS, "registered_at", "cooldown_until"})


#: What the heartbeat timeout may expire: healthy, checked records (``EXPIRABLE``)
#: that are ready (one starting is held by its start-up grace instead).
_EXPIRING = EXPIRABLE & (_t.c.ready == true())
#: Serving: healthy and ready (selection and ``healthy_only`` listings).
_SERVING = (_t.c.healthy == true()) & (_t.c.ready == true())


def _not_cooling(now: datetime) -> ColumnElement[bool]:
    """Not in a cooldown at ``now`` (``ModelInstance.in_cooldown`` in SQL)."""
    return _t.c.cooldown_until.is_(None) | (_t.c.cooldown_until <= now)


# Advisory lock keys (any 64-bit numbers, fixed for the life of the schema).
_MIGRATION_LOCK = 0x6D6F64656C0001  # "model" + 1
_SWEEP_LOCK = 0x6D6F64656C0002


def _json_dumps(value: Any) -> str:
    return orjson.dumps(value).decode()


def _record(row: Any) -> ModelInstance:
    return ModelInstance(**row._mapping)  # its derived fields (``state``) are worked out


def _row(record: ModelInstance) -> dict[str, Any]:
    """The record's columns: its fields, but the derived ones."""
    return {k: v for k, v in dataclasses.asdict(record).items() if k not in DERIVED_FIELDS}


def _models(models: tuple[str, ...] | None) -> list[str] | None:
    return None if models is None else list(models)


def _token(row: Any) -> StoredToken:
    fields = dict(row._mapping)
    models = fields["models"]
    return StoredToken(**{**fields, "models": None if models is None else tuple(models)})


def _where_key(key: InstanceKey):
    return (_t.c.model_name == key.model_name) & (_t.c.host == key.host) & (_t.c.port == key.port)


#: SQLite's page cache, in KiB (negative: a size, not pages). Its default, 2 MiB,
#: holds too little of a large fleet's primary-key index: each write then reads
#: its path from the file again. 64 MiB halves what a mass failure's million
#: marks take to write (and heartbeat flushes with them); it grows only as far
#: as the file is touched.
SQLITE_CACHE_KIB = 64 * 1024
#: How long a SQLite connection waits for another's lock before it gives up.
BUSY_TIMEOUT_MS = 5000


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    # WAL lets readers run beside the writer; synchronous=FULL makes every
    # acknowledged commit survive a power cut, not only a process crash.
    cursor = dbapi_connection.cursor()
    pragmas = (
        "journal_mode=WAL",
        "synchronous=FULL",
        f"busy_timeout={BUSY_TIMEOUT_MS}",
        f"cache_size=-{SQLITE_CACHE_KIB}",
    )
    for pragma in pragmas:
        cursor.execute(f"PRAGMA {pragma}")
    cursor.close()


class SQLStorage(Storage):
    durable = True

    def __init__(self, url: str, *, migrate: bool = True, pool: PoolOptions | None = None) -> None:
        super().__init__()
        self._url = make_url(url)
        self._migrate = migrate
        self._pool = pool or PoolOptions()
        self.name = self._url.get_backend_name()
        self._postgres = self.name == "postgresql"
        self._engine: AsyncEngine | None = None
        self._waiting = 0  # requests waiting for a pooled connection
        if self.name == "sqlite":
            from sqlalchemy.dialects.sqlite import insert
        else:
            from sqlalchemy.dialects.postgresql import insert
        self._insert = insert

    def __repr__(self) -> str:
        return f"SQLStorage({self._url.render_as_string(hide_password=True)!r})"

    # -- lifecycle ---------------------------------------------------------

    def _engine_options(self) -> dict[str, Any]:
        if not self._postgres:
            return {}
        pool = self._pool
        return {
            "pool_size": pool.pool_size,
            "max_overflow": pool.max_overflow,
            "pool_timeout": pool.pool_timeout,
            "connect_args": {
                "timeout": pool.connect_timeout,
                "command_timeout": pool.statement_timeout + 1,
                "server_settings": {
                    "statement_timeout": str(int(pool.statement_timeout * 1000)),
                    "application_name": "model-registry",
                },
            },
        }

    async def _open(self) -> None:
        self._engine = create_async_engine(
            self._url,
            json_serializer=_json_dumps,
            json_deserializer=orjson.loads,
            **self._engine_options(),
        )
        if self.name == "sqlite":
            event.listen(self._engine.sync_engine, "connect", _sqlite_pragmas)
        threads_before = set(threading.enumerate())
        try:
            async with self._guard("open"):
                if self._migrate:
                    async with self._engine.begin() as conn:
                        if self._postgres:  # replicas starting together migrate one by one
                            await conn.execute(text(f"SELECT pg_advisory_xact_lock({_MIGRATION_LOCK})"))
                        await conn.run_sync(migrations.upgrade_connection)
                await self.ping()
        except BaseException:
            await self._engine.dispose()
            # aiosqlite stops a connection that failed to open on its own thread, and that
            # thread then answers on this loop: wait for it, so that it does not find the
            # loop closed (a traceback on stderr) when the process exits at once.
            started = [t for t in threading.enumerate() if t not in threads_before]
            for thread in started:
                await asyncio.to_thread(thread.join, 1.0)
            raise

    async def _close(self) -> None:
        if self._engine is not None:
            await self._engine.dispose()

    @contextlib.asynccontextmanager
    async def _guard(self, what: str, *, bounded: bool = True) -> AsyncIterator[None]:
        """Wrap every driver error into ``StorageUnavailable`` at the boundary,
        and bound the whole in time, unless not ``bounded`` (a start-up's load,
        which bounds each of its reads instead: ``_read_ahead``)."""
        timeout = self._pool.operation_timeout
        deadline = asyncio.timeout(timeout if bounded else None)
        try:
            async with deadline:
                yield
        except StorageUnavailable:
            raise
        except TimeoutError as exc:
            self.errors["timeout"] += 1
            if not deadline.expired():  # the driver's own timeout (connect, command)
                raise StorageUnavailable(f"{self.name} storage failed to {what}: timed out") from exc
            raise StorageUnavailable(
                f"{self.name} storage took longer than {timeout:g} s to {what}; "
                "it may be overloaded or unreachable (REGISTRY_REQUEST_TIMEOUT bounds this wait)"
            ) from exc
        except PoolTimeout as exc:
            self.errors["pool_exhausted"] += 1
            pool = self._pool
            raise StorageUnavailable(
                f"{self.name} connection pool exhausted: all {pool.pool_size} connections and "
                f"{pool.max_overflow} overflow connections stayed busy for {pool.pool_timeout:g} s; "
                "raise REGISTRY_DB_POOL_SIZE / REGISTRY_DB_MAX_OVERFLOW, or REGISTRY_DB_POOL_TIMEOUT "
                "to wait longer"
            ) from exc
        except (SQLAlchemyError, OSError) as exc:
            self.errors["driver"] += 1
            cause = getattr(exc, "orig", None) or exc
            raise StorageUnavailable(
                f"{self.name} storage failed to {what}: {in_our_words(cause)}", driver=str(cause)
            ) from exc

    async def _read_ahead(
        self, fetch: Callable[[], Awaitable[Sequence[Any]]], file: Callable[[Any], None]
    ) -> None:
        """``file`` each chunk ``fetch`` reads, until it reads none, while the
        database (PostgreSQL's server) reads the next. Each read is bounded by the operation
        time limit, so a long load is not cut short while a stalled one is."""
        reading = asyncio.ensure_future(fetch())
        try:
            while True:
                async with asyncio.timeout(self._pool.operation_timeout):  # not wait_for: on 3.11
                    rows = await reading  # it may swallow a cancellation that comes as the read ends
                if not rows:
                    break
                reading = asyncio.ensure_future(fetch())
                await asyncio.sleep(0)  # the next read under way (its request sent) before filing
                file(rows)
        finally:
            if not reading.done():  # failed while filing, or timed out: let the read end first
                reading.cancel()
                with contextlib.suppress(BaseException):
                    await reading

    @contextlib.asynccontextmanager
    async def _write(self, what: str) -> AsyncIterator[AsyncConnection]:
        assert self._engine is not None, "storage is not open"
        async with self._guard(what), self._connection(self._engine.begin()) as conn:
            yield conn

    @contextlib.asynccontextmanager
    async def _read(self, what: str) -> AsyncIterator[AsyncConnection]:
        assert self._engine is not None, "storage is not open"
        async with self._guard(what), self._connection(self._engine.connect()) as conn:
            yield conn

    @contextlib.asynccontextmanager
    async def _connection(
        self, opening: contextlib.AbstractAsyncContextManager[AsyncConnection]
    ) -> AsyncIterator[AsyncConnection]:
        """``opening``'s connection, counting the requests that wait for one (the metrics' ``waiting``)."""
        self._waiting += 1
        waiting = True
        try:
            async with opening as conn:
                self._waiting -= 1
                waiting = False
                yield conn
        finally:
            if waiting:
                self._waiting -= 1

    def stats(self) -> dict[str, Any]:
        stats = super().stats()
        pool = self._engine.pool if self._engine is not None else None
        if pool is not None and hasattr(pool, "checkedout"):
            stats["pool"] = {
                "size": pool.size() if hasattr(pool, "size") else None,
                "in_use": pool.checkedout(),
                "overflow": max(0, pool.overflow()) if hasattr(pool, "overflow") else 0,
                "waiting": self._waiting,
            }
        return stats

    # -- writes ------------------------------------------------------------

    async def upsert(self, record: ModelInstance) -> tuple[ModelInstance, bool]:
        async with self._write("register an instance") as conn:
            return await self._upsert_in(conn, record)

    async def upsert_many(self, records: Sequence[ModelInstance]) -> list[tuple[ModelInstance, bool]]:
        # One transaction for all, its rows locked in key order (two batches that share
        # keys then wait for each other rather than deadlock).
        order = sorted(range(len(records)), key=lambda i: records[i].key)
        results: list[tuple[ModelInstance, bool]] = [None] * len(records)  # type: ignore[list-item]
        async with self._write("register instances") as conn:
            for i in order:
                results[i] = await self._upsert_in(conn, records[i])
        return results

    async def _upsert_in(self, conn: AsyncConnection, record: ModelInstance) -> tuple[ModelInstance, bool]:
        row = _row(record)
        while True:
            inserted = await self._insert_returning(conn, row)
            if inserted is not None:
                return inserted, True
            # The row lock keeps the pins read here from changing until we write.
            pinned = await conn.execute(
                select(_t.c.overrides).where(_where_key(record.key)).with_for_update()
            )
            kept = pinned.first()
            if kept is None:
                continue  # deleted between the two statements by another writer: go again
            stored = dataclasses.replace(record)
            apply_overrides(stored, kept.overrides)
            changes = {k: v for k, v in _row(stored).items() if k not in _KEPT_ON_UPSERT}
            result = await conn.execute(
                update(_t).where(_where_key(record.key)).values(changes).returning(*_t.c)
            )
            return _record(result.one()), False

    async def override(self, key: InstanceKey, change: Edit) -> ModelInstance | None:
        async with self._write("override an instance") as conn:
            found = await conn.execute(select(*_t.c).where(_where_key(key)).with_for_update())
            row = found.first()
            if row is None:
                return None
            record = _record(row)
            change(record)
            values = {
                name: getattr(record, name) for name in (*OVERRIDABLE_FIELDS, "overrides", "state_reason")
            }
            result = await conn.execute(update(_t).where(_where_key(key)).values(values).returning(*_t.c))
            return _record(result.one())

    async def set_cooldown(
        self, key: InstanceKey, until: datetime | None, reason: str | None = None
    ) -> ModelInstance | None:
        # An unhealthy instance keeps why it is unhealthy.
        why = case((_t.c.healthy, literal(reason, type_=_t.c.state_reason.type)), else_=_t.c.state_reason)
        return await self._update_one("set a cooldown", key, {"cooldown_until": until, "state_reason": why})

    async def insert(self, record: ModelInstance) -> ModelInstance | None:
        async with self._write("register an instance") as conn:
            return await self._insert_returning(conn, _row(record))

    async def _insert_returning(self, conn: AsyncConnection, row: dict) -> ModelInstance | None:
        statement = self._insert(_t).values(row).on_conflict_do_nothing().returning(*_t.c)
        inserted = (await conn.execute(statement)).first()
        return None if inserted is None else _record(inserted)

    async def _update_one(self, what: str, key: InstanceKey, values: dict) -> ModelInstance | None:
        statement = update(_t).where(_where_key(key)).values(values).returning(*_t.c)
        async with self._write(what) as conn:
            row = (await conn.execute(statement)).first()
        return None if row is None else _record(row)

    async def touch(
        self, key: InstanceKey, now: datetime, queue_length: int | None
    ) -> tuple[ModelInstance, bool] | None:
        values: dict[str, Any] = {"last_heartbeat": now}
        if queue_length is not None:
            values["queue_length"] = queue_length
        async with self._write("record a heartbeat") as conn:
            # The row lock makes "was it healthy" and the update one step.
            found = await conn.execute(
                select(_t.c.healthy, _t.c.state_reason).where(_where_key(key)).with_for_update()
            )
            was = found.first()
            if was is None:
                return None
            kept = held(ModelInstance("", "", 0, healthy=was.healthy, state_reason=was.state_reason))
            if not was.healthy and not kept:  # held: the beat is recorded, the check (or ready) decides
                values.update(healthy=True, unhealthy_since=None, state_reason=None)
            statement = update(_t).where(_where_key(key)).values(values).returning(*_t.c)
            row = (await conn.execute(statement)).one()
        return _record(row), not was.healthy and not kept

    async def mark_unhealthy(
        self, key: InstanceKey, now: datetime, reason: str | None = None
    ) -> ModelInstance | None:
        since = case((_t.c.healthy == true(), now), else_=func.coalesce(_t.c.unhealthy_since, now))
        values = {"healthy": False, "unhealthy_since": since, "state_reason": reason}
        return await self._update_one("mark an instance unhealthy", key, values)

    async def pass_check(self, key: InstanceKey, heard_after: datetime) -> ModelInstance | None:
        statement = (
            update(_t)
            .where(
                _where_key(key)
                & (_t.c.healthy == false())
                & _t.c.state_reason.startswith(CHECK_REASON, autoescape=True)
                & (_t.c.last_heartbeat.is_(None) | (_t.c.last_heartbeat >= heard_after))
            )
            .values(healthy=True, unhealthy_since=None, state_reason=None)
            .returning(*_t.c)
        )
        async with self._write("mark an instance healthy") as conn:
            row = (await conn.execute(statement)).first()
        return None if row is None else _record(row)

    async def set_ready(self, key: InstanceKey, ready: bool) -> ModelInstance | None:
        values: dict[str, Any] = {"ready": ready}
        if ready:  # one whose grace had run out is back (one held by its check is not)
            grace_over = (_t.c.healthy == false()) & _t.c.state_reason.startswith(
                GRACE_REASON, autoescape=True
            )
            values.update(
                healthy=case((grace_over, true()), else_=_t.c.healthy),
                unhealthy_since=case((grace_over, None), else_=_t.c.unhealthy_since),
                state_reason=case((grace_over, None), else_=_t.c.state_reason),
            )
        return await self._update_one("mark an instance ready", key, values)

    async def overdue_starts(self, now: datetime, default_grace: float) -> list[ModelInstance]:
        starting = ((_t.c.healthy == true()) & (_t.c.ready == false())) | (
            (_t.c.healthy == false()) & _t.c.state_reason.startswith(STARTING_CHECK, autoescape=True)
        )
        statement = select(_t).where(starting & (_t.c.registered_at.is_not(None)))
        async with self._read("list the instances starting") as conn:
            rows = [_record(row) for row in await conn.execute(statement)]
        # Few rows (only those starting): each grace is judged here, by ``now``.
        return [
            r
            for r in rows
            if r.registered_at is not None
            and (now - r.registered_at).total_seconds()
            >= (r.startup_grace if r.startup_grace is not None else default_grace)
        ]

    async def delete(self, key: InstanceKey) -> ModelInstance | None:
        async with self._write("delete an instance") as conn:
            row = (await conn.execute(delete(_t).where(_where_key(key)).returning(*_t.c))).first()
        return None if row is None else _record(row)

    async def expire(self, cutoff: datetime, now: datetime, reason: str | None = None) -> list[ModelInstance]:
        statement = (
            update(_t)
            .where(_EXPIRING & (_t.c.last_heartbeat < cutoff))
            .values(healthy=False, unhealthy_since=now, state_reason=reason)
            .returning(*_t.c)
        )
        async with self._write("mark silent instances unhealthy") as conn:
            if self._postgres and not await self._try_sweep_lock(conn):
                return []  # another replica is sweeping right now
            return [_record(row) for row in await conn.execute(statement)]

    async def _try_sweep_lock(self, conn: AsyncConnection) -> bool:
        """Take the sweep lock for this transaction, if no other replica holds it."""
        return bool(await conn.scalar(text(f"SELECT pg_try_advisory_xact_lock({_SWEEP_LOCK})")))

    async def evict(self, cutoff: datetime) -> list[ModelInstance]:
        statement = delete(_t).where(EVICTABLE & (_t.c.unhealthy_since < cutoff)).returning(*_t.c)
        async with self._write("evict unhealthy instances") as conn:
            return [_record(row) for row in await conn.execute(statement)]

    async def census(self, expire_cutoff: datetime, evict_cutoff: datetime) -> Census:
        def count(condition: Any) -> Any:
            return func.coalesce(func.sum(case((condition, 1), else_=0)), 0)

        statement = select(
            count(_EXPIRING),
            count(_EXPIRING & (_t.c.last_heartbeat < expire_cutoff)),
            func.count(),
            count(EVICTABLE & (_t.c.unhealthy_since < evict_cutoff)),
        ).select_from(_t)
        async with self._read("count instances") as conn:
            row = (await conn.execute(statement)).one()
        return Census(*(int(n) for n in row))

    # -- reads -------------------------------------------------------------

    async def get(self, key: InstanceKey) -> ModelInstance | None:
        async with self._read("read an instance") as conn:
            row = (await conn.execute(select(_t).where(_where_key(key)))).first()
        return None if row is None else _record(row)

    async def list(
        self, model_name: str | None = None, healthy_only: bool = False, now: datetime | None = None
    ) -> list[ModelInstance]:
        statement = select(_t).order_by(*(_t.c[k] for k in _KEY_COLUMNS))
        if model_name is not None:
            statement = statement.where(_t.c.model_name == model_name)
        if healthy_only:
            statement = statement.where(_SERVING)
            if now is not None:
                statement = statement.where(_not_cooling(now))
        async with self._read("list instances") as conn:
            return [_record(row) for row in await conn.execute(statement)]

    async def at(self, host: str, port: int) -> list[ModelInstance]:
        statement = select(_t).where((_t.c.host == host) & (_t.c.port == port)).order_by(_t.c.model_name)
        async with self._read("list an address's instances") as conn:
            return [_record(row) for row in await conn.execute(statement)]

    async def summarize(self, now: datetime | None = None) -> list[ModelSummary]:
        def count(condition):
            return func.coalesce(func.sum(case((condition, 1), else_=0)), 0)

        healthy, enabled = _t.c.healthy == true(), _t.c.enabled == true()
        # available: not in a cooldown either, at ``now``
        enabled_now = enabled if now is None else enabled & _not_cooling(now)
        statement = (
            select(
                _t.c.model_name,
                func.count(),
                count(healthy),
                count(enabled),
                count(_SERVING & enabled_now),
            )
            .group_by(_t.c.model_name)
            .order_by(_t.c.model_name)
        )
        async with self._read("count instances") as conn:
            return [ModelSummary(*row) for row in await conn.execute(statement)]

    # -- API tokens ----------------------------------------------------------

    async def tokens(self) -> list[StoredToken]:
        async with self._read("read the tokens") as conn:
            rows = await conn.execute(select(tokens).order_by(tokens.c.name))
            return [_token(row) for row in rows]

    async def add_token(self, token: StoredToken) -> bool:
        row = {**{f: getattr(token, f) for f in StoredToken.__slots__}, "models": _models(token.models)}
        statement = sqlite_insert if self._engine.dialect.name == "sqlite" else pg_insert  # type: ignore[union-attr]
        async with self._write("store a token") as conn:
            stored = await conn.execute(statement(tokens).values(row).on_conflict_do_nothing())
            return stored.rowcount == 1

    async def remove_token(self, name: str) -> StoredToken | None:
        async with self._write("revoke a token") as conn:
            row = (await conn.execute(delete(tokens).where(tokens.c.name == name).returning(tokens))).first()
        return None if row is None else _token(row)

    async def server_time(self) -> datetime | None:
        if not self._postgres:
            return None  # one process owns a SQLite file: its clock is the clock
        async with self._read("read the server clock") as conn:
            return await conn.scalar(select(func.clock_timestamp()))

    async def ping(self) -> None:
        # Touches the table, not just the connection: a database without our
        # schema is as unusable as an unreachable one.
        async with self._read("answer a ping") as conn:
            await conn.execute(select(_t.c.port).limit(1))
