"""When to try again, and how long to wait: exponential backoff with full jitter."""

from __future__ import annotations

import random
from dataclasses import dataclass, field

__all__ = ["NO_RETRY", "Retry"]

#: Answers worth another attempt. 500 only for idempotent requests.
RETRY_STATUSES = frozenset({502, 503, 504})


@dataclass(frozen=True, slots=True)
class Retry:
    """Retry policy of a client.

    ``attempts`` bounds the tries of one call (first included); ``deadline``
    bounds the whole call, waits included; ``timeout`` bounds each attempt.
    The wait before retry *n* is uniform in [0, min(max_backoff, backoff * 2**n)]
    ("full jitter"), unless the registry sent ``Retry-After``, which is honoured
    as long as it fits in the deadline.
    """

    attempts: int = 5
    backoff: float = 0.1
    max_backoff: float = 2.0
    deadline: float = 10.0
    timeout: float = 3.0
    rng: random.Random = field(default_factory=random.Random, compare=False, repr=False)

    def __post_init__(self) -> None:
        if self.attempts < 1 or self.deadline <= 0 or self.timeout <= 0:
            raise ValueError("attempts must be at least 1, deadline and timeout above 0")

    def delay(self, retry_number: int, retry_after: float | None = None) -> float:
        if retry_after is not None:
            return max(0.0, retry_after)
        ceiling = min(self.max_backoff, self.backoff * 2**retry_number)
        return self.rng.uniform(0, ceiling)


#: One attempt, no waiting: for callers that run their own loop (HeartbeatAgent).
NO_RETRY = Retry(attempts=1)
