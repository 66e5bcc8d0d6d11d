"""``TimingWheel``: the records that can expire, by the second they were last heard.

The checker must find the silent records without walking every record. The
wheel files each expirable record (healthy, ``check_healthy``, ready, heard from) by
key in a bucket of one second, so a sweep visits only the buckets older than
its cutoff.

The wheel is lazy. A beat, the hottest path, leaves its record filed where it
was: at or before the second of its last beat. The census files it again
where its last beat puts it, walking only the buckets it is about to count
(``settle``): each record is filed about once per heartbeat timeout instead of
once per beat, and off the request path. Up to the last census's cutoff
(``settled``) the wheel is exact and kept so: there, each bucket holds exactly
the records last heard in it, and a beat or change of a record filed there
moves it at once (the index does, through ``file``/``unfile``).

Empty buckets go at once: an emptied dict keeps the table it grew to (a busy
second's: thousands of entries).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from datetime import datetime, timedelta, timezone

from model_registry_sdk.record import InstanceKey, ModelInstance

__all__ = ["DAWN", "TimingWheel", "expirable", "second_of"]


def second_of(moment: datetime | None) -> int | None:
    """The bucket of ``moment``: its whole second since the epoch."""
    return None if moment is None else int(moment.timestamp())


def expirable(record: ModelInstance) -> bool:
    """Whether the checker watches ``record``: healthy, checked, ready, and heard from
    (one not ready is the start-up grace's to end). SQLite's mass expiry selects the
    same rows (``storage.journal._EXPIRE``)."""
    return record.healthy and record.check_healthy and record.ready and record.last_heartbeat is not None


#: Before every timestamp: where nothing is settled yet.
DAWN = datetime.min.replace(tzinfo=timezone.utc)
_DAWN_SECOND: int = second_of(DAWN)  # type: ignore[assignment]
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_SECOND = timedelta(seconds=1)


def _bounds(second: int) -> tuple[datetime, datetime]:
    """The moments of bucket ``second``, from and before: whether a moment is in it
    is then two comparisons, not ``second_of`` (a tenth of the cost: a walk of a
    million records makes a million). The same answer: a microsecond's timestamp
    as a float is never rounded up to the next second (its error is under 0.3 µs
    until 2106)."""
    start = _EPOCH + timedelta(seconds=second)
    return start, start + _SECOND


class TimingWheel:
    def __init__(self) -> None:
        # second -> the keys filed there (a dict as an ordered set). Each expirable
        # record is filed in at least one bucket at or before the second of its
        # last beat; up to ``settled`` (the census's last cutoff, in seconds), in
        # exactly the one of its last beat, and nothing else is (see ``settle``).
        self.buckets: dict[int, dict[InstanceKey, None]] = {}
        self.settled: int | None = None
        #: The start of the second after ``settled``: a record last heard before
        #: it is filed exactly, and must be moved when it changes.
        self.settled_before = DAWN
        self._walking: tuple[int, Iterator[InstanceKey]] | None = None  # settle's place, between calls

    def file(self, key: InstanceKey, second: int) -> None:
        self.buckets.setdefault(second, {})[key] = None

    def unfile(self, key: InstanceKey, heard: datetime) -> None:
        """Take ``key`` out of the bucket of ``heard``, if it is there."""
        second = second_of(heard)
        bucket = self.buckets.get(second)  # type: ignore[arg-type]
        if bucket is not None:
            bucket.pop(key, None)
            if not bucket:  # an emptied dict keeps its table: let it go
                del self.buckets[second]  # type: ignore[arg-type]

    def at_dawn(self) -> dict[InstanceKey, None]:
        """The bucket before all time, where start-up files the keys it loads (as an
        ordered set), as the wheel allows: the first census files each where it
        belongs. Start-up then works out no record's second. ``drop_empty`` after."""
        return self.buckets.setdefault(_DAWN_SECOND, {})

    def drop_empty(self) -> None:
        """Drop the dawn's bucket if start-up filed nothing there."""
        if not self.buckets.get(_DAWN_SECOND, True):
            del self.buckets[_DAWN_SECOND]

    def settle(
        self, records: Mapping[InstanceKey, ModelInstance], cutoff: datetime, limit: int | None
    ) -> bool:
        """File every record in the buckets up to ``cutoff``'s second where its last
        beat puts it, and drop what was left behind. Then, up to that second,
        each bucket holds exactly the records last heard in it, which is what
        ``silent_through`` counts, and stays so.

        Walks only the buckets not settled by an earlier call, oldest first; in
        a steady fleet that is each record about once per heartbeat timeout.
        ``limit`` bounds the entries one call walks; returns whether it is
        done, so that a caller can yield between calls.
        """
        last = second_of(cutoff)
        wheel = self.buckets
        walked = 0
        while True:
            if self._walking is None:
                settled = self.settled
                due = [s for s in wheel if s <= last and (settled is None or s > settled)]  # type: ignore[operator]
                if not due:
                    self._settle_to(last)  # type: ignore[arg-type]
                    return True
                second = min(due)
                # Settled from now on, while it is walked: a beat of a record last
                # heard in this second moves it at once (it can only be filed here,
                # the buckets before are exact), and the walk moves the others.
                self._settle_to(second)
                self._walking = second, iter(list(wheel[second]))
            second, keys = self._walking
            bucket = wheel.get(second, {})
            start, end = _bounds(second)
            for key in keys:
                if key not in bucket:
                    continue  # moved meanwhile
                record = records.get(key)
                # (``expirable``, written out: a call a record)
                if record is None or not (record.healthy and record.check_healthy and record.ready):
                    del bucket[key]  # left behind by a change
                else:
                    heard = record.last_heartbeat
                    if heard is None:
                        del bucket[key]
                    elif not start <= heard < end:  # beaten since it was filed
                        del bucket[key]
                        self.file(key, second_of(heard))  # type: ignore[arg-type]
                walked += 1
                if limit is not None and walked >= limit:
                    return False
            self._walking = None
            if not bucket and wheel.get(second) is bucket:
                del wheel[second]

    def _settle_to(self, second: int) -> None:
        if self.settled is None or second > self.settled:
            self.settled = second
            self.settled_before = datetime.fromtimestamp(second + 1, timezone.utc)

    def silent(
        self, records: Mapping[InstanceKey, ModelInstance], cutoff: datetime
    ) -> Iterator[tuple[InstanceKey, ModelInstance]]:
        """Take out and yield each expirable record last heard before ``cutoff``.

        Visits only the buckets up to the cutoff's second, filing again (as
        ``settle`` does) what it finds there that beat since, and dropping what
        changes left behind. The caller may stop early and resume the same walk
        later (anything may change meanwhile: each key is looked at as it is
        when reached); a key filed into a bucket after the walk reached it waits
        for the next walk.
        """
        last = second_of(cutoff)
        wheel = self.buckets
        for second in sorted(b for b in wheel if b <= last):  # type: ignore[operator]
            start, end = _bounds(second)
            for key in list(wheel.get(second, ())):  # (one copy of a bucket per walk)
                bucket = wheel.get(second)
                if bucket is None:
                    break  # emptied and dropped meanwhile
                if key not in bucket:
                    continue  # moved meanwhile
                record = records.get(key)
                heard = None if record is None else record.last_heartbeat
                if heard is None or not (record.healthy and record.check_healthy and record.ready):  # type: ignore[union-attr]
                    del bucket[key]  # left behind by a change (``expirable``, written out)
                    continue
                if heard >= cutoff:
                    if not start <= heard < end:  # beaten since it was filed
                        del bucket[key]
                        self.file(key, second_of(heard))  # type: ignore[arg-type]
                    continue  # (or the cutoff's own second: later in that second)
                del bucket[key]
                yield key, record
            if not wheel.get(second, True):
                del wheel[second]

    def silent_through(self, cutoff: datetime) -> int:
        """How many are filed up to ``cutoff``'s second: once settled there, the
        records last heard before it (by the records of that second itself)."""
        last = second_of(cutoff)
        return sum(len(b) for second, b in self.buckets.items() if second <= last)  # type: ignore[operator]
