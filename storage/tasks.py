"""Stopping background tasks: cancel, then wait for each to finish unwinding."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterable

__all__ = ["cancelled"]


async def cancelled(tasks: Iterable[asyncio.Task[object] | None]) -> None:
    """Cancel every task given (``None`` is skipped), then wait for each: when
    this returns, none of them runs any more. Cancelling all first lets them
    unwind together rather than one after another."""
    running = [task for task in tasks if task is not None]
    for task in running:
        task.cancel()
    for task in running:
        with contextlib.suppress(asyncio.CancelledError):
            await task
