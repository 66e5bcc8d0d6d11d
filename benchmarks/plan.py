"""A small simulation of a deployment, from measured per-operation costs
(``docs/scale.md`` says where each comes from): how busy each replica's core is,
how much memory it holds, what the database absorbs, and, for a fleet split by
model over several PostgreSQL clusters, how even the split is.

``python benchmarks/plan.py --instances 10000000 --replicas 3 --clusters 8``

The fleet is simulated, not averaged: model sizes follow a Zipf law (a few
models with most instances, a long tail), each model is placed on a cluster by
the hash of its name (as a router of requests by model would), and beats arrive
with jitter within their interval; the busiest second of each replica and each
cluster is what is reported, not the mean.
"""

from __future__ import annotations

import argparse
import hashlib
import math
import random
import statistics
import sys
from dataclasses import dataclass

#: Measured on this project's benchmarks (2-core VM, one core per replica; see docs/scale.md).
COSTS = {
    "beat_single_s": 1 / 5_909,  # one heartbeat request, memory backend (run.py heartbeat/memory)
    "beat_batched_s": 1 / 195_492,  # one instance-beat in batches of 100, SQLite (heartbeats-batch)
    "list_s": 1 / 5_843,  # one listing of a model of 10, 100,000 registered (run.py list/100000)
    "sweep_s_per_instance": 2.2 / 1_000_000,  # a steady sweep's walk, per instance (sweep.py, 1M)
    "bytes_per_instance": 800,  # resident, every model listed once (inprocess, 1M)
    "bytes_per_watcher": 18.8 * 1024,  # an idle WebSocket watcher (fanout.py)
    "event_fanout_s_per_watcher": 0.105 / 10_000,  # a change reaching 10,000 watchers, p99
    # Row updates a second one PostgreSQL primary sustained here, sharing two cores with three
    # replicas and the load (fleet.py, peak): a floor; a dedicated primary does more (--primary-rows).
    "primary_rows_per_s": 42_600,
}
#: The share of a core a replica may be busy, leaving room for bursts and restarts.
TARGET_BUSY = 0.7
#: PostgreSQL: a beat becomes at most one row update per flush (write-behind).
#: WAL bytes a row update: 138 steady (86 % HOT) and 388 in the period after a checkpoint
#: (full-page images), one period in 30 with a 5-minute checkpoint: fleet.py, 100,000 every 10 s.
ROW_BYTES_WAL = 146


@dataclass
class Plan:
    instances: int
    interval: float
    replicas: int
    clusters: int
    batch: int
    watchers: int
    lists_per_s: float
    models: int
    zipf: float
    seed: int
    placement: str
    primary_rows: float


def simulate(plan: Plan) -> dict:
    rng = random.Random(plan.seed)
    # Model sizes by a Zipf law, scaled to the fleet.
    weights = [1 / (rank**plan.zipf) for rank in range(1, plan.models + 1)]
    total = sum(weights)
    sizes = [max(1, round(plan.instances * w / total)) for w in weights]
    per_cluster = _place(sizes, plan.clusters, plan.placement)
    # The busiest second: beats fall uniformly within their interval, so one
    # second of a cluster holds a binomial share of its instances' beats.
    seconds = max(1, round(plan.interval))
    busiest_rows = [max(_binomial(rng, n, 1 / seconds) for _ in range(20)) for n in per_cluster]
    fleet = sum(sizes)
    beats_per_s = fleet / plan.interval
    per_replica_beats = beats_per_s / plan.replicas
    beat_cost = COSTS["beat_batched_s"] if plan.batch > 1 else COSTS["beat_single_s"]
    core = (
        per_replica_beats * beat_cost
        + plan.lists_per_s / plan.replicas * COSTS["list_s"]
        + fleet * COSTS["sweep_s_per_instance"] / plan.interval  # each replica's share of sweeps
    )
    # Each replica holds the whole fleet in memory (reads are answered there).
    memory = fleet * COSTS["bytes_per_instance"] + plan.watchers / plan.replicas * COSTS["bytes_per_watcher"]
    return {
        "instances": fleet,
        "beats_per_s": round(beats_per_s),
        "per_replica": {
            "core_busy": round(core, 3),
            "memory_gib": round(memory / 2**30, 2),
            "watcher_fanout_p99_s": round(
                plan.watchers / plan.replicas * COSTS["event_fanout_s_per_watcher"], 3
            ),
        },
        "database": {
            "clusters": plan.clusters,
            "instances_per_cluster": {
                "max": max(per_cluster),
                "median": round(statistics.median(per_cluster)),
            },
            "rows_per_s_busiest_second": max(busiest_rows),
            "wal_mib_per_s_busiest": round(max(busiest_rows) * ROW_BYTES_WAL / 2**20, 2),
            "imbalance": round(max(per_cluster) / (fleet / plan.clusters), 2),
            "primary_busy": round(max(busiest_rows) / plan.primary_rows, 2),
            "fits": max(busiest_rows) <= plan.primary_rows * TARGET_BUSY,
        },
        "replicas_needed": math.ceil(core * plan.replicas / TARGET_BUSY),
        "fits": core < TARGET_BUSY and memory < 64 * 2**30,
    }


def _place(sizes: list[int], clusters: int, placement: str) -> list[int]:
    """Instances per cluster. ``hash``: each model on the cluster its name hashes
    to. ``packed``: the largest models first, each on the least loaded cluster,
    and a model larger than a cluster's fair share split over several by the
    hash of its instances' addresses (so one model's reads fan out to those)."""
    per_cluster = [0] * clusters
    if placement == "hash":
        for i, size in enumerate(sizes):
            name = f"model-{i}".encode()
            per_cluster[int(hashlib.blake2b(name, digest_size=4).hexdigest(), 16) % clusters] += size
        return per_cluster
    fair = sum(sizes) / clusters
    for size in sorted(sizes, reverse=True):
        pieces = max(1, math.ceil(size / fair))
        for _ in range(pieces):
            least = min(range(clusters), key=per_cluster.__getitem__)
            per_cluster[least] += size / pieces
    return [round(n) for n in per_cluster]


def _binomial(rng: random.Random, n: int, p: float) -> int:
    """A binomial draw, by its normal approximation for large n."""
    mean, sd = n * p, (n * p * (1 - p)) ** 0.5
    return max(0, round(rng.gauss(mean, sd)))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--instances", type=int, default=10_000_000)
    parser.add_argument("--interval", type=float, default=10.0, help="heartbeat interval, seconds")
    parser.add_argument("--replicas", type=int, default=3, help="registry replicas per cluster's fleet")
    parser.add_argument("--clusters", type=int, default=8, help="PostgreSQL clusters, models split by hash")
    parser.add_argument("--batch", type=int, default=100, help="beats per request (1: single beats)")
    parser.add_argument("--watchers", type=int, default=10_000)
    parser.add_argument("--lists-per-s", type=float, default=1_000)
    parser.add_argument("--models", type=int, default=5_000)
    parser.add_argument("--zipf", type=float, default=1.1)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--placement", choices=("hash", "packed"), default="packed")
    parser.add_argument(
        "--primary-rows",
        type=float,
        default=COSTS["primary_rows_per_s"],
        help="row updates a second one primary sustains (default: measured here, %(default)s)",
    )
    args = parser.parse_args()
    import orjson

    fleet = Plan(**vars(args))
    # Per cluster: its share of the fleet, served by its own replicas.
    result = simulate(fleet)
    share = result["database"]["instances_per_cluster"]["max"]
    per_cluster = simulate(
        Plan(**{**vars(args), "instances": share, "clusters": 1, "models": 1, "replicas": args.replicas})
    )
    sys.stdout.write(
        orjson.dumps({"fleet": result, "busiest_cluster": per_cluster}, option=orjson.OPT_INDENT_2).decode()
        + "\n"
    )


if __name__ == "__main__":
    main()
