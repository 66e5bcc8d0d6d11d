"""What a router's report means: a failure, busyness, the caller's own fault, or a success.

LLM workers fail in ways a router sees and a heartbeat does not (HTTP 500 with
"CUDA error", 402 "insufficient credits", timeouts, TLS errors), and are busy
in ways that are no failure at all (429, 503 with ``Retry-After``, a long
prefill). ``FailurePolicy`` says which is which, and ``classify`` applies it to
one report:

success
    ``ok: true``.
busy
    the status is one of ``busy_statuses`` (default 429), or is 503 and the
    report carries ``retry_after``. The instance is passed over for
    ``retry_after`` seconds (``busy_pass_over`` when the report gives none); no
    failure is counted.
failure
    the status is one of ``failure_statuses`` (default 402 and 5xx but 501: a
    server that cannot do the request at all, or one that wants paying), or
    the report has no status (an exception: timeout, refused connection, TLS
    error), or the error text matches one of the patterns
    (``unhealthy_response_body_patterns`` for a report with a status,
    ``unhealthy_exception_patterns`` for one without), whatever the status.
ignored
    any other status (400, 404, 413, 422, 501...): the caller's fault, or
    a request the instance cannot serve; it says nothing of its health.

Patterns are regular expressions in RE2's syntax (``google-re2``): matching
takes time linear in the text, whatever the pattern, so no pattern can stall
the registry (catastrophic backtracking cannot happen); patterns that need
backtracking (back-references, look-arounds) are refused when given, naming
the pattern and RE2's reason. They are matched case-insensitively, anywhere in
the text (at most ``MAX_ERROR_CHARS`` of it), each at most
``MAX_PATTERN_CHARS`` long and ``MAX_PATTERNS`` of each kind, compiled once.

The policy is set for the server (settings), per model (a policy file's
``models``, by glob) and per instance (its metadata, under the same names).
"""

from __future__ import annotations

import dataclasses
import fnmatch
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, NamedTuple

import re2

__all__ = [
    "LIMITS",
    "MAX_ERROR_CHARS",
    "MAX_PATTERNS",
    "MAX_PATTERN_CHARS",
    "FailurePolicy",
    "PolicyError",
    "Verdict",
    "check_metadata",
    "classify",
    "describe",
    "parse_statuses",
    "policy_from",
]

MAX_PATTERNS = 32
MAX_PATTERN_CHARS = 256
#: Only this much of a reported error text is matched (a report's error is at most 1,024).
MAX_ERROR_CHARS = 1024

#: The largest value of each number in a policy (settings, file or metadata).
LIMITS: Mapping[str, float] = {
    "unhealthy_threshold": 1000,
    "failure_window": 86_400.0,
    "failure_cooldown": 86_400.0,
    "max_cooldown": 86_400.0,
    "trial_requests": 1000,
    "busy_pass_over": 3_600.0,
    "flap_threshold": 1000,
    "flap_window": 86_400.0,
}
#: ``reset_timeout`` is the failure window under the name routers use for it.
_ALIASES = {"reset_timeout": "failure_window"}


class PolicyError(ValueError):
    """A policy that cannot be used; the message names the field and why."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field, self.message = field, message


def parse_statuses(text: str | Iterable[int], field: str = "statuses") -> frozenset[int]:
    """``"402,500,502-599"`` (or a list of codes) as a set of HTTP statuses."""
    if not isinstance(text, str):
        items = list(text)
        if not all(type(code) is int and 100 <= code <= 599 for code in items):
            raise PolicyError(field, "must be HTTP statuses from 100 to 599")
        return frozenset(items)
    codes: set[int] = set()
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        low, _, high = part.partition("-")
        try:
            first, last = int(low), int(high or low)
        except ValueError:
            raise PolicyError(field, f"{part!r} is no status or range (402, 502-599)") from None
        if not 100 <= first <= last <= 599:
            raise PolicyError(field, f"{part!r} is not within 100-599, low to high")
        codes.update(range(first, last + 1))
    return frozenset(codes)


@lru_cache(maxsize=256)
def _compiled(patterns: tuple[str, ...], field: str) -> tuple[Any, ...]:
    """The patterns compiled by RE2, case-insensitively (cached: metadata repeats them)."""
    if len(patterns) > MAX_PATTERNS:
        raise PolicyError(field, f"at most {MAX_PATTERNS} patterns, got {len(patterns)}")
    options = re2.Options()
    options.case_sensitive = False
    options.log_errors = False
    options.max_mem = 1 << 20
    out = []
    for pattern in patterns:
        if not isinstance(pattern, str) or not 1 <= len(pattern) <= MAX_PATTERN_CHARS:
            raise PolicyError(field, f"each pattern is a string of 1 to {MAX_PATTERN_CHARS} characters")
        try:
            out.append(re2.compile(pattern, options))
        except re2.error as exc:
            why = exc.args[0].decode() if exc.args and isinstance(exc.args[0], bytes) else str(exc)
            raise PolicyError(
                field, f"{pattern!r} is not a pattern RE2 accepts ({why}): no back-references or look-arounds"
            ) from None
    return tuple(out)


@dataclass(frozen=True, slots=True)
class FailurePolicy:
    """When routers' reports put an instance out of selection, and for how long."""

    threshold: int = 3  # failures, with no success between, that start a cooldown
    window: float = 60.0  # failures older than this are forgotten (``reset_timeout``)
    cooldown: float = 30.0  # the first cooldown; each one after a failed trial doubles it
    max_cooldown: float = 600.0
    trial_requests: int = 1  # selections an instance gets after a cooldown, before a report
    reset_on_success: bool = True  # a success forgets the failures counted so far
    busy_pass_over: float = 1.0  # seconds a busy instance is passed over without a retry_after
    flap_threshold: int = 5  # health changes (healthy <-> unhealthy) within flap_window that hold it out
    flap_window: float = 600.0
    failure_statuses: frozenset[int] = field(default_factory=lambda: frozenset({402, 500, *range(502, 600)}))
    busy_statuses: frozenset[int] = frozenset({429})
    body_patterns: tuple[str, ...] = ()
    exception_patterns: tuple[str, ...] = ()
    models: tuple[tuple[str, FailurePolicy], ...] = ()  # (glob, policy), the first match applies

    def __post_init__(self) -> None:
        _compiled(self.body_patterns, "unhealthy_response_body_patterns")
        _compiled(self.exception_patterns, "unhealthy_exception_patterns")

    def for_model(self, model_name: str) -> FailurePolicy:
        """The policy of one model: the first ``models`` glob it matches, else this one."""
        for glob, policy in self.models:
            if fnmatch.fnmatchcase(model_name, glob):
                return policy
        return self

    def for_instance(self, metadata: Mapping[str, Any], model_name: str | None = None) -> FailurePolicy:
        """The model's policy (with ``model_name``) with the instance's own settings
        (from its metadata) over it. Numbers out of range, and values of the wrong type, are ignored
        (the model's or server's setting applies); patterns that do not compile
        were refused when the instance registered (``check_metadata``)."""
        base = self if model_name is None else self.for_model(model_name)
        if not metadata or not _NAMES.intersection(metadata):
            return base
        try:
            return _over(base, metadata, strict=False)
        except PolicyError:
            return base

    def patterns(self, with_status: bool) -> tuple[Any, ...]:
        if with_status:
            return _compiled(self.body_patterns, "unhealthy_response_body_patterns")
        return _compiled(self.exception_patterns, "unhealthy_exception_patterns")


#: Each policy field by the name settings, policy files and metadata give it.
_FIELD_OF = {
    "unhealthy_threshold": "threshold",
    "failure_window": "window",
    "failure_cooldown": "cooldown",
    "max_cooldown": "max_cooldown",
    "trial_requests": "trial_requests",
    "reset_on_success": "reset_on_success",
    "busy_pass_over": "busy_pass_over",
    "flap_threshold": "flap_threshold",
    "flap_window": "flap_window",
    "failure_statuses": "failure_statuses",
    "busy_statuses": "busy_statuses",
    "unhealthy_response_body_patterns": "body_patterns",
    "unhealthy_exception_patterns": "exception_patterns",
}
_NAMES = frozenset({*_FIELD_OF, *_ALIASES})


def _over(base: FailurePolicy, values: Mapping[str, Any], *, strict: bool) -> FailurePolicy:
    """``base`` with ``values`` (by their outside names) over it. ``strict``: a bad
    value raises ``PolicyError``; otherwise numbers that do not fit are skipped."""
    changes: dict[str, Any] = {}
    for name, value in values.items():
        name = _ALIASES.get(name, name)
        target = _FIELD_OF.get(name)
        if target is None:
            if strict and name != "models":
                raise PolicyError(name, f"unknown; the fields are {', '.join(sorted(_NAMES))}")
            continue
        if name in LIMITS:
            kind = int if name in ("unhealthy_threshold", "trial_requests", "flap_threshold") else float
            # bool is an int to Python, never a count; NaN fails both comparisons.
            fits = isinstance(value, int | float) and not isinstance(value, bool)
            minimum = 0 if name == "busy_pass_over" else (1 if kind is int else 0)
            if fits and minimum <= value <= LIMITS[name] and (value > 0 or name == "busy_pass_over"):
                changes[target] = kind(value)
            elif strict:
                raise PolicyError(name, f"must be a number from {minimum} to {LIMITS[name]:g}")
        elif name == "reset_on_success":
            if isinstance(value, bool):
                changes[target] = value
            elif strict:
                raise PolicyError(name, "must be true or false")
        elif name.endswith("_statuses"):
            changes[target] = parse_statuses(value, name)
        else:
            if isinstance(value, str) or not isinstance(value, list | tuple):
                raise PolicyError(name, "must be a list of regular expressions")
            changes[target] = tuple(value)
    policy = dataclasses.replace(base, **changes) if changes else base
    if policy.cooldown > policy.max_cooldown:
        if strict:
            raise PolicyError("failure_cooldown", "must not be above max_cooldown")
        policy = dataclasses.replace(policy, max_cooldown=policy.cooldown)
    return policy


def policy_from(base: FailurePolicy, document: Mapping[str, Any]) -> FailurePolicy:
    """A policy file's content over ``base``: the server's fields, and ``models``:
    ``{"glob": {fields}}``, each over the server's. Raises ``PolicyError``."""
    policy = _over(base, document, strict=True)
    models = document.get("models", {})
    if not isinstance(models, Mapping):
        raise PolicyError("models", 'must be an object: {"model-glob": {fields}}')
    per_model = []
    for glob, values in models.items():
        if not isinstance(values, Mapping):
            raise PolicyError(f"models.{glob}", "must be an object of policy fields")
        try:
            per_model.append((glob, _over(policy, values, strict=True)))
        except PolicyError as exc:
            raise PolicyError(f"models.{glob}.{exc.field}", exc.message) from None
    return dataclasses.replace(policy, models=tuple(per_model))


def check_metadata(metadata: Mapping[str, Any]) -> None:
    """Raise ``PolicyError`` (naming ``metadata.<field>``) when the failure
    patterns or status lists in an instance's metadata cannot be used: those
    are refused at registration rather than silently ignored."""
    for name in ("unhealthy_response_body_patterns", "unhealthy_exception_patterns"):
        if name in metadata:
            value = metadata[name]
            if isinstance(value, str) or not isinstance(value, list | tuple):
                raise PolicyError(f"metadata.{name}", "must be a list of regular expressions")
            try:
                _compiled(tuple(value), name)
            except PolicyError as exc:
                raise PolicyError(f"metadata.{name}", exc.message) from None
    for name in ("failure_statuses", "busy_statuses"):
        if name in metadata:
            try:
                parse_statuses(metadata[name], name)
            except PolicyError as exc:
                raise PolicyError(f"metadata.{name}", exc.message) from None


class Verdict(NamedTuple):
    """What a report means (``success``, ``failure``, ``busy`` or ``ignored``), and why,
    in words for a reason (``HTTP 500 "CUDA error: device-side assert"``)."""

    kind: str
    why: str
    pass_over: float = 0.0  # busy: seconds to pass the instance over


def describe(status: int | None, error: str | None) -> str:
    """A report's outcome in a few words: ``HTTP 500 "CUDA error"`` or ``"timed out"``."""
    text = None if not error else error.strip().replace("\n", " ")[:120]
    if status is None:
        return f'"{text}"' if text else "an error with no status"
    return f'HTTP {status} "{text}"' if text else f"HTTP {status}"


def classify(
    policy: FailurePolicy, ok: bool, status: int | None, error: str | None, retry_after: float | None
) -> Verdict:
    """What one report means under ``policy`` (see the module's docstring)."""
    what = describe(status, error)
    if ok:
        return Verdict("success", what)
    if error:
        text = error[:MAX_ERROR_CHARS]
        for pattern in policy.patterns(status is not None):
            if pattern.search(text):
                return Verdict("failure", f"{what} (matches {pattern.pattern!r})")
    if status in policy.busy_statuses or (status == 503 and retry_after is not None):
        pass_over = policy.busy_pass_over if retry_after is None else retry_after
        return Verdict("busy", what, pass_over)
    if status is None or status in policy.failure_statuses:
        return Verdict("failure", what)
    return Verdict("ignored", what)
