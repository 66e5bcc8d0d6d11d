"""Registry policy over every backend, with a manual clock."""

from __future__ import annotations

import asyncio
import random
from collections import Counter
from datetime import timedelta

import pytest

from model_registry import (
    InstanceKey,
    InstanceLimit,
    InstanceNotFound,
    InvalidInstance,
    ManualClock,
    ModelInstance,
    NoHealthyInstance,
    Registry,
    SystemClock,
)
from model_registry.storage import Storage, StorageUnavailable

KEY = InstanceKey("glm-4@llm", "10.0.0.5", 8001)


def instance(port: int = 8001, name: str = "glm-4@llm", **fields) -> ModelInstance:
    return ModelInstance(name, "10.0.0.5", port, **fields)


def beat(port: int = 8001, name: str = "glm-4@llm", queue_length: int | None = None):
    """The arguments of a bare heartbeat (identity and load)."""
    return ModelInstance(name, "10.0.0.5", port), queue_length


async def test_register_new_sets_server_managed_fields(registry: Registry, clock: ManualClock) -> None:
    # Client-sent server-managed values are ignored (DB-GPT builds them like this).
    sent = instance(healthy=False, last_heartbeat=clock.now() - timedelta(days=9), queue_length=5)
    stored, created = await registry.register(sent)
    assert created
    assert stored.healthy and stored.last_heartbeat == clock.now() == stored.registered_at
    assert stored.queue_length is None and stored.unhealthy_since is None


async def test_register_existing_updates_without_duplicating(registry: Registry, clock: ManualClock) -> None:
    await registry.register(instance(weight=1.0))
    clock.advance(5)
    stored, created = await registry.register(instance(weight=4.0, metadata={"v": 2}))
    assert not created and stored.weight == 4.0 and stored.metadata == {"v": 2}
    assert stored.registered_at == clock.now() - timedelta(seconds=5)
    assert stored.last_heartbeat == clock.now()
    assert await registry.get_all_instances() == [stored]


async def test_register_revives_a_deregistered_instance(registry: Registry) -> None:
    await registry.register(instance())
    await registry.deregister(KEY)
    stored, created = await registry.register(instance())
    assert not created and stored.healthy and stored.unhealthy_since is None


async def test_deregister_keeps_the_record_unhealthy(registry: Registry) -> None:
    await registry.register(instance())
    assert await registry.deregister_instance(instance()) is True
    [kept] = await registry.get_all_instances()
    assert not kept.healthy and kept.unhealthy_since is not None
    assert await registry.get_all_instances(healthy_only=True) == []


async def test_purge_deletes(registry: Registry) -> None:
    await registry.register(instance())
    purged = await registry.deregister(KEY, purge=True)
    assert purged.key == KEY
    assert await registry.get_all_instances() == []
    with pytest.raises(InstanceNotFound):
        await registry.deregister(KEY, purge=True)


async def test_deregister_unknown_raises(registry: Registry) -> None:
    with pytest.raises(InstanceNotFound, match="'glm-4@llm' at 10.0.0.5:8001"):
        await registry.deregister_instance(instance())


async def test_healthy_only_filter_and_model_filter(registry: Registry) -> None:
    for port in (1, 2, 3):
        await registry.register(instance(port))
    await registry.register(instance(1, name="other"))
    await registry.deregister(InstanceKey("glm-4@llm", "10.0.0.5", 2))
    assert [i.port for i in await registry.get_all_instances("glm-4@llm")] == [1, 2, 3]
    assert [i.port for i in await registry.get_all_instances("glm-4@llm", healthy_only=True)] == [1, 3]
    assert len(await registry.get_all_instances(healthy_only=True)) == 3


async def test_heartbeat_of_unknown_instance_registers_it(registry: Registry, clock: ManualClock) -> None:
    stored = await registry.heartbeat(*beat(queue_length=2))
    assert stored.healthy and stored.registered_at == clock.now() and stored.queue_length == 2
    assert stored.weight == 1.0 and stored.enabled
    # A full instance sent as a heartbeat registers with its own settings.
    assert await registry.send_heartbeat(instance(9, weight=3.0)) is True
    assert {i.port: i.weight for i in await registry.get_all_instances()} == {8001: 1.0, 9: 3.0}


async def test_heartbeat_advances_last_heartbeat_and_keeps_settings(
    registry: Registry, clock: ManualClock
) -> None:
    await registry.register(instance(weight=2.5, metadata={"gpu": "h100"}))
    clock.advance(7)
    stored = await registry.heartbeat(*beat(queue_length=4))
    assert stored.last_heartbeat == clock.now()
    assert stored.weight == 2.5 and stored.metadata == {"gpu": "h100"} and stored.queue_length == 4
    stored = await registry.heartbeat(*beat())
    assert stored.queue_length == 4  # a beat without load keeps the last reported load


async def test_beat_records_the_common_heartbeat_at_once_and_leaves_the_rest_to_heartbeat(
    registry: Registry, clock: ManualClock
) -> None:
    body = {"model_name": KEY.model_name, "host": KEY.host, "port": KEY.port, "queue_length": 3}
    assert registry.beat(body) is None  # unknown: heartbeat registers it
    assert await registry.get_all_instances() == []
    await registry.register(instance(weight=2.5))
    assert registry.beat({**body, "host": "10.0.0.5."}) is None  # not as stored: heartbeat validates it
    assert registry.beat({**body, "queue_length": -1}) is None
    clock.advance(3)
    beaten = registry.beat(body)
    assert beaten.last_heartbeat == clock.now() and beaten.queue_length == 3 and beaten.weight == 2.5
    await registry.deregister(KEY)
    assert registry.beat(body) is None  # unhealthy: heartbeat revives it, and says so
    revived = await registry.heartbeat(body)
    assert revived.healthy and revived.last_heartbeat == clock.now()


async def test_checker_marks_silent_instance_unhealthy_and_heartbeat_restores(
    registry: Registry, clock: ManualClock
) -> None:
    await registry.register(instance(1))
    await registry.register(instance(2))
    await registry.register(instance(3, check_healthy=False))
    clock.advance(31)  # past the grace (30 s) and the timeout
    await registry.heartbeat(*beat(2))
    result = await registry.check_once()
    assert [i.port for i in result.expired] == [1]
    healthy = {i.port: i.healthy for i in await registry.get_all_instances()}
    assert healthy == {1: False, 2: True, 3: True}
    assert (await registry.check_once()).expired == []  # one transition, once
    restored = await registry.heartbeat(*beat(1))
    assert restored.healthy and restored.unhealthy_since is None


async def test_nothing_is_marked_during_the_start_up_grace(storage: Storage, clock: ManualClock) -> None:
    # A registry restarted over an old fleet: every heartbeat is stale.
    async with Registry(
        storage, heartbeat_interval=5, heartbeat_timeout=30, clock=clock, checker=False
    ) as first:
        await first.register(instance())
    clock.advance(3600)
    async with Registry(
        storage, heartbeat_interval=5, heartbeat_timeout=30, clock=clock, checker=False
    ) as second:
        clock.advance(29)
        result = await second.check_once()
        assert result.in_grace and result.expired == []
        assert (await second.get_all_instances())[0].healthy
        clock.advance(1)
        assert [i.port for i in (await second.check_once()).expired] == [8001]


async def test_eviction_after_evict_after(storage: Storage, clock: ManualClock) -> None:
    async with Registry(
        storage, heartbeat_interval=5, heartbeat_timeout=30, evict_after=60, clock=clock, checker=False
    ) as reg:
        await reg.register(instance(1))
        await reg.register(instance(2))
        clock.advance(31)
        await reg.heartbeat(*beat(2))
        assert [i.port for i in (await reg.check_once()).expired] == [1]
        clock.advance(59)
        await reg.heartbeat(*beat(2))
        assert (await reg.check_once()).evicted == []
        clock.advance(2)
        await reg.heartbeat(*beat(2))
        assert [i.port for i in (await reg.check_once()).evicted] == [1]
        assert [i.port for i in await reg.get_all_instances()] == [2]


async def test_eviction_disabled_with_zero(storage: Storage, clock: ManualClock) -> None:
    async with Registry(
        storage, heartbeat_interval=5, heartbeat_timeout=30, evict_after=0, clock=clock, checker=False
    ) as reg:
        await reg.register(instance())
        await reg.deregister(KEY)
        clock.advance(10**6)
        assert (await reg.check_once()).evicted == []
        assert len(await reg.get_all_instances()) == 1


async def test_background_checker_runs_every_interval(storage: Storage, clock: ManualClock) -> None:
    async with Registry(storage, heartbeat_interval=5, heartbeat_timeout=10, clock=clock) as reg:
        await reg.register(instance())
        for _ in range(3):  # 15 s: past grace and timeout, one sweep every 5 s
            await _until(lambda: clock.sleepers == 1)
            clock.advance(5)
        await _until(lambda: clock.sleepers == 1)
        [stored] = await reg.get_all_instances()
        assert not stored.healthy
    assert clock.sleepers == 0  # leaving stopped the checker


async def _until(condition, timeout: float = 10.0) -> None:
    """Poll ``condition`` (the checker's storage writes may go through a thread)."""
    loop = asyncio.get_running_loop()
    give_up = loop.time() + timeout
    while not condition():
        if loop.time() > give_up:
            raise AssertionError("condition never became true")
        await asyncio.sleep(0.001)


async def test_weighted_selection_follows_weights(storage: Storage, clock: ManualClock) -> None:
    async with Registry(storage, clock=clock, rng=random.Random(7)) as reg:
        await reg.register(instance(1, weight=1.0))
        await reg.register(instance(2, weight=3.0))
        await reg.register(instance(3, weight=0.0))
        await reg.register(instance(4, weight=5.0, enabled=False))
        await reg.register(instance(5, weight=5.0))
        await reg.deregister(InstanceKey("glm-4@llm", "10.0.0.5", 5))
        picks = Counter([(await reg.select_one_health_instance("glm-4@llm")).port for _ in range(4000)])
    assert set(picks) == {1, 2}  # weight 0, disabled and unhealthy are never picked
    share = picks[2] / 4000  # expected 0.75; 4000 draws put 5 sigma at about 0.034
    assert 0.71 < share < 0.79


async def test_select_with_no_candidate_raises(registry: Registry) -> None:
    with pytest.raises(NoHealthyInstance):
        await registry.select("nobody")
    await registry.register(instance(weight=0.0))
    with pytest.raises(NoHealthyInstance, match="glm-4@llm"):
        await registry.select("glm-4@llm")


async def test_huge_weights_do_not_overflow(registry: Registry) -> None:
    await registry.register(instance(1, weight=1e308))
    await registry.register(instance(2, weight=1e308))
    assert (await registry.select("glm-4@llm")).port in (1, 2)


async def test_concurrent_registrations_of_one_instance_give_one_record(registry: Registry) -> None:
    results = await asyncio.gather(*(registry.register(instance(weight=float(i))) for i in range(100)))
    assert sum(created for _, created in results) == 1
    assert len(await registry.get_all_instances()) == 1


@pytest.mark.parametrize(
    "fields, field",
    [
        (dict(model_name=""), "model_name"),
        (dict(model_name="x" * 257), "model_name"),
        (dict(model_name="bad\nname"), "model_name"),
        (dict(host="not a host"), "host"),
        (dict(host=""), "host"),
        (dict(port=0), "port"),
        (dict(port=65536), "port"),
        (dict(weight=-1.0), "weight"),
        (dict(weight=float("nan")), "weight"),
        (dict(metadata={str(i): i for i in range(65)}), "metadata"),
        (dict(metadata={"big": "x" * 9000}), "metadata"),
        (dict(metadata={"set": {1, 2}}), "metadata"),
    ],
)
async def test_invalid_instances_are_refused_naming_the_field(registry: Registry, fields, field) -> None:
    values = dict(model_name="m", host="h", port=1) | fields
    with pytest.raises(InvalidInstance) as caught:
        await registry.register(ModelInstance(**values))
    assert caught.value.field == field
    assert await registry.get_all_instances() == []


async def test_hosts_are_normalised_so_identity_is_stable(registry: Registry) -> None:
    await registry.register(ModelInstance("m", "[0:0::1]", 1))
    await registry.register(ModelInstance("m", "::1", 1))
    await registry.register(ModelInstance("m", "Worker-1.Local.", 2))
    assert [(i.host, i.port) for i in await registry.get_all_instances()] == [
        ("::1", 1),
        ("worker-1.local", 2),
    ]


@pytest.mark.parametrize(
    "interval, timeout, evict, message",
    [
        (10, 15, 0, "not comfortably larger"),
        (0, 30, 0, "above 0"),
        (10, 30, -1, "evict-after"),
    ],
)
def test_bad_timings_are_refused(storage_url, interval, timeout, evict, message) -> None:
    from model_registry.storage import open_storage

    with pytest.raises(ValueError, match=message):
        Registry(
            open_storage(storage_url),
            heartbeat_interval=interval,
            heartbeat_timeout=timeout,
            evict_after=evict,
        )


@pytest.mark.parametrize("storage_url", ["sqlite"], indirect=True)
async def test_no_marking_for_one_timeout_after_a_storage_outage(
    registry: Registry, clock: ManualClock, tmp_path
) -> None:
    import sqlite3

    await registry.register(instance(1))
    clock.advance(40)  # past the start-up grace; the instance is silent
    with sqlite3.connect(tmp_path / "registry.db") as conn:
        conn.execute("ALTER TABLE instances RENAME TO away")
    with pytest.raises(StorageUnavailable):
        await registry.register(instance(2))  # the storage fails under the registry
    with sqlite3.connect(tmp_path / "registry.db") as conn:
        conn.execute("ALTER TABLE away RENAME TO instances")
    clock.advance(29)
    assert (await registry.check_once()).in_grace
    assert (await registry.get_all_instances())[0].healthy
    clock.advance(1)
    assert [i.port for i in (await registry.check_once()).expired] == [1]


class SkewedClock(SystemClock):
    def __init__(self, skew_s: float) -> None:
        self.skew = timedelta(seconds=skew_s)

    def now(self):
        return super().now() + self.skew


@pytest.mark.parametrize("storage_url", ["postgresql"], indirect=True)
async def test_replicas_with_skewed_clocks_follow_the_database_clock(storage: Storage) -> None:
    ahead = Registry(storage, clock=SkewedClock(3600), server_clock=True, checker=False)
    behind = Registry(storage, clock=SkewedClock(-3600), server_clock=True, checker=False)
    async with ahead, behind:
        first, _ = await ahead.register(instance(1))
        second = await behind.heartbeat(*beat(1))
        database_now = await storage.server_time()
        assert abs((first.last_heartbeat - database_now).total_seconds()) < 1
        assert abs((second.last_heartbeat - database_now).total_seconds()) < 1
        assert (await ahead.health())["clock"] == "database"


@pytest.mark.parametrize("storage_url", ["memory", "sqlite"], indirect=True)
async def test_backends_without_a_server_clock_keep_the_local_one(storage: Storage) -> None:
    async with Registry(storage, server_clock=True, checker=False) as reg:
        assert (await reg.health())["clock"] == "local"


# -- bounded state -------------------------------------------------------------


async def test_registrations_past_the_caps_are_refused_and_updates_pass(
    storage: Storage, clock: ManualClock
) -> None:
    async with Registry(
        storage, clock=clock, checker=False, max_instances=3, max_instances_per_model=2
    ) as registry:
        await registry.register(instance(8001))
        await registry.register(instance(8002))
        with pytest.raises(InstanceLimit) as per_model:
            await registry.register(instance(8003))
        assert per_model.value.status == 429 and per_model.value.code == "model_instance_limit"
        assert "2 instances" in per_model.value.detail and per_model.value.field == "model_name"
        await registry.register(instance(8001, weight=2.0))  # an update is no new instance
        await registry.register(instance(8001, name="other"))
        with pytest.raises(InstanceLimit) as total:
            await registry.register(instance(8001, name="third"))
        assert total.value.status == 507 and total.value.code == "instance_limit"
        assert "--max-instances" in total.value.detail and "3 instances" in total.value.detail
        with pytest.raises(InstanceLimit):  # a heartbeat registers no new instance past it either
            await registry.heartbeat(instance(8001, name="third"))
        assert (await registry.heartbeat(*beat(8002))).port == 8002  # beats of known ones pass
        assert len(await registry.instances()) == 3  # nothing refused was stored
        await registry.deregister(InstanceKey("glm-4@llm", "10.0.0.5", 8002), purge=True)
        _, created = await registry.register(instance(8001, name="third"))  # room again
        assert created


async def test_round_robin_keeps_nothing_for_models_that_are_gone(registry: Registry) -> None:
    for n in range(200):  # churn: each model comes, is picked, and goes
        name = f"churn-{n}"
        for port in (8001, 8002):
            await registry.register(instance(port, name=name))
        await registry.select(name, "round_robin")
        await registry.deregister(InstanceKey(name, "10.0.0.5", 8001), purge=True)
        await registry.deregister(InstanceKey(name, "10.0.0.5", 8002))  # unhealthy, kept: still gone
    assert registry._selector.models == 0
    await registry.register(instance(8001))
    await registry.register(instance(8002))
    picks = [(await registry.select(KEY.model_name, "round_robin")).port for _ in range(4)]
    assert picks == [8001, 8002, 8001, 8002] and registry._selector.models == 1
