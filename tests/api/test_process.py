"""The service as a process: restarts, kill -9, signals, start-up failures."""

from __future__ import annotations

import asyncio
import signal
import socket
import sys
import time
from pathlib import Path

import aiohttp
import orjson
import pytest

from model_registry.storage import open_storage
from tests.conftest import sqlite_url
from tests.process import ServerProcess, run_cli

INSTANCES = "/api/v1/instances"


def instance(i: int, model: str = "meta-llama/Llama-3.1-8B-Instruct") -> dict:
    return {"model_name": model, "host": f"10.0.{i // 250}.{i % 250 + 1}", "port": 8000 + i % 7}


async def test_a_restarted_server_keeps_every_instance(tmp_path: Path) -> None:
    # No --storage: the default SQLite file in the working directory.
    with ServerProcess(cwd=tmp_path) as server:
        async with aiohttp.ClientSession(server.url) as http:
            for i in range(60):
                assert (await http.post(INSTANCES, json=instance(i))).status == 201
            before = (await (await http.get(INSTANCES)).json())["instances"]
        server.signal(signal.SIGTERM)
        assert server.wait(timeout=20) == 0
    assert (tmp_path / "registry.db").exists()
    with ServerProcess(cwd=tmp_path) as server:
        async with aiohttp.ClientSession(server.url) as http:
            after = (await (await http.get(INSTANCES)).json())["instances"]
            healthy = (await (await http.get(INSTANCES, params={"healthy_only": "true"})).json())["count"]
    assert after == before and len(after) == 60
    assert healthy == 60  # a restart does not flip the fleet to unhealthy


async def test_kill_9_during_registrations_loses_no_acknowledged_one(tmp_path: Path) -> None:
    db = tmp_path / "r.db"
    acknowledged: set[tuple[str, str, int]] = set()
    server = ServerProcess("--storage", sqlite_url(db)).start()
    try:
        async with aiohttp.ClientSession(server.url) as http:

            async def worker(offset: int) -> None:
                for i in range(offset, 100_000, 16):
                    body = instance(i, model=f"model-{i % 5}")
                    try:
                        response = await http.post(INSTANCES, json=body)
                    except aiohttp.ClientError:
                        return  # the server is gone
                    if response.status == 201:
                        acknowledged.add((body["model_name"], body["host"], body["port"]))

            workers = [asyncio.create_task(worker(n)) for n in range(16)]
            for _ in range(600):  # until 300 are acknowledged, 30 s at most
                if len(acknowledged) >= 300:
                    break
                await asyncio.sleep(0.05)
            server.kill()
            await asyncio.wait_for(asyncio.gather(*workers), timeout=30)
    finally:
        server.stop()
    assert len(acknowledged) >= 300
    async with open_storage(sqlite_url(db)) as storage:
        stored = {tuple(r.key) for r in await storage.list()}
    assert acknowledged <= stored


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
async def test_signal_drains_in_flight_requests_then_exits_0(tmp_path: Path, signum: int) -> None:
    server = ServerProcess("--storage", sqlite_url(tmp_path / "r.db"), "--shutdown-timeout", "10").start()
    try:
        host, port = server.url.removeprefix("http://").rsplit(":", 1)
        # A registration in flight: headers and half the body sent, the rest held back.
        payload = orjson.dumps(instance(1))
        reader, writer = await asyncio.open_connection(host, int(port))
        writer.write(
            f"POST {INSTANCES} HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(payload)}\r\n\r\n".encode()
            + payload[:10]
        )
        await writer.drain()
        keep_alive = aiohttp.TCPConnector(limit=1)
        async with aiohttp.ClientSession(server.url, connector=keep_alive) as http:
            assert (await http.get("/health")).status == 200
            signalled = time.monotonic()
            server.signal(signum)
            server.wait_for_log("shutting down", timeout=10)
            # At once: /health is 503 and new requests are turned away, on a
            # kept-alive connection and on a new one alike.
            health = await http.get("/health")
            assert health.status == 503 and (await health.json())["error"] == "shutting_down"
        async with aiohttp.ClientSession(server.url) as fresh:
            refused = await fresh.post(INSTANCES, json=instance(2))
            assert refused.status == 503 and "Retry-After" in refused.headers
        # The request in flight completes.
        writer.write(payload[10:])
        await writer.drain()
        status_line = await asyncio.wait_for(reader.readline(), timeout=10)
        assert status_line.startswith(b"HTTP/1.1 201")
        writer.close()
        assert server.wait(timeout=12) == 0
        assert time.monotonic() - signalled < 10
    finally:
        server.stop()
    async with open_storage(sqlite_url(tmp_path / "r.db")) as storage:
        assert [r.port for r in await storage.list()] == [instance(1)["port"]]


def test_port_in_use_is_one_clear_line() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run_cli("serve", "--port", str(port), "--storage", "memory://")
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr
    assert f"port {port} is already in use" in lines[0] and "--port" in lines[0]


@pytest.mark.parametrize(
    "args, code, expected",
    [
        (["--storage", "redis://localhost"], 2, "use one of memory://, sqlite+aiosqlite:///"),
        (["--storage", "sqlite+aiosqlite:///no/such/dir/r.db"], 1, "cannot open storage"),
        (["--heartbeat-interval", "10", "--heartbeat-timeout", "12"], 2, "not comfortably larger"),
        (["--port", "70000"], 2, "port: "),
        (
            ["--heartbeat-interval", "1", "--heartbeat-timeout", "2", "--flush-interval", "1"],
            2,
            "flush interval",
        ),
    ],
)
def test_bad_configuration_is_one_clear_line(args: list[str], code: int, expected: str) -> None:
    result = run_cli("serve", *args)
    assert result.returncode == code, result.stderr
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and expected in lines[0]


async def test_environment_variables_configure_serve(tmp_path: Path) -> None:
    env = {
        "REGISTRY_STORAGE": "memory://",
        "REGISTRY_HEARTBEAT_INTERVAL": "2",
        "REGISTRY_HEARTBEAT_TIMEOUT": "9",
    }
    with ServerProcess(env=env, cwd=tmp_path) as server:
        async with aiohttp.ClientSession(server.url) as http:
            health = await (await http.get("/health")).json()
    assert health["storage"] == "memory" and health["heartbeat_timeout_s"] == 9
    assert not (tmp_path / "registry.db").exists()


def test_help_documents_every_flag_with_default_and_variable() -> None:
    result = run_cli("serve", "--help")
    text = " ".join(result.stdout.split())
    for flag, env in [
        ("--host", "REGISTRY_HOST"),
        ("--port", "REGISTRY_PORT"),
        ("--storage", "REGISTRY_STORAGE"),
        ("--heartbeat-interval", "REGISTRY_HEARTBEAT_INTERVAL"),
        ("--heartbeat-timeout", "REGISTRY_HEARTBEAT_TIMEOUT"),
        ("--evict-after", "REGISTRY_EVICT_AFTER"),
        ("--shutdown-timeout", "REGISTRY_SHUTDOWN_TIMEOUT"),
        ("--log-level", "REGISTRY_LOG_LEVEL"),
    ]:
        assert flag in text and f"env {env}" in text
    assert "(default: 30.0;" in text


def test_migrate_subcommand_is_idempotent(tmp_path: Path) -> None:
    url = sqlite_url(tmp_path / "m.db")
    for _ in range(2):
        result = run_cli("migrate", "--storage", url)
        assert result.returncode == 0, result.stderr
    assert "schema is up to date" in result.stderr


def test_uvloop_serves_when_installed(tmp_path: Path) -> None:
    # The test extra installs uvloop, as the `fast` extra does for users.
    with ServerProcess("--storage", "memory://") as server:
        serving = server.messages("serving")
    assert serving[0]["loop"] == "uvloop"


async def test_a_drain_survives_a_restart_and_the_workers_re_registration(tmp_path: Path) -> None:
    storage = sqlite_url(tmp_path / "r.db")
    worker = instance(1)
    identity = {**worker, "port": str(worker["port"])}
    with ServerProcess("--storage", storage) as server:
        async with aiohttp.ClientSession(server.url) as http:
            assert (await http.post(INSTANCES, json=worker)).status == 201
            assert (await http.patch(INSTANCES, params=identity, json={"enabled": False})).status == 200
        server.signal(signal.SIGTERM)
        assert server.wait(timeout=20) == 0
    with ServerProcess("--storage", storage) as server:
        async with aiohttp.ClientSession(server.url) as http:
            (stored,) = (await (await http.get(INSTANCES)).json())["instances"]
            assert stored["enabled"] is False and stored["overrides"] == {"enabled": False}
            assert (await http.post(INSTANCES, json={**worker, "enabled": True})).status == 200
            select = await http.get("/api/v1/select", params={"model_name": worker["model_name"]})
            assert select.status == 404


async def test_sigterm_closes_watchers_at_once(tmp_path: Path) -> None:
    with ServerProcess("--storage", "memory://", "--shutdown-timeout", "30") as server:
        async with aiohttp.ClientSession(server.url) as http, http.ws_connect("/api/v1/watch") as ws:
            assert (await ws.receive_json())["type"] == "snapshot"
            started = time.monotonic()
            server.signal(signal.SIGTERM)
            message = await asyncio.wait_for(ws.receive(), 10)
            assert message.type is aiohttp.WSMsgType.CLOSE and message.data == 1001
            assert server.wait(timeout=10) == 0
        assert time.monotonic() - started < 10  # not the 30 s shutdown timeout


async def test_a_compressed_body_is_refused_before_it_is_inflated(tmp_path: Path) -> None:
    """A 200 KiB gzip body that would inflate to 200 MiB: 415 at once (the
    server never inflates bodies), nothing stored, and /health stays quick
    while two clients keep sending such bombs."""
    import gzip

    bomb = gzip.compress(b" " * (200 * 1024 * 1024), compresslevel=9)
    assert len(bomb) < 400 * 1024
    headers = {"Content-Type": "application/json", "Content-Encoding": "gzip"}
    with ServerProcess("--storage", sqlite_url(tmp_path / "r.db")) as server:
        async with aiohttp.ClientSession(server.url) as http:

            async def attack() -> list[int]:
                statuses = []
                for _ in range(5):
                    async with http.post(INSTANCES, data=bomb, headers=headers) as response:
                        statuses.append(response.status)
                        problem = await response.json()
                        assert problem["error"] == "unsupported_media_type"
                        assert "uncompressed" in problem["detail"] and "Brotli" not in problem["detail"]
                return statuses

            async def health() -> float:
                worst = 0.0
                for _ in range(20):
                    started = time.monotonic()
                    async with http.get("/health") as response:
                        assert response.status == 200
                    worst = max(worst, time.monotonic() - started)
                return worst

            *attacks, worst = await asyncio.gather(attack(), attack(), health())
            assert all(status == 415 for statuses in attacks for status in statuses)
            assert worst < 0.25, f"/health took {worst:.3f} s during the attack"
            for encoding in ("br", "deflate", "zstd"):
                answer = await http.post(
                    INSTANCES, data=b"{}", headers={**headers, "Content-Encoding": encoding}
                )
                assert answer.status == 415
            plain = await http.post(INSTANCES, json=instance(1), headers={"Content-Encoding": "identity"})
            assert plain.status == 201
            assert (await (await http.get(INSTANCES)).json())["count"] == 1


async def test_the_open_files_limit_is_raised_and_1200_connections_are_served(tmp_path: Path) -> None:
    """Started with the usual soft limit of 1,024 descriptors, the server raises it to
    the hard limit, says how many connections it can hold, and holds 1,200 at once."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    assert hard == resource.RLIM_INFINITY or hard >= 4096, "this machine's hard limit is too low for the test"
    low = "import resource, runpy, sys; resource.setrlimit(resource.RLIMIT_NOFILE, (1024, {hard})); "
    low += "sys.argv[0] = 'model-registry'; runpy.run_module('model_registry', run_name='__main__')"
    command = [sys.executable, "-c", low.format(hard=hard)]
    resource.setrlimit(
        resource.RLIMIT_NOFILE, (min(hard, 8192) if hard != resource.RLIM_INFINITY else 8192, hard)
    )
    try:
        with ServerProcess("--storage", sqlite_url(tmp_path / "r.db"), command=command) as server:
            serving = server.messages("serving")[0]
            assert serving["connections_max"] > 1200
            limits = Path(f"/proc/{server.proc.pid}/limits").read_text()
            line = next(row for row in limits.splitlines() if row.startswith("Max open files"))
            assert int(line.split()[3]) > 1024, line
            connector = aiohttp.TCPConnector(limit=0, force_close=False)
            async with aiohttp.ClientSession(server.url, connector=connector) as http:
                gate = asyncio.Event()

                async def hold() -> int:
                    await gate.wait()
                    async with http.get("/health") as response:
                        return response.status

                # Each request is on its own connection while all are open: slow enough
                # answers would reuse connections, so open them all first, then ask.
                readers = [
                    await asyncio.open_connection("127.0.0.1", int(server.url.rsplit(":", 1)[1]))
                    for _ in range(1200)
                ]
                try:
                    gate.set()
                    statuses = await asyncio.gather(*(hold() for _ in range(50)))
                    assert statuses == [200] * 50
                    for reader, writer in readers[-10:]:  # the last connections are really served
                        writer.write(b"GET /health HTTP/1.1\r\nHost: localhost\r\n\r\n")
                        await writer.drain()
                        assert (await reader.readline()).startswith(b"HTTP/1.1 200")
                finally:
                    for _, writer in readers:
                        writer.close()
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


async def test_at_the_open_files_limit_new_connections_are_refused_logged_and_counted(
    tmp_path: Path,
) -> None:
    """With 64 descriptors in all, the server keeps 32 for itself and closes
    connections past the other 32 at once: the log says so once, /health counts them,
    and once clients let go, it serves again (health checks included)."""
    low = "import resource, runpy, sys; resource.setrlimit(resource.RLIMIT_NOFILE, (64, 64)); "
    low += "sys.argv[0] = 'model-registry'; runpy.run_module('model_registry', run_name='__main__')"
    command = [sys.executable, "-c", low]
    with ServerProcess("--storage", sqlite_url(tmp_path / "r.db"), command=command) as server:
        limit = server.messages("serving")[0]["connections_max"]
        assert limit == 32
        port = int(server.url.rsplit(":", 1)[1])
        held = [await asyncio.open_connection("127.0.0.1", port) for _ in range(limit + 20)]
        refused = 0
        for reader, writer in held:
            writer.write(b"GET /health HTTP/1.1\r\nHost: localhost\r\n\r\n")
            try:
                line = await asyncio.wait_for(reader.readline(), 5)
            except ConnectionResetError:
                line = b""
            refused += not line.startswith(b"HTTP/1.1 200")
        assert refused >= 20  # at least those past the limit; the rest were served
        for _, writer in held:
            writer.close()
        warnings = server.messages("connection refused: the open-files limit is reached")
        assert len(warnings) == 1 and warnings[0]["limit"] == limit and "ulimit" in warnings[0]["fix"]
        deadline = time.monotonic() + 5
        async with aiohttp.ClientSession(server.url) as http:
            while True:  # until the server has seen the closes
                async with http.get("/health") as answer:
                    connections = (await answer.json())["connections"]
                if connections["open"] <= 2 or time.monotonic() > deadline:
                    break
                await asyncio.sleep(0.05)
        assert connections["refused_at_limit"] >= 20 and connections["max"] == limit
        assert connections["open"] <= 2


async def test_idle_trickling_and_slow_body_connections_are_timed_out(tmp_path: Path) -> None:
    """A connection that never sends, one that trickles its headers a byte at a
    time (slowloris), and one whose body stalls: each is ended by its timeout,
    while a well-behaved client is served throughout."""
    args = ("--storage", sqlite_url(tmp_path / "r.db"), "--idle-timeout", "1", "--body-timeout", "1")
    with ServerProcess(*args) as server:
        port = int(server.url.rsplit(":", 1)[1])
        idle = await asyncio.open_connection("127.0.0.1", port)
        trickle = await asyncio.open_connection("127.0.0.1", port)
        stalled = await asyncio.open_connection("127.0.0.1", port)
        head = b"POST /api/v1/instances HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
        stalled[1].write(head + b"Content-Length: 100\r\n\r\n{")
        started = time.monotonic()

        async def slowloris() -> None:
            for byte in b"GET /health HTTP/1.1\r\nHost: localhost\r\nX-Slow: " + b"a" * 20:
                if trickle[0].at_eof():
                    return
                trickle[1].write(bytes([byte]))
                await asyncio.sleep(0.2)

        sender = asyncio.create_task(slowloris())
        async with aiohttp.ClientSession(server.url) as http:
            for reader, _ in (idle, trickle):
                assert await asyncio.wait_for(reader.read(), 5) == b""  # closed by the server
            assert time.monotonic() - started < 4
            answer = await asyncio.wait_for(stalled[0].read(4096), 5)
            assert answer.startswith(b"HTTP/1.1 408") and b"request_timeout" in answer
            assert (await http.get("/health")).status == 200
        sender.cancel()
        for _, writer in (idle, trickle, stalled):
            writer.close()


async def test_one_client_address_may_hold_only_so_many_connections(tmp_path: Path) -> None:
    args = ("--storage", sqlite_url(tmp_path / "r.db"), "--max-connections-per-client", "5")
    with ServerProcess(*args) as server:
        port = int(server.url.rsplit(":", 1)[1])
        held = [await asyncio.open_connection("127.0.0.1", port) for _ in range(5)]
        extra = [await asyncio.open_connection("127.0.0.1", port) for _ in range(3)]
        for reader, _ in extra:  # closed by the server before any request
            assert await asyncio.wait_for(reader.read(), 5) == b""
        for reader, writer in held:  # the first five are served
            writer.write(b"GET /health HTTP/1.1\r\nHost: localhost\r\n\r\n")
            await writer.drain()
            assert (await asyncio.wait_for(reader.readline(), 5)).startswith(b"HTTP/1.1 200")
        held.pop()[1].close()
        # Once the server has seen that close, a new connection is served again.
        deadline = time.monotonic() + 5
        while True:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"GET /health HTTP/1.1\r\nHost: localhost\r\n\r\n")
            try:  # a refused connection ends with EOF, or a reset when our request was unread
                if (await asyncio.wait_for(reader.readline(), 5)).startswith(b"HTTP/1.1 200"):
                    break
            except ConnectionResetError:
                pass
            writer.close()
            assert time.monotonic() < deadline, "a freed slot was never reused"
        warnings = server.messages("connection refused: too many from one client")
        assert len(warnings) == 1 and warnings[0]["limit"] == 5  # once per minute, not per refusal
        for _, w in [*held, *extra, (reader, writer)]:
            w.close()


async def test_long_polls_end_when_their_clients_go_and_at_sigterm(tmp_path: Path) -> None:
    with ServerProcess("--storage", "memory://", "--shutdown-timeout", "30") as server:
        port = int(server.url.rsplit(":", 1)[1])
        async with aiohttp.ClientSession(server.url) as http:

            async def health() -> dict:
                async with http.get("/health") as answer:
                    return await answer.json()

            async def until_polls(count: int) -> None:
                deadline = time.monotonic() + 3
                while (await health())["long_polls"] != count:
                    assert time.monotonic() < deadline, f"long-polls never came to {count}"
                    await asyncio.sleep(0.02)

            async with http.get(INSTANCES) as first:
                index = first.headers["X-Registry-Index"]
            request = f"GET {INSTANCES}?index={index}&wait=5m HTTP/1.1\r\nHost: localhost\r\n\r\n".encode()
            left = [await asyncio.open_connection("127.0.0.1", port) for _ in range(20)]
            for _, writer in left:
                writer.write(request)
            await until_polls(20)
            for _, writer in left:
                writer.close()
            await until_polls(0)  # within 3 s, not at the end of their five minutes
            held = [await asyncio.open_connection("127.0.0.1", port) for _ in range(20)]
            for _, writer in held:
                writer.write(request)
            await until_polls(20)
        started = time.monotonic()
        server.signal(signal.SIGTERM)
        for reader, _ in held:  # each answered as usual, then the server exits
            assert (await asyncio.wait_for(reader.readline(), 10)).startswith(b"HTTP/1.1 200")
        assert server.wait(timeout=10) == 0
        assert time.monotonic() - started < 10
        for _, writer in held:
            writer.close()


async def test_answers_name_no_versions_and_malformed_requests_log_one_line(tmp_path: Path) -> None:
    with ServerProcess("--storage", "memory://") as server:
        port = int(server.url.rsplit(":", 1)[1])
        async with aiohttp.ClientSession(server.url) as http:
            for method, path in [
                ("GET", "/health"),
                ("GET", INSTANCES),
                ("GET", "/nope"),
                ("PUT", INSTANCES),
            ]:
                async with http.request(method, path) as answer:
                    assert answer.headers["Server"] == "model-registry", (method, path)
            async with http.ws_connect("/api/v1/watch") as ws:
                assert ws._response.headers["Server"] == "model-registry"

        async def exchange(data: bytes) -> bytes:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(data)
            answer = await asyncio.wait_for(reader.read(), 5)
            writer.close()
            return answer

        # The one target that is no path: answered in the API's shape, not aiohttp's text.
        star = await exchange(b"OPTIONS * HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        head, _, body = star.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 404") and b"application/json" in head
        assert orjson.loads(body)["error"] == "not_found"
        # Framing errors are aiohttp's parser's (plain text, documented): each is a 400,
        # and the log gets one line per client per minute, never a traceback.
        garbage = [
            b"POST / HTTP/1.1\r\nHost: localhost\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\n{}",
            b"GET / HTTP/1.1\r\nHost: localhost\r\n"
            + b"".join(b"X-%d: 1\r\n" % i for i in range(200))
            + b"\r\n",
            bytes.fromhex("160301002a010000260303") + b"\0" * 40,  # a TLS handshake
        ] * 5
        for data in garbage:
            assert (await exchange(data)).startswith(b"HTTP/1.0 400")
        await asyncio.sleep(0.2)
        refused = server.messages("malformed request refused")
        assert len(refused) == 1 and refused[0]["client"] == "127.0.0.1"
        assert not server.messages("Error handling request from %s")
        assert not [entry for entry in server.logs if "exc" in entry]  # no traceback anywhere
