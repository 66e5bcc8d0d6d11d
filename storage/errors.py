"""Errors raised by storage backends.

    StorageError
    ├── InvalidStorageURL     the URL names no backend, or is malformed (a bug in configuration)
    └── StorageUnavailable    the backend cannot be reached or refused the operation

Every driver error is wrapped into ``StorageUnavailable`` at the backend's
boundary (``raise StorageUnavailable(...) from exc``); anything else escaping a
backend is a bug.
"""

from __future__ import annotations

__all__ = ["InvalidStorageURL", "StorageError", "StorageUnavailable", "in_our_words"]


class StorageError(Exception):
    """Base class of every storage error."""


class InvalidStorageURL(StorageError, ValueError):
    """The storage URL cannot be used; the message says why and what is valid."""


class StorageUnavailable(StorageError):
    """The backend could not complete the operation; retrying later may succeed.

    The message says what happened and what to do, in the registry's words
    (it is what a client is answered); ``driver`` keeps the driver's own text,
    for the log."""

    def __init__(self, message: str, *, retry_after: float = 1.0, driver: str | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after
        self.driver = driver


_UNWRITABLE = ("disk i/o", "readonly", "read-only", "unable to open", "disk is full", "no space")


def in_our_words(exc: BaseException) -> str:
    """What a driver's error means, and what to do about it, without its text."""
    text = str(exc).lower()
    if "statement timeout" in text or "canceling statement" in text:
        return (
            "a statement ran past its statement timeout (REGISTRY_DB_STATEMENT_TIMEOUT): the database "
            "is overloaded or a table is locked; retry"
        )
    if "deadlock" in text or "could not serialize" in text:
        return "the write collided with a concurrent one; retry"
    if "locked" in text or "busy" in text:
        return (
            "the database file is locked by another writer; retry, and let only one registry "
            "process use a SQLite file"
        )
    if any(
        m in text for m in ("disk i/o", "readonly", "read-only", "unable to open", "disk is full", "no space")
    ):
        return "the database file cannot be written; check its disk space, permissions and directory"
    if "no such table" in text or "no such column" in text or "does not exist" in text:
        return (
            "the database's tables are not the ones this version expects; run `model-registry migrate`, "
            "and check that nothing else changed them"
        )
    if "password" in text or "authentication" in text or "role " in text:
        return "the database refused the credentials of the storage URL; check its user and password"
    if isinstance(exc, ConnectionError | OSError) or "connect" in text or "closed" in text:
        return "the database server cannot be reached or dropped the connection; check that it is running"
    return "the database refused the operation; retry, and see the registry's log for the database's reason"
