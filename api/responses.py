"""JSON in and out, with orjson. Timestamps go out as RFC 3339 UTC ("...Z")."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
from aiohttp import hdrs, web

from .problem import ApiError

__all__ = [
    "BODY_TIMEOUT",
    "MAX_BODY_BYTES",
    "SERVER_OPTIONS",
    "dumps",
    "json_body_response",
    "json_response",
    "read_any_object",
    "read_any_object_now",
    "read_large_object",
    "read_object",
    "read_object_now",
]

#: Larger bodies are refused with 413 before they are parsed.
MAX_BODY_BYTES = 64 * 1024

_DUMPS_OPTIONS = orjson.OPT_UTC_Z | orjson.OPT_NAIVE_UTC


def dumps(data: Any) -> bytes:
    """``data`` as JSON, the way every answer is written."""
    return orjson.dumps(data, option=_DUMPS_OPTIONS)


#: Every answer's ``Server`` header: aiohttp's default names its and Python's versions.
SERVER = {hdrs.SERVER: "model-registry"}


def json_response(data: Any, *, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(
        body=orjson.dumps(data, option=_DUMPS_OPTIONS),
        status=status,
        headers=SERVER if headers is None else {**SERVER, **headers},
        content_type="application/json",
    )


def json_body_response(
    body: bytes, *, status: int = 200, headers: dict[str, str] | None = None
) -> web.Response:
    """An answer whose JSON is already written (see ``dumps``)."""
    return web.Response(
        body=body,
        status=status,
        headers=SERVER if headers is None else {**SERVER, **headers},
        content_type="application/json",
    )


def _is_json(content_type: str) -> bool:
    return content_type == "application/json" or content_type.endswith("+json")


async def read_object(request: web.Request) -> dict[str, Any]:
    """The request's JSON object body; 415, 400 or 422 (via ``ApiError``) otherwise.

    Reading enforces the application's body-size limit (413).
    """
    data = read_object_now(request)
    return _object(await _read_slowly(request)) if data is None else data


def _json_only(request: web.Request) -> None:
    """415 unless the body is JSON, sent uncompressed."""
    # The exact header every client sends is recognised without parsing it.
    if request.headers.get("Content-Type") != "application/json" and not _is_json(request.content_type):
        raise ApiError(
            415,
            "unsupported_media_type",
            f"the body must be JSON sent with Content-Type: application/json, not {request.content_type!r}",
        )
    if hdrs.CONTENT_ENCODING in request.headers:
        _refuse_encoded(request)


async def read_large_object(request: web.Request, limit: int) -> dict[str, Any]:
    """``read_object`` for the one route whose bodies may be larger than
    ``MAX_BODY_BYTES`` (a batch of heartbeats): up to ``limit`` bytes, 413
    past it (before reading, when ``Content-Length`` says so), within the body
    timeout."""
    _json_only(request)
    length = request.content_length
    if length is not None and length > limit:
        raise web.HTTPRequestEntityTooLarge(limit, length)
    content = request.content
    if content.is_eof():
        body = content.read_nowait()
    else:
        body = await _read_up_to(request, limit)
    if len(body) > limit:
        raise web.HTTPRequestEntityTooLarge(limit, len(body))
    return _object(body)


async def _read_up_to(request: web.Request, limit: int) -> bytes:
    timeout = request.app.get(BODY_TIMEOUT, 30.0)
    parts, size = [], 0
    try:
        async with asyncio.timeout(timeout):
            while chunk := await request.content.readany():
                size += len(chunk)
                if size > limit:
                    raise web.HTTPRequestEntityTooLarge(limit, size)
                parts.append(chunk)
    except TimeoutError:
        raise ApiError(
            408,
            "request_timeout",
            f"the request body did not arrive within {timeout:g} s; send it at once",
            headers={"Connection": "close"},
        ) from None
    return b"".join(parts)


def read_object_now(request: web.Request) -> dict[str, Any] | None:
    """``read_object`` without waiting: the body's object when the whole body
    has arrived (a small one comes with its headers), ``None`` when it must be
    awaited with ``read_object``. Refuses bad bodies as ``read_object`` does."""
    _json_only(request)
    content = request.content
    if not content.is_eof():
        return None
    body = content.read_nowait()  # at once, rather than through read()'s loop
    if len(body) > MAX_BODY_BYTES:
        raise web.HTTPRequestEntityTooLarge(MAX_BODY_BYTES, len(body))
    return _object(body)


async def read_any_object(request: web.Request) -> dict[str, Any]:
    """The request's JSON object body, whatever its Content-Type says (as
    FastChat's controller reads bodies); 400 or 422 otherwise, 413 when too large."""
    data = read_any_object_now(request)
    return _object(await _read_slowly(request)) if data is None else data


def read_any_object_now(request: web.Request) -> dict[str, Any] | None:
    """``read_any_object`` without waiting, as ``read_object_now`` is to ``read_object``."""
    if hdrs.CONTENT_ENCODING in request.headers:
        _refuse_encoded(request)
    content = request.content
    if not content.is_eof():
        return None
    return _object(_whole(content.read_nowait()))


#: Seconds a body may take to arrive (``Settings.body_timeout``; set by ``create_app``).
BODY_TIMEOUT = web.AppKey("body_timeout", float)


async def _read_slowly(request: web.Request) -> bytes:
    """A body that did not come with its headers, within the body timeout (408 after it)."""
    limit = request.app.get(BODY_TIMEOUT, 30.0)
    try:
        async with asyncio.timeout(limit):
            return await request.read()
    except TimeoutError:
        raise ApiError(
            408,
            "request_timeout",
            f"the request body did not arrive within {limit:g} s; send it at once",
            headers={"Connection": "close"},
        ) from None


#: How the server is run (``web.AppRunner``'s options): bodies are never inflated
#: by aiohttp, so that a small compressed body cannot expand to hundreds of
#: megabytes on the event loop before the size limit is checked; compressed
#: bodies are refused instead (``_refuse_encoded``).
SERVER_OPTIONS = {"auto_decompress": False}


def _refuse_encoded(request: web.Request) -> None:
    """415 for a compressed body (any ``Content-Encoding`` but ``identity``)."""
    encoding = request.headers[hdrs.CONTENT_ENCODING].strip().lower()
    if encoding not in ("", "identity"):
        raise ApiError(
            415,
            "unsupported_media_type",
            f"compressed request bodies are not accepted (Content-Encoding: {encoding[:40]}); "
            "send the JSON uncompressed: bodies are small (at most "
            f"{MAX_BODY_BYTES // 1024} KiB)",
        )


def _whole(body: bytes) -> bytes:
    if len(body) > MAX_BODY_BYTES:
        raise web.HTTPRequestEntityTooLarge(MAX_BODY_BYTES, len(body))
    return body


def _object(body: bytes) -> dict[str, Any]:
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        if not body or body.isspace():
            raise ApiError(400, "malformed_json", "the request body is empty; send a JSON object") from None
        raise ApiError(400, "malformed_json", f"the request body is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        kind = {list: "an array", str: "a string", bool: "a boolean"}.get(type(data), "a number")
        if data is None:
            kind = "null"
        raise ApiError(
            422, "invalid_input", f"the request body must be a JSON object, not {kind}", field="body"
        )
    return data
