"""What the parts of the registry share: the storage, the clock, the change
feed, and when the storage last failed.

``Registry`` (reads and writes), ``Checker`` (the sweeps), ``Cooldowns``
(routers' failure reports) and ``Replication`` (other replicas' changes) each
hold the one ``Core`` rather than each other, so dependencies between them
point one way: every part to the core, none back.
"""

from __future__ import annotations

import contextlib
import logging
from collections import Counter
from collections.abc import Iterator, Sequence

from model_registry_sdk.record import Change, InstanceKey, ModelInstance

from .clock import Clock, ServerClock, SystemClock
from .events import Feed
from .storage import Storage, StorageUnavailable

__all__ = ["Core", "fields_of"]

log = logging.getLogger("registry")


def fields_of(key: InstanceKey) -> dict[str, str]:
    """Log fields naming an instance."""
    return {"model": key.model_name, "addr": key.address}


class Core:
    def __init__(self, storage: Storage, clock: Clock | None, follow_server: bool, feed: Feed) -> None:
        self.storage = storage
        base = clock or SystemClock()
        self.server_clock = ServerClock(base) if follow_server else None
        #: The clock everything is stamped and judged by (the database's, on PostgreSQL).
        self.clock: Clock = self.server_clock or base
        #: Every change to membership and health, for watchers (see ``events``).
        self.feed = feed
        #: Monotonic time of the last storage failure seen: the checker holds
        #: back for one timeout after it, as after a start.
        self.outage_at: float | None = None
        #: The changes this process made, by type (not other replicas'): for the metrics.
        self.changes: Counter[Change] = Counter()

    @contextlib.contextmanager
    def noting_outages(self) -> Iterator[None]:
        try:
            yield
        except StorageUnavailable:
            self.outage_at = self.clock.monotonic()
            raise

    def publish(self, change: Change, record: ModelInstance) -> None:
        """Tell this process's watchers, and the other replicas'."""
        self.publish_many(change, (record,))

    def publish_many(self, change: Change, records: Sequence[ModelInstance]) -> None:
        """``publish`` each of ``records`` (a sweep's slice: one call, not one a record)."""
        self.changes[change] += len(records)
        publish, announce, value = self.feed.publish, self.storage.announce, change.value
        shared = getattr(announce, "__func__", None) is not Storage.announce  # (else a no-op: not called)
        for record in records:
            publish(change, record)
            if shared:
                announce(value, record)

    async def sync_clock(self) -> None:
        """Follow the storage server's clock (a no-op for backends without one)."""
        if self.server_clock is None:
            return
        try:
            await self.server_clock.sync(self.storage.server_time)
        except StorageUnavailable as exc:
            log.warning("could not read the database clock; keeping the last offset: %s", exc)
            return
        if self.server_clock.synced_at is None:
            # The backend has no clock of its own: use ours directly.
            self.clock, self.server_clock = self.server_clock.base, None
            return
        offset = self.server_clock.offset.total_seconds()
        if abs(offset) > 1:
            log.warning(
                "this host's clock differs from the database server's; following the database",
                extra={"offset_s": round(offset, 3)},
            )
