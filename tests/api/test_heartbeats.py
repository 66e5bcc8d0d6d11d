"""``POST /api/v1/heartbeats``: many beats in one request, each with its own result."""

from __future__ import annotations

import logging
from typing import Any

import orjson
import pytest
from aiohttp.test_utils import TestClient

from model_registry import ManualClock
from model_registry.api.keys import REGISTRY

BEATS = "/api/v1/heartbeats"


async def listed(client: TestClient, **params: str) -> dict[str, dict[str, Any]]:
    """The instances by host, once beats written behind are written (PostgreSQL's
    readers see them then)."""
    flush = getattr(client.app[REGISTRY].storage, "flush", None)
    if flush is not None:
        await flush()
    answer = await (await client.get("/api/v1/instances", params=params)).json()
    return {i["host"]: i for i in answer["instances"]}


def beat(n: int, model: str = "m", **fields: Any) -> dict[str, Any]:
    return {"model_name": model, "host": f"10.0.{n // 250}.{n % 250 + 1}", "port": 8000, **fields}


async def test_known_beats_registered_beats_and_refused_beats_each_get_their_result(
    client: TestClient,
) -> None:
    for n in range(3):
        assert (await client.post("/api/v1/instances", json=beat(n))).status == 201
    batch = [
        beat(0, queue_length=4),
        beat(1),
        beat(7, weight=2.0, metadata={"gpu": "a100"}),  # unknown: registered by its beat
        {"model_name": "m", "host": "10.0.0.9", "port": 0},  # breaks a rule
        "not a beat",
        beat(2, queue_length=-1),  # a known instance, a bad load
    ]
    answer = await client.post(BEATS, json={"beats": batch})
    assert answer.status == 200
    results = (await answer.json())["results"]
    assert [r["result"] for r in results] == ["known", "known", "registered", "refused", "refused", "refused"]
    assert "port" in results[3]["detail"] and "object" in results[4]["detail"]
    assert "queue_length" in results[5]["detail"]
    by_host = await listed(client, model_name="m")
    assert by_host["10.0.0.1"]["queue_length"] == 4
    assert by_host["10.0.0.8"]["weight"] == 2.0 and by_host["10.0.0.8"]["metadata"] == {"gpu": "a100"}
    assert "10.0.0.10" not in by_host


async def test_a_batch_beats_as_single_beats_do(client: TestClient, clock: ManualClock) -> None:
    """Silent instances turn healthy again, and the engine's load and ready are read."""
    await client.post("/api/v1/instances", json=beat(0))
    await client.post("/api/v1/instances", json=beat(1, ready=False))
    clock.advance(40)
    for _ in range(2):
        await client.app[REGISTRY].check_once()
    states = {
        i["host"]: i["state"] for i in (await (await client.get("/api/v1/instances")).json())["instances"]
    }
    assert states == {"10.0.0.1": "unhealthy", "10.0.0.2": "starting"}
    batch = [beat(0, waiting=3, running=2, kv_cache_usage=0.5), beat(1, ready=True)]
    results = (await (await client.post(BEATS, json={"beats": batch})).json())["results"]
    assert [r["result"] for r in results] == ["known", "known"]
    now = await listed(client)
    assert now["10.0.0.1"]["state"] == "ready" and now["10.0.0.1"]["waiting"] == 3
    assert now["10.0.0.2"]["state"] == "ready"


async def test_a_thousand_beats_pass_and_one_more_is_refused_whole(client: TestClient) -> None:
    full = [beat(n) for n in range(1000)]
    answer = await client.post(BEATS, json={"beats": full})
    assert answer.status == 200
    assert {r["result"] for r in (await answer.json())["results"]} == {"registered"}
    answer = await client.post(BEATS, json={"beats": [beat(n, "other") for n in range(1001)]})
    assert answer.status == 422
    body = await answer.json()
    assert body["field"] == "beats" and "at most 1000" in body["detail"]
    assert (await (await client.get("/api/v1/instances", params={"model_name": "other"})).json())[
        "count"
    ] == 0


async def test_a_thousand_whole_instances_fit_the_body_cap_and_more_bytes_are_413(client: TestClient) -> None:
    """The agent sends whole instances: 1,000 of them fit in this route's 1 MiB."""
    whole = [
        beat(n, weight=1.0, check_healthy=True, enabled=True, prompt_template="chatml",
             metadata={"gpu": "a100", "zone": "eu-west-1b", "engine": "vllm-0.11"}, ready=True,
             queue_length=n % 9)
        for n in range(1000)
    ]  # fmt: skip
    body = orjson.dumps({"beats": whole})
    assert 64 * 1024 < len(body) < 1024 * 1024
    answer = await client.post(BEATS, data=body, headers={"Content-Type": "application/json"})
    assert answer.status == 200
    huge = orjson.dumps({"beats": [beat(0, metadata={"x": "y" * 4000})] * 300})
    answer = await client.post(BEATS, data=huge, headers={"Content-Type": "application/json"})
    assert answer.status == 413 and (await answer.json())["error"] == "body_too_large"


@pytest.mark.parametrize(
    "body, status, field",
    [
        ({"beats": "all of them"}, 422, "beats"),
        ({}, 422, "beats"),
        ([], 422, "body"),
    ],
)
async def test_a_malformed_batch_is_refused_clearly(
    client: TestClient, body: Any, status: int, field: str
) -> None:
    answer = await client.post(BEATS, json=body)
    assert answer.status == status and (await answer.json())["field"] == field


async def test_not_json_and_compressed_are_415(client: TestClient) -> None:
    answer = await client.post(BEATS, data=b"beats", headers={"Content-Type": "text/plain"})
    assert answer.status == 415
    answer = await client.post(
        BEATS, data=b"\x1f\x8b", headers={"Content-Type": "application/json", "Content-Encoding": "gzip"}
    )
    assert answer.status == 415


async def test_an_empty_batch_is_an_empty_answer(client: TestClient) -> None:
    answer = await client.post(BEATS, json={"beats": []})
    assert answer.status == 200 and await answer.json() == {"results": []}


# -- registrations in bulk: POST /api/v1/instances/batch ----------------------------------

BATCH = "/api/v1/instances/batch"


async def test_a_bulk_registration_creates_updates_and_refuses_each_in_order(client: TestClient) -> None:
    await client.post("/api/v1/instances", json=beat(0, weight=1.0))
    batch = [
        beat(0, weight=3.0),  # updated
        beat(1, metadata={"gpu": "a100"}, ready=False),  # created, starting
        {"model_name": "m", "host": "10.0.0.9", "port": 70000},  # refused
        ["not", "an", "instance"],  # refused
        beat(2, check={"http": "http://169.254.169.254/latest/meta-data/"}),  # refused: SSRF
    ]
    answer = await client.post(BATCH, json={"instances": batch})
    assert answer.status == 200
    results = (await answer.json())["results"]
    assert [r["result"] for r in results] == ["updated", "created", "refused", "refused", "refused"]
    assert "port" in results[2]["detail"] and "check" in results[4]["detail"]
    by_host = await listed(client, model_name="m")
    assert by_host["10.0.0.1"]["weight"] == 3.0
    assert by_host["10.0.0.2"]["state"] == "starting" and by_host["10.0.0.2"]["metadata"] == {"gpu": "a100"}
    assert set(by_host) == {"10.0.0.1", "10.0.0.2"}


async def test_a_bulk_registration_is_watched_as_single_ones_are(
    client: TestClient, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="registry")
    async with client.ws_connect("/api/v1/watch?model_name=m") as ws:
        await ws.receive_json()
        answer = await client.post(BATCH, json={"instances": [beat(n) for n in range(3)]})
        assert [r["result"] for r in (await answer.json())["results"]] == ["created"] * 3
        events = [await ws.receive_json(timeout=5) for _ in range(3)]
    assert [e["type"] for e in events] == ["registered"] * 3
    assert [e["instance"]["host"] for e in events] == ["10.0.0.1", "10.0.0.2", "10.0.0.3"]
    logged = [r for r in caplog.records if r.getMessage() == "instances registered in bulk"]
    assert [(r.new, r.updated) for r in logged] == [(3, 0)]  # one line for the batch


async def test_a_thousand_registrations_pass_and_one_more_is_refused_whole(client: TestClient) -> None:
    answer = await client.post(BATCH, json={"instances": [beat(n) for n in range(1000)]})
    assert {r["result"] for r in (await answer.json())["results"]} == {"created"}
    answer = await client.post(BATCH, json={"instances": [beat(n, "other") for n in range(1001)]})
    assert answer.status == 422 and (await answer.json())["field"] == "instances"
    assert (await (await client.get("/api/v1/instances", params={"model_name": "other"})).json())[
        "count"
    ] == 0
