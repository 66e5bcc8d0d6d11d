"""What an instance asks the registry to probe and scrape, and where a probe may go.

An instance may be registered with an active health check, ``check: {"http": "/health",
"interval": 10, "timeout": 2, "healthy_after": 1, "unhealthy_after": 3}``, and an engine
metrics endpoint to scrape, ``metrics: {"url": "/metrics", "interval": 10}``. This module
validates both (one message per bad field, under ``check.`` and ``metrics.``) and turns
their targets into the URLs the prober fetches. Pure code: the prober itself, which
fetches them, lives with the server.

Where a probe may go: a registration must not turn the registry into a request cannon
(server-side request forgery: "probe http://169.254.169.254/latest/meta-data every
second"). So a target is a path on the instance itself, or a full URL naming the
instance's own host and port; any other host only when the operator allows it by name
(``allowed``: the server's ``--probe-allowed-hosts``). The instance's own address is no
wider than what routers already send it: its requests.

Thresholds follow Kubernetes' probes (successThreshold 1, failureThreshold 3): one failed
probe is noise, three in a row mark the instance, and one success brings it back.
"""

from __future__ import annotations

from typing import Annotated, Any
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from model_registry_sdk.record import STARTING_CHECK

from .errors import InvalidInstance
from .validation import normalize_host, problems_of

__all__ = [
    "STARTING",
    "Check",
    "Hysteresis",
    "Scrape",
    "check_from",
    "same_problem",
    "scrape_from",
    "target_url",
]

#: The ``state_reason`` of an instance registered with a check it has not yet passed:
#: it is listed, and not served, until it does.
STARTING = STARTING_CHECK

#: Seconds between probes (or scrapes) of one instance, at least and at most.
MIN_INTERVAL_S, MAX_INTERVAL_S = 1.0, 3600.0
# Strict: a number, not a string of one (an integer passes as a float).
_Interval = Annotated[float, Field(strict=True, ge=MIN_INTERVAL_S, le=MAX_INTERVAL_S, allow_inf_nan=False)]
_Target = Annotated[str, Field(strict=True, min_length=1, max_length=2048)]
_Count = Annotated[int, Field(strict=True, ge=1, le=100)]


class Check(BaseModel):
    """An active HTTP health check: a status from 200 to 399 is a pass (as Kubernetes
    counts it; redirects are not followed); anything else, or no answer within
    ``timeout``, a failure."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    http: _Target
    interval: _Interval = 10.0
    timeout: Annotated[float, Field(strict=True, gt=0, le=60, allow_inf_nan=False)] = 2.0
    healthy_after: _Count = 1
    unhealthy_after: _Count = 3


def same_problem(reason: str | None, other: str | None) -> bool:
    """Whether two probes' reasons tell of the same problem (``probe: HTTP 503 after 2 s``
    and ``... after 1.5 s`` do: the time it took is not the problem)."""
    if reason is None or other is None:
        return reason == other
    return reason.split(" after ")[0] == other.split(" after ")[0]


class Hysteresis:
    """When probe results change an instance's health: ``unhealthy_after`` failures in
    a row mark it, ``healthy_after`` passes in a row bring it back; one result against
    the run starts the count again. Pure state, no clock."""

    __slots__ = ("failures", "healthy_after", "passes", "unhealthy_after")

    def __init__(self, healthy_after: int = 1, unhealthy_after: int = 3) -> None:
        self.healthy_after, self.unhealthy_after = healthy_after, unhealthy_after
        self.passes = self.failures = 0

    def passed(self) -> bool:
        """A probe passed: whether the instance has now passed enough in a row to be healthy."""
        self.failures = 0
        self.passes += 1
        return self.passes >= self.healthy_after

    def failed(self) -> bool:
        """A probe failed: whether the instance has now failed enough in a row to be unhealthy."""
        self.passes = 0
        self.failures += 1
        return self.failures >= self.unhealthy_after


class Scrape(BaseModel):
    """An engine's Prometheus endpoint (vLLM's or SGLang's ``/metrics``), read every ``interval``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    url: _Target
    interval: _Interval = 10.0


_CHECK = TypeAdapter(Check)
_SCRAPE = TypeAdapter(Scrape)


def _parsed(adapter: TypeAdapter, value: Any, name: str) -> Any:
    if not isinstance(value, dict):
        raise InvalidInstance([(name, f"must be an object, got {type(value).__name__}")])
    try:
        return adapter.validate_python(value)
    except ValidationError as exc:
        raise InvalidInstance([(f"{name}.{field}", message) for field, message in problems_of(exc)]) from None


def check_from(value: Any) -> Check:
    """A registration's ``check``, validated; ``InvalidInstance`` naming ``check.<field>``."""
    check: Check = _parsed(_CHECK, value, "check")
    if check.timeout >= check.interval:  # a probe answers before the next is due
        raise InvalidInstance(
            [
                (
                    "check.timeout",
                    f"must be shorter than interval ({check.interval:g} s), got {check.timeout:g}",
                )
            ]
        )
    return check


def scrape_from(value: Any) -> Scrape:
    """A registration's ``metrics``, validated; ``InvalidInstance`` naming ``metrics.<field>``."""
    return _parsed(_SCRAPE, value, "metrics")


def target_url(host: str, port: int, target: str, field: str, allowed: frozenset[str] = frozenset()) -> str:
    """The URL to fetch for an instance at ``host:port``: ``target`` is a path on it
    (``/health``) or a full URL of its own host and port, or of a host in ``allowed``
    (names as ``normalize_host`` spells them). ``InvalidInstance`` naming ``field`` otherwise."""
    if target.startswith("/"):
        if target.startswith("//"):  # a scheme-relative URL: another host
            raise InvalidInstance([(field, f"must be a path (/health) or a URL, got {target[:100]!r}")])
        if any(c <= " " or c == "\x7f" for c in target) or "#" in target:
            raise InvalidInstance(
                [(field, "must be a path without spaces, control characters or a fragment")]
            )
        name = f"[{host}]" if ":" in host else host
        return f"http://{name}:{port}{target}"
    try:
        url = urlsplit(target)
        own_port = url.port or {"http": 80, "https": 443}.get(url.scheme)
        hostname = normalize_host(url.hostname or "")
    except ValueError:
        raise InvalidInstance(
            [(field, f"must be a path (/health) or an http(s) URL, got {target[:100]!r}")]
        ) from None
    if url.scheme not in ("http", "https") or url.fragment or any(c <= " " or c == "\x7f" for c in target):
        raise InvalidInstance([(field, f"must be a path (/health) or an http(s) URL, got {target[:100]!r}")])
    if url.username is not None or url.password is not None:
        raise InvalidInstance([(field, "must not carry credentials (they would be stored and shown)")])
    if (hostname, own_port) != (host, port) and hostname not in allowed:
        raise InvalidInstance(
            [
                (
                    field,
                    f"may only name the instance itself ({host}:{port}), not {hostname}:{own_port}: "
                    "give a path, or ask the operator to allow the host with --probe-allowed-hosts",
                )
            ]
        )
    return target
