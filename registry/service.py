"""The registry: policy over a storage backend.

What a registration, a heartbeat and a deregistration mean, when a silent
instance becomes unhealthy, when an unhealthy one is evicted, and how one
instance is selected, all live here. Storage only offers atomic primitives.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import random
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from types import TracebackType
from typing import Any

from .storage import InstanceKey, ModelInstance, ModelSummary, Storage, StorageUnavailable

from .clock import Clock, ServerClock, SystemClock
from .errors import InstanceNotFound, NoHealthyInstance
from .events import Change, Feed
from .pins import changer
from .preservation import Guard, Preservation
from .reports import FailurePolicy, FailureTracker
from .selection import DEFAULT_STRATEGY, Selector
from .validation import (
    Report,
    heartbeat_from,
    instance_from,
    known_beat,
    override_from,
    report_from,
)

__all__ = ["CheckResult", "Registry", "check_timing"]

log = logging.getLogger("registry")

#: Seconds between measurements of the database server's clock.
CLOCK_SYNC_PERIOD = 60.0

#: The checker refuses a timeout shorter than this many heartbeat intervals: a
#: worker must be able to miss a beat (GC pause, slow network) without flapping.
MIN_TIMEOUT_INTERVALS = 2


def _fields(key: InstanceKey) -> dict[str, str]:
    """Log fields naming an instance."""
    return {"model": key.model_name, "addr": key.address}


def check_timing(heartbeat_interval: float, heartbeat_timeout: float, evict_after: float) -> None:
    """Raise ``ValueError`` (naming the fix) for timings that would flap or never act."""
    if not heartbeat_interval > 0:
        raise ValueError(f"heartbeat interval must be above 0 s, got {heartbeat_interval}")
    if heartbeat_timeout < MIN_TIMEOUT_INTERVALS * heartbeat_interval:
        raise ValueError(
            f"heartbeat timeout {heartbeat_timeout:g} s is not comfortably larger than the "
            f"heartbeat interval {heartbeat_interval:g} s: make the timeout at least "
            f"{MIN_TIMEOUT_INTERVALS}x the interval "
            f"(e.g. {MIN_TIMEOUT_INTERVALS * heartbeat_interval:g} s) or shorten the interval"
        )
    if evict_after < 0:
        raise ValueError(
            f"evict-after must be 0 (never evict) or a positive number of seconds, got {evict_after}"
        )


@dataclass(frozen=True, slots=True)
class CheckResult:
    """What one run of the checker did."""

    expired: list[ModelInstance]
    evicted: list[ModelInstance]
    in_grace: bool = False
    #: Instances that would have been marked (evicted) but self-preservation held back.
    held_expiry: int = 0
    held_eviction: int = 0
    restored: list[ModelInstance] = dataclasses.field(default_factory=list)


class Registry:
    """The model registry. Use as ``async with Registry(storage, ...) as registry:``.

    Entering starts the heartbeat checker; leaving stops it and waits for it.
    The storage's lifecycle belongs to the caller.
    """

    def __init__(
        self,
        storage: Storage,
        *,
        heartbeat_interval: float = 10.0,
        heartbeat_timeout: float = 30.0,
        evict_after: float = 600.0,
        clock: Clock | None = None,
        rng: random.Random | None = None,
        checker: bool = True,
        server_clock: bool | None = None,
        watch_history: int = 10_000,
        failures: FailurePolicy | None = None,
        preservation: Preservation | None = None,
    ) -> None:
        """``checker=False`` leaves sweeping to whoever calls ``check_once``
        (tests, or a replica that must not sweep).

        ``server_clock``: follow the storage server's clock when the backend has
        one (PostgreSQL shared by replicas). Defaults to yes unless a ``clock``
        is injected, which is then taken as it is.

        ``watch_history``: how many recent changes ``feed`` keeps for watchers
        that resume. ``failures``: when routers' reports put an instance in
        cooldown (see ``reports``). ``preservation``: when the checker holds
        back (see ``preservation``).
        """
        check_timing(heartbeat_interval, heartbeat_timeout, evict_after)
        self.storage = storage
        self.heartbeat_interval = heartbeat_interval
        self.heartbeat_timeout = heartbeat_timeout
        self.evict_after = evict_after
        base = clock or SystemClock()
        follow_server = clock is None if server_clock is None else server_clock
        self._server_clock = ServerClock(base) if follow_server else None
        self._clock: Clock = self._server_clock or base
        self._selector = Selector(rng or random.Random())
        self._run_checker_task = checker
        self._started_at: float | None = None
        # Monotonic time of the last storage failure seen: the checker holds
        # back for one timeout after it, as after a start.
        self._outage_at: float | None = None
        self._checker: asyncio.Task[None] | None = None
        #: Every change to membership and health, for watchers (see ``events``).
        self.feed = Feed(watch_history)
        self.failure_policy = failures or FailurePolicy()
        self._failures = FailureTracker()
        self._cooling: dict[InstanceKey, datetime] = {}  # cooldowns this process set, to end them
        self._remote_reads: set[asyncio.Task[None]] = set()
        storage.subscribe(self._remote_change)
        preservation = preservation or Preservation()
        self._expiry_guard, self._eviction_guard = Guard(preservation), Guard(preservation)

    # -- lifecycle ---------------------------------------------------------

    async def __aenter__(self) -> Registry:
        if self._started_at is not None:
            raise RuntimeError("this Registry was already started; create a new one")
        self._started_at = self._clock.monotonic()
        await self._sync_clock()
        if self._run_checker_task:
            self._checker = asyncio.create_task(self._run_checker(), name="registry-checker")
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.storage.subscribe(None)
        for task in [*self._remote_reads, *([self._checker] if self._checker else [])]:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._checker = None

    @property
    def grace_remaining(self) -> float:
        """Seconds until the checker may mark anything unhealthy (0 once it may).

        The grace runs for one timeout after the start and after the last
        storage failure: in both cases workers may not have been able to
        record a beat, through no fault of theirs.
        """
        if self._started_at is None:
            return self.heartbeat_timeout
        quiet_since = max(self._started_at, self._outage_at or self._started_at)
        return max(0.0, self.heartbeat_timeout - (self._clock.monotonic() - quiet_since))

    @contextlib.contextmanager
    def _noting_outages(self) -> Iterator[None]:
        try:
            yield
        except StorageUnavailable:
            self._outage_at = self._clock.monotonic()
            raise

    async def _sync_clock(self) -> None:
        """Follow the storage server's clock (a no-op for backends without one)."""
        if self._server_clock is None:
            return
        try:
            await self._server_clock.sync(self.storage.server_time)
        except StorageUnavailable as exc:
            log.warning("could not read the database clock; keeping the last offset: %s", exc)
            return
        if self._server_clock.synced_at is None:
            # The backend has no clock of its own: use ours directly.
            self._clock, self._server_clock = self._server_clock.base, None
            return
        offset = self._server_clock.offset.total_seconds()
        if abs(offset) > 1:
            log.warning(
                "this host's clock differs from the database server's; following the database",
                extra={"offset_s": round(offset, 3)},
            )

    # -- writes ------------------------------------------------------------

    async def register(self, instance: ModelInstance | dict[str, Any]) -> tuple[ModelInstance, bool]:
        """Create or update an instance; returns it as stored and whether it is new."""
        record = self._fresh(instance_from(instance))
        with self._noting_outages():
            stored, created = await self.storage.upsert(record)
        if created:
            log.info("instance registered", extra=_fields(stored.key))
        self._publish(Change.REGISTERED if created else Change.UPDATED, stored)
        return stored, created

    def beat(self, body: dict[str, Any]) -> ModelInstance | None:
        """``heartbeat`` at once, for the common beat: a known, healthy
        instance, named exactly as it was stored, on a backend that can record
        the beat without waiting (``Storage.beat``). Returns the record.

        ``None`` means the beat must go through ``heartbeat``; nothing was
        recorded. Synchronous, so that the hottest path awaits nothing.
        """
        beat = known_beat(body)
        if beat is None:
            return None
        return self.storage.beat(beat[0], self._clock.now(), beat[1])

    async def heartbeat(
        self, instance: ModelInstance | dict[str, Any], queue_length: int | None = None
    ) -> ModelInstance:
        """Record a beat, with the load the worker reports.

        ``instance`` is a ``ModelInstance`` or a heartbeat body (a dict whose
        ``queue_length`` is then the load). An unknown instance is registered
        by its heartbeat, as ``instance`` describes it, so a worker that sends
        its whole description recovers fully when the registry has lost it.
        For a known instance only the identity and the load are read.
        """
        if isinstance(instance, dict):
            # The hot path: a known instance, named exactly as it was stored,
            # needs no validation beyond types: its identity passed it when it
            # was registered. (``touch`` takes a backend's ``beat`` itself.)
            beat = known_beat(instance)
            if beat is not None:
                key, queue_length = beat
                try:
                    touched = await self.storage.touch(key, self._clock.now(), queue_length)
                except StorageUnavailable:
                    self._outage_at = self._clock.monotonic()
                    raise
                if touched is not None:
                    record, revived = touched
                    return self._beaten(record, revived) if revived else record
            unknown, queue_length = heartbeat_from(instance)
        else:
            unknown = instance_from(instance)
        key = unknown.key
        # touch, else insert: each step is atomic; a concurrent delete between
        # them only sends us round again.
        for _ in range(3):
            with self._noting_outages():
                touched = await self.storage.touch(key, self._clock.now(), queue_length)
            if touched is not None:
                return self._beaten(*touched)
            record = self._fresh(unknown)
            record.queue_length = queue_length
            with self._noting_outages():
                inserted = await self.storage.insert(record)
            if inserted is not None:
                log.info("instance registered by its heartbeat", extra=_fields(key))
                self._publish(Change.REGISTERED, inserted)
                return inserted
        raise StorageUnavailable(f"instance {key} kept changing under concurrent writes; retry")

    # -- changes, here and from other replicas -----------------------------------

    def _publish(self, change: Change, record: ModelInstance) -> None:
        """Tell this process's watchers, and the other replicas'."""
        self.feed.publish(change, record)
        self.storage.announce(change.value, record)

    def _remote_change(self, change: str, key: InstanceKey | None, record: ModelInstance | None) -> None:
        """A change another replica made: its watchers here see it too."""
        if key is None:  # changes may have been missed: watchers start over
            log.warning("changes made through other replicas may have been missed; watchers resync")
            self.feed.gap()
            return
        if record is not None:
            self.feed.publish(Change(change), record)
            return
        task = asyncio.create_task(self._publish_remote(Change(change), key))
        self._remote_reads.add(task)
        task.add_done_callback(self._remote_reads.discard)

    async def _publish_remote(self, change: Change, key: InstanceKey) -> None:
        """A change whose record was too large to travel: read it here."""
        try:
            record = await self.storage.get(key)
        except StorageUnavailable as exc:
            log.warning("could not read a change another replica made: %s", exc)
            return
        gone = ModelInstance(key.model_name, key.host, key.port, healthy=False)
        self.feed.publish(change, record or gone)

    def _beaten(self, record: ModelInstance, revived: bool) -> ModelInstance:
        if revived:
            log.info("instance healthy again: it beats", extra=_fields(record.key))
            self._publish(Change.HEALTHY, record)
        return record

    async def deregister(self, key: InstanceKey, *, purge: bool = False) -> ModelInstance:
        """Mark an instance unhealthy and keep it, or delete it with ``purge``.

        Returns the instance as it now is (as it was, when purged).
        """
        if purge:
            record = await self.storage.delete(key)
        else:
            record = await self.storage.mark_unhealthy(key, self._clock.now())
        if record is None:
            raise InstanceNotFound(key)
        log.info("instance purged" if purge else "instance deregistered", extra=_fields(key))
        self._publish(Change.DEREGISTERED, record)
        return record

    async def patch(self, key: InstanceKey, changes: dict[str, Any]) -> ModelInstance:
        """An operator's change to ``enabled``, ``weight`` or ``metadata``,
        pinned over later re-registrations (``null`` releases a pin)."""
        changes = override_from(changes)
        with self._noting_outages():
            record = await self.storage.override(key, changer(changes))
        if record is None:
            raise InstanceNotFound(key)
        if "enabled" in changes:
            change = Change.ENABLED if record.enabled else Change.DISABLED
        else:
            change = Change.UPDATED
        log.info("instance changed by an operator", extra={**_fields(key), "changes": changes})
        self._publish(change, record)
        return record

    async def report(self, report: Report | dict[str, Any]) -> tuple[ModelInstance, int]:
        """A router's report on one request to an instance. Returns the
        instance and its failures in the current window (0 after a success).

        Enough failures in a row put the instance in cooldown; a success ends it.
        """
        if isinstance(report, dict):
            report = report_from(report)
        key = report.key
        with self._noting_outages():
            record = await self.storage.get(key)
        if record is None:
            raise InstanceNotFound(key)
        now = self._clock.now()
        cooling = record.in_cooldown(now)
        if report.ok:
            self._failures.succeeded(key)
            if cooling:
                record = await self._end_cooldown(key, "a router reported a success")
            return record, 0
        policy = self.failure_policy.for_instance(record.metadata)
        failures = self._failures.failed(key, self._clock.monotonic(), policy)
        if failures >= policy.threshold and not cooling:
            until = now + timedelta(seconds=policy.cooldown)
            with self._noting_outages():
                cooled = await self.storage.set_cooldown(key, until)
            if cooled is not None:
                record = cooled
                self._cooling[key] = until
                log.warning(
                    "instance in cooldown: routers report it failing",
                    extra={
                        **_fields(key),
                        "failures": failures,
                        "cooldown_s": policy.cooldown,
                        "last_error": report.error,
                        "last_status": report.status,
                    },
                )
                self._publish(Change.COOLDOWN, record)
        return record, failures

    async def _end_cooldown(self, key: InstanceKey, why: str) -> ModelInstance | None:
        self._cooling.pop(key, None)
        with self._noting_outages():
            record = await self.storage.set_cooldown(key, None)
        if record is not None:
            log.info("instance out of cooldown", extra={**_fields(key), "why": why})
            self._publish(Change.RESTORED, record)
        return record

    def _fresh(self, instance: ModelInstance) -> ModelInstance:
        """``instance`` with the server-managed fields a new registration gets."""
        now = self._clock.now()
        return dataclasses.replace(
            instance,
            healthy=True,
            last_heartbeat=now,
            registered_at=now,
            unhealthy_since=None,
            queue_length=None,
        )

    # -- reads -------------------------------------------------------------

    async def instances(
        self, model_name: str | None = None, healthy_only: bool = False
    ) -> list[ModelInstance]:
        """Instances of one model (or all); ``healthy_only`` leaves out the
        unhealthy and those in a failure cooldown. The answer may be a shared,
        read-only ``Snapshot``."""
        if healthy_only:
            return await self.storage.list(model_name, True, self._clock.now())
        return await self.storage.list(model_name)

    @property
    def revision(self) -> int:
        """The revision of the last change (see ``events``)."""
        return self.feed.revision

    async def wait_for_change(self, after: int, model_name: str | None, timeout: float) -> None:
        """Block until there is a change after revision ``after`` (of one model,
        or any), for at most ``timeout`` seconds: a long-poll."""
        await self.feed.wait(after, model_name, timeout)

    async def models(self) -> list[ModelSummary]:
        return await self.storage.summarize(self._clock.now())

    async def select(self, model_name: str, strategy: str = DEFAULT_STRATEGY) -> ModelInstance:
        """One healthy, enabled instance of the model with a weight above 0,
        picked by ``strategy`` (see ``selection``; ``ValueError`` if unknown):
        weighted random, round robin or least load."""
        picked = self._selector.pick(await self.instances(model_name, healthy_only=True), strategy)
        if picked is None:
            raise NoHealthyInstance(model_name)
        return picked

    async def health(self) -> dict[str, Any]:
        """What ``/health`` reports; raises ``StorageUnavailable`` when storage is away."""
        with self._noting_outages():
            await self.storage.ping()
        return {
            "storage": self.storage.name,
            "durable": self.storage.durable,
            "checker_running": self._checker is not None and not self._checker.done(),
            "grace_remaining_s": round(self.grace_remaining, 3),
            "clock": "database" if self._server_clock is not None else "local",
            "heartbeat_interval_s": self.heartbeat_interval,
            "heartbeat_timeout_s": self.heartbeat_timeout,
            "self_preservation": self.self_preservation,
        }

    # -- the heartbeat checker ----------------------------------------------

    async def check_once(self) -> CheckResult:
        """Mark silent instances unhealthy and evict long-unhealthy ones.

        Does nothing during the start-up grace: for one full timeout after the
        registry starts, workers may not have had the chance to beat to *this*
        process yet, and marking them would flap a live fleet.
        """
        if self.grace_remaining > 0:
            return CheckResult([], [], in_grace=True)
        now, mono = self._clock.now(), self._clock.monotonic()
        expire_cutoff = now - timedelta(seconds=self.heartbeat_timeout)
        evict_cutoff = now - timedelta(seconds=self.evict_after)
        with self._noting_outages():
            census = await self.storage.census(expire_cutoff, evict_cutoff)
        expired: list[ModelInstance] = []
        if not self._guarded(self._expiry_guard, "marking unhealthy", census.silent, census.checked, mono):
            with self._noting_outages():
                expired = await self.storage.expire(expire_cutoff, now)
        for record in expired:
            log.info(
                "instance marked unhealthy: no heartbeat within the timeout",
                extra={**_fields(record.key), "timeout_s": self.heartbeat_timeout},
            )
            self._publish(Change.UNHEALTHY, record)
        evicted: list[ModelInstance] = []
        if self.evict_after > 0 and not self._guarded(
            self._eviction_guard, "evicting", census.evictable, census.total, mono
        ):
            with self._noting_outages():
                evicted = await self.storage.evict(evict_cutoff)
            for record in evicted:
                log.info(
                    "instance evicted: unhealthy for longer than evict-after",
                    extra={**_fields(record.key), "evict_after_s": self.evict_after},
                )
                self._publish(Change.EVICTED, record)
        restored = await self._end_cooldowns(now)
        self._failures.forget_older_than(mono - self.failure_policy.window)
        return CheckResult(
            expired,
            evicted,
            held_expiry=self._expiry_guard.held,
            held_eviction=self._eviction_guard.held,
            restored=restored,
        )

    def _guarded(self, guard: Guard, action: str, affected: int, population: int, mono: float) -> bool:
        """Whether self-preservation holds ``action`` back now, logging each turn it takes."""
        was_active = guard.active
        hold = guard.hold(affected, population, mono)
        extra = {"instances": affected, "of": population, "max_protection_s": guard.policy.max_protection}
        if hold and not was_active:
            log.warning(
                f"self-preservation: holding back {action}; so many instances at once suggests "
                "a fault on the registry's side (network, pause, database)",
                extra=extra,
            )
        elif was_active and not guard.active:
            if affected >= guard.policy.minimum and affected > guard.policy.share * population:
                log.warning(f"self-preservation: protection time is over; {action} them now", extra=extra)
            else:
                log.info(f"self-preservation released: {action} as usual", extra=extra)
        return hold

    async def _end_cooldowns(self, now: datetime) -> list[ModelInstance]:
        restored = []
        for key in [k for k, until in self._cooling.items() if until <= now]:
            record = await self._end_cooldown(key, "its cooldown is over")
            if record is not None:
                restored.append(record)
        return restored

    @property
    def self_preservation(self) -> dict[str, Any]:
        """What ``/health`` and ``/api/v1/models`` report of the checker's self-preservation."""
        mono = self._clock.monotonic()
        guards = {"expiry": self._expiry_guard, "eviction": self._eviction_guard}
        return {
            "active": any(g.active for g in guards.values()),
            **{
                name: {"held": g.held, "marks_anyway_in_s": round(g.remaining(mono), 3)}
                for name, g in guards.items()
                if g.active
            },
        }

    async def _run_checker(self) -> None:
        while True:
            await self._clock.sleep(self.heartbeat_interval)
            try:
                if (
                    self._server_clock is not None
                    and self._clock.monotonic() - (self._server_clock.synced_at or 0) >= CLOCK_SYNC_PERIOD
                ):
                    await self._sync_clock()
                await self.check_once()
            except StorageUnavailable as exc:
                # Nothing is marked while storage is away; the next run catches up.
                log.warning("heartbeat check skipped: %s", exc)
            except Exception:
                log.exception("heartbeat check failed; it will run again")

    # -- DB-GPT's method names ------------------------------------------------

    async def register_instance(self, instance: ModelInstance) -> bool:
        await self.register(instance)
        return True

    async def deregister_instance(self, instance: ModelInstance, *, purge: bool = False) -> bool:
        await self.deregister(instance_from(instance).key, purge=purge)
        return True

    async def send_heartbeat(self, instance: ModelInstance) -> bool:
        await self.heartbeat(instance, instance.queue_length)
        return True

    async def get_all_instances(
        self, model_name: str | None = None, healthy_only: bool = False
    ) -> list[ModelInstance]:
        return await self.instances(model_name, healthy_only)

    async def select_one_health_instance(self, model_name: str) -> ModelInstance:
        return await self.select(model_name)
