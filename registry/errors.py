"""Expected outcomes of registry operations, as exceptions.

    RegistryError
    ├── InstanceNotFound     the identity names no registered instance
    ├── NoHealthyInstance    the model has no instance that selection may pick
    └── InvalidInstance      the input breaks a rule; ``problems`` names each field

``storage.StorageUnavailable`` passes through unchanged: it is not an outcome
of the request but of the backend, and callers answer it differently (retry).
"""

from __future__ import annotations

from storage import InstanceKey

__all__ = ["InstanceNotFound", "InvalidInstance", "NoHealthyInstance", "RegistryError"]


class RegistryError(Exception):
    """Base class of every registry outcome that is not a success."""


class InstanceNotFound(RegistryError, LookupError):
    def __init__(self, key: InstanceKey) -> None:
        super().__init__(f"no instance {key} is registered")
        self.key = key


class NoHealthyInstance(RegistryError, LookupError):
    def __init__(self, model_name: str) -> None:
        super().__init__(f"model {model_name!r} has no healthy, enabled instance with a weight above 0")
        self.model_name = model_name


class InvalidInstance(RegistryError, ValueError):
    """Input that breaks a rule. ``problems`` is a list of (field, message)."""

    def __init__(self, problems: list[tuple[str, str]]) -> None:
        self.problems = problems
        super().__init__("; ".join(f"{field}: {message}" for field, message in problems))

    @property
    def field(self) -> str:
        return self.problems[0][0]
