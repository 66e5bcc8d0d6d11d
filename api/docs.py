"""``GET /docs``: Swagger UI's reference page for ``/openapi.json``, served whole by the registry.

The page, Swagger UI (vendored under ``static/swagger-ui``; its README.txt says which
version, from where, and how to update it) and the initializer (``static/swagger-ui-init.js``)
all come from the installed package: the page works with no internet, and its
Content-Security-Policy lets the browser load nothing from anywhere but the registry.
"""

from __future__ import annotations

import asyncio
import functools

from aiohttp import hdrs, web

from model_registry import Registry

from .assets import CONTENT_SECURITY_POLICY, HEADERS, load, respond
from .problem import ApiError

__all__ = ["ASSETS", "CONTENT_SECURITY_POLICY", "asset", "page"]

#: What ``/docs/assets/{name}`` serves: name -> (path under ``static/``, Content-Type). Nothing else.
ASSETS: dict[str, tuple[str, str]] = {
    "swagger-ui.css": ("swagger-ui/swagger-ui.css", "text/css"),
    "swagger-ui-bundle.js": ("swagger-ui/swagger-ui-bundle.js", "text/javascript"),
    "swagger-ui-init.js": ("swagger-ui-init.js", "text/javascript"),
}


#: The assets' URLs carry a digest of their content, so a browser may keep them for a year:
#: a registry with another Swagger UI names other URLs. The page itself is revalidated.
_ASSET_CACHE = "public, max-age=31536000, immutable"

_PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>model-registry API reference</title>
<link rel="icon" href="data:,">
<link rel="stylesheet" href="{css}">
<script defer src="{bundle}"></script>
<script defer src="{init}"></script>
</head>
<body>
<noscript>This page needs JavaScript; the document is <a href="openapi.json">openapi.json</a>.</noscript>
<div id="swagger-ui" data-url="openapi.json"></div>
</body>
</html>
"""


@functools.cache
def _page() -> bytes:
    # Relative URLs, resolved beside /docs: under a proxy's path prefix as well.
    def url(name: str) -> str:
        return f"docs/assets/{name}?v={load(ASSETS[name][0]).digest}"

    html = _PAGE.format(
        css=url("swagger-ui.css"), bundle=url("swagger-ui-bundle.js"), init=url("swagger-ui-init.js")
    )
    return html.encode()


async def page(request: web.Request, registry: Registry) -> web.Response:
    body = await asyncio.to_thread(_page)
    headers = {**HEADERS, "Content-Security-Policy": CONTENT_SECURITY_POLICY, hdrs.CACHE_CONTROL: "no-cache"}
    return web.Response(body=body, headers=headers, content_type="text/html", charset="utf-8")


async def asset(request: web.Request, registry: Registry) -> web.Response:
    name = request.match_info["name"]
    if name not in ASSETS:
        raise ApiError(
            404, "not_found", f"no asset {name[:60]!r}: the docs page's assets are {sorted(ASSETS)}"
        )
    return await respond(request, ASSETS[name][0], _ASSET_CACHE)
