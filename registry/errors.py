"""Expected outcomes of registry operations, as exceptions.

    RegistryError                  (model_registry_sdk.errors: one tree for the
    └── RegistryClientError         server and its clients, one class per meaning)
        ├── InstanceNotFound       the identity names no registered instance
        ├── NoHealthyInstance      the model has no instance that selection may pick
        │   └── AllCoolingDown     503: it has some, but every one is cooling down
        ├── InstanceLimit          no room for a new instance (507, or 429 for its model)
        └── InvalidRequest
            └── InvalidInstance    the input breaks a rule; ``problems`` names each field

``storage.StorageUnavailable`` passes through unchanged: it is not an outcome
of the request but of the backend, and callers answer it differently (retry).
"""

from __future__ import annotations

from model_registry_sdk.errors import (
    AllCoolingDown,
    InstanceLimit,
    InstanceNotFound,
    InvalidRequest,
    NoHealthyInstance,
    RegistryClientError,
    RegistryError,
)

__all__ = [
    "InstanceLimit",
    "InstanceNotFound",
    "InvalidInstance",
    "InvalidRequest",
    "NoHealthyInstance",
    "AllCoolingDown",
    "RegistryClientError",
    "RegistryError",
]


class InvalidInstance(InvalidRequest):
    """Input that breaks a rule. ``problems`` is a list of (field, message)."""

    def __init__(self, problems: list[tuple[str, str]]) -> None:
        self.problems = problems
        detail = "; ".join(f"{field}: {message}" for field, message in problems)
        super().__init__(422, "invalid_input", detail, problems[0][0])
        self.args = (detail,)
