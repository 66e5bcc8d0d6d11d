"""Failures seen by routers, and operator changes, over HTTP: a router drives fake
workers that fail on demand, and reports what it sees."""

from __future__ import annotations

import asyncio
import json

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from model_registry import ManualClock
from model_registry.api.keys import REGISTRY

INSTANCES = "/api/v1/instances"
M = "llama"


class FakeWorker:
    """A model worker on loopback that answers, fails with a status, hangs, or drops connections."""

    def __init__(self) -> None:
        self.mode = "ok"
        self.served = 0
        app = web.Application()
        app.router.add_post("/generate", self.generate)
        self.server = TestServer(app, host="127.0.0.1")

    async def generate(self, request: web.Request) -> web.StreamResponse:
        self.served += 1
        if self.mode == "5xx":
            return web.json_response({"error": "CUDA error: device-side assert"}, status=500)
        if self.mode == "timeout":
            await asyncio.sleep(5)
        if self.mode == "drop":
            assert request.transport is not None
            request.transport.close()
            await asyncio.sleep(5)
        return web.json_response({"text": "hello"})

    @property
    def identity(self) -> dict:
        return {"model_name": M, "host": "127.0.0.1", "port": self.server.port}


async def route_one(registry: TestClient, http: aiohttp.ClientSession) -> tuple[int, bool]:
    """What a router does for one request: select, call, report. Returns (port, ok)."""
    picked = await (
        await registry.get("/api/v1/select", params={"model_name": M, "strategy": "round_robin"})
    ).json()
    report = {"model_name": M, "host": picked["host"], "port": picked["port"]}
    try:
        async with http.post(
            f"http://127.0.0.1:{picked['port']}/generate", timeout=aiohttp.ClientTimeout(total=0.3)
        ) as r:
            report.update(ok=r.status < 500, status=r.status)
            if r.status >= 500:
                report["error"] = (await r.json())["error"]
    except (TimeoutError, aiohttp.ClientError) as exc:
        report.update(ok=False, error=f"{type(exc).__name__}: {exc}")
    answer = await registry.post("/api/v1/reports", json=report)
    assert answer.status == 200, await answer.text()
    return picked["port"], report["ok"]


@pytest.fixture
async def workers(client: TestClient) -> list[FakeWorker]:
    fleet = [FakeWorker(), FakeWorker()]
    for worker in fleet:
        await worker.server.start_server()
        assert (await client.post(INSTANCES, json=worker.identity)).status == 201
    yield fleet
    for worker in fleet:
        await worker.server.close()


@pytest.mark.parametrize("failure", ["5xx", "timeout", "drop"])
async def test_a_failing_worker_is_cooled_down_and_traffic_moves_away(
    client: TestClient, workers: list[FakeWorker], clock: ManualClock, failure: str
) -> None:
    bad, good = workers
    bad.mode = failure
    async with client.ws_connect("/api/v1/watch", params={"model_name": M}) as ws:
        await ws.receive_json()
        async with aiohttp.ClientSession() as http:
            outcomes = [await route_one(client, http) for _ in range(6)]  # round robin: 3 each
            assert [ok for port, ok in outcomes if port == bad.server.port] == [False] * 3
            event = await asyncio.wait_for(ws.receive_json(), 5)
            assert event["type"] == "cooldown" and event["instance"]["port"] == bad.server.port
            healthy = await (
                await client.get(INSTANCES, params={"model_name": M, "healthy_only": "true"})
            ).json()
            assert [i["port"] for i in healthy["instances"]] == [good.server.port]
            after = [await route_one(client, http) for _ in range(5)]
            assert {port for port, _ in after} == {good.server.port} and all(ok for _, ok in after)
            # The worker recovers; at the end of its cooldown it is on trial, and the
            # success of its trial request brings it back into rotation.
            bad.mode = "ok"
            for step in (20, 11):  # the workers keep beating while the clock passes the cooldown
                clock.advance(step)
                for worker in workers:
                    await client.post("/api/v1/heartbeat", json=worker.identity)
            await client.app[REGISTRY].check_once()
            event = await asyncio.wait_for(ws.receive_json(), 5)
            assert event["type"] == "trial" and event["instance"]["port"] == bad.server.port
            assert event["instance"]["state_reason"].startswith("on trial after a 30 s cooldown")
            back = [await route_one(client, http) for _ in range(4)]
            event = await asyncio.wait_for(ws.receive_json(), 5)
            assert event["type"] == "restored" and event["instance"]["port"] == bad.server.port
            assert event["instance"]["state_reason"] is None and event["instance"]["cooldown_until"] is None
    assert {port for port, _ in back} == {bad.server.port, good.server.port}


async def test_one_success_report_restores_a_cooled_instance(
    client: TestClient, workers: list[FakeWorker]
) -> None:
    bad = workers[0].identity
    for _ in range(3):
        await client.post("/api/v1/reports", json={**bad, "ok": False, "status": 502})
    answer = await (await client.post("/api/v1/reports", json={**bad, "ok": True})).json()
    assert answer["failures"] == 0 and answer["instance"]["cooldown_until"] is None


@pytest.mark.parametrize("cooldown", [1e13, 2**80, 86_401])
async def test_an_out_of_range_cooldown_in_metadata_is_ignored_not_a_500(
    client: TestClient, cooldown: float
) -> None:
    """Metadata too large for the cooldown arithmetic (past the documented day):
    the server's setting applies, and the instance still goes into cooldown."""
    instance = {"model_name": M, "host": "10.0.0.9", "port": 8001}
    metadata = {"unhealthy_threshold": 1, "failure_cooldown": cooldown}
    body = json.dumps({**instance, "metadata": metadata})  # orjson does not write 2**80
    registered = await client.post(INSTANCES, data=body, headers={"Content-Type": "application/json"})
    assert registered.status == 201, await registered.text()
    answer = await client.post("/api/v1/reports", json={**instance, "ok": False, "status": 500})
    assert answer.status == 200, await answer.text()
    cooled = (await answer.json())["instance"]
    assert cooled["cooldown_until"] is not None  # the server's 30 s, not the metadata's


@pytest.mark.parametrize(
    ("report", "status", "field"),
    [
        ({"model_name": M, "host": "127.0.0.1", "port": 1, "ok": False}, 404, None),
        ({"model_name": M, "host": "127.0.0.1", "port": 1}, 422, "ok"),
        ({"model_name": M, "host": "127.0.0.1", "port": 1, "ok": "yes"}, 422, "ok"),
    ],
)
async def test_bad_reports_are_refused_clearly(
    client: TestClient, report: dict, status: int, field: str | None
) -> None:
    answer = await client.post("/api/v1/reports", json=report)
    assert answer.status == status
    problem = await answer.json()
    assert problem.get("field") == field


async def test_patch_drains_and_the_worker_cannot_undo_it(client: TestClient) -> None:
    identity = {"model_name": M, "host": "10.0.0.1", "port": "8001"}
    await client.post(INSTANCES, json={**identity, "port": 8001})
    drained = await client.patch(INSTANCES, params=identity, json={"enabled": False})
    assert drained.status == 200 and (await drained.json())["enabled"] is False
    await client.post(INSTANCES, json={**identity, "port": 8001, "enabled": True})
    assert (await client.get("/api/v1/select", params={"model_name": M})).status == 404
    listed = await (await client.get(INSTANCES, params={"model_name": M})).json()
    assert listed["instances"][0]["overrides"] == {"enabled": False}
    undrained = await client.patch(INSTANCES, params=identity, json={"enabled": None})
    assert (await undrained.json())["enabled"] is True
    assert (await client.get("/api/v1/select", params={"model_name": M})).status == 200


@pytest.mark.parametrize(
    ("params", "payload", "status", "field"),
    [
        ({"model_name": M, "host": "10.0.0.1", "port": "8001"}, {"enable": False}, 422, "enable"),
        ({"model_name": M, "host": "10.0.0.1", "port": "8001"}, {}, 422, "body"),
        ({"model_name": M, "host": "10.0.0.1", "port": "8001"}, {"weight": "heavy"}, 422, "weight"),
        ({"model_name": M, "host": "10.0.0.1", "port": "9"}, {"enabled": False}, 404, None),
        ({"model_name": M, "host": "10.0.0.1"}, {"enabled": False}, 422, "port"),
    ],
)
async def test_bad_patches_are_refused_and_change_nothing(
    client: TestClient, params: dict, payload: dict, status: int, field: str | None
) -> None:
    await client.post(INSTANCES, json={"model_name": M, "host": "10.0.0.1", "port": 8001})
    answer = await client.patch(INSTANCES, params=params, json=payload)
    assert answer.status == status
    assert (await answer.json()).get("field") == field
    (stored,) = (await (await client.get(INSTANCES)).json())["instances"]
    assert stored["enabled"] is True and stored["overrides"] is None


async def test_models_and_health_report_self_preservation(client: TestClient) -> None:
    models = await (await client.get("/api/v1/models")).json()
    health = await (await client.get("/health")).json()
    assert models["self_preservation"] == {"active": False} == health["self_preservation"]
