"""InstanceIndex against a naive model: any sequence of operations, same answers."""

from __future__ import annotations

import dataclasses
import gc
from datetime import datetime, timedelta, timezone

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from model_registry.storage import Census, InstanceKey, ModelInstance, Snapshot
from model_registry.storage.index import InstanceIndex
from model_registry.storage.interning import collector_paused

T0 = datetime(2026, 5, 1, tzinfo=timezone.utc)
KEYS = [InstanceKey(m, "h", p) for m in ("a", "b") for p in (1, 2, 3)]


class Naive:
    """The contract, spelled out over a plain dict with full scans."""

    def __init__(self) -> None:
        self.records: dict[InstanceKey, ModelInstance] = {}

    def upsert(self, record):
        old = self.records.get(record.key)
        stored = dataclasses.replace(record, registered_at=old.registered_at if old else record.registered_at)
        self.records[record.key] = stored
        return stored, old is None

    def touch(self, key, now, queue_length):
        r = self.records.get(key)
        if r is None:
            return None
        revived = not r.healthy
        q = r.queue_length if queue_length is None else queue_length
        self.records[key] = dataclasses.replace(
            r, last_heartbeat=now, healthy=True, unhealthy_since=None, queue_length=q
        )
        return self.records[key], revived

    def mark_unhealthy(self, key, now):
        r = self.records.get(key)
        if r is None:
            return None
        since = now if r.healthy or r.unhealthy_since is None else r.unhealthy_since
        self.records[key] = dataclasses.replace(r, healthy=False, unhealthy_since=since)
        return self.records[key]

    def delete(self, key):
        return self.records.pop(key, None)

    def expire(self, cutoff, now):
        out = []
        for key, r in sorted(self.records.items()):
            if r.healthy and r.check_healthy and r.last_heartbeat < cutoff:
                self.records[key] = dataclasses.replace(r, healthy=False, unhealthy_since=now)
                out.append(self.records[key])
        return out

    def census(self, expire_cutoff, evict_cutoff):
        watched = [r for r in self.records.values() if r.healthy and r.check_healthy and r.last_heartbeat]
        last = int(expire_cutoff.timestamp())  # counted by the second, as the wheel does
        return Census(
            len(watched),
            sum(int(r.last_heartbeat.timestamp()) <= last for r in watched),
            len(self.records),
            sum(not r.healthy and r.unhealthy_since < evict_cutoff for r in self.records.values()),
        )

    def evict(self, cutoff):
        doomed = [k for k, r in sorted(self.records.items()) if not r.healthy and r.unhealthy_since < cutoff]
        return [self.records.pop(k) for k in doomed]

    def list(self, model_name=None, healthy_only=False):
        return [
            r
            for k, r in sorted(self.records.items())
            if (model_name is None or k.model_name == model_name) and (r.healthy or not healthy_only)
        ]


operations = st.lists(
    st.tuples(
        st.sampled_from(
            ["upsert", "touch", "mark", "delete", "expire", "census", "settle", "evict", "reload"]
            + ["tick", "back"]  # the clock
        ),
        st.sampled_from(KEYS),
        st.integers(0, 90),
        st.booleans(),
    ),
    max_size=60,
)


@settings(max_examples=300, deadline=None)
@given(operations)
def test_index_agrees_with_the_naive_model(ops) -> None:
    index, naive, now = InstanceIndex(), Naive(), T0
    for op, key, seconds, flag in ops:
        if op == "tick":
            now += timedelta(seconds=seconds, microseconds=seconds * 777)
        elif op == "back":  # the wall clock stepped back
            now -= timedelta(seconds=seconds // 10, microseconds=seconds * 333)
        elif op == "upsert":
            record = ModelInstance(
                *key, check_healthy=flag, healthy=True, last_heartbeat=now, registered_at=now, weight=seconds
            )
            assert index.upsert(record) == naive.upsert(record)
        elif op == "touch":
            assert index.touch(key, now, seconds if flag else None) == naive.touch(
                key, now, seconds if flag else None
            )
        elif op == "mark":
            assert index.mark_unhealthy(key, now) == naive.mark_unhealthy(key, now)
        elif op == "delete":
            assert index.delete(key) == naive.delete(key)
        elif op == "expire":
            cutoff = now - timedelta(seconds=seconds)
            assert sorted(index.expire(cutoff, now), key=lambda r: r.key) == naive.expire(cutoff, now)
        elif op == "reload":  # a restart: the records, loaded into a new index
            index, old = InstanceIndex(), index
            index.load(dataclasses.replace(r) for r in old.records.values())
        elif op == "settle":  # a census's first steps, then anything may happen
            index.settle(now - timedelta(seconds=seconds), limit=1 + seconds % 3)
        elif op == "census":
            cutoffs = now - timedelta(seconds=seconds), now - timedelta(seconds=90 - seconds)
            assert index.census(*cutoffs) == naive.census(*cutoffs)
        elif op == "evict":
            cutoff = now - timedelta(seconds=seconds)
            assert sorted(index.evict(cutoff), key=lambda r: r.key) == naive.evict(cutoff)
        for model in (None, "a", "b"):
            for healthy_only in (False, True):
                assert index.list(model, healthy_only) == naive.list(model, healthy_only)


def test_a_sweep_visits_only_buckets_before_the_cutoff() -> None:
    index = InstanceIndex()
    for n in range(1000):
        moment = T0 + timedelta(seconds=n)
        index.upsert(ModelInstance("m", "h", n + 1, healthy=True, last_heartbeat=moment, registered_at=T0))
    assert len(index._wheel.buckets) == 1000
    expired = index.expire(T0 + timedelta(seconds=10), T0 + timedelta(seconds=1000))
    assert [r.port for r in expired] == list(range(1, 11))
    assert len(index._wheel.buckets) == 990  # the ten old buckets are gone, the rest untouched


def test_expire_can_be_done_in_slices() -> None:
    index = InstanceIndex()
    for n in range(25):
        index.upsert(ModelInstance("m", "h", n + 1, healthy=True, last_heartbeat=T0, registered_at=T0))
    later = T0 + timedelta(minutes=5)
    slices = [index.expire(later, later, limit=10) for _ in range(4)]
    assert [len(s) for s in slices] == [10, 10, 5, 0]


def test_eviction_counts_and_takes_only_the_seconds_past_its_cutoff_in_slices() -> None:
    index = InstanceIndex()
    for n in range(30):
        index.upsert(ModelInstance("m", "h", n + 1, healthy=True, last_heartbeat=T0, registered_at=T0))
        index.mark_unhealthy(InstanceKey("m", "h", n + 1), T0 + timedelta(seconds=n // 10, microseconds=n))
    assert len(index._dying) == 3  # three seconds, ten records each
    cutoff = T0 + timedelta(seconds=2, microseconds=25)  # within the third second
    assert index.census(T0, cutoff).evictable == 25
    slices = [index.evict(cutoff, limit=10) for _ in range(4)]
    assert [len(s) for s in slices] == [10, 10, 5, 0]
    assert sorted(r.port for s in slices for r in s) == list(range(1, 26))
    assert list(index._dying) == [int(T0.timestamp()) + 2]  # emptied seconds go
    index.upsert(ModelInstance("m", "h", 30, healthy=True, last_heartbeat=T0, registered_at=T0))  # revived
    assert index.census(T0, T0 + timedelta(hours=1)).evictable == 4


def test_records_without_metadata_share_one_that_refuses_changes() -> None:
    index = InstanceIndex()
    first = index.insert(ModelInstance("m", "10.0.0.1", 8000, metadata={}))
    second = index.insert(ModelInstance("m", "10.0.0.2", 8000))
    assert first.metadata is second.metadata == {}
    assert orjson.dumps(first.metadata) == b"{}"
    with pytest.raises(TypeError, match="read-only"):
        first.metadata["zone"] = "a"  # would have reached every record
    assert second.metadata == {}
    assert dataclasses.replace(first, metadata={"zone": "a"}).metadata == {"zone": "a"}
    kept = index.insert(ModelInstance("m", "10.0.0.3", 8000, metadata={"zone": "b"}))
    assert kept.metadata == {"zone": "b"} and kept.metadata is not first.metadata


def test_serving_snapshot_is_shared_until_the_model_changes() -> None:
    index = InstanceIndex()
    for port in (1, 2):
        index.insert(ModelInstance("m", "h", port, healthy=True, last_heartbeat=T0, registered_at=T0))
    index.insert(ModelInstance("other", "h", 1, healthy=True, last_heartbeat=T0, registered_at=T0))
    first = index.list("m", True, T0)
    assert isinstance(first, Snapshot) and first.memo is None and [r.port for r in first] == [1, 2]
    first.memo = b"kept by a reader"
    assert index.list("m", True, T0) is first  # read again: the same answer, memo and all
    index.touch(InstanceKey("other", "h", 1), T0 + timedelta(seconds=1), 3)
    assert index.list("m", True, T0) is first  # another model's beat changes nothing here
    index.touch(InstanceKey("m", "h", 2), T0 + timedelta(seconds=1), 3)
    after = index.list("m", True, T0)
    assert after is not first and after.memo is None and after[1].queue_length == 3
    assert first[1].queue_length is None  # what was handed out stays as it was


@pytest.mark.parametrize(
    "change",
    [
        lambda s: s.append(None),
        lambda s: s.extend([]),
        lambda s: s.insert(0, None),
        lambda s: s.pop(),
        lambda s: s.remove(s[0]),
        lambda s: s.clear(),
        lambda s: s.sort(),
        lambda s: s.reverse(),
        lambda s: s.__setitem__(0, None),
        lambda s: s.__delitem__(0),
        lambda s: s.__iadd__([]),
        lambda s: s.__imul__(2),
    ],
)
def test_a_snapshot_refuses_every_change(change) -> None:
    snapshot = Snapshot([ModelInstance("m", "h", 1)])
    with pytest.raises(TypeError, match="shared and read-only"):
        change(snapshot)
    assert len(snapshot) == 1 and snapshot == [ModelInstance("m", "h", 1)]
    assert orjson.loads(orjson.dumps(snapshot))[0]["port"] == 1  # serialised as the list it is


def _fleet(count: int) -> tuple[InstanceIndex, list[InstanceKey]]:
    index = InstanceIndex()
    keys = [InstanceKey("m", "h", port) for port in range(1, count + 1)]
    for key in keys:
        index.insert(ModelInstance(*key, healthy=True, last_heartbeat=T0, registered_at=T0))
    return index, keys


def _at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


FIRST = int(T0.timestamp())  # T0's bucket


def test_beats_leave_the_wheel_to_the_census() -> None:
    """A beat does no wheel work: its record stays filed where it was, and the
    census files it again where its last beat puts it (once per heartbeat
    timeout, rather than once per beat)."""
    index, keys = _fleet(100)
    for second in range(1, 50):
        for key in keys:
            index.touch(key, _at(second), None)
    assert list(index._wheel.buckets) == [FIRST]
    assert index.census(_at(10), T0) == Census(checked=100, silent=0, total=100, evictable=0)
    assert list(index._wheel.buckets) == [FIRST + 49] and len(index._wheel.buckets[FIRST + 49]) == 100


def test_what_a_change_leaves_in_the_wheel_goes_with_the_next_census() -> None:
    index, keys = _fleet(10)
    for key in keys:
        index.touch(key, _at(5), None)
    for key in keys[:4]:
        index.delete(key)
    for key in keys[4:6]:
        index.mark_unhealthy(key, _at(6))
    assert len(index._wheel.buckets[FIRST]) == 10  # left behind, not looked for
    assert index.census(_at(1), _at(1)) == Census(checked=4, silent=0, total=6, evictable=0)
    assert index._wheel.buckets == {FIRST + 5: dict.fromkeys(keys[6:])}


def test_past_the_cutoff_the_wheel_is_exact_and_an_emptied_bucket_goes() -> None:
    """After a census, each bucket up to its cutoff holds exactly the records last
    heard in it, so a beat or a change there moves the record at once; and a
    bucket emptied so goes at once (an emptied dict keeps the table it grew to)."""
    index, keys = _fleet(100)
    assert index.census(_at(60), T0).silent == 100  # all silent: held, say, by self-preservation
    for key in keys[:99]:
        index.touch(key, _at(61), None)  # they come back
    assert index._wheel.buckets == {FIRST: {keys[99]: None}, FIRST + 61: dict.fromkeys(keys[:99])}
    assert index.census(_at(60), T0).silent == 1
    index.delete(keys[99])
    assert list(index._wheel.buckets) == [FIRST + 61]
    assert index.census(_at(60), T0) == Census(checked=99, silent=0, total=99, evictable=0)


def test_settle_can_be_done_in_slices() -> None:
    index = InstanceIndex()
    for n in range(25):
        index.insert(ModelInstance("m", "h", n + 1, healthy=True, last_heartbeat=_at(n), registered_at=T0))
        index.touch(InstanceKey("m", "h", n + 1), _at(100), None)
    steps = [index.settle(_at(50), limit=10) for _ in range(3)]
    assert steps == [False, False, True]
    assert list(index._wheel.buckets) == [FIRST + 100]


def test_the_collector_is_paused_for_a_load_and_left_as_it_was() -> None:
    assert gc.isenabled()
    with collector_paused():
        assert not gc.isenabled()
    assert gc.isenabled()
    gc.disable()
    try:
        with collector_paused():
            pass
        assert not gc.isenabled()  # paused by someone else: theirs to resume
    finally:
        gc.enable()
