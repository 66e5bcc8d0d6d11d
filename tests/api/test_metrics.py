"""``GET /metrics``: what an operator graphs, read by Prometheus's own parser."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from aiohttp.test_utils import TestClient
from prometheus_client.parser import text_string_to_metric_families

from model_registry import ManualClock
from model_registry.api import create_app
from model_registry.api.keys import LIFECYCLE
from model_registry.settings import Settings

from .conftest import serve_app

INSTANCES = "/api/v1/instances"


def body(model: str = "m", port: int = 8001, **fields) -> dict:
    return {"model_name": model, "host": "10.0.0.1", "port": port, **fields}


async def scrape(client: TestClient) -> dict[str, dict[tuple, float]]:
    """Every sample, by name, keyed by its sorted labels."""
    answer = await client.get("/metrics")
    assert answer.status == 200
    assert answer.headers["Content-Type"].startswith("text/plain; version=0.0.4")
    samples: dict[str, dict[tuple, float]] = {}
    for family in text_string_to_metric_families(await answer.text()):
        for sample in family.samples:
            samples.setdefault(sample.name, {})[tuple(sorted(sample.labels.items()))] = sample.value
    return samples


def one(samples: dict[str, dict[tuple, float]], name: str, **labels: str) -> float:
    return samples[name][tuple(sorted(labels.items()))]


EXPECTED = [
    "model_registry_build_info",
    "model_registry_instances",
    "model_registry_model_instances",
    "model_registry_heartbeats_total",
    "model_registry_registrations_total",
    "model_registry_deregistrations_total",
    "model_registry_evictions_total",
    "model_registry_expiries_total",
    "model_registry_reports_total",
    "model_registry_request_duration_seconds_bucket",
    "model_registry_request_duration_seconds_count",
    "model_registry_sweep_duration_seconds_count",
    "model_registry_swept_instances_total",
    "model_registry_self_preservation_active",
    "model_registry_self_preservation_held_instances",
    "model_registry_storage_errors_total",
    "model_registry_watchers",
    "model_registry_watch_events_sent_total",
    "model_registry_watchers_cut_off_total",
    "model_registry_long_polls",
    "model_registry_connections_open",
]


async def test_the_counters_move_with_what_the_registry_does(
    client: TestClient, clock: ManualClock, storage_url: str
) -> None:
    await client.post(INSTANCES, json=body(port=8001))
    await client.post(INSTANCES, json=body(port=8002))
    await client.post(INSTANCES, json=body(port=8001, weight=2))  # an update: no registration
    for _ in range(3):
        assert (await client.post("/api/v1/heartbeat", json=body(port=8001))).status == 200
    await client.post("/api/v1/reports", json={**body(port=8002), "ok": True})
    await client.post("/api/v1/reports", json={**body(port=8002), "ok": False, "status": 502})
    await client.delete(INSTANCES, params={"model_name": "m", "host": "10.0.0.1", "port": "8002"})
    await client.get(INSTANCES, params={"model_name": "m", "host": "10.0.0.9"})
    assert (await client.get("/api/v1/select", params={"model_name": "nothing"})).status == 404
    samples = await scrape(client)
    for name in EXPECTED:
        assert name in samples, name
    backend = {"memory": "memory", "sqlite": "sqlite"}.get(
        storage_url.split(":")[0].split("+")[0], "postgresql"
    )
    assert one(samples, "model_registry_build_info", backend=backend, version="0.1.0") == 1
    assert one(samples, "model_registry_registrations_total") == 2
    assert one(samples, "model_registry_heartbeats_total") == 3
    assert one(samples, "model_registry_deregistrations_total") == 1
    assert one(samples, "model_registry_reports_total", outcome="ok") == 1
    assert one(samples, "model_registry_reports_total", outcome="failed") == 1
    assert one(samples, "model_registry_instances", state="ready") == 1
    assert one(samples, "model_registry_instances", state="unhealthy") == 1
    assert one(samples, "model_registry_model_instances", model="m", state="unhealthy") == 1
    beats = one(
        samples, "model_registry_request_duration_seconds_count", route="POST /api/v1/heartbeat", status="2xx"
    )
    assert beats == 3
    assert (
        one(
            samples, "model_registry_request_duration_seconds_count", route="GET /api/v1/select", status="4xx"
        )
        == 1
    )
    if not storage_url.startswith("memory"):  # heartbeats written behind, on SQLite and PostgreSQL
        assert "model_registry_write_behind_pending" in samples
        assert "model_registry_flush_duration_seconds_count" in samples
    if storage_url.startswith("postgresql"):
        assert one(samples, "model_registry_db_pool_waiting") == 0
        assert "model_registry_db_pool_in_use" in samples


async def test_each_instance_is_counted_in_one_state(client: TestClient) -> None:
    for port in (8001, 8002, 8003, 8004):
        await client.post(INSTANCES, json=body(port=port, metadata={"unhealthy_threshold": 1}))
    await client.post(INSTANCES, json=body(port=8005, ready=False))
    key = {"model_name": "m", "host": "10.0.0.1"}
    await client.patch(INSTANCES, params={**key, "port": "8002"}, json={"enabled": False})
    await client.post("/api/v1/reports", json={**body(port=8003), "ok": False, "status": 500})
    await client.delete(INSTANCES, params={**key, "port": "8004"})
    samples = await scrape(client)
    states = {
        s: one(samples, "model_registry_instances", state=s)
        for s in ("ready", "starting", "unhealthy", "disabled", "cooling")
    }
    assert states == {"ready": 1, "starting": 1, "unhealthy": 1, "disabled": 1, "cooling": 1}


async def test_per_model_series_are_bounded(
    aiohttp_client: Callable[..., Awaitable[TestClient]], clock: ManualClock
) -> None:
    client = await serve_app(
        aiohttp_client, create_app(Settings(storage="memory://", metrics_max_models=2), clock=clock)
    )
    for model, count in (("big", 5), ("mid", 3), ("small-a", 1), ("small-b", 1), ("small-c", 1)):
        for port in range(count):
            await client.post(INSTANCES, json=body(model, 8000 + port))
    samples = await scrape(client)
    models = {dict(labels)["model"] for labels in samples["model_registry_model_instances"]}
    assert models == {"big", "mid", "_other"}
    assert one(samples, "model_registry_model_instances", model="_other", state="ready") == 3
    assert one(samples, "model_registry_instances", state="ready") == 11


async def test_two_applications_in_one_process_keep_their_own_metrics(
    aiohttp_client: Callable[..., Awaitable[TestClient]], clock: ManualClock
) -> None:
    first = await serve_app(aiohttp_client, create_app(Settings(storage="memory://"), clock=clock))
    second = await serve_app(aiohttp_client, create_app(Settings(storage="memory://"), clock=clock))
    await first.post(INSTANCES, json=body())
    assert one(await scrape(first), "model_registry_registrations_total") == 1
    assert one(await scrape(second), "model_registry_registrations_total") == 0


async def test_metrics_answer_while_draining(client: TestClient) -> None:
    client.app[LIFECYCLE].draining = True
    try:
        assert (await client.get("/health")).status == 503
        assert (await client.get("/metrics")).status == 200
    finally:
        client.app[LIFECYCLE].draining = False
