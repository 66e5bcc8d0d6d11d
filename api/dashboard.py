"""The dashboard: its page at ``/``, its files at ``/ui/{name}``, and the browser's session.

The page and its scripts are files in ``static/ui`` (no build step), served from the
installed package: it works with no internet, under a policy that lets the browser load
and connect to nothing but the registry. It follows ``GET /api/v1/watch`` and acts
through the API like any client.

A browser signs in with a token (``POST /api/v1/session``) and is then known by an
HttpOnly, SameSite=Strict cookie holding it, so its script never sees the token after
the form; changes it makes carry the session's CSRF token (``api.auth``). A revoked or
expired token ends its sessions with it, on every replica.
"""

from __future__ import annotations

import asyncio
import functools
from importlib.resources import files
from typing import Any

from aiohttp import web

from model_registry import Registry
from model_registry.auth import Principal

from .assets import CONTENT_SECURITY_POLICY, content_type_of, respond
from .auth import CHALLENGE, SESSION_COOKIE, csrf_token
from .hosts import require_origin
from .keys import LIFECYCLE
from .problem import ApiError
from .responses import json_response, read_object

__all__ = ["CONTENT_SECURITY_POLICY", "asset", "files_served", "page", "session", "sign_in", "sign_out"]

#: The page and its files are revalidated (their ETag answers 304 when unchanged).
_REVALIDATE = "no-cache"
_UI = "ui"


@functools.cache
def files_served() -> frozenset[str]:
    """The names ``/ui/{name}`` serves: the files of ``static/ui`` of a type it serves."""
    folder = files(__package__).joinpath("static", _UI)
    if not folder.is_dir():
        return frozenset()
    return frozenset(
        entry.name for entry in folder.iterdir() if entry.is_file() and content_type_of(entry.name)
    )


async def page(request: web.Request, registry: Registry) -> web.Response:
    if "index.html" not in await asyncio.to_thread(files_served):
        raise ApiError(404, "not_found", "this build has no dashboard (api/static/ui is missing)")
    headers = {"Content-Security-Policy": CONTENT_SECURITY_POLICY}
    return await respond(request, f"{_UI}/index.html", _REVALIDATE, headers)


async def asset(request: web.Request, registry: Registry) -> web.Response:
    name = request.match_info["name"]
    served = await asyncio.to_thread(files_served)
    if name not in served or name == "index.html":
        raise ApiError(404, "not_found", f"no dashboard file {name[:60]!r}; the dashboard is at /")
    return await respond(request, f"{_UI}/{name}", _REVALIDATE)


def _answer(principal: Principal | None, secret: str | None, auth: bool) -> dict[str, Any]:
    return {
        "auth": auth,
        "role": None if principal is None else principal.role.value,
        "name": None if principal is None else principal.name,
        "csrf": None if secret is None else csrf_token(secret),
    }


async def session(request: web.Request, registry: Registry) -> web.Response:
    """Who the browser is signed in as: ``auth`` false when the registry needs no token."""
    auth = request.app[LIFECYCLE].auth
    if auth is None:
        return json_response(_answer(None, None, auth=False))
    found = auth.session_of(request)
    if found is None:
        return json_response(_answer(None, None, auth=True))
    return json_response(_answer(found[0], found[1], auth=True))


async def sign_in(request: web.Request, registry: Registry) -> web.Response:
    """``{"token": "..."}``: a session cookie for the browser (HttpOnly, SameSite=Strict)."""
    lifecycle = request.app[LIFECYCLE]
    require_origin(lifecycle.hosts, request, "sign in to this registry")
    body = await read_object(request)
    token = body.get("token")
    if not isinstance(token, str) or not 1 <= len(token) <= 1024:
        raise ApiError(422, "invalid_field", "token must be the token's secret, a string", field="token")
    auth = lifecycle.auth
    if auth is None:
        return json_response(_answer(None, None, auth=False))
    principal = auth.sign_in(request, token)
    if principal is None:
        raise ApiError(401, "unauthorized", "the token is unknown, revoked or expired", headers=CHALLENGE)
    response = json_response(_answer(principal, token, auth=True))
    response.set_cookie(
        SESSION_COOKIE, token, path="/", httponly=True, samesite="Strict", secure=request.secure
    )
    return response


async def sign_out(request: web.Request, registry: Registry) -> web.Response:
    """Forget the browser's session cookie (the token itself stays valid: revoke it for that)."""
    auth = request.app[LIFECYCLE].auth
    response = json_response(_answer(None, None, auth=auth is not None))
    response.del_cookie(SESSION_COOKIE, path="/", httponly=True, samesite="Strict", secure=request.secure)
    return response
