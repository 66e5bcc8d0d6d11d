"""The cyclic garbage collector, kept off the live fleet.

A registry's heap is mostly its records, a few tracked objects each, and they
hold no reference cycles: reference counting frees every one that is replaced
or deleted. Yet CPython's collector walks every tracked object in the
generation it collects, and two things make that a stall at scale:

- a full collection walks the whole heap: 0.6 s at a million instances;
- a beat makes a new record and frees the old one, and a young collection is
  due only when allocations *outnumber* deallocations by 700, so under steady
  beating the youngest generation grows unchecked, and its collection, when it
  comes, walks hundreds of thousands of records (40 ms measured at 100,000).

So every ``PERIOD`` seconds what was made since is frozen (``gc.freeze``, which
takes no time: it leaves objects out of later collections, and reference counting
still frees them). The collector is left on for the young cyclic garbage made in
between; the request paths make none (measured: a full collection after
thousands of beats, fresh connections, listings and selections finds nothing).
What is frozen and later becomes cyclic garbage is not found again, so when the
process's peak resident memory has grown past twice what it was after the last
*deep* collection (of everything, frozen included), another is made: its pause
is paid once per doubling (and at most once in ``DEEP_GAP``), like a growing
array's copies, and said in the log.
(Counting the frozen objects instead would walk them all: 10 ms at 400,000.)
"""

from __future__ import annotations

import asyncio
import gc
import logging
import resource
import sys
import time

from model_registry.storage.tasks import cancelled

__all__ = ["Collector"]

log = logging.getLogger(__name__)

#: Seconds between freezes: what one walk of the youngest generation can hold at
#: 100,000 beats a second stays about a millisecond of work.
PERIOD = 0.1
#: Seconds at least between deep collections (a large fleet's load grows the heap
#: for real: it would double several times in a minute, and a deep collection
#: of a million records holds the loop for a second or two).
DEEP_GAP = 600.0
#: Growth of the peak resident memory, in bytes, below which no deep collection is
#: worth its pause, whatever the doubling says.
SLACK = 64 * 1024 * 1024


class Collector:
    def __init__(self, period: float = PERIOD) -> None:
        self.period = period
        self.deep_collections = 0
        self.deep_seconds = 0.0
        self._after_deep = 0
        self._next_deep = time.monotonic() + DEEP_GAP
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Freeze what start-up made (it lives as long as the process), then keep
        freezing what is made."""
        gc.freeze()
        self._after_deep = _peak_rss()
        self._task = asyncio.create_task(self._run(), name="registry-collector")

    async def stop(self) -> None:
        await cancelled([self._task])
        self._task = None

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.period)
            gc.freeze()
            if _peak_rss() > 2 * self._after_deep + SLACK and time.monotonic() >= self._next_deep:
                self.deep_collect()

    def deep_collect(self) -> None:
        """Collect everything, the frozen too, then freeze what is left."""
        started = time.perf_counter()
        gc.unfreeze()
        found = gc.collect()
        gc.freeze()
        took = time.perf_counter() - started
        self.deep_collections += 1
        self.deep_seconds += took
        self._after_deep = _peak_rss()
        self._next_deep = time.monotonic() + DEEP_GAP
        log.info("deep garbage collection", extra={"seconds": round(took, 3), "freed": found})


def _peak_rss() -> int:
    """The process's peak resident memory so far, in bytes (a cheap system call)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024
