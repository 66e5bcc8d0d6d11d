"""Side load held against a registry while ``run.py`` measures it.

``python benchmarks/pressure.py waiters URL [--long-polls N] [--watchers N]``
opens N long-polls (``?index=&wait=5m``, re-issued when answered) and N
WebSocket watchers, each on a model of its own (``watched-<n>``) that the
measured load never touches; ``gzip URL [--clients N]`` has N clients post,
one after another, a 199 KiB gzip body that would inflate to 200 MiB.
Either prints ``ready`` once its load is in place and runs until terminated.
"""

from __future__ import annotations

import argparse
import asyncio
import gzip
import resource
import sys

import aiohttp

#: Inflates to this many bytes: a body that would take the server's memory and CPU.
BOMB_BYTES = 200 * 1024 * 1024


async def waiters(url: str, long_polls: int, watchers: int) -> None:
    connector = aiohttp.TCPConnector(limit=0)
    timeout = aiohttp.ClientTimeout(total=None, sock_read=None)
    async with aiohttp.ClientSession(url, connector=connector, timeout=timeout) as http:
        async with http.get("/api/v1/instances") as first:
            index = first.headers["X-Registry-Index"]

        async def poll(n: int) -> None:
            nonlocal index
            params = {"model_name": f"watched-{n}", "wait": "5m"}
            while True:
                async with http.get("/api/v1/instances", params={**params, "index": index}) as answer:
                    index = answer.headers.get("X-Registry-Index", index)
                    await answer.read()

        async def watch(n: int) -> None:
            async with http.ws_connect("/api/v1/watch", params={"model_name": f"watched-{n}"}) as ws:
                async for _ in ws:
                    pass

        tasks = [asyncio.create_task(poll(n)) for n in range(long_polls)]
        tasks += [asyncio.create_task(watch(n)) for n in range(watchers)]
        while True:  # until the registry says that every one is open
            async with http.get("/health") as health:
                state = await health.json()
            if state["long_polls"] >= long_polls and state["watchers"] >= watchers:
                break
            await asyncio.sleep(0.1)
        _ready()
        await asyncio.gather(*tasks)


async def bombs(url: str, clients: int) -> None:
    body = gzip.compress(b"\0" * BOMB_BYTES, compresslevel=9)
    headers = {"Content-Type": "application/json", "Content-Encoding": "gzip"}
    async with aiohttp.ClientSession(url) as http:

        async def bomber() -> None:
            while True:
                async with http.post("/api/v1/instances", data=body, headers=headers) as answer:
                    await answer.read()

        tasks = [asyncio.create_task(bomber()) for _ in range(clients)]
        _ready()
        await asyncio.gather(*tasks)


def _ready() -> None:
    sys.stdout.write("ready\n")
    sys.stdout.flush()


def main() -> None:
    formatter = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=formatter)
    sub = parser.add_subparsers(dest="kind", required=True)
    held = sub.add_parser("waiters")
    held.add_argument("url")
    held.add_argument("--long-polls", type=int, default=1000)
    held.add_argument("--watchers", type=int, default=1000)
    bomb = sub.add_parser("gzip")
    bomb.add_argument("url")
    bomb.add_argument("--clients", type=int, default=2)
    args = parser.parse_args()
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    if args.kind == "waiters":
        asyncio.run(waiters(args.url, args.long_polls, args.watchers))
    else:
        asyncio.run(bombs(args.url, args.clients))


if __name__ == "__main__":
    main()
