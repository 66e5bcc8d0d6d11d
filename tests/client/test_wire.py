"""One wire format: the client reads back every field a real server sends.

The record's fields are defined once (``model_registry_sdk.record``); the
server writes them, the client parses them with ``from_wire``. These tests
take a real server's answers, every field set, and check that nothing is
missing, extra or read back differently.
"""

from __future__ import annotations

import dataclasses
from datetime import datetime

import aiohttp
import orjson

from model_registry_sdk import AsyncRegistryClient, ModelInstance, ModelSummary
from model_registry_sdk.record import SERVER_MANAGED_FIELDS, from_wire, summary_from_wire, to_wire
from tests.process import ServerProcess

FIELDS = [f.name for f in dataclasses.fields(ModelInstance)]


def _same(parsed: object, sent: object) -> bool:
    if isinstance(parsed, datetime):
        return isinstance(sent, str) and parsed == datetime.fromisoformat(sent) and parsed.tzinfo is not None
    return parsed == sent


async def _every_field_set(url: str) -> None:
    """One instance with every field holding a value: pinned, loaded, cooling, then deregistered."""
    body = {
        "model_name": "wire@llm", "host": "10.0.0.9", "port": 9001, "weight": 2, "check_healthy": True,
        "enabled": True, "prompt_template": "chatml", "metadata": {"gpu": "a100", "unhealthy_threshold": 1},
        "check": {"http": "/health", "interval": 60, "timeout": 1}, "metrics": {"url": "/metrics"},
        "ready": True, "startup_grace": 900,
    }  # fmt: skip
    load = {"queue_length": 4, "waiting": 1, "running": 2, "kv_cache_usage": 0.5}
    key = {"model_name": "wire@llm", "host": "10.0.0.9", "port": "9001"}
    async with aiohttp.ClientSession(url) as http:
        for method, path, kwargs in (
            ("POST", "/api/v1/instances", {"json": body}),
            ("POST", "/api/v1/heartbeat", {"json": {**body, **load}}),
            ("PATCH", "/api/v1/instances", {"params": key, "json": {"weight": 3, "metadata": {"zone": "b"}}}),
            ("POST", "/api/v1/reports", {"json": {**body, "ok": False, "status": 500}}),
            ("DELETE", "/api/v1/instances", {"params": key}),
        ):
            async with http.request(method, path, **kwargs) as answer:
                assert answer.status in (200, 201), await answer.text()


async def test_the_client_parses_every_field_the_server_sends() -> None:
    with ServerProcess("--storage", "memory://") as server:
        await _every_field_set(server.url)
        async with aiohttp.ClientSession(server.url) as http:
            async with http.get("/api/v1/instances", params={"model_name": "wire@llm"}) as answer:
                sent = orjson.loads(await answer.read())["instances"][0]
            async with http.get("/api/v1/models") as answer:
                models = orjson.loads(await answer.read())["models"]
        async with AsyncRegistryClient(server.url) as client:
            through_client = (await client.list_instances("wire@llm"))[0]
            summaries = await client.list_models()

    assert list(sent) == FIELDS  # the server's keys are the record's fields, in its order
    unset = [name for name in FIELDS if sent[name] is None]
    assert unset == [], f"the scenario should set every field; still null: {unset}"
    parsed = from_wire(sent)
    for name in FIELDS:
        assert _same(getattr(parsed, name), sent[name]), (name, getattr(parsed, name), sent[name])
    assert through_client == parsed
    assert isinstance(parsed.weight, float) and parsed.overrides == {"weight": 3, "metadata": {"zone": "b"}}

    assert list(models[0]) == [f.name for f in dataclasses.fields(ModelSummary)]
    assert summaries == [summary_from_wire(models[0])]


def test_unknown_fields_are_ignored_so_a_newer_server_does_not_break_the_client() -> None:
    record = from_wire({"model_name": "m", "host": "h", "port": 1, "healthy": True, "from_the_future": 1})
    assert record == ModelInstance("m", "h", 1, healthy=True)


def test_what_the_client_sends_is_every_field_it_owns() -> None:
    sent = to_wire(ModelInstance("m", "h", 1, metadata={"a": 1}))
    assert list(sent) == [name for name in FIELDS if name not in SERVER_MANAGED_FIELDS]
