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
from typing import Any, TypeVar

from model_registry_sdk.record import Change, ModelInstance

__all__ = ["Change", "Closed", "Event", "Feed", "Overflow", "Watcher"]

T = TypeVar("T")


@dataclass(slots=True)  # not frozen, though never changed: a frozen one is made at twice the cost
class Event:
    revision: int
    type: Change
    instance: ModelInstance
    #: The event as sent to watchers, encoded once for all of them (``encoded``).
    wire: list[Any] = field(default_factory=list, compare=False, repr=False)

    def encoded(self, encode: Callable[[Event], T]) -> T:
        """The event encoded by ``encode``, the first time it is asked for: the
        same bytes for every watcher, however many there are (one encoding per event)."""
        wire = self.wire
        if not wire:
            wire.append(encode(self))
        return wire[0]


class Overflow(Exception):
    """The watcher fell more than its queue's size behind."""


class Closed(Exception):
    """The feed was closed (the registry is shutting down)."""


@dataclass(eq=False)
class Watcher:
    """One subscriber: the events of one model (or all), queued until read.

    The feed hands a watcher only the events of its model (``Feed.watch``)."""

    model_name: str | None
    limit: int
    _queue: deque[Event] = field(default_factory=deque)
    _ready: asyncio.Event = field(default_factory=asyncio.Event)
    overflowed: bool = False
    closed: bool = False
    missed: bool = False  # closed because changes may have been missed (``Feed.gap``)
    #: Called once when the watcher overflows (to stop a sender stuck writing).
    on_overflow: Callable[[], object] | None = None
    #: Delivers an event at once, when nothing is queued before it: ``True`` when it
    #: did (the watcher's sender need not wake), ``False`` to queue it as usual.
    sink: Callable[[Event], bool] | None = None

    def offer(self, event: Event) -> None:
        if self.overflowed:
            return
        if not self._queue and self.sink is not None and self.sink(event):
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
    """Watchers and long-polls are kept by the model they follow (``None``:
    every model), so a change reaches only its model's and the all-models
    ones, whatever else is open; and whether a model changed after a revision
    is one lookup (``_latest``), whatever the length of the history."""

    def __init__(self, history: int = 10_000, start: int | None = None) -> None:
        self.revision = time.time_ns() // 1000 if start is None else start
        self._history: deque[Event] = deque(maxlen=max(1, history))
        #: Each model's newest event still in the history (no entry: none is).
        self._latest: dict[str, int] = {}
        self._watchers: dict[str | None, set[Watcher]] = {}
        self._pollers: dict[str | None, set[asyncio.Future[None]]] = {}
        #: Called with each event as it is published (in this process or heard from another).
        self.listeners: list[Callable[[Event], object]] = []
        #: Called with the long-polls a change is about to wake, just before it wakes
        #: them: the HTTP layer answers them all in one go (``api.views.PollAnswers``).
        self.waking: Callable[[set[asyncio.Future[None]]], object] | None = None
        #: Open watchers and waiting long-polls, for the caps on each.
        self.watchers = 0
        self.polls = 0
        self.closed = False

    def publish(self, change: Change, instance: ModelInstance) -> Event:
        self.revision += 1
        event = Event(self.revision, change, instance)
        history = self._history
        if len(history) == history.maxlen:  # the oldest is about to go: so does its model's entry
            oldest = history[0]
            if self._latest.get(oldest.instance.model_name) == oldest.revision:
                del self._latest[oldest.instance.model_name]
        history.append(event)
        model_name = instance.model_name
        self._latest[model_name] = event.revision
        for listener in self.listeners:
            listener(event)
        if not self._watchers and not self._pollers:
            return event  # (nobody follows anything: a mass failure's million, with none open)
        for key in (model_name, None):
            watchers = self._watchers.get(key)
            if watchers:
                for watcher in watchers:
                    watcher.offer(event)
            pollers = self._pollers.pop(key, None)
            if pollers:
                if self.waking is not None:
                    self.waking(pollers)
                _wake(pollers)
        return event

    # -- resuming ------------------------------------------------------------

    def since(self, revision: int, model_name: str | None = None) -> list[Event] | None:
        """The events after ``revision`` (of one model, or all), or ``None``
        when the history no longer reaches back to it (or it is not one this
        feed handed out): the caller must start over from a snapshot."""
        if not self._reaches(revision):
            return None
        return [e for e in self._after(revision) if model_name is None or e.instance.model_name == model_name]

    def changed_since(self, revision: int, model_name: str | None = None) -> bool:
        """Whether ``since`` would not be empty: true too when it cannot tell."""
        if not self._reaches(revision):
            return True
        if model_name is None:
            return bool(self._history) and self._history[-1].revision > revision
        return self._latest.get(model_name, revision) > revision

    def _reaches(self, revision: int) -> bool:
        """Whether the history holds every event after ``revision``."""
        if revision > self.revision:
            return False
        oldest = self._history[0].revision if self._history else self.revision + 1
        return revision >= oldest - 1

    def _after(self, revision: int) -> Iterator[Event]:
        # The history is ordered; walk it from the newest end, since resumes
        # almost always ask for the last few events.
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
        watchers = self._watchers.setdefault(model_name, set())
        watchers.add(watcher)
        self.watchers += 1
        try:
            yield watcher
        finally:
            self.watchers -= 1
            watchers.discard(watcher)
            if not watchers and self._watchers.get(model_name) is watchers:
                del self._watchers[model_name]

    async def wait(
        self, after: int, model_name: str | None, timeout: float, woken: asyncio.Future[None] | None = None
    ) -> None:
        """Return once an event after revision ``after`` (of ``model_name``, or
        any) exists, or after ``timeout`` seconds, or when the feed closes, or
        when ``woken`` is done: the caller's own future, which it may complete
        itself (when its client goes, say), and which a change or the timeout
        completes; so one for this wait alone, never shared with another."""
        if self.closed or self.changed_since(after, model_name) or (woken is not None and woken.done()):
            return
        if woken is None:
            woken = asyncio.get_running_loop().create_future()
        pollers = self._pollers.setdefault(model_name, set())
        pollers.add(woken)
        self.polls += 1
        # A timer that answers, rather than ``asyncio.timeout``: ten thousand polls
        # woken by one change each cancel theirs, and this is the cheaper of the two.
        # (The future's loop, not asyncio.get_running_loop(): on 3.11 that is a getpid().)
        timer = woken.get_loop().call_later(timeout, _answer, woken)
        try:
            await woken
        finally:
            timer.cancel()
            self.polls -= 1
            pollers.discard(woken)
            if not pollers and self._pollers.get(model_name) is pollers:
                del self._pollers[model_name]

    def gap(self) -> None:
        """Changes may have been missed (another replica's, while its
        notifications could not be heard): no history before now can be
        trusted. Resumes from before now get a resync, watchers are cut off
        to reconnect (``Watcher.missed``), long-polls answer."""
        self.revision += 1
        self._history.clear()
        self._latest.clear()
        for watcher in self._every_watcher():
            watcher.missed = True
            watcher.close()
        self._wake_every_poller()

    def close(self) -> None:
        """Wake every watcher and long-poller for the last time (shutdown)."""
        self.closed = True
        for watcher in self._every_watcher():
            watcher.close()
        self._wake_every_poller()

    def _every_watcher(self) -> Iterator[Watcher]:
        for watchers in self._watchers.values():
            yield from watchers

    def _wake_every_poller(self) -> None:
        pollers, self._pollers = self._pollers, {}
        for waiting in pollers.values():
            _wake(waiting)


def _wake(pollers: set[asyncio.Future[None]]) -> None:
    for woken in pollers:
        _answer(woken)


def _answer(woken: asyncio.Future[None]) -> None:
    if not woken.done():
        woken.set_result(None)
