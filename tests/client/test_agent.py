"""HeartbeatAgent against real registry processes on loopback."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

import pytest

from model_registry_sdk import (
    AsyncRegistryClient,
    HeartbeatAgent,
    InvalidRequest,
    ModelInstance,
    RegistryClient,
    Retry,
)
from tests.process import ServerProcess, free_port

WORKER = ModelInstance("glm-4@llm", "10.0.0.7", 8001, weight=3.0, metadata={"gpu": "h100"})
FAST = Retry(attempts=3, backoff=0.02, max_backoff=0.1, deadline=2.0, timeout=1.0)


async def eventually(check: Callable[[], Awaitable[bool]], timeout: float = 10.0) -> float:
    """Poll ``check`` until true; return how long it took. Fails after ``timeout``."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if await check():
            return time.monotonic() - started
        await asyncio.sleep(0.02)
    raise AssertionError(f"not true within {timeout} s")


def listed(client: AsyncRegistryClient, healthy: bool | None = True) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        try:
            found = [i for i in await client.list_instances(WORKER.model_name) if i.key == WORKER.key]
        except Exception:
            return False
        return bool(found) and (healthy is None or found[0].healthy == healthy)

    return check


async def test_registry_started_after_the_agent() -> None:
    port = str(free_port())
    url = f"http://127.0.0.1:{port}"
    async with AsyncRegistryClient(url, retry=FAST) as client:
        agent = HeartbeatAgent(client, WORKER, interval=0.3)
        await agent.start()
        await asyncio.sleep(0.5)  # the agent is failing to reach anyone meanwhile
        assert agent.running and not agent.registered
        with ServerProcess("--storage", "memory://", "--port", port):
            assert await agent.wait_registered(timeout=10)
            [stored] = await client.list_instances()
            assert stored.weight == 3.0 and stored.metadata == {"gpu": "h100"}
            await agent.stop()


async def test_a_restarted_memory_registry_has_the_instance_back_within_one_interval() -> None:
    port, interval = str(free_port()), 1.0
    async with AsyncRegistryClient(f"http://127.0.0.1:{port}", retry=FAST) as client:
        first = ServerProcess("--storage", "memory://", "--port", port).start()
        try:
            agent = HeartbeatAgent(client, WORKER, interval=interval)
            await agent.start()
            await eventually(listed(client))
        finally:
            first.stop()  # memory:// forgets everything
        with ServerProcess("--storage", "memory://", "--port", port):
            took = await eventually(listed(client), timeout=5)  # from the moment it serves
            assert took <= interval + 1.0  # one interval, plus slack for a loaded machine
            [stored] = await client.list_instances()
            assert stored.weight == 3.0 and stored.metadata == {"gpu": "h100"}
            await agent.stop()


async def test_stop_deregisters(server: ServerProcess) -> None:
    async with AsyncRegistryClient(server.url, retry=FAST) as client:
        async with HeartbeatAgent(client, WORKER, interval=0.2) as agent:
            await agent.wait_registered(timeout=10)
            await eventually(lambda: _beats(agent, 2))
        [stored] = await client.list_instances()
        assert not stored.healthy
        purging = HeartbeatAgent(client, WORKER, interval=0.2, purge_on_stop=True)
        await purging.start()
        await purging.wait_registered(timeout=10)
        await purging.stop()
        assert await client.list_instances() == []


async def _beats(agent: HeartbeatAgent, at_least: int) -> bool:
    return agent.beats >= at_least


async def test_beats_carry_the_reported_load(server: ServerProcess) -> None:
    queue = [5]
    async with AsyncRegistryClient(server.url, retry=FAST) as client:

        async def queue_length() -> bool:
            found = await client.list_instances()
            return bool(found) and found[0].queue_length == queue[0]

        async with HeartbeatAgent(client, WORKER, interval=0.1, load=lambda: queue[0]):
            await eventually(queue_length)
            queue[0] = 0
            await eventually(queue_length)
        states = iter([{"queue_length": 7}, RuntimeError("boom")])

        def flaky():
            value = next(states, {"queue_length": 2})
            if isinstance(value, Exception):
                raise value
            return value

        async with HeartbeatAgent(client, WORKER, interval=0.1, load=flaky) as agent:
            queue[0] = 2
            await eventually(queue_length)  # survived the failing callable
            assert agent.running


async def test_logs_state_changes_not_every_beat(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="model_registry_sdk")
    port = str(free_port())
    async with AsyncRegistryClient(f"http://127.0.0.1:{port}", retry=FAST) as client:
        with ServerProcess("--storage", "memory://", "--port", port) as first:
            agent = HeartbeatAgent(client, WORKER, interval=0.1)
            await agent.start()
            await eventually(lambda: _beats(agent, 5))
            first.stop()
            await eventually(lambda: _has(caplog, "registry unreachable"))
            beats_before = agent.beats
        with ServerProcess("--storage", "memory://", "--port", port):
            await eventually(lambda: _beats(agent, beats_before + 5))
            await agent.stop()
    messages = [r.getMessage() for r in caplog.records if r.name.startswith("model_registry_sdk")]
    assert sum("registry unreachable" in m for m in messages) == 1
    assert messages.count("registry reachable again") == 1
    assert sum("had lost this instance" in m for m in messages) == 1
    assert len(messages) <= 6  # registered, lost, found, re-registered, deregistered (+ a session reset)


async def _has(caplog: pytest.LogCaptureFixture, text: str) -> bool:
    return any(text in r.getMessage() for r in caplog.records)


def test_sync_agent_runs_in_the_background_and_stop_joins(server: ServerProcess) -> None:
    with RegistryClient(server.url, retry=FAST) as client:
        agent = HeartbeatAgent(client, WORKER, interval=0.1)
        agent.start()
        deadline = time.monotonic() + 10
        while not client.list_instances(healthy_only=True) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert client.list_instances(healthy_only=True)[0].key == WORKER.key
        agent.stop()  # returns once deregistered
        assert not agent.running
        assert client.list_instances()[0].healthy is False
        with HeartbeatAgent(client, WORKER, interval=0.1):
            pass  # the sync context manager starts and stops too


def test_a_bad_instance_fails_in_the_workers_face() -> None:
    with pytest.raises(InvalidRequest, match="port"):
        HeartbeatAgent(AsyncRegistryClient("http://127.0.0.1:1"), ModelInstance("m", "h", 0))
    with pytest.raises(ValueError, match="interval"):
        HeartbeatAgent(AsyncRegistryClient("http://127.0.0.1:1"), WORKER, interval=0)


async def test_a_worker_loading_its_model_registers_starting_and_says_when_it_is_ready(
    server: ServerProcess,
) -> None:
    """Registered ``ready=False`` while its model loads (listed, never selected), then
    ``set_ready()``: the next beat, sent at once, makes it ready."""
    loading = ModelInstance("glm-4@llm", "10.0.0.7", 8001, ready=False)
    async with (
        AsyncRegistryClient(server.url, retry=FAST) as client,
        HeartbeatAgent(client, loading, interval=30) as agent,
    ):
        assert await agent.wait_registered(timeout=10)
        [stored] = await client.list_instances()
        assert stored.state == "starting" and stored.ready is False
        assert await client.list_instances(healthy_only=True) == []
        agent.set_ready()

        async def ready() -> bool:
            return [i.state for i in await client.list_instances()] == ["ready"]

        assert await eventually(ready) < 5  # not the 30 s interval: at once
        assert (await client.select("glm-4@llm")).port == 8001


def test_set_ready_from_sync_code(server: ServerProcess) -> None:
    loading = ModelInstance("glm-4@llm", "10.0.0.7", 8001, ready=False)
    with RegistryClient(server.url, retry=FAST) as client:
        agent = HeartbeatAgent(client, loading, interval=30)
        agent.start()
        try:
            deadline = time.monotonic() + 10
            while not client.list_instances() and time.monotonic() < deadline:
                time.sleep(0.02)
            assert client.list_instances()[0].state == "starting"
            agent.set_ready()
            while client.list_instances()[0].state != "ready" and time.monotonic() < deadline:
                time.sleep(0.02)
            assert client.list_instances()[0].state == "ready"
        finally:
            agent.stop()


async def test_one_agent_beats_several_instances_in_one_request(server: ServerProcess) -> None:
    """A worker serving two models: both registered, beaten together (one request a
    beat), and one the registry lost is registered again by the batch."""
    chat = ModelInstance("glm-4@llm", "10.0.0.7", 8001, metadata={"task": "chat"})
    embed = ModelInstance("bge-m3", "10.0.0.7", 8001, metadata={"task": "embeddings"})
    async with AsyncRegistryClient(server.url, retry=FAST) as client:
        async with HeartbeatAgent(client, [chat, embed], interval=0.1) as agent:
            assert await agent.wait_registered(timeout=10)
            assert {i.model_name for i in await client.list_instances()} == {"glm-4@llm", "bge-m3"}
            before = agent.beats

            async def beaten() -> bool:
                return agent.beats >= before + 3

            await eventually(beaten)
            await client.deregister(embed, purge=True)

            async def back() -> bool:
                found = await client.list_instances("bge-m3")
                return bool(found) and found[0].metadata == {"task": "embeddings"}

            await eventually(back)
        assert {i.healthy for i in await client.list_instances()} == {False}  # stop deregistered both
