"""Fixtures shared by every test package: real backends, an injected clock."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from registry import ManualClock, Registry
from storage import Storage, open_storage


def sqlite_url(path: Path) -> str:
    return f"sqlite+aiosqlite:///{path}"


@pytest.fixture(params=["memory", "sqlite"])
def storage_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Every backend the contract suite must hold for."""
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
