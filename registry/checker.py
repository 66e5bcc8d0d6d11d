"""The heartbeat checker: silent instances become unhealthy, long-unhealthy
ones are evicted, and self-preservation holds back when too many go at once.

One ``check_once`` is a sweep: count what it would act on (``census``), let
self-preservation judge the counts, mark the silent, evict the long gone, and
end the cooldowns that are over. Nothing is marked during the grace that
follows a start or a storage outage: for one full timeout after either,
workers may not have been able to record a beat through no fault of theirs.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from model_registry_sdk.record import CHECK_REASON, GRACE_REASON, Change, ModelInstance

from .core import Core, fields_of
from .preservation import Guard, Preservation
from .reports import Cooldowns
from .storage import StorageUnavailable
from .storage.tasks import cancelled

__all__ = ["CLOCK_SYNC_PERIOD", "MIN_TIMEOUT_INTERVALS", "CheckResult", "Checker", "check_timing"]

log = logging.getLogger("registry")

#: Seconds between measurements of the database server's clock.
CLOCK_SYNC_PERIOD = 60.0

#: Changes a sweep announces (a log line and an event each) before it lets other work run.
ANNOUNCE_SLICE = 250

#: The checker refuses a timeout shorter than this many heartbeat intervals: a
#: worker must be able to miss a beat (GC pause, slow network) without flapping.
MIN_TIMEOUT_INTERVALS = 2


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


class Checker:
    def __init__(
        self,
        core: Core,
        cooldowns: Cooldowns,
        *,
        interval: float,
        timeout: float,
        evict_after: float,
        preservation: Preservation,
        startup_grace: float = 600.0,
    ) -> None:
        check_timing(interval, timeout, evict_after)
        self.startup_grace = startup_grace
        self._core = core
        self._cooldowns = cooldowns
        self.interval, self.timeout, self.evict_after = interval, timeout, evict_after
        self._expiry_guard, self._eviction_guard = Guard(preservation), Guard(preservation)
        #: Sweeps done, the seconds they took in all (wall time), the last one's, and the
        #: instances they looked at: for the metrics.
        self.sweeps, self.sweep_seconds, self.last_sweep_seconds, self.swept = 0, 0.0, 0.0, 0
        self._started_at: float | None = None
        self._task: asyncio.Task[None] | None = None

    # -- lifecycle ---------------------------------------------------------

    def begin(self) -> None:
        """The registry starts: so does the grace."""
        self._started_at = self._core.clock.monotonic()

    def start(self) -> None:
        """Sweep every interval, in a task, until ``stop``."""
        self._task = asyncio.create_task(self._run(), name="registry-checker")

    async def stop(self) -> None:
        await cancelled([self._task])
        self._task = None

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    async def _run(self) -> None:
        core = self._core
        while True:
            await core.clock.sleep(self.interval)
            try:
                if (
                    core.server_clock is not None
                    and core.clock.monotonic() - (core.server_clock.synced_at or 0) >= CLOCK_SYNC_PERIOD
                ):
                    await core.sync_clock()
                await self.check_once()
            except StorageUnavailable as exc:
                # Nothing is marked while storage is away; the next run catches up.
                log.warning("heartbeat check skipped: %s", exc)
            except Exception:
                log.exception("heartbeat check failed; it will run again")

    # -- the sweep -----------------------------------------------------------

    @property
    def grace_remaining(self) -> float:
        """Seconds until the checker may mark anything unhealthy (0 once it may).

        The grace runs for one timeout after the start and after the last
        storage failure: in both cases workers may not have been able to
        record a beat, through no fault of theirs.
        """
        if self._started_at is None:
            return self.timeout
        quiet_since = max(self._started_at, self._core.outage_at or self._started_at)
        return max(0.0, self.timeout - (self._core.clock.monotonic() - quiet_since))

    async def check_once(self) -> CheckResult:
        """Mark silent instances unhealthy and evict long-unhealthy ones.

        Marks nothing during the start-up grace: for one full timeout after the
        registry starts, workers may not have had the chance to beat to *this*
        process yet, and marking them would flap a live fleet. Cooldowns that
        are over end all the same: that takes nothing from anyone.
        """
        if self.grace_remaining > 0:
            core = self._core
            restored = await self._cooldowns.end_due(core.clock.now(), core.clock.monotonic())
            return CheckResult([], [], in_grace=True, restored=restored)
        started = time.perf_counter()
        try:
            return await self._sweep()
        finally:
            took = time.perf_counter() - started
            self.sweeps += 1
            self.sweep_seconds += took
            self.last_sweep_seconds = took

    async def _sweep(self) -> CheckResult:
        core, storage = self._core, self._core.storage
        now, mono = core.clock.now(), core.clock.monotonic()
        expire_cutoff = now - timedelta(seconds=self.timeout)
        evict_cutoff = now - timedelta(seconds=self.evict_after)
        with core.noting_outages():
            census = await storage.census(expire_cutoff, evict_cutoff)
        self.swept += census.total
        expired: list[ModelInstance] = []
        if not self._guarded(self._expiry_guard, "marking unhealthy", census.silent, census.checked, mono):
            with core.noting_outages():
                expired = await storage.expire(expire_cutoff, now, f"heartbeat timeout {self.timeout:g} s")
        await self._announce(
            Change.UNHEALTHY,
            expired,
            "instance marked unhealthy: no heartbeat within the timeout",
            lambda r: {"timeout_s": self.timeout, "reason": r.state_reason},
        )
        expired += await self._end_overdue_starts(now)
        evicted: list[ModelInstance] = []
        if self.evict_after > 0 and not self._guarded(
            self._eviction_guard, "evicting", census.evictable, census.total, mono
        ):
            with core.noting_outages():
                evicted = await storage.evict(evict_cutoff)
            await self._announce(
                Change.EVICTED,
                evicted,
                "instance evicted: unhealthy for longer than evict-after",
                lambda r: {"evict_after_s": self.evict_after},
            )
        restored = await self._cooldowns.end_due(now, mono)
        return CheckResult(
            expired,
            evicted,
            held_expiry=self._expiry_guard.held,
            held_eviction=self._eviction_guard.held,
            restored=restored,
        )

    async def _announce(
        self,
        change: Change,
        records: list[ModelInstance],
        message: str,
        fields: Callable[[ModelInstance], dict[str, Any]],
    ) -> None:
        """Log and publish a sweep's changes, a slice at a time with the loop free
        between slices (a mass failure's million); the log fields are built only
        when the line will be written."""
        logged = log.isEnabledFor(logging.INFO)
        for start in range(0, len(records), ANNOUNCE_SLICE):
            if start:
                await asyncio.sleep(0)
            chunk = records[start : start + ANNOUNCE_SLICE]
            for record in chunk if logged else ():
                log.info(message, extra={**fields_of(record.key), **fields(record)})
            self._core.publish_many(change, chunk)

    async def _end_overdue_starts(self, now: datetime) -> list[ModelInstance]:
        """Mark unhealthy the instances still starting past their start-up grace:
        not ready, or their check never passed."""
        core, storage = self._core, self._core.storage
        marked = []
        with core.noting_outages():
            overdue = await storage.overdue_starts(now, self.startup_grace)
        for record in overdue:
            grace = record.startup_grace if record.startup_grace is not None else self.startup_grace
            if record.healthy:
                reason = f"{GRACE_REASON} of {grace:g} s"
            else:  # its check never passed: still the check's to bring back
                reason = f"{CHECK_REASON}not passed within its start-up grace of {grace:g} s"
            with core.noting_outages():
                changed = await storage.mark_unhealthy(record.key, now, reason)
            if changed is None:
                continue
            log.warning(
                "instance marked unhealthy: not ready within its start-up grace",
                extra={**fields_of(record.key), "startup_grace_s": grace, "reason": reason},
            )
            core.publish(Change.UNHEALTHY, changed)
            marked.append(changed)
        return marked

    # -- self-preservation ---------------------------------------------------

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

    @property
    def self_preservation(self) -> dict[str, Any]:
        """What ``/health`` and ``/api/v1/models`` report of the checker's self-preservation."""
        mono = self._core.clock.monotonic()
        guards = {"expiry": self._expiry_guard, "eviction": self._eviction_guard}
        return {
            "active": any(g.active for g in guards.values()),
            **{
                name: {"held": g.held, "marks_anyway_in_s": round(g.remaining(mono), 3)}
                for name, g in guards.items()
                if g.active
            },
        }
