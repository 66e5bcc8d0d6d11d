"""Old against new on the heartbeat path: ``python benchmarks/versus.py --old REV``.

The figure a change to a hot path is judged by: the same heartbeats against
this checkout's registry and against an older one (a git revision, checked out
into a temporary worktree, or a directory holding a checkout), both on the
memory backend with 10,000 instances, in ``--rounds`` alternating runs (who goes
first alternates too). Each run reports the rate and the server's CPU time per
request (from ``/proc/<pid>/task/*/schedstat``: time on a core, so a neighbour
stealing the core does not count against either side). Printed: the medians of
the rounds' new/old ratios, for both. Run ``--old HEAD`` once to see this
machine's noise: the two sides are then the same code.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.load import ROOT, Server, drive, free_port  # noqa: E402
from benchmarks.run import _register_over_http  # noqa: E402

# Runs ``model_registry`` from the checkout in argv[1], whatever is installed:
# the source folders mapped to their package names as pyproject.toml does
# (not the migrations: the memory backend has none).
_LAUNCH = """
import importlib.abc, importlib.util, runpy, sys
from pathlib import Path
root = Path(sys.argv.pop(1))
folders = {"model_registry": root / "registry", "model_registry.api": root / "api",
           "model_registry.storage": root / "storage",
           "model_registry_sdk": root / "clients" / "python" / "model_registry_sdk"}
class Checkout(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        folder = folders.get(name)
        if folder is None:
            return None
        return importlib.util.spec_from_file_location(
            name, folder / "__init__.py", submodule_search_locations=[str(folder)])
sys.meta_path.insert(0, Checkout())
runpy.run_module("model_registry", run_name="__main__", alter_sys=True)
"""
BEATS = {"BENCH_PATH": "/api/v1/heartbeat", "BENCH_COUNT": "10000"}


def _server(checkout: Path) -> Server:
    port = free_port()
    argv = [sys.executable, "-c", _LAUNCH, str(checkout), "serve", "--storage", "memory://"]
    argv += ["--port", str(port), "--log-level", "warning", "--heartbeat-timeout", "3600"]
    return Server(argv, port)


def _cpu_ns(server: Server) -> int:
    tasks = Path(f"/proc/{server.proc.pid}/task").glob("*/schedstat")
    return sum(int(task.read_text().split()[0]) for task in tasks)


def _run(server: Server, seconds: float, connections: int) -> tuple[float, float]:
    """Requests per second, and CPU nanoseconds per request."""
    before = _cpu_ns(server)
    load = drive(server.url, "heartbeat.lua", BEATS, seconds, connections)
    if load.errors:
        raise SystemExit(f"{load.errors} heartbeats failed against {server.url}")
    return load.rps, (_cpu_ns(server) - before) / (load.rps * seconds)


def compare(old_checkout: Path, args: argparse.Namespace) -> dict[str, float]:
    old, new = _server(old_checkout), _server(ROOT)
    try:
        for server in (old, new):
            server.wait_ready()
            asyncio.run(_register_over_http(server.url, 10_000))
            _run(server, 1, args.connections)
        rates, cpus = [], []
        for round_ in range(args.rounds):
            pair = (old, new) if round_ % 2 else (new, old)
            runs = {server.url: _run(server, args.duration, args.connections) for server in pair}
            (old_rps, old_cpu), (new_rps, new_cpu) = runs[old.url], runs[new.url]
            rates.append(new_rps / old_rps)
            cpus.append(old_cpu / new_cpu)
            print(
                f"round {round_ + 1:2}: old {old_rps:7.0f}/s {old_cpu / 1000:5.1f} µs  "
                f"new {new_rps:7.0f}/s {new_cpu / 1000:5.1f} µs  new/old {rates[-1]:.3f} {cpus[-1]:.3f}",
                flush=True,
            )
    finally:
        old.stop()
        new.stop()
    result = {"rate": statistics.median(rates), "cpu": statistics.median(cpus)}
    print(f"median new/old: rate {result['rate']:.3f}, requests per CPU second {result['cpu']:.3f}")
    return result


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--old", required=True, help="a git revision of this repository, or a checkout's folder"
    )
    parser.add_argument("--rounds", type=int, default=21)
    parser.add_argument("--duration", type=float, default=2.0, help="seconds per run")
    parser.add_argument("--connections", type=int, default=64)
    args = parser.parse_args()
    if Path(args.old).is_dir():
        compare(Path(args.old).resolve(), args)
        return
    with tempfile.TemporaryDirectory(prefix="registry-old-") as tmp:
        worktree = Path(tmp) / "old"
        git = ["git", "-C", str(ROOT), "worktree"]
        subprocess.run([*git, "add", "-q", "--detach", str(worktree), args.old], check=True)
        try:
            compare(worktree, args)
        finally:
            subprocess.run([*git, "remove", "--force", str(worktree)], check=True)


if __name__ == "__main__":
    main()
