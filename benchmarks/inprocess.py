"""Measurements taken inside one process: event-loop lag while the checker
sweeps, memory per instance, and the time to serve after a restart."""

from __future__ import annotations

import asyncio
import dataclasses
import gc
import os
import statistics
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

from benchmarks.load import ROOT, identity, registry

sys.path.insert(0, str(ROOT))


def start_postgres():
    """A throw-away PostgreSQL server, or None when its binaries are missing."""
    from tests.pg import PostgresCluster, find_binaries

    binaries = find_binaries()
    return PostgresCluster(binaries).init() if binaries else None


def _row(n: int, now: datetime) -> dict:
    from model_registry.storage import ModelInstance

    record = ModelInstance(**identity(n), healthy=True, last_heartbeat=now, registered_at=now)
    return dataclasses.asdict(record)


async def bulk_insert(storage_url: str, count: int) -> None:
    """Fill a database with ``count`` healthy instances, fast (a setup step, not a measurement)."""
    from sqlalchemy import delete, insert

    from model_registry.storage import open_storage
    from model_registry.storage.schema import instances

    now = datetime.now(timezone.utc)
    async with open_storage(storage_url) as storage, storage._engine.begin() as conn:
        await conn.execute(delete(instances))
        for start in range(0, count, 5000):
            rows = [_row(n, now) for n in range(start, min(count, start + 5000))]
            await conn.execute(insert(instances), rows)


def _rss_kib() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


async def memory_per_instance(count: int = 100_000) -> dict:
    from model_registry import Registry
    from model_registry.storage import open_storage

    gc.collect()
    async with open_storage("memory://") as storage, Registry(storage, checker=False) as reg:
        before = _rss_kib()
        for n in range(count):
            await reg.register(identity(n))
        gc.collect()
        after = _rss_kib()
        assert len(await reg.instances()) == count
        # Then every model read once: each listing's JSON is kept until the model changes.
        from model_registry.api.views import _listing

        for model in {identity(n)["model_name"] for n in range(count)}:
            _listing(await reg.instances(model, healthy_only=True))
        gc.collect()
        read = _rss_kib()
    per_instance = (after - before) * 1024 / count
    return {
        "scenario": "memory/100000",
        "bytes_per_instance": round(per_instance),
        "bytes_per_instance_every_model_read": round((read - before) * 1024 / count),
        "target": 1024,
        "met": per_instance <= 1024,
    }


async def sweep_lag(count: int = 100_000, seconds: float = 8.0) -> dict:
    """p99 event-loop lag while the checker sweeps ``count`` instances and heartbeats flow.

    Nine in ten instances keep beating; one in ten goes silent, so sweeps both
    scan and mark. Lag is how late a 1 ms ticker wakes up.
    """
    from model_registry import Registry
    from model_registry.storage import open_storage

    storage = open_storage("memory://")
    async with storage, Registry(storage, heartbeat_interval=0.5, heartbeat_timeout=1.5) as reg:
        for n in range(count):
            await reg.register(identity(n))
        gc.collect()
        gc.freeze()  # as the server does once it is up (api/server.py)
        lags: list[float] = []
        stop = time.monotonic() + seconds

        async def beat() -> None:
            n = 0
            while time.monotonic() < stop:
                # 20 beats, then let others run, as a server interleaves requests.
                for _ in range(20):
                    n = (n + 1) % count
                    if n % 10:
                        await reg.heartbeat({**identity(n), "queue_length": 1})
                await asyncio.sleep(0)

        async def tick() -> None:
            while time.monotonic() < stop:
                started = time.perf_counter()
                await asyncio.sleep(0.001)
                lags.append((time.perf_counter() - started - 0.001) * 1000)

        await asyncio.gather(beat(), tick())
        silent = sum(not i.healthy for i in await reg.instances())
    lags.sort()
    p99 = lags[int(len(lags) * 0.99)]
    return {
        "scenario": "sweep-lag/100000",
        "p99_ms": round(p99, 2),
        "max_ms": round(lags[-1], 2),
        "marked_unhealthy": silent,
        "target": 10,
        "met": p99 <= 10,
    }


def restart_time(workdir: Path, count: int = 100_000) -> dict:
    storage = f"sqlite+aiosqlite:///{workdir / 'restart.db'}"
    asyncio.run(bulk_insert(storage, count))
    runs = []
    for _ in range(3):  # the median of three starts on the same file
        server = registry(storage)
        try:
            runs.append(server.wait_ready(timeout=120))
        finally:
            server.stop()
    ready = statistics.median(runs)
    # Python's own start (imports) is part of it; measured alone for reference.
    started = time.monotonic()
    subprocess.run([sys.executable, "-c", "import model_registry.api.app"], cwd=ROOT, check=True)
    imports = time.monotonic() - started
    return {
        "scenario": "restart/sqlite/100000",
        "ready_s": round(ready, 2),
        "runs_s": [round(r, 2) for r in runs],
        "python_start_s": round(imports, 2),
        "target": 3,
        "met": ready <= 3,
    }


def run_all(workdir: Path) -> list[dict]:
    results = []
    for _name, measure in (
        ("memory", lambda: _in_child("memory_per_instance")),
        ("sweep", lambda: _in_child("sweep_lag")),
        ("restart", lambda: restart_time(workdir)),
    ):
        result = measure()
        sys.stderr.write(f"{result['scenario']:<24} {result}\n")
        results.append(result)
    return results


def _in_child(function: str) -> dict:
    """Run a measurement in a fresh process pinned to the server core (a clean heap)."""
    import orjson

    code = (
        "import asyncio, orjson, sys; sys.path.insert(0, '.');"
        f"from benchmarks import inprocess; r = asyncio.run(inprocess.{function}());"
        "sys.stdout.write(orjson.dumps(r).decode())"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
        preexec_fn=lambda: os.sched_setaffinity(0, {0}),
    ).stdout
    return orjson.loads(out)
