"""Probing and scraping 10,000 instances while heartbeats flow: ``python benchmarks/probing.py``.

What the registry's own requests cost the heartbeat path. One registry (SQLite,
as ``serve`` runs by default) holds 10,000 instances that beat (wrk drives them,
as the other benchmarks do) and 10,000 more, each a loopback stub, in one of
three set-ups, each its own database file:

- ``off``: the 10,000 stubs registered without a check (the baseline);
- ``check``: each with ``check: {"http": "/health", "interval": 10}``: 1,000
  probes a second;
- ``check+metrics``: each also with ``metrics: {"url": "/metrics", "interval":
  10}``, answered with a real vLLM ``/metrics`` text: 1,000 scrapes a second more.

The stubs are one process (uvloop, a bare protocol) on the load core, listening
on one port of every loopback address: instance *n* is at ``127.77.x.y``. Rounds
alternate the set-ups, a fresh server each (restarted, the prober spreads its
first probes over one interval, as after any restart), and after a warm-up
measure for ``--duration`` seconds: the heartbeat rate, the probes and scrapes
done, and the event loop's lag (``model_registry_event_loop_lag_seconds``, from
``/metrics``). Printed: per set-up the median rate over ``off``'s (round by
round), and the median of the rounds' p99 lag (a histogram bucket's bound).
"""

from __future__ import annotations

import argparse
import asyncio
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import aiohttp  # noqa: E402

from benchmarks.load import LOAD_CORE, ROOT, Server, drive, free_port, pin, registry  # noqa: E402
from benchmarks.run import _post_each, _register_over_http  # noqa: E402

COUNT = 10_000
BEATS = {"BENCH_PATH": "/api/v1/heartbeat", "BENCH_COUNT": str(COUNT)}
METRICS_TEXT = (ROOT / "tests" / "registry" / "fixtures" / "vllm_metrics.txt").read_bytes()
SETUPS = ("off", "check", "check+metrics")


def stub_host(n: int) -> str:
    return f"127.77.{n // 250}.{n % 250 + 1}"


def stub_instance(n: int, port: int, setup: str) -> dict:
    body: dict = {"model_name": f"probed-{n // 10}", "host": stub_host(n), "port": port}
    if setup != "off":
        body["check"] = {"http": "/health", "interval": 10, "timeout": 2}
    if setup == "check+metrics":
        body["metrics"] = {"url": "/metrics", "interval": 10}
    return body


# -- the stubs: one process, one port on every loopback address ----------------------


def serve_stubs(port: int) -> None:
    import uvloop

    health = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Type: text/plain\r\n\r\nok"
    metrics = (
        b"HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\n"
        + f"Content-Length: {len(METRICS_TEXT)}\r\n\r\n".encode()
        + METRICS_TEXT
    )

    class Stub(asyncio.Protocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            self.transport, self.buffer = transport, b""

        def data_received(self, data: bytes) -> None:
            self.buffer += data
            while b"\r\n\r\n" in self.buffer:
                head, self.buffer = self.buffer.split(b"\r\n\r\n", 1)
                self.transport.write(metrics if head.startswith(b"GET /metrics") else health)  # type: ignore[attr-defined]

    async def main() -> None:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(Stub, "0.0.0.0", port, backlog=4096, reuse_address=True)
        async with server:
            await server.serve_forever()

    uvloop.run(main())


class Stubs:
    def __init__(self) -> None:
        self.port = free_port()
        self.proc = subprocess.Popen(
            [sys.executable, __file__, "--stub", str(self.port)], cwd=ROOT, preexec_fn=pin(LOAD_CORE)
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                socket.create_connection((stub_host(COUNT - 1), self.port), timeout=0.2).close()
                return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("the stubs did not start")

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=10)


# -- one set-up ------------------------------------------------------------------


def _server(db: Path) -> Server:
    return registry(f"sqlite+aiosqlite:///{db}", "--probe-concurrency", "256")


async def _scrape(url: str) -> str:
    async with aiohttp.ClientSession() as http, http.get(f"{url}/metrics") as answer:
        return await answer.text()


def _samples(text: str, name: str) -> dict[str, float]:
    """``name``'s samples by their label text."""
    pattern = re.compile(rf"^{re.escape(name)}(\{{[^}}]*\}})? ([0-9.e+-]+)$", re.M)
    return {labels or "": float(value) for labels, value in pattern.findall(text)}


def _lag_p99(before: str, after: str) -> float:
    """The bound of the bucket that holds the 99th percentile of the lag measured between the two."""
    name = "model_registry_event_loop_lag_seconds_bucket"
    old, new = _samples(before, name), _samples(after, name)
    buckets = sorted(
        ((float(re.search(r'le="([^"]+)"', k).group(1)), new[k] - old.get(k, 0)) for k in new),
        key=lambda item: item[0],
    )
    total = buckets[-1][1]
    for bound, cumulative in buckets:
        if cumulative >= 0.99 * total:
            return bound
    return float("inf")


def _done(before: str, after: str, kind: str) -> float:
    name = "model_registry_probes_total"
    old, new = _samples(before, name), _samples(after, name)
    return sum(v - old.get(k, 0) for k, v in new.items() if f'kind="{kind}"' in k)


def prepare(db: Path, setup: str, stubs: Stubs) -> None:
    server = _server(db)
    try:
        server.wait_ready()
        asyncio.run(_register_over_http(server.url, COUNT))
        bodies = (stub_instance(n, stubs.port, setup) for n in range(COUNT))
        asyncio.run(_post_each(server.url, "/api/v1/instances", bodies))
    finally:
        server.stop()


def measure(db: Path, args: argparse.Namespace) -> dict[str, float]:
    server = _server(db)
    try:
        server.wait_ready()
        drive(server.url, "heartbeat.lua", BEATS, 1, args.connections)  # warm the path
        time.sleep(args.warmup)
        before = asyncio.run(_scrape(server.url))
        load = drive(server.url, "heartbeat.lua", BEATS, args.duration, args.connections)
        after = asyncio.run(_scrape(server.url))
    finally:
        server.stop()
    if load.errors:
        raise SystemExit(f"{load.errors} heartbeats failed")
    return {
        "rps": load.rps,
        "lag_p99": _lag_p99(before, after),
        "probes_per_s": _done(before, after, "check") / args.duration,
        "scrapes_per_s": _done(before, after, "metrics") / args.duration,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--stub", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--duration", type=float, default=10.0, help="seconds measured per round")
    parser.add_argument("--warmup", type=float, default=5.0, help="seconds after the start before measuring")
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--setups", default=",".join(SETUPS), help=f"which of {', '.join(SETUPS)}")
    args = parser.parse_args()
    if args.stub:
        serve_stubs(args.stub)
        return
    setups = [s for s in args.setups.split(",") if s]
    if "off" not in setups:
        setups.insert(0, "off")
    if not shutil.which("wrk"):
        print("wrk is not installed: the rates come from the built-in generator", file=sys.stderr)
    stubs = Stubs()
    results: dict[str, list[dict[str, float]]] = {s: [] for s in setups}
    with tempfile.TemporaryDirectory(prefix="registry-probing-") as tmp:
        try:
            dbs = {s: Path(tmp) / f"{s.replace('+', '-')}.db" for s in setups}
            for setup, db in dbs.items():
                prepare(db, setup, stubs)
            for round_ in range(args.rounds):
                order = setups if round_ % 2 == 0 else setups[::-1]
                for setup in order:
                    result = measure(dbs[setup], args)
                    results[setup].append(result)
                    print(
                        f"round {round_ + 1}: {setup:14} {result['rps']:7.0f} beats/s  "
                        f"p99 lag ≤ {result['lag_p99'] * 1000:g} ms  "
                        f"{result['probes_per_s']:5.0f} probes/s  {result['scrapes_per_s']:5.0f} scrapes/s",
                        flush=True,
                    )
        finally:
            stubs.stop()
    print()
    for setup in setups:
        ratios = [r["rps"] / o["rps"] for r, o in zip(results[setup], results["off"], strict=True)]
        print(
            f"{setup:14} heartbeats {statistics.median(ratios):.3f} of off's; "
            f"p99 loop lag ≤ {statistics.median(r['lag_p99'] for r in results[setup]) * 1000:g} ms; "
            f"{statistics.median(r['probes_per_s'] for r in results[setup]):.0f} probes/s, "
            f"{statistics.median(r['scrapes_per_s'] for r in results[setup]):.0f} scrapes/s"
        )


if __name__ == "__main__":
    main()
