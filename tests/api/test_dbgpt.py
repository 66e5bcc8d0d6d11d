"""DB-GPT's controller paths over real HTTP on loopback, on every backend.

The wire as DB-GPT's client sends it (``dataclasses.asdict`` of its
``ModelInstance`` as JSON, or as query parameters with httpx's spelling).
tests/compat drives DB-GPT's own client code against the same paths.
"""

from __future__ import annotations

import logging
from datetime import timedelta

import pytest
from aiohttp.test_utils import TestClient

from model_registry import ManualClock
from model_registry.api.keys import REGISTRY

DBGPT_KEYS = [
    "model_name",
    "host",
    "port",
    "weight",
    "check_healthy",
    "healthy",
    "enabled",
    "prompt_template",
    "last_heartbeat",
    "remove_from_registry",
]


def dbgpt(name: str = "vicuna-13b@llm", host: str = "10.0.0.5", port: int = 8001, **fields) -> dict:
    """What DB-GPT's client sends: every field of its ModelInstance."""
    return {
        "model_name": name,
        "host": host,
        "port": port,
        "weight": 1.0,
        "check_healthy": True,
        "healthy": False,
        "enabled": True,
        "prompt_template": None,
        "last_heartbeat": None,
        "remove_from_registry": False,
        **fields,
    }


async def written_behind(client: TestClient) -> None:
    """PostgreSQL's readers see beats once they are written behind."""
    flush = getattr(client.app[REGISTRY].storage, "flush", None)
    if flush is not None:
        await flush()


async def listing(client: TestClient, **params: str) -> list[dict]:
    answer = await client.get("/api/controller/models", params=params)
    assert answer.status == 200
    return await answer.json()


async def test_health_answers_status_ok(client: TestClient) -> None:
    answer = await client.get("/api/health")
    assert answer.status == 200 and await answer.json() == {"status": "ok"}


async def test_register_answers_200_true_and_lists_dbgpts_ten_keys(client: TestClient) -> None:
    answer = await client.post("/api/controller/models", json=dbgpt(weight=2, prompt_template="vicuna"))
    assert answer.status == 200 and await answer.read() == b"true"
    [item] = await listing(client, model_name="vicuna-13b@llm", healthy_only="false")
    assert list(item) == DBGPT_KEYS
    assert item["healthy"] is True and item["weight"] == 2.0 and item["prompt_template"] == "vicuna"
    assert item["last_heartbeat"].endswith("Z") and item["remove_from_registry"] is False
    # Re-registering is 200 true again, never 201.
    again = await client.post("/api/controller/models", json=dbgpt())
    assert again.status == 200 and await again.read() == b"true"


async def test_client_sent_health_and_heartbeat_are_ignored(client: TestClient) -> None:
    sent = dbgpt(healthy=False, last_heartbeat="1999-01-01T00:00:00")
    await client.post("/api/controller/models", json=sent)
    [item] = await listing(client, model_name="vicuna-13b@llm", healthy_only="true")
    assert item["healthy"] is True and not item["last_heartbeat"].startswith("1999")


async def test_heartbeat_registers_an_unknown_instance_then_beats_it(
    client: TestClient, clock: ManualClock
) -> None:
    answer = await client.post("/api/controller/heartbeat", json=dbgpt())
    assert answer.status == 200 and await answer.read() == b"true"
    [first] = await listing(client, model_name="vicuna-13b@llm")
    clock.advance(7)
    await client.post("/api/controller/heartbeat", json=dbgpt(last_heartbeat="2000-01-01T00:00:00"))
    await written_behind(client)
    [later] = await listing(client, model_name="vicuna-13b@llm")
    assert later["last_heartbeat"] > first["last_heartbeat"]


async def test_deregister_keeps_or_removes_and_answers_true_for_the_unknown(client: TestClient) -> None:
    await client.post("/api/controller/models", json=dbgpt())
    # As httpx spells DB-GPT's query: every field, None as empty, booleans in lower case.
    query = {
        k: ("" if v is None else str(v).lower() if isinstance(v, bool) else str(v))
        for k, v in dbgpt().items()
    }
    answer = await client.delete("/api/controller/models", params=query)
    assert answer.status == 200 and await answer.read() == b"true"
    [kept] = await listing(client, model_name="vicuna-13b@llm")
    assert kept["healthy"] is False
    assert await listing(client, model_name="vicuna-13b@llm", healthy_only="true") == []
    answer = await client.delete("/api/controller/models", params={**query, "remove_from_registry": "True"})
    assert answer.status == 200 and await answer.read() == b"true"
    assert await listing(client, model_name="vicuna-13b@llm") == []
    unknown = await client.delete("/api/controller/models", params={**query, "port": "9"})
    assert unknown.status == 200 and await unknown.read() == b"true"


async def test_listing_every_model_when_the_name_is_absent_or_empty(client: TestClient) -> None:
    for name in ("a@llm", "b@text2vec", "WorkerManager@service"):
        await client.post("/api/controller/models", json=dbgpt(name))
    names = ["WorkerManager@service", "a@llm", "b@text2vec"]
    assert [i["model_name"] for i in await listing(client)] == names
    assert [i["model_name"] for i in await listing(client, model_name="", healthy_only="True")] == names


async def test_every_model_listing_holds_only_names_dbgpt_can_split(client: TestClient) -> None:
    await client.post("/api/controller/models", json=dbgpt("a@llm"))
    await client.post("/api/v1/instances", json={"model_name": "native", "host": "10.0.0.9", "port": 1})
    await client.post("/api/v1/instances", json={"model_name": "x@y@z", "host": "10.0.0.9", "port": 1})
    await client.post(
        "/register_worker",
        json={
            "worker_name": "http://10.0.0.7:21002",
            "check_heart_beat": True,
            "worker_status": {"model_names": ["vicuna"], "speed": 1, "queue_length": 0},
        },
    )
    assert [i["model_name"] for i in await listing(client)] == ["a@llm"]
    assert [i["model_name"] for i in await listing(client, healthy_only="true")] == ["a@llm"]
    # Asked for by name, any instance is listed.
    assert [i["port"] for i in await listing(client, model_name="native")] == [1]
    assert [i["port"] for i in await listing(client, model_name="vicuna")] == [21002]


async def test_healthy_only_means_available_so_a_drained_instance_gets_no_traffic(
    client: TestClient, clock: ManualClock
) -> None:
    for port in (1, 2, 3):
        await client.post("/api/controller/models", json=dbgpt(port=port))
    drained = await client.patch(
        "/api/v1/instances?model_name=vicuna-13b@llm&host=10.0.0.5&port=1", json={"enabled": False}
    )
    assert drained.status == 200
    registry = client.app[REGISTRY]
    await registry.storage.set_cooldown(
        (await registry.instances("vicuna-13b@llm"))[1].key, clock.now() + timedelta(seconds=30)
    )
    assert [i["port"] for i in await listing(client, model_name="vicuna-13b@llm", healthy_only="true")] == [3]
    everything = await listing(client, model_name="vicuna-13b@llm")
    assert [(i["port"], i["enabled"]) for i in everything] == [(1, False), (2, True), (3, True)]


async def test_an_instance_registered_here_is_one_of_api_v1s(client: TestClient) -> None:
    await client.post("/api/controller/models", json=dbgpt(weight=3))
    native = await (await client.get("/api/v1/instances", params={"model_name": "vicuna-13b@llm"})).json()
    assert native["count"] == 1 and native["instances"][0]["weight"] == 3.0
    picked = await client.get("/api/v1/select", params={"model_name": "vicuna-13b@llm"})
    assert picked.status == 200 and (await picked.json())["port"] == 8001


async def test_bad_input_is_refused_with_422_and_nothing_stored_changes(client: TestClient) -> None:
    await client.post("/api/controller/models", json=dbgpt(weight=2))
    for bad in (dbgpt(port="x"), dbgpt(weight=-1), {"host": "h"}, dbgpt(host="not a host")):
        answer = await client.post("/api/controller/models", json=bad)
        assert answer.status == 422, bad
        assert (await answer.json())["error"] == "invalid_input"
    answer = await client.post("/api/controller/heartbeat", json=dbgpt(port=0))
    assert answer.status == 422
    answer = await client.delete("/api/controller/models", params={"model_name": "m", "host": "h"})
    assert answer.status == 422
    answer = await client.get("/api/controller/models", params={"healthy_only": "maybe"})
    assert answer.status == 422
    [item] = await listing(client)
    assert item["weight"] == 2.0 and item["healthy"] is True


async def test_a_timeout_too_short_for_dbgpts_workers_is_pointed_out_once(
    client: TestClient, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="registry")
    await client.post("/api/controller/models", json=dbgpt())
    await client.post("/api/controller/heartbeat", json=dbgpt(port=2))
    [advice] = [r for r in caplog.records if "DB-GPT workers beat every 20 s" in r.getMessage()]
    assert "--heartbeat-timeout 60" in advice.getMessage()


async def test_an_instance_of_weight_zero_gets_no_dbgpt_traffic(client: TestClient) -> None:
    await client.post("/api/controller/models", json=dbgpt(port=1, weight=0))
    await client.post("/api/controller/models", json=dbgpt(port=2))
    assert [i["port"] for i in await listing(client, model_name="vicuna-13b@llm", healthy_only="true")] == [2]
    assert [i["port"] for i in await listing(client, model_name="vicuna-13b@llm")] == [1, 2]
