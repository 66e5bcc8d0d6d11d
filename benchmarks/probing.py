"""Probing and scraping 10,000 instances while heartbeats flow: ``python benchmarks/probing.py``.

What the registry's own requests cost the heartbeat path. One registry (SQLite,
as ``serve`` runs by default) holds 10,000 instances that beat (wrk drives them,
as the other benchmarks do) and 10,000 more, each a loopback stub, in one of
four set-ups, each its own database file:

- ``off``: the 10,000 stubs registered without a check (the baseline);
- ``check``: each with ``check: {"http": "/health", "interval": 10}``: 1,000
  probes a second, to stubs that keep connections open (as TGI, Ollama and
  aiohttp do), so that each probe after the first is a GET on a kept connection;
- ``check-reconnect``: the same to stubs that close a connection idle for 5 s,
  as uvicorn does under vLLM and SGLang: every probe connects anew;
- ``check+metrics``: ``check`` and ``metrics: {"url": "/metrics", "interval":
  10}``, answered with a real vLLM ``/metrics`` text (85 KB): 1,000 scrapes a
  second more.

The stubs are one process per behaviour (uvloop, a bare protocol) on the load
core, listening on one port of every loopback address: instance *n* is at
``127.77.x.y``. Rounds alternate the set-ups, a fresh server each, and after a
warm-up longer than one interval (after a restart the prober spreads its first
probes over one interval; those connect anew) measure for ``--duration``
seconds: the heartbeat rate, the probes and scrapes done, the share sent on
kept connections, and the event loop's lag (``model_registry_event_loop_lag_seconds``,
from ``/metrics``); then for ``--steady`` seconds with heartbeats at a steady
1,000 a second (the 10,000 instances beating every 10 s, as a registry runs, not
saturated), the core the server takes and the loop's lag. Printed: per set-up the median rate
over ``off``'s (round by round) and the medians of the rest (a lag is the bound
of the histogram bucket that holds the 99th percentile).

The server keeps at most half of its open-files limit as idle probe
connections: 20,000 (``check+metrics``: 2 per stub) need a limit of 40,000,
which the benchmark asks for and may not get without CAP_SYS_RESOURCE; it says
so, and the share on kept connections shows it.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import resource
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
import orjson  # noqa: E402

from benchmarks.load import LOAD_CORE, ROOT, Server, beat_body, drive, free_port, pin, registry  # noqa: E402
from benchmarks.run import _post_each, _register_over_http  # noqa: E402

COUNT = 10_000
BEATS = {"BENCH_PATH": "/api/v1/heartbeat", "BENCH_COUNT": str(COUNT)}
METRICS_TEXT = (ROOT / "tests" / "registry" / "fixtures" / "vllm_metrics.txt").read_bytes()
SETUPS = ("off", "check", "check+metrics", "check-reconnect")
#: Set-ups whose stubs close a connection idle for 5 s, as uvicorn does.
RECONNECT = {"check-reconnect"}


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


def serve_stubs(port: int, idle_timeout: float | None) -> None:
    """Answer ``/health`` and ``/metrics`` on ``port``, keeping connections open,
    or closing those idle for ``idle_timeout`` seconds (as uvicorn does, after 5 s,
    under vLLM and SGLang)."""
    import uvloop

    health = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Type: text/plain\r\n\r\nok"
    metrics = (
        b"HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\n"
        + f"Content-Length: {len(METRICS_TEXT)}\r\n\r\n".encode()
        + METRICS_TEXT
    )

    class Stub(asyncio.Protocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            self.transport, self.buffer, self.timer = transport, b"", None
            self._idle()

        def _idle(self) -> None:
            if idle_timeout is not None:
                self.timer = asyncio.get_running_loop().call_later(idle_timeout, self.transport.close)

        def data_received(self, data: bytes) -> None:
            if self.timer is not None:
                self.timer.cancel()
            self.buffer += data
            while b"\r\n\r\n" in self.buffer:
                head, self.buffer = self.buffer.split(b"\r\n\r\n", 1)
                self.transport.write(metrics if head.startswith(b"GET /metrics") else health)  # type: ignore[attr-defined]
            self._idle()

        def connection_lost(self, exc: Exception | None) -> None:
            if self.timer is not None:
                self.timer.cancel()

    async def main() -> None:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(Stub, "0.0.0.0", port, backlog=4096, reuse_address=True)
        async with server:
            await server.serve_forever()

    uvloop.run(main())


class Stubs:
    def __init__(self, idle_timeout: float | None = None) -> None:
        self.port = free_port()
        argv = [sys.executable, __file__, "--stub", str(self.port)]
        if idle_timeout is not None:
            argv += ["--stub-idle-timeout", str(idle_timeout)]
        self.proc = subprocess.Popen(argv, cwd=ROOT, preexec_fn=pin(LOAD_CORE))
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


def _reused(before: str, after: str) -> float:
    """The share of probes and scrapes sent on a kept connection."""
    name = "model_registry_probe_connections_total"
    old, new = _samples(before, name), _samples(after, name)
    sent = {k: v - old.get(k, 0) for k, v in new.items()}
    total = sum(sent.values())
    return sum(v for k, v in sent.items() if "reused" in k) / total if total else 0.0


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


def _cpu_ns(pid: int) -> int:
    """Nanoseconds the process's threads have spent on a core."""
    tasks = Path(f"/proc/{pid}/task").glob("*/schedstat")
    return sum(int(task.read_text().split()[0]) for task in tasks)


def steady(url: str, rate: int, seconds: float) -> None:
    """Heartbeats at ``rate`` a second for ``seconds``, from a process on the load core."""
    argv = [sys.executable, __file__, "--beat", url, str(rate), str(seconds)]
    subprocess.run(argv, cwd=ROOT, preexec_fn=pin(LOAD_CORE), check=True)


async def _beat_steadily(url: str, rate: int, seconds: float) -> None:
    """``rate`` beats a second, a hundredth of them every 10 ms, over 16 connections."""
    bodies = [orjson.dumps(beat_body(n)) for n in range(COUNT)]
    headers = {"Content-Type": "application/json"}
    per_tick, n = max(1, rate // 100), 0
    connector = aiohttp.TCPConnector(limit=16)
    async with aiohttp.ClientSession(url, connector=connector, headers=headers) as http:

        async def beat(body: bytes) -> None:
            async with http.post("/api/v1/heartbeat", data=body) as answer:
                if answer.status != 200:
                    raise SystemExit(f"a heartbeat was answered {answer.status}")

        loop = asyncio.get_running_loop()
        start = loop.time()
        pending: set[asyncio.Task[None]] = set()
        for tick in range(int(seconds * 100)):
            for _ in range(per_tick):
                task = asyncio.create_task(beat(bodies[n % COUNT]))
                pending.add(task)
                task.add_done_callback(pending.discard)
                n += 1
            await asyncio.sleep(max(0.0, start + (tick + 1) / 100 - loop.time()))
        await asyncio.gather(*pending)


def measure(db: Path, args: argparse.Namespace) -> dict[str, float]:
    """One round of one set-up: heartbeats at full speed, then at a steady rate."""
    server = _server(db)
    try:
        server.wait_ready()
        drive(server.url, "heartbeat.lua", BEATS, 1, args.connections)  # warm the path
        time.sleep(args.warmup)
        before = asyncio.run(_scrape(server.url))
        load = drive(server.url, "heartbeat.lua", BEATS, args.duration, args.connections)
        during = asyncio.run(_scrape(server.url))
        cpu, started = _cpu_ns(server.proc.pid), time.monotonic()
        steady(server.url, args.steady_rate, args.steady)
        busy = (_cpu_ns(server.proc.pid) - cpu) / 1e9 / (time.monotonic() - started)
        after = asyncio.run(_scrape(server.url))
    finally:
        server.stop()
    if load.errors:
        raise SystemExit(f"{load.errors} heartbeats failed")
    return {
        "rps": load.rps,
        "lag_p99": _lag_p99(before, during),
        "steady_lag_p99": _lag_p99(during, after),
        "steady_busy": busy,
        "probes_per_s": _done(before, during, "check") / args.duration,
        "scrapes_per_s": _done(before, during, "metrics") / args.duration,
        "reused": _reused(before, during),
    }


def _raise_open_files(wanted: int) -> None:
    """Enough descriptors for the server to keep a connection to every stub (it
    keeps at most half of its limit): the servers inherit the limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft >= wanted:
        return
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, max(hard, wanted)))
    except (ValueError, OSError):
        print(
            f"the open-files limit stays {soft} (raising it to {wanted} needs CAP_SYS_RESOURCE): the "
            f"server keeps at most {soft // 2} probe connections open between probes",
            file=sys.stderr,
        )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--stub", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--stub-idle-timeout", type=float, help=argparse.SUPPRESS)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--duration", type=float, default=10.0, help="seconds measured per round")
    parser.add_argument(
        "--warmup",
        type=float,
        default=12.0,
        help="seconds after the start before measuring (past one interval: every instance probed once)",
    )
    parser.add_argument(
        "--steady", type=float, default=5.0, help="seconds measured with heartbeats at --steady-rate"
    )
    parser.add_argument(
        "--steady-rate",
        type=int,
        default=1000,
        help="heartbeats a second in that phase (1,000: the 10,000 instances beating every 10 s)",
    )
    parser.add_argument("--beat", nargs=3, help=argparse.SUPPRESS)
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--setups", default=",".join(SETUPS), help=f"which of {', '.join(SETUPS)}")
    args = parser.parse_args()
    if args.stub:
        serve_stubs(args.stub, args.stub_idle_timeout)
        return
    if args.beat:
        url, rate, seconds = args.beat
        asyncio.run(_beat_steadily(url, int(rate), float(seconds)))
        return
    _raise_open_files(2 * 2 * COUNT + 1024)
    setups = [s for s in args.setups.split(",") if s]
    if "off" not in setups:
        setups.insert(0, "off")
    if not shutil.which("wrk"):
        print("wrk is not installed: the rates come from the built-in generator", file=sys.stderr)
    stubs = Stubs()
    closing = Stubs(idle_timeout=5.0) if RECONNECT & set(setups) else None
    results: dict[str, list[dict[str, float]]] = {s: [] for s in setups}
    with tempfile.TemporaryDirectory(prefix="registry-probing-") as tmp:
        try:
            dbs = {s: Path(tmp) / f"{s.replace('+', '-')}.db" for s in setups}
            for setup, db in dbs.items():
                prepare(db, setup, closing if setup in RECONNECT else stubs)
            for round_ in range(args.rounds):
                order = setups if round_ % 2 == 0 else setups[::-1]
                for setup in order:
                    result = measure(dbs[setup], args)
                    results[setup].append(result)
                    print(
                        f"round {round_ + 1}: {setup:15} {result['rps']:7.0f} beats/s, "
                        f"p99 lag ≤ {result['lag_p99'] * 1000:g} ms; "
                        f"{result['probes_per_s']:5.0f} probes/s, {result['scrapes_per_s']:5.0f} scrapes/s "
                        f"({result['reused']:.0%} on kept connections); at {args.steady_rate} beats/s: "
                        f"{result['steady_busy']:.1%} of the core, "
                        f"p99 lag ≤ {result['steady_lag_p99'] * 1000:g} ms",
                        flush=True,
                    )
        finally:
            stubs.stop()
            if closing is not None:
                closing.stop()
    print()
    for setup in setups:
        ratios = [r["rps"] / o["rps"] for r, o in zip(results[setup], results["off"], strict=True)]
        rounds = results[setup]

        def median(key: str, rounds: list[dict[str, float]] = rounds) -> float:
            return statistics.median(r[key] for r in rounds)

        print(
            f"{setup:15} heartbeats {statistics.median(ratios):.3f} of off's, p99 lag ≤ "
            f"{median('lag_p99') * 1000:g} ms; {median('probes_per_s'):.0f} probes/s, "
            f"{median('scrapes_per_s'):.0f} scrapes/s, {median('reused'):.0%} on kept connections; "
            f"at {args.steady_rate} beats/s {median('steady_busy'):.1%} of the core, p99 lag ≤ "
            f"{median('steady_lag_p99') * 1000:g} ms"
        )


if __name__ == "__main__":
    main()
