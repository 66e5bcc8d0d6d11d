"""Files the registry serves from its own package (``api/static``): the docs page's
Swagger UI and the dashboard. Read and compressed once per process, off the event
loop, and shared by every application in it, as the package's code is."""

from __future__ import annotations

import asyncio
import functools
import gzip
import hashlib
from dataclasses import dataclass
from importlib.resources import files

from aiohttp import hdrs, web

from .responses import SERVER

__all__ = ["CONTENT_SECURITY_POLICY", "HEADERS", "Asset", "load", "respond"]

#: The pages' policy: scripts, styles, images and connections from the registry alone;
#: no inline script or style, no ``eval``. Images may be ``data:`` URLs (Swagger UI's
#: icons). ``'self'`` covers a page's WebSocket to its own host in CSP Level 3 browsers.
CONTENT_SECURITY_POLICY = "; ".join(
    [
        "default-src 'none'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self' data:",
        "connect-src 'self'",
        "base-uri 'none'",
        "form-action 'self'",
        "frame-ancestors 'none'",
    ]
)
#: Every packaged file's answer carries these.
HEADERS = {**SERVER, "X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer"}

_TYPES = {
    ".css": "text/css",
    ".html": "text/html",
    ".js": "text/javascript",
    ".json": "application/json",
    ".png": "image/png",
    ".svg": "image/svg+xml",
    ".txt": "text/plain",
}


@dataclass(frozen=True, slots=True)
class Asset:
    body: bytes
    gzipped: bytes
    content_type: str
    charset: str | None
    #: A digest of the content: the ETag, and the ``?v=`` of URLs that may be kept a year.
    digest: str


def content_type_of(path: str) -> str | None:
    """The Content-Type a packaged file is served with; ``None`` for one never served."""
    dot = path.rfind(".")
    return None if dot < 0 else _TYPES.get(path[dot:])


@functools.cache
def load(path: str, content_type: str | None = None) -> Asset:
    """``static/<path>``; its type from its suffix unless given. Blocking: call it in a thread."""
    kind = content_type or content_type_of(path)
    if kind is None:
        raise ValueError(f"{path}: no Content-Type for its suffix")
    body = files(__package__).joinpath("static", *path.split("/")).read_bytes()
    text = kind.startswith("text/") or kind in ("application/json", "image/svg+xml")
    return Asset(
        body=body,
        gzipped=gzip.compress(body, mtime=0),
        content_type=kind,
        charset="utf-8" if text else None,
        digest=hashlib.sha256(body).hexdigest()[:16],
    )


def _accepts_gzip(request: web.Request) -> bool:
    for coding in request.headers.get(hdrs.ACCEPT_ENCODING, "").split(","):
        name, _, params = coding.partition(";")
        if name.strip().lower() == "gzip":
            q = params.strip().lower().removeprefix("q=") or "1"
            try:
                return float(q) > 0  # q=0 refuses it
            except ValueError:
                return False
    return False


async def respond(
    request: web.Request, path: str, cache: str, headers: dict[str, str] | None = None
) -> web.Response:
    """``static/<path>``, gzipped for a client that takes it, with an ETag (304 when it matches)."""
    found = await asyncio.to_thread(load, path)
    etag = f'"{found.digest}"'
    answer = {**HEADERS, **(headers or {}), hdrs.CACHE_CONTROL: cache, hdrs.VARY: hdrs.ACCEPT_ENCODING}
    answer[hdrs.ETAG] = etag
    if etag in request.headers.get(hdrs.IF_NONE_MATCH, ""):
        return web.Response(status=304, headers=answer)
    body = found.body
    if _accepts_gzip(request):
        body, answer[hdrs.CONTENT_ENCODING] = found.gzipped, "gzip"
    return web.Response(body=body, headers=answer, content_type=found.content_type, charset=found.charset)
