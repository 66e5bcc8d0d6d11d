"""Ten thousand watchers: ``python benchmarks/fanout.py`` (``--watchers``, ``--long-polls``).

One registry (memory backend, pinned to the server core) and, on the load core,
one process holding ``--watchers`` WebSocket watchers of every model (or
``--long-polls`` long-polls waiting on ``/api/v1/instances?index=``). Measured:

- memory per idle watcher: the server's resident size with them open, less
  before, divided by their number;
- fan-out: ``--changes`` changes (a drain or an undrain of one instance, one
  every ``--spacing`` seconds); each watcher records when each event reached it;
  the latency is that, less the moment the change was sent (one clock, one
  machine): p50, p99 and the worst, over every watcher and change;
- the server's CPU per change (its time on a core while the changes fan out,
  over the changes);
- heartbeats with the watchers open against with none (wrk, alternating
  ``--rounds`` runs of ``--duration`` seconds: open, closed, open...).

Both the watchers and wrk run on the load core, so the heartbeat ratio charges
the registry's core only with what watchers cost it: their pings and memory.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import aiohttp  # noqa: E402

from benchmarks.load import LOAD_CORE, ROOT, drive, pin, registry  # noqa: E402
from benchmarks.run import _register_over_http  # noqa: E402

BEATS = {"BENCH_PATH": "/api/v1/heartbeat", "BENCH_COUNT": "10000"}
#: The model every watcher follows (routers watch the models they route), and its changes.
MODEL = "model-0"


# -- the watchers' side (a process on the load core) -----------------------------------


class _Watcher(asyncio.Protocol):
    """A WebSocket watcher as light as can be (this side must not be what is
    measured): the upgrade, then the arrival time and revision of each event."""

    def __init__(
        self, request: bytes, arrivals: dict[int, list[float]], opened: asyncio.Future[None]
    ) -> None:
        self.request, self.arrivals, self.opened = request, arrivals, opened
        self.buffer = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport.write(self.request)  # type: ignore[attr-defined]

    def data_received(self, data: bytes) -> None:
        now = time.time()
        if not self.opened.done():  # the 101, then the snapshot: read to its end
            self.buffer += data
            if b'"type":"snapshot"' in self.buffer and self.buffer.endswith(b"]}"):
                self.opened.set_result(None)
                self.buffer = b""
            return
        at = 0
        while (at := data.find(b'"revision":', at)) >= 0:
            at += 11
            end = data.index(b",", at)
            self.arrivals.setdefault(int(data[at:end]), []).append(now)


class _Poller(asyncio.Protocol):
    """A long-poll as light as can be: GET with ``index=``, note when the answer came
    and its revision, read it to its end, poll again from that revision, ``REPOLL``
    seconds later: ten thousand clients' next polls are written by this one process
    on one core, and writing them as the answers come would make it, not the server,
    what the arrival times measure."""

    REPOLL = 0.2

    def __init__(self, target: str, arrivals: dict[int, list[float]], opened: asyncio.Future[None]) -> None:
        self.target, self.arrivals, self.opened = target, arrivals, opened
        self.buffer, self.index = b"", None
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self._ask()

    def _ask(self) -> None:
        query = f"model_name={MODEL}" + ("" if self.index is None else f"&index={self.index}&wait=300s")
        assert self.transport is not None
        self.transport.write(
            f"GET /api/v1/instances?{query} HTTP/1.1\r\nHost: {self.target}\r\n\r\n".encode()
        )

    def data_received(self, data: bytes) -> None:
        now = time.time()
        self.buffer += data
        head_end = self.buffer.find(b"\r\n\r\n")
        if head_end < 0:
            return
        head = self.buffer[:head_end].lower()
        at = head.index(b"content-length:") + 15
        length = int(head[at : head.index(b"\r\n", at)])
        if len(self.buffer) < head_end + 4 + length:
            return
        at = head.index(b"x-registry-index:") + 17
        index = int(head[at : head.index(b"\r\n", at)])
        self.buffer = self.buffer[head_end + 4 + length :]
        self.index = index
        if self.opened.done():
            self.arrivals.setdefault(index, []).append(now)
            asyncio.get_running_loop().call_later(self.REPOLL, self._ask)
        else:
            self.opened.set_result(None)
            self._ask()


async def hold(url: str, watchers: int, polls: int, seconds: float) -> None:
    """Open the watchers (or long-polls), say so on stdout, record each event's arrival,
    and print what arrived when, as JSON, once stdin says the benchmark is done."""
    loop = asyncio.get_running_loop()
    arrivals: dict[int, list[float]] = {}
    host, port = url.removeprefix("http://").split(":")
    request = (
        f"GET /api/v1/watch?model_name={MODEL} HTTP/1.1\r\nHost: {host}:{port}\r\n"
        "Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
        "Sec-WebSocket-Version: 13\r\n\r\n"
    ).encode()
    transports = []
    for _ in range(watchers):
        opened: asyncio.Future[None] = loop.create_future()
        transport, _protocol = await loop.create_connection(
            lambda opened=opened: _Watcher(request, arrivals, opened), host, int(port)
        )
        transports.append(transport)
        await opened
    for _ in range(polls):
        opened = loop.create_future()
        transport, _protocol = await loop.create_connection(
            lambda opened=opened: _Poller(f"{host}:{port}", arrivals, opened), host, int(port)
        )
        transports.append(transport)
        await opened
    print("ready", flush=True)
    await loop.run_in_executor(None, sys.stdin.readline)  # until the benchmark is done
    for transport in transports:
        transport.close()
    print(json.dumps({str(k): v for k, v in arrivals.items()}), flush=True)


# -- the benchmark -------------------------------------------------------------------------


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def cpu_seconds(pid: int) -> float:
    tasks = Path(f"/proc/{pid}/task").glob("*/schedstat")
    return sum(int(t.read_text().split()[0]) for t in tasks) / 1e9


async def _change(url: str, n: int) -> tuple[float, int]:
    """Drain (even n) or undrain one instance; when it was sent, and its revision."""
    params = {"model_name": MODEL, "host": "10.0.0.1", "port": "8000"}
    body = {"enabled": False} if n % 2 == 0 else {"enabled": None}
    async with aiohttp.ClientSession(url) as http:
        sent = time.time()
        async with http.patch("/api/v1/instances", params=params, json=body) as answer:
            assert answer.status == 200, await answer.text()
        async with http.get("/api/v1/instances", params={"model_name": MODEL}) as answer:
            revision = int(answer.headers["X-Registry-Index"])
    return sent, revision


def _settle(pid: int, timeout: float = 60) -> None:
    """Wait until process ``pid`` uses under 2 % of a core (long-polls re-polling after a
    change, say, would take the load core from wrk)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        before = cpu_seconds(pid)
        time.sleep(1)
        if cpu_seconds(pid) - before < 0.02:
            return


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))]


def measure(args: argparse.Namespace) -> dict:
    # Every watcher comes from one address here: no per-client cap (4,096 by default).
    server = registry(
        "memory://",
        "--max-watchers", "30000",
        "--max-long-polls", "30000",
        "--max-connections-per-client", "0",
    )  # fmt: skip
    try:
        server.wait_ready()
        asyncio.run(_register_over_http(server.url, 10_000))
        drive(server.url, "heartbeat.lua", BEATS, 1, args.connections)  # warm up
        before = rss_kib(server.proc.pid)
        holder = subprocess.Popen(
            [sys.executable, __file__, "--hold", server.url, str(args.watchers), str(args.long_polls)],
            cwd=ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            preexec_fn=pin(LOAD_CORE),
        )
        assert holder.stdout is not None and holder.stdin is not None
        opened = time.monotonic()
        if holder.stdout.readline().strip() != "ready":
            raise SystemExit("the watchers did not open")
        took = time.monotonic() - opened
        time.sleep(2)
        held = rss_kib(server.proc.pid)
        cpu = cpu_seconds(server.proc.pid)
        sent: dict[int, float] = {}
        for n in range(args.changes):
            moment, revision = asyncio.run(_change(server.url, n))
            sent[revision] = moment
            time.sleep(args.spacing)
        cpu_per_change = (cpu_seconds(server.proc.pid) - cpu) / args.changes
        _settle(holder.pid)  # the watchers' side shares the load core with wrk: let it go idle
        with_them, without = [], []
        for _ in range(args.rounds):
            with_them.append(drive(server.url, "heartbeat.lua", BEATS, args.duration, args.connections).rps)
        holder.stdin.write("done\n")
        holder.stdin.flush()
        arrivals = json.loads(holder.stdout.readline())
        holder.wait(timeout=60)
        time.sleep(1)
        for _ in range(args.rounds):
            without.append(drive(server.url, "heartbeat.lua", BEATS, args.duration, args.connections).rps)
    finally:
        server.stop()
    latencies = [
        (arrived - sent[int(revision)]) * 1000
        for revision, times in arrivals.items()
        if int(revision) in sent
        for arrived in times
    ]
    expected = (args.watchers + args.long_polls) * args.changes
    count = args.watchers + args.long_polls
    return {
        "watchers": args.watchers,
        "long_polls": args.long_polls,
        "opened_in_s": round(took, 2),
        "kib_per_watcher": round((held - before) / max(1, count), 2),
        "deliveries": len(latencies),
        "expected": expected,
        "latency_ms": {
            "p50": round(percentile(latencies, 0.5), 1) if latencies else None,
            "p99": round(percentile(latencies, 0.99), 1) if latencies else None,
            "max": round(max(latencies), 1) if latencies else None,
        },
        "server_cpu_ms_per_change": round(cpu_per_change * 1000, 1),
        "heartbeats_with": round(statistics.median(with_them)),
        "heartbeats_without": round(statistics.median(without)),
        "heartbeat_ratio": round(statistics.median(with_them) / statistics.median(without), 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--hold", nargs=3, help=argparse.SUPPRESS)
    parser.add_argument("--watchers", type=int, default=10_000)
    parser.add_argument("--long-polls", type=int, default=0)
    parser.add_argument("--changes", type=int, default=20)
    parser.add_argument("--spacing", type=float, default=0.5, help="seconds between changes")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--duration", type=float, default=3.0)
    parser.add_argument("--connections", type=int, default=64)
    args = parser.parse_args()
    if args.hold:
        url, watchers, polls = args.hold
        asyncio.run(hold(url, int(watchers), int(polls), 0))
        return
    print(json.dumps(measure(args), indent=2))


if __name__ == "__main__":
    os.environ.setdefault("PYTHONHASHSEED", "0")
    main()
