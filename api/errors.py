"""One place where failures become HTTP answers.

Every error body is ``{"error": "<code>", "detail": "<sentence>"}`` (plus
``"field"`` for invalid input). Views raise; they never catch and translate.
"""

from __future__ import annotations

import logging
import math
import time
from bisect import bisect_left as _bucket
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import hdrs, web

from model_registry import AllCoolingDown, RegistryClientError, StorageUnavailable
from model_registry.auth import SCOPED, Action

from .keys import Lifecycle
from .metrics import BUCKETS, RouteTimes
from .problem import ApiError
from .responses import MAX_BODY_BYTES, json_response

__all__ = ["error_response", "failure_response", "guard", "unrouted"]

log = logging.getLogger("api")

_clock = time.perf_counter
#: The first bucket's bound: most requests fall in it.
_FASTEST = BUCKETS[0]

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
#: A view: called with the request and the running registry; a view of a scoped
#: action (``model_registry.auth.SCOPED``) also with the caller (``None`` when
#: authentication is off), to check each model it acts on against the scope.
View = Callable[..., Awaitable[web.StreamResponse]]


# aiohttp's own refusals, by status: our code, and a detail when aiohttp's text is not one.
_HTTP_CODES: dict[int, tuple[str, str | None]] = {
    400: ("bad_request", None),
    404: ("not_found", "no such route; the API lives under /api/v1 (see the README)"),
    405: ("method_not_allowed", None),
    413: ("body_too_large", None),
    415: ("unsupported_media_type", None),
}


def error_response(
    status: int, code: str, detail: str, *, headers: dict[str, str] | None = None, **extra: Any
) -> web.Response:
    return json_response({"error": code, "detail": detail, **extra}, status=status, headers=headers)


def _from_http_exception(request: web.Request, exc: web.HTTPException) -> web.Response:
    code, detail = _HTTP_CODES.get(exc.status, (exc.reason.lower().replace(" ", "_"), None))
    headers = {}
    if isinstance(exc, web.HTTPMethodNotAllowed):
        allowed = ", ".join(sorted(exc.allowed_methods))
        headers["Allow"] = allowed
        detail = f"{request.method} is not allowed on {request.path}; use {allowed}"
    elif isinstance(exc, web.HTTPRequestEntityTooLarge):
        detail = f"the request body is larger than the {MAX_BODY_BYTES // 1024} KiB limit"
    return error_response(exc.status, code, detail or exc.text or exc.reason, headers=headers)


def guard(
    view: View,
    lifecycle: Lifecycle,
    action: Action,
    *,
    times: RouteTimes,
    while_draining: bool = False,
) -> Handler:
    """``view`` as an aiohttp handler, wrapped in the API's policy: turn
    requests for a ``Host`` it does not go by (``api.hosts``) and, while
    draining, every request (unless ``while_draining``), authenticate
    the caller and check that ``action`` is theirs (when authentication is
    on), count the requests in flight (so shutdown can wait for them), hand
    the view the running registry, map every failure to its answer, and add
    the time it took to ``times`` (by status class, for ``/metrics``).

    A wrapper per route rather than an aiohttp middleware: aiohttp builds a
    chain of partials for every request that passes through middlewares,
    which costs the hot paths (heartbeats) a measurable share of their time.
    """

    scoped = action in SCOPED
    hosts = lifecycle.hosts
    counts, sums = times.counts, times.sums

    async def guarded(request: web.Request) -> web.StreamResponse:
        started = _clock()
        try:
            if hosts is not None and not hosts.allows(request.headers.get(hdrs.HOST)):
                raise _host_not_allowed(request)
            if lifecycle.draining and not while_draining:
                raise ApiError(
                    503,
                    "shutting_down",
                    "the registry is shutting down; retry against another replica or after restart",
                    headers={"Retry-After": "1", "Connection": "close"},
                )
            auth = lifecycle.auth
            caller = None if auth is None else auth.check(request, action)
            lifecycle.in_flight += 1
            try:
                if scoped:
                    response = await view(request, lifecycle.registry, caller)
                else:
                    response = await view(request, lifecycle.registry)
            finally:
                lifecycle.in_flight -= 1
        except Exception as exc:
            response = failure_response(request, exc)
        # Into ``times`` in place, without a call: every request passes here,
        # most of them faster than the first bucket (no search for those).
        seconds = _clock() - started
        klass = response.status // 100
        counts[klass][0 if seconds <= _FASTEST else _bucket(BUCKETS, seconds)] += 1
        sums[klass] += seconds
        return response

    guarded.__name__ = guarded.__qualname__ = view.__name__
    guarded.__doc__ = view.__doc__
    return guarded


def _host_not_allowed(request: web.Request) -> ApiError:
    host = request.headers.get(hdrs.HOST, "")[:100]
    return ApiError(
        403,
        "host_not_allowed",
        f"this registry does not answer to the Host {host!r}: use its address or localhost, "
        "or start it with --allowed-hosts naming this host",
    )


def failure_response(request: web.Request, exc: Exception) -> web.StreamResponse:
    """The answer to a request that failed with ``exc``."""
    if isinstance(exc, web.HTTPException):
        if exc.status < 400:
            raise exc
        return _from_http_exception(request, exc)
    if isinstance(exc, ApiError):
        extra = {"field": exc.field} if exc.field else {}
        return error_response(exc.status, exc.code, exc.detail, headers=exc.headers, **extra)
    if isinstance(exc, AllCoolingDown):
        retry = {"Retry-After": str(max(1, math.ceil(exc.retry_after)))}
        return error_response(
            exc.status, exc.code, exc.detail, headers=retry, retry_after=round(exc.retry_after, 3)
        )
    if isinstance(exc, RegistryClientError):  # InstanceNotFound, NoHealthyInstance, InvalidInstance
        extra = {"field": exc.field} if exc.field else {}
        return error_response(exc.status, exc.code, exc.detail, **extra)
    if isinstance(exc, StorageUnavailable):
        log.warning("storage unavailable: %s", exc, extra={"driver": exc.driver} if exc.driver else None)
        retry = {"Retry-After": str(max(1, round(exc.retry_after)))}
        return error_response(503, "storage_unavailable", str(exc), headers=retry)
    log.error("unhandled error in %s %s", request.method, request.path, exc_info=exc)
    return error_response(500, "internal_error", "the registry hit an unexpected error; it was logged")


def unrouted(allowed: dict[str, set[str]]) -> Handler:
    """The last route, matching every path: 405 (with ``Allow``) for a known
    path asked with another method, 404 for any other path. ``allowed`` maps
    each routed path to its methods."""

    async def no_route(request: web.Request) -> web.StreamResponse:
        methods = allowed.get(request.path)
        if methods:
            exc: web.HTTPException = web.HTTPMethodNotAllowed(request.method, methods)
        else:
            exc = web.HTTPNotFound()
        return _from_http_exception(request, exc)

    return no_route
