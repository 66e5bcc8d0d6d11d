"""Authentication and the permission matrix, over real HTTP on loopback.

Every route of the route table, asked with no token, malformed ones, unknown,
revoked and expired tokens, each role's, and a worker's out of its scope:
401 (``unauthorized``, ``WWW-Authenticate: Bearer``), 403 (``forbidden``,
naming what is missing) or 2xx, as ``model_registry.auth.GRANTS`` says.
"""

from __future__ import annotations

import base64
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from model_registry import ManualClock
from model_registry.api import create_app
from model_registry.api.dashboard import files_served
from model_registry.api.routes import ROUTES
from model_registry.auth import GRANTS, Action, Role
from model_registry.settings import Settings
from tests.api.conftest import serve_app

BOOTSTRAP = "bootstrap-admin-token-for-the-tests-0123456789"
IN_SCOPE, OUT_OF_SCOPE = "glm-4-9b", "llama-3-8b"
HOST, PORT = "10.0.0.1", 8000
WORKER_URL = f"http://{HOST}:{PORT}"


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def basic(token: str, user: str = "worker") -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{token}".encode()).decode()}


def _instance(model: str) -> dict[str, Any]:
    return {"model_name": model, "host": HOST, "port": PORT}


def _key(model: str, **extra: str) -> dict[str, str]:
    return {"model_name": model, "host": HOST, "port": str(PORT), **extra}


#: A request that succeeds for whoever may make it, for each route: (params, json).
def sample(method: str, path: str, model: str) -> tuple[dict | None, Any]:
    fastchat_status = {"model_names": [model], "speed": 1, "queue_length": 0}
    return {
        ("POST", "/api/v1/instances"): (None, _instance(model)),
        ("GET", "/api/v1/instances"): ({"model_name": model}, None),
        ("DELETE", "/api/v1/instances"): (_key(model, purge="true"), None),
        ("PATCH", "/api/v1/instances"): (_key(model), {"weight": 2}),
        ("POST", "/api/v1/reports"): (None, {**_instance(model), "ok": True}),
        ("POST", "/api/v1/heartbeat"): (None, _instance(model)),
        ("POST", "/api/v1/heartbeats"): (None, {"beats": [_instance(model)]}),
        ("POST", "/api/v1/instances/batch"): (None, {"instances": [_instance(model)]}),
        ("GET", "/api/v1/models"): (None, None),
        ("GET", "/api/v1/select"): ({"model_name": model}, None),
        ("GET", "/api/v1/watch"): (None, None),
        ("POST", "/api/v1/tokens"): (None, {"name": "made-in-matrix", "role": "router"}),
        ("GET", "/api/v1/tokens"): (None, None),
        ("DELETE", "/api/v1/tokens/{name}"): (None, None),
        ("GET", "/health"): (None, None),
        ("GET", "/metrics"): (None, None),
        ("GET", "/openapi.json"): (None, None),
        ("GET", "/docs"): (None, None),
        ("GET", "/docs/assets/{name}"): (None, None),
        ("GET", "/"): (None, None),
        ("GET", "/ui/{name}"): (None, None),
        ("GET", "/api/v1/session"): (None, None),
        ("POST", "/api/v1/session"): (None, {"token": BOOTSTRAP}),
        ("DELETE", "/api/v1/session"): (None, None),
        ("GET", "/api/health"): (None, None),
        ("POST", "/api/controller/models"): (None, _instance(model)),
        ("GET", "/api/controller/models"): ({"model_name": model}, None),
        ("DELETE", "/api/controller/models"): (_key(model, remove_from_registry="false"), None),
        ("POST", "/api/controller/heartbeat"): (None, _instance(model)),
        ("POST", "/register_worker"): (None, {"worker_name": WORKER_URL, "worker_status": fastchat_status}),
        ("POST", "/receive_heart_beat"): (None, {"worker_name": WORKER_URL, "queue_length": 0}),
        ("POST", "/list_models"): (None, None),
        ("POST", "/list_language_models"): (None, None),
        ("POST", "/list_multimodal_models"): (None, None),
        ("POST", "/refresh_all_workers"): (None, None),
        ("POST", "/get_worker_address"): (None, {"model": model}),
        ("POST", "/worker_get_status"): (None, None),
        ("GET", "/test_connection"): (None, None),
    }[(method, path)]


@pytest.fixture
async def secured(
    aiohttp_client: Callable[[web.Application], Awaitable[TestClient]], clock: ManualClock
) -> tuple[TestClient, dict[str, str]]:
    """A registry with authentication on, and a token of each kind (revoked and expired too)."""
    client = await serve_app(
        aiohttp_client, create_app(Settings(storage="memory://", admin_token=BOOTSTRAP), clock=clock)
    )
    made: dict[str, str] = {}
    for name, body in {
        "worker": {"role": "worker", "models": ["glm-4*"]},
        "worker-any": {"role": "worker"},
        "router": {"role": "router"},
        "operator": {"role": "operator"},
        "admin": {"role": "admin"},
        "revoked": {"role": "admin"},
        "expired": {"role": "admin", "expires": "1h"},
    }.items():
        answer = await client.post("/api/v1/tokens", json={"name": name, **body}, headers=bearer(BOOTSTRAP))
        assert answer.status == 201, await answer.text()
        made[name] = (await answer.json())["token"]
    assert (await client.delete("/api/v1/tokens/revoked", headers=bearer(BOOTSTRAP))).status == 200
    clock.advance(3601)
    return client, made


async def _prepare(client: TestClient, method: str, path: str, model: str) -> None:
    """Put back what a previous case may have removed (idempotent, as the admin)."""
    admin = bearer(BOOTSTRAP)
    await client.post("/api/v1/instances", json=_instance(model), headers=admin)
    if path == "/api/v1/tokens/{name}":
        await client.post("/api/v1/tokens", json={"name": "victim", "role": "router"}, headers=admin)
    if (method, path) == ("POST", "/api/v1/tokens"):
        await client.delete("/api/v1/tokens/made-in-matrix", headers=admin)
    if path == "/receive_heart_beat":
        status = {"model_names": [model], "speed": 1, "queue_length": 0}
        await client.post(
            "/register_worker", json={"worker_name": WORKER_URL, "worker_status": status}, headers=admin
        )


#: The ``{name}`` of a path that serves a packaged file: one that is there.
_NAME_IN = {"/docs/assets/{name}": "swagger-ui.css", "/ui/{name}": min(files_served(), default="none")}


async def _ask(client: TestClient, method: str, path: str, model: str, headers: dict[str, str]) -> int:
    params, body = sample(method, path, model)
    url = path.replace("{name}", _NAME_IN.get(path, "victim"))
    if path == "/api/v1/watch":
        try:
            async with client.ws_connect(url, headers=headers) as ws:
                await ws.close()
            return 101
        except aiohttp.WSServerHandshakeError as exc:
            return exc.status
    answer = await client.request(method, url, params=params, json=body, headers=headers)
    if answer.status == 401:
        assert answer.headers["WWW-Authenticate"].startswith("Bearer")
        assert (await answer.json())["error"] == "unauthorized"
    elif answer.status == 403:
        assert (await answer.json())["error"] == "forbidden"
    return answer.status


ROLE_OF = {
    "worker": Role.WORKER,
    "worker-any": Role.WORKER,
    "out-of-scope": Role.WORKER,
    "router": Role.ROUTER,
    "operator": Role.OPERATOR,
    "admin": Role.ADMIN,
    "bootstrap": Role.ADMIN,
}

MALFORMED = [
    {"Authorization": "Bearer"},
    {"Authorization": "Bearer "},
    {"Authorization": "Token abc"},
    {"Authorization": "Basic !!!not-base64"},
    {"Authorization": "Basic " + base64.b64encode(b"no-colon").decode()},
]


async def test_every_route_answers_each_kind_of_caller_as_the_permission_table_says(
    secured: tuple[TestClient, dict[str, str]],
) -> None:
    client, made = secured
    checked = 0
    for method, path, _view, action in ROUTES:
        outcomes: dict[str, int] = {}
        callers: dict[str, dict[str, str]] = {
            "none": {},
            "unknown": bearer("mrt_" + "x" * 43),
            "revoked": bearer(made["revoked"]),
            "expired": bearer(made["expired"]),
            **{f"malformed{i}": h for i, h in enumerate(MALFORMED)},
            **{role: bearer(made[role]) for role in ("worker-any", "router", "operator", "admin")},
            "worker": basic(made["worker"]),  # Basic, as a URL's password arrives
            "bootstrap": bearer(BOOTSTRAP),
        }
        for caller, headers in callers.items():
            await _prepare(client, method, path, IN_SCOPE)
            outcomes[caller] = await _ask(client, method, path, IN_SCOPE, headers)
        await _prepare(client, method, path, OUT_OF_SCOPE)
        outcomes["out-of-scope"] = await _ask(client, method, path, OUT_OF_SCOPE, basic(made["worker"]))

        for caller, status in outcomes.items():
            where = f"{method} {path} as {caller}: {status}"
            if action is Action.PUBLIC:
                assert 200 <= status < 300, where
            elif caller in ("none", "unknown", "revoked", "expired") or caller.startswith("malformed"):
                assert status == 401, where
            else:
                role = ROLE_OF[caller]
                allowed = action in GRANTS[role]
                # (a batch of beats refuses each beat out of scope in its result, not the request)
                scoped_out = caller == "out-of-scope" and path not in (
                    "/receive_heart_beat",
                    "/api/v1/heartbeats",
                    "/api/v1/instances/batch",
                )
                if allowed and not scoped_out:
                    assert 200 <= status < 300 or status == 101, where
                else:
                    assert status == 403, where
            checked += 1
    assert checked == len(ROUTES) * 16


async def test_every_route_in_the_app_declares_an_action(secured: tuple[TestClient, dict[str, str]]) -> None:
    client, _ = secured
    declared = {(m, p) for m, p, _v, a in ROUTES if isinstance(a, Action)}
    assert len(declared) == len(ROUTES)
    served = set()
    for route in client.app.router.routes():
        path = route.resource.canonical if route.resource is not None else ""
        if path in ("/{tail}", "*") or route.method == "HEAD":
            continue  # the catch-alls (404/405, and OPTIONS *), and aiohttp's HEAD twins of GETs
        served.add((route.method, path))
    assert served == declared


async def test_a_forbidden_answer_names_what_is_missing(secured: tuple[TestClient, dict[str, str]]) -> None:
    client, made = secured
    answer = await client.post(
        "/api/v1/instances", json=_instance(OUT_OF_SCOPE), headers=bearer(made["worker"])
    )
    assert answer.status == 403
    detail = (await answer.json())["detail"]
    assert "glm-4*" in detail and OUT_OF_SCOPE in detail
    answer = await client.patch(
        "/api/v1/instances", params=_key(IN_SCOPE), json={"enabled": False}, headers=bearer(made["router"])
    )
    assert answer.status == 403 and "operator" in (await answer.json())["detail"]


async def test_secrets_are_shown_once_and_never_again(
    secured: tuple[TestClient, dict[str, str]], caplog: pytest.LogCaptureFixture
) -> None:
    client, made = secured
    caplog.set_level(logging.DEBUG)
    answer = await client.post(
        "/api/v1/tokens", json={"name": "once", "role": "router"}, headers=bearer(BOOTSTRAP)
    )
    secret = (await answer.json())["token"]
    assert secret.startswith("mrt_") and len(secret) >= 4 + 43  # 256 bits, URL-safe base64
    listed = await (await client.get("/api/v1/tokens", headers=bearer(made["admin"]))).text()
    assert secret not in listed and "digest" not in listed
    assert {
        t["name"]
        for t in (await (await client.get("/api/v1/tokens", headers=bearer(BOOTSTRAP))).json())["tokens"]
    } >= {"once", "worker"}
    await client.get("/api/v1/instances", headers=bearer(secret))
    await client.get("/api/v1/instances", headers=bearer(secret + "x"))
    logged = "\n".join(r.getMessage() + repr(r.__dict__) for r in caplog.records)
    assert secret not in logged and BOOTSTRAP not in logged
    assert "token created" in logged


async def test_failed_authentication_is_logged_once_per_source_per_minute(
    secured: tuple[TestClient, dict[str, str]], caplog: pytest.LogCaptureFixture
) -> None:
    client, _ = secured
    caplog.set_level(logging.WARNING, logger="api.auth")
    for _ in range(50):
        assert (await client.get("/api/v1/instances", headers=bearer("nope"))).status == 401
    assert len([r for r in caplog.records if r.getMessage() == "authentication failed"]) == 1


async def test_token_names_are_unique_and_bad_requests_are_422(
    secured: tuple[TestClient, dict[str, str]],
) -> None:
    client, _ = secured
    admin = bearer(BOOTSTRAP)
    assert (
        await client.post("/api/v1/tokens", json={"name": "router", "role": "router"}, headers=admin)
    ).status == 409
    for bad in (
        {"name": "x", "role": "king"},
        {"name": "has space", "role": "router"},
        {"name": "x", "role": "router", "expires": "soon"},
        {"role": "router"},
    ):
        assert (await client.post("/api/v1/tokens", json=bad, headers=admin)).status == 422, bad
    assert (await client.delete("/api/v1/tokens/nobody", headers=admin)).status == 404


def test_authentication_is_on_off_loopback_and_with_an_admin_token() -> None:
    assert not Settings().auth
    assert Settings(host="0.0.0.0").auth
    assert not Settings(host="0.0.0.0", insecure_no_auth=True).auth
    assert Settings(admin_token=BOOTSTRAP).auth
    with pytest.raises(ValueError, match="too short"):
        Settings(admin_token="short")


async def test_a_drain_names_the_operators_token(secured: tuple[TestClient, dict[str, str]]) -> None:
    client, tokens = secured
    body = {"model_name": "glm-4", "host": "10.0.0.8", "port": 8000}
    assert (await client.post("/api/v1/instances", json=body, headers=bearer(tokens["admin"]))).status == 201
    query = {"model_name": "glm-4", "host": "10.0.0.8", "port": "8000"}
    answer = await client.patch(
        "/api/v1/instances", params=query, json={"enabled": False}, headers=bearer(tokens["operator"])
    )
    record = await answer.json()
    assert (record["state"], record["state_reason"]) == ("disabled", "drained by operator operator")


async def test_a_batch_of_beats_refuses_each_beat_out_of_a_workers_scope(
    secured: tuple[TestClient, dict[str, str]],
) -> None:
    client, tokens = secured
    batch = [
        {"model_name": "glm-4@llm", "host": "10.0.0.1", "port": 8000},
        {"model_name": "llama", "host": "10.0.0.1", "port": 8000},
    ]
    answer = await client.post("/api/v1/heartbeats", json={"beats": batch}, headers=bearer(tokens["worker"]))
    assert answer.status == 200
    results = (await answer.json())["results"]
    assert results[0] == {"result": "registered"}
    assert results[1]["result"] == "refused" and "glm-4*" in results[1]["detail"]
    assert (await client.post("/api/v1/heartbeats", json={"beats": batch})).status == 401
    routers = await client.post("/api/v1/heartbeats", json={"beats": batch}, headers=bearer(tokens["router"]))
    assert routers.status == 403
