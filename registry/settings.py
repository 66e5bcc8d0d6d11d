"""Service settings: defaults, ``REGISTRY_*`` environment variables, validation.

The command line (``api.cli``) passes only the flags a user gave; everything
else comes from the environment or the defaults below. Defaults suit an LLM
fleet whose workers beat every ~10 s.

Three defaults are derived from what was set, so that a setting the user did
not give never makes one they did give fail: the heartbeat interval is
min(10 s, timeout / 3), the timeout max(30 s, 3 x interval), and the flush
interval min(1 s, timeout / 4). A value the user gave that breaks a rule is
still refused, naming the fix. Each field's ``backends`` says which storage
backends it applies to (``--help`` shows it).
"""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Any, Literal

import orjson
from pydantic import Field, PrivateAttr, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from .checker import check_timing
from .failures import FailurePolicy, PolicyError, parse_statuses, policy_from
from .preservation import Preservation
from .storage import PoolOptions, open_storage
from .validation import normalize_host

__all__ = ["DERIVED", "Settings", "backends_of"]

#: The settings whose default is derived from others, as ``--help`` explains it.
DERIVED = {
    "heartbeat_interval": "min(10, heartbeat-timeout / 3)",
    "heartbeat_timeout": "max(30, 3 x heartbeat-interval)",
    "flush_interval": "min(1, heartbeat-timeout / 4)",
}

_ALL = "all backends"


def _on(*backends: str) -> dict[str, Any]:
    return {"backends": ", ".join(backends)}


def backends_of(name: str) -> str:
    """Which storage backends setting ``name`` applies to, for ``--help``."""
    extra = Settings.model_fields[name].json_schema_extra
    return extra["backends"] if isinstance(extra, dict) else _ALL  # type: ignore[return-value]


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="REGISTRY_", extra="ignore", frozen=True)
    _bootstrap: str | None = PrivateAttr(None)  # the admin token, read once (``bootstrap_token``)
    _failures: FailurePolicy | None = PrivateAttr(None)  # read once (``failures``)

    host: str = Field("127.0.0.1", description="address to listen on (0.0.0.0 for every interface)")
    allowed_hosts: str = Field(
        "",
        description=(
            "comma-separated names the registry also answers to in Host (besides its addresses, "
            "localhost and this machine's name); * answers any"
        ),
    )
    port: int = Field(8000, ge=0, le=65535, description="TCP port to listen on (0 picks a free one)")
    storage: str = Field(
        "sqlite+aiosqlite:///registry.db",
        description=(
            "storage URL: sqlite+aiosqlite:///PATH, postgresql+asyncpg://USER:PASSWORD@HOST/DB "
            "or memory:// (lost on exit)"
        ),
    )
    heartbeat_interval: float | None = Field(
        None, gt=0, description="seconds between the checker's sweeps; workers should beat this often"
    )
    heartbeat_timeout: float | None = Field(
        None, gt=0, description="seconds without a heartbeat before an instance is unhealthy"
    )
    evict_after: float = Field(
        600.0, ge=0, description="seconds an instance stays unhealthy before it is deleted (0: never)"
    )
    shutdown_timeout: float = Field(
        15.0, gt=0, le=300, description="seconds to let requests in flight finish on SIGTERM/SIGINT"
    )
    flush_interval: float | None = Field(
        None,
        gt=0,
        le=60,
        description="seconds heartbeats may wait before they are written (what a crash can lose)",
        json_schema_extra=_on("sqlite", "postgresql"),
    )
    idle_timeout: float = Field(
        30.0,  # past aiohttp's and httpx's client-side 15 s and 5 s, so that clients close first
        gt=0,
        le=3600,
        description=(
            "seconds a connection may stay open without a complete request: idle keep-alive, "
            "a client that never sends, or headers trickled in (slowloris)"
        ),
    )
    max_connections_per_client: int = Field(
        4096,
        ge=0,
        description="connections one client address may hold open; past it new ones are closed (0: no limit)",
    )
    body_timeout: float = Field(
        30.0, gt=0, le=3600, description="seconds a request's body may take to arrive before 408"
    )
    request_timeout: float = Field(
        10.0, gt=0, description="seconds a storage operation may take before the request is answered 503"
    )
    watch_history: int = Field(
        10_000, ge=1, description="recent changes kept so that watchers can resume (?since=) without a resync"
    )
    watch_queue: int = Field(
        1_000, ge=1, description="events a watcher may fall behind before it is disconnected (close 1013)"
    )
    watch_ping_interval: float = Field(
        30.0, gt=0, description="seconds between pings to watchers; one unanswered for half that closes"
    )
    max_instances: int = Field(
        1_000_000,
        ge=1,
        description="instances the registry holds; past it a new one is refused with 507 (updates pass)",
    )
    max_instances_per_model: int = Field(
        100_000, ge=1, description="instances one model may have; past it a new one is refused with 429"
    )
    metrics_max_models: int = Field(
        1000, ge=0, description="models with their own label in /metrics; the rest are summed as model=_other"
    )
    listing_cache: int = Field(
        64,
        ge=0,
        description="MiB of rendered listings kept, each model's written once per change and served to "
        "every reader until the next (about 500 bytes an instance: a million instances' listings "
        "take 500 MiB; past it, the least recently written are let go); 0 keeps none",
    )
    max_long_polls: int = Field(
        20_000, ge=1, description="long-polls that may wait at once; past it 503 with Retry-After"
    )
    max_watchers: int = Field(
        20_000, ge=1, description="WebSocket watchers that may be open at once; past it 503 with Retry-After"
    )
    max_wait: float = Field(
        300.0, gt=0, description="the longest a long-poll (?index=N&wait=) may block, in seconds"
    )
    unhealthy_threshold: int = Field(
        3,
        ge=1,
        le=1000,
        description="failures routers report, with no success between, before an instance cools down",
    )
    failure_window: float = Field(
        60.0,
        gt=0,
        le=86_400,
        description="seconds within which those failures must fall; older ones are forgotten (reset_timeout)",
    )
    failure_cooldown: float = Field(
        30.0,
        gt=0,
        le=86_400,
        description="seconds a failing instance is first left out of selection and healthy listings",
    )
    startup_grace: float = Field(
        600.0,
        gt=0,
        le=86_400,
        description=(
            "seconds an instance may stay starting (registered ready: false, or its check not yet "
            "passed) before it is unhealthy, unless it sets its own startup_grace"
        ),
    )
    flap_threshold: int = Field(
        5,
        ge=1,
        le=1000,
        description="health changes (healthy to unhealthy and back) within --flap-window that hold it out",
    )
    flap_window: float = Field(600.0, gt=0, le=86_400, description="seconds over which flapping is counted")
    max_cooldown: float = Field(
        600.0,
        gt=0,
        le=86_400,
        description="the longest cooldown: each failed trial doubles the last one, up to this",
    )
    trial_requests: int = Field(
        1, ge=1, le=1000, description="selections an instance gets after a cooldown, before a router reports"
    )
    no_reset_on_success: bool = Field(
        False, description="a success does not forget the failures counted so far (it does by default)"
    )
    busy_pass_over: float = Field(
        1.0,
        ge=0,
        le=3600,
        description="seconds a busy instance (429) is passed over when the report gives no retry_after",
    )
    failure_statuses: str = Field(
        "402,500,502-599", description="HTTP statuses a report counts as failures (codes and ranges)"
    )
    busy_statuses: str = Field(
        "429", description="HTTP statuses that mean busy (and 503 with retry_after): passed over, not failed"
    )
    failure_policy: Path | None = Field(
        None,
        description=(
            "a JSON file of failure classification: these settings, the unhealthy_response_body_patterns "
            "and unhealthy_exception_patterns, and per-model sections under models"
        ),
    )
    preservation_share: float = Field(
        0.5,
        gt=0,
        le=1,
        description="share of the healthy instances that, silent in one check, makes the checker hold back",
    )
    preservation_minimum: int = Field(
        3, ge=1, description="the fewest silent instances that can engage self-preservation"
    )
    max_protection: float = Field(
        120.0, ge=0, description="seconds self-preservation may hold back before marking them anyway"
    )
    db_pool_size: int = Field(
        10, ge=1, description="connections kept open per process", json_schema_extra=_on("postgresql")
    )
    db_max_overflow: int = Field(
        10, ge=0, description="extra connections opened under load", json_schema_extra=_on("postgresql")
    )
    db_pool_timeout: float = Field(
        2.0,
        gt=0,
        description="seconds a request waits for a free connection before 503",
        json_schema_extra=_on("postgresql"),
    )
    db_connect_timeout: float = Field(
        3.0, gt=0, description="seconds to open a connection", json_schema_extra=_on("postgresql")
    )
    db_statement_timeout: float = Field(
        5.0,
        gt=0,
        description="seconds one statement may run before it is cancelled",
        json_schema_extra=_on("postgresql"),
    )
    probe_concurrency: int = Field(
        256,
        ge=1,
        le=10_000,
        description="health-check probes and metrics scrapes the registry may have out at once",
    )
    probe_idle_connections: int = Field(
        10_000,
        ge=0,
        le=1_000_000,
        description=(
            "probe and scrape connections kept open between probes, when the instance keeps them "
            "(0: a new connection for each probe); at most half the open-files limit"
        ),
    )
    probe_allowed_hosts: str = Field(
        "",
        description=(
            "comma-separated hosts a registration's check or metrics URL may name besides the "
            "instance's own host and port (a sidecar, say); nothing else is ever probed"
        ),
    )
    fastchat_dispatch: Literal["lottery", "shortest_queue"] = Field(
        "shortest_queue",
        description=(
            "how FastChat's /get_worker_address picks a worker: lottery (random, weighted by speed) "
            "or shortest_queue (lowest queue_length / speed)"
        ),
    )
    fastchat_status_timeout: float = Field(
        5.0,
        gt=0,
        le=60,
        description=(
            "seconds a FastChat worker has to answer /worker_get_status when it registers without its status"
        ),
    )
    admin_token: SecretStr | None = Field(
        None,
        description="the first admin token (turns authentication on, on loopback too); env only",
    )
    admin_token_file: str | None = Field(
        None, description="a file holding the first admin token (a Docker or Kubernetes secret)"
    )
    insecure_no_auth: bool = Field(
        False, description="serve a non-loopback address without authentication (anyone may hijack traffic)"
    )
    tls_cert: str | None = Field(None, description="serve HTTPS (TLS 1.2+) with this certificate chain (PEM)")
    tls_key: str | None = Field(None, description="the private key of --tls-cert (PEM)")
    tls_client_ca: str | None = Field(
        None, description="require client certificates signed by this CA (PEM): mutual TLS"
    )
    log_level: Literal["debug", "info", "warning", "error"] = Field(
        "info", description="debug also logs every request"
    )
    log_format: Literal["text", "json"] = Field("text", description="text (key=value) or json lines")

    @field_validator("log_level", "log_format", "fastchat_dispatch", mode="before")
    @classmethod
    def _lower(cls, value: object) -> object:
        return value.lower() if isinstance(value, str) else value

    @field_validator("storage")
    @classmethod
    def _known_storage(cls, value: str) -> str:
        open_storage(value)  # raises InvalidStorageURL (a ValueError) naming the valid schemes
        return value

    @model_validator(mode="after")
    def _timing(self) -> Settings:
        interval, timeout = self.heartbeat_interval, self.heartbeat_timeout
        if interval is None:
            interval = 10.0 if timeout is None else min(10.0, timeout / 3)
        if timeout is None:
            timeout = max(30.0, 3 * interval)
        flush = self.flush_interval if self.flush_interval is not None else min(1.0, timeout / 4)
        # Frozen: the derived values are filled in once, here, before anyone reads them.
        object.__setattr__(self, "heartbeat_interval", interval)
        object.__setattr__(self, "heartbeat_timeout", timeout)
        object.__setattr__(self, "flush_interval", flush)
        check_timing(self.heartbeat_interval, self.heartbeat_timeout, self.evict_after)
        if self.flush_interval > self.heartbeat_timeout / 4:
            # Replicas judge silence by written timestamps, which lag by up to
            # the flush interval: keep that lag a small part of the timeout.
            raise ValueError(
                f"flush interval {self.flush_interval:g} s is too long for a heartbeat timeout of "
                f"{self.heartbeat_timeout:g} s: make it at most a quarter of the timeout "
                f"({self.heartbeat_timeout / 4:g} s), or leave --flush-interval out to have it derived"
            )
        return self

    @model_validator(mode="after")
    def _failure_rules(self) -> Settings:
        """The failure policy, read and checked at start: a bad one names its field."""
        try:
            self._failures = self._failure_policy()
        except PolicyError as exc:
            flag = "--" + exc.field.replace("_", "-") if exc.field in type(self).model_fields else exc.field
            where = f" (in {self.failure_policy})" if self.failure_policy and flag == exc.field else ""
            raise ValueError(f"{flag}{where}: {exc.message}") from None
        return self

    @model_validator(mode="after")
    def _security(self) -> Settings:
        if self.admin_token is not None and self.admin_token_file is not None:
            raise ValueError(
                "give the admin token once: --admin-token-file or REGISTRY_ADMIN_TOKEN, not both"
            )
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("TLS needs both --tls-cert and --tls-key")
        if self.tls_client_ca is not None and self.tls_cert is None:
            raise ValueError("--tls-client-ca needs --tls-cert and --tls-key (clients are checked over TLS)")
        for name in ("admin_token_file", "tls_cert", "tls_key", "tls_client_ca"):
            path = getattr(self, name)
            if path is not None and not Path(path).is_file():
                raise ValueError(f"{name.replace('_', '-')}: no such file {path!r}")
        # Read once, here: the file is a secret mounted at start, not something to reread.
        bootstrap = self.admin_token.get_secret_value() if self.admin_token is not None else None
        if self.admin_token_file is not None:
            bootstrap = Path(self.admin_token_file).read_text().rstrip("\r\n")
        self._bootstrap = bootstrap
        if bootstrap is not None and len(bootstrap) < 32:
            raise ValueError(
                "the admin token is too short to be secret: use at least 32 characters, e.g. "
                "python3 -c 'import secrets; print(secrets.token_urlsafe(32))'"
            )
        return self

    @property
    def bootstrap_token(self) -> str | None:
        """The first admin token, from the environment or its file (without the trailing newline)."""
        return self._bootstrap

    @field_validator("probe_allowed_hosts")
    @classmethod
    def _probe_hosts(cls, value: str) -> str:
        for name in value.split(","):
            if name.strip():
                try:
                    normalize_host(name.strip())
                except ValueError:
                    raise ValueError(f"{name.strip()!r} is not a hostname or an IP address") from None
        return value

    @property
    def probe_hosts(self) -> frozenset[str]:
        """``probe_allowed_hosts``, each spelled as instances' hosts are stored."""
        return frozenset(normalize_host(h.strip()) for h in self.probe_allowed_hosts.split(",") if h.strip())

    @property
    def loopback(self) -> bool:
        """Whether the registry listens on loopback only."""
        if self.host == "localhost":
            return True
        try:
            return ipaddress.ip_address(self.host.strip("[]")).is_loopback
        except ValueError:
            return False

    @property
    def auth(self) -> bool:
        """Whether requests must authenticate: with an admin token, or off loopback
        unless --insecure-no-auth."""
        return self.bootstrap_token is not None or (not self.loopback and not self.insecure_no_auth)

    @property
    def failures(self) -> FailurePolicy:
        """The failure policy: these settings, with the policy file over them."""
        if self._failures is None:
            self._failures = self._failure_policy()
        return self._failures

    def _failure_policy(self) -> FailurePolicy:
        base = FailurePolicy(
            threshold=self.unhealthy_threshold,
            window=self.failure_window,
            cooldown=self.failure_cooldown,
            max_cooldown=max(self.max_cooldown, self.failure_cooldown),
            trial_requests=self.trial_requests,
            reset_on_success=not self.no_reset_on_success,
            busy_pass_over=self.busy_pass_over,
            flap_threshold=self.flap_threshold,
            flap_window=self.flap_window,
            failure_statuses=parse_statuses(self.failure_statuses, "failure_statuses"),
            busy_statuses=parse_statuses(self.busy_statuses, "busy_statuses"),
        )
        if self.failure_policy is None:
            return base
        try:
            document = orjson.loads(self.failure_policy.read_bytes())
        except OSError as exc:
            raise PolicyError(
                "failure_policy", f"cannot read {self.failure_policy}: {exc.strerror}"
            ) from None
        except orjson.JSONDecodeError as exc:
            raise PolicyError("failure_policy", f"{self.failure_policy} is not JSON: {exc}") from None
        if not isinstance(document, dict):
            raise PolicyError("failure_policy", f"{self.failure_policy} must hold a JSON object")
        return policy_from(base, document)

    @property
    def preservation(self) -> Preservation:
        return Preservation(self.preservation_share, self.preservation_minimum, self.max_protection)

    @property
    def pool(self) -> PoolOptions:
        return PoolOptions(
            pool_size=self.db_pool_size,
            max_overflow=self.db_max_overflow,
            pool_timeout=self.db_pool_timeout,
            connect_timeout=self.db_connect_timeout,
            statement_timeout=self.db_statement_timeout,
            operation_timeout=self.request_timeout,
        )
