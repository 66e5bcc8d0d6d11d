"""Failures told apart from busyness, end to end: a fault-injecting worker (an aiohttp
app the test drives) and a healthy one, behind a small router loop that selects
through the SDK, calls the worker it got and reports what it saw, as LLM routers do.
Each behaviour must lead to the documented outcome while the healthy worker keeps
serving."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from model_registry import ManualClock
from model_registry.api.keys import REGISTRY
from model_registry_sdk import AllCoolingDown, AsyncRegistryClient, Retry

M = "qwen"
#: How long the router waits for a worker before it calls the request failed.
ROUTER_TIMEOUT = 0.5


class FaultyWorker:
    """An LLM worker that behaves as told: ``ok``, ``http500`` (with a CUDA error in
    its body), ``http402`` (out of credits), ``http429`` (with Retry-After), ``http503``
    (with or without Retry-After), ``http400`` (the caller's fault), ``timeout``,
    ``drop`` (closes the connection), ``slow`` (answers, after a long prefill)."""

    def __init__(self, behaviour: str = "ok") -> None:
        self.behaviour = behaviour
        self.served = 0
        app = web.Application()
        app.router.add_post("/v1/completions", self._complete)
        self.server = TestServer(app, host="127.0.0.1")

    async def _complete(self, request: web.Request) -> web.StreamResponse:
        self.served += 1
        match self.behaviour:
            case "http500":
                return web.json_response({"error": "CUDA error: device-side assert triggered"}, status=500)
            case "http402":
                return web.json_response({"error": "insufficient credits on this account"}, status=402)
            case "http429":
                return web.json_response({"error": "rate limited"}, status=429, headers={"Retry-After": "7"})
            case "http503-retry-after":
                return web.json_response({"error": "overloaded"}, status=503, headers={"Retry-After": "4"})
            case "http503":
                return web.json_response({"error": "engine dead"}, status=503)
            case "http400":
                return web.json_response({"error": "prompt too long"}, status=400)
            case "timeout":
                await asyncio.sleep(ROUTER_TIMEOUT * 10)
            case "drop":
                assert request.transport is not None
                request.transport.close()
                await asyncio.sleep(ROUTER_TIMEOUT * 10)
            case "slow":
                await asyncio.sleep(ROUTER_TIMEOUT / 3)  # a long prefill, within the router's patience
        return web.json_response({"choices": [{"text": "hello"}]})

    @property
    def registration(self) -> dict[str, Any]:
        return {"model_name": M, "host": "127.0.0.1", "port": self.server.port}


@dataclass
class Router:
    """Select through the SDK, call, report: what an LLM router does per request."""

    registry: AsyncRegistryClient
    http: aiohttp.ClientSession
    seen: list[tuple[int, str]] = field(default_factory=list)  # (port, outcome) per request

    async def route(self) -> tuple[int, str]:
        picked = await self.registry.select(M, "round_robin")
        report: dict[str, Any] = {}
        try:
            async with self.http.post(
                f"http://{picked.host}:{picked.port}/v1/completions",
                json={"prompt": "hi"},
                timeout=aiohttp.ClientTimeout(total=ROUTER_TIMEOUT),
            ) as answer:
                body = await answer.text()
                report = {"ok": answer.status < 400, "status": answer.status}
                if answer.status >= 400:
                    report["error"] = body
                if "Retry-After" in answer.headers:
                    report["retry_after"] = float(answer.headers["Retry-After"])
        except (TimeoutError, aiohttp.ClientError) as exc:
            report = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
        await self.registry.report(picked, **report)
        outcome = "ok" if report["ok"] else str(report.get("status", "error"))
        self.seen.append((picked.port, outcome))
        return picked.port, outcome


@pytest.fixture
async def fleet(client: TestClient) -> Any:
    """A faulty worker and a healthy one, registered, and a router over the SDK."""
    faulty, healthy = FaultyWorker(), FaultyWorker()
    for worker in (faulty, healthy):
        await worker.server.start_server()
        assert (await client.post("/api/v1/instances", json=worker.registration)).status == 201
    url = str(client.make_url("")).rstrip("/")
    async with (
        AsyncRegistryClient(url, retry=Retry(attempts=1)) as registry,
        aiohttp.ClientSession() as http,
    ):
        yield faulty, healthy, Router(registry, http)
    for worker in (faulty, healthy):
        await worker.server.close()


async def _pass(client: TestClient, clock: ManualClock, seconds: float, *workers: FaultyWorker) -> None:
    """Let ``seconds`` pass, the workers beating every 10 s meanwhile, then sweep."""
    while seconds > 0:
        step = min(seconds, 10)
        clock.advance(step)
        seconds -= step
        for worker in workers:
            await client.post("/api/v1/heartbeat", json=worker.registration)
    await client.app[REGISTRY].check_once()


async def _record(client: TestClient, worker: FaultyWorker) -> dict[str, Any]:
    answer = await client.get("/api/v1/instances", params={"model_name": M})
    return next(i for i in (await answer.json())["instances"] if i["port"] == worker.server.port)


FAILURES = {
    "http500": 'HTTP 500 "{"error": "CUDA error: device-side assert triggered"}"',
    "http402": 'HTTP 402 "{"error": "insufficient credits on this account"}"',
    "http503": 'HTTP 503 "{"error": "engine dead"}"',
    "timeout": '"TimeoutError: "',
    "drop": '"ServerDisconnectedError: Server disconnected"',
}


@pytest.mark.parametrize("behaviour", sorted(FAILURES))
async def test_failures_cool_the_worker_down_with_their_reason_and_traffic_moves_away(
    client: TestClient, fleet: Any, behaviour: str
) -> None:
    faulty, healthy, router = fleet
    faulty.behaviour = behaviour
    for _ in range(6):  # round robin: three requests each
        await router.route()
    assert [o for p, o in router.seen if p == healthy.server.port] == ["ok"] * 3
    record = await _record(client, faulty)
    assert record["cooldown_until"] is not None and record["healthy"] is True
    assert record["state_reason"].startswith("3 failures in 60 s, last: ")
    assert record["state_reason"].endswith(FAILURES[behaviour][-20:]) or behaviour in ("timeout", "drop")
    for _ in range(5):  # all traffic goes to the healthy worker now
        assert await router.route() == (healthy.server.port, "ok")


@pytest.mark.parametrize(
    "behaviour, seconds, why",
    [("http429", 7, "busy: HTTP 429"), ("http503-retry-after", 4, "busy: HTTP 503")],
)
async def test_busy_is_passed_over_for_its_retry_after_and_counts_no_failure(
    client: TestClient, fleet: Any, clock: ManualClock, behaviour: str, seconds: float, why: str
) -> None:
    faulty, healthy, router = fleet
    faulty.behaviour = behaviour
    port, _ = await router.route()
    if port == healthy.server.port:
        port, _ = await router.route()
    assert port == faulty.server.port
    record = await _record(client, faulty)
    assert record["state_reason"].startswith(why) and record["state_reason"].endswith(
        f"passed over for {seconds:g} s"
    )
    passed_over = record["cooldown_until"]
    for _ in range(4):  # passed over: every request goes to the healthy one
        assert await router.route() == (healthy.server.port, "ok")
    answer = await client.post("/api/v1/reports", json={**faulty.registration, "ok": False, "status": 429})
    assert (await answer.json())["failures"] == 0 and (await answer.json())["outcome"] == "busy"
    # Its Retry-After over, it serves again, with no trial: busy was no failure.
    faulty.behaviour = "ok"
    await _pass(client, clock, seconds + 1, faulty, healthy)
    record = await _record(client, faulty)
    assert record["cooldown_until"] is None and record["state_reason"] is None, passed_over
    ports = {(await router.route())[0] for _ in range(4)}
    assert ports == {faulty.server.port, healthy.server.port}


@pytest.mark.parametrize("behaviour", ["ok", "slow", "http400"])
async def test_success_slowness_and_the_callers_own_errors_keep_the_worker_serving(
    client: TestClient, fleet: Any, behaviour: str
) -> None:
    faulty, healthy, router = fleet
    faulty.behaviour = behaviour
    for _ in range(10):
        await router.route()
    assert {p for p, _ in router.seen} == {faulty.server.port, healthy.server.port}
    record = await _record(client, faulty)
    assert record["cooldown_until"] is None and record["state_reason"] is None
    answer = await client.post("/api/v1/reports", json={**faulty.registration, "ok": False, "status": 400})
    assert (await answer.json())["outcome"] == "ignored" and (await answer.json())["failures"] == 0


async def test_a_failed_trial_doubles_the_cooldown_and_a_good_one_restores(
    client: TestClient, fleet: Any, clock: ManualClock
) -> None:
    faulty, healthy, router = fleet
    faulty.behaviour = "http500"
    for _ in range(6):
        await router.route()
    assert (await _record(client, faulty))["cooldown_until"] is not None
    await _pass(client, clock, 31, faulty, healthy)
    record = await _record(client, faulty)
    assert record["state_reason"].startswith("on trial after a 30 s cooldown: 1 request")
    # One trial request reaches it; it fails: back into cooldown at once, for 60 s.
    trial = [await router.route() for _ in range(3)]
    assert [o for p, o in trial if p == faulty.server.port] == ["500"]
    record = await _record(client, faulty)
    assert record["state_reason"].startswith("its trial failed (HTTP 500") and record[
        "state_reason"
    ].endswith("cooling down 60 s")
    await _pass(client, clock, 59, faulty, healthy)
    assert (await _record(client, faulty))["state_reason"].endswith("cooling down 60 s")
    await _pass(client, clock, 2, faulty, healthy)
    assert (await _record(client, faulty))["state_reason"].startswith("on trial after a 60 s cooldown")
    # Fixed: its trial request succeeds, and it is back in rotation.
    faulty.behaviour = "ok"
    for _ in range(3):
        await router.route()
    record = await _record(client, faulty)
    assert record["cooldown_until"] is None and record["state_reason"] is None
    ports = [(await router.route())[0] for _ in range(4)]
    assert set(ports) == {faulty.server.port, healthy.server.port}


async def test_a_trial_gets_only_its_trial_requests_until_a_report(
    client: TestClient, fleet: Any, clock: ManualClock
) -> None:
    faulty, healthy, router = fleet
    faulty.behaviour = "http500"
    for _ in range(6):
        await router.route()
    await _pass(client, clock, 31, faulty, healthy)
    picks = [(await router.registry.select_why(M, "round_robin")) for _ in range(6)]
    on_trial = [reason for instance, reason in picks if instance.port == faulty.server.port]
    assert len(on_trial) == 1 and on_trial[0].get("trial") is True


async def test_when_every_instance_cools_down_select_is_503_with_the_first_end(
    client: TestClient, fleet: Any, clock: ManualClock
) -> None:
    faulty, healthy, router = fleet
    faulty.behaviour = healthy.behaviour = "http500"
    for _ in range(6):
        await router.route()
    answer = await client.get("/api/v1/select", params={"model_name": M})
    assert answer.status == 503
    body = await answer.json()
    assert body["error"] == "all_cooling_down" and 29 <= body["retry_after"] <= 30
    assert answer.headers["Retry-After"] == "30"
    with pytest.raises(AllCoolingDown) as caught:
        await router.registry.select(M)
    assert 29 <= caught.value.retry_after <= 30
    # The least bad: the one whose cooldown ends first, marked degraded.
    clock.advance(1)
    await client.post("/api/v1/reports", json={**healthy.registration, "ok": True})  # restores it
    await client.post(
        "/api/v1/reports", json={**healthy.registration, "ok": False, "status": 429, "retry_after": 5}
    )
    answer = await client.get("/api/v1/select", params={"model_name": M, "fallback": "least_bad"})
    assert answer.status == 200
    picked = await answer.json()
    assert picked["degraded"] is True and picked["port"] == healthy.server.port
    assert picked["reason"]["strategy"] == "least_bad"
    instance, reason = await router.registry.select_why(M, fallback="least_bad")
    assert instance.port == healthy.server.port and reason["degraded"] is True


async def test_a_model_with_no_healthy_instance_is_still_404(client: TestClient) -> None:
    answer = await client.get("/api/v1/select", params={"model_name": "nobody"})
    assert answer.status == 404 and (await answer.json())["error"] == "no_healthy_instance"
    answer = await client.get("/api/v1/select", params={"model_name": "nobody", "fallback": "worst"})
    assert answer.status == 422 and (await answer.json())["field"] == "fallback"


# -- starting, ready, disabled: the states and their reasons -----------------------------


async def _state(client: TestClient, port: int) -> tuple[str, str | None]:
    answer = await client.get("/api/v1/instances", params={"model_name": M})
    record = next(i for i in (await answer.json())["instances"] if i["port"] == port)
    return record["state"], record["state_reason"]


async def test_a_worker_loading_its_model_is_starting_until_it_says_ready(
    client: TestClient, clock: ManualClock
) -> None:
    loading = {"model_name": M, "host": "10.0.0.9", "port": 8000, "ready": False}
    serving = {"model_name": M, "host": "10.0.0.8", "port": 8000}
    async with client.ws_connect("/api/v1/watch", params={"model_name": M}) as ws:
        await ws.receive_json()
        answer = await client.post("/api/v1/instances", json=loading)
        assert answer.status == 201 and (await answer.json())["state"] == "starting"
        assert (await ws.receive_json())["instance"]["state"] == "starting"
        await client.post("/api/v1/instances", json=serving)
        await ws.receive_json()
        # Listed, counted, never selected.
        everything = await (await client.get("/api/v1/instances", params={"model_name": M})).json()
        assert {i["host"]: i["state"] for i in everything["instances"]} == {
            "10.0.0.9": "starting",
            "10.0.0.8": "ready",
        }
        for _ in range(10):
            picked = await (await client.get("/api/v1/select", params={"model_name": M})).json()
            assert picked["host"] == "10.0.0.8"
        # Loading takes minutes and blocks its beats: no heartbeat timeout for it.
        for _ in range(12):
            clock.advance(10)
            await client.post("/api/v1/heartbeat", json=serving)
        result = await client.app[REGISTRY].check_once()
        assert result.expired == [] and await _state(client, 8000) == ("ready", None)
        # Loaded: a beat says so.
        beat = await client.post("/api/v1/heartbeat", json={**loading, "ready": True})
        assert beat.status == 200 and (await beat.json())["state"] == "ready"
        event = await ws.receive_json()
        assert event["type"] == "ready" and event["instance"]["host"] == "10.0.0.9"
    hosts = {
        (await (await client.get("/api/v1/select", params={"model_name": M})).json())["host"]
        for _ in range(30)
    }
    assert hosts == {"10.0.0.8", "10.0.0.9"}


async def test_a_worker_not_ready_within_its_grace_is_unhealthy_until_it_is(
    client: TestClient, clock: ManualClock
) -> None:
    loading = {"model_name": M, "host": "10.0.0.9", "port": 8000, "ready": False, "startup_grace": 60}
    await client.post("/api/v1/instances", json=loading)
    for _ in range(6):
        clock.advance(10)
        await client.post("/api/v1/heartbeat", json={k: loading[k] for k in ("model_name", "host", "port")})
    await client.app[REGISTRY].check_once()  # (or the registry's own checker, meanwhile)
    state = ("unhealthy", "not ready within its start-up grace of 60 s")
    answer = await client.get("/api/v1/instances", params={"model_name": M})
    assert [(i["state"], i["state_reason"]) for i in (await answer.json())["instances"]] == [state]
    # Plain beats do not bring it back; ready does.
    await client.post("/api/v1/heartbeat", json={k: loading[k] for k in ("model_name", "host", "port")})
    answer = await client.get("/api/v1/instances", params={"model_name": M})
    assert [(i["state"], i["state_reason"]) for i in (await answer.json())["instances"]] == [state]
    beat = await client.post("/api/v1/heartbeat", json={**loading, "ready": True})
    assert (await beat.json())["state"] == "ready" and (await beat.json())["healthy"] is True


async def test_an_instance_with_a_check_not_yet_passed_is_starting(client: TestClient) -> None:
    body = {"model_name": M, "host": "127.0.0.1", "port": 9, "check": {"http": "/health", "interval": 60}}
    answer = await client.post("/api/v1/instances", json=body)
    record = await answer.json()
    assert (record["state"], record["state_reason"]) == ("starting", "probe: not yet passed")


async def test_a_drain_says_who_drained_it(client: TestClient) -> None:
    body = {"model_name": M, "host": "10.0.0.8", "port": 8000}
    await client.post("/api/v1/instances", json=body)
    query = {"model_name": M, "host": "10.0.0.8", "port": "8000"}
    drained = await (await client.patch("/api/v1/instances", params=query, json={"enabled": False})).json()
    assert (drained["state"], drained["state_reason"]) == ("disabled", "drained by an operator")
    back = await (await client.patch("/api/v1/instances", params=query, json={"enabled": None})).json()
    assert (back["state"], back["state_reason"]) == ("ready", None)
