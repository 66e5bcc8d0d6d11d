"""The prober's GETs (``api.fetch``) against servers on loopback that answer
exactly the bytes each test gives: framing, keep-alive, closes, hangs, garbage,
and a real aiohttp server (which keeps connections, as TGI and Ollama do)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from model_registry.api.fetch import Fetcher, FetchError, Target, TooLarge

OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


class Raw:
    """A TCP server on loopback: ``answer(request_bytes)`` gives the bytes to send
    back (``None``: send nothing), then it closes if ``close_after`` says so."""

    def __init__(self, answer: Callable[[bytes], bytes | None], close_after: bool = False) -> None:
        self.answer, self.close_after = answer, close_after
        self.connections = 0
        self.requests: list[bytes] = []
        self.transports: list[asyncio.Transport] = []
        self.server: asyncio.Server | None = None

    async def start(self) -> int:
        raw = self

        class Protocol(asyncio.Protocol):
            def connection_made(self, transport: asyncio.BaseTransport) -> None:
                raw.connections += 1
                raw.transports.append(transport)  # type: ignore[arg-type]
                self.transport, self.buffer = transport, b""

            def data_received(self, data: bytes) -> None:
                self.buffer += data
                while b"\r\n\r\n" in self.buffer:
                    request, self.buffer = self.buffer.split(b"\r\n\r\n", 1)
                    raw.requests.append(request)
                    out = raw.answer(request)
                    if out is not None:
                        self.transport.write(out)  # type: ignore[attr-defined]
                    if raw.close_after:
                        self.transport.close()

        self.server = await asyncio.get_running_loop().create_server(Protocol, "127.0.0.1", 0)
        return self.server.sockets[0].getsockname()[1]

    def drop_all(self) -> None:
        """Close every connection, as a server does with idle ones (uvicorn: after 5 s)."""
        for transport in self.transports:
            transport.close()

    async def close(self) -> None:
        self.drop_all()
        assert self.server is not None
        self.server.close()
        await self.server.wait_closed()


@pytest.fixture
async def raw() -> AsyncIterator[Callable[..., Any]]:
    servers: list[Raw] = []

    async def start(answer: Callable[[bytes], bytes | None], close_after: bool = False) -> tuple[Raw, Target]:
        server = Raw(answer, close_after)
        servers.append(server)
        port = await server.start()
        return server, Target(f"http://127.0.0.1:{port}/health")

    yield start
    for server in servers:
        await server.close()


async def test_a_kept_connection_is_used_for_the_next_get(raw: Any) -> None:
    server, target = await raw(lambda request: OK)
    fetcher = Fetcher(max_idle=10)
    for _ in range(3):
        assert await fetcher.get(target, 1) == (200, None)
    assert server.connections == 1
    assert (fetcher.connected, fetcher.reused, fetcher.idle) == (1, 2, 1)
    assert server.requests[0].startswith(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1:")
    assert b"connection: close" not in server.requests[0].lower()
    fetcher.close()
    assert fetcher.idle == 0


async def test_with_no_idle_connections_allowed_each_get_connects(raw: Any) -> None:
    server, target = await raw(lambda request: OK)
    fetcher = Fetcher(max_idle=0)
    for _ in range(3):
        assert await fetcher.get(target, 1) == (200, None)
    assert server.connections == 3
    assert fetcher.idle == 0


async def test_past_max_idle_connections_are_closed_after_their_answer(raw: Any) -> None:
    servers = [await raw(lambda request: OK) for _ in range(3)]
    fetcher = Fetcher(max_idle=2)
    for _, target in servers:
        assert await fetcher.get(target, 1) == (200, None)
    assert fetcher.idle == 2
    for _, target in servers:
        assert await fetcher.get(target, 1) == (200, None)
    assert fetcher.idle == 2
    assert sum(server.connections for server, _ in servers) == 4  # the third reconnected
    fetcher.close()


async def test_a_connection_the_server_closes_while_idle_is_dropped_and_the_next_get_reconnects(
    raw: Any,
) -> None:
    server, target = await raw(lambda request: OK)
    fetcher = Fetcher(max_idle=10)
    assert await fetcher.get(target, 1) == (200, None)
    server.drop_all()
    for _ in range(100):  # the close reaches the fetcher
        if fetcher.idle == 0:
            break
        await asyncio.sleep(0.01)
    assert fetcher.idle == 0
    assert await fetcher.get(target, 1) == (200, None)
    assert server.connections == 2


async def test_a_close_that_crosses_the_request_is_asked_again_on_a_new_connection(raw: Any) -> None:
    """The server closed the kept connection just as the request went out (no
    byte of an answer): one retry, on a new connection, not a failed probe."""
    server, target = await raw(lambda request: OK)
    fetcher = Fetcher(max_idle=10)
    assert await fetcher.get(target, 1) == (200, None)
    server.answer = _close_the_first_connection_then(server, OK)
    assert await fetcher.get(target, 2) == (200, None)
    assert server.connections == 2
    assert fetcher.reused == 1


def _close_the_first_connection_then(server: Raw, answer: bytes) -> Callable[[bytes], bytes | None]:
    """The second request closes the first connection without an answer; the others are answered."""

    def respond(request: bytes) -> bytes | None:
        if len(server.requests) == 2:
            server.transports[0].close()
            return None
        return answer

    return respond


@pytest.mark.parametrize(
    "answer",
    [
        b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok",
        b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok",
    ],
    ids=["connection-close", "http-1.0"],
)
async def test_an_answer_that_does_not_keep_the_connection_is_not_kept(raw: Any, answer: bytes) -> None:
    server, target = await raw(lambda request: answer)
    fetcher = Fetcher(max_idle=10)
    assert await fetcher.get(target, 1, body=True) == (200, b"ok")
    assert await fetcher.get(target, 1, body=True) == (200, b"ok")
    assert server.connections == 2
    assert fetcher.idle == 0


async def test_a_body_that_runs_to_the_close(raw: Any) -> None:
    server, target = await raw(lambda request: b"HTTP/1.1 200 OK\r\n\r\nall of it", close_after=True)
    fetcher = Fetcher(max_idle=10)
    assert await fetcher.get(target, 1, body=True) == (200, b"all of it")
    assert fetcher.idle == 0


async def test_a_chunked_body_is_dechunked_and_the_connection_kept(raw: Any) -> None:
    chunked = (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n7;ext=1\r\n, world\r\n0\r\n\r\n"
    )
    server, target = await raw(lambda request: chunked)
    fetcher = Fetcher(max_idle=10)
    assert await fetcher.get(target, 1, body=True) == (200, b"hello, world")
    assert await fetcher.get(target, 1, body=True) == (200, b"hello, world")
    assert server.connections == 1


async def test_chunk_data_that_looks_like_the_last_chunk_does_not_end_the_body(raw: Any) -> None:
    tricky = b"x0\r\n\r\n"
    chunked = (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
        + f"{len(tricky):x}\r\n".encode()
        + tricky
        + b"\r\n3\r\nend\r\n0\r\n\r\n"
    )
    _, target = await raw(lambda request: chunked)
    assert await Fetcher(10).get(target, 1, body=True) == (200, tricky + b"end")


async def test_a_body_over_the_limit_is_too_large(raw: Any) -> None:
    big = b"x" * 5000
    answer = b"HTTP/1.1 200 OK\r\nContent-Length: 5000\r\n\r\n" + big
    server, target = await raw(lambda request: answer)
    fetcher = Fetcher(max_idle=10)
    with pytest.raises(TooLarge, match="over 1000 bytes"):
        await fetcher.get(target, 1, body=True, limit=1000)
    assert fetcher.idle == 0
    # A check needs only the status: past the limit, the status is its answer.
    assert await fetcher.get(target, 1, limit=1000) == (200, None)
    assert fetcher.idle == 0


@pytest.mark.parametrize(
    "answer, message",
    [
        (b"SSH-2.0-OpenSSH_9.2\r\n\r\n", "not an HTTP answer"),
        (b"HTTP/1.1 2000 Weird\r\n\r\n", "not an HTTP answer"),
        (b"\x00\x01\x02\r\n\r\n", "not an HTTP answer"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort", "before its Content-Length"),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nab\r\n", "bad chunk size"),
        (b"HTTP/1.1 200 OK\r\nContent-", "within its headers"),
    ],
    ids=["ssh", "status", "binary", "short", "bad-chunk", "cut-head"],
)
async def test_garbage_is_a_fetch_error_naming_it(raw: Any, answer: bytes, message: str) -> None:
    _, target = await raw(lambda request: answer, close_after=True)
    with pytest.raises(FetchError, match=message):
        await Fetcher(10).get(target, 1, body=True)


async def test_a_server_that_accepts_and_never_answers_times_out(raw: Any) -> None:
    server, target = await raw(lambda request: None)
    fetcher = Fetcher(max_idle=10)
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(TimeoutError, match="no answer within 0.2 s"):
        await fetcher.get(target, 0.2)
    assert 0.2 <= loop.time() - started < 1.0
    assert fetcher.idle == 0
    assert server.transports[0].is_closing() or await _closed(server.transports[0])


async def _closed(transport: asyncio.Transport) -> bool:
    for _ in range(100):
        if transport.is_closing():
            return True
        await asyncio.sleep(0.01)
    return False


async def test_a_server_that_trickles_its_answer_times_out_in_all(raw: Any) -> None:
    """The timeout is for the whole answer, not between bytes."""
    server, target = await raw(lambda request: b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n")

    async def trickle() -> None:
        for _ in range(50):
            await asyncio.sleep(0.02)
            for transport in server.transports:
                if not transport.is_closing():
                    transport.write(b"x")

    dripping = asyncio.create_task(trickle())
    with pytest.raises(TimeoutError):
        await Fetcher(10).get(target, 0.3, body=True)
    dripping.cancel()


async def test_a_closed_port_is_connection_refused(unused_tcp_port: int) -> None:
    target = Target(f"http://127.0.0.1:{unused_tcp_port}/health")
    with pytest.raises(FetchError, match="connection refused"):
        await Fetcher(10).get(target, 1)


async def test_an_unresolvable_host() -> None:
    target = Target("http://no-such-host.invalid:8000/health")
    with pytest.raises(FetchError, match="cannot resolve the host"):
        await Fetcher(10).get(target, 2)


async def test_a_cancelled_get_closes_its_connection_and_is_cancelled(raw: Any) -> None:
    server, target = await raw(lambda request: None)
    fetcher = Fetcher(max_idle=10)
    task = asyncio.create_task(fetcher.get(target, 5))
    while not server.requests:
        await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert await _closed(server.transports[0])
    assert fetcher.idle == 0


async def test_against_aiohttp_a_redirect_is_an_answer_not_followed() -> None:
    hits: list[str] = []

    async def health(request: web.Request) -> web.Response:
        hits.append(request.path)
        raise web.HTTPFound("http://169.254.169.254/latest/meta-data/")

    async def metrics(request: web.Request) -> web.Response:
        hits.append(request.path)
        return web.Response(text="vllm:num_requests_waiting 3\n")

    app = web.Application()
    app.router.add_get("/health", health)
    app.router.add_get("/metrics", metrics)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    try:
        fetcher = Fetcher(max_idle=10)
        health_target = Target(f"http://127.0.0.1:{server.port}/health")
        metrics_target = Target(f"http://127.0.0.1:{server.port}/metrics")
        assert await fetcher.get(health_target, 1) == (302, None)
        for _ in range(2):
            assert await fetcher.get(metrics_target, 1, body=True) == (200, b"vllm:num_requests_waiting 3\n")
        assert hits == ["/health", "/metrics", "/metrics"]
        assert fetcher.reused == 1
        fetcher.close()
    finally:
        await server.close()
