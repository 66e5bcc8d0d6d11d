"""The audit log: operators' and admins' actions, with who did them and from where."""

from __future__ import annotations

import logging
from typing import Any

from aiohttp import web

from model_registry.auth import Role
from model_registry_sdk.record import InstanceKey

from .auth import principal_of

__all__ = ["audit", "audit_deregistration"]

log = logging.getLogger("audit")


def audit(request: web.Request, what: str, **changes: Any) -> None:
    """Log an operator's or admin's action at info: the token's name, the remote address, what changed."""
    principal = principal_of(request)
    log.info(
        what,
        extra={
            "token": principal.name if principal is not None else "(authentication off)",
            "role": principal.role.value if principal is not None else None,
            "remote": request.remote,
            **changes,
        },
    )


def audit_deregistration(request: web.Request, key: InstanceKey, purge: bool) -> None:
    """A deregistration or purge is audited when an operator or admin did it (of another's instance)."""
    principal = principal_of(request)
    if principal is not None and principal.role in (Role.OPERATOR, Role.ADMIN):
        audit(
            request,
            "instance purged" if purge else "instance deregistered",
            model=key.model_name,
            addr=key.address,
        )
