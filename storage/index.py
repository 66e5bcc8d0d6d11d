"""``InstanceIndex``: every record in memory, indexed for the hot paths.

- by key (heartbeats, registrations): a dict;
- by model (listing and selecting one model's instances): each model's keys,
  so a read touches only that model's records, never the whole fleet, and a
  beat (which changes no membership) touches no per-model structure;
- by address (one worker process's models, for FastChat's heartbeats, which
  name the worker, not the model): each ``(host, port)``'s keys;
- by heartbeat age (the checker): a timing wheel of one-second buckets holding
  the records that can expire (healthy and ``check_healthy``), so a sweep
  visits only the buckets older than the cutoff, not every record. The wheel
  is lazy: a beat leaves its record where it was filed, and the sweep's census
  files it again where its last beat puts it (see ``settle``). So a beat, the
  hottest path, does no wheel work, and each record is filed about once per
  heartbeat timeout instead of once per beat;
- the unhealthy records (eviction): a dict, usually small;
- each model's serving records (healthy, not in a cooldown), the answer to
  most reads: built by the first read after a change to the model, then
  handed out, itself, as a read-only ``Snapshot`` until the next change (so a
  reader may keep what it derives from it on the snapshot).

Operations are plain synchronous methods: on one event loop each is atomic.

Records are copy-on-write: the index never changes a record it holds; a change
stores a new record in its place. So a read hands out the stored records
themselves, no copying, and what it handed out stays as it was (a snapshot).
Whatever comes in is copied (``clone``), since its caller still holds it.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Callable, Iterable, Iterator
from datetime import datetime
from typing import Any

from model_registry_sdk.record import (
    InstanceKey,
    ModelInstance,
    ModelSummary,
    apply_overrides,
    held,
    held_by_check,
    state_of,
)

from .base import Census, Edit
from .interning import clone, compact, copy_record
from .readonly import Snapshot
from .wheel import TimingWheel, expirable, second_of

__all__ = [
    "IndexReads",
    "InstanceIndex",
    "OneOrMore",
    "add_key",
    "evict_in_slices",
    "expire_in_slices",
    "keys_of",
    "remove_key",
    "settle_in_slices",
]

_new = object.__new__


#: Records a sweep marks before it lets other work run.
SWEEP_SLICE = 250
#: Wheel entries a census walks before it lets other work run (a walk moves most
#: of them, at a few microseconds each: a slice is well under a millisecond).
SETTLE_SLICE = 250


async def settle_in_slices(index: InstanceIndex, cutoff: datetime) -> None:
    """``index.settle`` in slices, yielding to the event loop between them."""
    while not index.settle(cutoff, limit=SETTLE_SLICE):
        await asyncio.sleep(0)


#: A key, or the keys (a dict as an ordered set) when there are several: what an
#: address or a host holds. Most hold one, and a dict for each would cost 200 bytes.
OneOrMore = InstanceKey | dict[InstanceKey, None]


def add_key(table: dict[Any, OneOrMore], slot: object, key: InstanceKey) -> None:
    """File ``key`` under ``slot`` in ``table`` (a key alone until there are two)."""
    there = table.get(slot)
    if there is None:
        table[slot] = key
    elif type(there) is dict:
        there[key] = None
    elif there != key:
        table[slot] = {there: None, key: None}


def remove_key(table: dict[Any, OneOrMore], slot: object, key: InstanceKey) -> None:
    """Take ``key`` from under ``slot`` (filed there by ``add_key``)."""
    there = table[slot]
    if type(there) is not dict:
        del table[slot]
        return
    del there[key]
    if len(there) == 1:
        table[slot] = next(iter(there))


def keys_of(there: OneOrMore | None) -> Iterable[InstanceKey]:
    """The keys ``add_key`` filed under one slot (``table.get(slot)``)."""
    if there is None:
        return ()
    return there if type(there) is dict else (there,)  # type: ignore[return-value]


#: Called with each slice a sweep takes, as it takes it (``expire_in_slices``).
Each = Callable[[list[ModelInstance]], object]


async def evict_in_slices(
    index: InstanceIndex, cutoff: datetime, each: Each | None = None
) -> list[ModelInstance]:
    """``index.evict`` in slices, yielding to the event loop between them."""
    return await _in_slices(lambda: index.evict(cutoff, limit=SWEEP_SLICE), each)


async def expire_in_slices(
    index: InstanceIndex,
    cutoff: datetime,
    now: datetime,
    reason: str | None = None,
    keys: list[InstanceKey] | None = None,
) -> list[ModelInstance]:
    """``index.expire`` in slices, yielding to the event loop between them, so
    that a sweep which finds many silent instances at once (a rack lost its
    network) does not stall the requests being served meanwhile. ``keys``: a list
    the marked records' keys are added to as they are marked (SQLite writes them)."""
    return await _in_slices(
        lambda: index.expire(cutoff, now, limit=SWEEP_SLICE, reason=reason, keys=keys), None
    )


async def _in_slices(take: Callable[[], list[ModelInstance]], each: Each | None) -> list[ModelInstance]:
    taken: list[ModelInstance] = []
    while True:
        chunk = take()
        taken += chunk
        if each is not None and chunk:
            each(chunk)
        if len(chunk) < SWEEP_SLICE:
            return taken
        await asyncio.sleep(0)


class InstanceIndex:
    def __init__(self) -> None:
        self.records: dict[InstanceKey, ModelInstance] = {}
        # model -> its keys (a dict as an ordered set): membership changes only
        # when an instance comes or goes, so a beat never touches it.
        self._by_model: dict[str, dict[InstanceKey, None]] = {}
        # host -> its key or keys (``add_key``): like ``_by_model``, changed only by
        # comings and goings.
        self._by_host: dict[str, OneOrMore] = {}
        # The records that can expire, by the second of their last beat (lazily: see ``wheel``).
        self._wheel = TimingWheel()
        self._expirable = 0  # how many records the checker watches
        # The unhealthy records that eviction may take, by the second they became
        # unhealthy: so a sweep counts and takes only the buckets past evict-after,
        # not every unhealthy record (a million, the sweeps after a mass failure).
        self._dying: dict[int, dict[InstanceKey, None]] = {}
        # The records starting (not ready, or their check not yet passed), for their grace.
        self._starting: dict[InstanceKey, ModelInstance] = {}
        # Models whose records are not in key order since a registration (see ``list``).
        self._unsorted: set[str] = set()
        # model -> its records and its serving records, in key order, as read last:
        # dropped by any change to the model (one lookup on the beat path for both).
        self._kept: dict[str, _Kept] = {}
        # The walk of an expiry done in slices, and its cutoff, between slices.
        self._expiring: tuple[datetime, Iterator[tuple[InstanceKey, ModelInstance]]] | None = None

    def __len__(self) -> int:
        return len(self.records)

    def sizes(self, model_name: str) -> tuple[int, int]:
        """Instances in all, and of ``model_name``."""
        return len(self.records), len(self._by_model.get(model_name, ()))

    # -- keeping the secondary indexes right ---------------------------------

    def _unlink(self, record: ModelInstance) -> None:
        """Take ``record`` out of the wheel's count and the unhealthy set (before changing it)."""
        self._starting.pop(record.key, None)
        if not record.healthy:
            self._undying(record)
        elif expirable(record):
            self._expirable -= 1
            heard: datetime = record.last_heartbeat  # type: ignore[assignment]
            if heard < self._wheel.settled_before:  # filed exactly there: take it out now
                self._wheel.unfile(record.key, heard)
            # Otherwise its entry stays behind, to be dropped by the next walk
            # over its bucket (``settle``, ``expire``): it may be filed earlier
            # than its last beat, and finding where would cost more than the walk.

    def _link(self, record: ModelInstance, key: InstanceKey | None = None) -> None:
        """Put ``record`` where its current state says (after changing it). A record
        not yet ready is not expired by its heartbeats (its start-up grace is).
        ``key``, when given, is the tuple the index already holds for it (one tuple
        per record then, however many structures file it)."""
        record.state = state = state_of(record)
        if key is None:
            key = record.key
        if state == "starting":
            self._starting[key] = record
        if not record.healthy:
            self._dying_from(key, record)
        elif expirable(record):
            self._expirable += 1
            self._wheel.file(key, second_of(record.last_heartbeat))  # type: ignore[arg-type]

    def _dying_from(self, key: InstanceKey, record: ModelInstance) -> None:
        second = second_of(record.unhealthy_since)
        if second is not None:  # (never heard from, held by its check: never evicted)
            bucket = self._dying.get(second)
            if bucket is None:
                self._dying[second] = {key: None}
            else:
                bucket[key] = None

    def _undying(self, record: ModelInstance) -> None:
        second = second_of(record.unhealthy_since)
        bucket = self._dying.get(second)  # type: ignore[arg-type]
        if bucket is not None:
            bucket.pop(record.key, None)
            if not bucket:
                del self._dying[second]  # type: ignore[arg-type]

    def _evictable(self, cutoff: datetime) -> Iterator[InstanceKey]:
        """The keys of the records unhealthy since before ``cutoff``."""
        last = second_of(cutoff)
        for second, bucket in self._dying.items():
            if second < last:  # type: ignore[operator]
                yield from bucket
            elif second == last:
                yield from (k for k in bucket if self.records[k].unhealthy_since < cutoff)  # type: ignore[operator]

    def _store(self, record: ModelInstance) -> None:
        key = record.key
        self.records[key] = record
        self._kept.pop(record.model_name, None)
        model = self._by_model.get(record.model_name)
        if model is None:
            self._by_model[record.model_name] = {key: None}
        elif key not in model:
            if key < next(reversed(model)):
                self._unsorted.add(record.model_name)  # sorted again by the next listing
            model[key] = None
        self._add_host(key)
        self._link(record, key)

    def _put(self, record: ModelInstance) -> None:
        """Store ``record`` in place of the one with its key (the links are the caller's)."""
        record.state = state_of(record)
        self.records[record.key] = record
        self._kept.pop(record.model_name, None)

    def _swap(self, old: ModelInstance, new: ModelInstance) -> None:
        """Store ``new`` in place of ``old``, wherever its state puts it."""
        self._unlink(old)
        self._put(new)
        self._link(new)

    def _remove(self, record: ModelInstance) -> None:
        self._unlink(record)
        del self.records[record.key]
        self._kept.pop(record.model_name, None)
        model = self._by_model[record.model_name]
        del model[record.key]
        if not model:
            del self._by_model[record.model_name]
            self._unsorted.discard(record.model_name)
        remove_key(self._by_host, record.key.host, record.key)

    def _add_host(self, key: InstanceKey) -> None:
        add_key(self._by_host, key.host, key)

    # -- the contract's primitives, synchronously ----------------------------

    def load(self, records: Iterable[ModelInstance]) -> None:
        """Fill an empty index (at start-up, from a database): ``load_more``, then
        ``loaded``."""
        assert not self.records, "load fills an empty index"
        self.load_more(records)
        self.loaded()

    def load_more(self, records: Iterable[ModelInstance]) -> None:
        """Add records read at start-up (none of them known yet), before ``loaded``.

        Every record that can expire is filed in one bucket, at the dawn of
        time: before its last beat, as the wheel allows, and the first census
        files each where it belongs (``settle``, in slices). So start-up works
        out no record's second, and the service is ready sooner.
        """
        by_key, by_model, starting, dying_from = (
            self.records,
            self._by_model,
            self._starting,
            self._dying_from,
        )
        by_host = self._by_host
        filed = self._wheel.at_dawn()
        for record in records:
            record = compact(record)
            key = record.key
            by_key[key] = record
            model = by_model.get(record.model_name)
            if model is None:
                by_model[record.model_name] = {key: None}
            else:
                model[key] = None
            host = key.host  # (``_add_host``, with one lookup and no call for a host's first key)
            there = by_host.setdefault(host, key)
            if there is not key:
                add_key(by_host, host, key)
            if record.state == "starting":
                starting[key] = record
            if not record.healthy:
                dying_from(key, record)
            elif record.check_healthy and record.ready and record.last_heartbeat is not None:
                filed[key] = None  # (``expirable``, written out: a call a row at start-up)
        self._expirable = len(filed)

    def loaded(self) -> None:
        """What is read is all there is: each model is sorted when it is first listed."""
        self._wheel.drop_empty()
        self._unsorted.update(self._by_model)

    def upsert(self, record: ModelInstance) -> tuple[ModelInstance, bool]:
        previous = self.records.get(record.key)
        stored = clone(record)
        if previous is not None:
            stored.registered_at, stored.cooldown_until = previous.registered_at, previous.cooldown_until
            apply_overrides(stored, previous.overrides)
            self._swap(previous, stored)
        else:
            self._store(stored)
        return stored, previous is None

    def override(self, key: InstanceKey, change: Edit) -> ModelInstance | None:
        record = self.records.get(key)
        if record is None:
            return None
        changed = copy_record(record)
        change(changed)
        self._swap(record, changed)
        return changed

    def set_cooldown(
        self, key: InstanceKey, until: datetime | None, reason: str | None = None
    ) -> ModelInstance | None:
        record = self.records.get(key)
        if record is None:
            return None
        changed = copy_record(record)
        changed.cooldown_until = until
        if record.healthy:
            changed.state_reason = reason
        self._swap(record, changed)
        return changed

    def insert(self, record: ModelInstance) -> ModelInstance | None:
        if record.key in self.records:
            return None
        stored = clone(record)
        self._store(stored)
        return stored

    def beat(self, key: InstanceKey, now: datetime, queue_length: int | None) -> ModelInstance | None:
        """``touch`` for a record that is healthy and has beaten before, the common
        case: returns the new record. ``None`` for any other (nothing changed):
        unknown, unhealthy, or never heard from; ``touch`` deals with those."""
        record = self.records.get(key)
        if record is None or not record.healthy:
            return None
        heard = record.last_heartbeat
        if heard is None:
            return None
        beaten = _new(ModelInstance)  # copy_record(record), without its frame: the hottest path
        beaten.__dict__ = fields = record.__dict__.copy()
        fields["last_heartbeat"] = now
        if queue_length is not None:
            fields["queue_length"] = queue_length
        self.records[key] = beaten
        self._kept.pop(fields["model_name"], None)
        wheel = self._wheel
        if (heard < wheel.settled_before or now < heard) and record.check_healthy:
            # Filed exactly (it was silent at the last census), or the clock went
            # back: file it at this beat now, so the wheel stays as it promises.
            wheel.unfile(key, heard)
            wheel.file(key, second_of(now))  # type: ignore[arg-type]
        # Otherwise it stays filed where it was, before this beat: see ``settle``.
        return beaten

    def touch(
        self, key: InstanceKey, now: datetime, queue_length: int | None
    ) -> tuple[ModelInstance, bool] | None:
        """Returns the record and whether it turned healthy, or None."""
        beaten = self.beat(key, now, queue_length)
        if beaten is not None:
            return beaten, False
        record = self.records.get(key)
        if record is None:
            return None
        beaten = copy_record(record)
        beaten.last_heartbeat = now
        if not record.healthy and not held(record):  # held: the check (or ``ready``) decides
            beaten.healthy, beaten.unhealthy_since, beaten.state_reason = True, None, None
        if queue_length is not None:
            beaten.queue_length = queue_length
        self._swap(record, beaten)
        return beaten, beaten.healthy and not record.healthy

    def set_ready(self, key: InstanceKey, ready: bool) -> ModelInstance | None:
        record = self.records.get(key)
        if record is None:
            return None
        changed = copy_record(record)
        changed.ready = ready
        if ready and held(record) and not held_by_check(record):  # its grace had run out
            changed.healthy, changed.unhealthy_since, changed.state_reason = True, None, None
        self._swap(record, changed)
        return changed

    def overdue_starts(self, now: datetime, default_grace: float) -> list[ModelInstance]:
        """The records starting (``state_of``) whose start-up grace is over at ``now``."""
        overdue = []
        for record in self._starting.values():
            grace = record.startup_grace if record.startup_grace is not None else default_grace
            registered = record.registered_at
            if registered is not None and (now - registered).total_seconds() >= grace:
                overdue.append(record)
        return overdue

    def mark_unhealthy(
        self, key: InstanceKey, now: datetime, reason: str | None = None
    ) -> ModelInstance | None:
        record = self.records.get(key)
        if record is None:
            return None
        marked = copy_record(record)
        if record.healthy or record.unhealthy_since is None:
            marked.unhealthy_since = now
        marked.healthy, marked.state_reason = False, reason
        self._swap(record, marked)
        return marked

    def pass_check(self, key: InstanceKey, heard_after: datetime) -> ModelInstance | None:
        record = self.records.get(key)
        if record is None or not held_by_check(record):
            return None
        if record.last_heartbeat is not None and record.last_heartbeat < heard_after:
            return None  # it beats, and its beats stopped: the heartbeat timeout holds it
        passed = copy_record(record)
        passed.healthy, passed.unhealthy_since, passed.state_reason = True, None, None
        self._swap(record, passed)
        return passed

    def set_load(
        self, key: InstanceKey, waiting: int | None, running: int | None, kv: float | None, at: datetime
    ) -> ModelInstance | None:
        record = self.records.get(key)
        if record is None:
            return None
        loaded = _new(ModelInstance)  # no state changes: no links to mend (as ``beat``)
        loaded.__dict__ = fields = record.__dict__.copy()
        fields["waiting"], fields["running"], fields["kv_cache_usage"], fields["load_at"] = (
            waiting,
            running,
            kv,
            at,
        )
        self._put(loaded)
        return loaded

    def delete(self, key: InstanceKey) -> ModelInstance | None:
        record = self.records.get(key)
        if record is None:
            return None
        self._remove(record)
        return record

    def settle(self, cutoff: datetime, limit: int | None = None) -> bool:
        """File the wheel's records up to ``cutoff`` where their last beats put
        them (``TimingWheel.settle``), so that ``census`` counts exactly. From
        then on a beat, or any change, of a record filed there moves it at once
        (see ``beat``, ``_unlink``). Returns whether it is done."""
        return self._wheel.settle(self.records, cutoff, limit)

    def expire(
        self,
        cutoff: datetime,
        now: datetime,
        limit: int | None = None,
        reason: str | None = None,
        keys: list[InstanceKey] | None = None,
    ) -> list[ModelInstance]:
        """Mark unhealthy the expirable records last heard before ``cutoff``,
        visiting only the wheel's buckets up to it. ``limit`` bounds the work
        of one call, so a caller can yield between calls: the next call with the
        same cutoff goes on with the same walk (at a million, starting over each
        time would copy the bucket a thousand times). ``keys``: a list to add the
        marked records' keys to.

        A mass failure marks a million here: what ``_put`` and ``_dying_from`` do for
        each is written out, with what is the same for all (their state, the second
        they are filed under as dying) worked out once."""
        walk = self._expiring
        if walk is None or walk[0] != cutoff:
            walk = self._expiring = cutoff, self._wheel.silent(self.records, cutoff)
        records, kept, dying = self.records, self._kept, None
        expired: list[ModelInstance] = []
        for key, record in walk[1]:
            marked = _new(ModelInstance)  # copy_record(record), then its health
            marked.__dict__ = fields = record.__dict__.copy()
            fields["healthy"], fields["unhealthy_since"], fields["state_reason"] = False, now, reason
            if dying is None:
                state = state_of(marked)
                dying = self._dying.setdefault(second_of(now), {})  # type: ignore[arg-type]
            fields["state"] = state
            records[key] = marked
            kept.pop(fields["model_name"], None)
            dying[key] = None
            expired.append(marked)
            if keys is not None:
                keys.append(key)
            if limit is not None and len(expired) >= limit:
                break
        else:
            self._expiring = None
        self._expirable -= len(expired)
        return expired

    def census(self, expire_cutoff: datetime, evict_cutoff: datetime) -> Census:
        self.settle(expire_cutoff)  # (nothing to do after settle_in_slices)
        # Settled: the buckets up to the cutoff hold each silent record once.
        silent = self._wheel.silent_through(expire_cutoff)
        last = second_of(evict_cutoff)
        evictable = sum(len(bucket) for second, bucket in self._dying.items() if second < last)  # type: ignore[operator]
        evictable += sum(
            1 for key in self._dying.get(last, ()) if self.records[key].unhealthy_since < evict_cutoff
        )  # type: ignore[arg-type, operator]
        return Census(self._expirable, silent, len(self.records), evictable)

    def evict(self, cutoff: datetime, limit: int | None = None) -> list[ModelInstance]:
        """Delete the records unhealthy since before ``cutoff``; at most ``limit``
        in one call, so a caller can yield between calls."""
        doomed = [self.records[key] for key in itertools.islice(self._evictable(cutoff), limit)]
        for record in doomed:
            self._remove(record)
        return doomed

    # -- reads -------------------------------------------------------------

    def get(self, key: InstanceKey) -> ModelInstance | None:
        return self.records.get(key)

    def list(
        self, model_name: str | None = None, healthy_only: bool = False, now: datetime | None = None
    ) -> list[ModelInstance]:
        if model_name is None:  # every record: sort the keys (tuples sort without a key function)
            records = map(self.records.__getitem__, sorted(self.records))
        else:
            kept = self._kept.get(model_name)
            if healthy_only and now is not None:
                serving = None if kept is None else kept.serving
                return serving if serving is not None else self._serve(model_name, now)
            if not healthy_only:
                listed = None if kept is None else kept.listed
                return listed if listed is not None else self._list(model_name)
            records = self._model(model_name)
        if healthy_only:
            if now is None:
                return [r for r in records if r.healthy and r.ready]
            return [r for r in records if r.healthy and r.ready and not r.in_cooldown(now)]
        return list(records)

    def at(self, host: str, port: int, *, ordered: bool = True) -> list[ModelInstance]:
        at = self._by_host.get(host)
        if at is None:
            return []
        if type(at) is not dict:
            return [self.records[at]] if at.port == port else []
        keys = [key for key in at if key.port == port]
        return list(map(self.records.__getitem__, sorted(keys) if ordered else keys))

    def _model(self, model_name: str) -> Iterable[ModelInstance]:
        """One model's records, in key order (sorted again after a registration)."""
        if model_name in self._unsorted:
            self._unsorted.discard(model_name)
            self._by_model[model_name] = dict.fromkeys(sorted(self._by_model[model_name]))
        return map(self.records.__getitem__, self._by_model.get(model_name, ()))

    def _serve(self, model_name: str, now: datetime) -> list[ModelInstance]:
        """The model's serving records at ``now``, kept for the next reads unless
        a cooldown makes the answer depend on the time."""
        healthy = [r for r in self._model(model_name) if r.healthy and r.ready]
        if any(r.cooldown_until is not None for r in healthy):
            return [r for r in healthy if not r.in_cooldown(now)]
        if model_name not in self._by_model:  # never kept for a name nobody registered
            return healthy
        self._keeping(model_name).serving = serving = Snapshot(healthy)
        return serving

    def _list(self, model_name: str) -> list[ModelInstance]:
        """The model's records, kept for the next reads (a router's listing, the
        long-polls a change wakes: each then writes the answer once)."""
        if model_name not in self._by_model:
            return []
        self._keeping(model_name).listed = listed = Snapshot(self._model(model_name))
        return listed

    def _keeping(self, model_name: str) -> _Kept:
        kept = self._kept.get(model_name)
        if kept is None:
            self._kept[model_name] = kept = _Kept()
        return kept

    def summarize(self, now: datetime | None = None) -> list[ModelSummary]:
        summaries = []
        for name in sorted(self._by_model):
            keys = self._by_model[name]
            healthy = enabled = available = 0
            for r in map(self.records.__getitem__, keys):
                healthy += r.healthy
                enabled += r.enabled
                available += r.healthy and r.ready and r.enabled and (now is None or not r.in_cooldown(now))
            summaries.append(ModelSummary(name, len(keys), healthy, enabled, available))
        return summaries


class _Kept:
    """A model's reads, kept until it changes: all its records, its serving ones."""

    __slots__ = ("listed", "serving")

    def __init__(self) -> None:
        self.listed: Snapshot | None = None
        self.serving: Snapshot | None = None


class IndexReads:
    """The contract's reads, served from ``self._index`` (backends that keep one)."""

    _index: InstanceIndex

    def sizes(self, model_name: str) -> tuple[int, int]:
        return self._index.sizes(model_name)

    def records_now(self) -> Iterable[ModelInstance]:
        return self._index.records.values()

    async def get(self, key: InstanceKey) -> ModelInstance | None:
        return self._index.get(key)

    async def list(
        self, model_name: str | None = None, healthy_only: bool = False, now: datetime | None = None
    ) -> list[ModelInstance]:
        return self._index.list(model_name, healthy_only, now)

    async def at(self, host: str, port: int) -> list[ModelInstance]:
        return self._index.at(host, port)

    def at_now(self, host: str, port: int) -> list[ModelInstance] | None:
        return self._index.at(host, port, ordered=False)

    def list_now(
        self, model_name: str | None, healthy_only: bool = False, now: datetime | None = None
    ) -> list[ModelInstance]:
        return self._index.list(model_name, healthy_only, now)

    async def summarize(self, now: datetime | None = None) -> list[ModelSummary]:
        return self._index.summarize(now)

    async def census(self, expire_cutoff: datetime, evict_cutoff: datetime) -> Census:
        await settle_in_slices(self._index, expire_cutoff)
        return self._index.census(expire_cutoff, evict_cutoff)
