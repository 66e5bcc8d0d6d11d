"""Instructions per request, counted by valgrind: a noise-free complement to ``run.py``.

``python benchmarks/instructions.py [heartbeat|list] [--instances N]`` runs the bare
baseline and the registry (memory backend) under callgrind, drives each with the
same wrk load (instrumentation switched on only while the load runs), and prints
per request: user-space instructions, and the misses of a simulated cache whose
last level is this machine's per-core L2 (data and code). Throughput on a shared
VM moves by ±0.05 between identical runs; instruction counts move by about 1 %,
so they tell whether a change to a hot path helped. L2 misses explain the rest:
a request that touches more distinct memory than the bare one pays for it in
stalls that instruction counts do not show (and the miss counts move by ~5 %).
The throughput ratio is still the one that is judged.

Needs valgrind and wrk; it takes a few minutes (everything runs ~50x slower).
"""

from __future__ import annotations

import argparse
import asyncio
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.load import HERE, Server, drive, free_port  # noqa: E402
from benchmarks.run import _register_over_http, _worker_token  # noqa: E402

_SECONDS = 15
_TOTALS = re.compile(r"^\s*([\d,]+) \(100\.0%\)(.*)PROGRAM TOTALS", re.M)
_EVENTS = re.compile(r"^Events shown:\s+(.+)$", re.M)


def _l2_bytes() -> int:
    """This machine's per-core L2 size (sysfs), or 512 KiB when it does not say."""
    try:
        size = Path("/sys/devices/system/cpu/cpu0/cache/index2/size").read_text().strip()
        return int(size[:-1]) * 1024 if size.endswith("K") else int(size)
    except (OSError, ValueError):
        return 512 * 1024


def _server(argv: list[str], out: Path, env: dict[str, str] | None = None) -> Server:
    port = free_port()
    valgrind = [
        "valgrind",
        "--tool=callgrind",
        "--instr-atstart=no",
        "--cache-sim=yes",
        # The modelled last level is the core's own L2, not the shared L3: what
        # leaves L2 is what a request pays for in stalls on a busy machine.
        f"--LL={_l2_bytes()},8,64",
        f"--callgrind-out-file={out}",
    ]
    return Server(valgrind + argv + ["--port", str(port)], port, env)


def _instrument(server: Server, state: str) -> None:
    subprocess.run(["callgrind_control", "-i", state, str(server.proc.pid)], capture_output=True, check=True)


def _count(which: str, scenario: str, instances: int, workdir: Path) -> dict[str, float]:
    out = workdir / f"{which}.callgrind"
    if which == "baseline":
        argv = [sys.executable, str(HERE / "baseline.py"), "--list-size", "10", "--uvloop"]
    else:
        argv = [sys.executable, "-m", "model_registry", "serve", "--storage", "memory://"]
        argv += ["--log-level", "warning", "--heartbeat-timeout", "3600"]
    # heartbeat-auth: authentication on, every beat with a worker token scoped to model-*.
    admin = "bench-admin-" + "x" * 32 if scenario == "heartbeat-auth" else None
    server = _server(argv, out, {"REGISTRY_ADMIN_TOKEN": admin} if admin and which == "registry" else None)
    try:
        server.wait_ready(timeout=600)
        token = None
        if which == "registry":
            asyncio.run(_register_over_http(server.url, instances, token=admin))
            token = asyncio.run(_worker_token(server.url, admin)) if admin else None
        if scenario.startswith("heartbeat"):
            script, env = "heartbeat.lua", {"BENCH_PATH": "/api/v1/heartbeat", "BENCH_COUNT": str(instances)}
            if admin:
                env["BENCH_TOKEN"] = token or admin
        else:
            script, env = "get.lua", {"BENCH_PATH": "/api/v1/instances", "BENCH_MODELS": str(instances // 10)}
        drive(server.url, script, env, 2, 8)  # warm up
        subprocess.run(
            ["callgrind_control", "-i", "on", str(server.proc.pid)], capture_output=True, check=True
        )
        load = drive(server.url, script, env, _SECONDS, 8)
        subprocess.run(
            ["callgrind_control", "-i", "off", str(server.proc.pid)], capture_output=True, check=True
        )
        requests = load.rps * _SECONDS
    finally:
        server.stop()
    files = sorted(workdir.glob(f"{which}.callgrind*"))
    text = subprocess.run(["callgrind_annotate", str(files[0])], capture_output=True, text=True).stdout
    names = _EVENTS.search(text).group(1).split()  # type: ignore[union-attr]
    totals = _TOTALS.search(text)
    values = [int(totals.group(1).replace(",", ""))]  # type: ignore[union-attr]
    values += [int(v.replace(",", "")) for v in re.findall(r"([\d,]+) \(100\.0%\)", totals.group(2))]  # type: ignore[union-attr]
    counts = dict(zip(names, values, strict=False))
    return {
        "requests": requests,
        "instructions": counts["Ir"] / requests,
        "l2_data_misses": (counts.get("DLmr", 0) + counts.get("DLmw", 0)) / requests,
        "l2_code_misses": counts.get("ILmr", 0) / requests,
        # First-level misses: of code (the path's length in distinct lines) and of data.
        "i1_misses": counts.get("I1mr", 0) / requests,
        "d1_misses": (counts.get("D1mr", 0) + counts.get("D1mw", 0)) / requests,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("scenario", choices=("heartbeat", "heartbeat-auth", "list"))
    parser.add_argument("--instances", type=int, default=10_000, help="registered (default: %(default)s)")
    args = parser.parse_args()
    for tool in ("valgrind", "callgrind_control", "callgrind_annotate", "wrk"):
        if shutil.which(tool) is None:
            raise SystemExit(f"{tool} is not installed: apt-get install -y valgrind wrk")
    with tempfile.TemporaryDirectory() as tmp:
        base = _count("baseline", args.scenario, args.instances, Path(tmp))
        reg = _count("registry", args.scenario, args.instances, Path(tmp))
    sys.stderr.write(
        f"{args.scenario}/{args.instances}: instructions per request: baseline {base['instructions']:,.0f}, "
        f"registry {reg['instructions']:,.0f}, ratio {base['instructions'] / reg['instructions']:.3f}\n"
        f"L2 misses per request, data: baseline {base['l2_data_misses']:.0f}, registry "
        f"{reg['l2_data_misses']:.0f}; code: baseline {base['l2_code_misses']:.0f}, registry "
        f"{reg['l2_code_misses']:.0f}\n"
        f"L1 misses per request, data: baseline {base['d1_misses']:.0f}, registry {reg['d1_misses']:.0f}; "
        f"code: baseline {base['i1_misses']:.0f}, registry {reg['i1_misses']:.0f}\n"
    )


if __name__ == "__main__":
    main()
