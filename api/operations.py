"""What each route takes and answers, for ``/openapi.json``: what the route table
(``api.routes.ROUTES``) cannot say of a route. One entry per route, keyed like the table;
a test holds the two equal, both ways.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from model_registry import validation
from model_registry.auth import NAME
from model_registry.selection import DEFAULT_STRATEGY, STRATEGIES

from . import params
from .schemas import identity_rules, plain, ref, strings
from .views import INDEX_HEADER

__all__ = ["JSON", "OPERATIONS", "Operation"]

JSON = "application/json"


@dataclass(frozen=True)
class Operation:
    """What the route table cannot say of a route: its answers, its input and its own refusals."""

    summary: str
    tag: str
    #: Status -> (description, schema of the JSON body, ``None`` for no body); ``answer_types``
    #: for other media types.
    answers: dict[int, tuple[str, dict[str, Any] | None]]
    answer_types: tuple[str, ...] = (JSON,)
    #: The request body's schema, and how it is read: ``json`` (``read_object``: 415 unless
    #: JSON), ``any`` (``read_any_object``: JSON whatever the Content-Type, FastChat's way),
    #: ``ignored`` (no body is read; one over the size limit is refused).
    body: dict[str, Any] | None = None
    reads: str = ""
    parameters: tuple[dict[str, Any], ...] = ()
    #: Error codes of this route's own, by status (the common ones are added by ``_errors``).
    refusals: dict[int, tuple[str, ...]] = field(default_factory=dict)
    storage: bool = True  # reaches storage: 503 storage_unavailable when it cannot
    headers: dict[int, dict[str, Any]] = field(default_factory=dict)
    links: dict[int, dict[str, Any]] = field(default_factory=dict)
    description: str = ""
    websocket: bool = False  # answers an upgrade with 101


_NOT_MODIFIED = ("not modified since the ETag sent in If-None-Match", None)
_NULLABLE_TEXT = {"type": ["string", "null"]}
_SESSION = {
    "type": "object",
    "properties": {
        "auth": {"type": "boolean", "description": "whether this registry needs a token"},
        "role": {"type": ["string", "null"], "enum": ["worker", "router", "operator", "admin", None]},
        "name": _NULLABLE_TEXT,
        "csrf": _NULLABLE_TEXT,
    },
    "required": ["auth", "role", "name", "csrf"],
}


def _query(name: str, schema: dict[str, Any], description: str, *, required: bool = False) -> dict[str, Any]:
    return {"name": name, "in": "query", "required": required, "schema": schema, "description": description}


def _spellings(words: Iterable[str], *, dashes: bool = False) -> dict[str, Any]:
    """A string that is one of ``words`` in any case, with spaces around it (as read:
    ``str.strip().lower()``), and with ``dashes``, ``-`` for ``_``."""

    def letter(c: str) -> str:
        if c.isalpha():
            return f"[{c.lower()}{c.upper()}]"
        return "[_-]" if dashes and c == "_" else re.escape(c)

    alternatives = "|".join("".join(map(letter, word)) for word in words)
    return {"type": "string", "pattern": rf"^\s*(?:{alternatives})\s*$", "examples": list(words)}


_FLAG = _spellings(params._FLAGS)
_FLAG_TEXT = f" ({', '.join(params._FLAGS)}, in any case); absent means false"
_REVISION = {"type": "string", "pattern": r"^[0-9]+$"}
_KEY = validation._KEY_QUERY.json_schema()


def _key_parameters() -> tuple[dict[str, Any], ...]:
    """An instance's identity in the query string (``validation.key_from``)."""
    texts = {"model_name": "the model", "host": "the instance's host", "port": "the instance's port"}
    properties = plain(_KEY["properties"])
    identity_rules(properties)
    return tuple(
        _query(name, schema, texts.get(name, name), required=name in _KEY["required"])
        for name, schema in properties.items()
    )


_MODEL_NAME = _query(
    "model_name", {"type": "string", "minLength": 1}, "only this model's instances (URL-encode it)"
)
_LONG_POLL = (
    _query(
        "index",
        _REVISION,
        "long-poll: answer once something after this revision (an earlier answer's "
        f"{INDEX_HEADER}) changes, or when `wait` runs out",
    ),
    _query(
        "wait",
        {"type": "string", "pattern": params._DURATION.pattern},
        "how long a long-poll may wait: `500ms`, `30s`, `5m`, `1h` or seconds; at most the "
        "server's --max-wait (300 s by default, also the default wait); only with `index`",
    ),
)
_INDEX = {
    INDEX_HEADER: {"description": "the registry's revision, for `?index=`", "schema": {"type": "integer"}}
}
_INSTANCE = ("the instance as stored", ref("Instance"))
_TRUE = ("done (DB-GPT's client reads a bare `true`)", {"const": True})
_KEY_LINKS = {
    name: {
        "operationId": operation,
        "parameters": {p: f"$response.body#/{p}" for p in ("model_name", "host", "port")},
    }
    for name, operation in (("patch", "patch"), ("deregister", "deregister"))
}
_INSTANCE_LINKS = {
    **_KEY_LINKS,
    "list": {"operationId": "list_instances", "parameters": {"model_name": "$response.body#/model_name"}},
    "select": {"operationId": "select", "parameters": {"model_name": "$response.body#/model_name"}},
    "report": {
        "operationId": "report",
        "requestBody": {
            **{p: f"$response.body#/{p}" for p in ("model_name", "host", "port")},
            "ok": False,
            "status": 503,
        },
    },
    "heartbeat": {
        "operationId": "heartbeat",
        "requestBody": {p: f"$response.body#/{p}" for p in ("model_name", "host", "port")},
    },
}
_NAMES = ("the models", {"type": "object", "properties": {"models": strings()}, "required": ["models"]})


OPERATIONS: dict[tuple[str, str], Operation] = {
    ("POST", "/api/v1/instances"): Operation(
        "Register an instance, or update a registered one",
        "instances",
        {201: ("registered", ref("Instance")), 200: ("updated", ref("Instance"))},
        body=ref("Registration"),
        reads="json",
        refusals={429: ("model_instance_limit",), 507: ("instance_limit",)},
        links={201: _INSTANCE_LINKS, 200: _INSTANCE_LINKS},
    ),
    ("GET", "/api/v1/instances"): Operation(
        "List instances, of one model or all; long-poll with `index`",
        "instances",
        {200: ("the instances", ref("InstanceList"))},
        parameters=(
            _MODEL_NAME,
            _query("healthy_only", _FLAG, "only healthy ones" + _FLAG_TEXT),
            *_LONG_POLL,
        ),
        refusals={422: ("invalid_input",), 503: ("too_many_long_polls",)},
        headers={200: _INDEX},
    ),
    ("DELETE", "/api/v1/instances"): Operation(
        "Deregister an instance: mark it unhealthy and keep it, or delete it with `purge`",
        "instances",
        {200: ("the instance as it now is (as it was, when purged)", ref("Instance"))},
        parameters=(*_key_parameters(), _query("purge", _FLAG, "delete it" + _FLAG_TEXT)),
        refusals={404: ("instance_not_found",), 422: ("invalid_input",)},
    ),
    ("PATCH", "/api/v1/instances"): Operation(
        "Drain, weigh or label an instance (an operator's pin; `null` releases it)",
        "instances",
        {200: _INSTANCE},
        parameters=_key_parameters(),
        body=ref("Override"),
        reads="json",
        refusals={404: ("instance_not_found",)},
    ),
    ("POST", "/api/v1/reports"): Operation(
        "Report what a router saw of one request to an instance",
        "instances",
        {200: ("the instance, and its failures in the current window", ref("Reported"))},
        body=ref("Report"),
        reads="json",
        refusals={404: ("instance_not_found",)},
    ),
    ("POST", "/api/v1/heartbeat"): Operation(
        "Heartbeat; registers an unknown instance as the body describes it",
        "instances",
        {200: _INSTANCE},
        body=ref("Heartbeat"),
        reads="json",
        refusals={429: ("model_instance_limit",), 507: ("instance_limit",)},
        links={200: _INSTANCE_LINKS},
    ),
    ("POST", "/api/v1/heartbeats"): Operation(
        "Many heartbeats in one request (a worker with several models, an agent beating a list)",
        "instances",
        {
            200: (
                "a result per beat, in order: known, registered, or refused with why",
                ref("HeartbeatResults"),
            )
        },
        body=ref("Heartbeats"),
        reads="json",
        refusals={413: ("body_too_large",)},
    ),
    ("POST", "/api/v1/instances/batch"): Operation(
        "Register many instances at once (a bulk load), written together",
        "instances",
        {
            200: (
                "a result per instance, in order: created, updated, or refused with why",
                ref("RegistrationResults"),
            )
        },
        body=ref("Registrations"),
        reads="json",
        refusals={413: ("body_too_large",)},
    ),
    ("GET", "/api/v1/models"): Operation(
        "Every model with its counts; long-poll with `index`",
        "instances",
        {200: ("the models", ref("Models"))},
        parameters=_LONG_POLL,
        refusals={422: ("invalid_input",), 503: ("too_many_long_polls",)},
        headers={200: _INDEX},
    ),
    ("GET", "/api/v1/select"): Operation(
        "Pick one healthy, enabled instance of a model that is not cooling down",
        "instances",
        {200: ("the instance picked, and why", ref("Selected"))},
        parameters=(
            _query("model_name", {"type": "string", "minLength": 1}, "the model", required=True),
            _query(
                "strategy",
                {**_spellings(STRATEGIES, dashes=True), "default": DEFAULT_STRATEGY},
                f"how to pick: {', '.join(STRATEGIES)} (in any case, `-` for `_`)",
            ),
            _query(
                "fallback",
                {"enum": ["least_bad"]},
                "when every instance is cooling down: the one whose cooldown ends first, `degraded`",
            ),
        ),
        refusals={404: ("no_healthy_instance",), 422: ("invalid_input",), 503: ("all_cooling_down",)},
    ),
    ("GET", "/api/v1/watch"): Operation(
        "Watch changes over a WebSocket",
        "watch",
        {},
        parameters=(
            _query("model_name", {"type": "string", "minLength": 1}, "only this model's changes"),
            _query("since", _REVISION, "resume after this revision (the last one seen)"),
        ),
        refusals={400: ("websocket_required",), 403: ("origin_not_allowed",), 503: ("too_many_watchers",)},
        websocket=True,
        description=(
            "A WebSocket (`101 Switching Protocols`); a plain GET is answered 400. Messages are JSON "
            "text, each a `WatchMessage`: first a `snapshot` (or, with `since`, the events after it, "
            "or a `resync` when the history no longer reaches back), then one event per change, "
            "revisions strictly increasing. Bad parameters close the socket with 1008 (the reason "
            "names the parameter); a watcher too far behind is closed with 1013, and every watcher "
            "with 1001 when the registry shuts down."
        ),
    ),
    ("POST", "/api/v1/tokens"): Operation(
        "Create a token (its secret is in this answer and nowhere else, ever)",
        "tokens",
        {201: ("the token, with its secret", ref("CreatedToken"))},
        body=ref("NewToken"),
        reads="json",
        refusals={409: ("token_exists",)},
        links={
            201: {"revoke": {"operationId": "tokens_revoke", "parameters": {"name": "$response.body#/name"}}}
        },
    ),
    ("GET", "/api/v1/tokens"): Operation(
        "List the tokens (never a secret)",
        "tokens",
        {200: ("the tokens", ref("TokenList"))},
    ),
    ("DELETE", "/api/v1/tokens/{name}"): Operation(
        "Revoke a token",
        "tokens",
        {200: ("revoked", ref("Revoked"))},
        parameters=(
            {
                "name": "name",
                "in": "path",
                "required": True,
                "schema": {"type": "string", "pattern": NAME.pattern},
            },
        ),
        refusals={404: ("token_not_found",)},
    ),
    ("GET", "/health"): Operation(
        "Health: 200 while serving, 503 while shutting down or when storage cannot be reached",
        "service",
        {200: ("serving", ref("Health"))},
        refusals={503: ("shutting_down",)},
    ),
    ("GET", "/metrics"): Operation(
        "Metrics in the Prometheus text format",
        "service",
        {200: ("the metrics", {"type": "string"})},
        answer_types=("text/plain",),
        storage=False,
    ),
    ("GET", "/openapi.json"): Operation(
        "This document",
        "service",
        {200: ("the OpenAPI document", {"type": "object", "required": ["openapi", "info", "paths"]})},
        storage=False,
    ),
    ("GET", "/docs"): Operation(
        "A reference page for this document, served whole by the registry",
        "service",
        {200: ("the page", {"type": "string"})},
        answer_types=("text/html",),
        storage=False,
    ),
    ("GET", "/docs/assets/{name}"): Operation(
        "The docs page's scripts and styles",
        "service",
        {200: ("the asset (its bytes: no schema)", {}), 304: _NOT_MODIFIED},
        answer_types=("text/css", "text/javascript"),
        parameters=({"name": "name", "in": "path", "required": True, "schema": {"type": "string"}},),
        refusals={404: ("not_found",)},
        storage=False,
    ),
    ("GET", "/"): Operation(
        "The dashboard: a live page of the models and instances, served whole by the registry",
        "dashboard",
        {200: ("the page", {"type": "string"}), 304: _NOT_MODIFIED},
        answer_types=("text/html",),
        refusals={404: ("not_found",)},
        storage=False,
    ),
    ("GET", "/ui/{name}"): Operation(
        "The dashboard's scripts, styles and images",
        "dashboard",
        {200: ("the file (its bytes: no schema)", {}), 304: _NOT_MODIFIED},
        answer_types=("text/css", "text/javascript", "image/png", "image/svg+xml", "text/plain"),
        parameters=({"name": "name", "in": "path", "required": True, "schema": {"type": "string"}},),
        refusals={404: ("not_found",)},
        storage=False,
    ),
    ("GET", "/api/v1/session"): Operation(
        "Who the browser is signed in as (the session cookie), and its CSRF token",
        "dashboard",
        {200: ("the session; role null when not signed in", _SESSION)},
        storage=False,
    ),
    ("POST", "/api/v1/session"): Operation(
        "Sign in with a token: sets an HttpOnly, SameSite=Strict session cookie",
        "dashboard",
        {200: ("signed in (with auth off: auth false, no cookie)", _SESSION)},
        body={
            "type": "object",
            "properties": {"token": {"type": "string", "minLength": 1, "maxLength": 1024}},
            "required": ["token"],
        },
        reads="json",
        refusals={401: ("unauthorized",), 403: ("origin_not_allowed",), 422: ("invalid_field",)},
        storage=False,
        description="Changes made with the cookie must carry the answer's `csrf` as `X-CSRF-Token` "
        "(403 `csrf_required` otherwise).",
    ),
    ("DELETE", "/api/v1/session"): Operation(
        "Sign out: the session cookie is cleared (the token stays valid)",
        "dashboard",
        {200: ("signed out", _SESSION)},
        storage=False,
    ),
    ("GET", "/api/health"): Operation(
        "DB-GPT's health check",
        "dbgpt",
        {
            200: (
                "serving",
                {"type": "object", "properties": {"status": {"const": "ok"}}, "required": ["status"]},
            )
        },
        refusals={503: ("shutting_down",)},
    ),
    ("POST", "/api/controller/models"): Operation(
        "DB-GPT: register an instance",
        "dbgpt",
        {200: _TRUE},
        body=ref("Registration"),
        reads="json",
        refusals={429: ("model_instance_limit",), 507: ("instance_limit",)},
    ),
    ("GET", "/api/controller/models"): Operation(
        "DB-GPT: list instances (with `healthy_only`, only those selection may pick)",
        "dbgpt",
        {200: ("DB-GPT's ModelInstance objects", {"type": "array", "items": ref("DBGPTInstance")})},
        parameters=(
            {
                **_query(
                    "model_name", {"type": "string"}, "only this model's (empty or absent: every model)"
                ),
                "allowEmptyValue": True,
            },
            _query("healthy_only", _FLAG, "only available ones" + _FLAG_TEXT),
        ),
        refusals={422: ("invalid_input",)},
    ),
    ("DELETE", "/api/controller/models"): Operation(
        "DB-GPT: deregister an instance (true for an unknown one too)",
        "dbgpt",
        {200: _TRUE},
        parameters=(*_key_parameters(), _query("remove_from_registry", _FLAG, "delete it" + _FLAG_TEXT)),
        refusals={422: ("invalid_input",)},
    ),
    ("POST", "/api/controller/heartbeat"): Operation(
        "DB-GPT: heartbeat (registers an unknown instance)",
        "dbgpt",
        {200: _TRUE},
        body=ref("Heartbeat"),
        reads="json",
        refusals={429: ("model_instance_limit",), 507: ("instance_limit",)},
    ),
    ("POST", "/register_worker"): Operation(
        "FastChat: register a worker, one instance per model it serves",
        "fastchat",
        {200: ("whether it was registered, and its models", ref("WorkerRegistered"))},
        body=ref("RegisterWorker"),
        reads="any",
        refusals={429: ("model_instance_limit",), 507: ("instance_limit",)},
    ),
    ("POST", "/receive_heart_beat"): Operation(
        "FastChat: a worker's heartbeat",
        "fastchat",
        {200: ("whether the worker is known", ref("WorkerExists"))},
        body=ref("HeartBeat"),
        reads="any",
    ),
    ("POST", "/list_models"): Operation(
        "FastChat: the models that can be dispatched now", "fastchat", {200: _NAMES}, reads="ignored"
    ),
    ("POST", "/list_language_models"): Operation(
        "FastChat: the language models", "fastchat", {200: _NAMES}, reads="ignored"
    ),
    ("POST", "/list_multimodal_models"): Operation(
        "FastChat: the multimodal models", "fastchat", {200: _NAMES}, reads="ignored"
    ),
    ("POST", "/refresh_all_workers"): Operation(
        "FastChat: answers at once (liveness comes from heartbeats)",
        "fastchat",
        {200: ("nothing", {"type": "null"})},
        reads="ignored",
        storage=False,
    ),
    ("POST", "/get_worker_address"): Operation(
        'FastChat: a worker for a model, by the dispatch method (`""` when there is none)',
        "fastchat",
        {200: ("the worker's URL", ref("WorkerAddress"))},
        body=ref("WorkerAddressQuery"),
        reads="any",
    ),
    ("POST", "/worker_get_status"): Operation(
        "FastChat: the registry as one worker (every model; speeds and queues summed)",
        "fastchat",
        {200: ("the status", ref("RegistryStatus"))},
    ),
    ("GET", "/test_connection"): Operation(
        "FastChat: a connection check",
        "fastchat",
        {200: ("success", {"const": "success"})},
        storage=False,
    ),
}
