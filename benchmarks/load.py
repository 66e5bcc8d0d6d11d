"""Servers pinned to one core, load driven from the other.

``wrk`` when it is installed (Lua scripts beside this file vary the request
over many distinct instances); otherwise a built-in aiohttp load generator run
as a separate process, pinned likewise.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import orjson

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
SERVER_CORE, LOAD_CORE = 0, 1


def identity(n: int, per_model: int = 10) -> dict:
    """Instance number ``n`` exactly as the Lua scripts spell it."""
    return {
        "model_name": f"model-{n // per_model}",
        "host": f"10.{(n // 62500) % 256}.{(n // 250) % 250}.{n % 250 + 1}",
        "port": 8000,
    }


def beat_body(n: int, shape: str = "native", per_model: int = 10) -> dict:
    """Heartbeat number ``n`` of a shape, exactly as heartbeat.lua spells it."""
    instance = identity(n, per_model)
    if shape == "fastchat":
        return {"worker_name": f"http://{instance['host']}:8000", "queue_length": n % 7}
    if shape == "dbgpt":
        return {
            **instance,
            "weight": 1.0,
            "check_healthy": True,
            "healthy": False,
            "enabled": True,
            "prompt_template": None,
            "last_heartbeat": None,
            "remove_from_registry": False,
        }
    return {**instance, "queue_length": n % 7}


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def each_fleet(description: str, core: int) -> Iterator[tuple[str, int, Path]]:
    """The ``--sizes`` and ``--backends`` a fleet benchmark was given, each pair in turn,
    with a scratch directory for their files; this process pinned to ``core``."""
    parser = argparse.ArgumentParser(
        description=description, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", default="10000,100000,1000000")
    parser.add_argument("--backends", default="memory,sqlite")
    args = parser.parse_args()
    pin(core)()
    with tempfile.TemporaryDirectory() as workdir:
        for backend in args.backends.split(","):
            for count in map(int, args.sizes.split(",")):
                yield backend, count, Path(workdir)


def pin(core: int):
    def pin() -> None:
        if hasattr(os, "sched_setaffinity") and (os.cpu_count() or 1) > core:
            os.sched_setaffinity(0, {core})

    return pin


class Server:
    """A server process pinned to the server core, ready when /health answers."""

    def __init__(self, argv: list[str], port: int, env: dict[str, str] | None = None) -> None:
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.proc = subprocess.Popen(
            argv,
            cwd=ROOT,
            env={**os.environ, **(env or {})},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            preexec_fn=pin(SERVER_CORE),
        )
        self.started = time.monotonic()

    def wait_ready(self, timeout: float = 60) -> float:
        """Seconds from spawn until /health answered 200."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited: {self.proc.stderr.read().decode()[-2000:]}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2) as sock:
                    sock.sendall(b"GET /health HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
                    if sock.recv(64).startswith(b"HTTP/1.1 200"):
                        return time.monotonic() - self.started
            except OSError:
                pass
            time.sleep(0.01)
        raise TimeoutError("server not ready")

    def rss_kib(self) -> int:
        with open(f"/proc/{self.proc.pid}/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
        return 0

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def baseline(list_size: int = 10, uvloop: bool = False) -> Server:
    port = free_port()
    argv = [sys.executable, str(HERE / "baseline.py"), "--port", str(port), "--list-size", str(list_size)]
    return Server(argv + (["--uvloop"] if uvloop else []), port)


def registry(storage: str, *extra: str, env: dict[str, str] | None = None) -> Server:
    """A registry server. Its instances stay healthy for the whole session: a
    scenario lasts longer than the default timeout, and reads of instances
    that expired meanwhile would measure empty answers."""
    port = free_port()
    argv = [sys.executable, "-m", "model_registry", "serve", "--port", str(port), "--storage", storage]
    return Server(argv + ["--log-level", "warning", "--heartbeat-timeout", "3600", *extra], port, env)


@dataclass
class LoadResult:
    rps: float
    errors: int
    p99_ms: float | None = None


def drive(url: str, script: str, env: dict[str, str], seconds: float, connections: int = 64) -> LoadResult:
    if shutil.which("wrk"):
        return _wrk(url, script, env, seconds, connections)
    return _builtin(url, script, env, seconds, connections)


def _run_on_load_core(argv: list[str], env: dict[str, str]) -> str:
    """Run a load generator pinned to the load core; its standard output."""
    return subprocess.run(
        argv,
        capture_output=True,
        text=True,
        env={**os.environ, **env},
        preexec_fn=pin(LOAD_CORE),
        check=True,
    ).stdout


def _wrk(url: str, script: str, env: dict[str, str], seconds: float, connections: int) -> LoadResult:
    argv = [
        "wrk",
        "-t1",
        f"-c{connections}",
        f"-d{max(1, round(seconds))}s",
        "--latency",
        "-s",
        str(HERE / script),
        url,
    ]
    out = _run_on_load_core(argv, env)
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    errors = int(m.group(1)) if (m := re.search(r"Non-2xx or 3xx responses: (\d+)", out)) else 0
    socket_errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    if socket_errors:
        errors += sum(int(g) for g in socket_errors.groups())
    p99 = re.search(r"99%\s+([\d.]+)(us|ms|s)", out)
    scale = {"us": 0.001, "ms": 1.0, "s": 1000.0}
    return LoadResult(rps, errors, float(p99.group(1)) * scale[p99.group(2)] if p99 else None)


def _builtin(url: str, script: str, env: dict[str, str], seconds: float, connections: int) -> LoadResult:
    argv = [sys.executable, str(HERE / "load.py"), url, script, str(seconds), str(connections)]
    data = orjson.loads(_run_on_load_core(argv, env))
    return LoadResult(data["rps"], data["errors"])


async def _generate(url: str, script: str, seconds: float, connections: int) -> dict:
    """The fallback generator: the Lua scripts' requests, from aiohttp."""
    env = os.environ
    count = int(env.get("BENCH_COUNT", "10000"))
    per_model = int(env.get("BENCH_PER_MODEL", "10"))
    offset = int(env.get("BENCH_OFFSET", "0"))
    models = int(env.get("BENCH_MODELS", "1000"))
    path = env.get("BENCH_PATH", "/api/v1/heartbeat" if script == "heartbeat.lua" else "/api/v1/instances")
    query = env.get("BENCH_QUERY", "&healthy_only=true")
    headers = {"Content-Type": "application/json"}
    if env.get("BENCH_TOKEN"):
        headers["Authorization"] = f"Bearer {env['BENCH_TOKEN']}"
    done = errors = 0
    stop_at = time.monotonic() + seconds
    connector = aiohttp.TCPConnector(limit=connections)

    async with aiohttp.ClientSession(url, connector=connector) as http:

        async def worker(w: int) -> None:
            nonlocal done, errors
            i = w * 7919
            while time.monotonic() < stop_at:
                i += 1
                if script == "heartbeat.lua":
                    n = i % count + offset
                    body = beat_body(n, env.get("BENCH_SHAPE", "native"), per_model)
                    response = await http.post(path, data=orjson.dumps(body), headers=headers)
                else:
                    response = await http.get(f"{path}?model_name=model-{i % models}{query}")
                await response.read()
                done += 1
                errors += response.status >= 300

        await asyncio.gather(*(worker(w) for w in range(connections)))
    return {"rps": done / seconds, "errors": errors}


if __name__ == "__main__":
    url_, script_, seconds_, connections_ = sys.argv[1], sys.argv[2], float(sys.argv[3]), int(sys.argv[4])
    result = asyncio.run(_generate(url_, script_, seconds_, connections_))
    sys.stdout.write(orjson.dumps(result).decode())
