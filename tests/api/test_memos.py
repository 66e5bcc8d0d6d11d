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
