"""FastChat's controller, over the registry: workers, their models, dispatch.

A FastChat worker is one process, named by its URL (``worker_name``,
``http://host:port``), serving one or more models. Here it is one instance per
model at that address, so every model is listed, selected, watched and
drained like any other instance. The mapping:

    worker_name        host and port of each instance; kept as given in
                       ``metadata["fastchat_worker"]``, answered by dispatch
    model_names        one instance per name
    speed              weight (lottery picks in proportion to it)
    queue_length       queue_length (shortest_queue reads queue_length / weight)
    check_heart_beat   check_healthy
    multimodal         ``metadata["fastchat_multimodal"]``

FastChat's views show only what may serve now: healthy, enabled (not drained),
not cooling down after failure reports, with a weight above 0. Instances
registered another way (``/api/v1``, DB-GPT) are part of the same registry and
show here too, at ``http://host:port``.

Nothing here speaks HTTP: calling a worker back for its status is the API's
(``api.fastchat``); this module is told what the worker said.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable
from datetime import datetime
from typing import TYPE_CHECKING, Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field

from model_registry_sdk.record import ModelInstance

from .compat import FASTCHAT, TimeoutAdvice
from .errors import InstanceNotFound, InvalidInstance, NoHealthyInstance
from .validation import MAX_QUEUE_LENGTH, ModelName, normalize_host

if TYPE_CHECKING:
    from .service import Registry

__all__ = [
    "DISPATCH",
    "MULTIMODAL",
    "WORKER",
    "FastChat",
    "HeartBeat",
    "RegisterWorker",
    "WorkerAddressQuery",
    "WorkerStatus",
    "address_of",
    "worker_address",
]

#: The metadata keys that mark a FastChat worker's instances.
WORKER, MULTIMODAL = "fastchat_worker", "fastchat_multimodal"

#: FastChat's dispatch methods, as this registry's selection strategies.
DISPATCH = {"lottery": "weighted", "shortest_queue": "least_load"}
Dispatch = Literal["lottery", "shortest_queue"]

_LENIENT = ConfigDict(extra="ignore", frozen=True)

#: The fastest a worker may say it is (speeds are summed: keep the sums finite).
MAX_SPEED = 1e9


class WorkerStatus(BaseModel):
    """What a worker says of itself (``worker_status``, ``/worker_get_status``)."""

    model_config = _LENIENT

    model_names: Annotated[list[ModelName], Field(max_length=256)]
    speed: Annotated[float, Field(ge=0, le=MAX_SPEED, allow_inf_nan=False)] = 1.0
    queue_length: Annotated[int, Field(ge=0, le=MAX_QUEUE_LENGTH)] = 0


class RegisterWorker(BaseModel):
    model_config = _LENIENT

    worker_name: Annotated[str, Field(min_length=1, max_length=2048)]
    check_heart_beat: bool = True
    worker_status: WorkerStatus | None = None
    multimodal: bool = False


class HeartBeat(BaseModel):
    model_config = _LENIENT

    worker_name: Annotated[str, Field(min_length=1, max_length=2048)]
    queue_length: Annotated[int, Field(strict=True, ge=0, le=MAX_QUEUE_LENGTH)] = 0


class WorkerAddressQuery(BaseModel):
    model_config = _LENIENT

    model: Annotated[str, Field(min_length=1, max_length=256)]


def worker_address(worker_name: str) -> tuple[str, int]:
    """The host and port a worker's URL names (``http://10.0.0.5:21002``).

    A path is kept (in the worker's name) for dispatch to answer; credentials,
    a query, a fragment, spaces and control characters are refused: the name is
    stored and handed to every API server that asks where a model runs.
    """
    problem = "must be the worker's URL, http://HOST:PORT"
    name = worker_name.strip()
    if any(c <= " " or c == "\x7f" for c in name):
        # urlsplit drops tabs and newlines, but the name is stored and answered as sent.
        raise InvalidInstance([("worker_name", f"{problem}, without spaces or control characters")])
    try:
        url = urlsplit(name)
        if url.username is not None or url.password is not None:
            raise InvalidInstance([("worker_name", f"{problem}, without credentials (they would be shown)")])
        port = {"http": 80, "https": 443}.get(url.scheme) if url.port is None else url.port
        if url.scheme not in ("http", "https") or not url.hostname or not port or url.query or url.fragment:
            raise InvalidInstance([("worker_name", f"{problem}, got {worker_name!r}")])
        return normalize_host(url.hostname), port
    except InvalidInstance:
        raise
    except ValueError as exc:  # a bad port, or a host that is neither name nor address
        raise InvalidInstance([("worker_name", f"{problem}, got {worker_name!r} ({exc})")]) from None


def address_of(record: ModelInstance) -> str:
    """The worker URL dispatch answers: the FastChat name as registered, else ``http://host:port``."""
    name = record.metadata.get(WORKER)
    if isinstance(name, str):
        return name
    host = f"[{record.host}]" if ":" in record.host else record.host
    return f"http://{host}:{record.port}"


#: How long a model list is kept at most, in seconds (see ``FastChat.models``).
_LIST_KEPT_S = 1.0

#: Worker names whose address ``FastChat`` remembers, at most.
_ADDRESSES_KEPT = 100_000


def _serving(record: ModelInstance, now: datetime) -> bool:
    return record.healthy and record.enabled and record.weight > 0 and not record.in_cooldown(now)


class FastChat:
    """FastChat's controller operations over one running ``Registry``."""

    def __init__(
        self, registry: Registry, dispatch: Dispatch = "shortest_queue", advice: TimeoutAdvice | None = None
    ) -> None:
        self.registry = registry
        self.dispatch = dispatch
        self._strategy = DISPATCH[dispatch]
        self._advice = advice or TimeoutAdvice(registry.heartbeat_timeout)
        self._addresses: dict[str, tuple[str, int]] = {}  # worker_name -> (host, port)
        self._lists: dict[bool | None, tuple[int, float, list[str]]] = {}  # see ``models``

    async def _workers_records(self, worker_name: str) -> list[ModelInstance]:
        """The instances this worker registered (others may share its address, behind a path)."""
        host, port = self._address(worker_name)
        return [r for r in await self.registry.at(host, port) if r.metadata.get(WORKER) == worker_name]

    async def register(self, request: RegisterWorker, status: WorkerStatus) -> list[ModelInstance]:
        """One instance per model the worker serves; models it no longer lists are deleted."""
        host, port = self._address(request.worker_name)
        if request.check_heart_beat:
            self._advice.registered(FASTCHAT)
        names = list(dict.fromkeys(status.model_names))
        for record in await self._workers_records(request.worker_name):
            if record.model_name not in names:
                with contextlib.suppress(InstanceNotFound):  # gone meanwhile: as wanted
                    await self.registry.deregister(record.key, purge=True)
        metadata = {WORKER: request.worker_name, MULTIMODAL: request.multimodal}
        stored = []
        for name in names:
            instance = ModelInstance(
                name,
                host,
                port,
                weight=status.speed,
                check_healthy=request.check_heart_beat,
                metadata=metadata,
            )
            record, _ = await self.registry.register(instance, status.queue_length)
            stored.append(record)
        return stored

    def beat_now(self, body: dict[str, Any], allows: Callable[[str], bool] | None = None) -> bool | None:
        """``beat`` at once, for the common beat: a well-formed body naming a
        worker seen before, on a backend that can beat without waiting.
        ``None`` means the beat must go through ``beat``; answers as it does."""
        name, load = body.get("worker_name"), body.get("queue_length")
        if type(name) is not str or type(load) is not int or not 0 <= load <= MAX_QUEUE_LENGTH:
            return None
        address = self._addresses.get(name)
        if address is None:
            return None
        beaten = self.registry.beat_at(
            address[0],
            address[1],
            load,
            lambda r: r.metadata.get(WORKER) == name and (allows is None or allows(r.model_name)),
        )
        return None if beaten is None else beaten > 0

    def _address(self, worker_name: str) -> tuple[str, int]:
        """``worker_address``, remembered: a worker beats under one name all its life."""
        address = self._addresses.get(worker_name)
        if address is None:
            address = worker_address(worker_name)
            if len(self._addresses) >= _ADDRESSES_KEPT:
                self._addresses.clear()  # a crude bound: names are cheap to parse again
            self._addresses[worker_name] = address
        return address

    async def beat(self, beat: HeartBeat, allows: Callable[[str], bool] | None = None) -> bool:
        """Beat every model the worker currently serves (that ``allows`` lets it);
        False when it has none here."""
        exist = False
        for record in await self._workers_records(beat.worker_name):
            if allows is not None and not allows(record.model_name):
                continue
            exist |= await self.registry.beat_known(record.key, beat.queue_length) is not None
        return exist

    async def _serving_records(self, multimodal: bool | None = None) -> list[ModelInstance]:
        now = self.registry.now()
        return [
            r
            for r in await self.registry.instances()
            if _serving(r, now) and (multimodal is None or bool(r.metadata.get(MULTIMODAL)) == multimodal)
        ]

    async def models(self, multimodal: bool | None = None) -> list[str]:
        """The models that can be dispatched now (only multimodal ones, or only language ones).

        FastChat's API server asks before every request, and the answer walks
        every instance: it is kept until the registry's next change (or for a
        second, so that a cooldown's end, which is a matter of time, shows).
        """
        revision, moment = self.registry.revision, self.registry.monotonic()
        kept = self._lists.get(multimodal)
        if kept is not None and kept[0] == revision and moment - kept[1] < _LIST_KEPT_S:
            return kept[2]
        names = sorted({r.model_name for r in await self._serving_records(multimodal)})
        self._lists[multimodal] = (revision, moment, names)
        return names

    async def address(self, model: str) -> str:
        """A worker for ``model`` by the dispatch method; ``""`` when there is none
        (FastChat's convention, kept on this path only)."""
        try:
            return address_of(await self.registry.select(model, self._strategy))
        except NoHealthyInstance:
            return ""

    async def status(self) -> dict[str, Any]:
        """The registry as one worker, as FastChat's controller reports itself:
        every model, and the speeds and queue lengths of the workers summed."""
        workers: dict[tuple[str, int], ModelInstance] = {}
        names: set[str] = set()
        for record in await self._serving_records():
            names.add(record.model_name)
            workers.setdefault((record.host, record.port), record)
        return {
            "model_names": sorted(names),
            # Weights are finite but unbounded, so their sum may not be (JSON has no infinity).
            "speed": min(sum(r.weight for r in workers.values()), sys.float_info.max),
            "queue_length": sum(r.queue_length or 0 for r in workers.values()),
        }
