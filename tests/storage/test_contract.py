"""The storage contract, run against every backend (see conftest's storage_url)."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from datetime import datetime, timedelta, timezone

import pytest

from model_registry.pins import changer
from model_registry.storage import InstanceKey, ModelInstance, ModelSummary, Snapshot, Storage, open_storage

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=timezone.utc)


def record(name: str = "m", host: str = "10.0.0.1", port: int = 8000, **fields) -> ModelInstance:
    base = dict(healthy=True, last_heartbeat=T0, registered_at=T0)
    return ModelInstance(name, host, port, **{**base, **fields})


async def test_upsert_creates_then_updates_keeping_registered_at(storage: Storage) -> None:
    stored, created = await storage.upsert(record(weight=2.0, metadata={"gpu": "a100"}))
    assert created and stored.weight == 2.0 and stored.metadata == {"gpu": "a100"}
    later = T0 + timedelta(minutes=5)
    again, created = await storage.upsert(
        record(weight=3.0, registered_at=later, last_heartbeat=later, prompt_template="vicuna")
    )
    assert not created
    assert again.weight == 3.0 and again.prompt_template == "vicuna" and again.metadata == {}
    assert again.registered_at == T0 and again.last_heartbeat == later
    assert await storage.list() == [again]


async def test_round_trip_keeps_every_field(storage: Storage) -> None:
    full = record(
        "meta-llama/Llama-3.1-8B-Instruct",
        "::1",
        65535,
        weight=0.25,
        check_healthy=False,
        enabled=False,
        prompt_template="llama-3",
        metadata={"nested": {"list": [1, 2.5, None, True]}, "ünï": "çødé"},
        unhealthy_since=None,
        queue_length=7,
    )
    stored, _ = await storage.upsert(full)
    assert stored == full
    assert await storage.get(full.key) == full
    assert stored.last_heartbeat.tzinfo is not None


async def test_insert_only_when_absent(storage: Storage) -> None:
    assert await storage.insert(record(weight=5.0)) == record(weight=5.0)
    assert await storage.insert(record(weight=9.0)) is None
    assert (await storage.get(InstanceKey("m", "10.0.0.1", 8000))).weight == 5.0


async def test_touch_records_a_heartbeat(storage: Storage) -> None:
    await storage.upsert(record(healthy=False, unhealthy_since=T0, queue_length=4))
    later = T0 + timedelta(seconds=10)
    touched, revived = await storage.touch(InstanceKey("m", "10.0.0.1", 8000), later, None)
    assert revived and touched.healthy and touched.last_heartbeat == later
    assert touched.unhealthy_since is None and touched.queue_length == 4
    touched, revived = await storage.touch(touched.key, later, 0)
    assert not revived and touched.queue_length == 0
    assert await storage.touch(InstanceKey("m", "10.0.0.1", 1), later, None) is None


async def test_beat_records_a_healthy_instance_at_once_and_declines_the_rest(storage: Storage) -> None:
    """``beat`` is ``touch`` without waiting, for the common heartbeat; any other
    it declines (``None``) and leaves as it was, for ``touch``."""
    key, later = InstanceKey("m", "10.0.0.1", 8000), T0 + timedelta(seconds=10)
    assert storage.beat(key, later, 1) is None  # unknown
    unhealthy = record(healthy=False, unhealthy_since=T0, queue_length=4)
    await storage.upsert(unhealthy)
    assert storage.beat(key, later, 1) is None  # a health transition is touch's to make
    assert await storage.get(key) == unhealthy
    await storage.touch(key, later, None)
    beaten = storage.beat(key, later + timedelta(seconds=5), 2)
    assert beaten == dataclasses.replace(
        unhealthy,
        healthy=True,
        unhealthy_since=None,
        last_heartbeat=later + timedelta(seconds=5),
        queue_length=2,
    )
    again = storage.beat(key, later + timedelta(seconds=6), None)  # no load sent: the last one stays
    assert again.queue_length == 2 and beaten.last_heartbeat == later + timedelta(seconds=5)
    touched, revived = await storage.touch(key, later + timedelta(seconds=7), None)
    assert not revived and touched == dataclasses.replace(again, last_heartbeat=later + timedelta(seconds=7))


async def test_mark_unhealthy_keeps_the_first_unhealthy_time(storage: Storage) -> None:
    await storage.upsert(record())
    key = InstanceKey("m", "10.0.0.1", 8000)
    first = await storage.mark_unhealthy(key, T0 + timedelta(seconds=1))
    assert not first.healthy and first.unhealthy_since == T0 + timedelta(seconds=1)
    second = await storage.mark_unhealthy(key, T0 + timedelta(seconds=9))
    assert second.unhealthy_since == T0 + timedelta(seconds=1)
    assert await storage.mark_unhealthy(InstanceKey("x", "h", 1), T0) is None


async def test_delete_returns_what_was_deleted(storage: Storage) -> None:
    await storage.upsert(record())
    key = InstanceKey("m", "10.0.0.1", 8000)
    assert (await storage.delete(key)).key == key
    assert await storage.delete(key) is None
    assert await storage.get(key) is None


async def test_expire_marks_only_silent_checked_healthy_instances(storage: Storage) -> None:
    old, fresh = T0, T0 + timedelta(seconds=50)
    await storage.upsert(record(port=1, last_heartbeat=old))
    await storage.upsert(record(port=2, last_heartbeat=fresh))
    await storage.upsert(record(port=3, last_heartbeat=old, check_healthy=False))
    await storage.upsert(record(port=4, last_heartbeat=old, healthy=False, unhealthy_since=old))
    now = T0 + timedelta(seconds=60)
    expired = await storage.expire(T0 + timedelta(seconds=30), now)
    assert [r.port for r in expired] == [1]
    assert expired[0].unhealthy_since == now and not expired[0].healthy
    assert await storage.expire(T0 + timedelta(seconds=30), now) == []  # reported once
    states = {r.port: (r.healthy, r.unhealthy_since) for r in await storage.list()}
    assert states == {1: (False, now), 2: (True, None), 3: (True, None), 4: (False, old)}


async def test_evict_deletes_long_unhealthy_instances(storage: Storage) -> None:
    await storage.upsert(record(port=1, healthy=False, unhealthy_since=T0))
    await storage.upsert(record(port=2, healthy=False, unhealthy_since=T0 + timedelta(hours=1)))
    await storage.upsert(record(port=3))
    evicted = await storage.evict(T0 + timedelta(minutes=30))
    assert [r.port for r in evicted] == [1]
    assert [r.port for r in await storage.list()] == [2, 3]


async def test_list_filters_and_orders_by_key(storage: Storage) -> None:
    await storage.upsert(record("b", port=2))
    await storage.upsert(record("a", port=9, healthy=False, unhealthy_since=T0))
    await storage.upsert(record("a", port=1))
    await storage.upsert(record("a/b:c@d", port=1))
    assert [(r.model_name, r.port) for r in await storage.list()] == [
        ("a", 1),
        ("a", 9),
        ("a/b:c@d", 1),
        ("b", 2),
    ]
    assert [r.port for r in await storage.list("a")] == [1, 9]
    assert [r.port for r in await storage.list("a", healthy_only=True)] == [1]
    assert await storage.list("nope") == []


async def test_serving_list_leaves_out_cooldowns_at_the_moment_asked(storage: Storage) -> None:
    for port in (1, 2, 3):
        await storage.upsert(record("a", port=port))
    await storage.upsert(record("b", port=1))
    key = InstanceKey("a", "10.0.0.1", 2)
    until = T0 + timedelta(seconds=30)
    assert [r.port for r in await storage.list("a", healthy_only=True, now=T0)] == [1, 2, 3]
    await storage.set_cooldown(key, until)
    assert [r.port for r in await storage.list("a", healthy_only=True, now=T0)] == [1, 3]
    assert [r.port for r in await storage.list("a", healthy_only=True, now=until)] == [1, 2, 3]
    # Without a moment, no cooldown is judged.
    assert [r.port for r in await storage.list("a", healthy_only=True)] == [1, 2, 3]
    assert [(r.model_name, r.port) for r in await storage.list(healthy_only=True, now=T0)] == [
        ("a", 1),
        ("a", 3),
        ("b", 1),
    ]
    assert await storage.list("nope", healthy_only=True, now=T0) == []


async def test_serving_list_follows_every_change(storage: Storage) -> None:
    """Read after each kind of change: an answer kept from before (the index
    keeps one per model) must never outlive the change."""

    async def serving() -> list[tuple[int, int | None, datetime | None]]:
        flush = getattr(storage, "flush", None)  # a backend that writes beats behind reads them later
        if flush is not None:
            await flush()
        return [(r.port, r.queue_length, r.last_heartbeat) for r in await storage.list("a", True, T0)]

    await storage.upsert(record("a", port=1))
    assert await serving() == [(1, None, T0)]
    await storage.insert(record("a", port=0))
    assert await serving() == [(0, None, T0), (1, None, T0)]
    later = T0 + timedelta(seconds=1)
    await storage.touch(InstanceKey("a", "10.0.0.1", 1), later, 5)
    assert await serving() == [(0, None, T0), (1, 5, later)]
    await storage.upsert(record("b", port=1))  # another model's change keeps this one's answer right
    await storage.mark_unhealthy(InstanceKey("a", "10.0.0.1", 0), later)
    assert await serving() == [(1, 5, later)]
    await storage.touch(InstanceKey("a", "10.0.0.1", 0), later, None)  # revived
    assert await serving() == [(0, None, later), (1, 5, later)]
    await storage.override(InstanceKey("a", "10.0.0.1", 1), changer({"weight": 3.0}))
    assert [r.weight for r in await storage.list("a", True, T0)] == [1.0, 3.0]
    assert len(await storage.expire(T0 + timedelta(seconds=2), later)) == 3  # b as well
    assert await serving() == []
    await storage.upsert(record("a", port=7))
    await storage.delete(InstanceKey("a", "10.0.0.1", 7))
    assert await serving() == []
    await storage.upsert(record("a", port=8))
    mine = await storage.list("a", True, T0)
    if isinstance(mine, Snapshot):  # shared with every reader: it refuses changes
        with pytest.raises(TypeError, match="read-only"):
            mine.clear()
    else:  # the caller's own list: changing it changes nothing stored
        mine.clear()
    assert len(await storage.list("a", True, T0)) == 1


async def test_a_models_listing_follows_every_change(storage: Storage) -> None:
    """All of a model's records, read after each kind of change (the index keeps
    this answer too, unhealthy records and all)."""

    async def listed() -> list[tuple[int, int | None, datetime | None, bool]]:
        flush = getattr(storage, "flush", None)
        if flush is not None:
            await flush()
        return [(r.port, r.queue_length, r.last_heartbeat, r.healthy) for r in await storage.list("a")]

    assert await listed() == []
    await storage.upsert(record("a", port=1))
    assert await listed() == [(1, None, T0, True)]
    await storage.insert(record("a", port=0))  # before the first, by key
    assert await listed() == [(0, None, T0, True), (1, None, T0, True)]
    later = T0 + timedelta(seconds=1)
    await storage.touch(InstanceKey("a", "10.0.0.1", 1), later, 5)
    assert await listed() == [(0, None, T0, True), (1, 5, later, True)]
    await storage.mark_unhealthy(InstanceKey("a", "10.0.0.1", 0), later)
    assert await listed() == [(0, None, T0, False), (1, 5, later, True)]
    await storage.override(InstanceKey("a", "10.0.0.1", 0), changer({"weight": 3.0}))  # an unhealthy one's
    assert [r.weight for r in await storage.list("a")] == [3.0, 1.0]
    assert len(await storage.expire(T0 + timedelta(seconds=2), later)) == 1
    assert await listed() == [(0, None, T0, False), (1, 5, later, False)]
    await storage.delete(InstanceKey("a", "10.0.0.1", 0))
    assert await listed() == [(1, 5, later, False)]
    mine = await storage.list("a")
    if isinstance(mine, Snapshot):
        with pytest.raises(TypeError, match="read-only"):
            mine.clear()
    else:
        mine.clear()
    assert len(await storage.list("a")) == 1


async def test_at_lists_one_address_in_key_order_and_follows_comings_and_goings(storage: Storage) -> None:
    for name, host, port in [("b", "10.0.0.1", 8000), ("a", "10.0.0.1", 8000), ("a", "10.0.0.1", 8001)]:
        await storage.upsert(record(name, host, port))
    await storage.upsert(record("c", "10.0.0.2", 8000))
    assert [r.key for r in await storage.at("10.0.0.1", 8000)] == [
        InstanceKey("a", "10.0.0.1", 8000),
        InstanceKey("b", "10.0.0.1", 8000),
    ]
    await storage.mark_unhealthy(InstanceKey("b", "10.0.0.1", 8000), T0)
    assert [r.healthy for r in await storage.at("10.0.0.1", 8000)] == [True, False]  # unhealthy kept
    await storage.delete(InstanceKey("a", "10.0.0.1", 8000))
    await storage.delete(InstanceKey("b", "10.0.0.1", 8000))
    assert await storage.at("10.0.0.1", 8000) == []
    assert [r.model_name for r in await storage.at("10.0.0.1", 8001)] == ["a"]
    assert await storage.at("10.9.9.9", 1) == []
    await storage.upsert(record("c", "10.0.0.2", 8000, weight=2.0))  # the same one again
    await storage.upsert(record("d", "10.0.0.1", 8000))  # the host has two again
    assert [r.weight for r in await storage.at("10.0.0.2", 8000)] == [2.0]
    assert [r.model_name for r in await storage.at("10.0.0.1", 8000)] == ["d"]
    assert [r.model_name for r in await storage.at("10.0.0.1", 8001)] == ["a"]


async def test_summarize_counts_per_model(storage: Storage) -> None:
    await storage.upsert(record("a", port=1))
    await storage.upsert(record("a", port=2, enabled=False))
    await storage.upsert(record("a", port=3, healthy=False, unhealthy_since=T0))
    await storage.upsert(record("b", port=1))
    assert await storage.summarize() == [
        ModelSummary("a", total=3, healthy=2, enabled=2, available=1),
        ModelSummary("b", total=1, healthy=1, enabled=1, available=1),
    ]
    await storage.set_cooldown(InstanceKey("b", "10.0.0.1", 1), T0 + timedelta(seconds=30))
    during = await storage.summarize(T0)
    assert during[1] == ModelSummary("b", total=1, healthy=1, enabled=1, available=0)
    after = await storage.summarize(T0 + timedelta(seconds=30))
    assert after[1].available == 1


async def test_records_passed_in_are_copied(storage: Storage) -> None:
    mine = record(metadata={"k": ["v"]})
    await storage.upsert(mine)
    mine.metadata["k"].append("changed by its caller")
    mine.weight = 99.0
    fetched = await storage.get(mine.key)
    assert fetched.metadata == {"k": ["v"]} and fetched.weight == 1.0


async def test_returned_records_are_snapshots(storage: Storage) -> None:
    stored, _ = await storage.upsert(record(queue_length=1))
    listed = await storage.list(healthy_only=True)
    later = T0 + timedelta(seconds=5)
    await storage.touch(stored.key, later, 7)
    await storage.override(stored.key, changer({"enabled": False, "metadata": {"zone": "b"}}))
    await storage.set_cooldown(stored.key, later)
    await storage.mark_unhealthy(stored.key, later)
    for before in (stored, listed[0]):
        assert before == record(queue_length=1)  # as it was when it was returned
    now = await storage.get(stored.key)
    assert not now.healthy and not now.enabled and now.queue_length == 7 and now.metadata == {"zone": "b"}


async def test_concurrent_upserts_of_one_key_leave_one_record(storage: Storage) -> None:
    results = await asyncio.gather(*(storage.upsert(record(weight=float(i))) for i in range(100)))
    assert sum(created for _, created in results) == 1
    assert len(await storage.list()) == 1


async def test_ping_answers(storage: Storage) -> None:
    await storage.ping()


async def test_a_closed_backend_cannot_be_reopened(storage_url: str) -> None:
    backend = open_storage(storage_url)
    async with backend:
        pass
    with pytest.raises(RuntimeError, match="open a new one"):
        async with backend:
            pass


def test_records_are_plain_dataclasses() -> None:
    instance = ModelInstance("m", "h", 1, healthy=True, last_heartbeat=T0)
    assert dataclasses.asdict(instance)["last_heartbeat"] == T0
    assert instance.key == InstanceKey("m", "h", 1)


async def test_override_pins_fields_over_re_registrations(storage: Storage) -> None:
    key = InstanceKey("m", "10.0.0.1", 8000)
    await storage.upsert(record(metadata={"gpu": "a100", "zone": "a"}))
    drained = await storage.override(
        key, changer({"enabled": False, "weight": 0.5, "metadata": {"zone": "b"}})
    )
    assert not drained.enabled and drained.weight == 0.5
    assert drained.metadata == {"gpu": "a100", "zone": "b"}
    assert drained.overrides == {"enabled": False, "weight": 0.5, "metadata": {"zone": "b"}}
    # The worker registers again, as it was: the operator's values stay.
    again, created = await storage.upsert(record(weight=3.0, metadata={"gpu": "h100", "zone": "a"}))
    assert not created and not again.enabled and again.weight == 0.5
    assert again.metadata == {"gpu": "h100", "zone": "b"}
    assert await storage.get(key) == again
    # Releasing: enabled again, the metadata key gone, the weight kept until the next registration.
    released = await storage.override(
        key, changer({"enabled": None, "weight": None, "metadata": {"zone": None}})
    )
    assert released.enabled and released.weight == 0.5 and released.metadata == {"gpu": "h100"}
    assert released.overrides is None
    fresh, _ = await storage.upsert(record(weight=3.0))
    assert fresh.weight == 3.0 and fresh.enabled
    assert await storage.override(InstanceKey("m", "10.0.0.1", 1), changer({"enabled": False})) is None


async def test_cooldown_is_stored_and_kept_over_re_registration(storage: Storage) -> None:
    key = InstanceKey("m", "10.0.0.1", 8000)
    await storage.upsert(record())
    until = T0 + timedelta(seconds=30)
    assert (await storage.set_cooldown(key, until)).cooldown_until == until
    again, _ = await storage.upsert(record(weight=2.0))
    assert again.cooldown_until == until and (await storage.get(key)).cooldown_until == until
    assert (await storage.set_cooldown(key, None)).cooldown_until is None
    assert await storage.set_cooldown(InstanceKey("m", "10.0.0.1", 1), until) is None


async def test_census_counts_what_a_sweep_would_act_on_without_acting(storage: Storage) -> None:
    for port, beat in ((8001, T0), (8002, T0), (8003, T0 + timedelta(seconds=100))):
        await storage.upsert(record(port=port, last_heartbeat=beat))
    await storage.upsert(record(port=8004, check_healthy=False, last_heartbeat=T0))
    await storage.upsert(record(port=8005, healthy=False, unhealthy_since=T0))
    census = await storage.census(T0 + timedelta(seconds=50), T0 + timedelta(seconds=1))
    assert census == (3, 2, 5, 1)
    assert len(await storage.list(healthy_only=True)) == 4  # nothing was marked


async def test_tokens_are_stored_by_name_listed_and_removed(storage: Storage) -> None:
    from model_registry.storage import StoredToken

    worker = StoredToken("gpu-pool-a", "a" * 64, "worker", ("glm-4*",), T0 + timedelta(days=30), T0)
    admin = StoredToken("admin", "b" * 64, "admin", None, None, T0)
    assert await storage.add_token(worker) and await storage.add_token(admin)
    assert not await storage.add_token(dataclasses.replace(worker, digest="c" * 64))  # the name is taken
    assert not await storage.add_token(dataclasses.replace(admin, name="other"))  # so is the digest
    assert await storage.tokens() == [admin, worker]
    assert await storage.remove_token("gpu-pool-a") == worker
    assert await storage.remove_token("gpu-pool-a") is None
    assert await storage.tokens() == [admin]


# -- what an instance's check and its engine's load do to a record ------------------------

CHECK = {"http": "/health", "interval": 10.0, "timeout": 2.0, "healthy_after": 1, "unhealthy_after": 3}


def checked(**fields) -> ModelInstance:
    base = dict(check=CHECK, metrics={"url": "/metrics", "interval": 5.0}, last_heartbeat=None)
    return record(**{**base, **fields})


async def test_round_trip_keeps_checks_reasons_and_load(storage: Storage) -> None:
    full = checked(
        healthy=False,
        unhealthy_since=T0,
        state_reason="probe: HTTP 503 after 2 s",
        waiting=3,
        running=12,
        kv_cache_usage=0.625,
        load_at=T0,
    )
    stored, _ = await storage.upsert(full)
    assert stored == full and await storage.get(full.key) == full


async def test_a_check_failure_holds_the_record_and_a_beat_does_not_revive_it(storage: Storage) -> None:
    await storage.upsert(checked())
    key = checked().key
    marked = await storage.mark_unhealthy(key, T0, "probe: connection refused")
    assert marked is not None and not marked.healthy and marked.state_reason == "probe: connection refused"
    beaten, revived = await storage.touch(key, T0 + timedelta(seconds=1), 4)
    assert not revived and not beaten.healthy and beaten.state_reason == "probe: connection refused"
    assert beaten.last_heartbeat == T0 + timedelta(seconds=1) and beaten.queue_length == 4
    passed = await storage.pass_check(key, T0)
    assert passed is not None and passed.healthy and passed.state_reason is None
    assert passed.unhealthy_since is None
    assert await storage.get(key) == passed


async def test_passing_a_check_revives_only_what_the_check_holds(storage: Storage) -> None:
    await storage.upsert(checked())
    key = checked().key
    assert await storage.pass_check(key, T0) is None  # healthy already: nothing to do
    await storage.mark_unhealthy(key, T0, "deregistered")
    assert await storage.pass_check(key, T0) is None  # deregistered: not the check's to undo
    await storage.upsert(checked(last_heartbeat=T0, healthy=False, state_reason="probe: HTTP 500"))
    # It beats, and its last beat is older than the cutoff: the heartbeat timeout holds it too.
    assert await storage.pass_check(key, T0 + timedelta(seconds=1)) is None
    assert (await storage.pass_check(key, T0)).healthy
    assert await storage.pass_check(InstanceKey("nobody", "10.0.0.1", 1), T0) is None


async def test_a_beat_revives_an_expired_record_and_clears_its_reason(storage: Storage) -> None:
    await storage.upsert(record())
    (expired,) = await storage.expire(T0 + timedelta(seconds=1), T0, "heartbeat timeout 30 s")
    assert expired.state_reason == "heartbeat timeout 30 s"
    beaten, revived = await storage.touch(record().key, T0 + timedelta(seconds=2), None)
    assert revived and beaten.healthy and beaten.state_reason is None


async def test_set_load_is_kept_and_survives_a_flush(storage: Storage) -> None:
    await storage.upsert(record())
    key = record().key
    loaded = storage.set_load(key, 2, 5, 0.5, T0)
    assert loaded is not None and (loaded.waiting, loaded.running, loaded.kv_cache_usage) == (2, 5, 0.5)
    assert storage.set_load(InstanceKey("nobody", "10.0.0.1", 1), 1, 1, 0.1, T0) is None
    flush = getattr(storage, "flush", None)
    if flush is not None:  # PostgreSQL: written behind, read from the database
        await flush()
    got = await storage.get(key)
    assert (got.waiting, got.running, got.kv_cache_usage, got.load_at) == (2, 5, 0.5, T0)
    assert got.healthy and got.last_heartbeat == T0  # the load changes nothing else


# -- the lifecycle: ready, the start-up grace, reasons and the state ---------------------


async def test_a_record_not_ready_is_starting_listed_not_serving_and_not_expired(storage: Storage) -> None:
    key = InstanceKey("m", "10.0.0.1", 8000)
    stored, _ = await storage.upsert(record(ready=False))
    assert stored.state == "starting" and (await storage.get(key)).state == "starting"
    await storage.upsert(record("m", port=8001))
    assert [r.port for r in await storage.list("m")] == [8000, 8001]
    assert [r.port for r in await storage.list("m", healthy_only=True, now=T0)] == [8001]
    assert [(s.total, s.healthy, s.available) for s in await storage.summarize(T0)] == [(2, 2, 1)]
    # Silent far past any timeout: its heartbeats do not expire it, only its grace will.
    expired = await storage.expire(T0 + timedelta(hours=1), T0 + timedelta(hours=1), "heartbeat timeout 30 s")
    assert [r.port for r in expired] == [8001]
    assert (await storage.get(key)).healthy is True


async def test_set_ready_and_back(storage: Storage) -> None:
    key = InstanceKey("m", "10.0.0.1", 8000)
    await storage.upsert(record(ready=False))
    ready = await storage.set_ready(key, True)
    assert ready.ready is True and ready.state == "ready"
    assert [r.port for r in await storage.list("m", healthy_only=True, now=T0)] == [8000]
    assert (await storage.set_ready(key, False)).state == "starting"
    assert await storage.set_ready(InstanceKey("m", "10.0.0.1", 1), True) is None


async def test_overdue_starts_by_each_grace(storage: Storage) -> None:
    await storage.upsert(record(port=1, ready=False))  # the default grace: 600 s
    await storage.upsert(record(port=2, ready=False, startup_grace=60.0))
    await storage.upsert(record(port=3))  # ready: never overdue
    starting_check = record(port=4, healthy=False, state_reason="probe: not yet passed", last_heartbeat=None)
    await storage.upsert(starting_check)
    await storage.upsert(record(port=5, healthy=False, state_reason="probe: HTTP 503"))  # unhealthy
    assert await storage.overdue_starts(T0 + timedelta(seconds=59), 600) == []
    assert [r.port for r in await storage.overdue_starts(T0 + timedelta(seconds=60), 600)] == [2]
    overdue = await storage.overdue_starts(T0 + timedelta(seconds=600), 600)
    assert sorted(r.port for r in overdue) == [1, 2, 4]


async def test_grace_run_out_is_held_until_ready(storage: Storage) -> None:
    key = InstanceKey("m", "10.0.0.1", 8000)
    await storage.upsert(record(ready=False))
    reason = "not ready within its start-up grace of 600 s"
    marked = await storage.mark_unhealthy(key, T0 + timedelta(seconds=600), reason)
    assert marked.state == "unhealthy" and marked.state_reason == reason
    beaten, revived = await storage.touch(key, T0 + timedelta(seconds=601), None)
    assert not revived and beaten.healthy is False and beaten.state_reason == reason
    back = await storage.set_ready(key, True)
    assert back.healthy is True and back.state_reason is None and back.state == "ready"


async def test_a_cooldowns_reason_is_kept_by_beats_and_dropped_at_its_end(storage: Storage) -> None:
    key = InstanceKey("m", "10.0.0.1", 8000)
    await storage.upsert(record())
    until = T0 + timedelta(seconds=30)
    cooled = await storage.set_cooldown(key, until, "3 failures in 60 s, last: HTTP 500")
    assert cooled.state == "cooling" and cooled.state_reason == "3 failures in 60 s, last: HTTP 500"
    await storage.touch(key, T0 + timedelta(seconds=1), 2)
    if (beaten := storage.beat(key, T0 + timedelta(seconds=2), 3)) is not None:
        assert beaten.state_reason == cooled.state_reason
    await storage.flush() if hasattr(storage, "flush") else None
    assert (await storage.get(key)).state_reason == cooled.state_reason
    ended = await storage.set_cooldown(key, None, None)
    assert ended.state == "ready" and ended.state_reason is None
    # An unhealthy instance keeps why it is unhealthy.
    await storage.mark_unhealthy(key, T0, "heartbeat timeout 30 s")
    assert (await storage.set_cooldown(key, until, "busy")).state_reason == "heartbeat timeout 30 s"


async def test_an_operators_edit_may_set_the_reason(storage: Storage) -> None:
    key = InstanceKey("m", "10.0.0.1", 8000)
    await storage.upsert(record())

    def drain(r: ModelInstance) -> None:
        r.enabled, r.overrides, r.state_reason = False, {"enabled": False}, "drained by operator ops-1"

    drained = await storage.override(key, drain)
    assert drained.state == "disabled" and drained.state_reason == "drained by operator ops-1"
    assert (await storage.get(key)).state_reason == "drained by operator ops-1"


async def test_upsert_many_creates_and_updates_in_one_go_and_keeps_them(storage_url: str) -> None:
    async with open_storage(storage_url) as storage:
        await storage.upsert(record(host="10.0.0.2", weight=1.0))
        later = T0 + timedelta(minutes=1)
        batch = [
            record(host="10.0.0.3", metadata={"gpu": "h100"}),
            record(host="10.0.0.2", weight=5.0, registered_at=later, last_heartbeat=later),
            record(host="10.0.0.1"),
        ]
        stored = await storage.upsert_many(batch)
        assert [(s.key.host, created) for s, created in stored] == [
            ("10.0.0.3", True),
            ("10.0.0.2", False),
            ("10.0.0.1", True),
        ]
        assert stored[1][0].registered_at == T0 and stored[1][0].weight == 5.0
        assert await storage.upsert_many([]) == []
    if storage_url == "memory://":
        return
    async with open_storage(storage_url) as reopened:
        kept = await reopened.list()
    assert [(r.key.host, r.weight, r.metadata) for r in kept] == [
        ("10.0.0.1", 1.0, {}),
        ("10.0.0.2", 5.0, {}),
        ("10.0.0.3", 1.0, {"gpu": "h100"}),
    ]


async def test_a_start_up_reads_every_row_in_chunks_within_each_reads_time_limit(
    storage_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A large table is read a chunk at a time (here 3 rows), and the load as a
    whole may take longer than one operation may (here 0.2 s), so long as each
    read does not: a million rows are not cut short, a stalled database is."""
    if storage_url == "memory://":
        return
    from model_registry.storage import PoolOptions, postgres, sqlite

    rows = [
        record(
            f"m{i % 3}",
            host=f"10.0.1.{i}",
            weight=float(i),
            metadata={"gpu": "h100", "i": i},
            check={"kind": "http", "path": "/health"} if i % 2 else None,
            overrides={"weight": float(i)} if i % 5 == 0 else None,
            unhealthy_since=None if i % 4 else T0,
            healthy=bool(i % 4),
            queue_length=i,
            kv_cache_usage=0.5,
        )
        for i in range(20)
    ]
    async with open_storage(storage_url) as storage:
        await storage.upsert_many(rows)
        written = await storage.list()
    for module in (sqlite, postgres):
        monkeypatch.setattr(module, "_LOAD_CHUNK", 3)
    chunks: list[int] = []
    if storage_url.startswith("sqlite"):
        owner, name = sqlite.InstanceIndex, "load_more"
    else:
        owner, name = postgres.PostgresStorage, "_file_rows"
    file = getattr(owner, name)

    def slow_file(self, records) -> None:
        records = list(records)
        chunks.append(len(records))
        time.sleep(0.06)  # seven chunks: longer in all than the operation limit
        file(self, records)

    monkeypatch.setattr(owner, name, slow_file)
    reopened = open_storage(storage_url)
    reopened._pool = PoolOptions(operation_timeout=0.2)
    async with reopened:
        reopened._pool = PoolOptions()  # loaded: what follows reads the database (PostgreSQL) unhurried
        assert await reopened.list() == written
        if isinstance(reopened, postgres.PostgresStorage):  # known: healthy beats take the fast path
            beaten = reopened.beat(rows[1].key, T0 + timedelta(seconds=1), None)
            assert beaten is not None and beaten.metadata == {"gpu": "h100", "i": 1}
    assert chunks == [3] * 6 + [2]
