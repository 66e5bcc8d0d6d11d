"""Who may do what: roles, the actions each grants, tokens and their scopes.

This module holds the one permission table (``GRANTS``); the API's route table
names the action each route needs (``api.routes``), and a test walks it.

    worker     register, heartbeat, deregister: only model names its scope matches
    router     read (list, models, select, watch, long-poll) and report
    operator   router's, plus patch (drain, weight, labels) and deregister or purge any instance
    admin      everything, tokens included

A token is 256 random bits, shown once when created; storage keeps only its
SHA-256 digest (the secret is random, so a fast digest is as safe as a slow
one, and a lookup costs one hash). ``Tokens`` holds the table in memory, by
digest; replicas sharing a database read it again every second, so a revoked
or expired token is refused by all of them within two.
"""

from __future__ import annotations

import asyncio
import fnmatch
import hashlib
import logging
import re
import secrets
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum

from .clock import Clock
from .errors import RegistryClientError
from .storage import Storage, StorageUnavailable, StoredToken
from .storage.tasks import cancelled

__all__ = [
    "ACTIONS",
    "GRANTS",
    "Action",
    "Forbidden",
    "Principal",
    "Role",
    "Tokens",
    "digest_of",
    "new_secret",
    "parse_expiry",
]

log = logging.getLogger("registry")


class Role(StrEnum):
    WORKER = "worker"
    ROUTER = "router"
    OPERATOR = "operator"
    ADMIN = "admin"


class Action(StrEnum):
    PUBLIC = "public"  # anyone: /health
    REGISTER = "register"
    HEARTBEAT = "heartbeat"
    DEREGISTER = "deregister"
    READ = "read"
    REPORT = "report"
    PATCH = "patch"
    TOKENS = "tokens"


ACTIONS = tuple(Action)

#: The permission table: what each role may do.
GRANTS: dict[Role, frozenset[Action]] = {
    Role.WORKER: frozenset({Action.REGISTER, Action.HEARTBEAT, Action.DEREGISTER}),
    Role.ROUTER: frozenset({Action.READ, Action.REPORT}),
    Role.OPERATOR: frozenset({Action.READ, Action.REPORT, Action.PATCH, Action.DEREGISTER}),
    Role.ADMIN: frozenset(ACTIONS),
}

#: The actions a worker's scope limits (to the model names it matches).
SCOPED = frozenset({Action.REGISTER, Action.HEARTBEAT, Action.DEREGISTER})


class Forbidden(RegistryClientError):
    """Authenticated, but not allowed: names what is missing (403)."""

    def __init__(self, detail: str) -> None:
        super().__init__(403, "forbidden", detail)


@dataclass(eq=False)
class Principal:
    """Who a request comes from: a token's name, role and scope."""

    name: str
    role: Role
    models: tuple[str, ...] | None = None
    expires_at: datetime | None = None
    _allowed: dict[str, bool] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        #: What the role grants (``GRANTS``), at hand for every request.
        self.actions = GRANTS[self.role]
        #: Whether a scope limits this principal's actions (a worker token with models).
        self.scoped = self.models is not None and self.role is Role.WORKER

    def may(self, action: Action) -> bool:
        return action in GRANTS[self.role]

    def require(self, action: Action) -> None:
        if action not in GRANTS[self.role]:
            needed = sorted(r.value for r, actions in GRANTS.items() if action in actions)
            raise Forbidden(
                f"token {self.name!r} has role {self.role.value}; "
                f"{action.value} needs one of: {', '.join(needed)}"
            )

    def allows(self, model_name: str) -> bool:
        """Whether the scope covers ``model_name`` (always, without a scope)."""
        if not self.scoped:
            return True
        allowed = self._allowed.get(model_name)
        if allowed is None:
            allowed = any(fnmatch.fnmatchcase(model_name, p) for p in self.models or ())
            if len(self._allowed) < 4096:  # a worker acts on a few names: remember them
                self._allowed[model_name] = allowed
        return allowed

    def require_model(self, model_name: str, action: Action) -> None:
        """Refuse a model outside a worker's scope (only workers' actions are scoped)."""
        if self._allowed.get(model_name) is True:  # the common case: a name seen before
            return
        if action in SCOPED and not self.allows(model_name):
            raise Forbidden(
                f"token {self.name!r} may only {action.value} models matching "
                f"{', '.join(self.models or ())}, not {model_name!r}"
            )

    def expired(self, now: datetime) -> bool:
        return self.expires_at is not None and now >= self.expires_at


def new_secret() -> str:
    """A new token: 256 random bits, URL-safe (so it can stand in a URL's password)."""
    return "mrt_" + secrets.token_urlsafe(32)


def digest_of(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


_EXPIRY = re.compile(r"^\s*(\d+)\s*([smhdw])\s*$")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_expiry(text: str) -> timedelta:
    """``30d``, ``12h``, ``90m``, ``3600s`` or ``2w`` as a duration; ``ValueError`` otherwise."""
    match = _EXPIRY.match(text)
    if match is None or int(match.group(1)) == 0:
        raise ValueError(f"expires: give a duration like 30d, 12h or 90m, got {text!r}")
    return timedelta(seconds=int(match.group(1)) * _UNIT_S[match.group(2)])


NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,127}$")

#: Seconds between reads of the token table by replicas sharing a database.
REFRESH_S = 1.0


class Tokens:
    """The token table, in memory by digest; the bootstrap admin token besides.

    ``authenticate`` is synchronous: the heartbeat path must not wait for it.
    """

    def __init__(self, storage: Storage, clock: Clock, *, bootstrap: str | None = None) -> None:
        self._storage = storage
        self._clock = clock
        self._by_digest: dict[str, Principal] = {}
        self._bootstrap = (
            {digest_of(bootstrap): Principal("bootstrap-admin", Role.ADMIN)} if bootstrap else {}
        )
        self._loaded: list[StoredToken] | None = None  # what storage held at the last load
        self._task: asyncio.Task[None] | None = None
        #: Bumped whenever the table changes (callers may cache by it).
        self.version = 0

    async def load(self) -> None:
        self._install(await self._storage.tokens())

    def _install(self, stored: list[StoredToken]) -> None:
        if self._loaded == stored:  # the replicas' refresh, nearly always: nothing changed
            return
        self._loaded = stored
        self._by_digest = {
            **self._bootstrap,
            **{t.digest: Principal(t.name, Role(t.role), t.models, t.expires_at) for t in stored},
        }
        self.version += 1

    def start(self) -> None:
        """Read the table again every second (for storage shared by replicas)."""
        self._task = asyncio.create_task(self._refresh_forever(), name="registry-tokens")

    async def stop(self) -> None:
        await cancelled([self._task])
        self._task = None

    async def _refresh_forever(self) -> None:
        while True:
            await asyncio.sleep(REFRESH_S)
            try:
                await self.load()
            except StorageUnavailable as exc:
                log.warning("could not read the tokens; keeping the last ones: %s", exc)

    def now(self) -> datetime:
        return self._clock.now()

    @property
    def empty(self) -> bool:
        return not self._by_digest

    def authenticate(self, secret: str) -> Principal | None:
        """The principal a secret belongs to, or ``None`` (unknown, revoked or expired)."""
        principal = self._by_digest.get(digest_of(secret))
        if principal is None or principal.expired(self._clock.now()):
            return None
        return principal

    def by_name(self, name: str) -> Principal | None:
        """A token by its name (a client certificate's subject stands for it: see the README)."""
        for principal in self._by_digest.values():
            if principal.name == name and not principal.expired(self._clock.now()):
                return principal
        return None

    async def create(
        self, name: str, role: Role, models: tuple[str, ...] | None, expires: timedelta | None
    ) -> tuple[str, StoredToken] | None:
        """A new token; ``None`` when the name is taken. Returns the secret, once."""
        secret = new_secret()
        now = self._clock.now()
        stored = StoredToken(
            name, digest_of(secret), role.value, models, now + expires if expires else None, now
        )
        if not await self._storage.add_token(stored):
            return None
        await self.load()
        return secret, stored

    async def revoke(self, name: str) -> StoredToken | None:
        removed = await self._storage.remove_token(name)
        await self.load()
        return removed

    async def listing(self) -> list[StoredToken]:
        return await self._storage.tokens()
