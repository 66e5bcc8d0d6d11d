"""``GET /openapi.json``: the OpenAPI 3.1 document of every route.

Built, not written, so that it cannot drift from the code:

- its operations are the route table's (``api.routes.ROUTES``), each described once in
  ``api.operations.OPERATIONS``;
- its schemas are those of the record and of the pydantic models input is validated with
  (``api.schemas``), so a rule changed there changes the document;
- each route's errors follow from what its table entry says it does (authenticate, read a
  body, reach storage, answer while draining), plus the refusals of its own it lists.

The document depends on the code alone, the same for every application in the process: it is
rendered once, at its first request, and the bytes are kept.
"""

from __future__ import annotations

import functools
from collections import defaultdict
from importlib.metadata import PackageNotFoundError, version
from typing import Any

from aiohttp import web

from model_registry import Registry
from model_registry.auth import Action

from .auth import CSRF_HEADER, SESSION_COOKIE
from .operations import JSON, OPERATIONS, Operation
from .responses import dumps, json_body_response
from .schemas import components, ref

__all__ = ["build", "document", "operation_id", "rendered"]


# -- the errors ----------------------------------------------------------------------

_BODY_ERRORS = {
    400: ("malformed_json",),
    408: ("request_timeout",),
    413: ("body_too_large",),
    415: ("unsupported_media_type",),
    422: ("invalid_input",),
}
_STATUS_TEXT = {
    400: "a malformed request",
    401: "no token, or one unknown, revoked or expired",
    403: "not allowed: the Host, the Origin, or the token's role or scope",
    404: "nothing by that name",
    408: "the body did not arrive within --body-timeout",
    409: "a conflict",
    413: "the body is over 64 KiB",
    415: "the body is not JSON, or is compressed",
    422: "an input breaks a rule (`field` names it)",
    429: "the model has its --max-instances-per-model",
    503: "unavailable for now: retry after `Retry-After` seconds",
    507: "the registry holds its --max-instances",
}
_RETRY_AFTER = {"Retry-After": {"required": True, "schema": {"type": "integer", "minimum": 1}}}
_CHALLENGE = {"WWW-Authenticate": {"required": True, "schema": {"type": "string"}}}


def _errors(method: str, operation: Operation, action: Action, while_draining: bool) -> dict[int, list[str]]:
    """Every error code the route can answer, by status (see ``api.errors.guard``)."""
    codes: dict[int, set[str]] = defaultdict(set)
    codes[403].add("host_not_allowed")
    if not while_draining:
        codes[503].add("shutting_down")
    if action is not Action.PUBLIC:
        codes[401].add("unauthorized")
        codes[403].add("forbidden")
        if method not in ("GET", "HEAD", "OPTIONS"):  # by the dashboard's session cookie
            codes[403].add("csrf_required")
    if operation.reads in ("json", "any"):
        for status, found in _BODY_ERRORS.items():
            codes[status].update(found)
    elif operation.reads == "ignored":
        codes[413].add("body_too_large")
    if operation.storage:
        codes[503].add("storage_unavailable")
    for status, found in operation.refusals.items():
        codes[status].update(found)
    return {status: sorted(found) for status, found in sorted(codes.items())}


def _error_answer(status: int, found: list[str]) -> dict[str, Any]:
    schema = {"allOf": [ref("Error"), {"properties": {"error": {"enum": found}}}]}
    answer: dict[str, Any] = {
        "description": f"{_STATUS_TEXT[status]}: {', '.join(f'`{c}`' for c in found)}",
        "content": {JSON: {"schema": schema}},
    }
    if status == 503:
        answer["headers"] = _RETRY_AFTER
    elif status == 401:
        answer["headers"] = _CHALLENGE
    return answer


# -- the document ----------------------------------------------------------------------


def operation_id(view: Any) -> str:
    """A view's name, with its module's unless that is ``views`` or the same name."""
    module = view.__module__.rsplit(".", 1)[-1]
    name = view.__name__
    return name if module in ("views", name) else f"{module}_{name}"


def _operation(method: str, view: Any, action: Action, while_draining: bool, op: Operation) -> dict[str, Any]:
    answers: dict[str, Any] = {}
    for status, (text, schema) in op.answers.items():
        answer: dict[str, Any] = {"description": text}
        if schema is not None:  # None: no body (304)
            answer["content"] = {t: {"schema": schema} if schema else {} for t in op.answer_types}
        if status in op.headers:
            answer["headers"] = op.headers[status]
        if status in op.links:
            answer["links"] = op.links[status]
        answers[str(status)] = answer
    if op.websocket:
        answers["101"] = {"description": "switched to the WebSocket protocol: see above"}
    for status, found in _errors(method, op, action, while_draining).items():
        answers[str(status)] = _error_answer(status, found)
    described: dict[str, Any] = {
        "operationId": operation_id(view),
        "summary": op.summary,
        "tags": [op.tag],
        "parameters": list(op.parameters),
        "responses": dict(sorted(answers.items())),
        "security": [] if action is Action.PUBLIC else [{"bearer": []}, {"basic": []}, {"session": []}],
    }
    if op.description:
        described["description"] = op.description
    if op.body is not None:
        # FastChat's clients do not always say their bodies are JSON: any media type is read as JSON.
        types = (JSON, "*/*") if op.reads == "any" else (JSON,)
        described["requestBody"] = {
            "required": True,
            "description": "JSON, whatever the Content-Type says" if op.reads == "any" else "JSON",
            "content": {t: {"schema": op.body} for t in types},
        }
    return described


_DESCRIPTION = """\
A registry of the instances of machine-learning models that serve traffic.

Every error is `{"error": code, "detail": sentence}`, with `field` when one input field is at
fault; each operation lists its codes by status. Besides: a path that is not routed is answered
404 `not_found`, and a routed path asked with another method 405 `method_not_allowed` (with
`Allow`); every GET answers HEAD too. When authentication is on (an admin token is set, or the
registry listens beyond loopback), every operation but the public ones needs a token: as
`Authorization: Bearer <token>`, as the password of HTTP Basic (any user name), or as the common
name of a client certificate under mutual TLS."""


def build() -> dict[str, Any]:
    """The document (``api.routes`` imports this module: the table is read when it is built)."""
    from .routes import ROUTES, WHILE_DRAINING

    paths: dict[str, dict[str, Any]] = {}
    for method, path, view, action in ROUTES:
        op = OPERATIONS[(method, path)]
        paths.setdefault(path, {})[method.lower()] = _operation(
            method, view, action, view in WHILE_DRAINING, op
        )
    return {
        "openapi": "3.1.0",
        "info": {"title": "model-registry", "version": _version(), "description": _DESCRIPTION},
        "tags": [{"name": name} for name in dict.fromkeys(op.tag for op in OPERATIONS.values())],
        "paths": paths,
        "components": {
            "schemas": components(),
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer", "description": "a registry token"},
                "basic": {"type": "http", "scheme": "basic", "description": "the token as the password"},
                "session": {
                    "type": "apiKey",
                    "in": "cookie",
                    "name": SESSION_COOKIE,
                    "description": "the dashboard's session (POST /api/v1/session); a change made "
                    f"with it also carries {CSRF_HEADER}",
                },
            },
        },
    }


def _version() -> str:
    try:
        return version("model-registry")
    except PackageNotFoundError:  # run from a source tree that is not installed
        return "0.0.0"


@functools.cache
def rendered() -> bytes:
    """The document as served: built at the first request, and kept (it is the code's)."""
    return dumps(build())


async def document(request: web.Request, registry: Registry) -> web.Response:
    return json_body_response(rendered())
