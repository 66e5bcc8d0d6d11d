"""The clients against real servers on loopback: a registry process, or a scripted fake."""

from __future__ import annotations

import asyncio
import threading

import pytest

from model_registry import ModelInstance
from model_registry.storage import InstanceKey, ModelSummary
from model_registry_sdk import (
    AsyncRegistryClient,
    ClientClosed,
    InstanceLimit,
    InstanceNotFound,
    InvalidRequest,
    NoHealthyInstance,
    RegistryClient,
    RegistryClientError,
    RegistryUnavailable,
    Retry,
    wait_until_ready,
)
from tests.process import ServerProcess, free_port

LLAMA = "meta-llama/Llama-3.1-8B-Instruct"
OK = (200, {"status": "ok"}, {})
UNAVAILABLE = (503, {"error": "shutting_down", "detail": "draining"}, {})
INSTANCE = {"model_name": "m", "host": "h", "port": 1, "weight": 1.0, "healthy": True}


def fast(**overrides) -> Retry:
    return Retry(**{"attempts": 5, "backoff": 0.01, "max_backoff": 0.05, "deadline": 5.0, **overrides})


async def test_every_call_round_trips_as_records(server: ServerProcess) -> None:
    async with AsyncRegistryClient(server.url) as client:
        stored = await client.register(ModelInstance(LLAMA, "10.0.0.5", 8001, weight=2.0, metadata={"g": 1}))
        assert isinstance(stored, ModelInstance) and stored.healthy and stored.metadata == {"g": 1}
        assert stored.last_heartbeat is not None and stored.last_heartbeat.tzinfo is not None
        beaten = await client.heartbeat(ModelInstance(LLAMA, "10.0.0.5", 8001), queue_length=4)
        assert beaten.queue_length == 4 and beaten.weight == 2.0
        assert await client.list_instances(LLAMA, healthy_only=True) == [beaten]
        assert await client.list_models() == [ModelSummary(LLAMA, 1, 1, 1, 1)]
        assert (await client.select(LLAMA)).key == stored.key
        assert (await client.health())["status"] == "ok"
        gone = await client.deregister(InstanceKey(LLAMA, "10.0.0.5", 8001))
        assert not gone.healthy
        with pytest.raises(NoHealthyInstance) as no_healthy:
            await client.select(LLAMA)
        assert no_healthy.value.status == 404 and no_healthy.value.code == "no_healthy_instance"
        await client.deregister(stored, purge=True)
        with pytest.raises(InstanceNotFound):
            await client.deregister(stored)
        with pytest.raises(InvalidRequest) as invalid:
            await client.register(ModelInstance("m", "h", 0))
        assert invalid.value.status == 422 and invalid.value.field == "port"


async def test_operator_changes_and_router_reports_round_trip(server: ServerProcess) -> None:
    async with AsyncRegistryClient(server.url) as client:
        stored = await client.register(
            ModelInstance(LLAMA, "10.0.0.5", 8001, metadata={"failure_cooldown": 60})
        )
        assert not (await client.drain(stored)).enabled
        assert (await client.set_weight(stored.key, 3.0)).weight == 3.0
        patched = await client.patch(stored, metadata={"zone": "b"})
        assert patched.metadata == {"failure_cooldown": 60, "zone": "b"} and not patched.enabled
        assert (await client.undrain(stored)).enabled
        for _ in range(3):
            reported = await client.report(stored, False, error="CUDA error", status=500)
        assert reported.cooldown_until is not None
        assert (reported.cooldown_until - reported.last_heartbeat).total_seconds() > 50
        assert (await client.report(stored.key, True)).cooldown_until is None
        with pytest.raises(InstanceNotFound):
            await client.report(InstanceKey(LLAMA, "10.0.0.5", 1), False)


async def test_batches_of_registrations_and_beats_answer_each_in_order(server: ServerProcess) -> None:
    fleet = [ModelInstance(LLAMA, "10.0.0.5", port, weight=2.0) for port in (8001, 8002)]
    async with AsyncRegistryClient(server.url) as client:
        results = await client.register_many([*fleet, ModelInstance(LLAMA, "10.0.0.5", 0)])
        assert results[:2] == [("created", None), ("created", None)]
        assert results[2][0] == "refused" and results[2][1].startswith("port: ")
        assert [r for r, _ in await client.register_many(fleet)] == ["updated", "updated"]
        unknown = ModelInstance("bge-m3", "10.0.0.5", 8001)
        beats = await client.heartbeats([*fleet, unknown], queue_length=3)
        assert beats == [("known", None), ("known", None), ("registered", None)]
        listed = await client.list_instances(LLAMA)
        assert [(i.key.port, i.weight, i.queue_length) for i in listed] == [(8001, 2.0, 3), (8002, 2.0, 3)]
    with RegistryClient(server.url) as sync:
        assert sync.register_many([ModelInstance("m", "h", 1)]) == [("created", None)]


async def test_reports_are_not_retried_after_a_500(scripted, clock) -> None:
    fake, server = await scripted((500, {"error": "internal_error", "detail": "oops"}, {}))
    async with AsyncRegistryClient(str(server.make_url("/")), retry=fast(), clock=clock) as client:
        with pytest.raises(RegistryUnavailable):
            await client.report(InstanceKey("m", "h", 1), False)
    assert len(fake.requests) == 1  # it may have been counted: a retry would count it twice


async def test_503_twice_then_200_succeeds(scripted, clock) -> None:
    fake, server = await scripted(UNAVAILABLE, UNAVAILABLE, OK)
    async with AsyncRegistryClient(str(server.make_url("/")), retry=fast(), clock=clock) as client:
        assert await client.health() == {"status": "ok"}
    assert len(fake.requests) == 3 and len(clock.sleeps) == 2
    assert all(0 <= s <= 0.05 for s in clock.sleeps)


async def test_retry_after_is_honoured(scripted, clock) -> None:
    fake, server = await scripted((503, {"error": "storage_unavailable"}, {"Retry-After": "2"}), OK)
    async with AsyncRegistryClient(str(server.make_url("/")), retry=fast(), clock=clock) as client:
        await client.health()
    assert clock.sleeps == [2.0]


async def test_retry_after_beyond_the_deadline_gives_up(scripted, clock) -> None:
    fake, server = await scripted((503, {}, {"Retry-After": "60"}), OK)
    client = AsyncRegistryClient(str(server.make_url("/")), retry=fast(deadline=1), clock=clock)
    async with client:
        with pytest.raises(RegistryUnavailable, match="answered 503"):
            await client.health()
    assert len(fake.requests) == 1 and clock.sleeps == []


async def test_4xx_is_raised_at_once_without_retry(scripted, clock) -> None:
    fake, server = await scripted(
        (422, {"error": "invalid_input", "detail": "port: bad", "field": "port"}, {})
    )
    async with AsyncRegistryClient(str(server.make_url("/")), retry=fast(), clock=clock) as client:
        with pytest.raises(InvalidRequest) as caught:
            await client.register(ModelInstance("m", "h", 1))
    assert caught.value.status == 422 and caught.value.code == "invalid_input"
    assert caught.value.detail == "port: bad" and caught.value.field == "port"
    assert len(fake.requests) == 1 and clock.sleeps == []


async def test_a_4xx_without_a_json_body_is_still_a_client_error(scripted) -> None:
    fake, server = await scripted((404, {}, {}))
    async with AsyncRegistryClient(str(server.make_url("/"))) as client:
        with pytest.raises(RegistryClientError) as caught:
            await client.health()
    assert caught.value.status == 404


async def test_500_is_retried_for_idempotent_calls(scripted, clock) -> None:
    fake, server = await scripted((500, {"error": "internal_error"}, {}), (200, INSTANCE, {}))
    async with AsyncRegistryClient(str(server.make_url("/")), retry=fast(), clock=clock) as client:
        assert (await client.register(ModelInstance("m", "h", 1))).key == InstanceKey("m", "h", 1)
    assert len(fake.requests) == 2


async def test_retries_can_be_switched_off(scripted, clock) -> None:
    fake, server = await scripted(UNAVAILABLE, OK)
    async with AsyncRegistryClient(str(server.make_url("/")), retry=False, clock=clock) as client:
        with pytest.raises(RegistryUnavailable, match="shutting_down|draining|503"):
            await client.health()
    assert len(fake.requests) == 1 and clock.sleeps == []


async def test_the_deadline_bounds_a_call(scripted, clock) -> None:
    fake, server = await scripted(UNAVAILABLE)
    policy = Retry(attempts=1000, backoff=0.2, max_backoff=0.2, deadline=1.0, rng=_MaxRandom())
    async with AsyncRegistryClient(str(server.make_url("/")), retry=policy, clock=clock) as client:
        with pytest.raises(RegistryUnavailable):
            await client.health()
    # Time moves only by the waits here: the deadline stops the call before
    # they add up to a second, long before the attempts run out.
    assert sum(clock.sleeps) <= 1.0 and len(fake.requests) == 5


class _MaxRandom:
    """Full jitter at its ceiling, to make the deadline arithmetic exact."""

    def uniform(self, low: float, high: float) -> float:
        return high


async def test_backoff_grows_exponentially_within_full_jitter() -> None:
    policy = Retry(backoff=0.1, max_backoff=1.0, rng=_MaxRandom())
    assert [policy.delay(n) for n in range(6)] == [0.1, 0.2, 0.4, 0.8, 1.0, 1.0]
    jittered = Retry(backoff=0.1, max_backoff=1.0)
    assert all(0 <= jittered.delay(3) <= 0.8 for _ in range(200))


async def test_second_url_serves_when_the_first_refuses(server: ServerProcess, clock) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    for urls in ([dead, server.url], f"{dead}, {server.url}"):
        async with AsyncRegistryClient(urls, retry=fast(), clock=clock) as client:
            assert (await client.health())["status"] == "ok"
    assert clock.sleeps == []  # failing over to an untried URL does not wait


async def test_session_is_recreated_after_repeated_connection_failures(clock) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    client = AsyncRegistryClient(dead, retry=fast(attempts=7), reset_after=3, clock=clock)
    async with client:
        with pytest.raises(RegistryUnavailable, match="Cannot connect|refused"):
            await client.health()
        assert client._transport.sessions_created == 3  # fresh after failures 3 and 6


async def test_calls_survive_a_registry_restart_on_the_same_port() -> None:
    port = str(free_port())
    first = ServerProcess("--storage", "memory://", "--port", port).start()
    try:
        async with AsyncRegistryClient(first.url, retry=fast()) as client:
            await client.register(ModelInstance("m", "h", 1))  # leaves a kept-alive socket
            first.stop()
            with ServerProcess("--storage", "memory://", "--port", port):
                assert (await client.health())["status"] == "ok"
                assert await client.list_instances() == []  # memory:// forgot; the call still works
    finally:
        first.stop()


async def test_a_closed_client_refuses_further_use(server: ServerProcess) -> None:
    client = AsyncRegistryClient(server.url)
    async with client:
        await client.health()
    assert client.closed
    with pytest.raises(ClientClosed, match="closed"):
        await client.health()
    sync = RegistryClient(server.url)
    sync.close()
    sync.close()  # closing twice is harmless
    with pytest.raises(ClientClosed):
        sync.health()


def test_sync_client_works_from_plain_threads(server: ServerProcess) -> None:
    errors: list[BaseException] = []
    with RegistryClient(server.url) as client:

        def work(n: int) -> None:
            try:
                with pytest.raises(RuntimeError):
                    asyncio.get_running_loop()  # a plain thread: no event loop here
                for port in range(n * 10 + 1, n * 10 + 11):
                    client.register(ModelInstance("m", "10.0.0.1", port))
                    client.heartbeat(ModelInstance("m", "10.0.0.1", port), queue_length=n)
            except BaseException as exc:  # surfaced below
                errors.append(exc)

        threads = [threading.Thread(target=work, args=(n,)) for n in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=30)
        assert errors == []
        assert len(client.list_instances("m")) == 40
        assert client.select("m").model_name == "m"
        assert [m.total for m in client.list_models()] == [40]


async def test_wait_until_ready(clock) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with pytest.raises(RegistryUnavailable, match="not ready within 0.5 s"):
        await wait_until_ready(url, timeout=0.5)
    with ServerProcess("--storage", "memory://", "--port", str(port)):
        assert (await wait_until_ready(url, timeout=10))["status"] == "ok"


def test_bad_urls_are_refused() -> None:
    with pytest.raises(ValueError, match="no registry URL"):
        AsyncRegistryClient(" , ")
    assert AsyncRegistryClient("a:1, http://b:2/").urls == ["http://a:1", "http://b:2"]


async def test_a_full_registry_is_an_instance_limit_said_at_once_not_retried() -> None:
    args = ("--storage", "memory://", "--max-instances", "2", "--max-instances-per-model", "1")
    with ServerProcess(*args) as process:
        async with AsyncRegistryClient(process.url) as client:
            await client.register(ModelInstance("a", "10.0.0.5", 8001))
            with pytest.raises(InstanceLimit) as per_model:
                await client.register(ModelInstance("a", "10.0.0.5", 8002))
            assert per_model.value.status == 429 and "--max-instances-per-model" in per_model.value.detail
            await client.register(ModelInstance("b", "10.0.0.5", 8001))
            started = asyncio.get_running_loop().time()
            with pytest.raises(InstanceLimit) as full:
                await client.register(ModelInstance("c", "10.0.0.5", 8001))
            assert full.value.status == 507 and full.value.code == "instance_limit"
            assert "limit of 2 instances (--max-instances)" in full.value.detail
            assert asyncio.get_running_loop().time() - started < 1  # no retries with backoff
            await client.register(ModelInstance("a", "10.0.0.5", 8001, weight=3.0))  # updates pass
