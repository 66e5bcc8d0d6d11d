"""Clocks: wall time for timestamps, monotonic time for intervals.

``last_heartbeat`` is wall time (UTC) because it is stored, shown and compared
across restarts. Intervals the process measures on its own (the start-up grace,
the checker's period) use monotonic time, which never jumps. Tests inject a
``ManualClock`` and move time by hand.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta, timezone
from typing import Protocol

__all__ = ["Clock", "ManualClock", "ServerClock", "SystemClock"]


class Clock(Protocol):
    def now(self) -> datetime:
        """Timezone-aware UTC wall time."""

    def monotonic(self) -> float:
        """Seconds from an arbitrary origin; never goes backwards."""

    async def sleep(self, seconds: float) -> None:
        """Wait ``seconds`` of this clock's time."""


class SystemClock:
    #: ``datetime.now(timezone.utc)``, called as it is: every beat asks, and a
    #: method wrapped around it would cost a Python frame each time.
    now = staticmethod(functools.partial(datetime.now, timezone.utc))

    def monotonic(self) -> float:
        return time.monotonic()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


class ManualClock:
    """A clock that moves only when told to, for deterministic tests.

    ``sleep`` returns once ``advance`` has carried the clock past its deadline.
    """

    def __init__(self, start: datetime | None = None) -> None:
        self._wall = start or datetime(2026, 1, 1, tzinfo=timezone.utc)
        self._mono = 0.0
        self._sleepers: list[tuple[float, asyncio.Future[None]]] = []

    def now(self) -> datetime:
        return self._wall

    def monotonic(self) -> float:
        return self._mono

    async def sleep(self, seconds: float) -> None:
        future = asyncio.get_running_loop().create_future()
        self._sleepers.append((self._mono + seconds, future))
        await future

    def advance(self, seconds: float) -> None:
        self._mono += seconds
        self._wall += timedelta(seconds=seconds)
        due = [f for deadline, f in self._sleepers if deadline <= self._mono]
        self._sleepers = [(d, f) for d, f in self._sleepers if d > self._mono]
        for future in due:
            if not future.done():
                future.set_result(None)

    @property
    def sleepers(self) -> int:
        """How many ``sleep`` calls are waiting (lets a test know a loop is parked)."""
        return sum(not f.done() for _, f in self._sleepers)


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
