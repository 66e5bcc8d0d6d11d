"""``ProbeShares``: which instances this replica probes, when several share PostgreSQL.

Instances fall into ``BUCKETS`` buckets by a hash of their key. A replica
probes the instances of the buckets it holds, and holds a bucket by a
session-level advisory lock on one dedicated connection: PostgreSQL grants
each lock to one session at a time, so two replicas never probe one instance
at once, and frees every lock of a session the moment its connection ends,
so a replica that dies (``kill -9`` closes its sockets at once) lets go of its
share without anyone having to notice. Every ``period`` seconds each replica
looks at the locks held (``pg_locks``), counts the replicas holding some, and
takes free buckets up to its fair share (all of them divided by the replicas)
or lets go of those past it: a dead replica's share is taken over within a
period, and a new replica gets its share within two.

A replica that loses its connection holds nothing from that moment (it stops
probing rather than probe beside whoever takes its share), and tries again
every period.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import zlib

import asyncpg

from model_registry_sdk.record import InstanceKey

from .tasks import cancelled

__all__ = ["BUCKETS", "ProbeShares", "bucket_of"]

log = logging.getLogger(__name__)

BUCKETS = 64
#: The first key of the two-key advisory locks on buckets ("mR" and 1, apart from the
#: sweep's lock), and of the lock each replica holds to be counted (on its backend's pid).
_NAMESPACE, _PRESENCE = 0x6D52_0001, 0x6D52_0002
_HELD = """
SELECT classid::int AS space, objid::int AS bucket, pid = pg_backend_pid() AS mine, pid
FROM pg_locks
WHERE locktype = 'advisory' AND classid IN ($1::int::oid, $2::int::oid) AND objsubid = 2 AND granted
"""


def bucket_of(key: InstanceKey) -> int:
    """The bucket of an instance: the same on every replica."""
    return zlib.crc32(f"{key.model_name}\0{key.host}\0{key.port}".encode()) % BUCKETS


class ProbeShares:
    """``owns(key)`` answers at once from the buckets held; a task keeps them."""

    def __init__(self, dsn: str, period: float = 1.0, connect_timeout: float = 3.0) -> None:
        self._dsn, self.period, self._connect_timeout = dsn, period, connect_timeout
        self.held: set[int] = set()
        self._conn: asyncpg.Connection | None = None
        self._task: asyncio.Task[None] | None = None
        self.ready = asyncio.Event()  # set after the first round

    def owns(self, key: InstanceKey) -> bool:
        return bucket_of(key) in self.held

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="probe-shares")

    async def stop(self) -> None:
        await cancelled([self._task])
        self.held = set()
        if self._conn is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._conn.close(), 2)  # frees every lock at once
            self._conn = None

    async def _run(self) -> None:
        while True:
            try:
                await self._round()
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError) as exc:
                if self.held:
                    log.warning("lost the connection that holds this replica's probes; probing none: %s", exc)
                self.held = set()
                if self._conn is not None:
                    self._conn.terminate()
                    self._conn = None
            self.ready.set()
            await asyncio.sleep(self.period)

    async def _round(self) -> None:
        if self._conn is None or self._conn.is_closed():
            self.held = set()
            self._conn = conn = await asyncpg.connect(self._dsn, timeout=self._connect_timeout)
            await conn.execute("SELECT pg_advisory_lock($1::int, pg_backend_pid())", _PRESENCE)
        conn = self._conn
        rows = await conn.fetch(_HELD, _NAMESPACE, _PRESENCE, timeout=self._connect_timeout)
        buckets = [r for r in rows if r["space"] == _NAMESPACE]
        mine = {r["bucket"] for r in buckets if r["mine"]}
        taken = {r["bucket"] for r in buckets if not r["mine"]}
        replicas = max(1, sum(1 for r in rows if r["space"] == _PRESENCE))
        fair = math.ceil(BUCKETS / replicas)
        if len(mine) > fair:  # a replica joined: let go of the share past ours
            for bucket in sorted(mine)[fair:]:
                await conn.fetchval("SELECT pg_advisory_unlock($1::int, $2::int)", _NAMESPACE, bucket)
                mine.discard(bucket)
        for bucket in range(BUCKETS):
            if len(mine) >= fair:
                break
            if bucket in mine or bucket in taken:
                continue
            if await conn.fetchval("SELECT pg_try_advisory_lock($1::int, $2::int)", _NAMESPACE, bucket):
                mine.add(bucket)
        self.held = mine
