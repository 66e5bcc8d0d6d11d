"""Pluggable storage behind one contract (``storage.base.Storage``).

``open_storage(url)`` is the only place a backend is chosen: by the URL's
scheme. Drivers are imported lazily, so a deployment on SQLite never imports
asyncpg and vice versa.
"""

from __future__ import annotations

from .base import Storage
from .errors import InvalidStorageURL, StorageError, StorageUnavailable
from .model import InstanceKey, ModelInstance, ModelSummary

__all__ = [
    "InstanceKey",
    "InvalidStorageURL",
    "ModelInstance",
    "ModelSummary",
    "SCHEMES",
    "Storage",
    "StorageError",
    "StorageUnavailable",
    "open_storage",
    "redact",
]

#: scheme -> example URL, for error messages and --help.
SCHEMES = {
    "memory": "memory://",
    "sqlite+aiosqlite": "sqlite+aiosqlite:///registry.db",
}


def open_storage(url: str, *, migrate: bool = True) -> Storage:
    """Return an unopened backend for ``url``; use it as ``async with open_storage(url) as s:``.

    ``migrate=False`` skips applying migrations on open (for tools that only
    read). Raises ``InvalidStorageURL`` naming the valid schemes.
    """
    scheme, sep, rest = url.partition("://")
    if not sep or scheme not in SCHEMES:
        valid = ", ".join(SCHEMES.values())
        raise InvalidStorageURL(f"unsupported storage URL {url!r}: use one of {valid}")
    if scheme == "memory":
        from .memory import MemoryStorage

        return MemoryStorage()
    if not rest.startswith("/") or rest in ("/", "/:memory:"):
        raise InvalidStorageURL(
            f"storage URL {url!r} names no database file: use sqlite+aiosqlite:///PATH "
            "(three slashes and a relative path, four for an absolute one)"
        )
    from .sql import SQLStorage

    return SQLStorage(url, migrate=migrate)


def redact(url: str) -> str:
    """``url`` with any password replaced by ``***``, for logs and messages."""
    scheme, sep, rest = url.partition("://")
    credentials, at, location = rest.rpartition("@")
    if not sep or not at or ":" not in credentials:
        return url
    user = credentials.split(":", 1)[0]
    return f"{scheme}://{user}:***@{location}"
