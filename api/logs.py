"""Structured logging: one line per event, ``text`` (key=value) or ``json``.

Quiet by default: at ``info`` the service logs start, stop and instance state
changes; the access log appears only at ``debug``. Fields passed with
``extra={...}`` become keys of the line.
"""

from __future__ import annotations

import logging
import sys
import time
from datetime import datetime, timezone

import orjson
from aiohttp.http_exceptions import HttpProcessingError

__all__ = ["MalformedRequests", "Throttle", "configure_logging"]

_STANDARD = set(vars(logging.makeLogRecord({}))) | {"message", "asctime", "taskName"}


def _fields(record: logging.LogRecord) -> dict[str, object]:
    fields: dict[str, object] = {
        "ts": datetime.fromtimestamp(record.created, timezone.utc)
        .isoformat(timespec="milliseconds")
        .replace("+00:00", "Z"),
        "level": record.levelname.lower(),
        "logger": record.name,
        "msg": record.getMessage(),
    }
    fields.update((k, v) for k, v in vars(record).items() if k not in _STANDARD)
    if record.exc_info and record.levelno >= logging.ERROR:
        fields["exc"] = logging.Formatter().formatException(record.exc_info)
    return fields


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return orjson.dumps(_fields(record), default=str).decode()


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        fields = _fields(record)
        ts, level, logger, msg = (fields.pop(k) for k in ("ts", "level", "logger", "msg"))
        head = f"{ts} {str(level).upper():<7} {logger}: {msg}"
        exc = fields.pop("exc", None)
        tail = " ".join(f"{k}={_quote(v)}" for k, v in fields.items())
        line = f"{head} {tail}" if tail else head
        return f"{line}\n{exc}" if exc else line


def _quote(value: object) -> str:
    text = str(value)
    return orjson.dumps(text).decode() if (" " in text or '"' in text or not text) else text


def configure_logging(level: str = "info", fmt: str = "text") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # Libraries speak only when something is wrong, unless debugging.
    quiet = logging.DEBUG if level == "debug" else logging.WARNING
    for name in ("aiohttp", "sqlalchemy", "alembic", "aiosqlite", "asyncio"):
        logging.getLogger(name).setLevel(quiet)
    server = logging.getLogger("aiohttp.server")
    if not any(isinstance(f, MalformedRequests) for f in server.filters):
        server.addFilter(MalformedRequests())


class MalformedRequests(logging.Filter):
    """aiohttp logs each request it cannot parse (bad framing, a TLS handshake
    on the plain port, oversized headers) as an error with a traceback; a
    client sending garbage would fill the log. Each becomes one warning line,
    without a traceback, at most once per client address per minute, with a
    count of those in between."""

    def __init__(self) -> None:
        super().__init__()
        self._throttle = Throttle(60.0)

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if not isinstance(exc, HttpProcessingError):
            return True
        client = str(record.args[0]) if isinstance(record.args, tuple) and record.args else "?"
        before = self._throttle.admit(client)
        if before is None:
            return False
        record.msg, record.args, record.exc_info, record.exc_text = (
            "malformed request refused",
            (),
            None,
            None,
        )
        record.levelno, record.levelname = logging.WARNING, "WARNING"
        record.client, record.why, record.refused_before = client, _first_line(exc), before
        return True


def _first_line(exc: HttpProcessingError) -> str:
    return (exc.message or type(exc).__name__).strip().splitlines()[0]


class Throttle:
    """At most one log line per key (a client address, say) per ``window_s``,
    so that a flood cannot flood the log; the lines in between are counted."""

    def __init__(self, window_s: float, *, max_keys: int = 10_000) -> None:
        self.window_s = window_s
        self._max_keys = max_keys
        self._seen: dict[str, list[float]] = {}  # key -> [window start, events in it]

    def admit(self, key: str) -> int | None:
        """``None`` when ``key`` was logged within the window (this event is
        counted); otherwise the events of its previous window (0 if none), and a
        new window starts."""
        now = time.monotonic()
        entry = self._seen.get(key)
        if entry is not None and now - entry[0] < self.window_s:
            entry[1] += 1
            return None
        if len(self._seen) > self._max_keys:
            self._seen.clear()
        self._seen[key] = [now, 1]
        return 0 if entry is None else entry[1]
