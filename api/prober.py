"""The prober: the registry's own requests to its instances, for those that ask.

An instance registered with ``check`` is probed (an HTTP GET) every
``check.interval`` seconds; one registered with ``metrics`` has its engine's
Prometheus endpoint scraped every ``metrics.interval`` seconds
(``model_registry.probes`` validates both and says where a probe may go;
``model_registry.engines`` reads the scraped text). What a probe means is the
registry's (``Registry.check_failed``, ``check_passed``, ``set_load``): this
module only schedules, fetches and counts.

Schedule
    One heap of due times for every probe and scrape this process knows of,
    filled from the storage at the start and kept up from the change feed
    (which carries other replicas' changes too). A new registration is probed
    at once; after a start the fleet's probes are spread at random over one
    interval each (jitter), so that a restart does not probe everyone at the
    same moment, and each probe is due one interval after the last was due
    (no drift). One task sleeps until the next is due.
Bounded
    At most ``concurrency`` requests are out at once; past that the schedule
    waits for one to end (it slips rather than piles up). Every request has a
    timeout (the check's own; a scrape's is half its interval, at most 5 s),
    redirects are not followed (a redirect could point anywhere) and a scraped
    answer is read up to ``MAX_SCRAPE_BYTES``. Connections stay open between
    probes while the instance keeps them, ``idle_connections`` at most
    (``fetch.Fetcher``: a new TCP connection costs several times a GET). Nothing here blocks the loop:
    the text of a scrape is picked apart by a regular expression before the
    few lines that matter are parsed (``engines``).
Hysteresis
    ``unhealthy_after`` failures in a row mark an instance unhealthy, and
    ``healthy_after`` passes in a row bring it back (``Hysteresis``). The
    counts live in this process: a replica that takes an instance over (or a
    restarted registry) starts them again, and so never marks an instance on
    fewer failures than it asks for.
One replica per instance
    ``owns(key)`` says whether this process probes an instance now; on
    PostgreSQL each replica owns a share of the instances, and takes over a
    dead replica's share within an interval (``storage.ProbeShares``).
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import logging
import math
import random
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from model_registry.engines import EngineMetricsError, parse_engine_metrics
from model_registry.errors import InvalidInstance
from model_registry.events import Event
from model_registry.probes import Hysteresis, same_problem, target_url
from model_registry.service import Registry
from model_registry.storage import InstanceKey, ModelInstance, StorageUnavailable
from model_registry.storage.tasks import cancelled
from model_registry_sdk.record import Change, held_by_check

from .fetch import Fetcher, FetchError, Target

__all__ = ["DEFAULT_CONCURRENCY", "DEFAULT_IDLE_CONNECTIONS", "MAX_SCRAPE_BYTES", "Prober", "probe_reason"]

log = logging.getLogger("registry.prober")

#: Requests out at once, at most, by default (``--probe-concurrency``).
DEFAULT_CONCURRENCY = 256
#: Connections kept open between probes (``Fetcher``), at most.
DEFAULT_IDLE_CONNECTIONS = 10_000
#: The most of a scraped answer that is read (a vLLM ``/metrics`` is some 50 KB).
MAX_SCRAPE_BYTES = 4 * 1024 * 1024
_MAX_SCRAPE_TIMEOUT = 5.0
_GONE = frozenset({Change.DEREGISTERED, Change.EVICTED, Change.PURGED})
_CHECK, _SCRAPE = "check", "metrics"


#: The schedule's resolution: probes due within it of one another start together.
TICK = 0.01


def _wake_up(wake: asyncio.Future[None]) -> None:
    if not wake.done():
        wake.set_result(None)


def probe_reason(problem: str, took: float | None = None) -> str:
    """A ``state_reason`` of a failed probe: ``probe: HTTP 503 after 2 s``."""
    reason = f"probe: {problem}"
    return reason if took is None else f"{reason} after {took:.3g} s"


@dataclass
class _Entry:
    """One probe (or scrape) of one instance."""

    key: InstanceKey
    kind: str  # _CHECK or _SCRAPE
    url: str
    target: Target
    interval: float
    timeout: float
    record: ModelInstance  # the instance as the feed last showed it
    hysteresis: Hysteresis | None = None  # checks only
    generation: int = 0
    due: float = 0.0
    running: bool = field(default=False)


class Prober:
    """Probes and scrapes the instances that ask for it. ``await start()``, ``await stop()``."""

    def __init__(
        self,
        registry: Registry,
        *,
        concurrency: int = DEFAULT_CONCURRENCY,
        idle_connections: int = DEFAULT_IDLE_CONNECTIONS,
        owns: Callable[[InstanceKey], bool] | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self._registry = registry
        self.concurrency = concurrency
        self.fetcher = Fetcher(idle_connections)
        self._owns = owns or (lambda key: True)
        self._rng = rng or random.Random()
        self._entries: dict[tuple[InstanceKey, str], _Entry] = {}
        self._heap: list[tuple[float, int, tuple[InstanceKey, str], int]] = []
        self._order = itertools.count()
        self._generations = itertools.count(1)
        self._wake: asyncio.Future[None] | None = None  # the runner's sleep
        self._sleep_until = math.inf
        self._slots = asyncio.Semaphore(concurrency)
        self._tasks: set[asyncio.Task[None]] = set()
        self._runner: asyncio.Task[None] | None = None
        #: Probes and scrapes done, by kind and outcome (``check``/``metrics``, ``ok``/``failed``).
        self.outcomes: Counter[tuple[str, str]] = Counter()
        #: The seconds they took in all, by kind.
        self.seconds: Counter[str] = Counter()

    # -- lifecycle -------------------------------------------------------------

    async def start(self) -> None:
        self._registry.feed.listeners.append(self._heard)
        records = self._registry.storage.records_now()
        if records is None:
            records = await self._registry.instances()
        now = time.monotonic()
        for record in list(records):
            if record.check is not None or record.metrics is not None:  # (most of a large fleet: neither)
                self._follow(record, now, jitter=True)
        self._runner = asyncio.create_task(self._run(), name="registry-prober")

    async def stop(self) -> None:
        if self._heard in self._registry.feed.listeners:
            self._registry.feed.listeners.remove(self._heard)
        await cancelled([self._runner, *self._tasks])
        self._runner = None
        self.fetcher.close()

    @property
    def followed(self) -> int:
        """Probes and scrapes on the schedule."""
        return len(self._entries)

    @property
    def in_flight(self) -> int:
        return len(self._tasks)

    def descriptors(self) -> int:
        """Connections open now: those kept between probes, and those of probes under way."""
        return self.fetcher.idle + len(self._tasks)

    # -- what to probe -----------------------------------------------------------

    def _heard(self, event: Event) -> None:
        if event.type in _GONE and event.type is not Change.DEREGISTERED:
            self._drop(event.instance.key)
            return
        self._follow(event.instance, time.monotonic(), jitter=False)

    def _drop(self, key: InstanceKey) -> None:
        for kind in (_CHECK, _SCRAPE):
            self._unfollow((key, kind))

    def _unfollow(self, slot: tuple[InstanceKey, str]) -> None:
        entry = self._entries.pop(slot, None)  # its heap items are skipped when they come up
        if entry is not None:
            self.fetcher.forget(entry.target)

    def _follow(self, record: ModelInstance, now: float, *, jitter: bool) -> None:
        """Put ``record``'s check and scrape on the schedule (again, if they changed)."""
        key = record.key
        for kind, spec in ((_CHECK, record.check), (_SCRAPE, record.metrics)):
            slot = (key, kind)
            entry = self._entries.get(slot)
            if spec is None:
                self._unfollow(slot)
                continue
            target = spec["http"] if kind == _CHECK else spec["url"]
            try:
                url = target_url(key.host, key.port, target, kind, self._registry.probe_allowed_hosts)
            except InvalidInstance:  # allowed when registered, no longer (the operator narrowed the list)
                log.warning("not probing %s: %s is no longer allowed", key, target)
                self._unfollow(slot)
                continue
            interval = float(spec["interval"])
            timeout = float(spec["timeout"]) if kind == _CHECK else min(interval / 2, _MAX_SCRAPE_TIMEOUT)
            if entry is not None and (entry.url, entry.interval, entry.timeout) == (url, interval, timeout):
                entry.record = record
                if kind == _CHECK and entry.hysteresis is not None:
                    entry.hysteresis.healthy_after = spec["healthy_after"]
                    entry.hysteresis.unhealthy_after = spec["unhealthy_after"]
                continue
            hysteresis = (
                Hysteresis(spec["healthy_after"], spec["unhealthy_after"]) if kind == _CHECK else None
            )
            self._unfollow(slot)
            entry = _Entry(
                key, kind, url, Target(url), interval, timeout, record, hysteresis, next(self._generations)
            )
            self._entries[slot] = entry
            self._schedule(entry, now + (self._rng.uniform(0, interval) if jitter else 0.0))

    def _schedule(self, entry: _Entry, due: float) -> None:
        entry.due = due
        item = (due, next(self._order), (entry.key, entry.kind), entry.generation)
        heapq.heappush(self._heap, item)
        if (
            due < self._sleep_until and self._wake is not None and not self._wake.done()
        ):  # sooner than the runner sleeps for
            self._wake.set_result(None)

    # -- the schedule --------------------------------------------------------------

    async def _run(self) -> None:
        """Start what is due, then sleep until the next is (at least ``TICK``: probes
        due within a tick of one another start together, with one wake-up)."""
        loop = asyncio.get_running_loop()
        heap = self._heap
        while True:
            self._sleep_until = math.inf  # starting what is due: no need to wake
            now = time.monotonic()
            while heap and heap[0][0] <= now:
                due, _, slot, generation = heapq.heappop(heap)
                entry = self._entries.get(slot)
                if entry is None or entry.generation != generation:
                    continue  # gone, or rescheduled since
                self._schedule(entry, due + entry.interval)
                if entry.running or not self._wanted(entry):
                    continue
                await self._slots.acquire()  # bounded: the schedule waits for a free slot
                entry.running = True
                task = loop.create_task(self._probe(entry))  # not asyncio's: see Fetcher._loop
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
            self._wake = wake = loop.create_future()
            timer = None
            if heap:
                delay = max(heap[0][0] - time.monotonic(), TICK)
                self._sleep_until = time.monotonic() + delay
                timer = loop.call_later(delay, _wake_up, wake)
            try:
                await wake
            finally:
                if timer is not None:
                    timer.cancel()

    def _wanted(self, entry: _Entry) -> bool:
        record = entry.record
        if not (record.healthy or held_by_check(record)) and entry.kind == _CHECK:
            return False  # deregistered or silent: its check cannot bring it back
        return self._owns(entry.key)

    async def _probe(self, entry: _Entry) -> None:
        started = time.perf_counter()
        try:
            if entry.kind == _CHECK:
                await self._check(entry, started)
            else:
                await self._scrape(entry)
        except StorageUnavailable as exc:
            log.warning("could not record what a probe of %s found: %s", entry.key, exc)
        except Exception:
            log.exception("probing %s failed unexpectedly; it goes on", entry.key)
        finally:
            entry.running = False
            self.seconds[entry.kind] += time.perf_counter() - started
            self._slots.release()

    async def _check(self, entry: _Entry, started: float) -> None:
        problem = await self._fetch(entry)
        took = time.perf_counter() - started
        assert entry.hysteresis is not None
        if problem is None:
            self.outcomes[(_CHECK, "ok")] += 1
            if entry.hysteresis.passed() and held_by_check(entry.record):
                await self._registry.check_passed(entry.key)
            return
        self.outcomes[(_CHECK, "failed")] += 1
        status, text = problem
        reason = probe_reason(text, took if status is not None or took >= 1 else None)
        log.debug(
            "probe failed", extra={"model": entry.key.model_name, "addr": entry.key.address, "reason": reason}
        )
        known = entry.record
        if entry.hysteresis.failed() and (
            known.healthy or (held_by_check(known) and not same_problem(known.state_reason, reason))
        ):
            record = await self._registry.check_failed(entry.key, reason)
            if record is not None:
                entry.record = record

    async def _fetch(self, entry: _Entry) -> tuple[int | None, str] | None:
        """``None`` when the check passes; else the status (if any) and what went wrong."""
        try:
            status, _ = await self.fetcher.get(entry.target, entry.timeout)
        except TimeoutError:
            return None, f"no answer within {entry.timeout:g} s"
        except FetchError as exc:
            return None, str(exc)[:200]
        if 200 <= status < 400:
            return None
        return status, f"HTTP {status}"

    async def _scrape(self, entry: _Entry) -> None:
        key = entry.key
        try:
            status, body = await self.fetcher.get(
                entry.target, entry.timeout, body=True, limit=MAX_SCRAPE_BYTES
            )
            if status != 200 or body is None:
                raise EngineMetricsError(f"the metrics endpoint answered HTTP {status}")
            load = _parse(body.decode("utf-8", "replace"), key.model_name)
        except (TimeoutError, FetchError, EngineMetricsError) as exc:
            self.outcomes[(_SCRAPE, "failed")] += 1
            problem = str(exc)[:200] or type(exc).__name__
            log.debug(
                "scrape failed", extra={"model": key.model_name, "addr": key.address, "reason": problem}
            )
            return  # the last load stands, and goes stale: selection then stops reading it
        self.outcomes[(_SCRAPE, "ok")] += 1
        self._registry.set_load(key, load)

    def stats(self) -> dict[str, Any]:
        return {
            "followed": self.followed,
            "in_flight": self.in_flight,
            "outcomes": dict(self.outcomes),
            "seconds": dict(self.seconds),
        }


def _parse(text: str, model: str) -> Any:
    """The engine's load for ``model``; all of the server's when it does not name it."""
    try:
        return parse_engine_metrics(text, model)
    except EngineMetricsError:
        return parse_engine_metrics(text)
