"""Clocks: wall time for timestamps, monotonic time for intervals (``Clock``,
``SystemClock`` and ``ManualClock`` are the client's, ``model_registry_sdk.clock``),
and ``ServerClock``, which follows the database server's.

``last_heartbeat`` is wall time (UTC) because it is stored, shown and compared
across restarts. Intervals the process measures on its own (the start-up grace,
the checker's period) use monotonic time, which never jumps. Tests inject a
``ManualClock`` and move time by hand.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta

from model_registry_sdk.clock import Clock, ManualClock, SystemClock

__all__ = ["Clock", "ManualClock", "ServerClock", "SystemClock"]


class ServerClock:
    """Another clock's wall time, shifted onto a server's (PostgreSQL's).

    Replicas sharing a database each measure how far their clock is from the
    database server's and add the difference, so that every replica stamps
    and judges heartbeats by the one clock they share. The offset is measured
    as the server's reading minus the midpoint of the local readings taken
    around the query, so the error is at most half a round trip.
    """

    def __init__(self, base: Clock) -> None:
        self._base = base
        self.offset = timedelta(0)
        self.synced_at: float | None = None

    @property
    def base(self) -> Clock:
        """The clock this one shifts."""
        return self._base

    def now(self) -> datetime:
        return self._base.now() + self.offset

    def monotonic(self) -> float:
        return self._base.monotonic()

    async def sleep(self, seconds: float) -> None:
        await self._base.sleep(seconds)

    async def sync(self, read_server: Callable[[], Awaitable[datetime | None]]) -> None:
        started, before = self._base.monotonic(), self._base.now()
        server = await read_server()
        if server is None:
            return
        round_trip = self._base.monotonic() - started
        self.offset = server - (before + timedelta(seconds=round_trip / 2))
        self.synced_at = self._base.monotonic()
