"""What only the SQLite backend promises: schema by migration, WAL, durability."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import create_engine

from alembic import command
from model_registry.storage import InstanceKey, InvalidStorageURL, StorageUnavailable, open_storage
from model_registry.storage.journal import _BEAT
from model_registry.storage.migrations import HEAD, alembic_config
from model_registry.storage.schema import POSTGRESQL_ONLY_INDEXES, metadata
from tests.conftest import sqlite_url
from tests.storage.test_contract import T0, record

ROOT = Path(__file__).resolve().parents[2]


async def test_migrations_create_the_declared_schema_and_are_idempotent(tmp_path: Path) -> None:
    url = sqlite_url(tmp_path / "r.db")
    async with open_storage(url) as storage:
        await storage.upsert(record())
    async with open_storage(url) as storage:  # second start: nothing to do, nothing lost
        assert len(await storage.list()) == 1
        async with storage._engine.connect() as conn:
            diff = await conn.run_sync(
                lambda sync: compare_metadata(MigrationContext.configure(sync), metadata)
            )
            revision = await conn.run_sync(
                lambda sync: MigrationContext.configure(sync).get_current_revision()
            )
    # Every difference is one of the indexes only PostgreSQL keeps (migration 0003).
    assert [d for d in diff if not (d[0] == "add_index" and d[1].name in POSTGRESQL_ONLY_INDEXES)] == []
    assert revision == HEAD


async def test_database_is_in_wal_mode(tmp_path: Path) -> None:
    path = tmp_path / "r.db"
    async with open_storage(sqlite_url(path)):
        pass
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


async def test_the_file_has_no_index_that_beats_would_pay_for(tmp_path: Path) -> None:
    """The file is a journal (every query is answered from memory): a beat's
    write updates its row by primary key and maintains no other index."""
    path = tmp_path / "r.db"
    async with open_storage(sqlite_url(path)) as storage:
        await storage.upsert(record())
    with sqlite3.connect(path) as conn:
        indexes = {name for (name,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'index'")}
        plan = conn.execute(
            f"EXPLAIN QUERY PLAN {_BEAT}", (str(T0), 1, None, None, None, None, "m", "h", 1)
        ).fetchall()
    # Primary keys, and the tokens table's (which beats never touch).
    assert {i for i in indexes if "tokens" not in i} == {
        "sqlite_autoindex_instances_1",
        "sqlite_autoindex_alembic_version_1",
    }
    assert "sqlite_autoindex_instances_1" in str(plan)


@pytest.mark.parametrize(
    "url, message",
    [
        ("postgres://x", "unsupported storage URL"),
        ("redis://localhost", r"use one of memory://, sqlite\+aiosqlite:///"),
        ("registry.db", "unsupported storage URL"),
        ("sqlite+aiosqlite://", "names no database file"),
        ("sqlite+aiosqlite:///:memory:", "names no database file"),
    ],
)
def test_bad_urls_are_refused_naming_the_valid_ones(url: str, message: str) -> None:
    with pytest.raises(InvalidStorageURL, match=message):
        open_storage(url)


async def test_an_unopenable_file_is_storage_unavailable(tmp_path: Path) -> None:
    with pytest.raises(StorageUnavailable, match="cannot be written; check its disk space") as failed:
        async with open_storage(sqlite_url(tmp_path / "missing-dir" / "r.db")):
            pass
    assert failed.value.driver == "unable to open database file"  # the driver's words, for the log


async def test_driver_errors_are_wrapped(tmp_path: Path) -> None:
    path = tmp_path / "r.db"
    async with open_storage(sqlite_url(path)) as storage:
        with sqlite3.connect(path) as conn:
            conn.execute("DROP TABLE instances")
        with pytest.raises(StorageUnavailable, match="model-registry migrate") as failed:
            await storage.upsert(record())
        assert "no such table" not in str(failed.value) and "no such table" in failed.value.driver


async def test_a_database_from_the_first_release_is_upgraded_with_its_instances(tmp_path: Path) -> None:
    path = tmp_path / "r.db"
    engine = create_engine(f"sqlite:///{path}")
    with engine.begin() as conn:
        command.upgrade(alembic_config(conn), "0001")
        conn.exec_driver_sql(
            "INSERT INTO instances (model_name, host, port, weight, check_healthy, healthy, enabled, "
            "metadata, last_heartbeat, registered_at) VALUES ('m', '10.0.0.1', 8000, 2.0, 1, 1, 1, "
            "'{\"gpu\": \"a100\"}', '2026-03-01 12:00:00.000000', '2026-03-01 12:00:00.000000')"
        )
    engine.dispose()
    async with open_storage(sqlite_url(path)) as storage:
        (upgraded,) = await storage.list()
    assert upgraded == record(weight=2.0, metadata={"gpu": "a100"})
    assert upgraded.overrides is None and upgraded.cooldown_until is None


async def test_every_field_survives_a_reopen(tmp_path: Path) -> None:
    url = sqlite_url(tmp_path / "r.db")
    full = record(
        weight=0.5,
        metadata={"zone": "b"},
        overrides={"enabled": False, "metadata": {"zone": "b"}},
        enabled=False,
        cooldown_until=T0,
        queue_length=3,
    )
    async with open_storage(url) as storage:
        await storage.upsert(full)
    async with open_storage(url) as storage:
        assert await storage.list() == [full]


async def test_a_probe_transition_is_durable_and_load_is_written_behind(tmp_path: Path) -> None:
    url = sqlite_url(tmp_path / "r.db")
    checked = record(check={"http": "/health", "interval": 10.0}, last_heartbeat=None)
    async with open_storage(url) as storage:
        await storage.upsert(checked)
        await storage.mark_unhealthy(checked.key, T0, "probe: connection refused")
        storage.set_load(checked.key, 1, 2, 0.5, T0)  # no wait: written with the next flush
    async with open_storage(url) as storage:
        (got,) = await storage.list()
    assert not got.healthy and got.state_reason == "probe: connection refused"
    assert (got.waiting, got.running, got.kv_cache_usage, got.load_at) == (1, 2, 0.5, T0)


async def test_an_expiry_is_written_as_a_mark_with_the_beats_before_it(tmp_path: Path) -> None:
    """The checker's marks are written as health columns only (a
    mass failure marks a million), durably, with the beats still pending."""
    url = sqlite_url(tmp_path / "r.db")
    later, now = T0 + timedelta(seconds=5), T0 + timedelta(minutes=5)
    async with open_storage(url) as storage:
        await storage.upsert(record(metadata={"gpu": "a100"}, weight=2.0))
        await storage.upsert(record(host="10.0.0.2"))
        await storage.touch(InstanceKey("m", "10.0.0.1", 8000), later, 7)  # written behind
        expired = await storage.expire(T0 + timedelta(minutes=1), now, "heartbeat timeout 30 s")
        assert len(expired) == 2 and storage._journal.pending == 0
        with sqlite3.connect(tmp_path / "r.db") as conn:
            rows = conn.execute(
                "SELECT host, healthy, state_reason, queue_length FROM instances ORDER BY host"
            )
            assert rows.fetchall() == [
                ("10.0.0.1", 0, "heartbeat timeout 30 s", 7),
                ("10.0.0.2", 0, "heartbeat timeout 30 s", None),
            ]
    async with open_storage(url) as reopened:
        first, second = await reopened.list()
    assert (first.healthy, first.unhealthy_since, first.last_heartbeat, first.queue_length) == (
        False,
        now,
        later,
        7,
    )
    assert first.metadata == {"gpu": "a100"} and first.weight == 2.0 and not second.healthy


def test_head_names_the_newest_migration() -> None:
    from alembic.script import ScriptDirectory

    assert ScriptDirectory.from_config(alembic_config()).get_current_head() == HEAD


def test_an_up_to_date_file_opens_without_loading_alembic(tmp_path: Path) -> None:
    """A restart on a current schema only reads its revision: Alembic's import
    and scripts cost about half a second of every start."""
    url = sqlite_url(tmp_path / "r.db")
    script = (
        "import asyncio, sys\n"
        "from storage import open_storage\n"
        "async def main():\n"
        f"    async with open_storage({url!r}) as storage:\n"
        "        return len(await storage.list())\n"
        "print(asyncio.run(main()), 'alembic' in sys.modules)\n"
    )
    run = lambda: subprocess.run(  # noqa: E731
        [sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.split()
    assert run() == ["0", "True"]  # a new file: migrated by Alembic
    assert run() == ["0", "False"]  # the same file again: nothing to do, nothing loaded


@pytest.mark.parametrize(
    "url",
    [
        "postgresql://reg:S3cretPW@db:5432/registry",  # the driver left out
        "postgres+asyncpg://reg:S3cretPW@db/registry",
        "postgresql+asyncpg:/reg:S3cretPW@db/registry",  # one slash short
        "reg:S3cretPW@db",
    ],
)
def test_a_misspelt_url_never_shows_its_password(url: str) -> None:
    with pytest.raises(InvalidStorageURL) as refused:
        open_storage(url)
    assert "S3cretPW" not in str(refused.value) and "***" in str(refused.value)


def test_the_cli_never_prints_a_misspelt_urls_password() -> None:
    from tests.process import run_cli

    result = run_cli("serve", "--storage", "postgresql://reg:S3cretPW@db/registry")
    assert result.returncode == 2
    assert "S3cretPW" not in result.stderr + result.stdout and "unsupported storage URL" in result.stderr


async def test_a_sweep_whose_write_fails_leaves_the_rest_to_the_journal(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A mass expiry commits in chunks (here of 2). When one fails, the sweep
    fails (503 for whoever waits), and what it marked and did not commit is
    written by the journal's next transaction: the file ends as the index is."""
    from model_registry.storage import sqlite

    monkeypatch.setattr(sqlite, "_COMMIT_CHUNK", 2)
    monkeypatch.setattr(sqlite, "_EXPIRE_AT_ONCE", 2)  # never as one statement: row by row
    url = sqlite_url(tmp_path / "r.db")
    async with open_storage(url) as storage:
        await storage.upsert_many([record(host=f"10.0.0.{i}") for i in range(1, 6)])
        commit, calls = storage._commit, []

        async def failing_second(keys, *, marked=False):
            calls.append(len(keys))
            if len(calls) == 2:
                raise StorageUnavailable("sqlite storage failed to write: disk I/O error")
            await commit(keys, marked=marked)

        monkeypatch.setattr(storage, "_commit", failing_second)
        with pytest.raises(StorageUnavailable):
            await storage.expire(T0 + timedelta(minutes=1), T0 + timedelta(minutes=5), "timeout")
        assert calls == [2, 2]  # the third chunk was never tried
        await storage._journal.now([])  # the journal's next transaction
        with sqlite3.connect(tmp_path / "r.db") as conn:
            healthy = conn.execute("SELECT count(*) FROM instances WHERE healthy").fetchone()[0]
        assert healthy == 0


_HEALTH = "SELECT host, healthy, unhealthy_since, state_reason, last_heartbeat FROM instances"


def _rows(path: Path) -> dict[str, tuple]:
    """Each row's health, by host: what a restart would load."""
    with sqlite3.connect(path) as conn:
        found = conn.execute(_HEALTH)
        return {host: rest for host, *rest in found}


async def test_a_mass_expiry_is_one_statement_that_leaves_the_file_as_the_index_is(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Most records silent: one UPDATE over the table, not a row each. It marks
    what the index marked and nothing else: not a record whose beat is still
    waiting in the write-behind (its row's last beat is older than the cutoff), not
    one that is not ready or not checked."""
    from model_registry.storage import journal as journal_module

    path = tmp_path / "r.db"
    hosts = [f"10.0.0.{i}" for i in range(1, 9)]
    statements: list[str] = []
    async with open_storage(sqlite_url(path)) as storage:
        await storage.upsert_many([record(host=h) for h in hosts])  # heard at T0
        await storage.upsert(record(host="10.0.1.1", ready=False))
        await storage.upsert(record(host="10.0.1.2", check_healthy=False))
        beaten = T0 + timedelta(seconds=90)  # after the cutoff
        assert await storage.touch(InstanceKey("m", hosts[0], 8000), beaten, 3) is not None  # write-behind
        assert storage._journal.pending == 1
        connection = storage._journal._engine.sync_engine
        from sqlalchemy import event

        event.listen(connection, "before_cursor_execute", lambda *a: statements.append(a[2]))
        now = T0 + timedelta(minutes=5)
        marked = await storage.expire(T0 + timedelta(minutes=1), now, "heartbeat timeout 30 s")
        assert sorted(r.host for r in marked) == hosts[1:]
        assert journal_module._EXPIRE in statements
        assert not any(s.startswith("UPDATE instances SET healthy = ?") for s in statements)  # no row marks
        in_memory = {r.host: r for r in await storage.list()}
    rows = _rows(path)
    for host, r in in_memory.items():
        since = None if r.unhealthy_since is None else r.unhealthy_since.strftime("%Y-%m-%d %H:%M:%S.%f")
        assert rows[host][:3] == [r.healthy, since, r.state_reason], host
    assert rows[hosts[0]][0] == 1 and rows[hosts[0]][3].startswith("2026-03-01 12:01:30")
    assert rows["10.0.1.1"][0] == 1 and rows["10.0.1.2"][0] == 1
    async with open_storage(sqlite_url(path)) as storage:  # and a restart loads the same
        assert {r.host: (r.healthy, r.unhealthy_since, r.state_reason) for r in await storage.list()} == {
            h: (r.healthy, r.unhealthy_since, r.state_reason) for h, r in in_memory.items()
        }


async def test_whole_rows_written_with_an_expiry_are_written_after_it(tmp_path: Path) -> None:
    """A record the index changed while a sweep went on (filed again where the walk
    had passed, say) may match the expiry's statement without being marked: its
    whole row, written in the same transaction after the statement, puts it back."""
    path = tmp_path / "r.db"
    async with open_storage(sqlite_url(path)) as storage:
        await storage.upsert_many([record(host="10.0.0.1"), record(host="10.0.0.2")])
        journal = storage._journal
        journal.behind([InstanceKey("m", "10.0.0.1", 8000)])  # healthy in the index, written whole
        await journal.expired(T0 + timedelta(minutes=1), T0 + timedelta(minutes=5), "heartbeat timeout 30 s")
    rows = _rows(path)
    assert rows["10.0.0.1"][0] == 1  # as the index has it
    assert rows["10.0.0.2"][:3] == [0, "2026-03-01 12:05:00.000000", "heartbeat timeout 30 s"]


async def test_an_expiry_whose_write_fails_is_written_by_the_next_transaction(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "r.db"
    async with open_storage(sqlite_url(path)) as storage:
        await storage.upsert_many([record(host=f"10.0.0.{i}") for i in range(1, 4)])
        journal = storage._journal
        write, calls = journal._write, []

        async def failing_first(*args):
            calls.append(1)
            if len(calls) == 1:
                raise StorageUnavailable("sqlite storage failed to write: disk I/O error")
            await write(*args)

        monkeypatch.setattr(journal, "_write", failing_first)
        with pytest.raises(StorageUnavailable):
            await storage.expire(T0 + timedelta(minutes=1), T0 + timedelta(minutes=5), "timeout")
        assert journal.pending == 1  # the expiry, kept
        await journal.now([])
        assert journal.pending == 0
    assert {row[0] for row in _rows(path).values()} == {0}


async def test_a_record_not_ready_is_not_expired_by_its_silence_in_the_index_nor_the_file(
    tmp_path: Path,
) -> None:
    """Filed in the wheel while ready, then not ready (a worker that restarted and
    registered ``ready: false``): its start-up grace, not its beats, decides. The
    index leaves it healthy, and so does the mass expiry's statement."""
    path = tmp_path / "r.db"
    async with open_storage(sqlite_url(path)) as storage:
        await storage.upsert_many([record(host=f"10.0.0.{i}") for i in range(1, 4)])
        await storage.census(T0 - timedelta(seconds=1), T0 - timedelta(days=1))  # filed where they beat
        assert await storage.set_ready(InstanceKey("m", "10.0.0.1", 8000), False) is not None
        marked = await storage.expire(T0 + timedelta(minutes=1), T0 + timedelta(minutes=5), "timeout")
        assert sorted(r.host for r in marked) == ["10.0.0.2", "10.0.0.3"]
        starting = await storage.get(InstanceKey("m", "10.0.0.1", 8000))
        assert starting is not None and starting.healthy and not starting.ready
    assert _rows(path)["10.0.0.1"][0] == 1
    async with open_storage(sqlite_url(path)) as storage:
        again = await storage.get(InstanceKey("m", "10.0.0.1", 8000))
        assert again is not None and again.healthy and again.unhealthy_since is None


async def test_rows_written_whole_while_a_sweep_went_on_are_written_again_after_its_statement(
    tmp_path: Path,
) -> None:
    """A record the index changed during the sweep, committed by a transaction of its
    own before the expiry's, would match the statement without having been marked:
    the expiry's transaction writes it again, after the statement."""
    path = tmp_path / "r.db"
    async with open_storage(sqlite_url(path)) as storage:
        await storage.upsert_many([record(host="10.0.0.1"), record(host="10.0.0.2")])
        journal = storage._journal
        journal.sweeping()
        await journal.now([InstanceKey("m", "10.0.0.1", 8000)])  # its own transaction, during the sweep
        await journal.expired(T0 + timedelta(minutes=1), T0 + timedelta(minutes=5), "heartbeat timeout 30 s")
        journal.swept()
    rows = _rows(path)
    assert rows["10.0.0.1"][0] == 1  # healthy, as the index has it
    assert rows["10.0.0.2"][0] == 0
