"""Two registry processes on one PostgreSQL probe a fleet between them: each instance by
one replica at a time, and by the other within an interval of a ``kill -9``."""

from __future__ import annotations

import asyncio
import re
import time
from collections import defaultdict

import aiohttp
from aiohttp import web
from aiohttp.test_utils import TestServer

from tests.process import ServerProcess

COUNT = 40
INTERVAL = 1.0


class Fleet:
    """One stub on loopback answering ``/health/<i>`` for each instance, noting when."""

    def __init__(self) -> None:
        self.probed: dict[int, list[float]] = defaultdict(list)
        app = web.Application()
        app.router.add_get("/health/{i}", self._health)
        self.server = TestServer(app, host="127.0.0.1")

    async def _health(self, request: web.Request) -> web.Response:
        self.probed[int(request.match_info["i"])].append(time.monotonic())
        return web.Response(text="ok")

    def between(self, start: float, end: float) -> dict[int, list[float]]:
        return {i: [t for t in self.probed[i] if start <= t < end] for i in range(COUNT)}


async def _probes_done(http: aiohttp.ClientSession, url: str) -> float:
    async with http.get(f"{url}/metrics") as answer:
        text = await answer.text()
    found = re.search(r'^model_registry_probes_total\{kind="check",outcome="ok"\} ([0-9.e+]+)$', text, re.M)
    return float(found.group(1)) if found else 0.0


async def test_each_instance_is_probed_by_one_replica_and_taken_over_after_kill_9(pg_url: str) -> None:
    fleet = Fleet()
    await fleet.server.start_server()
    port = fleet.server.port
    a = ServerProcess("--storage", pg_url).start()
    b = ServerProcess("--storage", pg_url).start()
    try:
        async with aiohttp.ClientSession() as http:
            for i in range(COUNT):
                body = {
                    "model_name": f"probed-{i}",
                    "host": "127.0.0.1",
                    "port": port,
                    "check": {"http": f"/health/{i}", "interval": INTERVAL, "timeout": 0.5},
                }
                async with http.post(f"{a.url}/api/v1/instances", json=body) as answer:
                    assert answer.status == 201, await answer.text()

            # Both replicas take their share (within a couple of their one-second rounds).
            deadline = time.monotonic() + 15
            while time.monotonic() < deadline:
                if await _probes_done(http, a.url) > 0 and await _probes_done(http, b.url) > 0:
                    break
                await asyncio.sleep(0.1)
            else:
                raise AssertionError("the two replicas did not share the probes")

            async def all_healthy() -> bool:
                async with http.get(f"{b.url}/api/v1/instances") as answer:
                    instances = (await answer.json())["instances"]
                return len(instances) == COUNT and all(i["healthy"] for i in instances)

            deadline = time.monotonic() + 10
            while not await all_healthy():
                assert time.monotonic() < deadline, "not every instance passed its check"
                await asyncio.sleep(0.1)

            # One replica at a time: in 4 s each instance is probed about 4 times, never 8.
            start = time.monotonic()
            await asyncio.sleep(4)
            window = fleet.between(start, time.monotonic())
            assert all(2 <= len(times) <= 6 for times in window.values()), {
                i: len(t) for i, t in window.items()
            }

            a.kill()
            killed = time.monotonic()
            await asyncio.sleep(5)
            after = fleet.between(killed, time.monotonic())
            # Taken over within an interval (and the one-second round that notices the free locks).
            late = {i: times[0] - killed for i, times in after.items() if not times or times[0] - killed > 3}
            assert not late, f"not probed within 3 s of the kill: {late}"
            settled = fleet.between(killed + 3, time.monotonic())
            assert all(1 <= len(times) <= 3 for times in settled.values())
            assert await all_healthy()
    finally:
        a.stop()
        b.stop()
        await fleet.server.close()
    assert a.proc.returncode == -9
