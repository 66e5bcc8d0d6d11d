"""Clocks: wall time for timestamps, monotonic time for intervals.

Wall time (UTC) is for what is stored, shown and compared across processes;
intervals (retry waits, beat periods, the registry's grace) use monotonic
time, which never jumps. Tests inject a ``ManualClock`` and move time by hand.
"""

from __future__ import annotations

import asyncio
import functools
import time
from datetime import datetime, timedelta, timezone
from typing import Protocol

__all__ = ["Clock", "ManualClock", "SystemClock"]


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
