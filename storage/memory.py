"""``memory://``: records in a dict, lost when the process ends.

Every primitive runs without an ``await`` inside, so on one event loop it is
atomic by construction.
"""

from __future__ import annotations

import copy
import dataclasses
from datetime import datetime

from .base import Storage
from .model import InstanceKey, ModelInstance, ModelSummary

__all__ = ["MemoryStorage"]


def _copy(record: ModelInstance) -> ModelInstance:
    metadata = copy.deepcopy(record.metadata) if record.metadata else {}
    return dataclasses.replace(record, metadata=metadata)


class MemoryStorage(Storage):
    name = "memory"
    durable = False

    def __init__(self) -> None:
        super().__init__()
        self._records: dict[InstanceKey, ModelInstance] = {}

    async def upsert(self, record: ModelInstance) -> tuple[ModelInstance, bool]:
        previous = self._records.get(record.key)
        stored = _copy(record)
        if previous is not None:
            stored.registered_at = previous.registered_at
        self._records[record.key] = stored
        return _copy(stored), previous is None

    async def insert(self, record: ModelInstance) -> ModelInstance | None:
        if record.key in self._records:
            return None
        self._records[record.key] = _copy(record)
        return _copy(record)

    async def touch(self, key: InstanceKey, now: datetime, queue_length: int | None) -> ModelInstance | None:
        record = self._records.get(key)
        if record is None:
            return None
        record.last_heartbeat = now
        record.healthy = True
        record.unhealthy_since = None
        if queue_length is not None:
            record.queue_length = queue_length
        return _copy(record)

    async def mark_unhealthy(self, key: InstanceKey, now: datetime) -> ModelInstance | None:
        record = self._records.get(key)
        if record is None:
            return None
        if record.healthy or record.unhealthy_since is None:
            record.unhealthy_since = now
        record.healthy = False
        return _copy(record)

    async def delete(self, key: InstanceKey) -> ModelInstance | None:
        return self._records.pop(key, None)

    async def expire(self, cutoff: datetime, now: datetime) -> list[ModelInstance]:
        expired = []
        for record in self._records.values():
            stale = record.last_heartbeat is not None and record.last_heartbeat < cutoff
            if record.healthy and record.check_healthy and stale:
                record.healthy = False
                record.unhealthy_since = now
                expired.append(_copy(record))
        return expired

    async def evict(self, cutoff: datetime) -> list[ModelInstance]:
        doomed = [
            key
            for key, record in self._records.items()
            if not record.healthy and record.unhealthy_since is not None and record.unhealthy_since < cutoff
        ]
        return [self._records.pop(key) for key in doomed]

    async def get(self, key: InstanceKey) -> ModelInstance | None:
        record = self._records.get(key)
        return None if record is None else _copy(record)

    async def list(self, model_name: str | None = None, healthy_only: bool = False) -> list[ModelInstance]:
        return [
            _copy(self._records[key])
            for key in sorted(self._records)
            if (model_name is None or key.model_name == model_name)
            and (not healthy_only or self._records[key].healthy)
        ]

    async def summarize(self) -> list[ModelSummary]:
        # per model: [total, healthy, enabled, available]
        counts: dict[str, list[int]] = {}
        for r in self._records.values():
            row = counts.setdefault(r.model_name, [0, 0, 0, 0])
            for i, flag in enumerate((True, r.healthy, r.enabled, r.healthy and r.enabled)):
                row[i] += flag
        return [ModelSummary(name, *counts[name]) for name in sorted(counts)]

    async def ping(self) -> None:
        return None
