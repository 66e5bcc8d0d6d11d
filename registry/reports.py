"""Failures seen by routers: when a beating instance goes into cooldown.

A worker can keep beating while every request to it fails (model crashed,
GPU wedged, credits exhausted). Routers report each outcome; after
``threshold`` failures within ``window`` seconds with no success between, the
instance goes into cooldown for ``cooldown`` seconds. A success clears the
count. Counts are kept per registry process (bounded: only instances with
recent failures are held); the cooldown itself is stored, so every replica
honours it.

Each threshold can be set per instance in its metadata, under the same names
as the settings: ``unhealthy_threshold``, ``failure_window``,
``failure_cooldown``. Values outside ``LIMITS`` (as for the settings: a
threshold of at most 1,000 failures, a window or cooldown of at most a day),
and values that are not positive numbers, are ignored: the setting applies.

``Cooldowns`` applies the rules: it counts a report, stores a cooldown when
the count is reached, and ends the cooldowns this process set once they are
over (the checker asks it to, each sweep).
"""

from __future__ import annotations

import logging
from collections import deque
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from model_registry_sdk.record import Change, ModelInstance

from .core import Core, fields_of
from .errors import InstanceNotFound
from .storage import InstanceKey
from .validation import Report, report_from

__all__ = ["LIMITS", "Cooldowns", "FailurePolicy", "FailureTracker"]

log = logging.getLogger("registry")


@dataclass(frozen=True, slots=True)
class FailurePolicy:
    threshold: int = 3
    window: float = 60.0
    cooldown: float = 30.0

    def for_instance(self, metadata: dict[str, Any]) -> FailurePolicy:
        """This policy with the instance's own settings (from its metadata) over it."""
        return FailurePolicy(
            _number(metadata, "unhealthy_threshold", self.threshold, int),
            _number(metadata, "failure_window", self.window, float),
            _number(metadata, "failure_cooldown", self.cooldown, float),
        )


#: The largest value of each failure setting, in the settings and in an instance's metadata.
LIMITS = {"unhealthy_threshold": 1000, "failure_window": 86_400.0, "failure_cooldown": 86_400.0}


def _number(metadata: dict[str, Any], name: str, default: Any, kind: type) -> Any:
    value = metadata.get(name)
    # bool is an int to Python, never a threshold; ignore what does not fit
    # (NaN fails both comparisons, infinity and 2**80 the upper one).
    if isinstance(value, int | float) and not isinstance(value, bool) and 0 < value <= LIMITS[name]:
        return kind(value)
    return default


class FailureTracker:
    """Recent failures per instance, by monotonic time."""

    def __init__(self) -> None:
        self._failures: dict[InstanceKey, deque[float]] = {}

    def failed(self, key: InstanceKey, at: float, policy: FailurePolicy) -> int:
        """Count a failure; returns the failures within the window, this one included."""
        times = self._failures.setdefault(key, deque())
        times.append(at)
        while times and times[0] <= at - policy.window:
            times.popleft()
        while len(times) > policy.threshold:  # more are never needed: keep it bounded
            times.popleft()
        return len(times)

    def succeeded(self, key: InstanceKey) -> None:
        self._failures.pop(key, None)

    def forget_older_than(self, moment: float) -> None:
        """Drop instances whose last failure is older than ``moment`` (the checker's housekeeping)."""
        for key in [k for k, times in self._failures.items() if times[-1] < moment]:
            del self._failures[key]

    def __len__(self) -> int:
        return len(self._failures)


class Cooldowns:
    """Routers' reports, and the cooldowns they cause."""

    def __init__(self, core: Core, policy: FailurePolicy) -> None:
        self._core = core
        self.policy = policy
        self._failures = FailureTracker()
        self._cooling: dict[InstanceKey, datetime] = {}  # cooldowns this process set, to end them
        #: Reports received, by outcome: for the metrics.
        self.reports = {"ok": 0, "failed": 0}

    async def report(self, report: Report | dict[str, Any]) -> tuple[ModelInstance, int]:
        """A router's report on one request to an instance. Returns the
        instance and its failures in the current window (0 after a success).

        Enough failures in a row put the instance in cooldown; a success ends it.
        """
        core = self._core
        if isinstance(report, dict):
            report = report_from(report)
        key = report.key
        with core.noting_outages():
            record = await core.storage.get(key)
        if record is None:
            raise InstanceNotFound(key)
        now = core.clock.now()
        cooling = record.in_cooldown(now)
        self.reports["ok" if report.ok else "failed"] += 1
        if report.ok:
            self._failures.succeeded(key)
            if cooling:
                record = await self._end(key, "a router reported a success")
            return record, 0
        policy = self.policy.for_instance(record.metadata)
        failures = self._failures.failed(key, core.clock.monotonic(), policy)
        if failures >= policy.threshold and not cooling:
            until = now + timedelta(seconds=policy.cooldown)
            with core.noting_outages():
                cooled = await core.storage.set_cooldown(key, until)
            if cooled is not None:
                record = cooled
                self._cooling[key] = until
                log.warning(
                    "instance in cooldown: routers report it failing",
                    extra={
                        **fields_of(key),
                        "failures": failures,
                        "cooldown_s": policy.cooldown,
                        "last_error": report.error,
                        "last_status": report.status,
                    },
                )
                core.publish(Change.COOLDOWN, record)
        return record, failures

    async def _end(self, key: InstanceKey, why: str) -> ModelInstance | None:
        self._cooling.pop(key, None)
        with self._core.noting_outages():
            record = await self._core.storage.set_cooldown(key, None)
        if record is not None:
            log.info("instance out of cooldown", extra={**fields_of(key), "why": why})
            self._core.publish(Change.RESTORED, record)
        return record

    async def end_due(self, now: datetime, mono: float) -> list[ModelInstance]:
        """End the cooldowns over at ``now``; forget failures older than the window."""
        restored = []
        for key in [k for k, until in self._cooling.items() if until <= now]:
            record = await self._end(key, "its cooldown is over")
            if record is not None:
                restored.append(record)
        self._failures.forget_older_than(mono - self.policy.window)
        return restored
