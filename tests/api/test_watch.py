"""Watching over a WebSocket, and long-polling the lists, against a real server."""

from __future__ import annotations

import asyncio
import base64
import os
import socket
from collections.abc import Awaitable, Callable

import aiohttp
import orjson
import pytest
from aiohttp import WSMsgType, web
from aiohttp.test_utils import TestClient

from model_registry import ManualClock
from model_registry.api import create_app
from model_registry.api.keys import REGISTRY
from model_registry.api.metrics import METRICS
from model_registry.api.views import POLL_ANSWERS
from model_registry.settings import Settings

from .conftest import serve_app

WATCH = "/api/v1/watch"
INSTANCES = "/api/v1/instances"


def body(model: str = "m", port: int = 8000, **fields) -> dict:
    return {"model_name": model, "host": "10.0.0.1", "port": port, **fields}


async def next_json(ws: aiohttp.ClientWebSocketResponse) -> dict:
    message = await asyncio.wait_for(ws.receive(), 5)
    assert message.type is WSMsgType.TEXT, message
    return message.json()


async def closed(ws: aiohttp.ClientWebSocketResponse) -> tuple[int, str]:
    """Read until the server closes; its code and reason."""
    while True:
        message = await asyncio.wait_for(ws.receive(), 5)
        if message.type in (WSMsgType.CLOSE, WSMsgType.CLOSING, WSMsgType.CLOSED):
            return ws.close_code, message.extra or ""


async def test_snapshot_then_every_change_in_order(client: TestClient, clock: ManualClock) -> None:
    # The checker runs in the background on the injected clock (interval 5 s, timeout 30 s).
    await client.post(INSTANCES, json=body(port=8001))
    async with client.ws_connect(WATCH) as ws:
        snapshot = await next_json(ws)
        assert snapshot["type"] == "snapshot" and len(snapshot["instances"]) == 1
        await client.post(INSTANCES, json=body(port=8002))
        await client.post(INSTANCES, json=body(port=8002, weight=2))
        clock.advance(20)
        await client.post("/api/v1/heartbeat", json=body(port=8002))  # changes nothing: no event
        clock.advance(11)  # 8001 has been silent past the timeout
        await client.post("/api/v1/heartbeat", json=body(port=8001))
        await client.delete(INSTANCES, params={"model_name": "m", "host": "10.0.0.1", "port": "8002"})
        clock.advance(601)  # 8001 silent again; 8002 unhealthy past evict-after
        await client.delete(
            INSTANCES, params={"model_name": "m", "host": "10.0.0.1", "port": "8001", "purge": "true"}
        )
        seen = [await next_json(ws) for _ in range(8)]
    assert [(m["type"], m["instance"]["port"]) for m in seen] == [
        ("registered", 8002),
        ("updated", 8002),
        ("unhealthy", 8001),
        ("healthy", 8001),
        ("deregistered", 8002),
        ("unhealthy", 8001),
        ("evicted", 8002),
        ("purged", 8001),  # deleted by an operator, told apart from a deregistration
    ]
    revisions = [snapshot["revision"]] + [m["revision"] for m in seen]
    assert revisions == list(range(revisions[0], revisions[0] + 9))
    assert seen[1]["instance"]["weight"] == 2.0 and seen[2]["instance"]["healthy"] is False


@pytest.fixture(params=["memory"])
def storage_url(request: pytest.FixtureRequest) -> str:
    return "memory://"


async def test_watch_filtered_by_model(client: TestClient) -> None:
    async with client.ws_connect(WATCH, params={"model_name": "a"}) as ws:
        assert (await next_json(ws))["instances"] == []
        await client.post(INSTANCES, json=body("b"))
        await client.post(INSTANCES, json=body("a"))
        event = await next_json(ws)
    assert event["type"] == "registered" and event["instance"]["model_name"] == "a"


async def test_resume_delivers_only_what_was_missed(client: TestClient) -> None:
    async with client.ws_connect(WATCH) as ws:
        start = (await next_json(ws))["revision"]
    await client.post(INSTANCES, json=body(port=8001))
    await client.post(INSTANCES, json=body(port=8002))
    async with client.ws_connect(WATCH, params={"since": str(start)}) as ws:
        missed = [await next_json(ws), await next_json(ws)]
        await client.post(INSTANCES, json=body(port=8003))
        live = await next_json(ws)
    assert [m["type"] for m in missed] == ["registered", "registered"]
    assert [m["revision"] for m in missed + [live]] == [start + 1, start + 2, start + 3]


@pytest.fixture
def settings(storage_url: str) -> Settings:
    return Settings(
        storage=storage_url, heartbeat_interval=5, heartbeat_timeout=30, watch_history=2, watch_queue=5
    )


async def test_resume_past_the_kept_history_gets_a_resync(client: TestClient) -> None:
    async with client.ws_connect(WATCH) as ws:
        start = (await next_json(ws))["revision"]
    for port in range(8001, 8006):
        await client.post(INSTANCES, json=body(port=port))
    for since in (start, start + 10_000):  # too old, and not one this server handed out
        async with client.ws_connect(WATCH, params={"since": str(since)}) as ws:
            resync = await next_json(ws)
        assert resync["type"] == "resync" and resync["revision"] == start + 5
        assert len(resync["instances"]) == 5


@pytest.mark.parametrize(
    ("params", "named"),
    [({"since": "yesterday"}, "since"), ({"since": "-1"}, "since"), ({"model_name": ""}, "model_name")],
)
async def test_bad_parameters_close_with_1008_and_say_why(
    client: TestClient, params: dict, named: str
) -> None:
    async with client.ws_connect(WATCH, params=params) as ws:
        code, reason = await closed(ws)
    assert code == 1008 and reason.startswith(named)


async def test_plain_get_of_the_watch_endpoint_is_a_clear_400(client: TestClient) -> None:
    response = await client.get(WATCH)
    assert response.status == 400
    assert (await response.json())["error"] == "websocket_required"


async def _raw_watcher(client: TestClient) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A WebSocket watcher on a bare socket with small buffers: one that can stop reading,
    and whose socket then fills soon."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # no autotuning up to megabytes
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, (client.host, client.port))
    reader, writer = await asyncio.open_connection(sock=sock, limit=4096)
    key = base64.b64encode(os.urandom(16)).decode()
    writer.write(
        f"GET {WATCH} HTTP/1.1\r\nHost: {client.host}:{client.port}\r\nUpgrade: websocket\r\n"
        f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n".encode()
    )
    head = await reader.readuntil(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 101"), head
    return reader, writer


def _frames(data: bytes) -> list[tuple[int, bytes]]:
    """The (opcode, payload) of each unmasked frame in ``data`` (a server's)."""
    frames, at = [], 0
    while at + 2 <= len(data):
        opcode, size = data[at] & 0x0F, data[at + 1] & 0x7F
        at += 2
        if size == 126:
            size, at = int.from_bytes(data[at : at + 2], "big"), at + 2
        elif size == 127:
            size, at = int.from_bytes(data[at : at + 8], "big"), at + 8
        frames.append((opcode, data[at : at + size]))
        at += size
    return frames


async def test_a_consumer_too_slow_to_keep_up_is_cut_off(client: TestClient) -> None:
    """A watcher that stops reading: its socket fills, then its queue (5 here), and it
    is cut off; back to reading, it gets what was sent, in order, then 1013 and where to
    resume. Another watcher, reading all along, gets every event."""
    registry, metrics = client.app[REGISTRY], client.app[METRICS]
    padding = {"pad": "x" * 7000}  # big events fill the socket sooner
    reader, writer = await _raw_watcher(client)
    async with client.ws_connect(WATCH) as reading:
        start = (await next_json(reading))["revision"]
        for port in range(8001, 12001):
            await registry.register(body(port=port, metadata=padding))
            await asyncio.sleep(0)  # the server's own work runs between changes
            if metrics.watchers_cut_off:
                break
        assert metrics.watchers_cut_off == 1, "the stalled watcher was never cut off"
        data = await asyncio.wait_for(reader.read(), 10)  # reading again: what it was sent, the close
        changes = port - 8000
        assert [(await next_json(reading))["revision"] for _ in range(changes)] == list(
            range(start + 1, start + changes + 1)
        )
    writer.close()
    frames = _frames(data)
    texts = [orjson.loads(payload) for opcode, payload in frames if opcode == 1]
    close = next(payload for opcode, payload in frames if opcode == 8)
    code, reason = int.from_bytes(close[:2], "big"), close[2:].decode()
    assert code == 1013 and "too slow" in reason and f"since={texts[-1]['revision']}" in reason
    revisions = [t["revision"] for t in texts[1:]]  # after the snapshot: in order, no gap
    assert revisions == list(range(start + 1, start + 1 + len(revisions)))
    for _ in range(100):
        if registry.feed.watchers == 0:
            break
        await asyncio.sleep(0.02)
    assert registry.feed.watchers == 0  # and its queue with it


async def test_a_burst_to_a_consumer_that_reads_is_no_reason_to_cut_it_off(client: TestClient) -> None:
    """More changes at once than its queue holds (5 here): written to it at once, in order."""
    registry = client.app[REGISTRY]
    async with client.ws_connect(WATCH) as ws:
        snapshot = await next_json(ws)
        for port in range(8001, 8101):
            await registry.register(body(port=port))
        revisions = [(await next_json(ws))["revision"] for _ in range(100)]
    assert revisions == list(range(snapshot["revision"] + 1, snapshot["revision"] + 101))


async def test_closing_the_feed_closes_watchers_with_going_away(client: TestClient) -> None:
    async with client.ws_connect(WATCH) as ws:
        await next_json(ws)
        client.app[REGISTRY].feed.close()
        code, reason = await closed(ws)
    assert code == 1001 and "shutting down" in reason


async def test_idle_watchers_are_pinged(
    aiohttp_client: Callable[[web.Application], Awaitable[TestClient]], clock: ManualClock
) -> None:
    settings = Settings(storage="memory://", watch_ping_interval=0.05)
    client = await serve_app(aiohttp_client, create_app(settings, clock=clock))
    async with client.ws_connect(WATCH, autoping=False) as ws:
        await next_json(ws)
        message = await asyncio.wait_for(ws.receive(), 5)
    assert message.type is WSMsgType.PING


# -- long-poll -----------------------------------------------------------------


async def test_lists_carry_the_revision_and_long_poll_wakes_on_a_change(client: TestClient) -> None:
    first = await client.get(INSTANCES, params={"model_name": "m"})
    index = int(first.headers["X-Registry-Index"])
    models = await client.get("/api/v1/models")
    assert int(models.headers["X-Registry-Index"]) == index
    polling = asyncio.create_task(
        client.get(INSTANCES, params={"model_name": "m", "index": str(index), "wait": "30s"})
    )
    await asyncio.sleep(0.05)
    assert not polling.done()
    await client.post(INSTANCES, json=body("other"))  # another model: no answer yet
    await asyncio.sleep(0.05)
    assert not polling.done()
    await client.post(INSTANCES, json=body("m"))
    answer = await asyncio.wait_for(polling, 5)
    assert int(answer.headers["X-Registry-Index"]) == index + 2
    assert (await answer.json())["count"] == 1


async def test_long_poll_times_out_with_the_same_answer(client: TestClient) -> None:
    await client.post(INSTANCES, json=body())
    first = await client.get(INSTANCES)
    index = first.headers["X-Registry-Index"]
    loop = asyncio.get_running_loop()
    started = loop.time()
    again = await client.get(INSTANCES, params={"index": index, "wait": "200ms"})
    assert loop.time() - started >= 0.2
    assert again.headers["X-Registry-Index"] == index
    assert await again.json() == await first.json()


async def test_long_poll_with_an_old_index_answers_at_once(client: TestClient) -> None:
    index = int((await client.get(INSTANCES)).headers["X-Registry-Index"])
    await client.post(INSTANCES, json=body())
    answer = await asyncio.wait_for(client.get(INSTANCES, params={"index": str(index), "wait": "5m"}), 5)
    assert (await answer.json())["count"] == 1


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"index": "abc"}, "index"),
        ({"index": "1", "wait": "forever"}, "wait"),
        ({"index": "1", "wait": "2h"}, "wait"),  # over --max-wait
        ({"wait": "30s"}, "wait"),  # wait without index
    ],
)
async def test_bad_long_poll_parameters_are_422(client: TestClient, params: dict, field: str) -> None:
    response = await client.get(INSTANCES, params=params)
    assert response.status == 422
    assert (await response.json())["field"] == field


async def test_a_change_right_after_the_snapshot_comes_as_the_next_event(client: TestClient) -> None:
    registry = client.app[REGISTRY]
    async with client.ws_connect(WATCH) as ws:
        snapshot = await next_json(ws)
        await registry.register(body(port=8009))
        event = await next_json(ws)
    assert event["revision"] == snapshot["revision"] + 1


# -- limits and departures ---------------------------------------------------------


async def until(check: Callable[[], bool], timeout: float = 5.0) -> None:
    """Wait, polling, until ``check()`` holds; for server-side state that has no event."""
    async with asyncio.timeout(timeout):
        while not check():
            await asyncio.sleep(0.01)


async def test_a_long_poll_whose_client_goes_ends_at_once(client: TestClient) -> None:
    feed = client.app[REGISTRY].feed
    index = (await client.get(INSTANCES)).headers["X-Registry-Index"]
    reader, writer = await asyncio.open_connection(client.host, client.port)
    writer.write(f"GET {INSTANCES}?index={index}&wait=5m HTTP/1.1\r\nHost: localhost\r\n\r\n".encode())
    await writer.drain()
    await until(lambda: feed.polls == 1)
    writer.close()
    await until(lambda: feed.polls == 0, timeout=2)  # not at the end of its five minutes


async def test_long_polls_past_the_cap_are_503_with_retry_after(
    aiohttp_client: Callable[..., Awaitable[TestClient]], clock: ManualClock
) -> None:
    settings = Settings(storage="memory://", max_long_polls=2)
    client = await serve_app(aiohttp_client, create_app(settings, clock=clock))
    feed = client.app[REGISTRY].feed
    index = (await client.get(INSTANCES)).headers["X-Registry-Index"]

    def poll(**params: str) -> asyncio.Task:
        return asyncio.create_task(client.get(INSTANCES, params={"index": index, "wait": "30s", **params}))

    waiting = [poll(model_name=f"m{n}") for n in range(2)]
    await until(lambda: feed.polls == 2)
    refused = await poll()
    assert refused.status == 503 and refused.headers["Retry-After"].isdigit()
    problem = await refused.json()
    assert problem["error"] == "too_many_long_polls" and "--max-long-polls" in problem["detail"]
    plain = await client.get(INSTANCES)  # a list that does not wait is no long-poll
    assert plain.status == 200
    await client.post(INSTANCES, json=body("m0"))  # one answers: its place is free again
    assert (await asyncio.wait_for(waiting[0], 5)).status == 200
    await until(lambda: feed.polls == 1)
    assert (await asyncio.wait_for(poll(), 5)).status == 200  # index is old now: answered at once
    waiting[1].cancel()


async def test_watchers_past_the_cap_are_503_with_retry_after(
    aiohttp_client: Callable[..., Awaitable[TestClient]], clock: ManualClock
) -> None:
    settings = Settings(storage="memory://", max_watchers=1)
    client = await serve_app(aiohttp_client, create_app(settings, clock=clock))
    async with client.ws_connect(WATCH) as ws:
        await next_json(ws)
        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
            await client.ws_connect(WATCH)
        assert refused.value.status == 503
        headers = {
            "Connection": "Upgrade",
            "Upgrade": "websocket",
            "Sec-WebSocket-Version": "13",
            "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
        }
        response = await client.get(WATCH, headers=headers)
        assert response.status == 503 and response.headers["Retry-After"].isdigit()
        problem = await response.json()
        assert problem["error"] == "too_many_watchers" and "--max-watchers" in problem["detail"]
    await until(lambda: client.app[REGISTRY].feed.watchers == 0)
    async with client.ws_connect(WATCH) as ws:  # the place is free again
        assert (await next_json(ws))["type"] == "snapshot"


async def test_an_event_is_encoded_once_however_many_watch_it(
    client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    from model_registry.api import watch as watch_module

    encoded: list[int] = []
    encode = watch_module._encode

    def counting(event):  # type: ignore[no-untyped-def]
        encoded.append(event.revision)
        return encode(event)

    monkeypatch.setattr(watch_module, "_encode", counting)
    watchers = [await client.ws_connect("/api/v1/watch") for _ in range(5)]
    for ws in watchers:
        assert (await next_json(ws))["type"] == "snapshot"
    await client.post(INSTANCES, json=body())
    frames = [await asyncio.wait_for(ws.receive(), 5) for ws in watchers]
    assert len({frame.data for frame in frames}) == 1  # the same text to each
    assert len(encoded) == 1
    for ws in watchers:
        await ws.close()


async def test_polls_woken_by_one_change_get_the_same_answer(client: TestClient) -> None:
    first = await client.get(INSTANCES, params={"model_name": "m"})
    index = first.headers["X-Registry-Index"]
    params = {"model_name": "m", "index": index, "wait": "10s"}
    polls = [asyncio.create_task(client.get(INSTANCES, params=params)) for _ in range(20)]
    await asyncio.sleep(0.2)
    await client.post(INSTANCES, json=body(port=8001))
    answers = await asyncio.gather(*polls)
    bodies = {await answer.read() for answer in answers}
    assert len(bodies) == 1 and b'"port":8001' in bodies.pop()
    assert {answer.headers["X-Registry-Index"] for answer in answers} == {str(int(index) + 1)}


# -- long-polls answered ahead (PollAnswers) ------------------------------------------


async def _send(writer: asyncio.StreamWriter, request: str) -> None:
    writer.write(request.encode())
    await writer.drain()


async def _answer(reader: asyncio.StreamReader) -> tuple[list[tuple[str, str]], bytes]:
    """One HTTP answer off a raw connection: its status line and headers in order, its body."""
    head = (await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)).decode()
    lines = head.split("\r\n")[:-2]
    headers = [(lines[0], "")] + [tuple(line.split(": ", 1)) for line in lines[1:]]  # type: ignore[misc]
    length = int(dict(headers)["Content-Length"])
    return headers, await asyncio.wait_for(reader.readexactly(length), 5)


def _poll(index: str, *, method: str = "GET", version: str = "1.1", extra: str = "") -> str:
    target = f"{INSTANCES}?model_name=m&index={index}&wait=10s"
    return f"{method} {target} HTTP/{version}\r\nHost: localhost\r\n{extra}\r\n"


async def test_a_long_poll_answered_ahead_is_what_its_handler_writes_and_the_connection_goes_on(
    client: TestClient,
) -> None:
    polls = client.app[POLL_ANSWERS]
    index = (await client.get(INSTANCES, params={"model_name": "m"})).headers["X-Registry-Index"]
    reader, writer = await asyncio.open_connection(client.host, client.port)
    # Pipelined behind the poll: answered after it, in order, on the same connection.
    await _send(writer, _poll(index) + f"GET {INSTANCES}?model_name=m HTTP/1.1\r\nHost: localhost\r\n\r\n")
    await until(lambda: client.app[REGISTRY].feed.polls == 1)
    await client.post(INSTANCES, json=body(port=8001))
    ahead, ahead_body = await _answer(reader)
    assert polls.ahead == 1
    after, after_body = await _answer(reader)  # the pipelined GET, by its handler
    assert ahead_body == after_body and b'"port":8001' in ahead_body
    drop_date = lambda headers: [(k, v) for k, v in headers if k != "Date"]  # noqa: E731
    assert drop_date(ahead) == drop_date(after)  # same status, headers, order
    assert [k for k, _ in ahead] == [k for k, _ in after]
    assert int(dict(ahead)["X-Registry-Index"]) == int(index) + 1
    # And the connection is kept for the next poll, answered ahead again.
    await _send(writer, _poll(dict(ahead)["X-Registry-Index"]))
    await until(lambda: client.app[REGISTRY].feed.polls == 1)
    await client.post(INSTANCES, json=body(port=8002))
    again, again_body = await _answer(reader)
    assert polls.ahead == 2 and b'"port":8002' in again_body and again[0][0] == "HTTP/1.1 200 OK"
    writer.close()


@pytest.mark.parametrize(
    "request_line",
    [
        {"method": "HEAD"},  # no body to write: its handler answers
        {"version": "1.0", "extra": "Connection: keep-alive\r\n"},  # HTTP/1.0: its handler answers
        {"extra": "Connection: close\r\n"},  # its handler answers, and closes
    ],
)
async def test_polls_not_answered_ahead_are_answered_by_their_handler(
    client: TestClient, request_line: dict
) -> None:
    index = (await client.get(INSTANCES, params={"model_name": "m"})).headers["X-Registry-Index"]
    reader, writer = await asyncio.open_connection(client.host, client.port)
    await _send(writer, _poll(index, **request_line))
    await until(lambda: client.app[REGISTRY].feed.polls == 1)
    await client.post(INSTANCES, json=body(port=8001))
    head = (await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)).decode()
    assert head.startswith(f"HTTP/1.{1 if 'version' not in request_line else 0} 200 OK")
    assert f"X-Registry-Index: {int(index) + 1}" in head
    assert client.app[POLL_ANSWERS].ahead == 0
    writer.close()


async def test_polls_are_answered_by_their_handlers_where_storage_cannot_list_at_once(
    client: TestClient,
) -> None:
    """As on PostgreSQL, whose replicas list from the database (``Storage.list_now``
    says "not this way")."""
    registry = client.app[REGISTRY]
    registry.storage.list_now = lambda *args, **kwargs: None  # type: ignore[method-assign]
    index = (await client.get(INSTANCES, params={"model_name": "m"})).headers["X-Registry-Index"]
    params = {"model_name": "m", "index": index, "wait": "10s"}
    polls = [asyncio.create_task(client.get(INSTANCES, params=params)) for _ in range(5)]
    await until(lambda: registry.feed.polls == 5)
    await client.post(INSTANCES, json=body(port=8001))
    answers = await asyncio.gather(*polls)
    assert {answer.status for answer in answers} == {200}
    assert all([b'"port":8001' in await answer.read() for answer in answers])
    assert client.app[POLL_ANSWERS].ahead == 0
