"""The benchmark: ``python benchmarks/run.py`` (``--help`` for the knobs).

Every throughput figure is a ratio to a bare aiohttp server measured in the
same session with the same request and response shapes (``baseline.py``).
Baseline and registry runs alternate ``--rounds`` times (who goes first
alternates too, so a machine that speeds up or slows down during a round
favours neither side); the median rates and the median of the rounds' ratios
are reported. On a shared VM one run's rate moves by about 15 % per second,
independently from one second to the next, so pairing cancels little of it;
only more measuring does: 21 rounds put the median ratio within about ±0.03.
Servers are pinned to core 0 and the load generator to core 1. Results are
printed as a table and written to ``--out`` as JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
from collections.abc import Callable, Iterable
from datetime import datetime, timezone
from pathlib import Path

import aiohttp
import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks import inprocess  # noqa: E402
from benchmarks.load import (  # noqa: E402
    HERE,
    LOAD_CORE,
    ROOT,
    LoadResult,
    Server,
    baseline,
    drive,
    identity,
    pin,
    registry,
)

TARGETS = {
    "heartbeat/memory": 0.80,
    "heartbeat-auth/memory": 0.75,
    "heartbeat/sqlite": 0.75,
    "heartbeat/postgresql": 0.60,
    "list/100000": 0.70,
    "list-cache-600/1000000": 0.70,
    "register/sqlite": 0.25,
    "register-waiters/memory": 0.80,
}


async def _post_each(
    url: str, path: str, bodies: Iterable[dict], token: str | None = None, connections: int = 64
) -> None:
    """POST every body to ``path``, ``connections`` at a time; each must answer 200 or 201."""
    headers = {"Authorization": f"Bearer {token}"} if token else None
    connector = aiohttp.TCPConnector(limit=connections)
    async with aiohttp.ClientSession(url, connector=connector, headers=headers) as http:
        queue = iter(bodies)

        async def worker() -> None:
            for body in queue:
                async with http.post(path, json=body) as response:
                    answer = await response.text()
                    assert response.status in (200, 201) and '"refused"' not in answer, answer

        await asyncio.gather(*(worker() for _ in range(connections)))


async def _register_over_http(
    url: str, count: int, offset: int = 0, per_model: int = 10, token: str | None = None
) -> None:
    """Register instances ``offset`` to ``offset + count`` in bulk, 1,000 a request (a million in
    about half a minute); every one must be taken."""
    starts = range(offset, offset + count, 1000)
    bodies = (
        {"instances": [identity(n, per_model) for n in range(start, min(start + 1000, offset + count))]}
        for start in starts
    )
    await _post_each(url, "/api/v1/instances/batch", bodies, token, connections=4)


async def _register_fastchat_workers(url: str, count: int, per_model: int = 10) -> None:
    """FastChat workers, one model each, at the addresses heartbeat.lua beats."""

    def registration(n: int) -> dict:
        instance = identity(n, per_model)
        return {
            "worker_name": f"http://{instance['host']}:8000",
            "check_heart_beat": True,
            "worker_status": {"model_names": [instance["model_name"]], "speed": 1, "queue_length": 0},
        }

    await _post_each(url, "/register_worker", map(registration, range(count)))


async def _worker_token(url: str, admin: str) -> str:
    """A worker token scoped to the benchmark's models, made with the admin token."""
    async with aiohttp.ClientSession(url, headers={"Authorization": f"Bearer {admin}"}) as http:
        body = {"name": "bench-worker", "role": "worker", "models": ["model-*"]}
        async with http.post("/api/v1/tokens", json=body) as response:
            return (await response.json())["token"]  # type: ignore[no-any-return]


def populate(server: Server, storage: str, count: int) -> None:
    """Register ``count`` instances: in bulk on disk for SQL backends, over HTTP for memory."""
    if storage != "memory://":
        return  # done by populate_database before the server started
    asyncio.run(_register_over_http(server.url, count))


def healthy_listing(server: Server) -> None:
    """Refuse figures measured on answers that were not the real thing: one
    model's listing must still hold its 10 healthy instances."""

    async def check() -> None:
        query = "/api/v1/instances?model_name=model-0&healthy_only=true"
        async with aiohttp.ClientSession(server.url) as http, http.get(query) as response:
            count = (await response.json())["count"]
        if count != 10:
            raise SystemExit(f"model-0 has {count} healthy instances after the runs, not 10")

    asyncio.run(check())


def populate_database(storage: str, count: int) -> None:
    asyncio.run(inprocess.bulk_insert(storage, count))


def alternate(
    first: Callable[[float], LoadResult], second: Callable[[float], LoadResult], args: argparse.Namespace
) -> tuple[list[LoadResult], list[LoadResult]]:
    """Warm both up, then ``--rounds`` runs of each, alternating who goes first."""
    first(1)
    second(1)
    firsts: list[LoadResult] = []
    seconds: list[LoadResult] = []
    for round_ in range(args.rounds):
        if round_ % 2:
            seconds.append(second(args.duration))
        firsts.append(first(args.duration))
        if not round_ % 2:
            seconds.append(second(args.duration))
    return firsts, seconds


def compare(
    name: str,
    make_registry: Callable[[], Server],
    make_baseline: Callable[[], Server],
    script: str,
    env: dict[str, str],
    args: argparse.Namespace,
    prepare: Callable[[Server], None] = lambda server: None,
    verify: Callable[[Server], None] = lambda server: None,
) -> dict:
    """Alternate baseline and registry runs; medians, and the median ratio."""
    reg = make_registry()
    reg.wait_ready()
    prepare(reg)
    base = make_baseline()
    base.wait_ready()
    try:
        base_runs, reg_runs = alternate(
            lambda seconds: drive(base.url, script, env, seconds, args.connections),
            lambda seconds: drive(reg.url, script, env, seconds, args.connections),
            args,
        )
        verify(reg)
        rss_kib = reg.rss_kib()
    finally:
        reg.stop()
        base.stop()
    base_rps = statistics.median(r.rps for r in base_runs)
    reg_rps = statistics.median(r.rps for r in reg_runs)
    result = {
        "scenario": name,
        "baseline_rps": round(base_rps),
        "registry_rps": round(reg_rps),
        # The median of each round's own ratio: a round's two runs are seconds
        # apart, so a noisy neighbour slowing the machine for a while shifts
        # both sides of a ratio alike, where it would skew a ratio of medians.
        "ratio": round(statistics.median(r.rps / b.rps for b, r in zip(base_runs, reg_runs, strict=True)), 3),
        "registry_p99_ms": _median_p99(reg_runs),
        "errors": sum(r.errors for r in reg_runs),
        "registry_rss_mib": round(rss_kib / 1024),
        "runs": {"baseline": [round(r.rps) for r in base_runs], "registry": [round(r.rps) for r in reg_runs]},
    }
    if name in TARGETS:
        result["target"] = TARGETS[name]
        result["met"] = result["ratio"] >= TARGETS[name] and result["errors"] == 0
    _print_row(result)
    return result


def versus_native(
    name: str,
    make_registry: Callable[[], Server],
    compat_env: dict[str, str],
    native_env: dict[str, str],
    args: argparse.Namespace,
    prepare: Callable[[Server], None],
) -> dict:
    """A compatibility API's heartbeats against native ones, on one registry
    and the same instances, alternating as ``compare`` does: the median of the
    rounds' compat / native ratios."""
    reg = make_registry()
    reg.wait_ready()
    prepare(reg)

    def run(env: dict[str, str], seconds: float) -> LoadResult:
        return drive(reg.url, "heartbeat.lua", env, seconds, args.connections)

    try:
        native_runs, compat_runs = alternate(
            lambda seconds: run(native_env, seconds), lambda seconds: run(compat_env, seconds), args
        )
    finally:
        reg.stop()
    ratios = [c.rps / n.rps for n, c in zip(native_runs, compat_runs, strict=True)]
    result = {
        "scenario": name,
        "native_rps": round(statistics.median(r.rps for r in native_runs)),
        "compat_rps": round(statistics.median(r.rps for r in compat_runs)),
        "ratio": round(statistics.median(ratios), 3),
        "errors": sum(r.errors for r in compat_runs) + sum(r.errors for r in native_runs),
        "runs": {
            "native": [round(r.rps) for r in native_runs],
            "compat": [round(r.rps) for r in compat_runs],
        },
    }
    sys.stderr.write(
        f"{name:<24} native   {result['native_rps']:>7}/s  compat   {result['compat_rps']:>7}/s"
        f"  ratio {result['ratio']:.3f}  errors {result['errors']}\n"
    )
    return result


#: Instance-beats a second the batched heartbeats must reach, with batches of 100.
BATCH_TARGET = 100_000
BATCH_SIZES = (10, 100, 1000)


async def _flush_figures(url: str) -> tuple[float, float]:
    """The write-behind's flushes so far: how many, and the seconds they took in all."""
    async with aiohttp.ClientSession(url) as http, http.get("/metrics") as answer:
        text = await answer.text()
    figures = {}
    for name in ("count", "sum"):
        line = next(
            (x for x in text.splitlines() if x.startswith(f"model_registry_flush_duration_seconds_{name} ")),
            None,
        )
        figures[name] = float(line.split()[1]) if line else 0.0
    return figures["count"], figures["sum"]


def batched(name: str, make_registry: Callable[[], Server], args: argparse.Namespace) -> dict:
    """Batched heartbeats (``POST /api/v1/heartbeats``, batch.lua) of 10, 100 and 1,000
    beats over 10,000 instances, each batch size alternating with the bare server's
    single heartbeats: instance-beats a second by batch size, beside the bare
    request rate, and the write-behind's flushes meanwhile (SQLite)."""
    reg = make_registry()
    reg.wait_ready()
    populate(reg, "memory://" if name.endswith("memory") else "", 10_000)
    base = baseline(uvloop=args.uvloop)
    base.wait_ready()
    single = {"BENCH_PATH": "/api/v1/heartbeat", "BENCH_COUNT": "10000"}
    curve: dict[str, dict] = {}
    try:
        for size in BATCH_SIZES:
            env = {"BENCH_COUNT": "10000", "BENCH_BATCH": str(size)}
            flushes_before = asyncio.run(_flush_figures(reg.url))
            base_runs, reg_runs = alternate(
                lambda seconds: drive(base.url, "heartbeat.lua", single, seconds, args.connections),
                lambda seconds, env=env: drive(reg.url, "batch.lua", env, seconds, min(args.connections, 16)),
                args,
            )
            flushes, flush_seconds = (
                b - a for a, b in zip(flushes_before, asyncio.run(_flush_figures(reg.url)), strict=True)
            )
            beats = statistics.median(r.rps for r in reg_runs) * size
            curve[str(size)] = {
                "instance_beats_per_s": round(beats),
                "requests_per_s": round(statistics.median(r.rps for r in reg_runs)),
                "baseline_rps": round(statistics.median(r.rps for r in base_runs)),
                "errors": sum(r.errors for r in reg_runs),
                "flushes": int(flushes),
                "mean_flush_s": round(flush_seconds / flushes, 3) if flushes else None,
            }
            sys.stderr.write(
                f"{name:<24} batch {size:>5}  {beats:>9.0f} instance-beats/s  "
                f"({curve[str(size)]['requests_per_s']}/s requests; bare single beats "
                f"{curve[str(size)]['baseline_rps']}/s)  flush {curve[str(size)]['mean_flush_s']} s\n"
            )
    finally:
        reg.stop()
        base.stop()
    met = curve["100"]["instance_beats_per_s"] >= BATCH_TARGET and not any(
        c["errors"] for c in curve.values()
    )
    return {"scenario": name, "by_batch": curve, "target": BATCH_TARGET, "met": met}


def under_pressure(
    name: str,
    make_registry: Callable[[], Server],
    pressure: list[str],
    script: str,
    env: dict[str, str],
    args: argparse.Namespace,
    prepare: Callable[[Server], None] = lambda server: None,
) -> dict:
    """The same load on two like registries, one of them under a side load
    (``pressure.py``), which is paused (SIGSTOP) while the other is measured:
    the median of the rounds' pressed / quiet ratios."""
    quiet, pressed = make_registry(), make_registry()
    side = None
    try:
        for server in (quiet, pressed):
            server.wait_ready()
            prepare(server)
        argv = [sys.executable, str(HERE / "pressure.py"), pressure[0], pressed.url, *pressure[1:]]
        side = subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.PIPE, preexec_fn=pin(LOAD_CORE))
        if side.stdout is None or side.stdout.readline().strip() != b"ready":
            raise RuntimeError(f"{name}: the side load did not start ({' '.join(pressure)})")

        def run(server: Server, side_signal: signal.Signals, seconds: float) -> LoadResult:
            side.send_signal(side_signal)  # type: ignore[union-attr]
            return drive(server.url, script, env, seconds, args.connections)

        # The side load pauses while the quiet one is measured: it shares its core.
        quiet_runs, pressed_runs = alternate(
            lambda seconds: run(quiet, signal.SIGSTOP, seconds),
            lambda seconds: run(pressed, signal.SIGCONT, seconds),
            args,
        )
    finally:
        if side is not None:
            side.send_signal(signal.SIGCONT)
            side.terminate()
            side.wait(timeout=30)
        quiet.stop()
        pressed.stop()
    ratios = [p.rps / q.rps for q, p in zip(quiet_runs, pressed_runs, strict=True)]
    result = {
        "scenario": name,
        "pressure": " ".join(pressure),
        "quiet_rps": round(statistics.median(r.rps for r in quiet_runs)),
        "pressed_rps": round(statistics.median(r.rps for r in pressed_runs)),
        "ratio": round(statistics.median(ratios), 3),
        "quiet_p99_ms": _median_p99(quiet_runs),
        "pressed_p99_ms": _median_p99(pressed_runs),
        "errors": sum(r.errors for r in quiet_runs) + sum(r.errors for r in pressed_runs),
        "runs": {
            "quiet": [round(r.rps) for r in quiet_runs],
            "pressed": [round(r.rps) for r in pressed_runs],
        },
    }
    if name in TARGETS:
        result["target"] = TARGETS[name]
        result["met"] = result["ratio"] >= TARGETS[name] and result["errors"] == 0
    met = f"  ≥ {result['target']:.2f} {'ok' if result['met'] else 'MISSED'}" if "target" in result else ""
    sys.stderr.write(
        f"{name:<24} quiet    {result['quiet_rps']:>7}/s  pressed  {result['pressed_rps']:>7}/s"
        f"  ratio {result['ratio']:.3f}  p99 {result['quiet_p99_ms']} → {result['pressed_p99_ms']} ms"
        f"  errors {result['errors']}{met}\n"
    )
    return result


def _median_p99(runs: list[LoadResult]) -> float | None:
    known = [r.p99_ms for r in runs if r.p99_ms is not None]
    return statistics.median(known) if known else None


def _print_row(result: dict) -> None:
    target = f"≥ {result['target']:.2f} {'ok' if result['met'] else 'MISSED'}" if "target" in result else ""
    rates = f"baseline {result['baseline_rps']:>7}/s  registry {result['registry_rps']:>7}/s"
    sys.stderr.write(
        f"{result['scenario']:<24} {rates}  ratio {result['ratio']:.3f}"
        f"  errors {result['errors']}  {target}\n"
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--duration", type=float, default=3.0, help="seconds per run (default: %(default)s)")
    parser.add_argument(
        "--rounds", type=int, default=21, help="baseline/registry pairs (default: %(default)s)"
    )
    parser.add_argument("--connections", type=int, default=64, help="concurrent connections (default: 64)")
    parser.add_argument(
        "--only",
        default="",
        help="comma-separated scenario prefixes (heartbeat, heartbeats-batch, list, select, register, "
        "inprocess, sweep, bulk, fanout, fleet)",
    )
    parser.add_argument(
        "--no-postgres", action="store_true", help="skip PostgreSQL even when it is installed"
    )
    parser.add_argument(
        "--out", default=str(ROOT / "benchmarks" / "results.json"), help="where to write JSON"
    )
    args = parser.parse_args()
    wanted = [w for w in args.only.split(",") if w]

    def want(name: str) -> bool:
        return not wanted or any(name.startswith(w) for w in wanted)

    # Both sides run on uvloop when it is installed (the registry picks it up by itself).
    args.uvloop = importlib.util.find_spec("uvloop") is not None
    extra: list[str] = []
    results: list[dict] = []
    workdir = Path(os.environ.get("TMPDIR", "/tmp")) / f"registry-bench-{os.getpid()}"
    workdir.mkdir(parents=True, exist_ok=True)
    postgres = None if args.no_postgres else inprocess.start_postgres()
    try:
        backends = {"memory": "memory://", "sqlite": f"sqlite+aiosqlite:///{workdir / 'heartbeat.db'}"}
        if postgres is not None:
            backends["postgresql"] = postgres.create_database("bench_heartbeat")
        beats = {"BENCH_PATH": "/api/v1/heartbeat", "BENCH_COUNT": "10000"}
        for name, storage in backends.items():
            if not want(f"heartbeat/{name}"):
                continue
            populate_database(storage, 10_000) if storage != "memory://" else None
            results.append(
                compare(
                    f"heartbeat/{name}",
                    lambda storage=storage: registry(storage, *extra),
                    lambda: baseline(uvloop=args.uvloop),
                    "heartbeat.lua",
                    beats,
                    args,
                    prepare=lambda server, storage=storage: populate(server, storage, 10_000),
                )
            )
        # The compatibility APIs' heartbeats, on the same instances: DB-GPT's body is
        # every field of its ModelInstance; FastChat's names a worker, found by address.
        for shape, path in (("dbgpt", "/api/controller/heartbeat"), ("fastchat", "/receive_heart_beat")):
            for name, storage in backends.items():
                scenario = f"heartbeat-{shape}/{name}"
                if not want(scenario):
                    continue
                if name == "sqlite":
                    storage = f"sqlite+aiosqlite:///{workdir / f'heartbeat-{shape}.db'}"
                elif name == "postgresql":
                    storage = postgres.create_database(f"bench_heartbeat_{shape}")  # type: ignore[union-attr]
                if storage != "memory://" and shape == "dbgpt":
                    populate_database(storage, 10_000)

                def prepare(server: Server, storage: str = storage, shape: str = shape) -> None:
                    if shape == "fastchat":
                        asyncio.run(_register_fastchat_workers(server.url, 10_000))
                    else:
                        populate(server, storage, 10_000)

                env = {"BENCH_PATH": path, "BENCH_COUNT": "10000", "BENCH_SHAPE": shape}
                result = compare(
                    scenario,
                    lambda storage=storage: registry(storage, *extra),
                    lambda: baseline(uvloop=args.uvloop),
                    "heartbeat.lua",
                    env,
                    args,
                    prepare=prepare,
                )
                results.append(result)
                results.append(
                    versus_native(
                        f"{shape}-vs-native/{name}",
                        lambda storage=storage: registry(storage, *extra),
                        env,
                        {"BENCH_PATH": "/api/v1/heartbeat", "BENCH_COUNT": "10000"},
                        args,
                        prepare,
                    )
                )
        for name in ("memory", "sqlite"):
            scenario = f"heartbeats-batch/{name}"
            if not want(scenario):
                continue
            storage = "memory://" if name == "memory" else f"sqlite+aiosqlite:///{workdir / 'batch.db'}"
            if storage != "memory://":
                populate_database(storage, 10_000)
            results.append(batched(scenario, lambda storage=storage: registry(storage, *extra), args))
        if want("heartbeat-auth/memory"):
            # Authentication on: every beat carries a worker token scoped to model-*.
            admin = "bench-admin-" + "x" * 32
            beats_with_token = {"BENCH_PATH": "/api/v1/heartbeat", "BENCH_COUNT": "10000"}

            def prepare_auth(server: Server) -> None:
                beats_with_token["BENCH_TOKEN"] = asyncio.run(_worker_token(server.url, admin))
                asyncio.run(_register_over_http(server.url, 10_000, token=admin))

            results.append(
                compare(
                    "heartbeat-auth/memory",
                    lambda: registry("memory://", *extra, env={"REGISTRY_ADMIN_TOKEN": admin}),
                    lambda: baseline(uvloop=args.uvloop),
                    "heartbeat.lua",
                    beats_with_token,
                    args,
                    prepare=prepare_auth,
                )
            )
        # Reads spread evenly over every model (10 instances each), in turn: at a million,
        # 100,000 listings, which the default cache (64 MiB) does not hold and 600 MiB does
        # (read in turn, a cache smaller than them all holds none when it is read again).
        # And at a million, reads spread over a tenth of the models (``list-hot``): the
        # routers of a large fleet each follow the models they route.
        for count, cache, models in (
            (10_000, None, 1_000),
            (100_000, None, 10_000),
            (1_000_000, None, 100_000),
            (1_000_000, 600, 100_000),
            (1_000_000, None, 10_000),
        ):
            if models < count // 10:
                scenario = f"list-hot/{count}"
            else:
                scenario = f"list/{count}" if cache is None else f"list-cache-{cache}/{count}"
            if not want(scenario):
                continue
            lists = {"BENCH_PATH": "/api/v1/instances", "BENCH_MODELS": str(models)}
            flags = [] if cache is None else ["--listing-cache", str(cache)]
            results.append(
                compare(
                    scenario,
                    lambda flags=flags: registry("memory://", *extra, *flags),
                    lambda: baseline(list_size=10, uvloop=args.uvloop),
                    "get.lua",
                    lists,
                    args,
                    prepare=lambda server, count=count: populate(server, "memory://", count),
                    verify=healthy_listing,
                )
            )
        if want("select"):
            selects = {"BENCH_PATH": "/api/v1/select", "BENCH_MODELS": "1000", "BENCH_QUERY": ""}
            results.append(
                compare(
                    "select/10000",
                    lambda: registry("memory://", *extra),
                    lambda: baseline(uvloop=args.uvloop),
                    "get.lua",
                    selects,
                    args,
                    prepare=lambda server: populate(server, "memory://", 10_000),
                    verify=healthy_listing,
                )
            )
        if want("register"):
            # Fresh identities for every run: each request is a new, durable registration.
            registrations = {"BENCH_PATH": "/api/v1/instances", "BENCH_COUNT": "1000000", "BENCH_OFFSET": "0"}
            storage = f"sqlite+aiosqlite:///{workdir / 'register.db'}"
            results.append(
                compare(
                    "register/sqlite",
                    lambda: registry(storage, *extra),
                    lambda: baseline(uvloop=args.uvloop),
                    "heartbeat.lua",
                    registrations,
                    args,
                )
            )
        if want("register-waiters"):
            # Registrations of fresh instances, with 1,000 long-polls and 1,000 watchers
            # open on other models, against the same registrations with none open.
            fresh = {"BENCH_PATH": "/api/v1/instances", "BENCH_COUNT": "1000000", "BENCH_OFFSET": "0"}
            results.append(
                under_pressure(
                    "register-waiters/memory",
                    lambda: registry("memory://", *extra),
                    ["waiters", "--long-polls", "1000", "--watchers", "1000"],
                    "heartbeat.lua",
                    fresh,
                    args,
                )
            )
        if want("heartbeat-gzip"):
            # Heartbeats while two clients post gzip bodies that would inflate to 200 MiB.
            bombed = {"BENCH_PATH": "/api/v1/heartbeat", "BENCH_COUNT": "10000"}
            results.append(
                under_pressure(
                    "heartbeat-gzip/memory",
                    lambda: registry("memory://", *extra),
                    ["gzip", "--clients", "2"],
                    "heartbeat.lua",
                    bombed,
                    args,
                    prepare=lambda server: populate(server, "memory://", 10_000),
                )
            )
        if want("inprocess"):
            results.extend(inprocess.run_all(workdir))
        if want("sweep"):
            # The checker's sweeps at 10,000, 100,000 and 1,000,000 instances (a few minutes).
            out = subprocess.run(
                [sys.executable, str(HERE / "sweep.py")], cwd=ROOT, check=True, capture_output=True, text=True
            ).stdout
            results.extend(orjson.loads(out))
        if want("bulk"):
            # A fleet loaded over HTTP at 10k, 100k and 1M: seconds, memory, restart (a few minutes).
            out = subprocess.run(
                [sys.executable, str(HERE / "bulk.py")], cwd=ROOT, check=True, capture_output=True, text=True
            ).stdout
            results.extend(orjson.loads(out))
        if want("fanout"):
            # 10,000 WebSocket watchers, then 10,000 long-polls (a few minutes).
            for flags in (["--watchers", "10000"], ["--watchers", "0", "--long-polls", "10000"]):
                out = subprocess.run(
                    [sys.executable, str(HERE / "fanout.py"), *flags],
                    cwd=ROOT,
                    check=True,
                    capture_output=True,
                    text=True,
                ).stdout
                results.append({"scenario": "fanout/" + "-".join(flags[1::2]), **orjson.loads(out)})
        if want("fleet") and postgres is not None:
            # Three replicas on one PostgreSQL while a fleet beats; a replica joining 1M rows (minutes).
            out = subprocess.run(
                [sys.executable, str(HERE / "fleet.py")], cwd=ROOT, check=True, capture_output=True, text=True
            ).stdout
            results.extend(orjson.loads(out))
    finally:
        if postgres is not None:
            postgres.destroy()
        shutil.rmtree(workdir, ignore_errors=True)
    report = {
        "when": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "wrk": bool(shutil.which("wrk")),
            "uvloop": args.uvloop,
        },
        "settings": {"duration_s": args.duration, "rounds": args.rounds, "connections": args.connections},
        "results": results,
    }
    Path(args.out).write_bytes(orjson.dumps(report, option=orjson.OPT_INDENT_2))
    sys.stderr.write(f"written to {args.out}\n")


if __name__ == "__main__":
    main()
