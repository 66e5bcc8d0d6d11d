"""DB-GPT's model controller API, under ``/api/controller``, and its ``/api/health``.

DB-GPT's ``ModelRegistryClient`` (and the worker managers built on it) talk
to these paths. Its client reads every write's answer as a bare ``true`` with
status 200, and builds ``ModelInstance(**item)`` from each listed object, so a
listing carries exactly DB-GPT's ten keys: one more would break it.
"""

from __future__ import annotations

import contextlib

from aiohttp import web

from model_registry import InstanceNotFound, ModelInstance, Registry
from model_registry.auth import Action, Principal
from model_registry.compat import DBGPT
from model_registry.dbgpt import controller_listing
from model_registry.validation import key_from

from .audit import audit_deregistration
from .auth import in_scope
from .keys import ADVICE, LIFECYCLE
from .params import query_flag
from .problem import ApiError
from .responses import dumps, json_body_response, read_object, read_object_now

__all__ = ["deregister", "health", "heartbeat", "list_instances", "register"]

#: Read on every beat: bound once (see ``api.auth._PUBLIC``).
_HEARTBEAT = Action.HEARTBEAT

#: DB-GPT's ``ModelInstance`` fields, in its order (``remove_from_registry`` is always false here).
FIELDS = (
    "model_name",
    "host",
    "port",
    "weight",
    "check_healthy",
    "healthy",
    "enabled",
    "prompt_template",
    "last_heartbeat",
)

_TRUE = b"true"


def _done() -> web.Response:
    return json_body_response(_TRUE)


async def register(request: web.Request, registry: Registry, caller: Principal | None) -> web.Response:
    body = await read_object(request)
    in_scope(caller, body.get("model_name"), Action.REGISTER)
    await registry.register(body)
    request.app[ADVICE].registered(DBGPT)
    return _done()


async def heartbeat(request: web.Request, registry: Registry, caller: Principal | None) -> web.Response:
    # As /api/v1/heartbeat: the common beat is recorded without awaiting; an
    # unknown instance is registered by its beat, as DB-GPT's controller does.
    body = read_object_now(request)
    if body is None:
        body = await read_object(request)
    if caller is not None:
        in_scope(caller, body.get("model_name"), _HEARTBEAT)
    if registry.beat(body) is None:
        await registry.heartbeat(body)
        request.app[ADVICE].registered(DBGPT)
    return _done()


async def deregister(request: web.Request, registry: Registry, caller: Principal | None) -> web.Response:
    key = key_from(request.query)
    in_scope(caller, key.model_name, Action.DEREGISTER)
    purge = query_flag(request, "remove_from_registry")
    # DB-GPT's controller answers true for an unknown instance; its workers expect it.
    with contextlib.suppress(InstanceNotFound):
        await registry.deregister(key, purge=purge)
        audit_deregistration(request, key, purge)
    return _done()


async def list_instances(request: web.Request, registry: Registry) -> web.Response:
    found = await controller_listing(
        registry, request.query.get("model_name"), query_flag(request, "healthy_only")
    )
    return json_body_response(dumps([_as_dbgpt(r) for r in found]))


def _as_dbgpt(record: ModelInstance) -> dict[str, object]:
    fields = record.__dict__
    item = {name: fields[name] for name in FIELDS}
    item["remove_from_registry"] = False
    return item


async def health(request: web.Request, registry: Registry) -> web.Response:
    """DB-GPT's clients check ``/api/health`` to choose among controller URLs."""
    if request.app[LIFECYCLE].draining:
        raise ApiError(503, "shutting_down", "the registry is shutting down", headers={"Retry-After": "1"})
    await registry.health()  # 503 when storage is away: send DB-GPT to another replica
    return json_body_response(b'{"status":"ok"}')
