"""``GET /metrics``: the registry's numbers in the Prometheus text format.

Nothing is counted through ``prometheus_client`` on the request path: the
registry, its storage and the API keep plain integers (and, per route, a few
lists of bucket counts), and a collector reads them when Prometheus scrapes.
The collector lives in a registry of the application's own, never the
process-global one, so that several applications in one process (tests)
stay apart.

Per-model series are bounded by ``--metrics-max-models``: the models with
the most instances keep their own ``model`` label, the rest are summed under
``model="_other"``, so that a registry with 100,000 models cannot swamp a
Prometheus server.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Iterator
from importlib.metadata import PackageNotFoundError, version
from typing import Any

from aiohttp import web
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
    SummaryMetricFamily,
)

from model_registry import ModelInstance, Registry
from model_registry_sdk.record import STATES as RECORD_STATES

from .keys import CONNECTIONS, SETTINGS
from .lag import BUCKETS as LAG_BUCKETS
from .lag import LoopLag
from .prober import Prober
from .responses import SERVER

__all__ = ["BUCKETS", "CONTENT_TYPE", "Metrics", "RouteTimes", "metrics"]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
#: Request duration buckets, in seconds: the registry answers in well under a millisecond.
BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 5.0)
#: The label of the models past ``--metrics-max-models``.
OTHER = "_other"
#: An instance's state, one per instance (they add up to the total): ``record.STATES``.
STATES = RECORD_STATES
_INDEX = {state: i for i, state in enumerate(STATES)}
#: The kinds of storage errors, always exported (0 until one happens).
ERROR_KINDS = ("timeout", "pool_exhausted", "driver")
#: Records tallied between two yields to the event loop, when a scrape counts instances.
_SLICE = 5000


class RouteTimes:
    """One route's request durations, by status class: plain lists the guard
    adds to (``counts[status // 100][bisect_left(BUCKETS, seconds)] += 1`` and
    ``sums[status // 100] += seconds``), read at scrape time."""

    __slots__ = ("counts", "route", "sums")

    def __init__(self, route: str) -> None:
        self.route = route
        #: Index 1..5: 1xx (a WebSocket's upgrade) to 5xx; the last bucket is +Inf.
        self.counts = [[0] * (len(BUCKETS) + 1) for _ in range(6)]
        self.sums = [0.0] * 6


class Metrics:
    """The application's metrics: its collector registry, the routes' timings,
    and the watch counters the WebSocket sessions add to."""

    def __init__(self) -> None:
        self.routes: list[RouteTimes] = []
        self.events_sent = 0
        self.watchers_cut_off = 0
        self.prometheus = CollectorRegistry(auto_describe=False)
        #: The event loop's lateness (started with the registry).
        self.lag = LoopLag()
        #: The prober's counters, once it runs.
        self.prober: Prober | None = None
        self._snapshot: _Snapshot | None = None
        self.prometheus.register(_Collector(self))

    def route(self, route: str) -> RouteTimes:
        times = RouteTimes(route)
        self.routes.append(times)
        return times

    async def render(self, registry: Registry, max_models: int, connections: dict[str, Any]) -> bytes:
        """The text format, after counting the instances (in slices: a scrape
        of a large registry must not hold the event loop)."""
        tally = await _tally(registry, max_models)
        self._snapshot = _Snapshot(registry.stats(), tally, connections, registry.storage.name)
        try:
            return generate_latest(self.prometheus)
        finally:
            self._snapshot = None


async def metrics(request: web.Request, registry: Registry) -> web.Response:
    app = request.app
    body = await app[METRICS].render(registry, app[SETTINGS].metrics_max_models, app[CONNECTIONS].stats())
    return web.Response(body=body, headers={**SERVER, "Content-Type": CONTENT_TYPE})


METRICS = web.AppKey("metrics", Metrics)


class _Snapshot:
    def __init__(
        self, stats: dict[str, Any], tally: _Tally, connections: dict[str, Any], backend: str
    ) -> None:
        self.stats, self.tally, self.connections, self.backend = stats, tally, connections, backend


class _Tally:
    """Instances by state, in all and by model (the largest ``max_models``, then the rest)."""

    def __init__(self) -> None:
        self.total = dict.fromkeys(STATES, 0)
        self.by_model: dict[str, list[int]] = {}


async def _tally(registry: Registry, max_models: int) -> _Tally:
    tally = _Tally()
    records: Iterable[ModelInstance] | None = registry.storage.records_now()
    snapshot = list(records) if records is not None else await registry.instances()
    by_model = tally.by_model
    for start in range(0, len(snapshot), _SLICE):
        for record in snapshot[start : start + _SLICE]:
            counts = by_model.get(record.model_name)
            if counts is None:
                counts = by_model[record.model_name] = [0] * len(STATES)
            counts[_INDEX[record.state]] += 1
        if start + _SLICE < len(snapshot):
            await asyncio.sleep(0)
    for counts in by_model.values():
        for state, n in zip(STATES, counts, strict=True):
            tally.total[state] += n
    if len(by_model) > max_models:
        ranked = sorted(by_model.items(), key=lambda item: (-sum(item[1]), item[0]))
        kept = dict(ranked[:max_models])
        other = [0] * len(STATES)
        for _, counts in ranked[max_models:]:
            for i, n in enumerate(counts):
                other[i] += n
        kept[OTHER] = other
        tally.by_model = kept
    return tally


class _Collector:
    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics

    def collect(self) -> Iterator[Metric]:
        snapshot = self._metrics._snapshot
        if snapshot is None:  # only ever read through Metrics.render
            return
        stats, tally = snapshot.stats, snapshot.tally
        yield _gauge(
            "model_registry_build_info",
            "The running version and storage backend",
            [({"version": _VERSION, "backend": snapshot.backend}, 1)],
        )
        yield _gauge(
            "model_registry_instances",
            "Instances by state (ready, starting, disabled, cooling, unhealthy: one each)",
            [({"state": s}, n) for s, n in tally.total.items()],
        )
        yield _gauge(
            "model_registry_model_instances",
            "Instances by model and state (models past --metrics-max-models are summed as _other)",
            [
                ({"model": m, "state": s}, n)
                for m, c in tally.by_model.items()
                for s, n in zip(STATES, c, strict=True)
            ],
        )
        changes = stats["changes"]
        for name, types, what in (
            ("registrations", ("registered",), "New instances registered"),
            ("deregistrations", ("deregistered", "purged"), "Instances deregistered or purged"),
            ("evictions", ("evicted",), "Instances evicted after staying unhealthy past --evict-after"),
            ("expiries", ("unhealthy",), "Instances marked unhealthy for want of heartbeats"),
        ):
            yield _counter(f"model_registry_{name}", what, [({}, sum(changes.get(t, 0) for t in types))])
        yield _counter(
            "model_registry_changes",
            "Changes this process made, by type",
            [({"type": t}, n) for t, n in changes.items()],
        )
        yield _counter("model_registry_heartbeats", "Heartbeats recorded", [({}, stats["heartbeats"])])
        yield _counter(
            "model_registry_reports",
            "Routers' reports on requests to instances, by outcome",
            [({"outcome": o}, n) for o, n in stats["reports"].items()],
        )
        yield from self._requests()
        sweeps = SummaryMetricFamily(
            "model_registry_sweep_duration_seconds",
            "The checker's sweeps and the time they took",
            count_value=stats["sweeps"],
            sum_value=stats["sweep_seconds"],
        )
        yield sweeps
        yield _gauge(
            "model_registry_last_sweep_duration_seconds",
            "The last sweep's duration",
            [({}, stats["last_sweep_seconds"])],
        )
        yield _counter(
            "model_registry_swept_instances", "Instances the sweeps looked at", [({}, stats["swept"])]
        )
        preservation = stats["self_preservation"]
        yield _gauge(
            "model_registry_self_preservation_active",
            "1 while self-preservation holds the checker back",
            [({}, int(preservation["active"]))],
        )
        yield _gauge(
            "model_registry_self_preservation_held_instances",
            "Instances self-preservation keeps from being marked unhealthy or evicted",
            [({"action": a}, preservation.get(a, {}).get("held", 0)) for a in ("expiry", "eviction")],
        )
        yield from _storage(stats["storage"])
        yield _gauge("model_registry_watchers", "WebSocket watchers connected", [({}, stats["watchers"])])
        yield _gauge("model_registry_long_polls", "Long-polls waiting", [({}, stats["long_polls"])])
        yield _counter(
            "model_registry_watch_events_sent", "Events sent to watchers", [({}, self._metrics.events_sent)]
        )
        yield _counter(
            "model_registry_watchers_cut_off",
            "Watchers disconnected for falling behind (close 1013)",
            [({}, self._metrics.watchers_cut_off)],
        )
        connections = snapshot.connections
        yield _gauge(
            "model_registry_connections_open", "Client connections open", [({}, connections["open"])]
        )
        yield _counter(
            "model_registry_connections_refused",
            "Connections closed at once: too many from one client, or at the open-files limit",
            [
                ({"reason": "per_client"}, connections["refused_per_client"]),
                ({"reason": "open_files"}, connections["refused_at_limit"]),
            ],
        )

        yield from self._lag()
        if self._metrics.prober is not None:
            yield from _probes(self._metrics.prober)

    def _lag(self) -> Iterator[Metric]:
        lag = self._metrics.lag
        family = HistogramMetricFamily(
            "model_registry_event_loop_lag_seconds",
            f"How late the event loop ran a task due every {lag.period:g} s: a floor under request latency",
        )
        cumulative, buckets = 0, []
        for bound, n in zip((*LAG_BUCKETS, float("inf")), lag.counts, strict=True):
            cumulative += n
            buckets.append(("+Inf" if bound == float("inf") else repr(bound), cumulative))
        family.add_metric([], buckets, lag.sum)
        yield family

    def _requests(self) -> Iterator[Metric]:
        family = HistogramMetricFamily(
            "model_registry_request_duration_seconds",
            "Time to answer a request, by route and status class",
            labels=("route", "status"),
        )
        for times in self._metrics.routes:
            for klass in range(1, 6):
                counts = times.counts[klass]
                total = sum(counts)
                if not total:
                    continue
                cumulative, buckets = 0, []
                for bound, n in zip((*BUCKETS, float("inf")), counts, strict=True):
                    cumulative += n
                    buckets.append(("+Inf" if bound == float("inf") else repr(bound), cumulative))
                family.add_metric([times.route, f"{klass}xx"], buckets, times.sums[klass])
        yield family


def _probes(prober: Prober) -> Iterator[Metric]:
    yield _counter(
        "model_registry_probes",
        "Health-check probes (kind=check) and metrics scrapes (kind=metrics) done, by outcome",
        [
            ({"kind": kind, "outcome": outcome}, prober.outcomes.get((kind, outcome), 0))
            for kind in ("check", "metrics")
            for outcome in ("ok", "failed")
        ],
    )
    yield _counter(
        "model_registry_probe_seconds",
        "Time spent probing and scraping, by kind (wall time, requests overlapping)",
        [({"kind": kind}, prober.seconds.get(kind, 0.0)) for kind in ("check", "metrics")],
    )
    yield _gauge(
        "model_registry_probes_scheduled",
        "Checks and scrapes on this process's schedule (every replica schedules all; one does each)",
        [({}, prober.followed)],
    )
    yield _gauge("model_registry_probes_in_flight", "Probes and scrapes under way", [({}, prober.in_flight)])
    fetcher = prober.fetcher
    yield _counter(
        "model_registry_probe_connections",
        "Probes and scrapes sent on a new connection (new) or on one kept from the last (reused)",
        [({"connection": "new"}, fetcher.connected), ({"connection": "reused"}, fetcher.reused)],
    )
    yield _gauge(
        "model_registry_probe_connections_idle",
        "Connections kept open between probes (at most --probe-idle-connections)",
        [({}, fetcher.idle)],
    )


def _storage(stats: dict[str, Any]) -> Iterator[Metric]:
    yield _counter(
        "model_registry_storage_errors",
        "Storage operations that failed, by kind",
        [({"kind": k}, n) for k, n in {**dict.fromkeys(ERROR_KINDS, 0), **stats.get("errors", {})}.items()],
    )
    if "pending" in stats:
        yield _gauge(
            "model_registry_write_behind_pending",
            "Heartbeats and records not yet written",
            [({}, stats["pending"])],
        )
        yield SummaryMetricFamily(
            "model_registry_flush_duration_seconds",
            "Write-behind flushes and the time they took",
            count_value=stats["flushes"],
            sum_value=stats["flush_seconds"],
        )
        yield _counter(
            "model_registry_flush_failures",
            "Write-behind flushes that failed",
            [({}, stats["flush_failures"])],
        )
    pool = stats.get("pool")
    if pool is not None:
        for name, what in (
            ("size", "Connections the pool keeps open"),
            ("in_use", "Connections in use"),
            ("overflow", "Connections opened past the pool's size"),
            ("waiting", "Requests waiting for a connection"),
        ):
            if pool.get(name) is not None:
                yield _gauge(f"model_registry_db_pool_{name}", what, [({}, pool[name])])


def _gauge(name: str, documentation: str, samples: list[tuple[dict[str, str], float]]) -> GaugeMetricFamily:
    family = GaugeMetricFamily(name, documentation, labels=sorted(samples[0][0]) if samples else ())
    for labels, value in samples:
        family.add_metric([labels[k] for k in sorted(labels)], value)
    return family


def _counter(
    name: str, documentation: str, samples: list[tuple[dict[str, str], float]]
) -> CounterMetricFamily:
    family = CounterMetricFamily(name, documentation, labels=sorted(samples[0][0]) if samples else ())
    for labels, value in samples:
        family.add_metric([labels[k] for k in sorted(labels)], value)
    return family


def _version() -> str:
    try:
        return version("model-registry")
    except PackageNotFoundError:
        return "unknown"


_VERSION = _version()
