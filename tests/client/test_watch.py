"""``watch`` and ``healthy_cache`` against real servers: in-process apps on loopback, and processes."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import timedelta
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from model_registry import ManualClock, ModelInstance
from model_registry.api import create_app
from model_registry.api.keys import REGISTRY
from model_registry.settings import Settings
from model_registry_sdk import (
    AsyncRegistryClient,
    ClientClosed,
    InvalidRequest,
    RegistryClient,
    RegistryClientError,
    Retry,
    WatchEvent,
)
from tests.conftest import sqlite_url
from tests.process import ServerProcess, free_port

FAST = Retry(attempts=3, backoff=0.02, max_backoff=0.1, deadline=2.0, timeout=1.0)


def worker(port: int, model: str = "m") -> ModelInstance:
    return ModelInstance(model, "10.0.0.1", port)


async def next_event(events: AsyncIterator[WatchEvent], timeout: float = 5.0) -> WatchEvent:
    return await asyncio.wait_for(anext(events), timeout)


async def until(check: Callable[[], bool], timeout: float = 5.0) -> None:
    """Wait, polling, until ``check()`` holds; for server-side state that has no event."""
    async with asyncio.timeout(timeout):
        while not check():
            await asyncio.sleep(0.01)


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
async def app_server(
    aiohttp_server: Callable[..., Awaitable[TestServer]], clock: ManualClock
) -> Callable[..., Awaitable[TestServer]]:
    """A registry app on memory:// served on loopback, its checker on ``clock``."""

    async def start(**settings: float) -> TestServer:
        options = {"heartbeat_interval": 5, "heartbeat_timeout": 30, **settings}
        return await aiohttp_server(create_app(Settings(storage="memory://", **options), clock=clock))

    return start


def url_of(server: TestServer) -> str:
    return str(server.make_url("/"))


def app_of(server: TestServer) -> web.Application:
    return server.app


# -- watch ---------------------------------------------------------------------


async def test_a_snapshot_then_every_change_in_order(app_server) -> None:
    server = await app_server()
    async with AsyncRegistryClient(url_of(server), retry=FAST) as client:
        await client.register(worker(8001))
        async with contextlib.aclosing(client.watch()) as events:
            snapshot = await next_event(events)
            await client.register(worker(8002))
            await client.register(dataclasses.replace(worker(8002), weight=2.0))
            await client.deregister(worker(8002))
            changes = [await next_event(events) for _ in range(3)]
    assert snapshot.type == "snapshot" and snapshot.instance is None
    assert [i.key for i in snapshot.instances] == [worker(8001).key]
    assert [(e.type, e.instance.port) for e in changes] == [
        ("registered", 8002),
        ("updated", 8002),
        ("deregistered", 8002),
    ]
    assert changes[1].instance.weight == 2.0 and not changes[2].instance.healthy
    assert all(e.instances is None for e in changes)
    assert [e.revision for e in changes] == [snapshot.revision + n for n in (1, 2, 3)]


async def test_watch_of_one_model_sees_only_its_changes(app_server) -> None:
    server = await app_server()
    client = AsyncRegistryClient(url_of(server), retry=FAST)
    async with client, contextlib.aclosing(client.watch("a")) as events:
        assert (await next_event(events)).instances == []
        await client.register(worker(8001, "b"))
        await client.register(worker(8002, "a"))
        event = await next_event(events)
    assert event.type == "registered" and event.instance.key == worker(8002, "a").key


async def test_bad_parameters_raise_invalid_request_without_retrying(app_server) -> None:
    server = await app_server()
    async with AsyncRegistryClient(url_of(server), retry=FAST) as client:
        with pytest.raises(InvalidRequest) as caught:
            await next_event(client.watch(""))
    assert caught.value.status == 422 and caught.value.code == "invalid_input"
    assert caught.value.field == "model_name" and "required" in caught.value.detail


async def test_a_consumer_cut_off_as_too_slow_resumes_without_a_gap(
    app_server, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="model_registry_sdk")
    server = await app_server(watch_queue=5)
    registry = app_of(server)[REGISTRY]
    client = AsyncRegistryClient(url_of(server), retry=FAST)
    async with client, contextlib.aclosing(client.watch()) as events:
        snapshot = await next_event(events)
        # As if its socket were full (see tests/api/test_watch.py for a real one): every
        # event queues, and a burst past the queue's 5 is cut off with 1013.
        for watcher in registry.feed._every_watcher():
            watcher.sink = lambda event: False
        for port in range(8001, 8031):
            await registry.register({"model_name": "m", "host": "10.0.0.1", "port": port})
        changes = [await next_event(events) for _ in range(30)]
    assert [e.type for e in changes] == ["registered"] * 30  # resumed with since=: no resync
    assert [e.revision for e in changes] == [snapshot.revision + n for n in range(1, 31)]
    assert [e.instance.port for e in changes] == list(range(8001, 8031))
    assert any("(1013 too slow" in r.getMessage() for r in caplog.records)


async def test_leaving_the_loop_closes_the_websocket(app_server) -> None:
    server = await app_server()
    feed = app_of(server)[REGISTRY].feed
    async with AsyncRegistryClient(url_of(server), retry=FAST) as client:
        events = client.watch()
        await next_event(events)
        assert feed.watchers == 1
        await events.aclose()
        await until(lambda: feed.watchers == 0)

        async for _ in client.watch():
            break  # the generator is finalised, and with it the socket
        await until(lambda: feed.watchers == 0)


async def test_closing_the_client_ends_the_watch_with_client_closed(app_server) -> None:
    server = await app_server()
    client = AsyncRegistryClient(url_of(server), retry=FAST)
    events = client.watch()
    await next_event(events)
    waiting = asyncio.create_task(next_event(events))
    await asyncio.sleep(0)
    await client.close()
    with pytest.raises(ClientClosed):
        await asyncio.wait_for(waiting, 2)
    with pytest.raises(ClientClosed):
        await next_event(client.watch())


class _MaxRandom:
    """Full jitter at its ceiling: every backoff is the longest allowed."""

    def uniform(self, low: float, high: float) -> float:
        return high


async def test_closing_the_client_cuts_a_backoff_short() -> None:
    slow = Retry(backoff=30, max_backoff=30, timeout=1.0, rng=_MaxRandom())
    client = AsyncRegistryClient(f"http://127.0.0.1:{free_port()}", retry=slow)
    waiting = asyncio.create_task(next_event(client.watch(), timeout=60))
    await asyncio.sleep(0.2)  # refused at once, then a wait of 30 s
    assert not waiting.done()
    await client.close()
    with pytest.raises(ClientClosed):
        await asyncio.wait_for(waiting, 2)


async def test_a_registry_without_the_watch_endpoint_is_a_client_error(scripted) -> None:
    fake, server = await scripted((404, {"error": "not_found", "detail": "no such route"}, {}))
    async with AsyncRegistryClient(url_of(server), retry=FAST) as client:
        with pytest.raises(RegistryClientError) as caught:
            await next_event(client.watch())
    assert caught.value.status == 404 and len(fake.requests) == 1


async def test_a_dead_first_url_fails_over_to_the_second(app_server) -> None:
    server = await app_server()
    dead = f"http://127.0.0.1:{free_port()}"
    async with AsyncRegistryClient([dead, url_of(server)], retry=FAST) as client:
        async with contextlib.aclosing(client.watch()) as events:
            assert (await next_event(events)).type == "snapshot"
        assert client._transport.current_url == url_of(server).rstrip("/")


async def test_the_watch_survives_a_registry_restart(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="model_registry_sdk")
    args = ("--storage", sqlite_url(tmp_path / "r.db"), "--port", str(free_port()))
    first = ServerProcess(*args).start()
    try:
        async with AsyncRegistryClient(first.url, retry=FAST) as client:
            await client.register(worker(8001))
            events: asyncio.Queue[WatchEvent] = asyncio.Queue()

            async def consume() -> None:  # a consumer that does nothing but read
                async for event in client.watch("m"):
                    events.put_nowait(event)

            consumer = asyncio.create_task(consume())
            try:
                snapshot = await asyncio.wait_for(events.get(), 5)
                assert [i.port for i in snapshot.instances] == [8001]
                first.stop()  # SIGTERM: the registry closes its watchers with 1001, then exits
                with ServerProcess(*args):
                    resync = await asyncio.wait_for(events.get(), 10)
                    await client.register(worker(8002))
                    registered = await asyncio.wait_for(events.get(), 5)
            finally:
                consumer.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await consumer
    finally:
        first.stop()
    # The new process's revisions are all past the old one's: it cannot resume, so it resyncs.
    assert resync.type == "resync" and resync.revision > snapshot.revision
    assert [i.port for i in resync.instances] == [8001]  # from the SQLite file
    assert registered.type == "registered" and registered.instance.port == 8002
    assert registered.revision > resync.revision
    assert any("(1001 registry shutting down" in r.getMessage() for r in caplog.records)


# -- healthy_cache ---------------------------------------------------------------


def ports(instances: list[ModelInstance]) -> list[int]:
    return [i.port for i in instances]


async def test_the_cache_follows_registrations_health_and_deregistrations(app_server, clock) -> None:
    server = await app_server()
    async with AsyncRegistryClient(url_of(server), retry=FAST) as client:
        await client.register(worker(8001))
        async with client.healthy_cache("m") as cache:
            await cache.wait_ready(timeout=5)
            assert ports(cache.instances()) == [8001]
            await client.register(worker(8002))
            await client.register(worker(8003, "other"))  # another model: not followed
            await cache.wait_for(lambda instances: len(instances) == 2, timeout=5)
            clock.advance(20)
            await client.heartbeat(worker(8002))
            clock.advance(11)  # 8001 has been silent past the timeout: the checker marks it
            assert ports(await cache.wait_for(lambda i: ports(i) == [8002], timeout=5)) == [8002]
            await client.heartbeat(worker(8001))
            await cache.wait_for(lambda i: ports(i) == [8001, 8002], timeout=5)
            await client.deregister(worker(8002))
            assert ports(await cache.wait_for(lambda i: len(i) == 1, timeout=5)) == [8001]
            with pytest.raises(ValueError, match="follows 'm' only"):
                cache.instances("other")


async def report(http: aiohttp.ClientSession, port: int, ok: bool) -> None:
    """What a router tells the registry after a request to ``worker(port)``."""
    body = {"model_name": "m", "host": "10.0.0.1", "port": port, "ok": ok}
    async with http.post("/api/v1/reports", json=body) as answer:
        assert answer.status == 200, await answer.text()


async def set_enabled(http: aiohttp.ClientSession, port: int, enabled: bool) -> None:
    params = {"model_name": "m", "host": "10.0.0.1", "port": str(port)}
    async with http.patch("/api/v1/instances", params=params, json={"enabled": enabled}) as answer:
        assert answer.status == 200, await answer.text()


async def test_the_cache_leaves_out_cooling_and_disabled_instances(app_server, clock) -> None:
    server = await app_server()  # three failures reported in a row: 30 s of cooldown
    client = AsyncRegistryClient(url_of(server), retry=FAST)
    http = aiohttp.ClientSession(url_of(server))
    async with client, http, client.healthy_cache(clock=clock) as cache:
        await client.register(worker(8001))
        await client.register(worker(8002))
        events = client.watch("m")
        await next_event(events)
        await cache.wait_for(lambda i: len(i) == 2, timeout=5)
        for _ in range(3):
            await report(http, 8001, ok=False)
        assert ports(await cache.wait_for(lambda i: len(i) == 1, timeout=5)) == [8002]
        # A cache started now learns of the cooldown from its snapshot.
        async with client.healthy_cache(clock=clock) as late:
            await late.wait_ready(timeout=5)
            assert ports(late.instances()) == [8002]
        # By a clock past its end, the cooldown is over even before "restored" comes.
        later = ManualClock(clock.now() + timedelta(seconds=31))
        async with client.healthy_cache(clock=later) as ahead:
            await ahead.wait_ready(timeout=5)
            assert ports(ahead.instances()) == [8001, 8002]
        await report(http, 8001, ok=True)  # a success ends the cooldown at once
        await cache.wait_for(lambda i: len(i) == 2, timeout=5)
        await set_enabled(http, 8002, False)
        assert ports(await cache.wait_for(lambda i: len(i) == 1, timeout=5)) == [8001]
        await set_enabled(http, 8002, True)
        await cache.wait_for(lambda i: len(i) == 2, timeout=5)
        changes = [await next_event(events) for _ in range(4)]
        await events.aclose()
    assert [(e.type, e.instance.port) for e in changes] == [
        ("cooldown", 8001),
        ("restored", 8001),
        ("disabled", 8002),
        ("enabled", 8002),
    ]
    assert changes[0].instance.cooldown_until == clock.now() + timedelta(seconds=30)


async def test_a_cache_whose_watch_fails_for_good_says_so(app_server) -> None:
    server = await app_server()
    async with AsyncRegistryClient(url_of(server), retry=FAST) as client:
        async with client.healthy_cache("") as cache:
            with pytest.raises(InvalidRequest):
                await cache.wait_ready(timeout=5)
            with pytest.raises(InvalidRequest):
                cache.instances()
        async with client.healthy_cache() as cache:
            await cache.wait_ready(timeout=5)
            await client.close()
            with pytest.raises(ClientClosed):
                await cache.wait_changed(cache.revision, timeout=5)


def test_the_sync_client_has_a_cache_readable_from_any_thread(server: ServerProcess) -> None:
    with RegistryClient(server.url, retry=FAST) as client:
        client.register(worker(8001))
        with client.healthy_cache("m") as cache:
            cache.wait_ready(timeout=5)
            assert ports(cache.instances()) == [8001]
            client.register(worker(8002))
            assert ports(cache.wait_for(lambda i: len(i) == 2, timeout=5)) == [8001, 8002]
            assert cache.revision is not None


async def test_a_watch_sends_the_clients_token_and_is_refused_without_one(app_server) -> None:
    from model_registry_sdk.errors import RegistryClientError

    token = "bootstrap-admin-token-for-the-tests-0123456789"
    server = await app_server(admin_token=token)
    async with AsyncRegistryClient(url_of(server), retry=FAST, token=token) as client:
        await client.register(worker(8001))
        async with contextlib.aclosing(client.watch()) as events:
            snapshot = await next_event(events)
            await client.register(worker(8002))
            change = await next_event(events)
    assert [i.port for i in snapshot.instances] == [8001] and change.instance.port == 8002
    async with AsyncRegistryClient(url_of(server), retry=FAST, token="") as anonymous:
        with pytest.raises(RegistryClientError) as refused:
            await next_event(anonymous.watch())
    assert refused.value.status == 401
