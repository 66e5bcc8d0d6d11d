"""Active health checks and engine metrics, end to end: a registry on loopback probes
and scrapes a real worker stub (an aiohttp app the test drives) on loopback."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from model_registry.api.keys import PROBER, REGISTRY
from model_registry.probes import STARTING

FIXTURES = Path(__file__).parent.parent / "registry" / "fixtures"
VLLM = (FIXTURES / "vllm_metrics.txt").read_text()
SGLANG = (FIXTURES / "sglang_metrics.txt").read_text()
INSTANCES = "/api/v1/instances"


class Worker:
    """An LLM worker as the prober sees it: /health answers ``status`` after ``delay``
    seconds (or the port is closed), /metrics answers ``metrics``."""

    def __init__(self) -> None:
        self.status = 200
        self.delay = 0.0
        self.metrics = VLLM
        self.probes = 0
        self.scrapes = 0
        self.hang = asyncio.Event()
        app = web.Application()
        app.router.add_get("/health", self._health)
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/hang", self._hang)
        self.server = TestServer(app, host="127.0.0.1")

    async def _health(self, request: web.Request) -> web.Response:
        self.probes += 1
        if self.delay:
            await asyncio.sleep(self.delay)
        return web.Response(status=self.status, text="ok" if self.status < 400 else "down")

    async def _metrics(self, request: web.Request) -> web.Response:
        self.scrapes += 1
        return web.Response(text=self.metrics, content_type="text/plain")

    async def _hang(self, request: web.Request) -> web.Response:
        self.scrapes += 1
        await self.hang.wait()
        return web.Response(text="")

    async def start(self) -> None:
        await self.server.start_server()
        assert self.server.port is not None
        self.port = self.server.port


@pytest.fixture
async def worker() -> Any:
    w = Worker()
    await w.start()
    yield w
    w.hang.set()
    await w.server.close()


def registration(port: int, model: str = "llama", **extra: Any) -> dict[str, Any]:
    return {"model_name": model, "host": "127.0.0.1", "port": port, **extra}


async def until(condition: Callable[[], Awaitable[Any]], timeout: float = 10.0) -> Any:
    """Wait for ``condition`` to return something true (checked every 50 ms), or fail."""
    deadline = time.monotonic() + timeout
    while True:
        value = await condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout} s: {condition.__doc__ or condition}")
        await asyncio.sleep(0.05)


async def instance(client: TestClient, port: int, model: str = "llama") -> dict[str, Any]:
    answer = await client.get(INSTANCES, params={"model_name": model})
    return next(i for i in (await answer.json())["instances"] if i["port"] == port)


CHECK = {"http": "/health", "interval": 1, "timeout": 0.5, "healthy_after": 1, "unhealthy_after": 2}


async def test_an_instance_with_a_check_is_served_once_it_passes_it(
    client: TestClient, worker: Worker
) -> None:
    answer = await client.post(INSTANCES, json=registration(worker.port, check=CHECK))
    assert answer.status == 201
    body = await answer.json()
    assert body["check"] == {**CHECK, "interval": 1.0, "timeout": 0.5}
    assert body["healthy"] is False and body["state_reason"] == STARTING
    assert body["last_heartbeat"] is None

    async def healthy() -> bool:
        return (await instance(client, worker.port))["healthy"]

    await until(healthy, 5)
    record = await instance(client, worker.port)
    assert record["state_reason"] is None
    picked = await client.get("/api/v1/select", params={"model_name": "llama"})
    assert picked.status == 200 and (await picked.json())["port"] == worker.port


async def test_failing_probes_mark_it_unhealthy_after_the_threshold_with_the_reason(
    client: TestClient, worker: Worker
) -> None:
    await client.post(INSTANCES, json=registration(worker.port, check=CHECK))

    async def healthy() -> bool:
        return (await instance(client, worker.port))["healthy"]

    await until(healthy, 5)
    events = await client.ws_connect("/api/v1/watch", params={"model_name": "llama"})
    snapshot = await events.receive_json()
    assert snapshot["type"] == "snapshot"
    worker.status = 503
    probes_at_failure = worker.probes

    async def marked() -> dict[str, Any] | None:
        record = await instance(client, worker.port)
        return None if record["healthy"] else record

    record = await until(marked, 8)
    assert worker.probes - probes_at_failure >= 2  # not one failed probe: two in a row
    assert record["state_reason"].startswith("probe: HTTP 503 after ")
    event = await events.receive_json(timeout=5)
    assert event["type"] == "unhealthy" and event["instance"]["state_reason"] == record["state_reason"]
    picked = await client.get("/api/v1/select", params={"model_name": "llama"})
    assert picked.status == 404

    worker.status = 200
    await until(healthy, 5)
    event = await events.receive_json(timeout=5)
    assert event["type"] == "healthy" and event["instance"]["state_reason"] is None
    await events.close()


async def test_a_closed_port_is_connection_refused(client: TestClient, worker: Worker) -> None:
    await client.post(INSTANCES, json=registration(worker.port, check=CHECK))

    async def healthy() -> bool:
        return (await instance(client, worker.port))["healthy"]

    await until(healthy, 5)
    await worker.server.close()

    async def refused() -> str | None:
        record = await instance(client, worker.port)
        return None if record["healthy"] else record["state_reason"]

    assert await until(refused, 8) == "probe: connection refused"


async def test_a_slow_answer_is_a_timeout(client: TestClient, worker: Worker) -> None:
    await client.post(INSTANCES, json=registration(worker.port, check=CHECK))

    async def healthy() -> bool:
        return (await instance(client, worker.port))["healthy"]

    await until(healthy, 5)
    worker.delay = 0.8

    async def timed_out() -> str | None:
        record = await instance(client, worker.port)
        return None if record["healthy"] else record["state_reason"]

    assert await until(timed_out, 8) == "probe: no answer within 0.5 s"


async def test_an_instance_with_a_check_and_no_heartbeats_is_not_expired(
    client: TestClient, worker: Worker, clock: Any
) -> None:
    await client.post(INSTANCES, json=registration(worker.port, check=CHECK))
    registry = client.app[REGISTRY]

    async def healthy() -> bool:
        return (await instance(client, worker.port))["healthy"]

    await until(healthy, 5)
    clock.advance(registry.heartbeat_timeout * 3)
    result = await registry.check_once()
    assert result.expired == []
    assert (await instance(client, worker.port))["healthy"] is True


async def test_with_both_the_heartbeat_timeout_marks_it_too(
    client: TestClient, worker: Worker, clock: Any
) -> None:
    await client.post(INSTANCES, json=registration(worker.port, check=CHECK))
    registry = client.app[REGISTRY]

    async def healthy() -> bool:
        return (await instance(client, worker.port))["healthy"]

    await until(healthy, 5)
    beat = await client.post("/api/v1/heartbeat", json=registration(worker.port))
    assert beat.status == 200 and (await beat.json())["last_heartbeat"] is not None
    clock.advance(registry.heartbeat_timeout * 3)
    await registry.check_once()  # (or the checker's own sweep, woken by the clock, did it first)
    record = await instance(client, worker.port)
    assert record["healthy"] is False and record["state_reason"] == "heartbeat timeout 30 s"
    # Passing its check does not bring back an instance whose beats stopped.
    key = next(i.key for i in await registry.instances("llama"))
    assert await registry.check_passed(key) is None


async def test_a_heartbeat_does_not_revive_an_instance_its_check_holds(
    client: TestClient, worker: Worker
) -> None:
    worker.status = 500
    await client.post(INSTANCES, json=registration(worker.port, check=CHECK))

    async def failing() -> str | None:
        reason = (await instance(client, worker.port))["state_reason"]
        return reason if reason != STARTING else None

    assert (await until(failing, 5)).startswith("probe: HTTP 500")
    beat = await client.post("/api/v1/heartbeat", json=registration(worker.port))
    assert beat.status == 200
    body = await beat.json()
    assert body["healthy"] is False and body["state_reason"].startswith("probe: HTTP 500")


async def test_probe_targets_are_the_instance_itself(client: TestClient, worker: Worker) -> None:
    for check, field in (
        ({"http": "http://169.254.169.254/latest/meta-data"}, "check.http"),
        ({"http": f"http://127.0.0.2:{worker.port}/health"}, "check.http"),
        ({"http": "//evil.example/health"}, "check.http"),
    ):
        answer = await client.post(INSTANCES, json=registration(worker.port, check=check))
        assert answer.status == 422, check
        assert (await answer.json())["field"] == field
    answer = await client.post(
        INSTANCES, json=registration(worker.port, metrics={"url": "http://10.0.0.1:9090/metrics"})
    )
    assert answer.status == 422 and (await answer.json())["field"] == "metrics.url"
    own = await client.post(
        INSTANCES, json=registration(worker.port, check={"http": f"http://127.0.0.1:{worker.port}/health"})
    )
    assert own.status == 201


async def test_bad_checks_are_422_naming_the_field(client: TestClient, worker: Worker) -> None:
    for check, field in (
        ({"http": "/health", "interval": 0.1}, "check.interval"),
        ({"http": "/health", "interval": 2, "timeout": 5}, "check.timeout"),
        ({"http": "/health", "unhealthy_after": 0}, "check.unhealthy_after"),
        ({"http": "/health", "surprise": 1}, "check.surprise"),
        ({}, "check.http"),
        ("/health", "check"),
    ):
        answer = await client.post(INSTANCES, json=registration(worker.port, check=check))
        assert answer.status == 422, check
        assert (await answer.json())["field"] == field, check


async def test_engine_metrics_are_scraped_into_the_load_record(client: TestClient, worker: Worker) -> None:
    metrics = {"url": "/metrics", "interval": 1}
    answer = await client.post(INSTANCES, json=registration(worker.port, metrics=metrics))
    assert answer.status == 201

    async def loaded() -> dict[str, Any] | None:
        record = await instance(client, worker.port)
        return record if record["load_at"] else None

    record = await until(loaded, 5)
    assert record["waiting"] is not None and record["running"] is not None
    assert 0 <= record["kv_cache_usage"] <= 1
    picked = await client.get("/api/v1/select", params={"model_name": "llama", "strategy": "least_load"})
    reason = (await picked.json())["reason"]
    assert reason["strategy"] == "least_load" and reason["fresh"] is True
    assert reason["load"]["source"] == "engine" and reason["load"]["waiting"] == record["waiting"]


async def test_a_scrape_that_hangs_is_cut_off_and_others_go_on(client: TestClient, worker: Worker) -> None:
    hung = {"url": "/hang", "interval": 1}
    await client.post(INSTANCES, json=registration(worker.port, model="hung", metrics=hung))
    await client.post(INSTANCES, json=registration(worker.port, metrics={"url": "/metrics", "interval": 1}))

    async def loaded() -> bool:
        return (await instance(client, worker.port))["load_at"] is not None

    await until(loaded, 5)
    prober = client.app[PROBER]

    async def cut_off() -> bool:
        return prober.outcomes[("metrics", "failed")] >= 1

    await until(cut_off, 5)  # the scrape's timeout is half its interval
    assert (await instance(client, worker.port, "hung"))["load_at"] is None


async def test_a_heartbeat_may_carry_the_engine_load(client: TestClient) -> None:
    await client.post(INSTANCES, json=registration(9001))
    beat = await client.post(
        "/api/v1/heartbeat", json={**registration(9001), "waiting": 3, "running": 7, "kv_cache_usage": 0.25}
    )
    assert beat.status == 200
    body = await beat.json()
    assert (body["waiting"], body["running"], body["kv_cache_usage"]) == (3, 7, 0.25)
    assert body["load_at"] is not None
    bad = await client.post("/api/v1/heartbeat", json={**registration(9001), "kv_cache_usage": 1.5})
    assert bad.status == 422 and (await bad.json())["field"] == "kv_cache_usage"


async def test_an_operator_may_allow_other_probe_hosts(aiohttp_client: Any, clock: Any) -> None:
    from model_registry.api import create_app
    from model_registry.settings import Settings
    from tests.api.conftest import serve_app

    settings = Settings(storage="memory://", probe_allowed_hosts="Sidecar.Internal, 10.9.9.9")
    assert settings.probe_hosts == frozenset({"sidecar.internal", "10.9.9.9"})
    client = await serve_app(aiohttp_client, create_app(settings, clock=clock))
    allowed = {"url": "http://sidecar.internal:9100/metrics", "interval": 30}
    answer = await client.post(INSTANCES, json=registration(8000, metrics=allowed))
    assert answer.status == 201, await answer.text()
    other = {"http": "http://10.9.9.8:8000/health"}
    answer = await client.post(INSTANCES, json=registration(8001, check=other))
    assert answer.status == 422 and "--probe-allowed-hosts" in (await answer.json())["detail"]
    with pytest.raises(ValueError, match="not a hostname"):
        Settings(storage="memory://", probe_allowed_hosts="no such host!")
