"""The checker's sweep at 10,000 to 1,000,000 instances, in one process with an
injected clock (time moves when told; the event loop and its lag are real).

For each fleet size, on ``memory://`` or a SQLite file, three sweeps are timed
while a 1 ms ticker measures how late the loop runs it (its p99 is a floor under
every request's latency during the sweep):

- ``first``: the first sweep after a start from the database, which files every
  record the start-up put at the dawn of time (SQLite) or that registrations
  filed (memory);
- ``steady``: one heartbeat timeout later, all but 1 % having beaten: the 1 % are
  marked unhealthy;
- ``mass``: one more timeout later with nobody beating, self-preservation off:
  every instance is marked unhealthy at once (a rack, a zone, the network).

Each must finish within the heartbeat interval (10 s) with the loop's p99 lag
at most 10 ms. ``python benchmarks/sweep.py --sizes 10000,100000,1000000``.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import sys
import time
from pathlib import Path

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.load import each_fleet, identity  # noqa: E402

INTERVAL, TIMEOUT = 10.0, 30.0
LAG_TARGET_MS = 10.0
BATCH = 1000


class Ticker:
    """How late a task due every millisecond runs, while it runs."""

    def __init__(self) -> None:
        self.lags: list[float] = []
        self._task: asyncio.Task[None] | None = None
        self._since = time.perf_counter()

    async def __aenter__(self) -> Ticker:
        self._task = asyncio.create_task(self._run())
        await asyncio.sleep(0)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._task is not None
        late = (time.perf_counter() - self._since - 0.001) * 1000
        if late > 0:  # the tick due last: whatever held the loop until now held it too
            self.lags.append(late)
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task

    async def _run(self) -> None:
        while True:
            self._since = started = time.perf_counter()
            await asyncio.sleep(0.001)
            self.lags.append((time.perf_counter() - started - 0.001) * 1000)

    def p99(self) -> float:
        lags = sorted(self.lags) or [0.0]
        return lags[min(len(lags) - 1, int(len(lags) * 0.99))]


async def _timed(registry, name: str) -> dict:
    async with Ticker() as ticker:
        started = time.perf_counter()
        result = await registry.check_once()
        took = time.perf_counter() - started
    return {
        "sweep": name,
        "seconds": round(took, 3),
        "p99_lag_ms": round(ticker.p99(), 2),
        "max_lag_ms": round(max(ticker.lags, default=0.0), 2),
        "ticks": len(ticker.lags),
        "marked": len(result.expired),
        "met": took <= INTERVAL and ticker.p99() <= LAG_TARGET_MS,
    }


async def _beat(registry, storage, bodies: list[dict], silent: int) -> None:
    """A beat for every instance (but one in ``silent``, when not 0), letting other
    work in as a server does between requests; then what the write-behind would
    have written within its interval meanwhile is written (SQLite)."""
    for n, body in enumerate(bodies):
        if not silent or n % silent:
            await registry.heartbeat(body)
        if not n % 1000:
            await asyncio.sleep(0)
    journal = getattr(storage, "_journal", None)
    if journal is not None:
        await journal.now([])


def _registry(storage, clock):
    from model_registry import Registry
    from model_registry.preservation import Preservation

    return Registry(
        storage,
        heartbeat_interval=INTERVAL,
        heartbeat_timeout=TIMEOUT,
        evict_after=0,  # (eviction is the same walk over the unhealthy, later)
        clock=clock,
        checker=False,
        preservation=Preservation(share=1.0),  # off: a mass expiry is what is measured
    )


async def measure(count: int, backend: str, workdir: Path) -> dict:
    from model_registry import ManualClock
    from model_registry.api.collector import Collector
    from model_registry.storage import open_storage

    clock = ManualClock()
    url = "memory://" if backend == "memory" else f"sqlite+aiosqlite:///{workdir / f'sweep-{count}.db'}"
    bodies = [identity(n) for n in range(count)]
    async with open_storage(url) as storage, _registry(storage, clock) as registry:
        for start in range(0, count, BATCH):
            await registry.register_many(bodies[start : start + BATCH])
    # Started again on what was stored (SQLite), or kept as it is (memory: no restart).
    sweeps = []
    storage = open_storage(url) if backend != "memory" else None
    if storage is None:
        storage = open_storage(url)
    async with storage, _registry(storage, clock) as registry:
        if backend == "memory":
            for start in range(0, count, BATCH):
                await registry.register_many(bodies[start : start + BATCH])
        gc.collect()
        collector = Collector()  # as the server keeps it, once it is up
        collector.start()
        clock.advance(TIMEOUT + 1)  # past the start-up grace; nobody silent for long yet
        await _beat(registry, storage, bodies, silent=0)
        sweeps.append(await _timed(registry, "first"))
        clock.advance(TIMEOUT + 1)
        await _beat(registry, storage, bodies, silent=100)
        sweeps.append(await _timed(registry, "steady"))
        clock.advance(TIMEOUT + 1)
        sweeps.append(await _timed(registry, "mass"))
        await collector.stop()
    return {"scenario": f"sweep/{backend}/{count}", "sweeps": sweeps, "met": all(s["met"] for s in sweeps)}


def main() -> None:
    results = []
    for backend, count, workdir in each_fleet(__doc__, 0):  # everything in one process, on one core
        result = asyncio.run(measure(count, backend, workdir))
        for sweep in result["sweeps"]:
            sys.stderr.write(f"{result['scenario']:<24} {orjson.dumps(sweep).decode()}\n")
        results.append(result)
    sys.stdout.write(orjson.dumps(results).decode() + "\n")


if __name__ == "__main__":
    main()
