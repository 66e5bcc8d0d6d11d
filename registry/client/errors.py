"""What a client call can raise, drawn once:

    RegistryError                      (registry.errors: the root of every registry outcome)
    └── ClientError
        ├── ClientClosed               the client was closed; build a new one
        ├── RegistryUnavailable        no answer: refused, reset, timed out, or 5xx
        │                              after the retries ran out
        └── RegistryClientError        the registry answered 4xx; never retried
            ├── InstanceNotFound       404 instance_not_found
            ├── NoHealthyInstance      404 no_healthy_instance
            └── InvalidRequest         400/413/415/422: the request itself is wrong

Transport errors (aiohttp's) are mapped at the boundary with ``raise ... from``;
they never escape a client call.
"""

from __future__ import annotations

from ..errors import RegistryError

__all__ = [
    "ClientClosed",
    "ClientError",
    "InstanceNotFound",
    "InvalidRequest",
    "NoHealthyInstance",
    "RegistryClientError",
    "RegistryError",
    "RegistryUnavailable",
]


class ClientError(RegistryError):
    """Base class of everything a client call raises."""


class ClientClosed(ClientError, RuntimeError):
    def __init__(self) -> None:
        super().__init__("this registry client is closed; create a new one")


class RegistryUnavailable(ClientError):
    """No usable answer from any registry URL within the deadline."""


class RegistryClientError(ClientError):
    """The registry refused the request. Carries its status, error code and detail."""

    def __init__(self, status: int, code: str, detail: str, field: str | None = None) -> None:
        super().__init__(f"{status} {code}: {detail}")
        self.status, self.code, self.detail, self.field = status, code, detail, field


class InstanceNotFound(RegistryClientError):
    pass


class NoHealthyInstance(RegistryClientError):
    pass


class InvalidRequest(RegistryClientError):
    pass


_BY_CODE: dict[str, type[RegistryClientError]] = {
    "instance_not_found": InstanceNotFound,
    "no_healthy_instance": NoHealthyInstance,
    "invalid_input": InvalidRequest,
    "malformed_json": InvalidRequest,
    "body_too_large": InvalidRequest,
    "unsupported_media_type": InvalidRequest,
}


def client_error(status: int, body: object) -> RegistryClientError:
    """The exception for a 4xx answer (whatever its body holds)."""
    if isinstance(body, dict) and isinstance(body.get("error"), str):
        code, detail = body["error"], str(body.get("detail", ""))
        field = body.get("field") if isinstance(body.get("field"), str) else None
    else:
        code, detail, field = "http_error", f"the registry answered {status}", None
    return _BY_CODE.get(code, RegistryClientError)(status, code, detail, field)
