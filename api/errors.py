"""One place where failures become HTTP answers.

Every error body is ``{"error": "<code>", "detail": "<sentence>"}`` (plus
``"field"`` for invalid input). Views raise; they never catch and translate.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from aiohttp import web

from registry import InstanceNotFound, InvalidInstance, NoHealthyInstance, StorageUnavailable

from .keys import LIFECYCLE
from .problem import ApiError
from .responses import MAX_BODY_BYTES, json_response

__all__ = ["api_middleware", "error_response"]

log = logging.getLogger("api")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


# aiohttp's own refusals, by status: our code, and a detail when aiohttp's text is not one.
_HTTP_CODES: dict[int, tuple[str, str | None]] = {
    400: ("bad_request", None),
    404: ("not_found", "no such route; the API lives under /api/v1 (see the README)"),
    405: ("method_not_allowed", None),
    413: ("body_too_large", None),
    415: ("unsupported_media_type", None),
}


def error_response(
    status: int, code: str, detail: str, *, headers: dict[str, str] | None = None, **extra: str
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


@web.middleware
async def api_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """The one middleware: turn requests away while draining, count those in
    flight (so shutdown can wait for them), and map every failure to its answer."""
    lifecycle = request.app[LIFECYCLE]
    try:
        if lifecycle.draining and request.path != "/health":
            raise ApiError(
                503,
                "shutting_down",
                "the registry is shutting down; retry against another replica or after restart",
                headers={"Retry-After": "1", "Connection": "close"},
            )
        lifecycle.started()
        try:
            return await handler(request)
        finally:
            lifecycle.finished()
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return _from_http_exception(request, exc)
    except ApiError as exc:
        extra = {"field": exc.field} if exc.field else {}
        return error_response(exc.status, exc.code, exc.detail, headers=exc.headers, **extra)
    except InvalidInstance as exc:
        return error_response(422, "invalid_input", str(exc), field=exc.field)
    except InstanceNotFound as exc:
        return error_response(404, "instance_not_found", str(exc))
    except NoHealthyInstance as exc:
        return error_response(404, "no_healthy_instance", str(exc))
    except StorageUnavailable as exc:
        log.warning("storage unavailable: %s", exc)
        retry = {"Retry-After": str(max(1, round(exc.retry_after)))}
        return error_response(503, "storage_unavailable", str(exc), headers=retry)
    except Exception:
        log.exception("unhandled error in %s %s", request.method, request.path)
        return error_response(500, "internal_error", "the registry hit an unexpected error; it was logged")
