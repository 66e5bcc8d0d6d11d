"""``memory://``: an ``InstanceIndex`` and nothing else; lost when the process ends.

Every primitive runs without an ``await`` inside, so on one event loop it is
atomic by construction.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from model_registry_sdk.record import InstanceKey, ModelInstance

from .base import Edit, Storage, StoredToken
from .index import IndexReads, InstanceIndex, evict_in_slices, expire_in_slices

__all__ = ["MemoryStorage"]


class MemoryStorage(IndexReads, Storage):
    name = "memory"
    durable = False

    def __init__(self) -> None:
        super().__init__()
        self._index = InstanceIndex()
        self._tokens: dict[str, StoredToken] = {}
        # The index's own method, without a frame of ours around it: every beat calls it.
        self.beat = self._index.beat  # type: ignore[method-assign]
        self.set_load = self._index.set_load  # type: ignore[method-assign]

    async def upsert(self, record: ModelInstance) -> tuple[ModelInstance, bool]:
        return self._index.upsert(record)

    async def upsert_many(self, records: Sequence[ModelInstance]) -> list[tuple[ModelInstance, bool]]:
        upsert = self._index.upsert
        return [upsert(record) for record in records]

    async def override(self, key: InstanceKey, change: Edit) -> ModelInstance | None:
        return self._index.override(key, change)

    async def set_ready(self, key: InstanceKey, ready: bool) -> ModelInstance | None:
        return self._index.set_ready(key, ready)

    async def overdue_starts(self, now: datetime, default_grace: float) -> list[ModelInstance]:
        return self._index.overdue_starts(now, default_grace)

    async def set_cooldown(
        self, key: InstanceKey, until: datetime | None, reason: str | None = None
    ) -> ModelInstance | None:
        return self._index.set_cooldown(key, until, reason)

    async def insert(self, record: ModelInstance) -> ModelInstance | None:
        return self._index.insert(record)

    async def touch(
        self, key: InstanceKey, now: datetime, queue_length: int | None
    ) -> tuple[ModelInstance, bool] | None:
        return self._index.touch(key, now, queue_length)

    async def mark_unhealthy(
        self, key: InstanceKey, now: datetime, reason: str | None = None
    ) -> ModelInstance | None:
        return self._index.mark_unhealthy(key, now, reason)

    async def pass_check(self, key: InstanceKey, heard_after: datetime) -> ModelInstance | None:
        return self._index.pass_check(key, heard_after)

    async def delete(self, key: InstanceKey) -> ModelInstance | None:
        return self._index.delete(key)

    async def expire(self, cutoff: datetime, now: datetime, reason: str | None = None) -> list[ModelInstance]:
        return await expire_in_slices(self._index, cutoff, now, reason)

    async def evict(self, cutoff: datetime) -> list[ModelInstance]:
        return await evict_in_slices(self._index, cutoff)

    async def tokens(self) -> list[StoredToken]:
        return [self._tokens[name] for name in sorted(self._tokens)]

    async def add_token(self, token: StoredToken) -> bool:
        if token.name in self._tokens or any(t.digest == token.digest for t in self._tokens.values()):
            return False
        self._tokens[token.name] = token
        return True

    async def remove_token(self, name: str) -> StoredToken | None:
        return self._tokens.pop(name, None)

    async def ping(self) -> None:
        return None
