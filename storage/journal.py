"""``Journal``: keeps a SQLite file in step with an ``InstanceIndex``.

The index is the truth the registry serves from; the file is what survives the
process. Every change marks its key; a single writer task writes the index's
current row for each marked key (or deletes it, if the key is gone), many keys
to one transaction:

- *urgent* keys (registrations, deregistrations, health transitions): the
  caller waits until the transaction holding its key has committed. Callers
  arriving while a transaction is being written share the next one (group
  commit), so 64 concurrent registrations cost a handful of fsyncs, not 64;
- *lazy* keys (heartbeats that change no state): nobody waits; they are written
  with the next transaction, at the latest ``flush_interval`` seconds later.

So a crash loses at most the last ``flush_interval`` seconds of heartbeat
timestamps and reported loads, never an acknowledged registration,
deregistration or health transition. A failed transaction fails its waiters
(503) and leaves its keys marked, to be written again.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import logging
import operator
import time
from collections.abc import Callable, Iterable, Iterator
from datetime import datetime, timezone
from typing import Any

import orjson
from sqlalchemy import JSON, Boolean, Column
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine

from model_registry_sdk.record import InstanceKey, ModelInstance

from .errors import StorageUnavailable, in_our_words
from .index import InstanceIndex
from .schema import ExactFloat, UTCDateTime, instances
from .tasks import cancelled

__all__ = ["Journal", "beat_rows", "mark_rows", "record_of", "row_of"]

log = logging.getLogger(__name__)

#: The table's columns, in its order (which is the record's: ``tests/storage`` checks it).
COLUMNS = tuple(column.name for column in instances.c)
QUOTED_COLUMNS = tuple(f'"{c}"' for c in COLUMNS)  # "check" is an SQL keyword
_UPSERT = (
    f"INSERT INTO instances ({', '.join(QUOTED_COLUMNS)}) VALUES ({', '.join('?' * len(COLUMNS))}) "
    "ON CONFLICT (model_name, host, port) DO UPDATE SET "
    + ", ".join(f"{c} = excluded.{c}" for c in QUOTED_COLUMNS[3:])
)
_DELETE = "DELETE FROM instances WHERE model_name = ? AND host = ? AND port = ?"
# A key whose only change since its last write is heartbeats needs only these:
# a beat that changes health (a revival) is urgent, and so is written whole.
_BEAT = (
    "UPDATE instances SET last_heartbeat = ?, queue_length = ?, waiting = ?, running = ?, "
    "kv_cache_usage = ?, load_at = ? WHERE model_name = ? AND host = ? AND port = ?"
)
# An expiry (the checker's mark) changes only these: a fifth of a whole row's
# parameters, which counts when a mass failure marks a million (a silent
# record's heartbeat columns were written long ago; a beat still pending is
# written as one, beside it).
_MARK = (
    "UPDATE instances SET healthy = ?, unhealthy_since = ?, state_reason = ? "
    "WHERE model_name = ? AND host = ? AND port = ?"
)
# A sweep that marks many (a mass failure's million) is written as one statement
# over the table, not a row a record: run after the transaction's beats (so each
# row's last beat is the index's), it finds exactly the rows the sweep marked in
# the index, and the whole rows written after it put back any the index changed
# meanwhile (see ``Journal.expired``). It sets what ``InstanceIndex.expire`` sets.
_EXPIRE = (
    "UPDATE instances SET healthy = 0, unhealthy_since = ?, state_reason = ? "
    "WHERE healthy = 1 AND check_healthy = 1 AND ready = 1 AND last_heartbeat < ?"
)
_SORT_RUN = 2000  # keys sorted at once (about a millisecond)
_CHUNK = 1000  # rows per statement: bounds how long the event loop spends building one


def _text(moment: datetime | None) -> str | None:
    """SQLAlchemy's SQLite DATETIME format, in UTC, so both read the same rows."""
    if moment is None:
        return None
    if moment.tzinfo is timezone.utc:  # always, from the registry: one call, no conversions
        return moment.isoformat(" ", "microseconds")[:26]  # without "+00:00"
    return moment.astimezone(timezone.utc).replace(tzinfo=None).isoformat(sep=" ", timespec="microseconds")


def _json(value: dict | None) -> str | None:
    return None if value is None else orjson.dumps(value).decode()


def _writer(column: Column) -> Callable[[Any], Any] | None:
    """How a record's value of ``column`` is written to a row (``None``: as it is)."""
    kind = column.type
    if isinstance(kind, UTCDateTime):
        return _text
    if isinstance(kind, JSON):
        return _json
    return None


def _reading(column: Column, value: str) -> str:
    """Python for a record's value of ``column``, from the row's, named ``value``:
    the reverse of ``_writer`` (a NULL is read without a call)."""
    kind = column.type
    if isinstance(kind, UTCDateTime):  # parsed with its zone in one call: faster than replace(tzinfo=)
        return f'None if {value} is None else _parse({value} + "+00:00")'
    if isinstance(kind, JSON):
        return f"None if {value} is None else _loads({value})"
    if isinstance(kind, ExactFloat):
        return f"float({value})" if not column.nullable else f"None if {value} is None else float({value})"
    if isinstance(kind, Boolean):
        return f"{value} == 1"
    return value


def _reader() -> Callable[[Any], ModelInstance]:
    """``record_of``, written out for the table's columns (as ``dataclasses`` writes
    an ``__init__``): a start-up reads a million rows, and each value converted in
    place rather than by a loop of calls takes a microsecond off each row."""
    values = [f"v{i}" for i in range(len(instances.c))]
    source = (
        "def record_of(row):\n"
        f"    {', '.join(values)} = row\n"
        f"    return ModelInstance({', '.join(map(_reading, instances.c, values))})\n"
    )
    namespace = {"ModelInstance": ModelInstance, "_parse": datetime.fromisoformat, "_loads": orjson.loads}
    exec(source, namespace)  # noqa: S102 (the source is the table's, not input)
    reader = namespace["record_of"]
    reader.__doc__ = "The record a journal row (``COLUMNS``' order) holds."
    return reader  # type: ignore[no-any-return]


# Derived from the one table definition: (position, conversion) for each column
# written converted, so a row is the record's values with only those converted.
_WRITERS = [(i, w) for i, w in enumerate(map(_writer, instances.c)) if w is not None]
record_of = _reader()
_values = operator.attrgetter(*COLUMNS)


def row_of(record: ModelInstance) -> tuple:
    """The journal's row for ``record`` (``COLUMNS``' order)."""
    row = list(_values(record))
    for i, write in _WRITERS:
        row[i] = write(row[i])
    return tuple(row)


def mark_rows(records: dict[InstanceKey, ModelInstance], keys: list[InstanceKey]) -> list[tuple]:
    """``_MARK``'s parameters for those of ``keys`` still in ``records``. One
    sweep marks them all at the same moment: its text is formatted once."""
    rows = []
    get = records.get
    moment: datetime | None = None
    text = None
    for key in keys:
        r = get(key)
        if r is None:
            continue  # deleted since: its key was marked whole, and its row is deleted
        since = r.unhealthy_since
        if since is not moment or text is None:
            moment, text = since, _text(since)
        rows.append((r.healthy, text, r.state_reason, *key))
    return rows


def beat_rows(records: dict[InstanceKey, ModelInstance], keys: Iterable[InstanceKey]) -> list[tuple]:
    """``_BEAT``'s parameters for those of ``keys`` still in ``records``.

    A flush writes thousands of these a second, so the timestamp is not
    formatted whole each time (1.5 µs): the text of its second is formatted
    once per flush and the microseconds appended.
    """
    rows = []
    seconds: dict[float, str] = {}
    get = records.get
    for key in keys:
        r = get(key)
        if r is None:
            continue  # deleted since: its key was marked whole, and its row is deleted
        moment = r.last_heartbeat
        if moment is None or moment.tzinfo is not timezone.utc:
            text = _text(moment)
        else:
            second = moment.timestamp() // 1
            prefix = seconds.get(second)
            if prefix is None:
                seconds[second] = prefix = moment.isoformat(" ", "microseconds")[:20]
            text = f"{prefix}{moment.microsecond:06d}"
        load_at = r.load_at
        rows.append(
            (
                text,
                r.queue_length,
                r.waiting,
                r.running,
                r.kv_cache_usage,
                None if load_at is None else _text(load_at),
                r.model_name,
                r.host,
                r.port,
            )
        )
    return rows


class Journal:
    def __init__(self, index: InstanceIndex, engine: AsyncEngine, flush_interval: float) -> None:
        self._index = index
        self._engine = engine
        self.flush_interval = flush_interval
        self._urgent: set[InstanceKey] = set()  # whole rows, someone waiting
        self._lazy: set[InstanceKey] = set()  # whole rows, nobody waiting (a retry)
        self._beats: set[InstanceKey] = set()  # only heartbeat columns changed
        self._marks: set[InstanceKey] = set()  # only health columns, someone waiting
        self._expiries: list[tuple[str | None, str | None, str | None]] = []  # _EXPIRE's, in order
        # Keys written whole since a sweep began (``sweeping``), until its expiry is queued.
        self._written: set[InstanceKey] | None = None
        self._waiters: list[asyncio.Future[None]] = []
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.transactions = 0
        #: Failed transactions, and the seconds the written ones took in all: for the metrics.
        self.failures = 0
        self.seconds = 0.0
        #: False from a failed transaction until one succeeds.
        self.healthy = True

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="sqlite-journal")

    async def stop(self) -> None:
        """Stop the writer after one last transaction: a clean stop loses nothing."""
        await cancelled([self._task])
        self._task = None
        with contextlib.suppress(StorageUnavailable):
            await self._write_pending()

    @property
    def pending(self) -> int:
        """Records waiting to be written (whole, or only their heartbeat columns)."""
        return len(self._urgent) + len(self._lazy) + len(self._beats) + len(self._marks) + len(self._expiries)

    def later(self, key: InstanceKey) -> None:
        """``key`` was beaten: its heartbeat columns may wait for the next flush."""
        self._beats.add(key)

    def behind(self, keys: Iterable[InstanceKey]) -> None:
        """Write ``keys`` whole with the next transaction, nobody waiting (what a
        failed or abandoned sweep changed and did not commit)."""
        self._lazy.update(keys)
        self._wake.set()

    async def now(self, keys: Iterable[InstanceKey], *, marked: bool = False) -> None:
        """Return once the current state of ``keys`` is committed to the file.
        ``marked``: all they changed is health (``healthy``, ``unhealthy_since``,
        ``state_reason``), as an expiry does: written as such (with their beats
        pending, if any, as beats)."""
        (self._marks if marked else self._urgent).update(keys)
        await self._committed()

    def sweeping(self) -> None:
        """A sweep begins that may end in ``expired``: note the keys written whole from
        now on (see there), until ``swept``."""
        self._written = set()

    def swept(self) -> None:
        self._written = None

    async def expired(self, cutoff: datetime, now: datetime, reason: str | None) -> None:
        """Return once an expiry is committed: every record expirable (healthy,
        checked, ready) and last heard before ``cutoff`` marked unhealthy since
        ``now`` for ``reason``, which is what ``InstanceIndex.expire`` did, all of
        it, since ``sweeping`` (a sweep stopped part way has its keys written
        ``behind``). One statement for the million a mass failure marks: 1.5 s of the
        database's time, without the interpreter, instead of ten seconds of rows.

        Its transaction writes the beats first (so that each row's last beat is the
        index's), then the statement, then whole rows, among them every key written
        whole since the sweep began: a record the index changed meanwhile (revived,
        or filed again where the walk had passed) may match the statement without
        having been marked, and its row, written again after it, is as the index has it."""
        written, self._written = self._written, None
        if written:
            self._urgent |= written
        self._expiries.append((_text(now), reason, _text(cutoff)))
        await self._committed()

    async def _committed(self) -> None:
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        self._wake.set()
        await waiter

    async def _run(self) -> None:
        while True:
            # (asyncio.timeout, not wait_for: on 3.11 wait_for may swallow the stop's
            # cancellation when the wake comes at the same moment, and stop() would hang)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.flush_interval):
                    await self._wake.wait()
            self._wake.clear()
            try:
                await self._write_pending()
            except StorageUnavailable as exc:
                log.warning("could not write to the database; will retry: %s", exc)
                await asyncio.sleep(min(1.0, self.flush_interval))
            except Exception:  # a bug: keep the writer alive, say so loudly
                log.exception("the journal writer failed; it will try again")
                await asyncio.sleep(min(1.0, self.flush_interval))

    async def _write_pending(self) -> None:
        keys = self._urgent | self._lazy if self._lazy else self._urgent
        marks = self._marks - keys if keys else self._marks  # a key written whole needs no mark
        beats = self._beats - keys if keys else self._beats  # ... nor a beat
        waiters, expiries = self._waiters, self._expiries
        self._urgent, self._lazy, self._beats, self._marks, self._waiters = set(), set(), set(), set(), []
        self._expiries = []
        if not keys and not beats and not marks and not expiries:
            _settle(waiters, None)
            return
        started = time.perf_counter()
        try:
            await self._write(keys, beats, marks, expiries)
        except asyncio.CancelledError:
            self._lazy |= keys | beats | marks  # stop() writes them
            self._expiries[:0] = expiries
            _settle(waiters, StorageUnavailable("the registry is shutting down; retry"))
            raise
        except Exception as exc:
            self.healthy = False
            self.failures += 1
            self._lazy |= keys | beats | marks  # written again, whole, with the next transaction
            self._expiries[:0] = expiries  # (before any made since: in their order)
            _settle(waiters, exc if isinstance(exc, StorageUnavailable) else StorageUnavailable(str(exc)))
            raise
        self.seconds += time.perf_counter() - started
        self.healthy = True
        _settle(waiters, None)

    async def _write(
        self,
        keys: set[InstanceKey],
        beats: set[InstanceKey],
        marks: set[InstanceKey],
        expiries: list[tuple[str | None, str | None, str | None]],
    ) -> None:
        records = self._index.records
        present = [k for k in keys if k in records]
        if self._written is not None:
            self._written.update(present)
        gone = [tuple(k) for k in keys if k not in records]
        beaten = list(beats)
        marked = await _in_key_order(marks) if marks else iter(())
        try:
            async with self._engine.begin() as conn:
                # Rows are built from the index as it is now, chunk by chunk: the beats
                # first, then the expiries (which read the beats), then whole rows.
                for start in range(0, len(beaten), _CHUNK):
                    rows = beat_rows(records, beaten[start : start + _CHUNK])
                    if rows:
                        await conn.exec_driver_sql(_BEAT, rows)
                for expiry in expiries:
                    await conn.exec_driver_sql(_EXPIRE, expiry)
                for start in range(0, len(present), _CHUNK):
                    rows = [row_of(records[k]) for k in present[start : start + _CHUNK] if k in records]
                    await conn.exec_driver_sql(_UPSERT, rows)
                while chunk := list(itertools.islice(marked, _CHUNK)):
                    rows = mark_rows(records, chunk)
                    if rows:
                        await conn.exec_driver_sql(_MARK, rows)
                if gone:
                    await conn.exec_driver_sql(_DELETE, gone)
        except (SQLAlchemyError, OSError) as exc:
            cause = getattr(exc, "orig", None) or exc
            raise StorageUnavailable(
                f"sqlite storage failed to write: {in_our_words(cause)}", driver=str(cause)
            ) from exc
        self.transactions += 1


async def _in_key_order(keys: set[InstanceKey]) -> Iterator[InstanceKey]:
    """``keys`` in primary-key order, for the file's pages to be met in order: a
    sweep's hundred thousand marks, in a set's order, cost five times as much
    (random pages). Sorted in runs with a yield between them (50,000 at once
    would hold the loop for 35 ms), then merged as they are written."""
    listed = list(keys)
    runs = []
    for start in range(0, len(listed), _SORT_RUN):
        runs.append(sorted(listed[start : start + _SORT_RUN]))
        await asyncio.sleep(0)
    return heapq.merge(*runs)


def _settle(waiters: list[asyncio.Future[None]], failure: BaseException | None) -> None:
    for waiter in waiters:
        if waiter.done():
            continue
        if failure is None:
            waiter.set_result(None)
        else:
            waiter.set_exception(failure)
