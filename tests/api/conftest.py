from __future__ import annotations

import functools
import warnings
from collections.abc import Awaitable, Callable
from typing import Any

import jsonschema
import orjson
import pytest
from aiohttp import ClientRequest, ClientResponse, payload, web
from aiohttp.test_utils import TestClient
from openapi_core import Config, OpenAPI, V31RequestValidator
from openapi_core.datatypes import RequestParameters
from openapi_core.templating.paths.exceptions import OperationNotFound, PathError
from openapi_core.validation.request.exceptions import MissingRequestBody
from werkzeug.datastructures import Headers, ImmutableMultiDict

from model_registry import ManualClock
from model_registry.api import create_app
from model_registry.api.keys import CONNECTIONS, DISCONNECTS
from model_registry.api.openapi import rendered
from model_registry.api.responses import SERVER_OPTIONS
from model_registry.settings import Settings


@pytest.fixture
def settings(storage_url: str) -> Settings:
    return Settings(storage=storage_url, heartbeat_interval=5, heartbeat_timeout=30, evict_after=600)


@pytest.fixture
def app(settings: Settings, clock: ManualClock) -> web.Application:
    return create_app(settings, clock=clock)


@pytest.fixture
async def client(
    app: web.Application, aiohttp_client: Callable[[web.Application], Awaitable[TestClient]]
) -> TestClient:
    """A real HTTP server on loopback, built by the same factory as `serve`; every
    answer it gives the test is checked against its /openapi.json (``Documented``)."""
    return await serve_app(aiohttp_client, app)


async def serve_app(aiohttp_client: Callable[..., Awaitable[TestClient]], app: web.Application) -> TestClient:
    """Serve ``app`` on loopback as ``serve`` does: its server options, and
    its server telling long-polls of clients that have gone, and counting connections.
    The client checks every answer against the document (``Documented``)."""
    client = await aiohttp_client(app, server_kwargs=SERVER_OPTIONS, middlewares=(Documented(),))
    app[DISCONNECTS].attach(client.server.runner.server)
    app[CONNECTIONS].attach(client.server.runner.server)
    return client


# -- every answer against the document -------------------------------------------------


class _Unauthenticated(V31RequestValidator):
    """Parameters and body, not credentials: most test apps run without authentication
    (and openapi-core checks nothing else of a request whose credentials it does not find)."""

    def _iter_errors(self, request: Any, operation: Any, path: Any) -> Any:
        yield from self._iter_parameters_errors(request, operation, path)
        for error in self._iter_body_errors(request, operation):
            if not isinstance(error, MissingRequestBody):
                yield error


@functools.cache
def _document() -> tuple[dict[str, Any], OpenAPI]:
    document = orjson.loads(rendered())
    # FastChat's paths read any body as JSON (the document says so with */*).
    config = Config(
        request_validator_cls=_Unauthenticated, extra_media_type_deserializers={"*/*": orjson.loads}
    )
    return document, OpenAPI.from_dict(document, config=config)


class _SentRequest:
    """A client request as openapi-core reads one."""

    def __init__(self, request: ClientRequest, body: bytes | None) -> None:
        url = request.url
        self.host_url = f"{url.scheme}://{url.host}:{url.port}"
        self.path = url.path
        self.method = request.method.lower()
        self.body = body
        # A body sent without a type is a stream of bytes (RFC 9110, 8.3).
        self.content_type = request.headers.get("Content-Type", "application/octet-stream" if body else "")
        self.parameters = RequestParameters(
            query=ImmutableMultiDict(list(url.query.items())), header=Headers(list(request.headers.items()))
        )


class _Answer:
    def __init__(self, response: ClientResponse, body: bytes) -> None:
        self.status_code = response.status
        self.content_type = response.headers.get("Content-Type", "")
        self.headers = Headers(list(response.headers.items()))
        self.data = body


def _explain(error: Exception) -> str:
    cause = error.__cause__
    details = [getattr(e, "message", str(e)) for e in getattr(cause, "schema_errors", ())]
    return f"{type(error).__name__}: {error}" + (f" ({'; '.join(details)})" if details else "")


class Documented:
    """A client middleware: checks each request the tests send and each answer they get
    against the registry's own /openapi.json, with openapi-core, and fails the test (at the
    call) on a mismatch.

    - A request the document describes must get an answer the document gives for it.
    - A request the document says is invalid (bad JSON, a wrong type, a bad parameter) must
      be refused (4xx; a WebSocket's upgrade, then a close), and the refusal must be one the
      operation documents.
    - A path no route serves is answered 404 ``not_found``, a routed path asked with an
      undocumented method 405 ``method_not_allowed`` with ``Allow``: both in the error shape.
    - A request whose body is streamed (its bytes unknown here) has its answer checked alone.
    """

    async def __call__(
        self, request: ClientRequest, handler: Callable[[ClientRequest], Awaitable[ClientResponse]]
    ) -> ClientResponse:
        body = request.body
        sent = None if isinstance(body, payload.AsyncIterablePayload) else await _bytes(body)
        response = await handler(request)
        received = b"" if response.status == 101 else await response.read()
        exchange = _exchange(request, sent, response, received)
        if exchange in _CONFORMING:  # the same request, answered the same, checked before
            return response
        problems = self.problems(request, sent, response, received)
        if not problems and len(_CONFORMING) < 100_000:
            _CONFORMING.add(exchange)
        if problems:
            raise AssertionError(
                f"{request.method} {request.url.path_qs[:200]} answered {response.status} "
                f"{received[:300]!r}, which breaks /openapi.json: " + "; ".join(problems)
            )
        return response

    def problems(
        self, request: ClientRequest, sent: bytes | None, response: ClientResponse, received: bytes
    ) -> list[str]:
        document, spec = _document()
        asked = _SentRequest(request, sent)
        try:
            with warnings.catch_warnings():
                # DB-GPT's listing takes model_name= (empty: every model), which only the
                # deprecated allowEmptyValue can say.
                warnings.filterwarnings("ignore", "Use of allowEmptyValue", DeprecationWarning)
                errors: list[Exception] = list(spec.iter_request_errors(asked))
        except RecursionError as exc:  # the stdlib's JSON parser, on a body nested thousands deep
            errors = [exc]
        unrouted = [e for e in errors if isinstance(e, PathError)]
        if unrouted:
            return self._unrouted(request, unrouted[0], response, received, document)
        answer = _Answer(response, received)
        problems = [_explain(e) for e in spec.iter_response_errors(asked, answer)]
        # A WebSocket refuses bad parameters after its upgrade, closing with 1008 (see the 101).
        refused = 400 <= response.status < 500 or response.status == 101
        if errors and sent is not None and not refused:
            problems.append(
                "the document says the request is invalid, yet it was not refused: "
                + "; ".join(_explain(e) for e in errors)
            )
        return problems

    def _unrouted(
        self,
        request: ClientRequest,
        error: PathError,
        response: ClientResponse,
        received: bytes,
        document: dict[str, Any],
    ) -> list[str]:
        path = document["paths"].get(_template(request.url.path, document))
        if request.method == "HEAD":  # GET's answer without its body
            statuses = path["get"]["responses"] if path is not None and "get" in path else {"404", "405"}
            return [] if str(response.status) in statuses else [f"HEAD is never answered {response.status}"]
        if isinstance(error, OperationNotFound) and path is not None:
            allowed = {m.upper() for m in path} | ({"HEAD"} if "get" in path else set())
            problems = _error_problems(405, "method_not_allowed", response, received, document)
            if set(response.headers.get("Allow", "").split(", ")) != allowed:
                problems.append(
                    f"Allow is {response.headers.get('Allow')!r}, not the path's {sorted(allowed)}"
                )
            return problems
        return _error_problems(404, "not_found", response, received, document)


#: Exchanges that passed: checking is a function of the exchange, and tests repeat many
#: (a listing after each step; a loop of selections), at some milliseconds a check.
_CONFORMING: set[tuple[Any, ...]] = set()


def _exchange(request: ClientRequest, sent: bytes | None, response: ClientResponse, received: bytes) -> tuple:
    answered = tuple(sorted((k, v) for k, v in response.headers.items() if k.lower() != "date"))
    asked = tuple(request.headers.items())
    return request.method, str(request.url), asked, sent, response.status, answered, received


async def _bytes(body: payload.Payload | bytes) -> bytes:
    return body if isinstance(body, bytes) else await body.as_bytes()


def _template(path: str, document: dict[str, Any]) -> str:
    """The document's path template that ``path`` is an instance of (or ``path``)."""
    parts = path.split("/")
    for template in document["paths"]:
        pattern = template.split("/")
        if len(pattern) == len(parts) and all(
            p == q or (p.startswith("{") and q) for p, q in zip(pattern, parts, strict=True)
        ):
            return template
    return path


def _error_problems(
    status: int, code: str, response: ClientResponse, received: bytes, document: dict[str, Any]
) -> list[str]:
    if response.status != status or response.content_type != "application/json":
        return [f"expected {status} {code} in JSON, got {response.status} {response.content_type}"]
    problem = orjson.loads(received)
    errors = [
        e.message
        for e in jsonschema.Draft202012Validator(document["components"]["schemas"]["Error"]).iter_errors(
            problem
        )
    ]
    if problem.get("error") != code:
        errors.append(f"error is {problem.get('error')!r}, not {code!r}")
    return errors
