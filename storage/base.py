"""The storage contract, written once.

A backend stores ``ModelInstance`` records by their identity
(``model_name``, ``host``, ``port``) and offers the primitives below. Policy
(what a heartbeat means, when an instance expires, how one is selected) lives in
``registry``; a backend only promises that each primitive is a single atomic
step: no other writer can interleave between the read and the write inside it,
and once it returns, the change is durable to the degree the backend promises
(``durable`` below).

Every method may raise ``StorageUnavailable``; nothing else is expected. Records
returned are snapshots: later changes to the stored record do not show in them.
They may be shared (with the backend, and with other callers), so they must not
be changed; derive a changed copy with ``dataclasses.replace``. Records passed
in are copied: the caller may go on changing its own.

Lifecycle: ``async with backend:`` opens it (creating or upgrading the schema
where there is one) and closes it; a closed backend cannot be reopened.
"""

from __future__ import annotations

import abc
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from types import TracebackType
from typing import Any, NamedTuple

from model_registry_sdk.record import InstanceKey, ModelInstance, ModelSummary

__all__ = ["Census", "Edit", "Storage", "StoredToken"]

#: An edit of a record in place: an operator's change (see ``Storage.override``).
Edit = Callable[[ModelInstance], None]


@dataclass(frozen=True, slots=True)
class StoredToken:
    """An API token as storage keeps it: never the secret, only its digest."""

    name: str
    digest: str  # SHA-256 of the secret, hex
    role: str
    models: tuple[str, ...] | None  # glob patterns of the model names it may act on; None: any
    expires_at: datetime | None
    created_at: datetime


class Census(NamedTuple):
    """How many instances a sweep would act on, counted before it acts."""

    checked: int  # healthy instances the checker watches (check_healthy)
    silent: int  # of those, last heard before the expiry cutoff
    total: int  # every record
    evictable: int  # unhealthy since before the eviction cutoff


class Storage(abc.ABC):
    #: Short name for logs and ``/health`` ("memory", "sqlite", ...).
    name: str = "abstract"
    #: True when an acknowledged write survives the death of the process.
    durable: bool = False

    def __init__(self) -> None:
        self._state = "new"
        #: ``StorageUnavailable`` raised, by kind (``timeout``, ``pool_exhausted``, ``driver``, ``write``).
        self.errors: Counter[str] = Counter()

    def stats(self) -> dict[str, Any]:
        """Numbers for the metrics, at once: ``errors`` by kind; and, from backends
        that write heartbeats behind, ``pending`` (beats not yet written), ``flushes``,
        ``flush_failures`` and ``flush_seconds`` (in all); from pooled backends,
        ``pool`` (``size``, ``in_use``, ``overflow``, ``waiting``)."""
        return {"errors": dict(self.errors)}

    # -- lifecycle ---------------------------------------------------------

    async def __aenter__(self) -> Storage:
        if self._state != "new":
            raise RuntimeError(f"{self.name} storage was already {self._state}; open a new one")
        await self._open()
        self._state = "open"
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._state = "closed"
        await self._close()

    async def _open(self) -> None:  # noqa: B027 - optional hook, memory needs none
        """Acquire connections and prepare the schema. Idempotent on disk."""

    async def _close(self) -> None:  # noqa: B027 - optional hook
        """Release everything ``_open`` acquired."""

    # -- writes ------------------------------------------------------------

    @abc.abstractmethod
    async def upsert(self, record: ModelInstance) -> tuple[ModelInstance, bool]:
        """Store ``record`` under its key, replacing every field of an existing
        record except ``registered_at`` (which keeps its first value),
        ``cooldown_until`` and ``overrides``, whose pinned values are applied
        over the new ones (see ``record.apply_overrides``).

        Returns the stored record and ``True`` when it did not exist before.
        Concurrent upserts of one key leave exactly one record.
        """

    async def upsert_many(self, records: Sequence[ModelInstance]) -> list[tuple[ModelInstance, bool]]:
        """``upsert`` each record, in order; their results in the same order. Each
        is atomic as ``upsert`` is; all are durable once this returns (backends
        that can, write them in one transaction: a bulk registration)."""
        return [await self.upsert(record) for record in records]

    @abc.abstractmethod
    async def override(self, key: InstanceKey, change: Edit) -> ModelInstance | None:
        """Apply an operator's ``change`` to the stored record, atomically: no
        other write to the key between the read and the write.

        ``change`` is a synchronous function that edits, in place, the copy of
        the record it is given, and only its overridable fields (``enabled``,
        ``weight``, ``metadata``), ``overrides`` and ``state_reason`` (a drain's
        reason): the registry's pin policy
        (``model_registry.pins.changer``); storage knows nothing of its rules.
        Returns the new record, or ``None`` when unknown."""

    @abc.abstractmethod
    async def set_cooldown(
        self, key: InstanceKey, until: datetime | None, reason: str | None = None
    ) -> ModelInstance | None:
        """Set ``cooldown_until``, and ``state_reason`` to ``reason`` when the
        instance is healthy (an unhealthy one keeps why it is unhealthy).
        Returns the record, or ``None`` when unknown."""

    @abc.abstractmethod
    async def insert(self, record: ModelInstance) -> ModelInstance | None:
        """Store ``record`` only if its key is absent. Returns it, or ``None``
        when a record with that key already exists (which is left untouched)."""

    @abc.abstractmethod
    async def touch(
        self, key: InstanceKey, now: datetime, queue_length: int | None
    ) -> tuple[ModelInstance, bool] | None:
        """Record a heartbeat: ``last_heartbeat = now``, ``healthy = True``,
        ``unhealthy_since = None``, ``state_reason = None``, and
        ``queue_length`` when it is not ``None``. A record its own check holds
        unhealthy (``record.held_by_check``) stays so: only ``last_heartbeat``
        and ``queue_length`` change.

        Returns the updated record and whether the beat revived it (it was
        unhealthy before, and is healthy now), or ``None`` when the key is unknown.
        """

    def beat(self, key: InstanceKey, now: datetime, queue_length: int | None) -> ModelInstance | None:
        """``touch`` at once, without waiting, when the backend can: for the
        common heartbeat, of a known instance that is healthy (so that the beat
        changes no state). Returns the updated record.

        ``None`` means "not this way": the instance is unknown or unhealthy, or
        the backend would have to wait for something (a database). Nothing has
        changed then; the caller goes on with ``touch``. A synchronous method,
        so that the hottest path costs no coroutine; the default never can.
        """
        return None

    @abc.abstractmethod
    async def mark_unhealthy(
        self, key: InstanceKey, now: datetime, reason: str | None = None
    ) -> ModelInstance | None:
        """Set ``healthy = False`` and ``state_reason = reason`` (and
        ``unhealthy_since = now`` unless it was already unhealthy). Returns the
        record, or ``None`` when unknown."""

    @abc.abstractmethod
    async def pass_check(self, key: InstanceKey, heard_after: datetime) -> ModelInstance | None:
        """The instance passed its check: if its check holds it unhealthy
        (``record.held_by_check``), and it never beat or last beat at or after
        ``heard_after``, set ``healthy = True``, ``unhealthy_since = None`` and
        ``state_reason = None``. Returns the record when it changed so, else ``None``."""

    def set_load(
        self, key: InstanceKey, waiting: int | None, running: int | None, kv: float | None, at: datetime
    ) -> ModelInstance | None:
        """Set the engine's load (``waiting``, ``running``, ``kv_cache_usage``)
        and ``load_at``, at once, written behind like a heartbeat's load (a
        crash may lose the last of it; load is stale in seconds anyway).
        Returns the record, or ``None`` when the key is unknown (to this
        replica). Synchronous: every backend keeps the records it serves in memory."""
        return None

    @abc.abstractmethod
    async def set_ready(self, key: InstanceKey, ready: bool) -> ModelInstance | None:
        """Set ``ready``. Made ready, an instance unhealthy because it was not
        ready within its start-up grace (``record.GRACE_REASON``) is healthy
        again; one its check holds is not. Returns the record, or ``None``
        when unknown."""

    @abc.abstractmethod
    async def overdue_starts(self, now: datetime, default_grace: float) -> list[ModelInstance]:
        """The instances starting (``record.state_of``: healthy and not ready, or
        their check not yet passed once) registered at least their
        ``startup_grace`` (``default_grace`` when they give none) before ``now``.
        Changes nothing: the registry marks them."""

    @abc.abstractmethod
    async def delete(self, key: InstanceKey) -> ModelInstance | None:
        """Delete the record. Returns it as it was, or ``None`` when unknown."""

    @abc.abstractmethod
    async def expire(self, cutoff: datetime, now: datetime, reason: str | None = None) -> list[ModelInstance]:
        """Mark unhealthy, in one atomic step, every record with
        ``healthy and check_healthy and last_heartbeat < cutoff``; set their
        ``unhealthy_since = now`` and ``state_reason = reason``. Returns the records that changed, so each
        transition is reported exactly once. A heartbeat that lands first wins.
        """

    @abc.abstractmethod
    async def evict(self, cutoff: datetime) -> list[ModelInstance]:
        """Delete every record with ``not healthy and unhealthy_since < cutoff``.
        Returns the deleted records."""

    @abc.abstractmethod
    async def census(self, expire_cutoff: datetime, evict_cutoff: datetime) -> Census:
        """Count what ``expire(expire_cutoff)`` and ``evict(evict_cutoff)``
        would act on, without acting (the checker's self-preservation). The
        counts may be approximate by the records of the cutoff's own second."""

    # -- reads -------------------------------------------------------------

    @abc.abstractmethod
    def sizes(self, model_name: str) -> tuple[int, int]:
        """How many instances this process holds, in all and of ``model_name``,
        at once: what the registration caps count. A replica counts the
        records it knows (every one, but for a moment after another replica's
        registration or a missed notification)."""

    @abc.abstractmethod
    async def get(self, key: InstanceKey) -> ModelInstance | None:
        """The record stored under ``key``, or ``None``."""

    @abc.abstractmethod
    async def list(
        self, model_name: str | None = None, healthy_only: bool = False, now: datetime | None = None
    ) -> list[ModelInstance]:
        """Records of one model (or all), optionally only healthy ones, ordered
        by key. With ``now``, ``healthy_only`` also leaves out instances in a
        cooldown at that moment. The answer may be a read-only ``Snapshot``
        shared with other readers (a backend's cached answer)."""

    def records_now(self) -> Iterable[ModelInstance] | None:
        """Every record at once, in no order, when the backend keeps them in
        memory (a replica: those it knows); ``None`` means "not this way": the
        caller awaits ``list``. To be copied at once, not kept or changed."""
        return None

    def at_now(self, host: str, port: int) -> list[ModelInstance] | None:
        """``at`` at once, when the backend can answer from memory; ``None``
        means "not this way": the caller awaits ``at``. The records are to be
        read at once, not kept (they may be the backend's own). A replica's
        answer may lack a record another replica added a moment ago.
        Synchronous, for FastChat's heartbeats, which name an address."""
        return None

    def list_now(
        self, model_name: str | None, healthy_only: bool = False, now: datetime | None = None
    ) -> list[ModelInstance] | None:
        """``list`` at once, when the backend answers from memory; ``None`` means
        "not this way": the caller awaits ``list``. Synchronous, for the long-polls
        one change wakes, answered in one go (``api.views.PollAnswers``)."""
        return None

    @abc.abstractmethod
    async def at(self, host: str, port: int) -> list[ModelInstance]:
        """Every record at one address (one worker process, whatever models it
        serves), ordered by key. ``host`` is compared as stored (normalised)."""

    @abc.abstractmethod
    async def summarize(self, now: datetime | None = None) -> list[ModelSummary]:
        """Per-model counts, ordered by model name. With ``now``, ``available``
        leaves out instances in a cooldown at that moment."""

    # -- API tokens ----------------------------------------------------------

    @abc.abstractmethod
    async def tokens(self) -> list[StoredToken]:
        """Every token, by name."""

    @abc.abstractmethod
    async def add_token(self, token: StoredToken) -> bool:
        """Store ``token`` unless one has its name (or digest); whether it was stored."""

    @abc.abstractmethod
    async def remove_token(self, name: str) -> StoredToken | None:
        """Delete the token named ``name``. Returns it, or ``None`` when unknown."""

    # -- changes between processes ------------------------------------------

    def announce(self, change: str, record: ModelInstance) -> None:  # noqa: B027 - optional
        """Tell the other processes sharing this backend that ``record`` changed
        (``change`` names how). Returns at once; delivery follows, in order,
        at most once. A no-op for backends only one process uses."""

    def subscribe(  # noqa: B027 - optional
        self, callback: Callable[[str, InstanceKey | None, ModelInstance | None], None] | None
    ) -> None:
        """Call ``callback(change, key, record)`` for every change another
        process announces (``record`` is ``None`` when it was too large to
        travel; read it by key), and ``callback("resync", None, None)`` when
        some may have been missed. A no-op for backends only one process uses."""

    async def probe_shares(self) -> Callable[[InstanceKey], bool] | None:
        """Which instances this process probes (their checks and scrapes), for
        backends several processes share: each instance by one process at a
        time, and by another within a few seconds when that one dies. ``None``
        (the default): this process is the only one, and probes every instance.
        What it returns answers at once; the backend keeps it current until it
        closes."""
        return None

    async def server_time(self) -> datetime | None:
        """The backend's own clock, for backends shared by several processes.

        ``None`` (the default) means the backend has no clock of its own and
        the caller's clock is authoritative. A shared backend returns its
        server's time, so that every replica can judge heartbeats by one clock.
        """
        return None

    @abc.abstractmethod
    async def ping(self) -> None:
        """Return when the backend answers; raise ``StorageUnavailable`` when not."""
