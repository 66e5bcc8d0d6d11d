"""Records in memory: copies that share nothing mutable, values shared by many.

The index never changes a record it holds (copy-on-write): what comes in is
copied (``clone``), since its caller still holds it; a change stores a changed
shallow copy (``copy_record``). And what a fleet repeats is kept once: every
record of a model points at one copy of its name, records share one object
per port and weight value, and records without metadata share
``NO_METADATA`` (``compact``).
"""

from __future__ import annotations

import contextlib
import gc
import sys
from collections.abc import Generator

import orjson

from model_registry_sdk.record import ModelInstance

from .readonly import NO_METADATA

__all__ = ["clone", "collector_paused", "compact", "copy_record"]


def clone(record: ModelInstance) -> ModelInstance:
    """A copy of ``record`` that shares nothing mutable with it.

    Metadata is JSON by construction, so a JSON round trip copies it deeply,
    and several times faster than ``copy.deepcopy``.
    """
    copy = _new(ModelInstance)
    copy.__dict__.update(record.__dict__)  # into a fresh, key-sharing dict, whatever the caller's is
    if record.metadata:
        copy.metadata = orjson.loads(orjson.dumps(record.metadata))
    if record.overrides:
        copy.overrides = orjson.loads(orjson.dumps(record.overrides))
    return compact(copy)


_new = object.__new__

#: Values that many records repeat, one object each (see ``compact``), by type:
#: ``1 == 1.0``, but a weight must stay a float.
_PORTS: dict[int, int] = {}
_WEIGHTS: dict[float, float] = {}
_MAX_SHARED = 4096  # per table: a fleet repeats a handful, a stranger gets no more


def compact(record: ModelInstance) -> ModelInstance:
    """``record`` with its model name, port and weight replaced by one shared
    object per value (they are immutable), and empty metadata by ``NO_METADATA``.

    A fleet repeats a handful of ports and weights, and every instance of a
    model its name; sharing them saves memory, and a read or a beat of a
    record then finds most of its values already in the CPU's cache instead
    of one cold object each.
    """
    fields = record.__dict__
    fields["model_name"] = sys.intern(fields["model_name"])
    if not fields["metadata"]:
        fields["metadata"] = NO_METADATA
    port, weight = fields["port"], fields["weight"]
    if type(port) is int:
        fields["port"] = _share(_PORTS, port)
    if type(weight) is float:
        fields["weight"] = _share(_WEIGHTS, weight)
    return record


def _share(table: dict, value: object) -> object:
    shared = table.get(value)
    if shared is None:
        if len(table) < _MAX_SHARED:
            table[value] = value
        return value
    return shared


def copy_record(record: ModelInstance) -> ModelInstance:
    """A shallow copy, to change in place of ``record`` (whose mutable fields are never
    changed in place either, so sharing them is safe)."""
    copy = _new(ModelInstance)
    copy.__dict__ = record.__dict__.copy()  # a split dict's copy: its values, keys shared
    return copy


#: Objects made under ``collector_paused`` past which they are frozen when it ends.
FREEZE_PAST = 1_000_000


@contextlib.contextmanager
def collector_paused() -> Generator[None, None, None]:
    """The cyclic garbage collector paused, while many records are made at once
    (a start-up's load). Records hold no cycles; and every collection their
    making sets off walks all the objects made so far: half the time it takes
    to load 100,000 records.

    When that made more than ``FREEZE_PAST`` objects (a large fleet's load),
    they are moved out of the collector's sight when it ends (``gc.freeze``,
    as the server does once it is up anyway): the first collection would
    otherwise walk them all, half a second for a million records."""
    paused = gc.isenabled()
    gc.disable()
    made = gc.get_count()[0]
    try:
        yield
    finally:
        if gc.get_count()[0] - made > FREEZE_PAST:
            gc.freeze()
        if paused:
            gc.enable()
