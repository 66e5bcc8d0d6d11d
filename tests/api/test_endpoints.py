"""Every endpoint over real HTTP on loopback, on every backend."""

from __future__ import annotations

import asyncio
import re

import orjson
from aiohttp.test_utils import TestClient

from model_registry import ManualClock
from model_registry.api.keys import REGISTRY

RFC3339_UTC = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z$")
LLAMA = "meta-llama/Llama-3.1-8B-Instruct"


def body(name: str = LLAMA, host: str = "10.0.0.5", port: int = 8001, **fields) -> dict:
    return {"model_name": name, "host": host, "port": port, **fields}


def query(name: str = LLAMA, host: str = "10.0.0.5", port: int = 8001, **extra) -> dict:
    return {"model_name": name, "host": host, "port": str(port), **extra}


async def test_register_creates_201_then_updates_200(client: TestClient) -> None:
    first = await client.post("/api/v1/instances", json=body(weight=2, metadata={"gpu": "a100"}))
    assert first.status == 201
    created = await first.json()
    assert created["healthy"] is True and created["weight"] == 2.0
    assert RFC3339_UTC.match(created["last_heartbeat"]) and RFC3339_UTC.match(created["registered_at"])
    again = await client.post("/api/v1/instances", json=body(weight=3, prompt_template="llama-3"))
    assert again.status == 200
    updated = await again.json()
    assert updated["weight"] == 3.0 and updated["prompt_template"] == "llama-3"
    assert updated["registered_at"] == created["registered_at"]
    listed = await (await client.get("/api/v1/instances")).json()
    assert listed["count"] == 1 and listed["instances"] == [updated]


async def test_client_values_of_server_managed_fields_are_ignored(
    client: TestClient, clock: ManualClock
) -> None:
    sent = body(healthy=False, last_heartbeat="not even a date", registered_at=5, queue_length=-3)
    response = await client.post("/api/v1/instances", json=sent)
    assert response.status == 201
    stored = await response.json()
    assert stored["healthy"] is True and stored["queue_length"] is None
    assert stored["last_heartbeat"] == clock.now().isoformat().replace("+00:00", "Z")


async def test_heartbeat_registers_unknown_then_advances(client: TestClient, clock: ManualClock) -> None:
    first = await client.post("/api/v1/heartbeat", json=body(queue_length=3))
    assert first.status == 200
    assert (await first.json())["queue_length"] == 3
    clock.advance(10)
    second = await (await client.post("/api/v1/heartbeat", json=body())).json()
    assert second["last_heartbeat"] > (await first.json())["last_heartbeat"]
    assert second["queue_length"] == 3


async def test_deregister_keeps_record_and_purge_deletes(client: TestClient) -> None:
    await client.post("/api/v1/instances", json=body())
    response = await client.delete("/api/v1/instances", params=query())
    assert response.status == 200
    assert (await response.json())["healthy"] is False
    listed = await (await client.get("/api/v1/instances")).json()
    assert [i["healthy"] for i in listed["instances"]] == [False]
    healthy = await (await client.get("/api/v1/instances", params={"healthy_only": "true"})).json()
    assert healthy == {"instances": [], "count": 0}
    purged = await client.delete("/api/v1/instances", params=query(purge="true"))
    assert purged.status == 200
    assert (await (await client.get("/api/v1/instances")).json())["count"] == 0
    gone = await client.delete("/api/v1/instances", params=query())
    assert gone.status == 404
    assert await gone.json() == {
        "error": "instance_not_found",
        "detail": f"no instance '{LLAMA}' at 10.0.0.5:8001 is registered",
    }


async def test_list_filters_by_model_names_with_slashes_and_at_signs(client: TestClient) -> None:
    for name in (LLAMA, "glm-4@llm", "org/model:v2"):
        await client.post("/api/v1/instances", json=body(name))
    for name in (LLAMA, "glm-4@llm", "org/model:v2"):
        listed = await (await client.get("/api/v1/instances", params={"model_name": name})).json()
        assert [i["model_name"] for i in listed["instances"]] == [name]
    raw = await client.get("/api/v1/instances?model_name=meta-llama%2FLlama-3.1-8B-Instruct")
    assert (await raw.json())["count"] == 1


async def test_models_counts(client: TestClient) -> None:
    await client.post("/api/v1/instances", json=body(port=1))
    await client.post("/api/v1/instances", json=body(port=2, enabled=False))
    await client.post("/api/v1/instances", json=body("glm-4@llm", port=1))
    await client.delete("/api/v1/instances", params=query("glm-4@llm", port=1))
    models = await (await client.get("/api/v1/models")).json()
    assert models == {
        "models": [
            {"model_name": "glm-4@llm", "total": 1, "healthy": 0, "enabled": 1, "available": 0},
            {"model_name": LLAMA, "total": 2, "healthy": 2, "enabled": 1, "available": 1},
        ],
        "self_preservation": {"active": False},
    }


async def test_select_picks_healthy_enabled_or_404(client: TestClient) -> None:
    await client.post("/api/v1/instances", json=body(port=1, enabled=False))
    await client.post("/api/v1/instances", json=body(port=2, weight=0))
    missing = await client.get("/api/v1/select", params={"model_name": LLAMA})
    assert missing.status == 404
    assert (await missing.json())["error"] == "no_healthy_instance"
    await client.post("/api/v1/instances", json=body(port=3))
    for _ in range(20):
        picked = await client.get("/api/v1/select", params={"model_name": LLAMA})
        assert picked.status == 200 and (await picked.json())["port"] == 3


async def test_health_reports_ok(client: TestClient, storage_url: str) -> None:
    response = await client.get("/health")
    assert response.status == 200
    health = await response.json()
    assert health["status"] == "ok" and health["checker_running"] is True
    assert health["storage"] == storage_url.split(":")[0].split("+")[0]
    assert health["grace_remaining_s"] == 30


async def test_background_checker_marks_silent_instances_through_http(
    client: TestClient, clock: ManualClock
) -> None:
    await client.post("/api/v1/instances", json=body(port=1))
    await client.post("/api/v1/instances", json=body(port=2))
    for _ in range(7):  # 35 s in 5 s steps: past the grace and the timeout
        await checker_parked(clock)
        clock.advance(5)
        await client.post("/api/v1/heartbeat", json=body(port=2))
    await checker_parked(clock)  # the last sweep has landed
    listed = await (await client.get("/api/v1/instances")).json()
    assert {i["port"]: i["healthy"] for i in listed["instances"]} == {1: False, 2: True}
    await client.post("/api/v1/heartbeat", json=body(port=1))
    listed = await (await client.get("/api/v1/instances", params={"healthy_only": "1"})).json()
    assert listed["count"] == 2


async def checker_parked(clock: ManualClock) -> None:
    """Wait until the background checker sleeps on the clock again."""
    for _ in range(500):
        if clock.sleepers:
            return
        await asyncio.sleep(0.01)
    raise AssertionError("the checker never went back to sleep")


async def test_100_concurrent_registrations_of_one_instance_give_one_record(client: TestClient) -> None:
    responses = await asyncio.gather(
        *(client.post("/api/v1/instances", json=body(weight=i)) for i in range(100))
    )
    assert sorted(r.status for r in responses) == [200] * 99 + [201]
    listed = await (await client.get("/api/v1/instances")).json()
    assert listed["count"] == 1


async def test_a_full_heartbeat_re_registers_a_lost_instance_as_described(client: TestClient) -> None:
    full = body(weight=4, metadata={"gpu": "h100"}, queue_length=1)
    registered = await (await client.post("/api/v1/heartbeat", json=full)).json()
    assert registered["weight"] == 4.0 and registered["metadata"] == {"gpu": "h100"}
    # Known instance: only identity and load are read; the rest of the body is not applied.
    changed = {**full, "weight": 9, "metadata": {}, "queue_length": 5}
    beaten = await (await client.post("/api/v1/heartbeat", json=changed)).json()
    assert beaten["weight"] == 4.0 and beaten["metadata"] == {"gpu": "h100"} and beaten["queue_length"] == 5


async def test_select_strategies_over_http(client: TestClient) -> None:
    for port, load in ((8001, 5), (8002, 0), (8003, 9)):
        await client.post("/api/v1/heartbeat", json=body(port=port, queue_length=load))
    for _ in range(5):  # no inflation: the least loaded stays the least loaded
        picked = await (
            await client.get("/api/v1/select", params={"model_name": LLAMA, "strategy": "least_load"})
        ).json()
        assert picked["port"] == 8002 and picked["queue_length"] == 0
    rotation = [
        (
            await (
                await client.get("/api/v1/select", params={"model_name": LLAMA, "strategy": "round-robin"})
            ).json()
        )["port"]
        for _ in range(6)
    ]
    assert sorted(rotation[:3]) == [8001, 8002, 8003] and rotation[3:] == rotation[:3]
    bad = await client.get("/api/v1/select", params={"model_name": LLAMA, "strategy": "fastest"})
    assert bad.status == 422
    problem = await bad.json()
    assert problem["field"] == "strategy" and "round_robin" in problem["detail"]


async def _send_in_pieces(client: TestClient, path: str, payload: bytes) -> tuple[bytes, dict]:
    head = (
        f"POST {path} HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(payload)}\r\nConnection: close\r\n\r\n"
    ).encode()
    reader, writer = await asyncio.open_connection(client.server.host, client.server.port)
    try:
        writer.write(head + payload[:10])
        await writer.drain()
        await asyncio.sleep(0.1)  # the handler starts with part of the body; either way it must read all
        writer.write(payload[10:])
        await writer.drain()
        answer = await reader.read()
    finally:
        writer.close()
    status, _, rest = answer.partition(b"\r\n")
    return status, orjson.loads(rest.partition(b"\r\n\r\n")[2])


async def test_a_body_that_arrives_in_pieces_is_read_whole(client: TestClient) -> None:
    """A small body usually arrives with its headers and is taken at once; one
    that is still on its way is read to its end (a slow client's)."""
    status, answer = await _send_in_pieces(client, "/api/v1/instances", orjson.dumps(body(weight=4)))
    assert status == b"HTTP/1.1 201 Created" and answer["weight"] == 4.0
    beat = orjson.dumps({**body(), "queue_length": 6})  # a known instance's beat, the hottest path
    status, answer = await _send_in_pieces(client, "/api/v1/heartbeat", beat)
    assert status == b"HTTP/1.1 200 OK" and answer["queue_length"] == 6 and answer["weight"] == 4.0


async def test_a_model_listing_read_again_shows_every_change_since(
    client: TestClient, clock: ManualClock
) -> None:
    """A model's healthy listing is written once per change and kept (the
    same bytes for every reader until then); no change may be missed."""

    async def listing() -> list[tuple[int, int | None, str]]:
        flush = getattr(client.app[REGISTRY].storage, "flush", None)
        if flush is not None:  # PostgreSQL: readers see beats once written behind
            await flush()
        params = {"model_name": LLAMA, "healthy_only": "true"}
        answer = await (await client.get("/api/v1/instances", params=params)).json()
        assert answer["count"] == len(answer["instances"])
        return [(i["port"], i["queue_length"], i["last_heartbeat"]) for i in answer["instances"]]

    registered = await (await client.post("/api/v1/instances", json=body(port=1))).json()
    t0 = registered["last_heartbeat"]
    assert await listing() == await listing() == [(1, None, t0)]
    clock.advance(1)
    beat = await (await client.post("/api/v1/heartbeat", json=body(port=1, queue_length=4))).json()
    assert await listing() == [(1, 4, beat["last_heartbeat"])] and beat["last_heartbeat"] > t0
    await client.post("/api/v1/instances", json=body(port=2))
    assert [port for port, _, _ in await listing()] == [1, 2]
    await client.patch("/api/v1/instances", params=query(port=2), json={"enabled": False})
    assert [port for port, _, _ in await listing()] == [1, 2]  # disabled: still healthy, still listed
    await client.delete("/api/v1/instances", params=query(port=1))
    assert [port for port, _, _ in await listing()] == [2]
    await client.post("/api/v1/instances", json=body(name="another-model", port=1))
    assert [port for port, _, _ in await listing()] == [2]
