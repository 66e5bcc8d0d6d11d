"""Fixtures shared by every test package: real backends, an injected clock."""

from __future__ import annotations

import itertools
import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from model_registry import ManualClock, Registry
from model_registry.storage import Storage, open_storage
from tests.pg import PostgresCluster, find_binaries

_databases = itertools.count()


def sqlite_url(path: Path) -> str:
    return f"sqlite+aiosqlite:///{path}"


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresCluster]:
    """One real PostgreSQL server for the whole run.

    In CI (``CI`` set) a PostgreSQL that cannot start fails the tests; on a
    machine without it they are skipped, saying why.
    """
    binaries = find_binaries()
    if binaries is None:
        reason = "PostgreSQL server binaries not found (apt-get install postgresql)"
        if os.environ.get("CI"):
            pytest.fail(f"{reason}; CI must run the PostgreSQL tests", pytrace=False)
        pytest.skip(reason)
    cluster = PostgresCluster(binaries)
    try:
        cluster.init()
    except Exception as exc:
        cluster.destroy()
        pytest.fail(f"PostgreSQL did not start: {exc}", pytrace=False)
    yield cluster
    cluster.destroy()


@pytest.fixture
def pg_url(postgres: PostgresCluster) -> str:
    """A fresh, empty database on the shared server."""
    return postgres.create_database(f"test_{next(_databases)}")


@pytest.fixture(params=["memory", "sqlite", "postgresql"])
def storage_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Every backend the contract suite must hold for."""
    if request.param == "postgresql":
        return request.getfixturevalue("pg_url")
    return "memory://" if request.param == "memory" else sqlite_url(tmp_path / "registry.db")


@pytest.fixture
async def storage(storage_url: str) -> AsyncIterator[Storage]:
    async with open_storage(storage_url) as opened:
        yield opened


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
async def registry(storage: Storage, clock: ManualClock) -> AsyncIterator[Registry]:
    async with Registry(
        storage, heartbeat_interval=5, heartbeat_timeout=30, evict_after=600, clock=clock, checker=False
    ) as started:
        yield started
