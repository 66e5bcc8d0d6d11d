"""FastChat's controller API, at the root, as its workers and API servers call it.

FastChat's clients send bodies without always saying they are JSON, and ask
for lists with no body at all: these paths read a JSON body whatever the
Content-Type, and the listing paths read none. Bad bodies still get 422.
What each path means is in ``model_registry.fastchat``.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator

import aiohttp
import orjson
from aiohttp import web
from pydantic import ValidationError

from model_registry import Registry
from model_registry.auth import Action, Principal
from model_registry.fastchat import (
    HeartBeat,
    RegisterWorker,
    WorkerAddressQuery,
    WorkerStatus,
    worker_address,
)
from model_registry.validation import parse, problems_of

from .auth import in_scope
from .keys import CALLBACKS, FASTCHAT, SETTINGS
from .responses import (
    MAX_BODY_BYTES,
    json_body_response,
    json_response,
    read_any_object,
    read_any_object_now,
)

__all__ = [
    "callbacks_context",
    "connection_check",
    "get_worker_address",
    "list_language_models",
    "list_models",
    "list_multimodal_models",
    "receive_heart_beat",
    "refresh_all_workers",
    "register_worker",
    "worker_get_status",
]

log = logging.getLogger("api")


async def callbacks_context(app: web.Application) -> AsyncIterator[None]:
    """The HTTP client that asks workers for their status, open while the app runs."""
    timeout = aiohttp.ClientTimeout(total=app[SETTINGS].fastchat_status_timeout)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        app[CALLBACKS] = session
        yield


async def _ask_status(request: web.Request, worker_name: str) -> WorkerStatus | str:
    """``POST {worker_name}/worker_get_status``: the status, or why there is none.

    Bounded in time (``--fastchat-status-timeout``, in all) and size, and
    without following redirects: the URL comes from whoever registers.
    """
    try:
        url = worker_name.rstrip("/") + "/worker_get_status"
        async with request.app[CALLBACKS].post(url, allow_redirects=False) as answer:
            if answer.status != 200:
                return f"it answered {answer.status}"
            raw = bytearray()
            async for chunk in answer.content.iter_any():
                raw += chunk
                if len(raw) > MAX_BODY_BYTES:
                    return f"its answer is larger than {MAX_BODY_BYTES // 1024} KiB"
        return WorkerStatus.model_validate(orjson.loads(raw))
    except TimeoutError:
        return f"no answer within {request.app[SETTINGS].fastchat_status_timeout:g} s"
    except ValidationError as exc:
        return "its answer is not a worker status: " + "; ".join(f"{f}: {m}" for f, m in problems_of(exc))
    except orjson.JSONDecodeError:
        return "its answer is not JSON"
    except aiohttp.ClientError as exc:
        return f"it could not be reached ({type(exc).__name__})"
    except Exception as exc:  # whatever else a URL can make the HTTP client raise: not our failure
        log.warning("asking a FastChat worker for its status failed", exc_info=exc)
        return f"it could not be asked ({type(exc).__name__})"


def _no_body(request: web.Request) -> None:
    """These paths read no body; one too large to have been worth sending is refused."""
    if request.content_length is not None and request.content_length > MAX_BODY_BYTES:
        raise web.HTTPRequestEntityTooLarge(MAX_BODY_BYTES, request.content_length)


async def register_worker(request: web.Request, registry: Registry, caller: Principal | None) -> web.Response:
    body: RegisterWorker = parse(RegisterWorker, await read_any_object(request))
    worker_address(body.worker_name)  # 422 for a bad name, before any call to it
    status = body.worker_status
    if status is None:  # as FastChat's controller does: ask the worker
        asked = await _ask_status(request, body.worker_name)
        if isinstance(asked, str):
            log.warning(
                "FastChat worker not registered: it did not give its status",
                extra={"worker": body.worker_name, "reason": asked},
            )
            detail = f"{body.worker_name}/worker_get_status: {asked}; nothing was registered"
            return json_response({"registered": False, "models": [], "detail": detail})
        status = asked
    for name in status.model_names:
        in_scope(caller, name, Action.REGISTER)
    stored = await request.app[FASTCHAT].register(body, status)
    return json_response({"registered": True, "models": [r.model_name for r in stored]})


async def receive_heart_beat(
    request: web.Request, registry: Registry, caller: Principal | None
) -> web.Response:
    # As /api/v1/heartbeat: the common beat is recorded without awaiting anything.
    fastchat = request.app[FASTCHAT]
    body = read_any_object_now(request)
    if body is None:
        body = await read_any_object(request)
    allows = caller.allows if caller is not None and caller.scoped else None
    exist = fastchat.beat_now(body, allows)
    if exist is None:
        exist = await fastchat.beat(parse(HeartBeat, body), allows)
    return json_body_response(b'{"exist":true}' if exist else b'{"exist":false}')


async def list_models(request: web.Request, registry: Registry) -> web.Response:
    _no_body(request)
    return json_response({"models": await request.app[FASTCHAT].models()})


async def list_language_models(request: web.Request, registry: Registry) -> web.Response:
    _no_body(request)
    return json_response({"models": await request.app[FASTCHAT].models(multimodal=False)})


async def list_multimodal_models(request: web.Request, registry: Registry) -> web.Response:
    _no_body(request)
    return json_response({"models": await request.app[FASTCHAT].models(multimodal=True)})


async def refresh_all_workers(request: web.Request, registry: Registry) -> web.Response:
    """Answers at once. Which workers are live is known from their heartbeats;
    FastChat's controller calls every worker back here instead (one at a time,
    up to 5 s each, on every ``GET /v1/models``) and forgets those that miss."""
    _no_body(request)
    return json_body_response(b"null")


async def get_worker_address(request: web.Request, registry: Registry) -> web.Response:
    query: WorkerAddressQuery = parse(WorkerAddressQuery, await read_any_object(request))
    return json_response({"address": await request.app[FASTCHAT].address(query.model)})


async def worker_get_status(request: web.Request, registry: Registry) -> web.Response:
    return json_response(await request.app[FASTCHAT].status())


async def connection_check(request: web.Request, registry: Registry) -> web.Response:
    return json_body_response(b'"success"')
