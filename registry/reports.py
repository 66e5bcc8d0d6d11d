"""Routers' reports: when a beating instance cools down, is tried again, and is restored.

A worker can keep beating while every request to it fails (model crashed,
GPU wedged, credits exhausted). Routers report each outcome, and ``failures``
says what each one means (a failure, busyness, the caller's fault, a success).

failure
    Counted; ``threshold`` failures within ``window`` seconds, with no success
    between (``reset_on_success``), put the instance in cooldown for
    ``cooldown`` seconds, out of selection.
busy
    The instance is passed over for the report's ``retry_after`` (or
    ``busy_pass_over``) seconds: a cooldown too, but no failure is counted and
    no trial follows it.
half-open trial
    When a failure cooldown ends the instance is on trial: selection may pick
    it ``trial_requests`` times before a router reports on it. A success
    restores it; a failure sends it back into cooldown at once, for twice the
    last one, up to ``max_cooldown`` (flap damping). A trial nobody reports on
    for ``window`` seconds ends as a success would.
ignored
    Nothing changes.
flapping
    An instance whose health changes (healthy to unhealthy and back, by its
    beats or its check) more than ``flap_threshold`` times within
    ``flap_window`` seconds is held out the same way: a cooldown (the next
    sweep starts it), a trial after it, each one after a failed trial or a
    new bout of flapping twice as long, up to ``max_cooldown``.

Counts, trials and the doubling are kept per registry process (bounded: only
instances with recent failures, cooldowns or trials are held); the cooldown
itself, and why (``state_reason``), are stored, so every replica honours them.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections import Counter, OrderedDict, deque
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from model_registry_sdk.record import Change, ModelInstance

from .core import Core, fields_of
from .errors import InstanceNotFound
from .events import Event
from .failures import FailurePolicy, Verdict, classify
from .storage import InstanceKey
from .validation import Report, report_from

__all__ = ["Cooldowns", "FailureTracker"]

log = logging.getLogger("registry")

_HEALTH_CHANGES = frozenset({Change.HEALTHY, Change.UNHEALTHY})


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

    def count(self, key: InstanceKey) -> int:
        times = self._failures.get(key)
        return 0 if times is None else len(times)

    def succeeded(self, key: InstanceKey) -> None:
        self._failures.pop(key, None)

    def forget_older_than(self, moment: float) -> None:
        """Drop instances whose last failure is older than ``moment`` (the checker's housekeeping)."""
        for key in [k for k, times in self._failures.items() if times[-1] < moment]:
            del self._failures[key]

    def __len__(self) -> int:
        return len(self._failures)


@dataclass(slots=True)
class _Cooling:
    """A cooldown this process set."""

    until: datetime
    busy: bool  # a pass-over for busyness: no trial after it
    seconds: float  # its length, which a failed trial doubles


@dataclass(slots=True)
class _Trial:
    left: int  # selections it may still get before a report
    since: float  # monotonic
    seconds: float  # the cooldown it follows


class Cooldowns:
    """Routers' reports, the cooldowns they cause, and the trials after them."""

    def __init__(self, core: Core, policy: FailurePolicy) -> None:
        self._core = core
        self.policy = policy
        self._failures = FailureTracker()
        self._cooling: dict[InstanceKey, _Cooling] = {}
        self._trials: dict[InstanceKey, _Trial] = {}
        # Health changes, by monotonic time: a short list per instance (a mass failure
        # flips a million at once), in the order of each one's last change, so
        # forgetting the calm ones walks only them.
        # key -> the moments of its health changes: one (a number: a mass failure's
        # million make no list each), or the last few (a list).
        self._flips: OrderedDict[InstanceKey, float | list[float]] = OrderedDict()
        self._flapping: dict[InstanceKey, int] = {}  # to hold out at the next sweep: changes seen
        self._flap_seconds: dict[InstanceKey, float] = {}  # its last flapping cooldown
        self._ending = asyncio.Lock()
        #: Reports received, by what they meant (``ok``, ``failed``, ``busy``, ``ignored``): for the metrics.
        self.reports: Counter[str] = Counter({"ok": 0, "failed": 0, "busy": 0, "ignored": 0})

    async def report(self, report: Report | dict[str, Any]) -> tuple[ModelInstance, int, Verdict]:
        """A router's report on one request to an instance. Returns the
        instance as it now is, its failures in the current window, and what the
        report meant."""
        core = self._core
        if isinstance(report, dict):
            report = report_from(report)
        key = report.key
        with core.noting_outages():
            record = await core.storage.get(key)
        if record is None:
            raise InstanceNotFound(key)
        policy = self.policy.for_instance(record.metadata, key.model_name)
        verdict = classify(policy, report.ok, report.status, report.error, report.retry_after)
        self.reports[_COUNTED[verdict.kind]] += 1
        if verdict.kind == "success":
            if policy.reset_on_success:
                self._failures.succeeded(key)
            if record.cooldown_until is not None and not self._busy(key):
                record = await self._restore(key, "a router reported a success") or record
            return record, self._failures.count(key), verdict
        if verdict.kind == "ignored":
            return record, self._failures.count(key), verdict
        now = core.clock.now()
        if verdict.kind == "busy":
            return await self._pass_over(record, verdict, now), self._failures.count(key), verdict
        trial = self._trials.pop(key, None)
        if trial is not None:
            seconds = min(trial.seconds * 2, policy.max_cooldown)
            reason = f"its trial failed ({verdict.why}): cooling down {seconds:g} s"
            record = await self._cool(key, now, seconds, reason, busy=False) or record
            return record, self._failures.count(key), verdict
        failures = self._failures.failed(key, core.clock.monotonic(), policy)
        if failures >= policy.threshold and not record.in_cooldown(now):
            reason = f"{failures} failures in {policy.window:g} s, last: {verdict.why}"
            record = await self._cool(key, now, policy.cooldown, reason, busy=False) or record
        return record, failures, verdict

    def _busy(self, key: InstanceKey) -> bool:
        cooling = self._cooling.get(key)
        return cooling is not None and cooling.busy

    async def _pass_over(self, record: ModelInstance, verdict: Verdict, now: datetime) -> ModelInstance:
        until = now + timedelta(seconds=verdict.pass_over)
        if record.cooldown_until is not None and record.cooldown_until >= until:
            return record  # cooling down for longer already
        key = record.key
        if key in self._trials:
            return record  # on trial: busy is no verdict on it; the trial goes on
        reason = f"busy: {verdict.why}; passed over for {verdict.pass_over:g} s"
        return await self._cool(key, now, verdict.pass_over, reason, busy=True) or record

    async def _cool(
        self, key: InstanceKey, now: datetime, seconds: float, reason: str, *, busy: bool
    ) -> ModelInstance | None:
        core = self._core
        until = now + timedelta(seconds=seconds)
        with core.noting_outages():
            cooled = await core.storage.set_cooldown(key, until, reason)
        if cooled is None:
            return None
        self._cooling[key] = _Cooling(until, busy, seconds)
        log.log(
            logging.INFO if busy else logging.WARNING,
            "instance passed over: it is busy" if busy else "instance in cooldown: routers report it failing",
            extra={**fields_of(key), "reason": reason, "cooldown_s": seconds},
        )
        core.publish(Change.COOLDOWN, cooled)
        return cooled

    async def _restore(self, key: InstanceKey, why: str) -> ModelInstance | None:
        self._cooling.pop(key, None)
        self._trials.pop(key, None)
        with self._core.noting_outages():
            record = await self._core.storage.set_cooldown(key, None, None)
        if record is not None:
            log.info("instance restored", extra={**fields_of(key), "why": why})
            self._core.publish(Change.RESTORED, record)
        return record

    async def _try(self, key: InstanceKey, cooling: _Cooling) -> ModelInstance | None:
        """A failure cooldown is over: the instance goes on trial."""
        if self._cooling.pop(key, None) is not cooling:
            return None  # restored or cooled again meanwhile
        record = await self._core.storage.get(key)
        if record is None:
            return None
        policy = self.policy.for_instance(record.metadata, key.model_name)
        left = policy.trial_requests
        self._trials[key] = _Trial(left, self._core.clock.monotonic(), cooling.seconds)
        reason = (
            f"on trial after a {cooling.seconds:g} s cooldown: {left} request{'s' if left != 1 else ''} "
            "until a router reports"
        )
        with self._core.noting_outages():
            tried = await self._core.storage.set_cooldown(key, cooling.until, reason)
        if tried is not None:
            log.info("instance on trial", extra={**fields_of(key), "trial_requests": left, "reason": reason})
            self._core.publish(Change.TRIAL, tried)
        return tried

    async def end_due(self, now: datetime, mono: float) -> list[ModelInstance]:
        """End the cooldowns over at ``now`` (a busy one restores the instance, a
        failure one puts it on trial), end the trials nobody reported on, and
        forget failures older than the window. One call at a time (the checker's
        sweep and a sweep asked for may overlap)."""
        async with self._ending:
            return await self._end_due(now, mono)

    async def _end_due(self, now: datetime, mono: float) -> list[ModelInstance]:
        changed = await self._hold_out_flapping(now)
        for key, cooling in [(k, c) for k, c in self._cooling.items() if c.until <= now]:
            if cooling.busy:
                record = await self._restore(key, "it was passed over long enough")
            else:
                record = await self._try(key, cooling)
            if record is not None:
                changed.append(record)
        for key in [k for k, t in self._trials.items() if mono - t.since > self.policy.window]:
            record = await self._restore(key, "no router reported on its trial")
            if record is not None:
                changed.append(record)
        self._failures.forget_older_than(mono - self.policy.window)
        await self._forget_calm(mono - self.policy.flap_window)
        return changed

    async def _forget_calm(self, before: float) -> None:
        """Forget the instances whose last health change is older than ``before``:
        the next bout of flapping starts over."""
        flips = self._flips
        for n in itertools.count(1):
            if not flips:
                return
            key, times = next(iter(flips.items()))
            last = (times[-1] if times else None) if type(times) is list else times
            if last is not None and last >= before:
                return  # (the rest changed later)
            flips.popitem(last=False)
            self._flap_seconds.pop(key, None)
            if not n % 1000:
                await asyncio.sleep(0)  # (a mass failure's million, a minute later)

    # -- flapping ---------------------------------------------------------------

    def heard(self, event: Event) -> None:
        """A feed listener: counts each instance's health changes."""
        if event.type not in _HEALTH_CHANGES:
            return
        key = event.instance.key
        now = self._core.clock.monotonic()
        flips = self._flips.pop(key, None)
        if flips is None:  # its first change in memory: one is never flapping (a threshold is at least 1)
            self._flips[key] = now  # (so a mass failure's million look up no policy)
            return
        if type(flips) is not list:
            flips = [flips]
        policy = self.policy.for_instance(event.instance.metadata, key.model_name)
        flips.append(now)
        self._flips[key] = flips  # (last: the most recent change)
        while flips and flips[0] <= now - policy.flap_window:
            del flips[0]
        if len(flips) > policy.flap_threshold + 1:  # more are never needed
            del flips[: len(flips) - policy.flap_threshold - 1]
        if len(flips) > policy.flap_threshold and key not in self._cooling:
            self._flapping[key] = len(flips)

    async def _hold_out_flapping(self, now: datetime) -> list[ModelInstance]:
        held = []
        for key, changes in list(self._flapping.items()):
            del self._flapping[key]
            self._flips.pop(key, None)
            record = await self._core.storage.get(key)
            if record is None:
                continue
            policy = self.policy.for_instance(record.metadata, key.model_name)
            last = self._flap_seconds.get(key)
            seconds = policy.cooldown if last is None else min(last * 2, policy.max_cooldown)
            self._flap_seconds[key] = seconds
            self._trials.pop(key, None)
            reason = (
                f"flapping: {changes} health changes in {policy.flap_window:g} s; cooling down {seconds:g} s"
            )
            cooled = await self._cool(key, now, seconds, reason, busy=False)
            if cooled is not None:
                held.append(cooled)
        return held

    # -- selection's side of a trial ------------------------------------------

    def selectable(self, candidates: list[ModelInstance]) -> list[ModelInstance]:
        """``candidates`` without those on trial that have had their trial requests."""
        trials = self._trials
        if not trials:
            return candidates
        return [c for c in candidates if (t := trials.get(c.key)) is None or t.left > 0]

    def picked(self, key: InstanceKey) -> None:
        """Selection picked ``key``: one trial request fewer, when it is on trial."""
        trial = self._trials.get(key)
        if trial is not None and trial.left > 0:
            trial.left -= 1

    def on_trial(self, key: InstanceKey) -> bool:
        return key in self._trials


_COUNTED = {"success": "ok", "failure": "failed", "busy": "busy", "ignored": "ignored"}
