"""The dashboard's server side over real HTTP on loopback: its page and files, and the
browser's session (sign-in cookie, CSRF token, revocation). The page itself is driven in
Chromium by ``test_dashboard_page.py``."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from model_registry import ManualClock
from model_registry.api import create_app
from model_registry.api.auth import CSRF_HEADER, SESSION_COOKIE, csrf_token
from model_registry.api.dashboard import CONTENT_SECURITY_POLICY, files_served
from model_registry.settings import Settings
from tests.api.conftest import serve_app

BOOTSTRAP = "bootstrap-admin-token-for-the-dashboard-0123456789"
INSTANCE = {"model_name": "llama-3-8b", "host": "10.0.0.1", "port": 8000}
KEY = {"model_name": "llama-3-8b", "host": "10.0.0.1", "port": "8000"}

Factory = Callable[[web.Application], Awaitable[TestClient]]


async def _secured(aiohttp_client: Factory, clock: ManualClock) -> tuple[TestClient, dict[str, str]]:
    client = await serve_app(
        aiohttp_client, create_app(Settings(storage="memory://", admin_token=BOOTSTRAP), clock=clock)
    )
    admin = {"Authorization": f"Bearer {BOOTSTRAP}"}
    tokens = {}
    for role in ("router", "operator"):
        made = await client.post("/api/v1/tokens", json={"name": f"ops-{role}", "role": role}, headers=admin)
        assert made.status == 201, await made.text()
        tokens[role] = (await made.json())["token"]
    assert (await client.post("/api/v1/instances", json=INSTANCE, headers=admin)).status in (200, 201)
    return client, tokens


async def test_the_page_and_its_files_are_served_from_the_package_under_a_strict_policy(
    client: TestClient,
) -> None:
    page = await client.get("/")
    assert page.status == 200
    assert page.content_type == "text/html"
    assert page.headers["Content-Security-Policy"] == CONTENT_SECURITY_POLICY
    assert "'unsafe-inline'" not in CONTENT_SECURITY_POLICY and "'unsafe-eval'" not in CONTENT_SECURITY_POLICY
    again = await client.get("/", headers={"If-None-Match": page.headers["ETag"]})
    assert again.status == 304
    assert files_served(), "api/static/ui has no files"
    for name in files_served() - {"index.html"}:
        answer = await client.get(f"/ui/{name}")
        assert answer.status == 200, name
        assert answer.headers["X-Content-Type-Options"] == "nosniff"


@pytest.mark.parametrize("name", ["index.html", "nope.js", "..%2Fdashboard.py", "%2e%2e%2fapp.py", "uplot"])
async def test_only_the_dashboards_own_files_are_served(client: TestClient, name: str) -> None:
    answer = await client.get(f"/ui/{name}")
    assert answer.status == 404
    assert (await answer.json())["error"] == "not_found"


async def test_with_auth_off_the_session_says_so_and_sets_no_cookie(client: TestClient) -> None:
    answer = await client.get("/api/v1/session")
    assert await answer.json() == {"auth": False, "role": None, "name": None, "csrf": None}
    signed = await client.post("/api/v1/session", json={"token": "anything"})
    assert signed.status == 200 and SESSION_COOKIE not in signed.cookies


async def test_signing_in_sets_an_httponly_strict_cookie_that_authenticates_reads(
    aiohttp_client: Factory, clock: ManualClock
) -> None:
    client, tokens = await _secured(aiohttp_client, clock)
    assert await (await client.get("/api/v1/session")).json() == {
        "auth": True,
        "role": None,
        "name": None,
        "csrf": None,
    }
    assert (await client.get("/api/v1/instances", params={"model_name": "llama-3-8b"})).status == 401
    signed = await client.post("/api/v1/session", json={"token": tokens["router"]})
    assert signed.status == 200
    body = await signed.json()
    assert body == {
        "auth": True,
        "role": "router",
        "name": "ops-router",
        "csrf": csrf_token(tokens["router"]),
    }
    morsel = signed.cookies[SESSION_COOKIE]
    assert morsel["httponly"] and morsel["samesite"] == "Strict" and morsel["path"] == "/"
    # The cookie jar sends it from now on: reads pass, the watch too.
    listed = await client.get("/api/v1/instances", params={"model_name": "llama-3-8b"})
    assert listed.status == 200
    async with client.ws_connect("/api/v1/watch") as ws:
        first = await ws.receive_json()
        assert first["type"] == "snapshot"
    assert (await (await client.get("/api/v1/session")).json())["name"] == "ops-router"


async def test_a_change_by_cookie_needs_the_csrf_token_and_the_role(
    aiohttp_client: Factory, clock: ManualClock
) -> None:
    client, tokens = await _secured(aiohttp_client, clock)
    signed = await client.post("/api/v1/session", json={"token": tokens["operator"]})
    csrf = (await signed.json())["csrf"]
    drain = {"enabled": False}
    refused = await client.patch("/api/v1/instances", params=KEY, json=drain)
    assert refused.status == 403
    assert (await refused.json())["error"] == "csrf_required"
    wrong = await client.patch("/api/v1/instances", params=KEY, json=drain, headers={CSRF_HEADER: "0" * 64})
    assert wrong.status == 403
    done = await client.patch("/api/v1/instances", params=KEY, json=drain, headers={CSRF_HEADER: csrf})
    assert done.status == 200, await done.text()
    assert (await done.json())["enabled"] is False
    # A router's session reads, and may not drain even with its CSRF token.
    signed = await client.post("/api/v1/session", json={"token": tokens["router"]})
    csrf = (await signed.json())["csrf"]
    forbidden = await client.patch(
        "/api/v1/instances", params=KEY, json={"enabled": True}, headers={CSRF_HEADER: csrf}
    )
    assert forbidden.status == 403
    assert (await forbidden.json())["error"] == "forbidden"


async def test_a_bad_token_signs_nobody_in_and_leaks_nothing(
    aiohttp_client: Factory, clock: ManualClock
) -> None:
    client, _ = await _secured(aiohttp_client, clock)
    secret = "mrt_" + "z" * 43
    answer = await client.post("/api/v1/session", json={"token": secret})
    assert answer.status == 401
    assert SESSION_COOKIE not in answer.cookies
    assert secret not in await answer.text()
    for body in ({}, {"token": 5}, {"token": ""}, {"token": "x" * 2000}):
        bad = await client.post("/api/v1/session", json=body)
        assert bad.status == 422, body
        assert (await bad.json())["field"] == "token"
    assert (await client.post("/api/v1/session", data="token=x")).status == 415


async def test_revoking_the_token_ends_its_session_and_signing_out_forgets_it(
    aiohttp_client: Factory, clock: ManualClock
) -> None:
    client, tokens = await _secured(aiohttp_client, clock)
    assert (await client.post("/api/v1/session", json={"token": tokens["router"]})).status == 200
    assert (await client.get("/api/v1/models")).status == 200
    admin = {"Authorization": f"Bearer {BOOTSTRAP}"}
    assert (await client.delete("/api/v1/tokens/ops-router", headers=admin)).status == 200
    ended = await client.get("/api/v1/models")
    assert ended.status == 401
    assert "sign in again" in (await ended.json())["detail"]
    assert (await (await client.get("/api/v1/session")).json())["role"] is None

    assert (await client.post("/api/v1/session", json={"token": tokens["operator"]})).status == 200
    out = await client.delete("/api/v1/session")
    assert out.status == 200
    assert (await client.get("/api/v1/models")).status == 401


async def test_a_page_of_another_site_cannot_sign_in(aiohttp_client: Factory, clock: ManualClock) -> None:
    client, tokens = await _secured(aiohttp_client, clock)
    answer = await client.post(
        "/api/v1/session", json={"token": tokens["operator"]}, headers={"Origin": "http://evil.example"}
    )
    assert answer.status == 403
    assert (await answer.json())["error"] == "origin_not_allowed"
