"""Several registry processes on one real PostgreSQL, and PostgreSQL failing under them."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter
from collections.abc import AsyncIterator
from datetime import datetime, timedelta

import aiohttp
import asyncpg
import pytest

from model_registry.storage import open_storage
from model_registry_sdk import AsyncRegistryClient, Retry
from tests.pg import PostgresCluster
from tests.process import ServerProcess

INSTANCES, HEARTBEAT = "/api/v1/instances", "/api/v1/heartbeat"
MARKED = "instance marked unhealthy: no heartbeat within the timeout"
QUICK = ("--heartbeat-interval", "0.5", "--heartbeat-timeout", "2", "--flush-interval", "0.2")


def worker(i: int, model: str = "llama") -> dict:
    return {"model_name": model, "host": f"10.1.0.{i}", "port": 9000}


def replica(url: str, *extra: str) -> ServerProcess:
    return ServerProcess("--storage", url, *extra).start()


async def until(check, timeout: float = 15.0) -> float:
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if await check():
            return time.monotonic() - started
        await asyncio.sleep(0.05)
    raise AssertionError(f"not true within {timeout} s")


async def test_a_write_through_one_replica_is_read_through_the_other(pg_url: str) -> None:
    a, b = replica(pg_url), replica(pg_url)
    try:
        async with aiohttp.ClientSession() as http:
            assert (await http.post(a.url + INSTANCES, json=worker(1))).status == 201
            listed = await (await http.get(b.url + INSTANCES)).json()
            assert [i["host"] for i in listed["instances"]] == ["10.1.0.1"]
            beat = await (await http.post(b.url + HEARTBEAT, json={**worker(1), "queue_length": 6})).json()

            async def beat_seen_through_a() -> bool:  # written behind: within the flush interval
                seen = await (await http.get(a.url + INSTANCES)).json()
                return seen["instances"][0]["last_heartbeat"] == beat["last_heartbeat"]

            assert await until(beat_seen_through_a, timeout=5) < 2.5
            seen = await (await http.get(a.url + INSTANCES)).json()
            assert seen["instances"][0]["queue_length"] == 6
            health = await (await http.get(a.url + "/health")).json()
            assert health["clock"] == "database"
    finally:
        a.stop()
        b.stop()


async def test_each_silent_instance_is_marked_once_and_beating_ones_never(pg_url: str) -> None:
    a, b = replica(pg_url, *QUICK), replica(pg_url, *QUICK)
    try:
        async with aiohttp.ClientSession() as http:
            for i in range(1, 6):  # silent after registering
                await http.post(a.url + INSTANCES, json=worker(i, "silent"))
            stop = asyncio.Event()

            async def beat_forever() -> None:  # the live fleet, beating through both replicas
                while not stop.is_set():
                    for i in range(1, 6):
                        url = (a if i % 2 else b).url
                        assert (await http.post(url + HEARTBEAT, json=worker(i, "live"))).status == 200
                    await asyncio.sleep(0.2)

            beating = asyncio.create_task(beat_forever())

            async def all_silent_marked() -> bool:
                listed = await (await http.get(b.url + INSTANCES, params={"model_name": "silent"})).json()
                return not any(i["healthy"] for i in listed["instances"])

            await until(all_silent_marked)
            await asyncio.sleep(1.5)  # three more sweeps on each replica: nothing may happen twice
            stop.set()
            await beating
            live = await (await http.get(a.url + INSTANCES, params={"model_name": "live"})).json()
    finally:
        a.stop()
        b.stop()
    marked = Counter(entry["addr"] for p in (a, b) for entry in p.messages(MARKED))
    assert marked == {f"10.1.0.{i}:9000": 1 for i in range(1, 6)}  # once each, across replicas
    assert all(i["healthy"] for i in live["instances"]) and len(live["instances"]) == 5


async def test_postgres_outage_under_load(pg_url: str, postgres: PostgresCluster) -> None:
    server = replica(pg_url, *QUICK, "--request-timeout", "3", "--db-connect-timeout", "1")
    statuses: Counter[int] = Counter()
    acknowledged: set[str] = set()
    slowest = 0.0
    stop = asyncio.Event()
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as http:

            async def load(n: int) -> None:
                nonlocal slowest
                count = 0
                while not stop.is_set():
                    count += 1
                    started = time.monotonic()
                    response = await http.post(server.url + HEARTBEAT, json=worker(n))
                    statuses[response.status] += 1
                    if response.status == 503:
                        assert int(response.headers["Retry-After"]) >= 1
                        assert (await response.json())["error"] in ("storage_unavailable", "timeout")
                    register = {**worker(n, f"new-{n}"), "port": count}
                    registered = await http.post(server.url + INSTANCES, json=register)
                    statuses[registered.status] += 1
                    if registered.status == 201:
                        acknowledged.add(f"new-{n}:{count}")
                    slowest = max(slowest, time.monotonic() - started)
                    await asyncio.sleep(0.1)

            workers = [asyncio.create_task(load(n)) for n in range(1, 6)]
            await asyncio.sleep(3)  # past the start-up grace, beating steadily
            postgres.stop()
            down_at = time.monotonic()
            await until(lambda: _health_is(http, server.url, 503), timeout=5)
            await asyncio.sleep(max(0.0, down_at + 3 - time.monotonic()))  # longer than the timeout (2 s)
            failures_during_outage = statuses[503]
            postgres.start()
            recovered_in = await until(lambda: _health_is(http, server.url, 200), timeout=10)
            await asyncio.sleep(3)  # the checker's grace after the outage runs out; workers beat on
            stop.set()
            await asyncio.gather(*workers)
            final = await (await http.get(server.url + INSTANCES, params={"model_name": "llama"})).json()
    finally:
        server.stop()
        if not postgres.running():
            postgres.start()
    assert set(statuses) <= {200, 201, 503} and failures_during_outage > 0  # 503s, never a 500
    assert slowest < 3 + 1  # answered within the request timeout, no hang
    assert recovered_in < 10
    # The outage did not flip the beating fleet (the one-off "new-*" registrations
    # are silent by design and may expire).
    assert [m for m in server.messages(MARKED) if m["model"] == "llama"] == []
    assert all(i["healthy"] for i in final["instances"]) and len(final["instances"]) == 5
    async with open_storage(pg_url) as storage:
        stored = {f"{r.model_name}:{r.port}" for r in await storage.list() if r.model_name.startswith("new-")}
    assert acknowledged <= stored


async def _health_is(http: aiohttp.ClientSession, url: str, status: int) -> bool:
    try:
        return (await http.get(url + "/health")).status == status
    except aiohttp.ClientError:
        return False


async def test_kill_9_of_one_replica_while_the_other_serves(pg_url: str) -> None:
    a, b = replica(pg_url), replica(pg_url)
    acknowledged: list[int] = []
    try:
        retry = Retry(attempts=4, backoff=0.05, deadline=5, timeout=2)
        async with AsyncRegistryClient([a.url, b.url], retry=retry) as client:
            from model_registry import ModelInstance

            async def load() -> None:
                for port in range(1, 400):
                    await client.register(ModelInstance("llama", "10.2.0.1", port))
                    acknowledged.append(port)
                    if port == 100:
                        a.kill()  # mid-load; the client fails over to b

            await asyncio.wait_for(load(), timeout=60)
            assert (await client.health())["status"] == "ok"
    finally:
        a.stop()
        b.stop()
    assert a.proc.returncode == -9 and len(acknowledged) == 399
    async with open_storage(pg_url) as storage:
        assert {r.port for r in await storage.list("llama")} >= set(acknowledged)


async def test_pool_exhaustion_is_a_503_naming_the_setting(pg_url: str) -> None:
    server = replica(
        pg_url,
        "--db-pool-size",
        "1",
        "--db-max-overflow",
        "0",
        "--db-pool-timeout",
        "0.5",
        "--db-statement-timeout",
        "3",
    )
    try:
        async with aiohttp.ClientSession() as http:
            await http.post(server.url + INSTANCES, json=worker(1))
            async with table_locked(pg_url):
                # The first request holds the only connection, waiting on the lock...
                blocked = asyncio.create_task(http.post(server.url + INSTANCES, json=worker(1)))
                await asyncio.sleep(0.3)
                # ...so the second waits for the pool, and gives up after 0.5 s.
                started = time.monotonic()
                starved = await http.get(server.url + INSTANCES)
                waited = time.monotonic() - started
                body = await starved.json()
            first = await blocked
            assert first.status == 200, (await first.text(), body)
    finally:
        server.stop()
    assert starved.status == 503 and starved.headers["Retry-After"]
    assert "pool exhausted" in body["detail"] and "REGISTRY_DB_POOL_SIZE" in body["detail"]
    assert 0.4 < waited < 3


async def test_statement_timeout_is_enforced(pg_url: str) -> None:
    server = replica(pg_url, "--db-statement-timeout", "0.5")
    try:
        async with aiohttp.ClientSession() as http:
            await http.post(server.url + INSTANCES, json=worker(1))
            async with table_locked(pg_url):
                response = await http.post(server.url + INSTANCES, json=worker(1))
                body = await response.json()
            assert (await http.post(server.url + HEARTBEAT, json=worker(1))).status == 200
    finally:
        server.stop()
    assert response.status == 503 and "statement timeout" in body["detail"]


@contextlib.asynccontextmanager
async def table_locked(pg_url: str) -> AsyncIterator[None]:
    """Another session holds an exclusive lock on the instances table meanwhile."""
    locker = await asyncpg.connect(pg_url.replace("postgresql+asyncpg", "postgresql"))
    try:
        transaction = locker.transaction()
        await transaction.start()
        await locker.execute("LOCK TABLE instances IN ACCESS EXCLUSIVE MODE")
        yield
        await transaction.rollback()
    finally:
        await locker.close()


@pytest.fixture(autouse=True)
def _needs_postgres(postgres: PostgresCluster) -> None:
    """Every test here runs on the shared PostgreSQL (and fails in CI without it)."""


async def test_kill_9_of_a_replica_loses_at_most_the_flush_interval_of_beats(pg_url: str) -> None:
    server = replica(pg_url, "--flush-interval", "0.5")
    try:
        async with aiohttp.ClientSession() as http:
            assert (await http.post(server.url + INSTANCES, json=worker(1))).status == 201
            last = None
            for _ in range(30):  # 1.5 s of beats, each acknowledged (and written behind)
                last = await (await http.post(server.url + HEARTBEAT, json=worker(1))).json()
                await asyncio.sleep(0.05)
            server.kill()
    finally:
        server.stop()
    async with open_storage(pg_url) as storage:
        [stored] = await storage.list()
    acknowledged = datetime.fromisoformat(last["last_heartbeat"])
    assert timedelta(0) <= acknowledged - stored.last_heartbeat <= timedelta(seconds=0.5 + 0.2)


async def test_a_change_through_one_replica_reaches_the_watchers_of_another_within_a_second(
    pg_url: str,
) -> None:
    a, b = replica(pg_url), replica(pg_url)
    try:
        async with aiohttp.ClientSession() as http, http.ws_connect(b.url + "/api/v1/watch") as ws:
            assert (await ws.receive_json())["type"] == "snapshot"
            big = {**worker(2), "prompt_template": "x" * 9000}  # too large for one notification
            changes = [
                ("registered", lambda: http.post(a.url + INSTANCES, json=worker(1))),
                ("registered", lambda: http.post(a.url + INSTANCES, json=big)),
                (
                    "disabled",
                    lambda: http.patch(a.url + INSTANCES, params=_query(1), json={"enabled": False}),
                ),
                ("deregistered", lambda: http.delete(a.url + INSTANCES, params=_query(1))),
            ]
            last = 0
            for change, make in changes:
                started = time.monotonic()
                assert (await make()).status < 300
                event = await asyncio.wait_for(ws.receive_json(), 5)
                assert time.monotonic() - started < 1.0, change
                assert event["type"] == change and event["revision"] > last
                last = event["revision"]
            assert event["instance"]["host"] == "10.1.0.1" and event["instance"]["healthy"] is False
    finally:
        a.stop()
        b.stop()


def _query(i: int) -> dict:
    return {k: str(v) for k, v in worker(i).items()}


async def test_watchers_resync_when_a_replica_may_have_missed_changes(
    pg_url: str, postgres: PostgresCluster
) -> None:
    b = replica(pg_url)
    try:
        async with aiohttp.ClientSession() as http, http.ws_connect(b.url + "/api/v1/watch") as ws:
            snapshot = await ws.receive_json()
            # The connection b listens on is cut (a database restart, a network blip).
            conn = await asyncpg.connect(postgres.url(driver="postgresql"))
            try:
                killed = await conn.fetchval(
                    "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE query LIKE 'LISTEN%'"
                )
            finally:
                await conn.close()
            assert killed == 1
            message = await asyncio.wait_for(ws.receive(), 15)
            assert message.type is aiohttp.WSMsgType.CLOSE and message.data == 1013
            assert "missed" in message.extra
        params = {"since": str(snapshot["revision"])}
        async with (
            aiohttp.ClientSession() as http,
            http.ws_connect(b.url + "/api/v1/watch", params=params) as ws,
        ):
            assert (await ws.receive_json())["type"] == "resync"
        assert b.messages("changes made through other replicas may have been missed; watchers resync")
    finally:
        b.stop()


async def test_the_compatibility_apis_work_across_replicas(pg_url: str) -> None:
    a, b = replica(pg_url), replica(pg_url)
    worker_name = "http://10.2.0.1:21002"
    registration = {
        "worker_name": worker_name,
        "check_heart_beat": True,
        "worker_status": {"model_names": ["vicuna-7b", "vicuna-13b"], "speed": 1, "queue_length": 0},
    }
    try:
        async with aiohttp.ClientSession() as http:
            assert (await http.post(a.url + "/register_worker", json=registration)).status == 200
            beat = {"worker_name": worker_name, "queue_length": 2}
            assert await (await http.post(b.url + "/receive_heart_beat", json=beat)).json() == {"exist": True}
            assert await (await http.post(b.url + "/list_models")).json() == {
                "models": ["vicuna-13b", "vicuna-7b"]
            }
            # Re-registered through B with one model: A's beats no longer keep the dropped one.
            registration["worker_status"]["model_names"] = ["vicuna-7b"]
            assert (await http.post(b.url + "/register_worker", json=registration)).status == 200
            assert await (await http.post(a.url + "/receive_heart_beat", json=beat)).json() == {"exist": True}
            assert await (await http.post(a.url + "/list_models")).json() == {"models": ["vicuna-7b"]}
            dbgpt = {"model_name": "glm-4@llm", "host": "10.2.0.2", "port": 8001}
            assert await (await http.post(a.url + "/api/controller/heartbeat", json=dbgpt)).read() == b"true"
            listed = await (
                await http.get(b.url + "/api/controller/models", params={"healthy_only": "true"})
            ).json()
            assert [i["model_name"] for i in listed] == ["glm-4@llm"]
    finally:
        a.stop()
        b.stop()


async def test_after_a_purge_through_one_replica_the_others_next_beat_is_a_registration(pg_url: str) -> None:
    a, b = replica(pg_url), replica(pg_url)
    try:
        async with aiohttp.ClientSession() as http:
            assert (await http.post(a.url + INSTANCES, json=worker(1))).status == 201
            assert (await http.post(b.url + HEARTBEAT, json=worker(1))).status == 200  # b knows it now
            purge = {**{k: str(v) for k, v in worker(1).items()}, "purge": "true"}
            assert (await http.delete(a.url + INSTANCES, params=purge)).status == 200

            async def gone_everywhere() -> bool:
                listed = await (await http.get(b.url + INSTANCES)).json()
                return listed["count"] == 0

            await until(gone_everywhere, timeout=5)

            # b heard of the purge: the worker's next beat registers it again, as a
            # registration (logged, and announced to watchers), not as a silent
            # write-behind that brings the row back.
            async def b_registered_it() -> bool:
                beat = await http.post(b.url + HEARTBEAT, json=worker(1))
                return beat.status == 200 and bool(b.messages("instance registered by its heartbeat"))

            await until(b_registered_it, timeout=5)
            listed = await (await http.get(a.url + INSTANCES)).json()
            assert listed["count"] == 1
    finally:
        a.stop()
        b.stop()
