"""Bad input: a clear JSON error with the right status, never a 500, nothing stored touched."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import orjson
import pytest
from aiohttp.test_utils import TestClient
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from model_registry.api.keys import LIFECYCLE
from model_registry.api.routes import ROUTES
from tests.api.test_endpoints import body, query

JSON = {"Content-Type": "application/json"}


@pytest.fixture
async def stored(client: TestClient) -> list[dict]:
    """One registered instance, and the listing every rejected request must leave as it is."""
    await client.post("/api/v1/instances", json=body(weight=2, metadata={"keep": "me"}))
    return (await (await client.get("/api/v1/instances")).json())["instances"]


async def assert_error(response, status: int, code: str, field: str | None = None) -> dict:
    assert response.status == status, await response.text()
    assert response.content_type == "application/json"
    error = await response.json()
    assert error["error"] == code and error["detail"] and "Traceback" not in error["detail"]
    if field is not None:
        assert error["field"] == field and field in error["detail"]
    return error


async def assert_unchanged(client: TestClient, stored: list[dict]) -> None:
    assert (await (await client.get("/api/v1/instances")).json())["instances"] == stored


@pytest.mark.parametrize("path", ["/api/v1/instances", "/api/v1/heartbeat"])
@pytest.mark.parametrize(
    "data, status, code",
    [
        (b"{not json", 400, "malformed_json"),
        (b"", 400, "malformed_json"),
        (b"   ", 400, "malformed_json"),
        (b'{"model_name": "m"', 400, "malformed_json"),
        (b"\xff\xfe{}", 400, "malformed_json"),
        (b"[" * 5000 + b"]" * 5000, 400, "malformed_json"),
        (b"[1, 2]", 422, "invalid_input"),
        (b'"text"', 422, "invalid_input"),
        (b"null", 422, "invalid_input"),
        (b"17", 422, "invalid_input"),
    ],
)
async def test_unparseable_bodies(client: TestClient, stored, path, data, status, code) -> None:
    await assert_error(await client.post(path, data=data, headers=JSON), status, code)
    await assert_unchanged(client, stored)


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded", None])
async def test_wrong_content_type_is_415(client: TestClient, stored, content_type) -> None:
    headers = {"Content-Type": content_type} if content_type else {}
    data = orjson.dumps(body(weight=9))
    response = await client.post(
        "/api/v1/instances", data=data, headers=headers, skip_auto_headers={"Content-Type"}
    )
    await assert_error(response, 415, "unsupported_media_type")
    await assert_unchanged(client, stored)


async def test_json_with_charset_is_accepted(client: TestClient) -> None:
    data = orjson.dumps(body(port=2))
    response = await client.post(
        "/api/v1/instances", data=data, headers={"Content-Type": "application/json; charset=utf-8"}
    )
    assert response.status == 201


@pytest.mark.parametrize(
    "fields, field",
    [
        ({"model_name": None}, "model_name"),
        ({"model_name": ""}, "model_name"),
        ({"model_name": "a\x00b"}, "model_name"),
        ({"model_name": "x" * 257}, "model_name"),
        ({"host": "bad host!"}, "host"),
        ({"host": 12}, "host"),
        ({"port": "8001"}, "port"),
        ({"port": 0}, "port"),
        ({"port": 70000}, "port"),
        ({"port": 8001.5}, "port"),
        ({"port": True}, "port"),
        ({"weight": -0.5}, "weight"),
        ({"weight": "heavy"}, "weight"),
        ({"check_healthy": "yes"}, "check_healthy"),
        ({"enabled": 1}, "enabled"),
        ({"prompt_template": 5}, "prompt_template"),
        ({"metadata": []}, "metadata"),
        ({"metadata": {str(i): i for i in range(65)}}, "metadata"),
        ({"metadata": {"blob": "x" * 8200}}, "metadata"),
    ],
)
async def test_schema_violations_are_422_naming_the_field(client: TestClient, stored, fields, field) -> None:
    sent = {**body(weight=7), **fields}
    response = await client.post("/api/v1/instances", json=sent)
    await assert_error(response, 422, "invalid_input", field)
    await assert_unchanged(client, stored)


async def test_missing_fields_are_422(client: TestClient, stored) -> None:
    response = await client.post("/api/v1/instances", json={"model_name": "m", "host": "h"})
    await assert_error(response, 422, "invalid_input", "port")
    response = await client.post("/api/v1/heartbeat", json={"host": "h", "port": 1})
    await assert_error(response, 422, "invalid_input", "model_name")
    response = await client.post("/api/v1/heartbeat", json={**body(), "queue_length": -1})
    await assert_error(response, 422, "invalid_input", "queue_length")
    await assert_unchanged(client, stored)


async def test_body_over_64_kib_is_413(client: TestClient, stored) -> None:
    big = orjson.dumps({**body(weight=9), "pad": "x" * (64 * 1024)})
    await assert_error(await client.post("/api/v1/instances", data=big, headers=JSON), 413, "body_too_large")

    async def chunks():  # no Content-Length: the limit holds for streamed bodies too
        for _ in range(80):
            yield b" " * 1024

    response = await client.post("/api/v1/instances", data=chunks(), headers=JSON)
    await assert_error(response, 413, "body_too_large")
    await assert_unchanged(client, stored)


async def test_unknown_route_404_and_wrong_method_405(client: TestClient, stored) -> None:
    await assert_error(await client.get("/api/v1/nothing"), 404, "not_found")
    await assert_error(await client.get("/nothing"), 404, "not_found")
    response = await client.put("/api/v1/instances", json=body())
    await assert_error(response, 405, "method_not_allowed")
    assert set(response.headers["Allow"].split(", ")) == {"GET", "HEAD", "POST", "DELETE", "PATCH"}
    await assert_error(await client.post("/health"), 405, "method_not_allowed")
    await assert_unchanged(client, stored)


@pytest.mark.parametrize(
    "params, field",
    [
        ({"host": "10.0.0.5", "port": "8001"}, "model_name"),
        ({"model_name": "m", "port": "8001"}, "host"),
        ({"model_name": "m", "host": "10.0.0.5"}, "port"),
        ({"model_name": "m", "host": "10.0.0.5", "port": "abc"}, "port"),
        ({"model_name": "m", "host": "10.0.0.5", "port": "99999"}, "port"),
        ({"model_name": "m", "host": "-bad-", "port": "1"}, "host"),
        ({**query(), "purge": "maybe"}, "purge"),
    ],
)
async def test_bad_deregister_queries_are_422(client: TestClient, stored, params, field) -> None:
    await assert_error(await client.delete("/api/v1/instances", params=params), 422, "invalid_input", field)
    await assert_unchanged(client, stored)


async def test_bad_list_and_select_queries_are_422(client: TestClient, stored) -> None:
    response = await client.get("/api/v1/instances", params={"healthy_only": "perhaps"})
    await assert_error(response, 422, "invalid_input", "healthy_only")
    await assert_error(await client.get("/api/v1/select"), 422, "invalid_input", "model_name")
    await assert_error(await client.get("/api/v1/select", params={"model_name": ""}), 422, "invalid_input")
    await assert_error(await client.get("/api/v1/instances", params={"model_name": ""}), 422, "invalid_input")


async def test_unknown_instance_is_404(client: TestClient, stored) -> None:
    response = await client.delete("/api/v1/instances", params=query(port=9))
    await assert_error(response, 404, "instance_not_found")
    await assert_unchanged(client, stored)


async def test_draining_answers_503(client: TestClient, stored) -> None:
    client.app[LIFECYCLE].draining = True
    await assert_error(await client.get("/health"), 503, "shutting_down")
    response = await client.post("/api/v1/instances", json=body(weight=9))
    await assert_error(response, 503, "shutting_down")
    assert response.headers["Retry-After"] == "1"
    client.app[LIFECYCLE].draining = False
    await assert_unchanged(client, stored)


@pytest.mark.parametrize("storage_url", ["sqlite"], indirect=True)
async def test_unreachable_storage_is_503_with_retry_after(
    client: TestClient, stored, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with sqlite3.connect(tmp_path / "registry.db") as conn:
        conn.execute("ALTER TABLE instances RENAME TO moved_away")
    for response in (
        await client.get("/health"),
        await client.post("/api/v1/instances", json=body(port=2)),
        await client.post("/api/v1/heartbeat", json=body(port=3)),
        # A known instance's beat, too: while the file cannot be written, beats
        # fail rather than pile up unwritten.
        await client.post("/api/v1/heartbeat", json=body(port=8001)),
    ):
        await assert_error(response, 503, "storage_unavailable")
        assert int(response.headers["Retry-After"]) >= 1
        detail = (await response.json())["detail"]  # what happened and what to do, in our words
        assert "no such table" not in detail and "model-registry migrate" in detail
    logged = [r for r in caplog.records if r.getMessage().startswith("storage unavailable")]
    assert logged and all("no such table" in r.driver for r in logged)  # the driver's, in the log
    with sqlite3.connect(tmp_path / "registry.db") as conn:
        conn.execute("ALTER TABLE moved_away RENAME TO instances")
    assert (await client.get("/health")).status == 200
    # What was stored before is as it was (a 503'd write may still land: all writes are idempotent).
    listed = (await (await client.get("/api/v1/instances")).json())["instances"]
    assert [i for i in listed if i["port"] == 8001] == stored


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=12,
)
field_names = st.sampled_from(
    [
        "model_name",
        "host",
        "port",
        "weight",
        "check_healthy",
        "enabled",
        "prompt_template",
        "metadata",
        "queue_length",
    ]
)


@pytest.mark.parametrize("storage_url", ["memory"], indirect=True)
@hypothesis_settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(fields=st.dictionaries(field_names, json_values, max_size=6))
async def test_arbitrary_json_never_causes_a_500(client: TestClient, fields: dict) -> None:
    for path in ("/api/v1/instances", "/api/v1/heartbeat"):
        response = await client.post(path, json=fields)
        assert response.status in (200, 201, 422), await response.text()
        assert response.content_type == "application/json"


# -- every route ---------------------------------------------------------------

#: Every route of the table, with a concrete path (the token route's name filled in).
EVERY_ROUTE = [(method, path.replace("{name}", "nobody")) for method, path, _view, _action in ROUTES]

#: Query parameters some route reads, and others none does.
query_names = st.sampled_from(
    [
        "model_name",
        "host",
        "port",
        "purge",
        "healthy_only",
        "strategy",
        "index",
        "wait",
        "since",
        "model",
        "worker_name",
        "name",
        "role",
        "x",
    ]
)
query_values = st.one_of(
    st.text(max_size=12),
    st.sampled_from(["0", "-1", "1e400", "nan", "99999999999999999999", "30s", "forever", "true", ""]),
)


async def assert_answered(response, route: tuple[str, str]) -> None:
    """No 500, no stack trace, and JSON: an error in the API's shape (or a compatible API's own)."""
    text = await response.text()
    assert response.status < 500 or response.status == 503, (route, response.status, text)
    assert "Traceback" not in text, route
    if response.status >= 400:
        assert response.content_type == "application/json", (route, text)
        problem = orjson.loads(text)
        assert problem["error"] and problem["detail"], (route, problem)


async def assert_kept(client: TestClient, stored: list[dict]) -> None:
    """The instance stored before is as it was (other instances may have been added)."""
    listed = (await (await client.get("/api/v1/instances")).json())["instances"]
    first = stored[0]
    kept = [
        i
        for i in listed
        if (i["model_name"], i["host"], i["port"]) == (first["model_name"], first["host"], first["port"])
    ]
    assert kept == stored


BAD_INPUTS = {
    "malformed json": ({"data": b"{not json", "headers": JSON}),
    "json array": ({"data": b"[1, 2]", "headers": JSON}),
    "deep nesting": ({"data": b"[" * 5000 + b"]" * 5000, "headers": JSON}),
    "not utf-8": ({"data": b"\xff\xfe{}", "headers": JSON}),
    "wrong types": ({"json": {"model_name": 5, "host": [], "port": "x", "weight": {}, "metadata": 3}}),
    "form body": ({"data": b"a=1", "headers": {"Content-Type": "application/x-www-form-urlencoded"}}),
    "gzip body": ({"data": b"\x1f\x8b\x08\x00", "headers": {**JSON, "Content-Encoding": "gzip"}}),
    "huge body": ({"data": b"{" + b" " * (65 * 1024) + b"}", "headers": JSON}),
    "bad query": (
        {"params": {"port": "abc", "wait": "forever", "index": "-x", "since": "?", "purge": "maybe"}}
    ),
    "odd query": ({"params": {"model_name": "\x00\u202e" * 40, "strategy": "nope", "healthy_only": "2"}}),
}


@pytest.mark.parametrize("storage_url", ["memory"], indirect=True)
@pytest.mark.parametrize("route", EVERY_ROUTE, ids=[f"{m} {p}" for m, p in EVERY_ROUTE])
@pytest.mark.parametrize("bad", list(BAD_INPUTS), ids=list(BAD_INPUTS))
async def test_bad_input_on_every_route_is_a_clear_answer(
    client: TestClient, stored, route: tuple[str, str], bad: str
) -> None:
    method, path = route
    await assert_answered(await client.request(method, path, **BAD_INPUTS[bad]), route)
    await assert_kept(client, stored)


@pytest.mark.parametrize("storage_url", ["memory"], indirect=True)
@pytest.mark.parametrize("route", EVERY_ROUTE, ids=[f"{m} {p}" for m, p in EVERY_ROUTE])
@hypothesis_settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    params=st.dictionaries(query_names, query_values, max_size=4),
    fields=st.one_of(st.dictionaries(field_names | query_names, json_values, max_size=6), json_values),
)
async def test_fuzzed_requests_on_every_route_never_cause_a_500(
    client: TestClient, stored, route: tuple[str, str], params: dict, fields: object
) -> None:
    method, path = route
    response = await client.request(method, path, params=params, json=fields)
    await assert_answered(response, route)
    await assert_kept(client, stored)


@pytest.mark.parametrize(
    "path", ["/api/v1/instances", "/api/v1/heartbeat", "/register_worker", "/receive_heart_beat"]
)
async def test_compressed_bodies_are_refused_on_every_path_that_reads_one(
    client: TestClient, path: str
) -> None:
    import gzip

    body = gzip.compress(b'{"model_name": "m", "host": "10.0.0.1", "port": 1}')
    headers = {"Content-Type": "application/json", "Content-Encoding": "gzip"}
    answer = await client.post(path, data=body, headers=headers)
    assert answer.status == 415
    assert (await answer.json())["error"] == "unsupported_media_type"
