"""The SDK, the agent and the CLI with checks, scrapes and engine load, against a live
registry process that probes a live worker stub on loopback."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from model_registry_sdk import AsyncRegistryClient, HeartbeatAgent, ModelInstance
from tests.process import ServerProcess, run_cli

VLLM = (Path(__file__).parent.parent / "registry" / "fixtures" / "vllm_metrics.txt").read_text()


@pytest.fixture
async def worker() -> AsyncIterator[TestServer]:
    """A vLLM-like server: /health, and vLLM's /metrics."""

    async def health(_: web.Request) -> web.Response:
        return web.Response(text="ok")

    async def metrics(_: web.Request) -> web.Response:
        return web.Response(text=VLLM)

    app = web.Application()
    app.router.add_get("/health", health)
    app.router.add_get("/metrics", metrics)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    yield server
    await server.close()


async def _until_healthy(client: AsyncRegistryClient, model: str, timeout: float = 10) -> ModelInstance:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = await client.list_instances(model)
        if found and found[0].healthy and (found[0].metrics is None or found[0].load_at is not None):
            return found[0]
        await asyncio.sleep(0.05)
    raise AssertionError(f"{model} not healthy (and scraped) within {timeout} s: {found}")


async def test_the_sdk_registers_with_a_check_and_metrics(server: ServerProcess, worker: TestServer) -> None:
    async with AsyncRegistryClient(server.url) as client:
        instance = ModelInstance("sdk-probed", "127.0.0.1", worker.port)
        stored = await client.register(
            instance, check={"http": "/health", "interval": 1, "timeout": 0.5}, metrics="/metrics"
        )
        assert stored.check is not None and stored.check["interval"] == 1.0
        assert stored.metrics == {"url": "/metrics", "interval": 10.0}
        assert stored.healthy is False and stored.state_reason == "probe: not yet passed"
        probed = await _until_healthy(client, "sdk-probed")
        assert probed.state_reason is None and probed.last_heartbeat is None
        assert probed.waiting is not None and probed.kv_cache_usage is not None


async def test_the_agent_reports_engine_load_from_a_callable(server: ServerProcess) -> None:
    async with AsyncRegistryClient(server.url) as client:
        instance = ModelInstance("agent-load", "10.0.0.8", 8000)
        load = {"queue_length": 2, "waiting": 5, "running": 9, "kv_cache_usage": 0.75}
        async with HeartbeatAgent(client, instance, interval=0.2, load=lambda: load) as agent:
            deadline = time.monotonic() + 10
            while agent.beats < 1 and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            assert agent.beats >= 1
            (record,) = await client.list_instances("agent-load")
            assert (record.queue_length, record.waiting, record.running) == (2, 5, 9)
            assert record.kv_cache_usage == 0.75 and record.load_at is not None
            picked, reason = await client.select_why("agent-load", "least_load")
            assert picked.key == instance.key
            assert reason["fresh"] is True and reason["load"]["source"] == "engine"


async def test_the_cli_registers_a_vanilla_vllm_server_in_one_command(
    server: ServerProcess, worker: TestServer
) -> None:
    result = await asyncio.to_thread(
        run_cli,
        *("register", "cli-probed", "127.0.0.1", str(worker.port), "--url", server.url),
        *("--check", "/health", "--check-interval", "1", "--check-timeout", "0.5"),
        *("--metrics", "/metrics", "--metrics-interval", "1", "--json"),
    )
    assert result.returncode == 0, result.stderr
    stored = orjson.loads(result.stdout)
    stored = stored[0] if isinstance(stored, list) else stored
    assert stored["check"]["http"] == "/health" and stored["metrics"]["interval"] == 1.0
    async with AsyncRegistryClient(server.url) as client:
        record = await _until_healthy(client, "cli-probed")
        assert record.load_at is not None
    refused = await asyncio.to_thread(
        run_cli, "register", "cli-probed", "127.0.0.1", str(worker.port), "--url", server.url,
        "--check", "http://169.254.169.254/latest/meta-data",
    )  # fmt: skip
    assert refused.returncode == 1 and "check.http" in refused.stderr
