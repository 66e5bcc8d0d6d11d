"""``GET /openapi.json``: a valid OpenAPI 3.1 document of exactly the route table, whose
rules are the validation's (read from the pydantic models, and tried on the server).

That every answer of the API suite matches it is checked by ``conftest.Documented``."""

from __future__ import annotations

import re
import types
import typing
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import annotated_types
import jsonschema
import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from hypothesis import given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from openapi_spec_validator import OpenAPIV31SpecValidator
from pydantic import BaseModel, TypeAdapter, ValidationError
from pydantic.fields import FieldInfo

import model_registry_sdk
from model_registry import InstanceKey, InstanceLimit, InstanceNotFound, NoHealthyInstance, validation
from model_registry.api import create_app, openapi, operations, schemas
from model_registry.api.routes import ROUTES
from model_registry.api.tokens import _NewToken
from model_registry.auth import Forbidden
from model_registry.fastchat import HeartBeat, RegisterWorker, WorkerAddressQuery, WorkerStatus
from model_registry.settings import Settings
from model_registry_sdk.record import SERVER_MANAGED_FIELDS, ModelInstance
from tests.api.conftest import Documented, serve_app
from tests.api.test_endpoints import body


@pytest.fixture
def storage_url() -> str:
    """One backend: the document is the code's, whatever stores the records."""
    return "memory://"


METHODS = ("get", "put", "post", "delete", "patch", "head", "options", "trace")


@pytest.fixture
async def document(client: TestClient) -> dict[str, Any]:
    answer = await client.get("/openapi.json")
    assert answer.status == 200 and answer.content_type == "application/json"
    return await answer.json()


def components_of(document: dict[str, Any]) -> dict[str, Any]:
    return document["components"]["schemas"]


def each_operation(document: dict[str, Any]) -> Iterator[tuple[str, str, dict[str, Any]]]:
    for path, item in document["paths"].items():
        for method, operation in item.items():
            if method in METHODS:
                yield method.upper(), path, operation


# -- the document --------------------------------------------------------------------


async def test_the_document_is_valid_openapi_3_1(document: dict[str, Any]) -> None:
    OpenAPIV31SpecValidator(document).validate()
    assert document["openapi"].startswith("3.1")


async def test_it_is_built_once_and_served_to_anyone(
    aiohttp_client: Callable[..., Awaitable[TestClient]], document: dict[str, Any]
) -> None:
    assert openapi.rendered() is openapi.rendered()
    secured = await serve_app(aiohttp_client, openapi_app(admin_token="a" * 40))
    answer = await secured.get("/openapi.json")  # public, with authentication on too
    assert answer.status == 200 and await answer.json() == document
    assert (await secured.get("/api/v1/instances")).status == 401


def openapi_app(**settings: Any) -> web.Application:
    return create_app(Settings(storage="memory://", **settings))


async def test_every_route_is_in_the_document_and_the_other_way_round(document: dict[str, Any]) -> None:
    table = {(method, path) for method, path, _view, _action in ROUTES}
    assert len(table) == len(ROUTES)
    assert {(m, p) for m, p, _ in each_operation(document)} == table
    assert set(operations.OPERATIONS) == table  # every route described once, nothing else


async def test_operation_ids_are_unique_and_links_lead_to_them(document: dict[str, Any]) -> None:
    ids = [operation["operationId"] for _, _, operation in each_operation(document)]
    assert len(ids) == len(set(ids))
    linked = {
        link["operationId"]
        for _, _, operation in each_operation(document)
        for answer in operation["responses"].values()
        for link in answer.get("links", {}).values()
    }
    assert linked and linked <= set(ids)


SIGN_IN = ("POST", "/api/v1/session")


async def test_security_is_the_route_tables(document: dict[str, Any]) -> None:
    actions = {(m, p): action for m, p, _view, action in ROUTES}
    for method, path, operation in each_operation(document):
        public = actions[(method, path)].value == "public"
        schemes = [{"bearer": []}, {"basic": []}, {"session": []}]
        assert operation["security"] == ([] if public else schemes), (method, path)
        # Signing in is open to all, and refuses a bad token.
        assert ("401" in operation["responses"]) is not public or (method, path) == SIGN_IN, (method, path)
    scheme = document["components"]["securitySchemes"]
    assert scheme["bearer"]["scheme"] == "bearer" and scheme["basic"]["scheme"] == "basic"
    assert scheme["session"] == {
        **scheme["session"],
        "type": "apiKey",
        "in": "cookie",
        "name": "registry_session",
    }


def _codes(document: dict[str, Any]) -> set[tuple[int, str]]:
    found = set()
    for _, _, operation in each_operation(document):
        for status, answer in operation["responses"].items():
            schema = answer.get("content", {}).get("application/json", {}).get("schema", {})
            for part in schema.get("allOf", ()):
                for code in part.get("properties", {}).get("error", {}).get("enum", ()):
                    found.add((int(status), code))
    return found


def _raised_in_api() -> set[tuple[int, str]]:
    """Every ``ApiError(status, "code", ...)`` in the api package's source."""
    source = Path(openapi.__file__).parent
    pattern = re.compile(r'ApiError\(\s*(\d{3}),\s*"([a-z_]+)"')
    return {(int(s), c) for f in source.glob("*.py") for s, c in pattern.findall(f.read_text())}


async def test_every_error_the_code_raises_is_documented(document: dict[str, Any]) -> None:
    key = InstanceKey("m", "h", 1)
    domain = [
        InstanceNotFound(key),
        NoHealthyInstance("m"),
        Forbidden("x"),
        validation.InvalidInstance([("port", "x")]),
        InstanceLimit(507, "instance_limit", "x"),
        InstanceLimit(429, "model_instance_limit", "x", "model_name"),
    ]
    raised = _raised_in_api() | {(e.status, e.code) for e in domain}
    raised.add((503, "storage_unavailable"))  # api.errors.failure_response
    raised |= {(413, "body_too_large"), (415, "unsupported_media_type")}  # aiohttp's, mapped
    assert len(raised) > 20
    assert raised <= _codes(document), raised - _codes(document)
    # aiohttp's own 404 and 405, which no operation answers, are said in the description.
    assert "404 `not_found`" in document["info"]["description"]
    assert "405 `method_not_allowed`" in document["info"]["description"]


async def test_every_documented_error_is_one_the_code_raises(document: dict[str, Any]) -> None:
    roots = [Path(module.__file__).parent for module in (openapi, validation, model_registry_sdk)]
    text = "".join(f.read_text() for root in roots for f in root.glob("*.py"))
    for status, code in _codes(document):
        assert f'"{code}"' in text, (status, code)


async def test_each_routes_errors_follow_from_what_it_does(document: dict[str, Any]) -> None:
    paths = document["paths"]
    register = paths["/api/v1/instances"]["post"]["responses"]
    for status in ("400", "408", "413", "415", "422", "429", "503", "507"):
        assert status in register, status
    assert "Retry-After" in register["503"]["headers"]
    assert "408" not in paths["/api/v1/instances"]["get"]["responses"]
    health = paths["/health"]["get"]["responses"]
    assert "shutting_down" in str(health["503"]) and "401" not in health
    # /metrics answers while draining, and reaches no storage: no 503 at all.
    assert "503" not in paths["/metrics"]["get"]["responses"]


# -- the rules are the validation's ---------------------------------------------------

#: Each bound of ``annotated_types`` (what pydantic's Field(ge=...) makes): its JSON-schema keyword.
_KEYWORDS = {
    annotated_types.Ge: ("minimum", "ge"),
    annotated_types.Gt: ("exclusiveMinimum", "gt"),
    annotated_types.Le: ("maximum", "le"),
    annotated_types.Lt: ("exclusiveMaximum", "lt"),
}


def _constraints(annotation: Any, metadata: list[Any] = ()) -> dict[str, Any]:  # type: ignore[assignment]
    """The JSON-schema keywords pydantic's rules on ``annotation`` (and its ``metadata``)
    mean, read from the rule objects themselves (``annotated_types``), not from a schema."""
    found: dict[str, Any] = {}
    items = list(metadata)
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        base, *extra = typing.get_args(annotation)
        found |= _constraints(base)
        items += extra
    elif origin in (typing.Union, types.UnionType):
        for arm in typing.get_args(annotation):
            found |= _constraints(arm)
    elif origin is list:
        found |= {f"items.{k}": v for k, v in _constraints(typing.get_args(annotation)[0]).items()}
    arms = typing.get_args(annotation) if origin in (typing.Union, types.UnionType) else (annotation,)
    collection = any(arm is list or typing.get_origin(arm) is list for arm in arms)
    for item in items:
        if isinstance(item, FieldInfo):
            found |= _constraints(annotation if collection else str, item.metadata)
            continue
        for kind, (keyword, attribute) in _KEYWORDS.items():
            if isinstance(item, kind):
                found[keyword] = getattr(item, attribute)
        if isinstance(item, annotated_types.MinLen):
            found["minItems" if collection else "minLength"] = item.min_length
        if isinstance(item, annotated_types.MaxLen):
            found["maxItems" if collection else "maxLength"] = item.max_length
    return found


def _field_constraints(model: type[BaseModel], name: str) -> dict[str, Any]:
    info = model.model_fields[name]
    return _constraints(info.annotation, info.metadata)


def _documented(schema: dict[str, Any], components: dict[str, Any]) -> dict[str, Any]:
    """Every keyword of ``schema``, its ``anyOf`` arms' and its items' (``items.``), refs resolved."""
    if "$ref" in schema:
        schema = components[schema["$ref"].rsplit("/", 1)[-1]]
    found: dict[str, Any] = {}
    for arm in (schema, *schema.get("anyOf", ())):
        if "$ref" in arm:
            arm = components[arm["$ref"].rsplit("/", 1)[-1]]
        found |= {k: v for k, v in arm.items() if k in _RULE_KEYWORDS}
        if "items" in arm:
            found |= {f"items.{k}": v for k, v in _documented(arm["items"], components).items()}
    return found


_RULE_KEYWORDS = {keyword for keyword, _ in _KEYWORDS.values()} | {
    "minLength",
    "maxLength",
    "minItems",
    "maxItems",
}

#: Each schema of the document that says what a pydantic model of the code checks.
MODELS = {
    "Registration": validation._InstanceModel,
    "Override": validation._Override,
    "Report": validation.Report,
    "NewToken": _NewToken,
    "RegisterWorker": RegisterWorker,
    "WorkerStatus": WorkerStatus,
    "HeartBeat": HeartBeat,
    "WorkerAddressQuery": WorkerAddressQuery,
}


async def test_every_field_rule_is_the_schemas(document: dict[str, Any]) -> None:
    components = components_of(document)
    checked = 0
    for component, model in MODELS.items():
        properties = components[component]["properties"]
        for name in model.model_fields:
            if name not in properties:
                assert component == "Registration" and name in SERVER_MANAGED_FIELDS, (component, name)
                continue
            rules = _field_constraints(model, name)
            assert _documented(properties[name], components) == rules, (component, name)
            checked += bool(rules)
    assert checked >= 15
    # The heartbeat's load, and the key in query strings:
    beat = components["Heartbeat"]["properties"]["queue_length"]
    assert _documented(beat, components) == _constraints(validation.RULES["queue_length"])
    query = {p["name"]: p for p in document["paths"]["/api/v1/instances"]["delete"]["parameters"]}
    for name in validation._KeyQuery.model_fields:
        assert _documented(query[name]["schema"], components) == _field_constraints(
            validation._KeyQuery, name
        )
        assert query[name]["required"] is validation._KeyQuery.model_fields[name].is_required()


async def test_the_record_and_the_registration_have_the_records_fields(document: dict[str, Any]) -> None:
    names = [f.name for f in ModelInstance.__dataclass_fields__.values()]
    record = components_of(document)["Instance"]
    assert list(record["properties"]) == names and record["required"] == names
    registration = components_of(document)["Registration"]
    assert set(registration["properties"]) == set(names) - SERVER_MANAGED_FIELDS
    assert registration["required"] == [
        n for n in names if validation._InstanceModel.model_fields[n].is_required()
    ]
    metadata = registration["properties"]["metadata"]
    assert metadata["maxProperties"] == validation.MAX_METADATA_KEYS


def _edges(rules: dict[str, Any], kind: type) -> Iterator[Any]:
    """Values at each bound and just past it."""
    step = 1 if kind is int else 0.5
    for keyword, bound in rules.items():
        if keyword == "minimum":
            yield from (bound, bound - step)
        elif keyword == "maximum":
            yield from (bound, bound + step)
        elif keyword == "minLength":
            yield from ("m" * bound, "m" * max(bound - 1, 0))
        elif keyword == "maxLength":
            yield from ("m" * bound, "m" * (bound + 1))


def _valid(schema: dict[str, Any], value: Any, document: dict[str, Any]) -> bool:
    resolver = {"components": document["components"]}
    validator = jsonschema.Draft202012Validator({**schema, **resolver})
    return validator.is_valid(value)


async def test_the_server_agrees_with_the_schema_at_every_bound(
    client: TestClient, document: dict[str, Any]
) -> None:
    """Each bound of each field tried on the server: it accepts exactly what the document does."""
    components = components_of(document)
    tried = 0
    for path, component, kinds in (
        ("/api/v1/instances", "Registration", {"port": int, "weight": float, "prompt_template": str}),
        ("/api/v1/instances", "Registration", {"model_name": str}),
        ("/api/v1/heartbeat", "Heartbeat", {"queue_length": int}),
        ("/api/v1/reports", "Report", {"status": int, "error": str}),
    ):
        for name, kind in kinds.items():
            schema = components[component]
            for value in _edges(_documented(schema["properties"][name], components), kind):
                sent = {**body(port=7), "ok": False, name: value}
                if path == "/api/v1/reports":
                    await client.post("/api/v1/instances", json=body(port=7))
                expected = _valid(ref_to(component), sent, document)
                answer = await client.post(path, json=sent)
                assert (answer.status < 300) is expected, (name, value, answer.status, await answer.text())
                tried += 1
    assert tried >= 16
    # The query key's port, and the metadata's key count.
    for port, ok in ((65535, True), (65536, False), (0, False)):
        answer = await client.delete("/api/v1/instances", params={**_query(port=7), "port": str(port)})
        assert (answer.status != 422) is ok
    many = {str(i): i for i in range(validation.MAX_METADATA_KEYS + 1)}
    assert not _valid(ref_to("Registration"), {**body(), "metadata": many}, document)
    assert (await client.post("/api/v1/instances", json={**body(), "metadata": many})).status == 422


def ref_to(component: str) -> dict[str, Any]:
    return {"$ref": f"#/components/schemas/{component}"}


def _query(port: int) -> dict[str, str]:
    return {"model_name": body()["model_name"], "host": body()["host"], "port": str(port)}


async def test_pydantic_refuses_what_the_schema_refuses_at_the_port_bounds() -> None:
    # The rule itself, beside the server: both edges of validation.RULES["port"] as pydantic sees them.
    port = TypeAdapter(validation.RULES["port"])
    rules = _constraints(validation.RULES["port"])
    port.validate_python(rules["minimum"])
    port.validate_python(rules["maximum"])
    for wrong in (rules["minimum"] - 1, rules["maximum"] + 1):
        with pytest.raises(ValidationError):
            port.validate_python(wrong)


# -- the checker itself -----------------------------------------------------------------


async def test_an_answer_that_breaks_the_document_fails_the_test(
    aiohttp_client: Callable[..., Awaitable[TestClient]],
) -> None:
    """``Documented`` against a server that answers wrongly: it must catch each."""

    async def models(request: web.Request) -> web.Response:
        return web.json_response({"models": 5, "self_preservation": {"active": False}})

    async def listing(request: web.Request) -> web.Response:
        return web.json_response({"instances": [], "count": 0}, status=418)

    async def anything(request: web.Request) -> web.Response:
        return web.Response(text="nope", status=404)

    app = web.Application()
    app.router.add_get("/api/v1/models", models)
    app.router.add_get("/api/v1/instances", listing)
    app.router.add_route("*", "/{tail:.*}", anything)
    client = await aiohttp_client(app, middlewares=(Documented(),))
    for path in ("/api/v1/models", "/api/v1/instances", "/nowhere"):
        with pytest.raises(AssertionError, match="breaks /openapi.json"):
            await client.get(path)
    with pytest.raises(AssertionError, match="not refused"):
        await client.get("/api/v1/models", params={"index": "soon"})


async def test_head_and_unrouted_requests_get_their_documented_answers(client: TestClient) -> None:
    # Each passes through the checker (conftest.Documented), which would fail it otherwise.
    assert (await client.head("/health")).status == 200
    assert (await client.head("/nowhere")).status == 404
    answer = await client.put("/health")
    assert answer.status == 405 and answer.headers["Allow"] == "GET, HEAD"
    assert (await client.get("/api/v1/tokens/")).status == 404


async def test_the_document_is_json_the_registry_wrote(client: TestClient) -> None:
    answer = await client.get("/openapi.json")
    assert await answer.read() == openapi.rendered()
    assert orjson.loads(openapi.rendered())["paths"]


# -- the rules that are checks, as patterns ----------------------------------------------

_hosts = st.one_of(
    st.text(max_size=30),
    st.from_regex(schemas.HOST_PATTERN, fullmatch=True).filter(lambda h: len(h) <= 255),
    st.ip_addresses().map(str),
    st.ip_addresses(v=6).map(lambda a: f"[{a}]"),
    st.sampled_from(["[::1]", "Worker-1", "a_b", "fe80::1%eth0", "host.", "-bad-", "[1.2.3.4]", "x" * 64]),
)


def _accepted(check: Callable[[str], object], value: str) -> bool:
    try:
        check(value)
    except ValueError:
        return False
    return True


@hypothesis_settings(max_examples=400, deadline=None)
@given(host=_hosts)
def test_every_host_the_registry_accepts_matches_the_documents_pattern(host: str) -> None:
    if _accepted(validation.normalize_host, host):
        assert re.fullmatch(schemas.HOST_PATTERN, host), host


@hypothesis_settings(max_examples=300, deadline=None)
@given(name=st.text(max_size=20))
def test_the_model_name_pattern_is_the_control_character_rule(name: str) -> None:
    accepted = _accepted(validation._check_model_name, name)
    assert accepted is bool(re.fullmatch(schemas.MODEL_NAME_PATTERN, name)), repr(name)
