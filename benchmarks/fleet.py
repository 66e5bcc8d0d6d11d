"""PostgreSQL at fleet scale: replicas on one database while a fleet beats.

Three registry servers (pinned to one core) share a throw-away PostgreSQL server
with full-page writes on, as in production. A fleet is registered in bulk, then
beats each of its instances every ``period`` seconds, each instance always
through the same replica, spread evenly over the period, for three shapes:

- ``batched``: 100,000 instances every 10 s, 100 beats a request (10,000 beats/s);
- ``single``: 10,000 instances every 10 s, one beat a request (1,000 requests/s);
- ``fast``: 10,000 instances every 0.25 s, 100 a request (40,000 beats/s): more
  beats per instance than flushes, so fewer rows than beats;
- ``peak``: 100,000 instances every 2 s, 100 a request (50,000 beats/s): what this
  machine's database sustains while the replicas and the load share its cores.

Measured from the database's own counters over a steady window (after one
period, so that every page has had its first write since the checkpoint made
before it): rows updated per second, WAL bytes per second and per row, commits
per second, the share of updates that were HOT. The period right after the
checkpoint is reported apart (``after_checkpoint``): it holds the full-page
images, once per table page per checkpoint.

Then the table is filled to each of ``--join`` rows (100,000, then 1,000,000) and a
fourth replica is started on it: seconds until it answers ``/health`` (ready), and
its memory.

``python benchmarks/fleet.py`` prints the results as JSON (a few minutes).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.load import LOAD_CORE, Server, identity, registry  # noqa: E402

REPLICAS = 3
IN_FLIGHT = 128  # requests at once, across replicas


@dataclass(frozen=True)
class Shape:
    name: str
    instances: int
    period: float
    batch: int


SHAPES = (
    Shape("batched", 100_000, 10.0, 100),
    Shape("single", 10_000, 10.0, 1),
    Shape("fast", 10_000, 0.25, 100),
    Shape("peak", 100_000, 2.0, 100),
)


def _requests(shape: Shape) -> list[tuple[int, str, bytes, int]]:
    """(replica, path, body, beats) for each request of one period, in sending order."""
    requests = []
    for start in range(0, shape.instances, shape.batch):
        numbers = range(start, min(start + shape.batch, shape.instances))
        beats = [{**identity(n), "queue_length": n % 7} for n in numbers]
        replica = (start // shape.batch) % REPLICAS
        if shape.batch == 1:
            requests.append((replica, "/api/v1/heartbeat", orjson.dumps(beats[0]), 1))
        else:
            requests.append((replica, "/api/v1/heartbeats", orjson.dumps({"beats": beats}), len(beats)))
    return requests


class Counters:
    """The database's own counters, read at the start and the end of a window."""

    SQL = """
        SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), '0/0')::bigint,
               (SELECT n_tup_upd FROM pg_stat_user_tables WHERE relname = 'instances'),
               (SELECT n_tup_hot_upd FROM pg_stat_user_tables WHERE relname = 'instances'),
               (SELECT xact_commit FROM pg_stat_database WHERE datname = current_database())
    """

    def __init__(self, connection) -> None:
        self.connection = connection

    async def read(self) -> tuple[float, tuple[int, ...]]:
        await asyncio.sleep(1.5)  # backends report their counters when idle, within a second
        row = await self.connection.fetchrow(self.SQL)
        return time.monotonic(), tuple(row)


def _rates(before: tuple[float, tuple[int, ...]], after: tuple[float, tuple[int, ...]]) -> dict:
    seconds = after[0] - before[0]
    wal, rows, hot, commits = (b - a for a, b in zip(before[1], after[1], strict=True))
    return {
        "seconds": round(seconds, 1),
        "rows_per_s": round(rows / seconds),
        "wal_bytes_per_s": round(wal / seconds),
        "wal_bytes_per_row": round(wal / rows) if rows else None,
        "commits_per_s": round(commits / seconds, 1),
        "hot_share": round(hot / rows, 3) if rows else None,
    }


class Fleet:
    def __init__(self, urls: list[str]) -> None:
        self.urls = urls
        self.sent = self.beats = self.errors = 0
        self.latencies: list[float] = []

    async def register(self, count: int) -> None:
        """``count`` instances, 1,000 a request, four requests at once, all through the first replica."""
        async with aiohttp.ClientSession(self.urls[0]) as http:
            starts = iter(range(0, count, 1000))

            async def worker() -> None:
                for start in starts:
                    body = {"instances": [identity(n) for n in range(start, min(start + 1000, count))]}
                    async with http.post("/api/v1/instances/batch", json=body) as response:
                        if response.status != 200:
                            raise SystemExit(f"bulk registration failed: {response.status}")

            await asyncio.gather(*(worker() for _ in range(4)))

    async def beat(self, shape: Shape, seconds: float, marks: list[float]) -> list:
        """Beat ``shape`` for ``seconds``; read the counters at each of ``marks`` (seconds from the start)."""
        requests = _requests(shape)
        sessions = [aiohttp.ClientSession(url, connector=aiohttp.TCPConnector(limit=0)) for url in self.urls]
        slots = asyncio.Semaphore(IN_FLIGHT)
        pending: set[asyncio.Task] = set()

        async def send(replica: int, path: str, body: bytes, beats: int) -> None:
            started = time.perf_counter()
            try:
                async with sessions[replica].post(
                    path, data=body, headers={"Content-Type": "application/json"}
                ) as response:
                    answer = await response.read()
                    if response.status != 200 or b'"refused"' in answer:
                        self.errors += 1
                    else:
                        self.beats += beats
            except aiohttp.ClientError:
                self.errors += 1
            finally:
                self.latencies.append(time.perf_counter() - started)
                slots.release()

        loop = asyncio.get_running_loop()
        start = loop.time()
        sent, total = 0, len(requests)
        try:
            while (now := loop.time()) < start + seconds:
                due = int((now - start) / shape.period * total)
                while sent < due:
                    await slots.acquire()
                    task = asyncio.create_task(send(*requests[sent % total]))
                    pending.add(task)
                    task.add_done_callback(pending.discard)
                    sent += 1
                await asyncio.sleep(0.002)
            await asyncio.gather(*pending)
        finally:
            for session in sessions:
                await session.close()
        self.sent += sent
        return marks


async def measure_shape(shape: Shape, servers: list[Server], dsn: str, window: float) -> dict:
    import asyncpg

    connection = await asyncpg.connect(dsn)
    try:
        counters = Counters(connection)
        await connection.execute("VACUUM instances")  # what the shape before left is not this one's cost
        await connection.execute("CHECKPOINT")
        fleet = Fleet([s.url for s in servers])
        warm = max(shape.period, 5.0)
        driving = asyncio.create_task(fleet.beat(shape, warm + window + 3.0, []))
        checkpointed = await counters.read()
        await asyncio.sleep(warm - 1.5)
        steady = await counters.read()
        await asyncio.sleep(window - 1.5)
        ended = await counters.read()
        await driving
    finally:
        await connection.close()
    elapsed = warm + window + 3.0
    latencies = sorted(fleet.latencies) or [0.0]
    result = {
        "scenario": f"fleet/{shape.name}",
        "replicas": len(servers),
        "instances": shape.instances,
        "period_s": shape.period,
        "beats_per_request": shape.batch,
        "beats_per_s": round(fleet.beats / elapsed),
        "requests_per_s": round(fleet.sent / elapsed),
        "errors": fleet.errors,
        "p99_ms": round(latencies[int(len(latencies) * 0.99)] * 1000, 1),
        "steady": _rates(steady, ended),
        "after_checkpoint": _rates(checkpointed, steady),
    }
    result["rows_per_beat"] = round(result["steady"]["rows_per_s"] / max(result["beats_per_s"], 1), 3)
    return result


async def fill(dsn: str, rows: int) -> None:
    """Rows past the registered fleet, up to ``rows`` in all, written by SQL (as a replica finds them)."""
    import asyncpg

    connection = await asyncpg.connect(dsn)
    try:
        have = await connection.fetchval("SELECT count(*) FROM instances")
        if have >= rows:
            return
        await connection.execute(
            """
            INSERT INTO instances (model_name, host, port, weight, check_healthy, healthy, enabled,
                                   last_heartbeat, metadata, registered_at, ready)
            SELECT 'joined-' || (i / 10),
                   '172.' || (i / 65536 % 256) || '.' || (i / 256 % 256) || '.' || (i % 256),
                   8000, 1.0, true, true, true, now(), '{"gpu": "a100"}'::json, now(), true
            FROM generate_series($1::int, $2::int) AS i
            """,
            have + 1,
            rows,
        )
        await connection.execute("VACUUM ANALYZE instances")
    finally:
        await connection.close()


def join(url: str, dsn: str, rows: int) -> dict:
    asyncio.run(fill(dsn, rows))
    server = registry(url)
    try:
        ready = server.wait_ready(timeout=120)
        rss = server.rss_kib()
    finally:
        server.stop()
    return {
        "scenario": f"fleet/join/{rows}",
        "rows": rows,
        "ready_s": round(ready, 2),
        "rss_mib": round(rss / 1024),
        "met": ready <= 15.0,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--shapes", default=",".join(s.name for s in SHAPES))
    parser.add_argument("--window", type=float, default=30.0, help="steady seconds measured per shape")
    parser.add_argument(
        "--join", default="100000,1000000", help="rows a joining replica finds, growing ('': none)"
    )
    args = parser.parse_args()
    if hasattr(os, "sched_setaffinity") and (os.cpu_count() or 1) > LOAD_CORE:
        os.sched_setaffinity(0, {LOAD_CORE})
    from tests.pg import PostgresCluster, find_binaries

    binaries = find_binaries()
    if binaries is None:
        raise SystemExit("PostgreSQL is not installed: apt-get install postgresql")
    cluster = PostgresCluster(binaries, settings={"full_page_writes": "on"}).init()
    results = []
    try:
        url = cluster.create_database("fleet")
        dsn = url.replace("+asyncpg", "")
        wanted = [s for s in SHAPES if s.name in args.shapes.split(",")]
        servers = [registry(url) for _ in range(REPLICAS)]
        try:
            for server in servers:
                server.wait_ready()
            asyncio.run(Fleet([s.url for s in servers]).register(max(s.instances for s in wanted)))
            for shape in wanted:
                result = asyncio.run(measure_shape(shape, servers, dsn, args.window))
                sys.stderr.write(f"{result['scenario']:<16} {orjson.dumps(result).decode()}\n")
                results.append(result)
        finally:
            for server in servers:
                server.stop()
        for rows in map(int, filter(None, args.join.split(","))):
            result = join(url, dsn, rows)
            sys.stderr.write(f"{result['scenario']:<16} {orjson.dumps(result).decode()}\n")
            results.append(result)
    finally:
        cluster.destroy()
    sys.stdout.write(orjson.dumps(results).decode() + "\n")


if __name__ == "__main__":
    main()
