"""What the SQLite journal promises: what a crash can lose, and what it never loses."""

from __future__ import annotations

import asyncio
import signal
from datetime import timedelta
from pathlib import Path

import aiohttp

from model_registry import ModelInstance
from model_registry.storage import open_storage
from model_registry.validation import record_from
from tests.conftest import sqlite_url
from tests.process import ServerProcess
from tests.storage.test_contract import T0, record


async def test_concurrent_durable_writes_share_transactions(tmp_path: Path) -> None:
    async with open_storage(sqlite_url(tmp_path / "r.db")) as storage:
        await asyncio.gather(*(storage.upsert(record(port=p)) for p in range(1, 65)))
        assert storage._journal.transactions < 16  # 64 registrations, a handful of commits
    async with open_storage(sqlite_url(tmp_path / "r.db")) as reopened:
        assert len(await reopened.list()) == 64


async def test_heartbeats_are_written_within_the_flush_interval(tmp_path: Path) -> None:
    async with open_storage(sqlite_url(tmp_path / "r.db"), flush_interval=0.2) as storage:
        await storage.upsert(record())
        later = T0 + timedelta(seconds=30)
        await storage.touch(record().key, later, 4)
        for _ in range(100):  # the file catches up within the interval, by itself
            async with storage._engine.connect() as conn:
                stored = await conn.exec_driver_sql("SELECT last_heartbeat, queue_length FROM instances")
                if stored.one() == ("2026-03-01 12:00:30.000000", 4):
                    break
            await asyncio.sleep(0.02)
        else:
            raise AssertionError("the heartbeat never reached the file")


async def test_a_clean_stop_writes_every_heartbeat(tmp_path: Path) -> None:
    path = tmp_path / "r.db"
    async with open_storage(sqlite_url(path), flush_interval=60) as storage:
        await storage.upsert(record())
        await storage.touch(record().key, T0 + timedelta(seconds=5), 9)
    async with open_storage(sqlite_url(path)) as reopened:
        [stored] = await reopened.list()
    assert stored.last_heartbeat == T0 + timedelta(seconds=5) and stored.queue_length == 9


async def test_kill_9_loses_at_most_the_flush_interval_of_heartbeats_and_no_registration(
    tmp_path: Path,
) -> None:
    path = tmp_path / "r.db"
    server = ServerProcess("--storage", sqlite_url(path), "--flush-interval", "0.5").start()
    beat = {"model_name": "m", "host": "10.0.0.1", "port": 1}
    try:
        async with aiohttp.ClientSession(server.url) as http:
            assert (await http.post("/api/v1/instances", json=beat)).status == 201
            registered = []
            for port in range(2, 12):  # registrations acknowledged right before the kill
                response = await http.post("/api/v1/instances", json={**beat, "port": port})
                assert response.status == 201
                registered.append(port)
            last = None
            for _ in range(30):  # 1.5 s of beats, each acknowledged
                last = record_from(await (await http.post("/api/v1/heartbeat", json=beat)).json())
                await asyncio.sleep(0.05)
            server.signal(signal.SIGKILL)
            server.wait(timeout=10)
    finally:
        server.stop()
    async with open_storage(sqlite_url(path)) as storage:
        stored = {r.port: r for r in await storage.list()}
    assert set(registered) | {1} <= set(stored)  # every acknowledged registration
    lost = last.last_heartbeat - stored[1].last_heartbeat
    assert timedelta(0) <= lost <= timedelta(seconds=0.5 + 0.2)  # the flush interval, plus a write


async def test_a_beat_followed_by_a_transition_writes_the_transition(tmp_path: Path) -> None:
    path = tmp_path / "r.db"
    async with open_storage(sqlite_url(path), flush_interval=60) as storage:
        await storage.upsert(record())
        await storage.touch(record().key, T0 + timedelta(seconds=5), 2)  # pending, written behind
        await storage.mark_unhealthy(record().key, T0 + timedelta(seconds=6))  # durable now
        async with storage._engine.connect() as conn:
            query = "SELECT healthy, last_heartbeat, queue_length FROM instances"
            row = (await conn.exec_driver_sql(query)).one()
    assert row == (0, "2026-03-01 12:00:05.000000", 2)


async def test_a_revival_is_written_whole_at_once_and_later_beats_only_their_columns(
    tmp_path: Path,
) -> None:
    query = "SELECT healthy, unhealthy_since, last_heartbeat, queue_length FROM instances"
    async with open_storage(sqlite_url(tmp_path / "r.db"), flush_interval=60) as storage:
        await storage.upsert(record())
        await storage.mark_unhealthy(record().key, T0 + timedelta(seconds=1))
        await storage.touch(record().key, T0 + timedelta(seconds=2), 1)  # revived: durable now
        async with storage._engine.connect() as conn:
            assert (await conn.exec_driver_sql(query)).one() == (1, None, "2026-03-01 12:00:02.000000", 1)
        await storage.touch(record().key, T0 + timedelta(seconds=3), 5)  # a plain beat: behind
        await storage._journal._write_pending()
        async with storage._engine.connect() as conn:
            assert (await conn.exec_driver_sql(query)).one() == (1, None, "2026-03-01 12:00:03.000000", 5)


def test_the_journal_writes_every_column_of_the_schema_and_every_field() -> None:
    from dataclasses import fields

    from model_registry.storage.journal import COLUMNS
    from model_registry.storage.schema import instances
    from model_registry_sdk.record import DERIVED_FIELDS, ModelInstance

    stored = [f.name for f in fields(ModelInstance) if f.name not in DERIVED_FIELDS]
    assert list(COLUMNS) == [c.name for c in instances.columns] == stored


def test_timestamps_are_written_in_sqlalchemys_format_whatever_their_zone() -> None:
    from datetime import datetime, timedelta, timezone

    from model_registry.storage.journal import _text, record_of, row_of

    def read_back(moment: datetime) -> datetime | None:
        return record_of(row_of(ModelInstance("m", "h", 1, last_heartbeat=moment))).last_heartbeat

    utc = datetime(2026, 1, 2, 3, 4, 5, tzinfo=timezone.utc)
    assert _text(utc) == "2026-01-02 03:04:05.000000" and read_back(utc) == utc
    shifted = datetime(2026, 1, 2, 5, 4, 5, 7, tzinfo=timezone(timedelta(hours=2)))
    assert _text(shifted) == "2026-01-02 03:04:05.000007" and read_back(shifted) == shifted
    assert read_back(shifted).tzinfo is timezone.utc  # type: ignore[union-attr]


def test_a_row_reads_back_as_the_record_it_was_written_from_every_field_set() -> None:
    import dataclasses
    from datetime import datetime, timezone

    from model_registry.storage.journal import COLUMNS, record_of, row_of

    moment = datetime(2026, 1, 2, 3, 4, 5, 6, tzinfo=timezone.utc)
    record = ModelInstance(
        "m", "h", 1, weight=2.5, check_healthy=False, healthy=True, enabled=False, prompt_template="t",
        last_heartbeat=moment, metadata={"a": [1]}, registered_at=moment, unhealthy_since=moment,
        queue_length=3, overrides={"weight": 2.5}, cooldown_until=moment, check={"kind": "http"},
        metrics={"kind": "vllm"}, state_reason="probe: refused", waiting=4, running=5, kv_cache_usage=0.5,
        load_at=moment, ready=False, startup_grace=30.0,
    )  # fmt: skip
    assert {f.name for f in dataclasses.fields(record)} - set(COLUMNS) == {"state"}  # derived, not stored
    assert record_of(row_of(record)) == record
    assert record_of(row_of(ModelInstance("m", "h", 1))) == ModelInstance("m", "h", 1)  # every NULL


def test_beat_rows_write_each_timestamp_as_a_whole_one_would_be_written() -> None:
    """Beat rows format a second once and append the microseconds: the text must
    be exactly ``_text``'s, across seconds, days, whole seconds and other zones."""
    import dataclasses
    from datetime import datetime, timedelta, timezone

    from model_registry.storage.journal import _text, beat_rows

    base = datetime(2026, 12, 31, 23, 59, 59, 999_998, tzinfo=timezone.utc)
    moments = [base + timedelta(microseconds=n) for n in (0, 1, 2, 3, 1_000_002)]
    moments += [datetime(2026, 1, 1, tzinfo=timezone(timedelta(hours=-5))), None]
    records = {}
    for port, moment in enumerate(moments, start=1):
        r = dataclasses.replace(record(port=port), last_heartbeat=moment, queue_length=port)
        records[r.key] = r
    gone = dataclasses.replace(record(port=99)).key  # deleted since it was beaten: no row
    rows = beat_rows(records, [*records, gone])
    assert [row[0] for row in rows] == [_text(m) for m in moments]
    assert rows[0][0] == "2026-12-31 23:59:59.999998" and rows[2][0] == "2027-01-01 00:00:00.000000"
    loads = [(r.queue_length, None, None, None, None, *r.key) for r in records.values()]
    assert [row[1:] for row in rows] == loads
