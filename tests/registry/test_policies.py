"""Operator overrides, failure reports and cooldowns, and self-preservation, on every backend."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from model_registry import InstanceNotFound, InvalidInstance, ManualClock, NoHealthyInstance, Registry
from model_registry.events import Change
from model_registry.failures import FailurePolicy
from model_registry.preservation import Preservation
from model_registry.storage import InstanceKey, Storage

M = "glm-4"


def body(port: int = 8001, **fields) -> dict:
    return {"model_name": M, "host": "10.0.0.1", "port": port, **fields}


def key(port: int = 8001) -> InstanceKey:
    return InstanceKey(M, "10.0.0.1", port)


def changes(registry: Registry, after: int) -> list[tuple[str, int]]:
    return [(e.type.value, e.instance.port) for e in registry.feed.since(after)]


# -- draining and administration ---------------------------------------------------


async def test_drain_survives_re_registration_and_undrain_restores(registry: Registry) -> None:
    await registry.register(body(weight=2.0))
    start = registry.revision
    drained = await registry.patch(key(), {"enabled": False})
    assert not drained.enabled and drained.overrides == {"enabled": False}
    again, _ = await registry.register(body(weight=3.0, enabled=True))  # the worker restarts
    assert not again.enabled and again.weight == 3.0
    with pytest.raises(NoHealthyInstance):
        await registry.select(M)
    undrained = await registry.patch(key(), {"enabled": None})
    assert undrained.enabled and undrained.overrides is None
    assert (await registry.select(M)).port == 8001
    assert changes(registry, start) == [("disabled", 8001), ("updated", 8001), ("enabled", 8001)]


async def test_set_weight_and_metadata_are_pinned(registry: Registry) -> None:
    await registry.register(body(metadata={"gpu": "a100"}))
    patched = await registry.patch(key(), {"weight": 0.0, "metadata": {"zone": "b"}})
    assert patched.weight == 0.0 and patched.metadata == {"gpu": "a100", "zone": "b"}
    again, _ = await registry.register(body(weight=5.0, metadata={"gpu": "h100"}))
    assert again.weight == 0.0 and again.metadata == {"gpu": "h100", "zone": "b"}


async def test_patch_refuses_unknown_fields_empty_changes_and_unknown_instances(registry: Registry) -> None:
    await registry.register(body())
    with pytest.raises(InvalidInstance, match="enable"):
        await registry.patch(key(), {"enable": False})
    with pytest.raises(InvalidInstance, match="nothing to change"):
        await registry.patch(key(), {})
    with pytest.raises(InvalidInstance, match="weight"):
        await registry.patch(key(), {"weight": -1})
    with pytest.raises(InstanceNotFound):
        await registry.patch(key(9), {"enabled": False})


# -- failures reported by routers ------------------------------------------------


async def test_failures_in_a_row_put_an_instance_in_cooldown_and_a_success_ends_it(
    registry: Registry, clock: ManualClock
) -> None:
    for port in (8001, 8002):
        await registry.register(body(port))
    start = registry.revision
    for n in (1, 2):
        _, failures, _ = await registry.report({**body(), "ok": False, "status": 503, "error": "CUDA error"})
        assert failures == n
    assert len(await registry.instances(M, healthy_only=True)) == 2  # not yet
    cooled, failures, _ = await registry.report({**body(), "ok": False})
    assert failures == 3 and cooled.cooldown_until is not None and cooled.healthy
    assert [i.port for i in await registry.instances(M, healthy_only=True)] == [8002]
    assert len(await registry.instances(M)) == 2  # still registered
    assert {(await registry.select(M)).port for _ in range(20)} == {8002}
    restored, failures, _ = await registry.report({**body(), "ok": True})
    assert failures == 0 and restored.cooldown_until is None
    assert len(await registry.instances(M, healthy_only=True)) == 2
    assert changes(registry, start) == [("cooldown", 8001), ("restored", 8001)]


async def test_a_success_between_failures_resets_the_count(registry: Registry) -> None:
    await registry.register(body())
    for ok in (False, False, True, False, False):
        record, _, _ = await registry.report({**body(), "ok": ok})
    assert record.cooldown_until is None


async def test_failures_outside_the_window_do_not_add_up(registry: Registry, clock: ManualClock) -> None:
    await registry.register(body())
    for _ in range(3):
        _, failures, _ = await registry.report({**body(), "ok": False})
        clock.advance(31)  # the window is 60 s: at most two fall within it
    assert failures == 2


async def test_the_end_of_the_cooldown_puts_the_instance_on_trial(
    registry: Registry, clock: ManualClock
) -> None:
    await registry.register(body())
    for _ in range(3):
        await registry.report({**body(), "ok": False})
    clock.advance(29)
    await registry.heartbeat(body())
    assert (await registry.check_once()).restored == []
    assert await registry.instances(M, healthy_only=True) == []
    clock.advance(2)
    await registry.heartbeat(body())
    assert [r.port for r in (await registry.check_once()).restored] == [8001]
    assert len(await registry.instances(M, healthy_only=True)) == 1
    assert registry.feed.since(registry.revision - 1)[0].type is Change.TRIAL


@pytest.fixture
async def strict(storage: Storage, clock: ManualClock) -> AsyncIterator[Registry]:
    """A registry whose default policy is 5 failures, overridable per instance."""
    async with Registry(
        storage,
        heartbeat_interval=5,
        heartbeat_timeout=30,
        clock=clock,
        checker=False,
        failures=FailurePolicy(threshold=5, window=60, cooldown=30),
    ) as registry:
        yield registry


async def test_thresholds_are_overridable_per_instance_through_metadata(strict: Registry) -> None:
    await strict.register(body(8001))
    await strict.register(body(8002, metadata={"unhealthy_threshold": 1, "failure_cooldown": 5}))
    first, _, _ = await strict.report({**body(8001), "ok": False})
    assert first.cooldown_until is None  # 1 of 5
    other, _, _ = await strict.report({**body(8002), "ok": False})
    assert other.cooldown_until is not None
    assert (other.cooldown_until - other.last_heartbeat).total_seconds() == pytest.approx(5, abs=1)


async def test_reports_on_unknown_instances_or_bad_bodies_are_refused(registry: Registry) -> None:
    with pytest.raises(InstanceNotFound):
        await registry.report({**body(), "ok": False})
    await registry.register(body())
    with pytest.raises(InvalidInstance, match="ok"):
        await registry.report(body())
    with pytest.raises(InvalidInstance, match="status"):
        await registry.report({**body(), "ok": False, "status": 42})


# -- self-preservation ---------------------------------------------------------------


@pytest.fixture
async def guarded(storage: Storage, clock: ManualClock) -> AsyncIterator[Registry]:
    async with Registry(
        storage,
        heartbeat_interval=5,
        heartbeat_timeout=30,
        evict_after=600,
        clock=clock,
        checker=False,
        preservation=Preservation(share=0.5, minimum=3, max_protection=120),
    ) as registry:
        yield registry


async def test_most_of_the_fleet_silent_at_once_is_held_back_then_marked_after_max_protection(
    guarded: Registry, clock: ManualClock, caplog: pytest.LogCaptureFixture
) -> None:
    for port in range(8001, 8011):
        await guarded.register(body(port))
    clock.advance(31)
    await guarded.heartbeat(body(8001))  # nine of ten fall silent at once
    held = await guarded.check_once()
    assert held.expired == [] and held.held_expiry == 9
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert any("self-preservation: holding back marking unhealthy" in m for m in warnings)
    health = await guarded.health()
    assert health["self_preservation"]["active"] and health["self_preservation"]["expiry"]["held"] == 9
    assert len(await guarded.instances(M, healthy_only=True)) == 10
    clock.advance(119)
    await guarded.heartbeat(body(8001))
    assert (await guarded.check_once()).expired == []
    clock.advance(2)  # 121 s of protection
    await guarded.heartbeat(body(8001))
    marked = await guarded.check_once()
    assert len(marked.expired) == 9 and not guarded.self_preservation["active"]
    assert any("protection time is over" in r.getMessage() for r in caplog.records)


async def test_self_preservation_releases_when_the_fleet_beats_again(
    guarded: Registry, clock: ManualClock
) -> None:
    for port in range(8001, 8011):
        await guarded.register(body(port))
    clock.advance(31)
    assert (await guarded.check_once()).held_expiry == 10
    for port in range(8001, 8011):  # the registry's network came back
        await guarded.heartbeat(body(port))
    result = await guarded.check_once()
    assert result.expired == [] and result.held_expiry == 0
    assert not guarded.self_preservation["active"]


async def test_a_few_silent_instances_are_marked_at_once(guarded: Registry, clock: ManualClock) -> None:
    for port in range(8001, 8011):
        await guarded.register(body(port))
    clock.advance(31)
    for port in range(8001, 8009):
        await guarded.heartbeat(body(port))
    assert {r.port for r in (await guarded.check_once()).expired} == {8009, 8010}


async def test_eviction_of_most_instances_at_once_is_guarded_too(
    guarded: Registry, clock: ManualClock
) -> None:
    for port in range(8001, 8011):
        await guarded.register(body(port))
    for port in range(8001, 8010):
        await guarded.deregister(key(port))
    clock.advance(601)
    await guarded.heartbeat(body(8010))
    result = await guarded.check_once()
    assert result.evicted == [] and result.held_eviction == 9
    clock.advance(121)
    await guarded.heartbeat(body(8010))
    assert len((await guarded.check_once()).evicted) == 9


@pytest.mark.parametrize(
    "metadata",
    [
        {"unhealthy_threshold": 10**30},
        {"failure_window": 1e300},
        {"failure_cooldown": 2**80},
        {"failure_cooldown": float("nan")},
        {"failure_cooldown": float("inf")},
        {"failure_cooldown": -1},
        {"failure_cooldown": True},
        {"failure_cooldown": "30"},
    ],
)
def test_out_of_range_failure_settings_in_metadata_are_ignored(metadata: dict) -> None:
    default = FailurePolicy(threshold=3, window=60, cooldown=30)
    assert default.for_instance(metadata) == default


def test_failure_settings_up_to_their_limits_apply() -> None:
    policy = FailurePolicy().for_instance(
        {"unhealthy_threshold": 1000, "failure_window": 86_400, "failure_cooldown": 86_400}
    )
    # (a cooldown above max_cooldown raises it: the cooldown is the floor of every one after)
    assert policy == FailurePolicy(threshold=1000, window=86_400.0, cooldown=86_400.0, max_cooldown=86_400.0)


# -- flapping --------------------------------------------------------------------------


async def test_an_instance_that_flaps_is_held_out_with_a_backoff(
    registry: Registry, clock: ManualClock
) -> None:
    """Silent, then beating again, over and over: past 5 health changes in 10 minutes it
    is held out like a failing instance, and a second bout holds it out twice as long."""
    await registry.register(body(8001))
    await registry.register(body(8002))
    clock.advance(31)  # past the start-up grace

    async def flap() -> None:
        for _ in range(3):  # unhealthy, then healthy: two changes each time
            clock.advance(31)
            await registry.heartbeat(body(8002))
            await registry.check_once()  # 8001 is silent: unhealthy
            await registry.heartbeat(body(8001))  # and back

    await flap()
    record = await registry.storage.get(key(8001))
    assert record.cooldown_until is None  # the sweep that sees it comes next
    await registry.heartbeat(body(8002))
    await registry.check_once()
    record = await registry.storage.get(key(8001))
    assert record.state == "cooling" and record.state_reason == (
        "flapping: 6 health changes in 600 s; cooling down 30 s"
    )
    assert {(await registry.select(M)).port for _ in range(10)} == {8002}
    assert (await registry.storage.get(key(8002))).state == "ready"
    # Its cooldown over, it is on trial; a success restores it.
    clock.advance(31)
    for port in (8001, 8002):
        await registry.heartbeat(body(port))
    await registry.check_once()
    assert (await registry.storage.get(key(8001))).state_reason.startswith("on trial after a 30 s cooldown")
    await registry.report({**body(8001), "ok": True})
    assert (await registry.storage.get(key(8001))).state == "ready"
    # Flapping again within the window: held out for twice as long.
    await flap()
    await registry.heartbeat(body(8002))
    await registry.check_once()
    record = await registry.storage.get(key(8001))
    assert record.state_reason.endswith("cooling down 60 s")
