"""Which instance of a model serves the next request: selection strategies.

Pure, synchronous code: the registry lists a model's healthy instances and
hands them to ``Selector.pick``. Only enabled instances with a positive weight
(and, defensively, not marked unhealthy) are eligible; with none, ``pick``
returns ``None`` and the caller decides what that means.

weighted (the default)
    Random, with probability proportional to ``weight``. Stateless.
round_robin
    Smooth weighted round robin, nginx's algorithm: on each pick every
    eligible instance's ``current`` grows by its weight, the highest
    ``current`` is picked (ties go to the lowest key) and loses the total
    weight. Heavy instances are interleaved with light ones instead of being
    picked in bursts; with equal weights it is a plain rotation in key order.
    The counters are the only state a ``Selector`` keeps: per model, one per
    instance eligible at that model's last pick, so vanished instances are
    forgotten and new ones start at 0; a pick that finds none eligible
    forgets the model, and so does the removal of its last counted instance
    (``forget``), so models that are gone hold nothing.
least_load
    The least loaded, by what ``load_of`` reads: the engine's own load when
    it is fresh (requests waiting, then running, each divided by the weight,
    then the KV cache's use), else the ``queue_length`` of its beats (divided
    by the weight). An instance that never reported a load counts as idle, so
    a new instance receives traffic; one whose engine load has gone stale
    (older than ``STALE_AFTER`` of its intervals) and that has no queue length
    is unknown, and picked only when every candidate is. Ties are broken at
    random.
power_of_two
    Two eligible instances drawn at random (uniformly, without replacement),
    and the less loaded of the two (as ``least_load`` compares them; a tie
    goes to either at random). Many routers picking "the least loaded" from the same
    reports all send their next requests to the same instance until its next
    report says otherwise; two random choices still avoid the busy instances
    without herding onto one (Mitzenmacher's "power of two choices"). With one
    eligible instance it is that one.

Why least_load changes nothing: FastChat's shortest-queue dispatch adds one
to the chosen worker's queue length on every pick, a guess at load the
controller cannot see, so that two requests between heartbeats do not go to
the same worker. The guess only grows until the next heartbeat overwrites it,
is wrong as soon as a request finishes, is private to one replica when several
share a database, and turns every read into a write. Here a pick reads only
what the instances reported: two picks between heartbeats see the same loads,
and random tie-breaking is what spreads them.

Weights are divided by a power of two near the largest one before any sum,
so huge weights cannot overflow and the ratios of whole-number weights stay
exact (which keeps round robin's ties, and so its order, exact).
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from datetime import datetime, timedelta
from operator import attrgetter
from typing import Any, NamedTuple

from .storage import InstanceKey, ModelInstance

__all__ = ["DEFAULT_STRATEGY", "STALE_AFTER", "STRATEGIES", "Load", "Selector", "load_of", "parse_strategy"]

STRATEGIES: tuple[str, ...] = ("weighted", "round_robin", "least_load", "power_of_two")
DEFAULT_STRATEGY = "weighted"


def parse_strategy(value: str) -> str:
    """The canonical name of a strategy, from any case and with ``-`` for ``_``.

    Raises ``ValueError`` naming the valid strategies.
    """
    name = value.strip().lower().replace("-", "_")
    if name not in STRATEGIES:
        raise ValueError(f"unknown strategy {value!r}: use one of {', '.join(STRATEGIES)}")
    return name


#: An engine's load is fresh for this many of its intervals (its scrape interval,
#: or the heartbeat interval when its worker reports it): then it is unknown.
STALE_AFTER = 3


class Load(NamedTuple):
    """How ``least_load`` and ``power_of_two`` compare instances: lower is less loaded."""

    unknown: bool  # its engine load went stale, and it reports no queue length
    waiting: float  # per unit of weight
    running: float  # per unit of weight
    kv_cache_usage: float

    def reason(self, instance: ModelInstance, fresh: bool) -> dict[str, Any]:
        """What ``select`` says of the load it read."""
        if fresh:
            load: dict[str, Any] | None = {
                "waiting": instance.waiting,
                "running": instance.running,
                "kv_cache_usage": instance.kv_cache_usage,
                "load_at": instance.load_at,
                "source": "engine",
            }
        elif instance.queue_length is not None:
            load = {"queue_length": instance.queue_length, "source": "queue_length"}
        else:
            load = None
        return {"load": load, "fresh": fresh or instance.queue_length is not None}


_IDLE = Load(False, 0.0, 0.0, 0.0)
_UNKNOWN = Load(True, 0.0, 0.0, 0.0)


def fresh_load(instance: ModelInstance, now: datetime | None, heartbeat_interval: float) -> bool:
    """Whether the instance's engine load was measured recently enough to be read."""
    at = instance.load_at
    if at is None or now is None:
        return at is not None and now is None
    interval = instance.metrics["interval"] if instance.metrics else heartbeat_interval
    return now - at <= timedelta(seconds=STALE_AFTER * interval)


def load_of(instance: ModelInstance, now: datetime | None = None, heartbeat_interval: float = 10.0) -> Load:
    """The instance's load as selection compares it (see the module's ``least_load``)."""
    weight = instance.weight
    if fresh_load(instance, now, heartbeat_interval):
        return Load(
            False,
            (instance.waiting or 0) / weight,
            (instance.running or 0) / weight,
            instance.kv_cache_usage or 0.0,
        )
    if instance.queue_length is not None:
        return Load(False, instance.queue_length / weight, 0.0, 0.0)
    return _UNKNOWN if instance.load_at is not None else _IDLE


class Selector:
    """Picks one instance of a model by a strategy.

    Holds round robin's counters, so keep one ``Selector`` per registry (not
    per request). Not thread-safe: meant for one event loop.
    """

    def __init__(self, rng: random.Random | None = None, heartbeat_interval: float = 10.0) -> None:
        self._rng = rng if rng is not None else random.Random()
        self._current: dict[str, dict[InstanceKey, float]] = {}
        #: The interval of a worker's beats, which may carry its engine's load (see ``fresh_load``).
        self.heartbeat_interval = heartbeat_interval
        self._now: datetime | None = None

    def pick(
        self,
        candidates: Sequence[ModelInstance],
        strategy: str = DEFAULT_STRATEGY,
        now: datetime | None = None,
    ) -> ModelInstance | None:
        """One of ``candidates`` (all of one model), or None when none is eligible.

        ``strategy`` is read by ``parse_strategy``. ``now`` judges whether an
        engine's load is fresh (without it, any is). Raises ``ValueError`` for
        an unknown strategy or candidates of more than one model. Never changes
        the candidates.
        """
        self._now = now
        name = strategy if strategy in STRATEGIES else parse_strategy(strategy)
        model = _model_of(candidates)
        eligible = _eligible(candidates)
        if name == "round_robin":
            return self._round_robin(model, eligible)
        if not eligible:
            return None
        if name == "weighted":
            return self._rng.choices(eligible, _scaled_weights(eligible))[0]
        if name == "power_of_two":
            return self._power_of_two(eligible)
        return self._least_load(eligible)

    def forget(self, key: InstanceKey) -> None:
        """An instance is gone (deregistered or evicted): drop its counter, and
        its model's when it was the last."""
        current = self._current.get(key.model_name)
        if current is not None and current.pop(key, None) is not None and not current:
            del self._current[key.model_name]

    @property
    def models(self) -> int:
        """Models with round-robin state."""
        return len(self._current)

    def _round_robin(self, model: str | None, eligible: list[ModelInstance]) -> ModelInstance | None:
        if not eligible:
            if model is not None:
                self._current.pop(model, None)
            return None
        model = eligible[0].model_name
        weights = _scaled_weights(eligible)
        previous = self._current.get(model, {})
        # Rebuilt from the eligible instances only: the vanished are dropped.
        current = {i.key: previous.get(i.key, 0.0) + w for i, w in zip(eligible, weights, strict=True)}
        # ``eligible`` is in key order and max() keeps the first of equals.
        chosen = max(eligible, key=lambda i: current[i.key])
        current[chosen.key] -= math.fsum(weights)
        self._current[model] = current
        return chosen

    def reason(self, picked: ModelInstance, strategy: str, now: datetime | None) -> dict[str, Any]:
        """Why ``pick`` picked ``picked``: ``{"strategy", "load", "fresh"}``, for a router's log."""
        name = strategy if strategy in STRATEGIES else parse_strategy(strategy)
        fresh = fresh_load(picked, now, self.heartbeat_interval)
        return {"strategy": name, **load_of(picked, now, self.heartbeat_interval).reason(picked, fresh)}

    def _load(self, instance: ModelInstance) -> Load:
        return load_of(instance, self._now, self.heartbeat_interval)

    def _least_load(self, eligible: list[ModelInstance]) -> ModelInstance:
        loads = [self._load(i) for i in eligible]
        lowest = min(loads)
        return self._rng.choice([i for i, load in zip(eligible, loads, strict=True) if load == lowest])

    def _power_of_two(self, eligible: list[ModelInstance]) -> ModelInstance:
        if len(eligible) == 1:
            return eligible[0]
        first, second = self._rng.sample(eligible, 2)
        a, b = self._load(first), self._load(second)
        if a == b:
            return first  # the draw was random already: either of equals
        return first if a < b else second


def _model_of(candidates: Sequence[ModelInstance]) -> str | None:
    models = {c.model_name for c in candidates}
    if len(models) > 1:
        raise ValueError(f"candidates of one model expected, got {', '.join(sorted(map(repr, models)))}")
    return next(iter(models), None)


def _eligible(candidates: Sequence[ModelInstance]) -> list[ModelInstance]:
    """The instances a strategy may pick, in key order (so a seed replays the same picks).

    Candidates are of one model, so (host, port) orders them; storage lists
    them in that order already, which makes the sort one cheap pass."""
    eligible = [c for c in candidates if c.enabled and c.healthy and c.ready and c.weight > 0]
    eligible.sort(key=_address)
    return eligible


_address = attrgetter("host", "port")


def _scaled_weights(instances: Sequence[ModelInstance]) -> list[float]:
    """The weights divided by the power of two just above the largest.

    Each is then below 1, so their sum is below ``len(instances)``; dividing by
    a power of two is exact, so the ratios are unchanged (barring underflow of
    weights some 2**1000 times lighter than the heaviest).
    """
    _, exponent = math.frexp(max(i.weight for i in instances))
    return [math.ldexp(i.weight, -exponent) for i in instances]
