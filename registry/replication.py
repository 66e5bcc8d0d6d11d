"""Changes other replicas make, shown to this replica's watchers.

Replicas sharing a database announce each change (``Storage.announce``); each
one hears the others' (``Storage.subscribe``) and publishes them to its own
feed, so a watcher sees every change whichever replica made it. A change whose
record was too large to travel is read back by key; a gap in what was heard
makes every watcher resync.
"""

from __future__ import annotations

import asyncio
import logging

from model_registry_sdk.record import Change, InstanceKey, ModelInstance

from .core import Core
from .storage import StorageUnavailable
from .storage.tasks import cancelled

__all__ = ["Replication"]

log = logging.getLogger("registry")


class Replication:
    def __init__(self, core: Core) -> None:
        self._core = core
        self._reads: set[asyncio.Task[None]] = set()
        core.storage.subscribe(self._heard)

    async def close(self) -> None:
        """Stop listening, and wait for the reads under way to be cancelled."""
        self._core.storage.subscribe(None)
        await cancelled(list(self._reads))

    def _heard(self, change: str, key: InstanceKey | None, record: ModelInstance | None) -> None:
        feed = self._core.feed
        if key is None:  # changes may have been missed: watchers start over
            log.warning("changes made through other replicas may have been missed; watchers resync")
            feed.gap()
            return
        if record is not None:
            feed.publish(Change(change), record)
            return
        task = asyncio.create_task(self._read(Change(change), key))
        self._reads.add(task)
        task.add_done_callback(self._reads.discard)

    async def _read(self, change: Change, key: InstanceKey) -> None:
        """A change whose record was too large to travel: read it here."""
        try:
            record = await self._core.storage.get(key)
        except StorageUnavailable as exc:
            log.warning("could not read a change another replica made: %s", exc)
            return
        gone = ModelInstance(key.model_name, key.host, key.port, healthy=False)
        self._core.feed.publish(change, record or gone)
