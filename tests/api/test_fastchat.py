"""FastChat's controller paths over real HTTP on loopback, on every backend.

The wire as FastChat's workers and API server send it; tests/compat drives
FastChat's own code against the same paths. Workers that must answer a
callback are real aiohttp servers on loopback.
"""

from __future__ import annotations

import asyncio
import logging
import random
import sys
from collections import Counter
from collections.abc import Awaitable, Callable

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from model_registry import ManualClock
from model_registry.api import create_app
from model_registry.api.keys import REGISTRY
from model_registry.settings import Settings
from tests.api.conftest import serve_app
from tests.api.test_dbgpt import written_behind

WORKER = "http://10.0.0.7:21002"


def status(*models: str, speed: float = 1, queue_length: int = 0) -> dict:
    return {"model_names": list(models), "speed": speed, "queue_length": queue_length}


async def register(client: TestClient, worker: str = WORKER, *models: str, **fields) -> dict:
    body = {
        "worker_name": worker,
        "check_heart_beat": True,
        "worker_status": status(*(models or ("vicuna-7b",)), **fields),
    }
    answer = await client.post("/register_worker", json=body)
    assert answer.status == 200
    return await answer.json()


async def post(client: TestClient, path: str, body: dict | None = None) -> object:
    # As FastChat's API server asks for lists: no body and no Content-Type.
    answer = await client.post(path, json=body) if body is not None else await client.post(path)
    assert answer.status == 200, await answer.text()
    return await answer.json()


async def beat(client: TestClient, worker: str = WORKER, queue_length: int = 0) -> bool:
    answer = await post(client, "/receive_heart_beat", {"worker_name": worker, "queue_length": queue_length})
    return answer["exist"]  # type: ignore[index]


async def address(client: TestClient, model: str) -> str:
    return (await post(client, "/get_worker_address", {"model": model}))["address"]  # type: ignore[index]


async def test_a_worker_is_one_instance_per_model_and_dispatch_answers_its_name(client: TestClient) -> None:
    answer = await register(client, WORKER + "/", "vicuna-7b", "vicuna-13b", speed=2, queue_length=3)
    assert answer == {"registered": True, "models": ["vicuna-7b", "vicuna-13b"]}
    assert await post(client, "/list_models") == {"models": ["vicuna-13b", "vicuna-7b"]}
    assert await address(client, "vicuna-13b") == WORKER + "/"  # exactly as registered
    native = await (await client.get("/api/v1/instances")).json()
    assert [
        (i["model_name"], i["host"], i["port"], i["weight"], i["queue_length"]) for i in native["instances"]
    ] == [
        ("vicuna-13b", "10.0.0.7", 21002, 2.0, 3),
        ("vicuna-7b", "10.0.0.7", 21002, 2.0, 3),
    ]
    assert native["instances"][0]["metadata"] == {
        "fastchat_worker": WORKER + "/",
        "fastchat_multimodal": False,
    }


async def test_no_worker_for_a_model_is_an_empty_address(client: TestClient) -> None:
    assert await address(client, "nobody-serves-this") == ""


async def test_re_registering_replaces_the_model_list_and_beats_revive_no_dropped_model(
    client: TestClient,
) -> None:
    await register(client, WORKER, "a", "b")
    await register(client, WORKER, "b", "c")
    assert await post(client, "/list_models") == {"models": ["b", "c"]}
    assert await beat(client) is True
    listed = await (await client.get("/api/v1/instances")).json()
    assert [i["model_name"] for i in listed["instances"]] == ["b", "c"]


async def test_a_beat_beats_every_current_model_and_an_unknown_worker_is_told_so(
    client: TestClient, clock: ManualClock
) -> None:
    assert await beat(client) is False  # so FastChat's worker registers again
    await register(client, WORKER, "a", "b")
    before = {i["model_name"]: i for i in (await (await client.get("/api/v1/instances")).json())["instances"]}
    clock.advance(10)
    assert await beat(client, queue_length=4) is True
    await written_behind(client)
    after = {i["model_name"]: i for i in (await (await client.get("/api/v1/instances")).json())["instances"]}
    for name in ("a", "b"):
        assert after[name]["last_heartbeat"] > before[name]["last_heartbeat"]
        assert after[name]["queue_length"] == 4


async def test_a_silent_worker_leaves_the_lists_and_a_beat_brings_it_back(
    client: TestClient, clock: ManualClock
) -> None:
    await register(client, WORKER, "a")
    registry = client.app[REGISTRY]
    clock.advance(31)  # past the grace and the 30 s timeout
    await registry.check_once()  # (or the app's own checker, woken by the clock, did it first)
    [instance] = await registry.instances("a")
    assert instance.healthy is False
    assert await post(client, "/list_models") == {"models": []}
    assert await address(client, "a") == ""
    assert await beat(client) is True
    assert await post(client, "/list_models") == {"models": ["a"]}


async def test_check_heart_beat_false_is_check_healthy_false(client: TestClient) -> None:
    body = {"worker_name": WORKER, "check_heart_beat": False, "worker_status": status("a")}
    assert (await client.post("/register_worker", json=body)).status == 200
    [instance] = (await (await client.get("/api/v1/instances")).json())["instances"]
    assert instance["check_healthy"] is False


async def test_language_and_multimodal_lists(client: TestClient) -> None:
    await register(client, WORKER, "vicuna")
    body = {
        "worker_name": "http://10.0.0.8:21003",
        "check_heart_beat": True,
        "worker_status": status("llava"),
        "multimodal": True,
    }
    assert (await client.post("/register_worker", json=body)).status == 200
    assert await post(client, "/list_models") == {"models": ["llava", "vicuna"]}
    assert await post(client, "/list_language_models") == {"models": ["vicuna"]}
    assert await post(client, "/list_multimodal_models") == {"models": ["llava"]}
    assert await post(client, "/refresh_all_workers") is None
    assert await post(client, "/list_models") == {"models": ["llava", "vicuna"]}


async def test_a_drained_worker_is_out_of_dispatch_and_lists(client: TestClient) -> None:
    await register(client, WORKER, "a")
    await register(client, "http://10.0.0.8:21003", "a")
    drained = await client.patch(
        "/api/v1/instances?model_name=a&host=10.0.0.7&port=21002", json={"enabled": False}
    )
    assert drained.status == 200
    assert {await address(client, "a") for _ in range(50)} == {"http://10.0.0.8:21003"}
    await client.patch("/api/v1/instances?model_name=a&host=10.0.0.8&port=21003", json={"enabled": False})
    assert await address(client, "a") == ""
    assert await post(client, "/list_models") == {"models": []}


async def test_native_instances_are_dispatched_at_their_url(client: TestClient) -> None:
    await client.post("/api/v1/instances", json={"model_name": "m", "host": "::1", "port": 9000})
    assert await post(client, "/list_models") == {"models": ["m"]}
    assert await address(client, "m") == "http://[::1]:9000"


async def test_shortest_queue_picks_the_lowest_queue_per_speed_and_invents_no_load(
    client: TestClient,
) -> None:
    await register(client, "http://10.0.0.1:1", "m", speed=1, queue_length=2)  # 2 per unit of speed
    await register(client, "http://10.0.0.2:1", "m", speed=4, queue_length=4)  # 1
    await register(client, "http://10.0.0.3:1", "m", speed=1, queue_length=3)  # 3
    # FastChat's controller adds one to the chosen worker's queue on each pick; here
    # loads are only what workers report, so every pick between beats agrees.
    assert {await address(client, "m") for _ in range(20)} == {"http://10.0.0.2:1"}
    await beat(client, "http://10.0.0.2:1", queue_length=40)
    await written_behind(client)
    assert await address(client, "m") == "http://10.0.0.1:1"


async def test_the_status_of_the_registry_as_one_worker(client: TestClient) -> None:
    await register(client, WORKER, "a", "b", speed=2, queue_length=1)
    await register(client, "http://10.0.0.8:21003", "b", speed=1, queue_length=5)
    assert await post(client, "/worker_get_status") == {
        "model_names": ["a", "b"],
        "speed": 3.0,
        "queue_length": 6,
    }
    answer = await client.get("/test_connection")
    assert answer.status == 200 and await answer.json() == "success"


async def test_a_status_whose_speeds_sum_past_the_largest_float_is_still_a_number(client: TestClient) -> None:
    """Weights are finite but unbounded; their sum is not finite (and JSON has no infinity:
    it was answered as null, which no FastChat client reads as a speed). Found by schemathesis."""
    for port in (1, 2):
        instance = {"model_name": "m", "host": "10.0.0.1", "port": port, "weight": sys.float_info.max}
        assert (await client.post("/api/v1/instances", json=instance)).status == 201
    status = await post(client, "/worker_get_status")
    assert status["speed"] == sys.float_info.max


@pytest.mark.parametrize(
    "bad",
    [
        {"check_heart_beat": True, "worker_status": status("a")},
        {"worker_name": "10.0.0.7:21002", "worker_status": status("a")},
        {"worker_name": "ftp://10.0.0.7:21", "worker_status": status("a")},
        {"worker_name": "http://10.0.0.7:99999", "worker_status": status("a")},
        {"worker_name": "http://10.0.0.7:21002/\tw1", "worker_status": status("a")},
        {"worker_name": "http://10.0.0.7:21002/w1\r\nX-Injected: 1", "worker_status": status("a")},
        {"worker_name": "http://10.0.0.7:21002/a b", "worker_status": status("a")},
        {"worker_name": "http://10.0.0.7:21002/\x00", "worker_status": status("a")},
        {"worker_name": WORKER, "worker_status": {"model_names": "a"}},
        {"worker_name": WORKER, "worker_status": status("a", speed=-1)},
        {"worker_name": WORKER, "worker_status": status("a", queue_length=-1)},
        {"worker_name": 5},
    ],
)
async def test_bad_registrations_are_422_and_change_nothing(client: TestClient, bad: dict) -> None:
    await register(client, WORKER, "kept")
    answer = await client.post("/register_worker", json=bad)
    assert answer.status == 422, await answer.text()
    assert (await answer.json())["error"] == "invalid_input"
    assert await post(client, "/list_models") == {"models": ["kept"]}


async def test_bad_beats_and_queries_are_refused(client: TestClient) -> None:
    await register(client, WORKER, "a")  # a known worker: bad beats of it still go nowhere
    for path, body in [
        ("/receive_heart_beat", {"queue_length": 1}),
        ("/receive_heart_beat", {"worker_name": WORKER, "queue_length": -1}),
        ("/receive_heart_beat", {"worker_name": "nonsense", "queue_length": 0}),
        ("/receive_heart_beat", {"worker_name": [WORKER], "queue_length": 0}),
        ("/receive_heart_beat", {"worker_name": WORKER, "queue_length": "3"}),
        ("/get_worker_address", {}),
        ("/get_worker_address", {"model": 3}),
    ]:
        answer = await client.post(path, json=body)
        assert answer.status == 422, (path, body)
    malformed = await client.post("/receive_heart_beat", data=b"{not json")
    assert malformed.status == 400
    # FastChat's server reads a body whatever its Content-Type says.
    plain = await client.post(
        "/get_worker_address", data=b'{"model": "m"}', headers={"Content-Type": "text/plain"}
    )
    assert plain.status == 200 and await plain.json() == {"address": ""}


# -- calling the worker back ---------------------------------------------------


@pytest.fixture
async def worker(aiohttp_server: Callable[[web.Application], Awaitable[TestServer]]):
    """A worker answering /worker_get_status; ``release`` lets a held answer go."""
    state = {"status": status("vicuna", speed=3, queue_length=2), "hold": None, "calls": 0}

    async def get_status(request: web.Request) -> web.Response:
        state["calls"] += 1
        if state["hold"] is not None:
            await state["hold"].wait()
        return web.json_response(state["status"])

    app = web.Application()
    app.router.add_post("/worker_get_status", get_status)
    server = await aiohttp_server(app)
    state["name"] = f"http://127.0.0.1:{server.port}"
    return state


async def test_a_registration_without_status_asks_the_worker(client: TestClient, worker: dict) -> None:
    body = {"worker_name": worker["name"], "check_heart_beat": True, "worker_status": None}
    answer = await client.post("/register_worker", json=body)
    assert answer.status == 200 and (await answer.json())["models"] == ["vicuna"]
    assert worker["calls"] == 1
    [instance] = (await (await client.get("/api/v1/instances")).json())["instances"]
    assert (instance["weight"], instance["queue_length"]) == (3.0, 2)


async def test_asking_the_worker_does_not_hold_up_other_requests(client: TestClient, worker: dict) -> None:
    worker["hold"] = asyncio.Event()
    body = {"worker_name": worker["name"], "check_heart_beat": True, "worker_status": None}
    registering = asyncio.create_task(client.post("/register_worker", json=body))
    while worker["calls"] == 0:  # the registry is now waiting for the worker
        await asyncio.sleep(0.01)
    answer = await asyncio.wait_for(client.get("/test_connection"), 5)
    assert answer.status == 200 and not registering.done()
    worker["hold"].set()
    assert (await (await registering).json())["registered"] is True


async def test_a_worker_that_cannot_answer_is_not_registered(
    client: TestClient, worker: dict, unused_tcp_port: int
) -> None:
    body = {"worker_name": f"http://127.0.0.1:{unused_tcp_port}", "check_heart_beat": True}
    answer = await client.post("/register_worker", json=body)
    assert answer.status == 200
    refused = await answer.json()
    assert refused["registered"] is False and "worker_get_status" in refused["detail"]
    worker["status"] = {"model_names": "not a list"}
    answer = await client.post("/register_worker", json={"worker_name": worker["name"]})
    assert (await answer.json())["registered"] is False
    assert await post(client, "/list_models") == {"models": []}


async def test_a_worker_too_slow_to_answer_times_out(
    aiohttp_client: Callable[[web.Application], Awaitable[TestClient]], worker: dict, clock: ManualClock
) -> None:
    worker["hold"] = asyncio.Event()  # never set: the worker never answers
    settings = Settings(storage="memory://", fastchat_status_timeout=0.2)
    client = await serve_app(aiohttp_client, create_app(settings, clock=clock))
    answer = await client.post("/register_worker", json={"worker_name": worker["name"]})
    assert answer.status == 200
    assert "no answer within 0.2 s" in (await answer.json())["detail"]
    worker["hold"].set()


# -- lottery ---------------------------------------------------------------------


async def test_lottery_picks_in_proportion_to_speed(
    aiohttp_client: Callable[[web.Application], Awaitable[TestClient]], clock: ManualClock
) -> None:
    settings = Settings(storage="memory://", fastchat_dispatch="lottery")
    client = await serve_app(aiohttp_client, create_app(settings, clock=clock, rng=random.Random(7)))
    await register(client, "http://10.0.0.1:1", "m", speed=1, queue_length=0)
    await register(client, "http://10.0.0.2:1", "m", speed=3, queue_length=50)
    picks = Counter([await address(client, "m") for _ in range(2000)])
    assert 0.70 < picks["http://10.0.0.2:1"] / 2000 < 0.80, picks


async def test_a_timeout_too_short_for_fastchats_workers_is_pointed_out_once(
    client: TestClient, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="registry")
    await register(client, WORKER, "a")
    await register(client, "http://10.0.0.8:21003", "a")
    [advice] = [r for r in caplog.records if "FastChat workers beat every 45 s" in r.getMessage()]
    assert "--heartbeat-timeout 90" in advice.getMessage()


async def test_a_timeout_long_enough_says_nothing(
    aiohttp_client: Callable[[web.Application], Awaitable[TestClient]],
    clock: ManualClock,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="registry")
    client = await serve_app(
        aiohttp_client, create_app(Settings(storage="memory://", heartbeat_timeout=90), clock=clock)
    )
    await register(client, WORKER, "a")
    assert not [r for r in caplog.records if "beat every" in r.getMessage()]


async def test_one_registry_three_views_watch_and_reports(client: TestClient) -> None:
    """A FastChat worker is seen by /api/v1's long-poll and reports, and by DB-GPT's
    listing when asked by name; reports that cool it down take it out of dispatch."""
    index = (await client.get("/api/v1/instances")).headers["X-Registry-Index"]
    await register(client, WORKER, "a")
    await register(client, "http://10.0.0.8:21003", "a")
    polled = await client.get("/api/v1/instances", params={"model_name": "a", "index": index, "wait": "5s"})
    assert int(polled.headers["X-Registry-Index"]) > int(index)
    assert (await polled.json())["count"] == 2
    dbgpt = await (await client.get("/api/controller/models", params={"model_name": "a"})).json()
    assert sorted(i["port"] for i in dbgpt) == [21002, 21003]
    failed = {"model_name": "a", "host": "10.0.0.7", "port": 21002, "ok": False, "status": 502}
    for _ in range(3):  # the default threshold
        assert (await client.post("/api/v1/reports", json=failed)).status == 200
    assert {await address(client, "a") for _ in range(30)} == {"http://10.0.0.8:21003"}
    healthy = await (
        await client.get("/api/controller/models", params={"model_name": "a", "healthy_only": "true"})
    ).json()
    assert [i["port"] for i in healthy] == [21003]


# -- what a review found -----------------------------------------------------------


async def test_a_load_no_column_can_hold_is_refused_and_storage_keeps_working(client: TestClient) -> None:
    await register(client, WORKER, "a")
    huge = 2**31
    for path, body in [
        ("/receive_heart_beat", {"worker_name": WORKER, "queue_length": huge}),
        ("/api/v1/heartbeat", {"model_name": "a", "host": "10.0.0.7", "port": 21002, "queue_length": huge}),
        (
            "/register_worker",
            {"worker_name": WORKER, "worker_status": status("a", queue_length=huge)},
        ),
    ]:
        answer = await client.post(path, json=body)
        assert answer.status == 422, (path, await answer.text())
    await written_behind(client)
    assert await beat(client, queue_length=2**31 - 1) is True
    await register(client, "http://10.0.0.8:21003", "b")
    await written_behind(client)
    assert await post(client, "/list_models") == {"models": ["a", "b"]}


@pytest.mark.parametrize(
    "name",
    ["//a", "http://a..b:1", "http://" + "a" * 300 + ":1", "http://h:0", "http://h:1/?x=1", "http://h:1/#f"],
)
async def test_a_bad_worker_name_is_422_before_anything_is_called(
    client: TestClient, worker: dict, name: str
) -> None:
    answer = await client.post("/register_worker", json={"worker_name": name, "worker_status": None})
    assert answer.status == 422, await answer.text()
    assert worker["calls"] == 0


async def test_credentials_in_a_worker_name_are_refused_and_not_echoed(client: TestClient) -> None:
    body = {"worker_name": "http://admin:s3cret@10.0.0.7:21002", "worker_status": status("a")}
    answer = await client.post("/register_worker", json=body)
    assert answer.status == 422 and "s3cret" not in await answer.text()


async def test_workers_behind_one_address_keep_their_own_models(client: TestClient) -> None:
    await register(client, "http://gw:8080/w1", "alpha")
    await register(client, "http://gw:8080/w2", "beta")
    assert await post(client, "/list_models") == {"models": ["alpha", "beta"]}
    assert await address(client, "alpha") == "http://gw:8080/w1"
    await client.delete(
        "/api/v1/instances", params={"model_name": "alpha", "host": "gw", "port": "8080", "purge": "1"}
    )
    assert await beat(client, "http://gw:8080/w1") is False  # so w1 registers again
    assert await beat(client, "http://gw:8080/w2") is True


async def test_a_status_in_pieces_is_read_whole_and_a_redirect_is_not_a_status(
    aiohttp_server: Callable[[web.Application], Awaitable[TestServer]], client: TestClient
) -> None:
    async def in_pieces(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        await response.prepare(request)
        await response.write(b'{"model_names": ["pieces"], ')
        await response.write(b'"speed": 1, "queue_length": 0}')
        await response.write_eof()
        return response

    async def redirect(request: web.Request) -> web.Response:
        return web.json_response(status("redirected"), status=302, headers={"Location": "/elsewhere"})

    app = web.Application()
    app.router.add_post("/a/worker_get_status", in_pieces)
    app.router.add_post("/b/worker_get_status", redirect)
    server = await aiohttp_server(app)
    base = f"http://127.0.0.1:{server.port}"
    answer = await (await client.post("/register_worker", json={"worker_name": base + "/a"})).json()
    assert answer == {"registered": True, "models": ["pieces"]}
    refused = await (await client.post("/register_worker", json={"worker_name": base + "/b"})).json()
    assert refused["registered"] is False and "302" in refused["detail"]


async def test_the_list_paths_refuse_a_body_too_large_to_mean_anything(client: TestClient) -> None:
    answer = await client.post("/list_models", data=b"x" * (65 * 1024))
    assert answer.status == 413
