"""Host and Origin checks: DNS rebinding and cross-site WebSockets cannot reach the API."""

from __future__ import annotations

import asyncio
import socket

import aiohttp
import pytest

from model_registry.api.hosts import AllowedHosts
from tests.process import ServerProcess


@pytest.mark.parametrize(
    ("listen", "extra", "host", "allowed"),
    [
        ("127.0.0.1", "", "127.0.0.1:8000", True),
        ("127.0.0.1", "", "localhost:8000", True),
        ("127.0.0.1", "", "LOCALHOST", True),
        ("127.0.0.1", "", "localhost.:8000", True),
        ("127.0.0.1", "", "[::1]:8000", True),
        ("127.0.0.1", "", "127.0.0.2", True),  # loopback, and a literal: no rebinding
        ("127.0.0.1", "", "evil.example", False),  # a name made to resolve to 127.0.0.1
        ("127.0.0.1", "", "evil.example:8000", False),
        ("127.0.0.1", "", "localhost.evil.example", False),
        ("127.0.0.1", "", "10.0.0.9:8000", False),  # an address it does not listen on
        ("127.0.0.1", "", "", False),
        ("127.0.0.1", "", None, False),
        ("127.0.0.1", "registry.internal, Other.Example", "registry.internal:8000", True),
        ("127.0.0.1", "registry.internal, Other.Example", "other.example", True),
        ("10.0.0.9", "", "10.0.0.9:8000", True),
        ("10.0.0.9", "", "10.0.0.8:8000", False),
        ("0.0.0.0", "", "10.0.0.8:8000", True),  # every interface: any address literal
        ("0.0.0.0", "", "[fd00::1]:8000", True),
        ("0.0.0.0", "", "registry:8000", False),  # a name must be allowed
        ("0.0.0.0", "registry", "registry:8000", True),
        ("::", "", socket.gethostname(), True),  # this machine's name
    ],
)
def test_which_hosts_a_registry_answers(listen: str, extra: str, host: str | None, allowed: bool) -> None:
    assert AllowedHosts(listen, extra).allows(host) is allowed


def test_a_star_turns_the_host_check_off() -> None:
    assert AllowedHosts.of("127.0.0.1", "*") is None
    assert AllowedHosts.of("127.0.0.1", "a, *") is None
    assert AllowedHosts.of("127.0.0.1", "a") is not None


@pytest.mark.parametrize(
    ("origin", "host", "allowed"),
    [
        (None, "127.0.0.1:8000", True),  # not a browser
        ("http://127.0.0.1:8000", "127.0.0.1:8000", True),
        ("http://localhost:3000", "127.0.0.1:8000", True),  # a page on this machine
        ("https://registry.internal", "registry.internal", True),  # same host as Host
        ("https://evil.example", "127.0.0.1:8000", False),
        ("http://evil.example:8000", "evil.example:8000", True),  # same host: Host itself is refused
        ("null", "127.0.0.1:8000", False),
        ("file://", "127.0.0.1:8000", False),
    ],
)
def test_which_origins_may_open_a_websocket(origin: str | None, host: str, allowed: bool) -> None:
    assert AllowedHosts("127.0.0.1").allows_origin(origin, host) is allowed


async def test_a_served_registry_refuses_a_rebinding_host_and_a_cross_site_watch() -> None:
    with ServerProcess("--storage", "memory://") as server:
        port = server.url.rsplit(":", 1)[1]
        async with aiohttp.ClientSession() as http:

            async def status(path: str, host: str, **headers: str) -> tuple[int, dict | None]:
                async with http.get(server.url + path, headers={"Host": host, **headers}) as answer:
                    body = await answer.json() if answer.content_type == "application/json" else None
                    return answer.status, body

            for path in ("/health", "/api/v1/instances", "/api/v1/models", "/api/health"):
                code, problem = await status(path, f"evil.example:{port}")
                assert code == 403 and problem["error"] == "host_not_allowed", path
                assert "--allowed-hosts" in problem["detail"]
                assert (await status(path, f"localhost:{port}"))[0] == 200
            refused = await asyncio.gather(
                *(status("/api/v1/instances", h) for h in ("attacker.test", "127.0.0.1.nip.io"))
            )
            assert [code for code, _ in refused] == [403, 403]
            with pytest.raises(aiohttp.WSServerHandshakeError) as cross_site:
                await http.ws_connect(server.url + "/api/v1/watch", origin="https://evil.example")
            assert cross_site.value.status == 403
            async with http.ws_connect(server.url + "/api/v1/watch", origin=server.url) as ws:
                assert (await ws.receive_json())["type"] == "snapshot"
            async with http.ws_connect(server.url + "/api/v1/watch") as ws:  # no Origin: not a browser
                assert (await ws.receive_json())["type"] == "snapshot"
    with ServerProcess("--storage", "memory://", "--allowed-hosts", "registry.internal") as server:
        async with aiohttp.ClientSession() as http:
            async with http.get(server.url + "/health", headers={"Host": "registry.internal"}) as answer:
                assert answer.status == 200
            async with http.get(server.url + "/health", headers={"Host": "evil.example"}) as answer:
                assert answer.status == 403
    with ServerProcess("--storage", "memory://", "--allowed-hosts", "*") as server:
        async with (
            aiohttp.ClientSession() as http,
            http.get(server.url + "/health", headers={"Host": "evil.example"}) as answer,
        ):
            assert answer.status == 200
