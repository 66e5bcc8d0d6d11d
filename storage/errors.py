"""Errors raised by storage backends.

    StorageError
    ├── InvalidStorageURL     the URL names no backend, or is malformed (a bug in configuration)
    └── StorageUnavailable    the backend cannot be reached or refused the operation

Every driver error is wrapped into ``StorageUnavailable`` at the backend's
boundary (``raise StorageUnavailable(...) from exc``); anything else escaping a
backend is a bug.
"""

from __future__ import annotations

__all__ = ["InvalidStorageURL", "StorageError", "StorageUnavailable"]


class StorageError(Exception):
    """Base class of every storage error."""


class InvalidStorageURL(StorageError, ValueError):
    """The storage URL cannot be used; the message says why and what is valid."""


class StorageUnavailable(StorageError):
    """The backend could not complete the operation; retrying later may succeed."""

    def __init__(self, message: str, *, retry_after: float = 1.0) -> None:
        super().__init__(message)
        self.retry_after = retry_after
