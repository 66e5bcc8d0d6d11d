"""The server's garbage-collector policy: what is made is frozen out of the
collector's sight, and a deep collection still finds cycles among the frozen."""

from __future__ import annotations

import asyncio
import gc
import weakref

from model_registry.api.collector import Collector


class Node:
    pass


async def _eventually(condition, timeout: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, "not within the timeout"
        await asyncio.sleep(0.01)


async def test_what_is_made_is_frozen_and_a_deep_collection_finds_frozen_cycles() -> None:
    collector = Collector(period=0.01)
    collector.start()
    try:
        node = Node()
        node.itself = node  # a cycle: only the cyclic collector can free it
        gone = weakref.ref(node)
        frozen = gc.get_freeze_count()
        made = [Node() for _ in range(1000)]
        await _eventually(lambda: gc.get_freeze_count() >= frozen + 1000)
        del node
        gc.collect()
        assert gone() is not None  # frozen: an ordinary collection does not see it
        collector.deep_collect()
        assert gone() is None and collector.deep_collections == 1 and collector.deep_seconds > 0
        assert len(made) == 1000
    finally:
        await collector.stop()
        gc.unfreeze()
