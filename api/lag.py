"""How late the event loop runs what is due: the one number that says whether
anything (a probe storm, a large scrape, a sweep) is holding it.

A task asks to wake every ``PERIOD`` seconds and records by how much it woke
late, into a histogram (``model_registry_event_loop_lag_seconds``). Every
request the loop serves meanwhile waits about as long, so a p99 of this lag is
a floor under every route's p99. Twenty wake-ups a second cost the loop some
0.05 % of a core.
"""

from __future__ import annotations

import asyncio
import bisect

from model_registry.storage.tasks import cancelled

__all__ = ["BUCKETS", "PERIOD", "LoopLag"]

PERIOD = 0.05
#: Upper bounds of the histogram's buckets, in seconds (then +Inf).
BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


class LoopLag:
    def __init__(self, period: float = PERIOD) -> None:
        self.period = period
        self.counts = [0] * (len(BUCKETS) + 1)
        self.sum = 0.0
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="registry-loop-lag")

    async def stop(self) -> None:
        await cancelled([self._task])
        self._task = None

    def record(self, lag: float) -> None:
        lag = max(0.0, lag)
        self.counts[bisect.bisect_left(BUCKETS, lag)] += 1
        self.sum += lag

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            due = loop.time() + self.period
            await asyncio.sleep(self.period)
            self.record(loop.time() - due)
