"""The budget for listings' kept JSON: the oldest go past it, replaced snapshots leave it."""

from __future__ import annotations

import gc

from model_registry.api.memos import Memos
from model_registry.storage.readonly import Snapshot


def test_past_the_budget_the_oldest_memos_are_let_go() -> None:
    memos = Memos(budget=250)
    snapshots = [Snapshot() for _ in range(3)]
    for snapshot in snapshots:
        memos.keep(snapshot, b"x" * 100)
    assert [s.memo for s in snapshots] == [None, b"x" * 100, b"x" * 100]
    assert memos.bytes == 200 and len(memos) == 2
    memos.keep(snapshots[0], b"y" * 100)  # written again by its next reader
    assert [s.memo is not None for s in snapshots] == [True, False, True] and memos.bytes == 200


def test_a_replaced_snapshot_leaves_the_count_with_its_memo() -> None:
    memos = Memos(budget=1000)
    snapshot = Snapshot()
    memos.keep(snapshot, b"x" * 300)
    assert memos.bytes == 300
    del snapshot
    gc.collect()
    assert memos.bytes == 0 and len(memos) == 0


def test_a_listing_larger_than_the_whole_budget_is_not_kept() -> None:
    memos = Memos(budget=10)
    snapshot = Snapshot()
    memos.keep(snapshot, b"x" * 11)
    assert snapshot.memo is None and memos.bytes == 0


def test_a_smaller_budget_lets_the_oldest_go_at_once() -> None:
    memos = Memos(budget=1000)
    snapshots = [Snapshot() for _ in range(3)]
    for snapshot in snapshots:
        memos.keep(snapshot, b"x" * 100)
    memos.resize(150)
    assert [s.memo is not None for s in snapshots] == [False, False, True] and memos.bytes == 100
    memos.resize(0)  # --listing-cache 0: none kept, each listing written for its reader
    assert memos.bytes == 0 and snapshots[2].memo is None
    memos.keep(snapshots[0], b"x")
    assert snapshots[0].memo is None


async def test_the_listing_cache_setting_sizes_the_process_cache(aiohttp_client) -> None:
    from model_registry.api import create_app
    from model_registry.api.views import LISTINGS
    from model_registry.settings import Settings

    from .conftest import serve_app

    try:
        create_app(Settings(storage="memory://", listing_cache=0))
        assert LISTINGS.budget == 0
        client = await serve_app(aiohttp_client, create_app(Settings(storage="memory://", listing_cache=1)))
        assert LISTINGS.budget == 2**20
        body = {"model_name": "m", "host": "10.0.0.1", "port": 8000}
        assert (await client.post("/api/v1/instances", json=body)).status in (200, 201)
        first = await (await client.get("/api/v1/instances?model_name=m&healthy_only=true")).read()
        assert LISTINGS.bytes == len(first) and len(LISTINGS) == 1  # kept for the next reader
        again = await (await client.get("/api/v1/instances?model_name=m&healthy_only=true")).read()
        assert again == first
    finally:
        LISTINGS.resize(64 * 2**20)
