"""Changes as a feed: revisions, recent history, and the watchers of them.

Every change the registry makes to an instance's membership or health (and
every operator change) is published as an ``Event`` with a revision one higher
than the last. The feed keeps the last ``history`` events, so that a watcher
that lost its connection resumes where it left off (``since``), and hands each
new event to the watchers subscribed to it, each through a bounded queue: a
watcher too slow to keep up is cut off (``Overflow``) rather than let its queue
grow without limit.

Plain heartbeats are not events: they change no membership or health, and a
fleet of thousands beats thousands of times a second.

Revisions start at the process's start time in microseconds, so they keep
increasing across restarts: a revision from before a restart is older than any
the new process hands out, and it is answered with a resync.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from model_registry_sdk.record import Change, ModelInstance

__all__ = ["Change", "Closed", "Event", "Feed", "Overflow", "Watcher"]


@dataclass(frozen=True, slots=True)
class Event:
    revision: int
    type: Change
    instance: ModelInstance


class Overflow(Exception):
    """The watcher fell more than its queue's size behind."""


class Closed(Exception):
    """The feed was closed (the registry is shutting down)."""


@dataclass(eq=False)
class Watcher:
    """One subscriber: the events of one model (or all), queued until read."""

    model_name: str | None
    limit: int
    _queue: deque[Event] = field(default_factory=deque)
    _ready: asyncio.Event = field(default_factory=asyncio.Event)
    overflowed: bool = False
    closed: bool = False
    missed: bool = False  # closed because changes may have been missed (``Feed.gap``)
    #: Called once when the watcher overflows (to stop a sender stuck writing).
    on_overflow: Callable[[], object] | None = None

    def offer(self, event: Event) -> None:
        if self.overflowed or (self.model_name is not None and event.instance.model_name != self.model_name):
            return
        if len(self._queue) >= self.limit:
            self.overflowed = True
            self._queue.clear()  # nothing more will be read; free it now
            if self.on_overflow is not None:
                self.on_overflow()
        else:
            self._queue.append(event)
        self._ready.set()

    def close(self) -> None:
        self.closed = True
        self._ready.set()

    async def next(self) -> Event:
        """The next event; raises ``Overflow`` or ``Closed`` when there will be none."""
        while True:
            if self.overflowed:
                raise Overflow
            if self.closed:
                raise Closed
            if self._queue:
                return self._queue.popleft()
            self._ready.clear()
            await self._ready.wait()

    @property
    def backlog(self) -> int:
        return len(self._queue)


class Feed:
    def __init__(self, history: int = 10_000, start: int | None = None) -> None:
        self.revision = time.time_ns() // 1000 if start is None else start
        self._history: deque[Event] = deque(maxlen=max(1, history))
        self._watchers: set[Watcher] = set()
        self._tick = asyncio.Event()
        self.closed = False

    def publish(self, change: Change, instance: ModelInstance) -> Event:
        self.revision += 1
        event = Event(self.revision, change, instance)
        self._history.append(event)
        for watcher in self._watchers:
            watcher.offer(event)
        self._wake_pollers()
        return event

    def _wake_pollers(self) -> None:
        """Wake the long-pollers: they look at the history themselves."""
        self._tick.set()
        self._tick = asyncio.Event()

    # -- resuming ------------------------------------------------------------

    def since(self, revision: int, model_name: str | None = None) -> list[Event] | None:
        """The events after ``revision`` (of one model, or all), or ``None``
        when the history no longer reaches back to it (or it is not one this
        feed handed out): the caller must start over from a snapshot."""
        if revision > self.revision:
            return None
        oldest = self._history[0].revision if self._history else self.revision + 1
        if revision < oldest - 1:
            return None
        return [e for e in self._after(revision) if model_name is None or e.instance.model_name == model_name]

    def _after(self, revision: int) -> Iterator[Event]:
        # The history is ordered; walk it from the newest end, since resumes
        # and long-polls almost always ask for the last few events.
        newer: list[Event] = []
        for event in reversed(self._history):
            if event.revision <= revision:
                break
            newer.append(event)
        return reversed(newer)

    # -- watching ------------------------------------------------------------

    @contextmanager
    def watch(self, model_name: str | None = None, limit: int = 1000) -> Iterator[Watcher]:
        """Subscribe for the duration of the ``with`` block."""
        watcher = Watcher(model_name, max(1, limit))
        if self.closed:
            watcher.close()
        self._watchers.add(watcher)
        try:
            yield watcher
        finally:
            self._watchers.discard(watcher)

    @property
    def watchers(self) -> int:
        return len(self._watchers)

    async def wait(self, after: int, model_name: str | None, timeout: float) -> None:
        """Return once an event after revision ``after`` (of ``model_name``, or
        any) exists, or after ``timeout`` seconds, or when the feed closes."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not self.closed:
            changes = self.since(after, model_name)
            if changes is None or changes:
                return  # something new, or a revision we cannot judge: answer now
            remaining = deadline - loop.time()
            if remaining <= 0:
                return
            try:
                await asyncio.wait_for(self._tick.wait(), remaining)
            except TimeoutError:
                return

    def gap(self) -> None:
        """Changes may have been missed (another replica's, while its
        notifications could not be heard): no history before now can be
        trusted. Resumes from before now get a resync, watchers are cut off
        to reconnect (``Watcher.missed``), long-polls answer."""
        self.revision += 1
        self._history.clear()
        for watcher in self._watchers:
            watcher.missed = True
            watcher.close()
        self._wake_pollers()

    def close(self) -> None:
        """Wake every watcher and long-poller for the last time (shutdown)."""
        self.closed = True
        for watcher in self._watchers:
            watcher.close()
        self._tick.set()
