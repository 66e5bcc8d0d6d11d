"""The registry: what a registration, a heartbeat, a deregistration and a read mean.

``Registry`` is the service's one entry point. It holds the policy of the
writes and reads here, and composes the other parts over one shared ``Core``:
the checker (``checker``: silent instances, eviction, self-preservation), the
cooldowns (``reports``: routers' failure reports), replication (other
replicas' changes) and DB-GPT's method names (``dbgpt``). Storage only offers
atomic primitives.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import random
from collections.abc import Callable
from datetime import datetime, timedelta
from types import TracebackType
from typing import Any

from model_registry_sdk.record import DRAINED_REASON, Change, held_by_check

from .checker import Checker, CheckResult, check_timing
from .clock import Clock
from .core import Core, fields_of
from .dbgpt import DBGPTMethods
from .engines import EngineLoad
from .errors import AllCoolingDown, InstanceLimit, InstanceNotFound, InvalidRequest, NoHealthyInstance
from .events import Event, Feed
from .failures import FailurePolicy, Verdict
from .pins import changer
from .preservation import Preservation
from .probes import STARTING, same_problem, target_url
from .replication import Replication
from .reports import Cooldowns
from .selection import DEFAULT_STRATEGY, Selector
from .storage import InstanceKey, ModelInstance, ModelSummary, Storage, StorageUnavailable
from .storage.base import Edit
from .validation import (
    MAX_QUEUE_LENGTH,
    Report,
    carries_load,
    heartbeat_from,
    instance_from,
    known_beat,
    load_from,
    override_from,
)

__all__ = ["CheckResult", "Registry", "check_timing"]

log = logging.getLogger("registry")

_KNOWN, _REGISTERED = ("known", None), ("registered", None)
_NOT_AN_OBJECT = ("refused", "a beat must be an object: {model_name, host, port, queue_length?}")

#: Changes after which an instance is no candidate of selection until it comes back.
_GONE = frozenset({Change.DEREGISTERED, Change.EVICTED, Change.PURGED})


def _with_drain_reason(change: Edit, reason: str | None) -> Edit:
    """``change``, then the reason of a drain (``drained by operator ops-1``) while the
    instance is healthy and drained, and none once it is back in service."""

    def edit(record: ModelInstance) -> None:
        change(record)
        if not record.healthy:
            return  # an unhealthy instance keeps why it is unhealthy
        drained_for = record.state_reason is not None and record.state_reason.startswith(DRAINED_REASON)
        if not record.enabled:
            record.state_reason = reason or f"{DRAINED_REASON}an operator"
        elif drained_for:
            record.state_reason = None

    return edit


class Registry(DBGPTMethods):
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
        max_instances: int = 1_000_000,
        max_instances_per_model: int = 100_000,
        probe_allowed_hosts: frozenset[str] = frozenset(),
        startup_grace: float = 600.0,
    ) -> None:
        """``checker=False`` leaves sweeping to whoever calls ``check_once``
        (tests, or a replica that must not sweep).

        ``server_clock``: follow the storage server's clock when the backend has
        one (PostgreSQL shared by replicas). Defaults to yes unless a ``clock``
        is injected, which is then taken as it is.

        ``watch_history``: how many recent changes ``feed`` keeps for watchers
        that resume. ``failures``: when routers' reports put an instance in
        cooldown (see ``reports``). ``preservation``: when the checker holds
        back (see ``preservation``). ``max_instances`` and
        ``max_instances_per_model``: past them a new instance is refused
        (``InstanceLimit``); instances already registered are always updated.
        ``probe_allowed_hosts``: hosts other than the instance's own that a
        registration's check or metrics URL may name (see ``probes``).
        ``startup_grace``: seconds an instance may stay ``starting`` (registered
        ``ready: false``, or its check not yet passed) when it sets none itself.
        """
        check_timing(heartbeat_interval, heartbeat_timeout, evict_after)
        self.storage = storage
        self.heartbeat_interval = heartbeat_interval
        self.heartbeat_timeout = heartbeat_timeout
        self.evict_after = evict_after
        follow_server = clock is None if server_clock is None else server_clock
        self._core = core = Core(storage, clock, follow_server, Feed(watch_history))
        #: Every change to membership and health, for watchers (see ``events``).
        self.feed = core.feed
        self._selector = Selector(rng or random.Random(), heartbeat_interval)
        self.feed.listeners.append(self._forget_gone)
        self.max_instances, self.max_instances_per_model = max_instances, max_instances_per_model
        self.probe_allowed_hosts = probe_allowed_hosts
        #: Heartbeats recorded since the start: for the metrics.
        self.heartbeats = 0
        self._sweeps = checker
        self._started = False
        self._cooldowns = Cooldowns(core, failures or FailurePolicy())
        self._checker = Checker(
            core,
            self._cooldowns,
            interval=heartbeat_interval,
            timeout=heartbeat_timeout,
            evict_after=evict_after,
            preservation=preservation or Preservation(),
            startup_grace=startup_grace,
        )
        self._replication = Replication(core)
        self.feed.listeners.append(self._cooldowns.heard)

    # -- lifecycle ---------------------------------------------------------

    async def __aenter__(self) -> Registry:
        if self._started:
            raise RuntimeError("this Registry was already started; create a new one")
        self._started = True
        self._checker.begin()
        await self._core.sync_clock()
        if self._sweeps:
            self._checker.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self._replication.close()
        await self._checker.stop()

    @property
    def failure_policy(self) -> FailurePolicy:
        return self._cooldowns.policy

    @property
    def grace_remaining(self) -> float:
        """Seconds until the checker may mark anything unhealthy (see ``Checker``)."""
        return self._checker.grace_remaining

    @property
    def self_preservation(self) -> dict[str, Any]:
        """What ``/health`` and ``/api/v1/models`` report of the checker's self-preservation."""
        return self._checker.self_preservation

    async def check_once(self) -> CheckResult:
        """One sweep of the checker (see ``Checker.check_once``)."""
        return await self._checker.check_once()

    # -- writes ------------------------------------------------------------

    async def register(
        self, instance: ModelInstance | dict[str, Any], queue_length: int | None = None
    ) -> tuple[ModelInstance, bool]:
        """Create or update an instance, with the load it reports if it does;
        returns it as stored and whether it is new."""
        core = self._core
        record = await self._admitted(instance)
        record.queue_length = queue_length
        with core.noting_outages():
            stored, created = await self.storage.upsert(record)
        if created:
            log.info("instance registered", extra=fields_of(stored.key))
        core.publish(Change.REGISTERED if created else Change.UPDATED, stored)
        return stored, created

    async def _admitted(self, instance: ModelInstance | dict[str, Any]) -> ModelInstance:
        """A registration, validated, with its server-managed fields, once there is
        room for it (raises ``InvalidRequest`` or ``InstanceLimit`` otherwise)."""
        record = self._targets(instance_from(instance))
        previous = None
        if record.check is not None:
            with self._core.noting_outages():
                previous = await self.storage.get(record.key)
        record = self._fresh(record, previous)
        await self._room_for(record.key)
        return record

    async def register_many(
        self, bodies: list[Any], refuse: Callable[[dict[str, Any]], str | None] | None = None
    ) -> list[tuple[str, str | None]]:
        """Register many instances at once (a bulk load): each as ``register`` takes
        it, all written in one go (one transaction where the backend has them). For
        each, in order: ``("created", None)``, ``("updated", None)`` or ``("refused",
        why)``. One log line for the batch, an event for each."""
        core = self._core
        results: list[tuple[str, str | None]] = [("refused", "")] * len(bodies)
        records: list[ModelInstance] = []
        positions: list[int] = []
        for i, body in enumerate(bodies):
            if type(body) is not dict:
                results[i] = ("refused", "an instance must be an object: {model_name, host, port, ...}")
                continue
            if refuse is not None and (why := refuse(body)) is not None:
                results[i] = ("refused", why)
                continue
            try:
                record = await self._admitted(body)  # (the caps hold to within one batch)
            except (InvalidRequest, InstanceLimit) as exc:
                results[i] = ("refused", exc.detail)
                continue
            records.append(record)
            positions.append(i)
        if records:
            with core.noting_outages():
                stored = await self.storage.upsert_many(records)
            for i, (record, created) in zip(positions, stored, strict=True):
                results[i] = ("created", None) if created else ("updated", None)
                core.publish(Change.REGISTERED if created else Change.UPDATED, record)
            created = sum(1 for _, new in stored if new)
            log.info("instances registered in bulk", extra={"new": created, "updated": len(stored) - created})
        return results

    def _forget_gone(self, event: Event) -> None:
        """Selection keeps nothing for an instance that is gone (nor, with its
        last, for its model)."""
        if event.type in _GONE:
            self._selector.forget(event.instance.key)

    async def _room_for(self, key: InstanceKey) -> None:
        """Raise ``InstanceLimit`` when ``key`` would be a new instance past a
        cap: 507 for the registry's, 429 for its model's. (Registrations under
        way at once may each pass: the caps hold to within their number.)"""
        total, of_model = self.storage.sizes(key.model_name)
        if total < self.max_instances and of_model < self.max_instances_per_model:
            return
        with self._core.noting_outages():
            if await self.storage.get(key) is not None:
                return  # an update: always room for it
        if total >= self.max_instances:
            raise InstanceLimit(
                507,
                "instance_limit",
                f"the registry holds its limit of {self.max_instances} instances (--max-instances): "
                "deregister (purge) instances that are gone, or raise the limit",
            )
        raise InstanceLimit(
            429,
            "model_instance_limit",
            f"model {key.model_name!r} has its limit of {self.max_instances_per_model} instances "
            "(--max-instances-per-model): purge instances of it that are gone, or raise the limit",
            "model_name",
        )

    def beat(self, body: dict[str, Any]) -> ModelInstance | None:
        """``heartbeat`` at once, for the common beat: a known, healthy
        instance, named exactly as it was stored, on a backend that can record
        the beat without waiting (``Storage.beat``). Returns the record.

        ``None`` means the beat must go through ``heartbeat``; nothing was
        recorded. Synchronous, so that the hottest path awaits nothing.
        """
        beat = known_beat(body)
        if beat is None or carries_load(body):  # an engine's load is validated by ``heartbeat``
            return None
        record = self.storage.beat(beat[0], self._core.clock.now(), beat[1])
        if record is not None:
            ready = body.get("ready")
            if ready is not None and ready is not record.ready:
                return None  # it says it is (no longer) ready: ``heartbeat`` beats it again, and turns it
            self.heartbeats += 1
        return record

    async def heartbeat(
        self, instance: ModelInstance | dict[str, Any], queue_length: int | None = None
    ) -> ModelInstance:
        """Record a beat (see ``_heartbeat``), and the engine's load when the
        body carries it (``waiting``, ``running``, ``kv_cache_usage``)."""
        return (await self._beat_slowly(instance, queue_length))[0]

    async def _beat_slowly(
        self, instance: ModelInstance | dict[str, Any], queue_length: int | None = None
    ) -> tuple[ModelInstance, bool]:
        """``heartbeat``, and whether the beat registered the instance."""
        load = load_from(instance) if isinstance(instance, dict) else None
        record, created = await self._heartbeat(instance, queue_length)
        self.heartbeats += 1
        if load is not None:
            record = self.storage.set_load(record.key, *load, self._core.clock.now()) or record
        ready = instance.get("ready") if isinstance(instance, dict) else None
        if type(ready) is bool and ready != record.ready:
            record = await self.set_ready(record.key, ready) or record
        return record, created

    async def beat_many(
        self, bodies: list[Any], refuse: Callable[[dict[str, Any]], str | None] | None = None
    ) -> list[tuple[str, str | None]]:
        """Many heartbeats, each as ``heartbeat`` takes it, in order: for each,
        ``("known", None)``, ``("registered", None)`` (unknown, so registered by
        its beat) or ``("refused", why)`` (not an instance, a rule broken, no
        room, or ``refuse(body)`` said why). One refused beat does not stop the
        others. ``StorageUnavailable`` stops the batch (the beats before it are
        recorded; a beat twice is a beat, so the batch can be sent again)."""
        results: list[tuple[str, str | None]] = []
        append, beat = results.append, self.beat
        for body in bodies:
            if type(body) is not dict:
                append(_NOT_AN_OBJECT)
                continue
            if refuse is not None and (why := refuse(body)) is not None:
                append(("refused", why))
                continue
            if beat(body) is not None:
                append(_KNOWN)
                continue
            try:
                _, created = await self._beat_slowly(body)
            except (InvalidRequest, InstanceLimit) as exc:
                append(("refused", exc.detail))
                continue
            append(_REGISTERED if created else _KNOWN)
        return results

    async def set_ready(self, key: InstanceKey, ready: bool) -> ModelInstance | None:
        """The worker says it is ready (its model loaded), or no longer is: ``starting``
        to ``ready`` and back, with a ``ready`` or ``starting`` event."""
        core = self._core
        with core.noting_outages():
            record = await self.storage.set_ready(key, ready)
        if record is None:
            return None
        log.info("instance ready" if ready else "instance starting again", extra=fields_of(key))
        core.publish(Change.READY if ready else Change.STARTING, record)
        return record

    async def _heartbeat(
        self, instance: ModelInstance | dict[str, Any], queue_length: int | None
    ) -> tuple[ModelInstance, bool]:
        """Record a beat, with the load the worker reports.

        ``instance`` is a ``ModelInstance`` or a heartbeat body (a dict whose
        ``queue_length`` is then the load). An unknown instance is registered
        by its heartbeat, as ``instance`` describes it, so a worker that sends
        its whole description recovers fully when the registry has lost it.
        For a known instance only the identity and the load are read.
        """
        core = self._core
        if isinstance(instance, dict):
            # The hot path: a known instance, named exactly as it was stored,
            # needs no validation beyond types: its identity passed it when it
            # was registered. (``touch`` takes a backend's ``beat`` itself.)
            beat = known_beat(instance)
            if beat is not None:
                key, queue_length = beat
                with core.noting_outages():
                    touched = await self.storage.touch(key, core.clock.now(), queue_length)
                if touched is not None:
                    record, revived = touched
                    return (self._beaten(record, revived) if revived else record), False
            unknown, queue_length = heartbeat_from(instance)
        else:
            unknown = instance_from(instance)
        key = unknown.key
        # touch, else insert: each step is atomic; a concurrent delete between
        # them only sends us round again.
        for _ in range(3):
            with core.noting_outages():
                touched = await self.storage.touch(key, core.clock.now(), queue_length)
            if touched is not None:
                return self._beaten(*touched), False
            record = self._fresh(self._targets(unknown))
            record.queue_length, record.last_heartbeat = queue_length, core.clock.now()  # it beats
            await self._room_for(key)
            with core.noting_outages():
                inserted = await self.storage.insert(record)
            if inserted is not None:
                log.info("instance registered by its heartbeat", extra=fields_of(key))
                core.publish(Change.REGISTERED, inserted)
                return inserted, True
        raise StorageUnavailable(f"instance {key} kept changing under concurrent writes; retry")

    def beat_at(
        self, host: str, port: int, queue_length: int | None, where: Callable[[ModelInstance], bool]
    ) -> int | None:
        """Beat at once every instance at an address that ``where`` accepts,
        when the backend can do it without waiting (``Storage.at_now``,
        ``Storage.beat``); returns how many were beaten (0: none is there).

        ``None`` means "not this way"; the caller goes on with ``at`` and
        ``beat_known``, which may beat again some that were beaten here (a
        beat twice is a beat). Synchronous, as ``beat`` is.
        """
        storage = self.storage
        records = storage.at_now(host, port)
        if records is None:
            return None
        now = self._core.clock.now()
        beaten = 0
        for record in records:
            if where(record):
                if storage.beat(record.key, now, queue_length) is None:
                    return None  # unhealthy, say: a revival is published, so not from here
                beaten += 1
        return beaten

    async def beat_known(self, key: InstanceKey, queue_length: int | None = None) -> ModelInstance | None:
        """Record a beat only if the instance exists; ``None`` when it does not.

        Never registers: for beats that name a worker rather than describe an
        instance (FastChat's), which must not bring back a model it dropped.
        """
        core = self._core
        record = self.storage.beat(key, core.clock.now(), queue_length)
        if record is not None:
            return record
        with core.noting_outages():
            touched = await self.storage.touch(key, core.clock.now(), queue_length)
        return None if touched is None else self._beaten(*touched)

    def _beaten(self, record: ModelInstance, revived: bool) -> ModelInstance:
        if revived:
            log.info("instance healthy again: it beats", extra=fields_of(record.key))
            self._core.publish(Change.HEALTHY, record)
        return record

    async def deregister(self, key: InstanceKey, *, purge: bool = False) -> ModelInstance:
        """Mark an instance unhealthy and keep it, or delete it with ``purge``.

        Returns the instance as it now is (as it was, when purged).
        """
        if purge:
            record = await self.storage.delete(key)
        else:
            record = await self.storage.mark_unhealthy(key, self._core.clock.now(), "deregistered")
        if record is None:
            raise InstanceNotFound(key)
        log.info("instance purged" if purge else "instance deregistered", extra=fields_of(key))
        self._core.publish(Change.PURGED if purge else Change.DEREGISTERED, record)
        return record

    async def patch(
        self, key: InstanceKey, changes: dict[str, Any], actor: str | None = None
    ) -> ModelInstance:
        """An operator's change to ``enabled``, ``weight`` or ``metadata``,
        pinned over later re-registrations (``null`` releases a pin; see ``pins``).
        ``actor``: who (a token's name), for the reason of a drain."""
        changes = override_from(changes)
        change = changer(changes)
        if "enabled" in changes:
            change = _with_drain_reason(change, f"{DRAINED_REASON}operator {actor}" if actor else None)
        with self._core.noting_outages():
            record = await self.storage.override(key, change)
        if record is None:
            raise InstanceNotFound(key)
        if "enabled" in changes:
            change = Change.ENABLED if record.enabled else Change.DISABLED
        else:
            change = Change.UPDATED
        state = {"state": record.state, "reason": record.state_reason}
        log.info("instance changed by an operator", extra={**fields_of(key), "changes": changes, **state})
        self._core.publish(change, record)
        return record

    # -- what the prober saw ---------------------------------------------------

    async def check_failed(self, key: InstanceKey, reason: str) -> ModelInstance | None:
        """The instance failed its check as many times in a row as it allows
        (``unhealthy_after``): unhealthy, because ``reason`` (``probe: HTTP 503``).
        Returns the record when this changed it; an instance unhealthy for
        another reason (deregistered, silent) keeps that reason."""
        core = self._core
        with core.noting_outages():
            record = await self.storage.get(key)
            if record is None or not (record.healthy or held_by_check(record)):
                return None
            if not record.healthy and same_problem(record.state_reason, reason):
                return None
            marked = await self.storage.mark_unhealthy(key, core.clock.now(), reason)
        if marked is None:
            return None
        if record.healthy:
            log.info("instance marked unhealthy by its check", extra={**fields_of(key), "reason": reason})
            core.publish(Change.UNHEALTHY, marked)
        return marked

    async def check_passed(self, key: InstanceKey) -> ModelInstance | None:
        """The instance passed its check as many times in a row as it asks
        (``healthy_after``): healthy again if its check held it, and its
        heartbeats (if it sends any) have not stopped. Returns it when revived."""
        core = self._core
        heard_after = core.clock.now() - timedelta(seconds=self.heartbeat_timeout)
        with core.noting_outages():
            record = await self.storage.pass_check(key, heard_after)
        if record is not None:
            log.info("instance healthy: it passes its check", extra=fields_of(key))
            core.publish(Change.HEALTHY, record)
        return record

    def set_load(
        self, key: InstanceKey, load: EngineLoad, at: datetime | None = None
    ) -> ModelInstance | None:
        """The engine's load, scraped at ``at`` (now by default); counts are rounded."""
        waiting = None if load.waiting is None else min(round(load.waiting), MAX_QUEUE_LENGTH)
        running = None if load.running is None else min(round(load.running), MAX_QUEUE_LENGTH)
        return self.storage.set_load(key, waiting, running, load.kv_cache_usage, at or self._core.clock.now())

    async def report(self, report: Report | dict[str, Any]) -> tuple[ModelInstance, int, Verdict]:
        """A router's report on one request to an instance. Returns the
        instance, its failures in the current window, and what the report
        meant (``failures.classify``); enough failures in a row put it in
        cooldown, busyness passes it over (see ``reports``)."""
        return await self._cooldowns.report(report)

    def _fresh(self, instance: ModelInstance, previous: ModelInstance | None = None) -> ModelInstance:
        """``instance`` with the server-managed fields a new registration gets.

        An instance with a check is not served until it passes it: it starts
        unhealthy, held by its check (``STARTING``), with no heartbeat yet (so
        the heartbeat timeout leaves it alone until it beats). Registered again
        (``previous``), it keeps what its check last said.
        """
        now = self._core.clock.now()
        fresh = dataclasses.replace(
            instance,
            healthy=True,
            last_heartbeat=now,
            registered_at=now,
            unhealthy_since=None,
            queue_length=None,
            state_reason=None,
            waiting=None,
            running=None,
            kv_cache_usage=None,
            load_at=None,
        )
        if instance.check is not None:
            fresh.last_heartbeat = None
            if previous is not None and previous.check is not None and previous.healthy:
                pass  # passing its check already: a re-registration does not flap it
            elif previous is not None and held_by_check(previous):
                fresh.healthy, fresh.unhealthy_since = False, previous.unhealthy_since
                fresh.state_reason = previous.state_reason
            else:  # starting: not unhealthy since anything (nothing evicts it before its grace)
                fresh.healthy, fresh.unhealthy_since, fresh.state_reason = False, None, STARTING
        return fresh

    def _targets(self, record: ModelInstance) -> ModelInstance:
        """``record`` if what it asks to probe and scrape is the instance itself (or a
        host the operator allows); ``InvalidInstance`` naming the field otherwise."""
        if record.check is not None:
            target_url(record.host, record.port, record.check["http"], "check.http", self.probe_allowed_hosts)
        if record.metrics is not None:
            target_url(
                record.host, record.port, record.metrics["url"], "metrics.url", self.probe_allowed_hosts
            )
        return record

    # -- reads -------------------------------------------------------------

    async def instances(
        self, model_name: str | None = None, healthy_only: bool = False
    ) -> list[ModelInstance]:
        """Instances of one model (or all); ``healthy_only`` leaves out the
        unhealthy and those in a failure cooldown. The answer may be a shared,
        read-only ``Snapshot``."""
        if healthy_only:
            return await self.storage.list(model_name, True, self._core.clock.now())
        return await self.storage.list(model_name)

    def instances_now(self, model_name: str | None, healthy_only: bool = False) -> list[ModelInstance] | None:
        """``instances`` at once, when the backend answers from memory; ``None``:
        await ``instances``."""
        if healthy_only:
            return self.storage.list_now(model_name, True, self._core.clock.now())
        return self.storage.list_now(model_name)

    @property
    def clock(self) -> Clock:
        """The clock the registry stamps and judges by (the database's, on PostgreSQL)."""
        return self._core.clock

    def now(self) -> datetime:
        """The moment by the registry's clock (the database's, on PostgreSQL)."""
        return self._core.clock.now()

    def monotonic(self) -> float:
        """The registry's monotonic clock, for intervals."""
        return self._core.clock.monotonic()

    async def at(self, host: str, port: int) -> list[ModelInstance]:
        """Every instance at one address (one worker process), by model name."""
        with self._core.noting_outages():
            return await self.storage.at(host, port)

    @property
    def revision(self) -> int:
        """The revision of the last change (see ``events``)."""
        return self.feed.revision

    async def wait_for_change(
        self, after: int, model_name: str | None, timeout: float, woken: asyncio.Future[None] | None = None
    ) -> None:
        """Block until there is a change after revision ``after`` (of one model,
        or any), for at most ``timeout`` seconds, or until ``woken`` is done (the
        caller's own future, for this wait alone: the caller completes it when its
        client goes, say, and a change or the timeout completes it): a long-poll."""
        await self.feed.wait(after, model_name, timeout, woken)

    async def models(self) -> list[ModelSummary]:
        return await self.storage.summarize(self._core.clock.now())

    async def select(self, model_name: str, strategy: str = DEFAULT_STRATEGY) -> ModelInstance:
        """One healthy, enabled instance of the model with a weight above 0,
        picked by ``strategy`` (see ``selection``; ``ValueError`` if unknown):
        weighted random, round robin, least load or the less loaded of two."""
        return (await self.select_why(model_name, strategy))[0]

    async def select_why(
        self, model_name: str, strategy: str = DEFAULT_STRATEGY, fallback: str | None = None
    ) -> tuple[ModelInstance, dict[str, Any], bool]:
        """``select``, why (``{"strategy", "load", "fresh"}``, see ``Selector.reason``;
        ``"trial": true`` for a trial request), and whether it is ``degraded``.

        When every healthy, enabled instance is cooling down (or on a trial that
        has had its requests): ``AllCoolingDown`` with the seconds until the first
        cooldown ends, or with ``fallback="least_bad"`` that instance, degraded.
        ``NoHealthyInstance`` when the model has no such instance at all."""
        cooldowns = self._cooldowns
        now = self._core.clock.now()
        candidates = cooldowns.selectable(await self.instances(model_name, healthy_only=True))
        picked = self._selector.pick(candidates, strategy, now)
        if picked is not None:
            reason = self._selector.reason(picked, strategy, now)
            if cooldowns.on_trial(picked.key):
                cooldowns.picked(picked.key)
                reason["trial"] = True
            return picked, reason, False
        cooling = [
            r
            for r in await self.instances(model_name)
            if r.healthy and r.ready and r.enabled and r.weight > 0
        ]
        if not cooling:
            raise NoHealthyInstance(model_name)
        first = min(cooling, key=lambda r: (r.cooldown_until or now, r.host, r.port))
        ends = first.cooldown_until
        if fallback == "least_bad":
            return first, {"strategy": "least_bad", "cooldown_until": ends}, True
        retry_after = (ends - now).total_seconds() if ends is not None and ends > now else 1.0
        raise AllCoolingDown(model_name, max(retry_after, 0.001))

    def stats(self) -> dict[str, Any]:
        """Counters and gauges for the metrics, read at once (no storage round trip)."""
        checker, feed = self._checker, self.feed
        return {
            "heartbeats": self.heartbeats,
            "changes": {change.value: n for change, n in self._core.changes.items()},
            "reports": dict(self._cooldowns.reports),
            "sweeps": checker.sweeps,
            "sweep_seconds": checker.sweep_seconds,
            "last_sweep_seconds": checker.last_sweep_seconds,
            "swept": checker.swept,
            "self_preservation": checker.self_preservation,
            "watchers": feed.watchers,
            "long_polls": feed.polls,
            "storage": self.storage.stats(),
        }

    async def health(self) -> dict[str, Any]:
        """What ``/health`` reports; raises ``StorageUnavailable`` when storage is away."""
        with self._core.noting_outages():
            await self.storage.ping()
        return {
            "storage": self.storage.name,
            "durable": self.storage.durable,
            "checker_running": self._checker.running,
            "grace_remaining_s": round(self.grace_remaining, 3),
            "clock": "database" if self._core.server_clock is not None else "local",
            "heartbeat_interval_s": self.heartbeat_interval,
            "heartbeat_timeout_s": self.heartbeat_timeout,
            "self_preservation": self.self_preservation,
            "watchers": self.feed.watchers,
            "long_polls": self.feed.polls,
        }
