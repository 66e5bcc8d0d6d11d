"""Pluggable storage behind one contract (``storage.base.Storage``).

``open_storage(url)`` is the only place a backend is chosen: by the URL's
scheme. Drivers are imported lazily, so a deployment on SQLite never imports
asyncpg and vice versa.
"""

from __future__ import annotations

from model_registry_sdk.record import InstanceKey, ModelInstance, ModelSummary

from .base import Census, Storage, StoredToken
from .errors import InvalidStorageURL, StorageError, StorageUnavailable
from .options import PoolOptions
from .readonly import Snapshot

__all__ = [
    "Census",
    "InstanceKey",
    "InvalidStorageURL",
    "ModelInstance",
    "ModelSummary",
    "PoolOptions",
    "SCHEMES",
    "Snapshot",
    "Storage",
    "StoredToken",
    "StorageError",
    "StorageUnavailable",
    "open_storage",
    "redact",
]

#: scheme -> example URL, for error messages and --help.
SCHEMES = {
    "memory": "memory://",
    "sqlite+aiosqlite": "sqlite+aiosqlite:///registry.db",
    "postgresql+asyncpg": "postgresql+asyncpg://USER:PASSWORD@HOST:5432/DATABASE",
}


def open_storage(
    url: str,
    *,
    migrate: bool = True,
    pool: PoolOptions | None = None,
    flush_interval: float | None = None,
) -> Storage:
    """Return an unopened backend for ``url``; use it as ``async with open_storage(url) as s:``.

    ``migrate=False`` skips applying migrations on open (for tools that only
    read); ``pool`` tunes PostgreSQL's connection pool and timeouts;
    ``flush_interval`` bounds how long SQLite may hold heartbeats before
    writing them (what a crash can lose). Raises
    ``InvalidStorageURL`` naming the valid schemes.
    """
    scheme, sep, rest = url.partition("://")
    if not sep or scheme not in SCHEMES:
        valid = ", ".join(SCHEMES.values())
        raise InvalidStorageURL(f"unsupported storage URL {redact(url)!r}: use one of {valid}")
    if scheme == "memory":
        from .memory import MemoryStorage

        return MemoryStorage()
    if scheme == "postgresql+asyncpg":
        if not rest.strip("/"):
            raise InvalidStorageURL(f"storage URL {redact(url)!r} names no server: use {SCHEMES[scheme]}")
        from .postgres import PostgresStorage

        if flush_interval is None:
            return PostgresStorage(url, migrate=migrate, pool=pool)
        return PostgresStorage(url, migrate=migrate, pool=pool, flush_interval=flush_interval)
    if not rest.startswith("/") or rest in ("/", "/:memory:"):
        raise InvalidStorageURL(
            f"storage URL {url!r} names no database file: use sqlite+aiosqlite:///PATH "
            "(three slashes and a relative path, four for an absolute one)"
        )
    from .sqlite import SQLiteStorage

    if flush_interval is None:
        return SQLiteStorage(url, migrate=migrate)
    return SQLiteStorage(url, migrate=migrate, flush_interval=flush_interval)


def redact(url: str) -> str:
    """``url`` with any password replaced by ``***``, for logs and messages."""
    scheme, sep, rest = url.partition("://")
    if not sep:  # a misspelt URL ("postgres:/user:pw@db") may still hold a password
        scheme, rest = "", url
    credentials, at, location = rest.rpartition("@")
    if not at or ":" not in credentials:
        return url
    user = credentials.split(":", 1)[0]
    return f"{scheme}{sep}{user}:***@{location}"
