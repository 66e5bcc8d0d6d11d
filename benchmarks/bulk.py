"""A fleet loaded in bulk over HTTP, at 10,000, 100,000 and 1,000,000 instances.

For each size and backend (memory, SQLite), a fresh server (pinned to the server
core) is sent ``POST /api/v1/instances/batch`` requests of 1,000 instances, four
at a time, from the load core. Measured:

- the load: seconds and instances a second, every instance taken (``created``);
- the server's resident memory per instance after it (``/proc``: after, less
  the server's before, over the count);
- on SQLite, the server started again on the file: seconds until it answers
  ``/health`` (ready), and the count it then lists for one model.

Targets (issue 21): a million loaded in under a minute; at most 1 KiB an
instance; ready within 10 s. ``python benchmarks/bulk.py`` prints JSON (a few
minutes at a million).
"""

from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path

import aiohttp
import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.load import LOAD_CORE, each_fleet, identity, registry  # noqa: E402
from benchmarks.run import _register_over_http  # noqa: E402


async def _listed(url: str, model: str) -> int:
    query = f"/api/v1/instances?model_name={model}"
    async with aiohttp.ClientSession(url) as http, http.get(query) as answer:
        return (await answer.json())["count"]


def measure(count: int, backend: str, workdir: Path) -> dict:
    url = "memory://" if backend == "memory" else f"sqlite+aiosqlite:///{workdir / f'bulk-{count}.db'}"
    server = registry(url)
    try:
        server.wait_ready()
        before = server.rss_kib()
        started = time.monotonic()
        asyncio.run(_register_over_http(server.url, count))
        took = time.monotonic() - started
        time.sleep(1.5)  # the write-behind's last flush, and the collector's freeze
        per_instance = (server.rss_kib() - before) * 1024 / count
    finally:
        server.stop()
    result = {
        "scenario": f"bulk/{backend}/{count}",
        "load_s": round(took, 2),
        "per_s": round(count / took),
        "bytes_per_instance": round(per_instance),
    }
    if backend == "sqlite":
        server = registry(url)
        try:
            result["ready_after_restart_s"] = round(server.wait_ready(timeout=120), 2)
            model = identity(count - 1)["model_name"]
            result["listed_after_restart"] = asyncio.run(_listed(server.url, model))
        finally:
            server.stop()
    if count >= 1_000_000:  # the targets are a million's; smaller fleets show the growth
        ready = result.get("ready_after_restart_s", 0)
        result["met"] = result["bytes_per_instance"] <= 1024 and took < 60 and ready <= 10
    return result


def main() -> None:
    results = []
    for backend, count, workdir in each_fleet(__doc__, LOAD_CORE):
        result = measure(count, backend, workdir)
        sys.stderr.write(f"{result['scenario']:<22} {orjson.dumps(result).decode()}\n")
        results.append(result)
    sys.stdout.write(orjson.dumps(results).decode() + "\n")


if __name__ == "__main__":
    main()
