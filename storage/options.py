"""Tuning for backends that hold a connection pool (PostgreSQL).

Every bound is finite, so that a slow or unreachable database turns into a
``StorageUnavailable`` (503) within a known time rather than a hang.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["PoolOptions"]


@dataclass(frozen=True, slots=True)
class PoolOptions:
    #: Connections kept open per process.
    pool_size: int = 10
    #: Extra connections opened under load, closed when idle.
    max_overflow: int = 10
    #: Seconds a request waits for a free connection before 503.
    pool_timeout: float = 5.0
    #: Seconds to establish a new connection.
    connect_timeout: float = 5.0
    #: Seconds one statement may run (enforced by the server and, a second
    #: later, by the client, for a server that stopped answering).
    statement_timeout: float = 5.0
    #: Seconds one storage operation may take in all (pool wait, connect,
    #: statements), whatever else is slow.
    operation_timeout: float = 10.0

    def __post_init__(self) -> None:
        if self.pool_size < 1 or self.max_overflow < 0:
            raise ValueError("pool size must be at least 1 and overflow at least 0")
        if min(self.pool_timeout, self.connect_timeout, self.statement_timeout, self.operation_timeout) <= 0:
            raise ValueError("pool, connect and statement timeouts must be above 0 s")
