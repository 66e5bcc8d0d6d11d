"""Every outcome of a registry call that is not a success, drawn once:

    RegistryError                      the root of every registry outcome
    ├── RegistryClientError            the registry refused the request (4xx); never retried;
    │   │                              carries ``status``, ``code``, ``detail`` and ``field``
    │   ├── InstanceNotFound           404 instance_not_found: the identity names no instance
    │   ├── NoHealthyInstance          404 no_healthy_instance: nothing selection may pick
    │   │   └── AllCoolingDown         503 all_cooling_down: there are instances, but every one
    │   │                              is cooling down; ``retry_after`` says when the first ends
    │   ├── InstanceLimit              507 instance_limit / 429 model_instance_limit: no room
    │   │                              for another instance (of the registry, or of the model)
    │   └── InvalidRequest             400/413/415/422: the request itself is wrong
    └── ClientError                    only a client raises these
        ├── ClientClosed               the client was closed; build a new one
        └── RegistryUnavailable        no answer: refused, reset, timed out, or 5xx
                                       after the retries ran out

One class per meaning, shared by the server and its clients: the registry
raises ``InstanceNotFound`` in-process, answers it as a 404, and the client
raises the same class from that answer, so ``except InstanceNotFound`` reads
the same on both sides. Transport errors (aiohttp's) are mapped at the
boundary with ``raise ... from``; they never escape a client call.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .record import InstanceKey

__all__ = [
    "AllCoolingDown",
    "ClientClosed",
    "ClientError",
    "InstanceLimit",
    "InstanceNotFound",
    "InvalidRequest",
    "NoHealthyInstance",
    "RegistryClientError",
    "RegistryError",
    "RegistryUnavailable",
    "client_error",
]


class RegistryError(Exception):
    """Base class of every registry outcome that is not a success."""


class RegistryClientError(RegistryError):
    """The registry refused the request. Carries its status, error code and detail."""

    def __init__(self, status: int, code: str, detail: str, field: str | None = None) -> None:
        super().__init__(f"{status} {code}: {detail}")
        self.status, self.code, self.detail, self.field = status, code, detail, field


class InstanceNotFound(RegistryClientError, LookupError):
    """The identity names no registered instance. ``key`` is known where the
    caller named it (in-process); from an answer it is ``None``."""

    def __init__(
        self,
        key: InstanceKey | None = None,
        *,
        detail: str | None = None,
        status: int = 404,
        code: str = "instance_not_found",
        field: str | None = None,
    ) -> None:
        super().__init__(status, code, detail or f"no instance {key} is registered", field)
        self.key = key


class NoHealthyInstance(RegistryClientError, LookupError):
    """The model has no healthy, enabled instance with a weight above 0."""

    def __init__(
        self,
        model_name: str | None = None,
        *,
        detail: str | None = None,
        status: int = 404,
        code: str = "no_healthy_instance",
        field: str | None = None,
    ) -> None:
        detail = detail or f"model {model_name!r} has no healthy, enabled instance with a weight above 0"
        super().__init__(status, code, detail, field)
        self.model_name = model_name


class AllCoolingDown(NoHealthyInstance):
    """Every healthy, enabled instance of the model is cooling down (failing,
    busy, or on a trial that has had its requests): there are instances, just
    none usable now. ``retry_after``: seconds until the first cooldown ends.
    Not retried by a client: ask again after ``retry_after``, or with
    ``fallback="least_bad"``."""

    def __init__(
        self,
        model_name: str | None = None,
        retry_after: float = 1.0,
        *,
        detail: str | None = None,
        status: int = 503,
        code: str = "all_cooling_down",
        field: str | None = None,
    ) -> None:
        detail = detail or (
            f"every available instance of model {model_name!r} is cooling down; the first is back in "
            f"{retry_after:g} s (ask again then, or with fallback=least_bad)"
        )
        super().__init__(model_name, detail=detail, status=status, code=code, field=field)
        self.retry_after = retry_after


class InstanceLimit(RegistryClientError):
    """No room for a new instance: the registry holds ``--max-instances`` (507
    ``instance_limit``) or its model ``--max-instances-per-model`` (429
    ``model_instance_limit``). Updates of instances already registered pass."""


class InvalidRequest(RegistryClientError, ValueError):
    """The request breaks a rule; ``field`` names the first field at fault."""


class ClientError(RegistryError):
    """Base class of what only a client raises: no answer, or no client."""


class ClientClosed(ClientError, RuntimeError):
    def __init__(self) -> None:
        super().__init__("this registry client is closed; create a new one")


class RegistryUnavailable(ClientError):
    """No usable answer from any registry URL within the deadline."""


def client_error(status: int, body: object) -> RegistryClientError:
    """The exception for a 4xx answer, or a 507 (whatever its body holds)."""
    if isinstance(body, dict) and isinstance(body.get("error"), str):
        code, detail = body["error"], str(body.get("detail", ""))
        field = body.get("field") if isinstance(body.get("field"), str) else None
    else:
        code, detail, field = "http_error", f"the registry answered {status}", None
    if code == "instance_not_found":
        return InstanceNotFound(detail=detail, status=status, field=field)
    if code == "no_healthy_instance":
        return NoHealthyInstance(detail=detail, status=status, field=field)
    if code == "all_cooling_down":
        retry = body.get("retry_after") if isinstance(body, dict) else None
        retry_after = float(retry) if isinstance(retry, int | float) and not isinstance(retry, bool) else 1.0
        return AllCoolingDown(retry_after=retry_after, detail=detail, status=status, field=field)
    if code in _INVALID:
        return InvalidRequest(status, code, detail, field)
    if code in _LIMITS:
        return InstanceLimit(status, code, detail, field)
    return RegistryClientError(status, code, detail, field)


_LIMITS = frozenset({"instance_limit", "model_instance_limit"})
_INVALID = frozenset({"invalid_input", "malformed_json", "body_too_large", "unsupported_media_type"})
