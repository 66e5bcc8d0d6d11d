"""``/api/v1/tokens``: the admin API for tokens (``model-registry token ...``).

A new token's secret is in the answer to its creation and nowhere else, ever:
listings carry names, roles, scopes and expiries, never a secret or a digest.
"""

from __future__ import annotations

from typing import Annotated, Any

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, field_validator

from model_registry import Registry
from model_registry.auth import NAME, Role, parse_expiry
from model_registry.storage import StoredToken
from model_registry.validation import parse

from .audit import audit
from .keys import TOKENS
from .problem import ApiError
from .responses import json_response, read_object

__all__ = ["create", "listing", "revoke"]


_Pattern = Annotated[str, Field(min_length=1, max_length=256)]
_MAX_PATTERNS = 64


class _NewToken(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: Annotated[str, Field(pattern=NAME.pattern)]
    role: Role
    models: list[_Pattern] | None = Field(None, max_length=_MAX_PATTERNS)
    expires: str | None = None

    # The JSON schema says what is read, the CLI's comma-separated text too (see /openapi.json).
    @field_validator(
        "models",
        mode="before",
        json_schema_input_type=Annotated[list[_Pattern], Field(max_length=_MAX_PATTERNS)] | str | None,
    )
    @classmethod
    def _split(cls, value: Any) -> Any:  # "glm-4*,qwen*" as the CLI passes it
        return [p.strip() for p in value.split(",") if p.strip()] if isinstance(value, str) else value

    @field_validator("expires")
    @classmethod
    def _duration(cls, value: str | None) -> str | None:
        if value is not None:
            parse_expiry(value)
        return value


def _public(token: StoredToken, now: Any) -> dict[str, Any]:
    return {
        "name": token.name,
        "role": token.role,
        "models": None if token.models is None else list(token.models),
        "expires_at": token.expires_at,
        "created_at": token.created_at,
        "expired": token.expires_at is not None and now >= token.expires_at,
    }


async def create(request: web.Request, registry: Registry) -> web.Response:
    asked: _NewToken = parse(_NewToken, await read_object(request))
    expires = None if asked.expires is None else parse_expiry(asked.expires)
    models = None if not asked.models else tuple(asked.models)
    made = await request.app[TOKENS].create(asked.name, asked.role, models, expires)
    if made is None:
        raise ApiError(
            409, "token_exists", f"a token named {asked.name!r} exists: revoke it or pick another name"
        )
    secret, stored = made
    audit(request, "token created", token_created=stored.name, role=stored.role, models=asked.models)
    return json_response({"token": secret, **_public(stored, registry.now())}, status=201)


async def listing(request: web.Request, registry: Registry) -> web.Response:
    now = registry.now()
    return json_response({"tokens": [_public(t, now) for t in await request.app[TOKENS].listing()]})


async def revoke(request: web.Request, registry: Registry) -> web.Response:
    name = request.match_info["name"]
    removed = await request.app[TOKENS].revoke(name)
    if removed is None:
        raise ApiError(404, "token_not_found", f"no token is named {name!r} (model-registry token list)")
    audit(request, "token revoked", token_revoked=name)
    return json_response({"revoked": name})
