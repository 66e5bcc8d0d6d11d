"""``InstanceIndex``: every record in memory, indexed for the hot paths.

- by key (heartbeats, registrations): a dict;
- by model (listing and selecting one model's instances): each model's keys,
  so a read touches only that model's records, never the whole fleet, and a
  beat (which changes no membership) touches no per-model structure;
- by heartbeat age (the checker): a timing wheel of one-second buckets holding
  the records that can expire (healthy and ``check_healthy``), so a sweep
  visits only the buckets older than the cutoff, not every record;
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
import sys
from collections.abc import Iterable
from datetime import datetime

import orjson

from .model import NO_METADATA, Census, InstanceKey, ModelInstance, ModelSummary, Snapshot, apply_overrides
from .model import override as apply_operator_changes

__all__ = ["IndexReads", "InstanceIndex", "clone", "expire_in_slices"]


def clone(record: ModelInstance) -> ModelInstance:
    """A copy of ``record`` that shares nothing mutable with it.

    Metadata is JSON by construction, so a JSON round trip copies it deeply,
    and several times faster than ``copy.deepcopy``.
    """
    copy = _new(ModelInstance)
    copy.__dict__.update(record.__dict__)  # into a fresh, key-sharing dict, whatever the caller's is
    if record.metadata:
        copy.metadata = orjson.loads(orjson.dumps(record.metadata))
    if record.overrides:
        copy.overrides = orjson.loads(orjson.dumps(record.overrides))
    return _compact(copy)


_new = object.__new__

#: Values that many records repeat, one object each (see ``_compact``), by type:
#: ``1 == 1.0``, but a weight must stay a float.
_PORTS: dict[int, int] = {}
_WEIGHTS: dict[float, float] = {}
_MAX_SHARED = 4096  # per table: a fleet repeats a handful, a stranger gets no more


def _compact(record: ModelInstance) -> ModelInstance:
    """``record`` with its model name, port and weight replaced by one shared
    object per value (they are immutable), and empty metadata by ``NO_METADATA``.

    A fleet repeats a handful of ports and weights, and every instance of a
    model its name; sharing them saves memory, and a read or a beat of a
    record then finds most of its values already in the CPU's cache instead
    of one cold object each.
    """
    fields = record.__dict__
    fields["model_name"] = sys.intern(fields["model_name"])
    if not fields["metadata"]:
        fields["metadata"] = NO_METADATA
    port, weight = fields["port"], fields["weight"]
    if type(port) is int:
        fields["port"] = _share(_PORTS, port)
    if type(weight) is float:
        fields["weight"] = _share(_WEIGHTS, weight)
    return record


def _share(table: dict, value: object) -> object:
    shared = table.get(value)
    if shared is None:
        if len(table) < _MAX_SHARED:
            table[value] = value
        return value
    return shared


def _copy(record: ModelInstance) -> ModelInstance:
    """A shallow copy, to change in place of ``record`` (whose mutable fields are never
    changed in place either, so sharing them is safe)."""
    copy = _new(ModelInstance)
    copy.__dict__ = record.__dict__.copy()  # a split dict's copy: its values, keys shared
    return copy


def _bucket(moment: datetime | None) -> int | None:
    return None if moment is None else int(moment.timestamp())


#: Records a sweep marks before it lets other work run.
SWEEP_SLICE = 1000


async def expire_in_slices(index: InstanceIndex, cutoff: datetime, now: datetime) -> list[ModelInstance]:
    """``index.expire`` in slices, yielding to the event loop between them, so
    that a sweep which finds many silent instances at once (a rack lost its
    network) does not stall the requests being served meanwhile."""
    expired: list[ModelInstance] = []
    while True:
        chunk = index.expire(cutoff, now, limit=SWEEP_SLICE)
        expired += chunk
        if len(chunk) < SWEEP_SLICE:
            return expired
        await asyncio.sleep(0)


class InstanceIndex:
    def __init__(self) -> None:
        self.records: dict[InstanceKey, ModelInstance] = {}
        # model -> its keys (a dict as an ordered set): membership changes only
        # when an instance comes or goes, so a beat never touches it.
        self._by_model: dict[str, dict[InstanceKey, None]] = {}
        self._wheel: dict[int, dict[InstanceKey, None]] = {}
        self._unhealthy: dict[InstanceKey, ModelInstance] = {}
        # Models whose records are not in key order since a registration (see ``list``).
        self._unsorted: set[str] = set()
        # model -> its serving records, in key order; dropped by any change to the model.
        self._serving: dict[str, Snapshot] = {}

    def __len__(self) -> int:
        return len(self.records)

    # -- keeping the secondary indexes right ---------------------------------

    def _unlink(self, record: ModelInstance) -> None:
        """Take ``record`` out of the wheel and the unhealthy set (before changing it)."""
        if record.healthy:
            if record.check_healthy:
                second = _bucket(record.last_heartbeat)
                bucket = self._wheel.get(second)  # type: ignore[arg-type]
                if bucket is not None:
                    bucket.pop(record.key, None)
                    if not bucket:  # an emptied dict keeps its table: let it go
                        del self._wheel[second]  # type: ignore[arg-type]
        else:
            self._unhealthy.pop(record.key, None)

    def _link(self, record: ModelInstance) -> None:
        """Put ``record`` where its current state says (after changing it)."""
        if record.healthy:
            if record.check_healthy and record.last_heartbeat is not None:
                self._wheel.setdefault(_bucket(record.last_heartbeat), {})[record.key] = None  # type: ignore[index]
        else:
            self._unhealthy[record.key] = record

    def _store(self, record: ModelInstance) -> None:
        key = record.key
        self.records[key] = record
        self._serving.pop(record.model_name, None)
        model = self._by_model.get(record.model_name)
        if model is None:
            self._by_model[record.model_name] = {key: None}
        elif key not in model:
            if key < next(reversed(model)):
                self._unsorted.add(record.model_name)  # sorted again by the next listing
            model[key] = None
        self._link(record)

    def _put(self, record: ModelInstance) -> None:
        """Store ``record`` in place of the one with its key (the links are the caller's)."""
        self.records[record.key] = record
        self._serving.pop(record.model_name, None)

    def _swap(self, old: ModelInstance, new: ModelInstance) -> None:
        """Store ``new`` in place of ``old``, wherever its state puts it."""
        self._unlink(old)
        self._put(new)
        self._link(new)

    def _remove(self, record: ModelInstance) -> None:
        self._unlink(record)
        del self.records[record.key]
        self._serving.pop(record.model_name, None)
        model = self._by_model[record.model_name]
        del model[record.key]
        if not model:
            del self._by_model[record.model_name]
            self._unsorted.discard(record.model_name)

    # -- the contract's primitives, synchronously ----------------------------

    def load(self, records: Iterable[ModelInstance]) -> None:
        """Fill an empty index (at start-up, from a database)."""
        by_key, by_model, link = self.records, self._by_model, self._link
        for record in records:
            record = _compact(record)
            key = record.key
            by_key[key] = record
            model = by_model.get(record.model_name)
            if model is None:
                by_model[record.model_name] = {key: None}
            else:
                model[key] = None
            link(record)
        self._unsorted.update(by_model)  # each is sorted when it is first listed

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

    def override(self, key: InstanceKey, changes: dict) -> ModelInstance | None:
        record = self.records.get(key)
        if record is None:
            return None
        changed = _copy(record)
        apply_operator_changes(changed, changes)
        self._swap(record, changed)
        return changed

    def set_cooldown(self, key: InstanceKey, until: datetime | None) -> ModelInstance | None:
        record = self.records.get(key)
        if record is None:
            return None
        changed = _copy(record)
        changed.cooldown_until = until
        self._swap(record, changed)
        return changed

    def insert(self, record: ModelInstance) -> ModelInstance | None:
        if record.key in self.records:
            return None
        stored = clone(record)
        self._store(stored)
        return stored

    def touch(
        self, key: InstanceKey, now: datetime, queue_length: int | None
    ) -> tuple[ModelInstance, bool] | None:
        """Returns the record and whether it turned healthy, or None."""
        record = self.records.get(key)
        if record is None:
            return None
        beaten = _new(ModelInstance)  # _copy(record), without its frame: the hottest path
        beaten.__dict__ = fields = record.__dict__.copy()
        if queue_length is not None:
            fields["queue_length"] = queue_length
        revived = not record.healthy
        if revived or not record.check_healthy or record.last_heartbeat is None:
            fields["last_heartbeat"], fields["healthy"], fields["unhealthy_since"] = now, True, None
            self._swap(record, beaten)
            return beaten, revived
        # The common case: healthy and beating; move buckets only if the second changed.
        # (What follows is _put and the wheel's part of _swap, without their frames.)
        fields["last_heartbeat"] = now
        self.records[key] = beaten
        self._serving.pop(record.model_name, None)
        old, new = int(record.last_heartbeat.timestamp()), int(now.timestamp())
        if old != new:
            wheel = self._wheel
            bucket = wheel[old]  # a healthy, checked record is always in its bucket
            del bucket[key]
            if not bucket:
                # Gone as soon as it is empty: a dict keeps the table it grew to
                # (a second's beats: thousands of entries), and beats empty one
                # bucket a second, long before the sweep reaches its second.
                del wheel[old]
            bucket = wheel.get(new)
            if bucket is None:
                wheel[new] = bucket = {}
            bucket[key] = None
        return beaten, False

    def mark_unhealthy(self, key: InstanceKey, now: datetime) -> ModelInstance | None:
        record = self.records.get(key)
        if record is None:
            return None
        marked = _copy(record)
        if record.healthy or record.unhealthy_since is None:
            marked.unhealthy_since = now
        marked.healthy = False
        self._swap(record, marked)
        return marked

    def delete(self, key: InstanceKey) -> ModelInstance | None:
        record = self.records.get(key)
        if record is None:
            return None
        self._remove(record)
        return record

    def expire(self, cutoff: datetime, now: datetime, limit: int | None = None) -> list[ModelInstance]:
        """Mark unhealthy the expirable records last heard before ``cutoff``.

        Visits only the wheel's buckets up to the cutoff's second. ``limit``
        bounds the work of one call, so a caller can yield between calls.
        """
        last = _bucket(cutoff)
        expired: list[ModelInstance] = []
        for second in sorted(b for b in self._wheel if b <= last):  # type: ignore[operator]
            bucket = self._wheel[second]
            for key in list(bucket):
                record = self.records[key]
                if record.last_heartbeat >= cutoff:  # type: ignore[operator]
                    continue  # the cutoff's own second: later in that second
                del bucket[key]
                marked = _copy(record)
                marked.healthy, marked.unhealthy_since = False, now
                self._put(marked)
                self._unhealthy[key] = marked
                expired.append(marked)
                if limit is not None and len(expired) >= limit:
                    return expired
            if not bucket:
                del self._wheel[second]
        return expired

    def census(self, expire_cutoff: datetime, evict_cutoff: datetime) -> Census:
        last = _bucket(expire_cutoff)
        checked = silent = 0
        for second, bucket in self._wheel.items():  # one entry per second of beats: few
            checked += len(bucket)
            if second <= last:  # type: ignore[operator]
                silent += len(bucket)
        evictable = sum(
            1
            for r in self._unhealthy.values()
            if r.unhealthy_since is not None and r.unhealthy_since < evict_cutoff
        )
        return Census(checked, silent, len(self.records), evictable)

    def evict(self, cutoff: datetime) -> list[ModelInstance]:
        doomed = [
            r
            for r in self._unhealthy.values()
            if r.unhealthy_since is not None and r.unhealthy_since < cutoff
        ]
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
            if healthy_only and now is not None:
                serving = self._serving.get(model_name)
                return serving if serving is not None else self._serve(model_name, now)
            records = self._model(model_name)
        if healthy_only:
            if now is None:
                return [r for r in records if r.healthy]
            return [r for r in records if r.healthy and not r.in_cooldown(now)]
        return list(records)

    def _model(self, model_name: str) -> Iterable[ModelInstance]:
        """One model's records, in key order (sorted again after a registration)."""
        if model_name in self._unsorted:
            self._unsorted.discard(model_name)
            self._by_model[model_name] = dict.fromkeys(sorted(self._by_model[model_name]))
        return map(self.records.__getitem__, self._by_model.get(model_name, ()))

    def _serve(self, model_name: str, now: datetime) -> list[ModelInstance]:
        """The model's serving records at ``now``, kept for the next reads unless
        a cooldown makes the answer depend on the time."""
        healthy = [r for r in self._model(model_name) if r.healthy]
        if any(r.cooldown_until is not None for r in healthy):
            return [r for r in healthy if not r.in_cooldown(now)]
        if model_name not in self._by_model:  # never kept for a name nobody registered
            return healthy
        self._serving[model_name] = serving = Snapshot(healthy)
        return serving

    def summarize(self, now: datetime | None = None) -> list[ModelSummary]:
        summaries = []
        for name in sorted(self._by_model):
            keys = self._by_model[name]
            healthy = enabled = available = 0
            for r in map(self.records.__getitem__, keys):
                healthy += r.healthy
                enabled += r.enabled
                available += r.healthy and r.enabled and (now is None or not r.in_cooldown(now))
            summaries.append(ModelSummary(name, len(keys), healthy, enabled, available))
        return summaries


class IndexReads:
    """The contract's reads, served from ``self._index`` (backends that keep one)."""

    _index: InstanceIndex

    async def get(self, key: InstanceKey) -> ModelInstance | None:
        return self._index.get(key)

    async def list(
        self, model_name: str | None = None, healthy_only: bool = False, now: datetime | None = None
    ) -> list[ModelInstance]:
        return self._index.list(model_name, healthy_only, now)

    async def summarize(self, now: datetime | None = None) -> list[ModelSummary]:
        return self._index.summarize(now)

    async def census(self, expire_cutoff: datetime, evict_cutoff: datetime) -> Census:
        return self._index.census(expire_cutoff, evict_cutoff)
