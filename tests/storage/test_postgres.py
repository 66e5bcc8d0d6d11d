"""What only the PostgreSQL backend promises: bounded waits, one migration at a time."""

from __future__ import annotations

import asyncio
import socket
import threading
import time

import pytest

from model_registry.storage import PoolOptions, StorageUnavailable, open_storage
from model_registry.storage.migrations import HEAD, current_revision
from model_registry.storage.schema import BEAT_COLUMNS, FILLFACTOR, POSTGRESQL_ONLY_INDEXES
from tests.storage.test_contract import T0, record


@pytest.fixture
def silent_port():
    """A TCP port that accepts connections and never says a word (a hung server)."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    accepted: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        listener.settimeout(0.1)
        while not stop.is_set():
            try:
                accepted.append(listener.accept()[0])
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield listener.getsockname()[1]
    stop.set()
    thread.join()
    for conn in accepted:
        conn.close()
    listener.close()


async def test_connect_timeout_bounds_a_hung_server(silent_port: int) -> None:
    url = f"postgresql+asyncpg://postgres@127.0.0.1:{silent_port}/registry"
    started = time.monotonic()
    with pytest.raises(StorageUnavailable, match="postgresql storage failed to open"):
        async with open_storage(url, pool=PoolOptions(connect_timeout=0.5)):
            pass
    assert time.monotonic() - started < 3


async def test_replicas_starting_together_migrate_once(pg_url: str) -> None:
    backends = [open_storage(pg_url) for _ in range(4)]
    await asyncio.gather(*(b.__aenter__() for b in backends))
    try:
        async with backends[0]._engine.connect() as conn:
            assert await conn.run_sync(current_revision) == HEAD
            # The checker evicts in SQL here, with a partial index (SQLite has none).
            indexes = await conn.exec_driver_sql(
                "SELECT indexname FROM pg_indexes WHERE tablename = 'instances'"
            )
            assert set(POSTGRESQL_ONLY_INDEXES) <= {name for (name,) in indexes}
    finally:
        await asyncio.gather(*(b.__aexit__(None, None, None) for b in backends))


async def test_a_beats_update_can_be_heap_only(pg_url: str) -> None:
    """No index covers a column a beat writes, and pages keep room for new row
    versions: PostgreSQL can then update a beat's row in place (HOT), writing no
    index entries (``benchmarks/fleet.py`` measures the share and the WAL)."""
    async with open_storage(pg_url) as storage:
        async with storage._engine.connect() as conn:
            definitions = [
                d
                for (d,) in await conn.exec_driver_sql(
                    "SELECT indexdef FROM pg_indexes WHERE tablename = 'instances'"
                )
            ]
            options = await conn.exec_driver_sql(
                "SELECT reloptions FROM pg_class WHERE relname = 'instances'"
            )
            assert options.scalar_one() == [f"fillfactor={FILLFACTOR}"]
        assert len(definitions) == 3  # the key, the address, the evictable
        for column in BEAT_COLUMNS:
            assert all(column not in d for d in definitions), column
        # The write-behind's update, as a replica flushes it, is then HOT: the
        # row's new version is a heap-only tuple (pageinspect reads its flags).
        await storage.upsert(record("x"))
        assert storage.beat(record("x").key, T0.replace(minute=9), 2) is not None
        assert await storage.flush() == 1
        async with storage._engine.begin() as conn:
            await conn.exec_driver_sql("CREATE EXTENSION IF NOT EXISTS pageinspect")
            flags = await conn.exec_driver_sql(
                "SELECT i.t_infomask2 FROM instances r, "
                "heap_page_items(get_raw_page('instances', (r.ctid::text::point)[0]::int)) i "
                "WHERE r.model_name = 'x' AND i.lp = (r.ctid::text::point)[1]::int"
            )
            assert flags.scalar_one() & 0x8000  # HEAP_ONLY_TUPLE


async def test_server_time_is_the_database_clock(pg_url: str) -> None:
    async with open_storage(pg_url) as storage:
        first = await storage.server_time()
        second = await storage.server_time()
    assert first.tzinfo is not None and first < second


@pytest.mark.parametrize(
    "options",
    [dict(pool_size=0), dict(max_overflow=-1), dict(pool_timeout=0), dict(statement_timeout=-1)],
)
def test_pool_options_are_checked(options: dict) -> None:
    with pytest.raises(ValueError):
        PoolOptions(**options)


async def test_a_beat_written_behind_never_brings_back_a_deleted_instance(pg_url: str) -> None:
    """Replica b still thinks the instance exists (the deletion through a was never
    announced here); its beat is written behind, and must not create the row again."""
    async with open_storage(pg_url) as a:
        await a.upsert(record("x"))
        await a.upsert(record("y"))
        async with open_storage(pg_url) as b:  # b loads what there is: both
            assert [r.model_name for r in b.at_now("10.0.0.1", 8000)] == ["x", "y"]
            await a.delete(record("y").key)
            later = T0.replace(minute=5)
            assert b.beat(record("x").key, later, 3) is not None
            assert b.beat(record("y").key, later, 3) is not None  # b cannot know better
            assert await b.flush() == 2
        assert [r.model_name for r in await a.at("10.0.0.1", 8000)] == ["x"]
        [x] = await a.list("x")
        assert (x.last_heartbeat, x.queue_length) == (later, 3)


async def test_a_replica_that_may_have_missed_changes_forgets_what_it_knew(pg_url: str) -> None:
    async with open_storage(pg_url) as a:
        await a.upsert(record("x"))
        assert a.at_now("10.0.0.1", 8000) is not None
        a._remote("resync", None, None)  # what its listener says after a gap
        assert a.at_now("10.0.0.1", 8000) is None  # ask the database
        assert [r.model_name for r in await a.at("10.0.0.1", 8000)] == ["x"]


async def test_what_a_replica_knows_at_an_address_follows_comings_and_goings(pg_url: str) -> None:
    """One model at an address is kept as its key alone, several as a set: both read alike."""
    async with open_storage(pg_url) as storage:
        await storage.upsert(record("x"))
        assert [r.model_name for r in storage.at_now("10.0.0.1", 8000)] == ["x"]
        await storage.upsert(record("y"))
        await storage.upsert(record("z", host="10.0.0.2"))
        assert sorted(r.model_name for r in storage.at_now("10.0.0.1", 8000)) == ["x", "y"]
        await storage.delete(record("x").key)
        assert [r.model_name for r in storage.at_now("10.0.0.1", 8000)] == ["y"]
        await storage.delete(record("y").key)
        assert storage.at_now("10.0.0.1", 8000) is None  # nothing known there: ask the database
        assert [r.model_name for r in storage.at_now("10.0.0.2", 8000)] == ["z"]
