"""Authentication at the API's edge: who a request comes from, and whether
the route's action is theirs (``model_registry.auth`` holds the policy).

Credentials: ``Authorization: Bearer <token>``, or HTTP Basic with the token
as the password (any user name), so that a client configured with only an
address works with ``http://worker:<token>@registry:8000``; or, under mutual
TLS, a client certificate whose subject's common name is a token's name.
Never a query string: those end up in logs. A browser (the dashboard) signs in
once (``POST /api/v1/session``) and is then known by an HttpOnly, SameSite=Strict
cookie holding its token; a state-changing request so authenticated must also
carry ``X-CSRF-Token``, a digest of the token the sign-in answered with (a page
of another site cannot read it, and cannot send the header without CORS).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import logging

from aiohttp import hdrs, web

from model_registry.auth import Action, Principal, Role, Tokens

from .logs import Throttle
from .problem import ApiError

__all__ = [
    "CHALLENGE",
    "CSRF_HEADER",
    "PRINCIPAL",
    "SESSION_COOKIE",
    "Auth",
    "csrf_token",
    "in_scope",
    "principal_of",
]

log = logging.getLogger("api.auth")

#: Where the guard leaves the request's principal for the views (scope checks, audit).
PRINCIPAL = web.RequestKey("principal", Principal)
CHALLENGE = {"WWW-Authenticate": 'Bearer realm="model-registry"'}
#: Failed attempts are logged once per source per this many seconds, with a count.
FAILURE_LOG_WINDOW_S = 60.0
#: Enum members read on every request, bound once: on Python 3.11 reading a
#: member from its class goes through the enum metaclass's ``__getattr__`` hook
#: (about 75 ns, several times a request).
_PUBLIC, _WORKER = Action.PUBLIC, Role.WORKER
#: The dashboard's session: the cookie that holds its token, and the header its changes carry.
SESSION_COOKIE = "registry_session"
CSRF_HEADER = "X-CSRF-Token"
#: Methods that change nothing: a request by cookie needs no CSRF token for them.
_SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


def csrf_token(secret: str) -> str:
    """The CSRF token of a session whose cookie holds ``secret``: derived, so every
    replica knows it without sharing state, and useless without the session."""
    return hmac.new(secret.encode(), b"model-registry csrf", hashlib.sha256).hexdigest()


def principal_of(request: web.Request) -> Principal | None:
    """The authenticated caller, or ``None`` when authentication is off."""
    return request.get(PRINCIPAL)


def in_scope(caller: Principal | None, model_name: object, action: Action) -> None:
    """403 unless the caller's scope covers ``model_name`` (a worker token's globs).
    ``caller`` is ``None`` when authentication is off."""
    if caller is not None and caller.scoped and type(model_name) is str:
        caller.require_model(model_name, action)


class Auth:
    def __init__(self, tokens: Tokens) -> None:
        self.tokens = tokens
        self._seen: dict[str, Principal] = {}  # Authorization header -> principal, for this table version
        self._seen_version = -1
        self._failures = Throttle(FAILURE_LOG_WINDOW_S)  # one line per source per window

    def check(self, request: web.Request, action: Action) -> Principal | None:
        """The request's principal, allowed ``action``; raises 401 or 403."""
        if action is _PUBLIC:
            return None
        header = request.headers.get(hdrs.AUTHORIZATION)  # an istr: no case folding per request
        # The common request: a token seen before, that never expires, allowed the action.
        if header is not None and self._seen_version == self.tokens.version:
            seen = self._seen.get(header)
            if seen is not None and seen.expires_at is None and action in seen.actions:
                if seen.role is not _WORKER:  # for the audit log (workers' actions are not)
                    request[PRINCIPAL] = seen
                return seen
        principal = self._principal(request, header)
        if principal is None:
            self._failed(
                request, "no credentials" if header is None and not _peer_name(request) else "bad token"
            )
            if header is not None:
                detail = "the token is unknown, revoked or expired, or the Authorization header is malformed"
            elif SESSION_COOKIE in request.cookies:
                detail = "the session's token is unknown, revoked or expired: sign in again"
            else:
                detail = (
                    "this registry needs a token: send Authorization: Bearer <token> (or use it as the "
                    "password of the URL, http://user:<token>@host:port)"
                )
            raise ApiError(401, "unauthorized", detail, headers=CHALLENGE)
        if action not in principal.actions:
            principal.require(action)  # raises, naming what is missing
        if principal.role is not _WORKER:  # for the audit log (workers' actions are not audited)
            request[PRINCIPAL] = principal
        return principal

    def _principal(self, request: web.Request, header: str | None) -> Principal | None:
        tokens = self.tokens
        if header is None:
            session = request.cookies.get(SESSION_COOKIE)
            if session:
                return self._session(request, session)
            name = _peer_name(request)
            return None if name is None else tokens.by_name(name)
        if self._seen_version != tokens.version:
            self._seen.clear()
            self._seen_version = tokens.version
        principal = self._seen.get(header)
        if principal is not None:
            if principal.expires_at is not None and principal.expired(tokens.now()):
                return None
            return principal
        secret = _secret(header)
        principal = None if secret is None else tokens.authenticate(secret)
        if principal is not None and len(self._seen) < 10_000:
            self._seen[header] = principal
        return principal

    def _session(self, request: web.Request, secret: str) -> Principal | None:
        """The principal of a session cookie; a change must carry the session's CSRF token."""
        principal = self.tokens.authenticate(secret)
        if principal is not None and request.method not in _SAFE_METHODS:
            sent = request.headers.get(CSRF_HEADER, "")
            if not hmac.compare_digest(sent.encode(), csrf_token(secret).encode()):
                raise ApiError(
                    403,
                    "csrf_required",
                    f"a change made with the session cookie must carry the {CSRF_HEADER} header "
                    "that signing in answered with (GET /api/v1/session tells it again)",
                )
        return principal

    def sign_in(self, request: web.Request, secret: str) -> Principal | None:
        """The principal of a token a browser signs in with; a failure is logged as any other."""
        principal = self.tokens.authenticate(secret)
        if principal is None:
            self._failed(request, "bad token at sign-in")
        return principal

    def session_of(self, request: web.Request) -> tuple[Principal, str] | None:
        """The principal and secret of the request's session cookie, if it holds a live token."""
        secret = request.cookies.get(SESSION_COOKIE)
        principal = None if not secret else self.tokens.authenticate(secret)
        return None if principal is None or secret is None else (principal, secret)

    def _failed(self, request: web.Request, why: str) -> None:
        source = request.remote or "?"
        before = self._failures.admit(source)
        if before is None:
            return
        if before > 1:
            log.warning(
                "authentication failures",
                extra={"source": source, "count": before, "window_s": FAILURE_LOG_WINDOW_S},
            )
        log.warning("authentication failed", extra={"source": source, "reason": why, "path": request.path})


def _secret(header: str) -> str | None:
    scheme, _, value = header.strip().partition(" ")
    scheme = scheme.lower()
    if scheme == "bearer":
        return value.strip() or None
    if scheme == "basic":
        try:
            decoded = base64.b64decode(value.strip(), validate=True).decode()
        except (binascii.Error, UnicodeDecodeError):
            return None
        _, colon, password = decoded.partition(":")
        return password if colon and password else None
    return None


def _peer_name(request: web.Request) -> str | None:
    """The common name of a verified client certificate (mutual TLS), if any."""
    transport = request.transport
    if transport is None:
        return None
    cert = transport.get_extra_info("peercert")
    if not cert:
        return None
    for rdn in cert.get("subject", ()):
        for key, value in rdn:
            if key == "commonName":
                return value
    return None
