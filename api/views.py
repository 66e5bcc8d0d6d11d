"""Request handlers: parse, call one registry method, serialise.

Each view is called as ``view(request, registry)`` by its route's guard
(``api.errors.guard``), which holds the running registry.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from email.utils import formatdate
from typing import Any

from aiohttp import HttpVersion11, hdrs, web

from model_registry import ModelInstance, Registry, Snapshot
from model_registry.auth import Action, Forbidden, Principal
from model_registry.validation import key_from

from .audit import audit, audit_deregistration
from .auth import in_scope, principal_of
from .keys import CONNECTIONS, DISCONNECTS, LIFECYCLE, SETTINGS
from .memos import Memos
from .params import duration_param, model_name_param, query_flag, revision_param, strategy_param
from .problem import ApiError
from .responses import (
    SERVER,
    dumps,
    json_body_response,
    json_response,
    read_large_object,
    read_object,
    read_object_now,
)

__all__ = [
    "BUSY_RETRY_AFTER_S",
    "deregister",
    "health",
    "heartbeat",
    "list_instances",
    "models",
    "patch",
    "register",
    "report",
    "select",
]

#: Read on every beat: bound once (see ``api.auth._PUBLIC``).
_HEARTBEAT = Action.HEARTBEAT

#: What a client past --max-long-polls or --max-watchers is told to wait, in seconds.
BUSY_RETRY_AFTER_S = 5


async def register(request: web.Request, registry: Registry, caller: Principal | None) -> web.Response:
    body = await read_object(request)
    in_scope(caller, body.get("model_name"), Action.REGISTER)
    instance, created = await registry.register(body)
    return json_response(instance, status=201 if created else 200)


async def heartbeat(request: web.Request, registry: Registry, caller: Principal | None) -> web.Response:
    # The hottest path: most beats are read and recorded without awaiting anything.
    body = read_object_now(request)
    if body is None:
        body = await read_object(request)
    if caller is not None:
        in_scope(caller, body.get("model_name"), _HEARTBEAT)
    record = registry.beat(body)
    if record is None:
        record = await registry.heartbeat(body)
    return json_response(record)


#: A batch (of heartbeats, or of registrations) holds at most this many items, in a body
#: of at most this many bytes (1,000 whole instances, as ``HeartbeatAgent`` sends them, fit).
MAX_BATCH = 1000
MAX_BATCH_BYTES = 1024 * 1024
_KNOWN_JSON = b'{"result":"known"}'


async def _batch(request: web.Request, field: str, what: str) -> list[Any]:
    """The request's ``field`` array, refused whole (nothing applied) when it is not one or
    holds more than ``MAX_BATCH``."""
    body = await read_large_object(request, MAX_BATCH_BYTES)
    items = body.get(field)
    if type(items) is not list:
        raise ApiError(422, "invalid_input", f"{field}: must be an array of {what}", field=field)
    if len(items) > MAX_BATCH:
        raise ApiError(
            422,
            "invalid_input",
            f"{field}: at most {MAX_BATCH} per request, got {len(items)}; none was applied: "
            "send them in several requests",
            field=field,
        )
    return items


def _results(results: list[tuple[str, str | None]]) -> web.Response:
    encoded = [
        _KNOWN_JSON if why is None and result == "known" else dumps(_result(result, why))
        for result, why in results
    ]
    return json_body_response(b'{"results":[' + b",".join(encoded) + b"]}")


async def heartbeats(request: web.Request, registry: Registry, caller: Principal | None) -> web.Response:
    """``POST /api/v1/heartbeats``: ``{"beats": [...]}``, each beat as ``/heartbeat``
    takes it; the results in the same order. A batch too large is refused whole."""
    beats = await _batch(request, "beats", "heartbeats")
    refuse = None if caller is None or not caller.scoped else _out_of_scope(caller, _HEARTBEAT)
    return _results(await registry.beat_many(beats, refuse))


async def register_batch(request: web.Request, registry: Registry, caller: Principal | None) -> web.Response:
    """``POST /api/v1/instances/batch``: ``{"instances": [...]}``, each registered as
    ``POST /api/v1/instances`` registers it, all written at once (a bulk load); the
    results in the same order. A batch too large is refused whole."""
    instances = await _batch(request, "instances", "instances")
    refuse = None if caller is None or not caller.scoped else _out_of_scope(caller, Action.REGISTER)
    return _results(await registry.register_many(instances, refuse))


def _result(result: str, why: str | None) -> dict[str, Any]:
    return {"result": result} if why is None else {"result": result, "detail": why}


def _out_of_scope(caller: Principal, action: Action) -> Callable[[dict[str, Any]], str | None]:
    """Why a worker token may not act on an item's model, or ``None`` when it may."""

    def refuse(item: dict[str, Any]) -> str | None:
        model = item.get("model_name")
        if type(model) is not str:
            return None  # the item's own validation says what is wrong
        try:
            caller.require_model(model, action)
        except Forbidden as exc:
            return str(exc.detail)
        return None

    return refuse


async def deregister(request: web.Request, registry: Registry, caller: Principal | None) -> web.Response:
    key, purge = key_from(request.query), query_flag(request, "purge")
    in_scope(caller, key.model_name, Action.DEREGISTER)
    record = await registry.deregister(key, purge=purge)
    audit_deregistration(request, key, purge)
    return json_response(record)


#: The response header that carries the registry's revision (for ``?index=``).
INDEX_HEADER = "X-Registry-Index"


async def list_instances(request: web.Request, registry: Registry) -> web.Response:
    model_name = model_name_param(request, required=False)
    healthy_only = query_flag(request, "healthy_only")
    if _is_long_poll(request):
        if await _long_poll(request, registry, model_name, healthy_only):
            return _Answered()
        # Every poll woken by one change asks for the same answer: written once.
        answer = request.app[POLL_ANSWERS].get(registry, model_name, healthy_only)
        if answer is not None:
            return json_body_response(answer[1], headers={INDEX_HEADER: str(answer[0])})
    revision = registry.revision  # read first: a change during the read is then not missed
    found = await registry.instances(model_name, healthy_only)
    body = _listing(found)
    if _is_long_poll(request):
        request.app[POLL_ANSWERS].keep(model_name, healthy_only, revision, registry.revision, body)
    return json_body_response(body, headers={INDEX_HEADER: str(revision)})


class PollAnswers:
    """The long-polls' answers.

    Answered ahead: the polls one change wakes (thousands, on a popular model)
    would each be answered by its own task, one after the other, through aiohttp's
    whole response path: 10,000 took 0.4 s here. So a poll that can be (a GET over
    keep-alive HTTP/1.1) is noted while it waits (``note``); the feed says whom a
    change is about to wake (``Feed.waking``), and one callback, queued before their
    tasks resume, reads each listing once, from memory, and writes the same bytes to
    every socket. Each handler then returns ``_Answered``: aiohttp sends nothing more.
    Where the backend cannot list at once (PostgreSQL), the handlers answer.

    Kept: listings just written for long-polls, by model and ``healthy_only``, so the
    polls answered by their handlers get the one answer written for the first. An answer
    is good while the revision is the one it was read at, for ``TTL`` seconds at most
    (beats change loads and times without a revision). A few entries: the models polled now.
    """

    MAX = 256
    TTL = 0.5

    def __init__(self) -> None:
        self._kept: dict[tuple[str | None, bool], tuple[int, float, bytes]] = {}
        self._registry: Registry | None = None
        #: Polls that may be answered ahead, by the future each waits on.
        self._waiting: dict[asyncio.Future[None], _Waiting] = {}
        #: Woken by a change: to answer in the callback queued for them.
        self._due: list[_Waiting] = []
        #: Polls answered ahead since the start.
        self.ahead = 0

    def follow(self, registry: Registry) -> None:
        """Answer ``registry``'s long-polls ahead from now on."""
        self._registry = registry
        registry.feed.waking = self._waking

    def note(
        self, woken: asyncio.Future[None], request: web.Request, model_name: str | None, healthy_only: bool
    ) -> None:
        """``request`` waits on ``woken`` for the listing of ``model_name``: answer it
        ahead if it can be (``done`` says whether it was)."""
        transport = request.transport
        if (
            self._registry is not None
            and transport is not None
            and request.method == "GET"
            and request.version == HttpVersion11
            and request.keep_alive
        ):
            self._waiting[woken] = _Waiting(transport, model_name, healthy_only)

    def done(self, woken: asyncio.Future[None]) -> bool:
        """The poll waiting on ``woken`` is over: whether its answer was written."""
        waiting = self._waiting.pop(woken, None)
        return waiting is not None and waiting.answered

    def _waking(self, pollers: set[asyncio.Future[None]]) -> None:
        waiting, due = self._waiting, self._due
        queued = bool(due)
        for woken in pollers:
            poll = waiting.get(woken)
            if poll is not None and not woken.done():
                due.append(poll)
                if not queued:  # before the tasks: they are queued once the feed wakes them
                    woken.get_loop().call_soon(self._answer_due)
                    queued = True

    def _answer_due(self) -> None:
        due, self._due = self._due, []
        registry = self._registry
        assert registry is not None
        revision = registry.revision
        answers: dict[tuple[str | None, bool], bytes | None] = {}
        date = formatdate(usegmt=True)
        for poll in due:
            transport = poll.transport
            if transport.is_closing() or transport.get_write_buffer_size():
                continue  # its handler answers (to no one; or once the socket drains)
            key = (poll.model_name, poll.healthy_only)
            if key in answers:
                answer = answers[key]
            else:
                found = registry.instances_now(*key)
                answer = None
                if found is not None:
                    body = _listing(found)
                    self.keep(*key, revision, registry.revision, body)
                    answer = _head(revision, len(body), date) + body
                answers[key] = answer
            if answer is not None:
                transport.write(answer)
                poll.answered = True
                self.ahead += 1

    def get(self, registry: Registry, model_name: str | None, healthy_only: bool) -> tuple[int, bytes] | None:
        kept = self._kept.get((model_name, healthy_only))
        if kept is None or kept[0] != registry.revision or time.monotonic() - kept[1] > self.TTL:
            return None
        return kept[0], kept[2]

    def keep(self, model_name: str | None, healthy_only: bool, read_at: int, now: int, body: bytes) -> None:
        if read_at != now:
            return  # it changed during the read: this answer is good for no one else
        if len(self._kept) >= self.MAX:
            self._kept.clear()
        self._kept[(model_name, healthy_only)] = (read_at, time.monotonic(), body)


POLL_ANSWERS = web.AppKey("poll_answers", PollAnswers)


class _Waiting:
    """A long-poll that may be answered ahead."""

    __slots__ = ("answered", "healthy_only", "model_name", "transport")

    def __init__(self, transport: asyncio.BaseTransport, model_name: str | None, healthy_only: bool) -> None:
        self.transport: Any = transport
        self.model_name = model_name
        self.healthy_only = healthy_only
        self.answered = False


def _head(revision: int, length: int, date: str) -> bytes:
    """The head of a long-poll's answer written ahead: the headers aiohttp writes for
    ``json_body_response``, in its order. What changes the one (a header, a signal
    adding one) must change this too: ``tests/api/test_watch.py`` compares them."""
    return (
        f"HTTP/1.1 200 OK\r\nServer: {SERVER[hdrs.SERVER]}\r\n{INDEX_HEADER}: {revision}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {length}\r\nDate: {date}\r\n\r\n"
    ).encode()


class _Answered(web.StreamResponse):
    """The answer of a long-poll ``PollAnswers`` answered ahead: already on its socket,
    so aiohttp sends nothing, and keeps the connection for the next request."""

    def __init__(self) -> None:
        super().__init__(status=200)

    @property
    def keep_alive(self) -> bool:
        return True

    async def prepare(self, request: web.BaseRequest) -> None:
        return None

    async def write_eof(self, data: bytes = b"") -> None:
        return None


#: The listings' kept JSON, within a budget (one for the process: it is a cache).
LISTINGS = Memos()


def _listing(found: list[ModelInstance]) -> bytes:
    """A listing's JSON. A snapshot's is written by its first reader and kept
    on it for the others: a model's instances are read far more often than
    they change, and rendering them is most of what a read costs. What is kept
    stays within ``LISTINGS``'s budget."""
    if type(found) is Snapshot:
        body = found.memo
        if body is None:
            # Kept as an exact-size copy: orjson grows its output by reallocating,
            # and the allocator's leftovers made each kept listing cost 2.4 times
            # its size in resident memory (benchmarks: memory/100000).
            body = bytes(memoryview(dumps({"instances": found, "count": len(found)})))
            LISTINGS.keep(found, body)
        return body  # type: ignore[no-any-return]
    return dumps({"instances": found, "count": len(found)})


async def models(request: web.Request, registry: Registry) -> web.Response:
    if _is_long_poll(request):
        await _long_poll(request, registry, None, None)
    revision = registry.revision
    answer = {"models": await registry.models(), "self_preservation": registry.self_preservation}
    return json_response(answer, headers={INDEX_HEADER: str(revision)})


async def patch(request: web.Request, registry: Registry) -> web.Response:
    key = key_from(request.query)
    changes = await read_object(request)
    caller = principal_of(request)
    record = await registry.patch(key, changes, caller.name if caller is not None else None)
    audit(request, "instance changed", model=key.model_name, addr=key.address, changes=changes)
    return json_response(record)


async def report(request: web.Request, registry: Registry) -> web.Response:
    instance, failures, verdict = await registry.report(await read_object(request))
    return json_response(
        {"instance": instance, "failures": failures, "outcome": verdict.kind, "why": verdict.why}
    )


def _is_long_poll(request: web.Request) -> bool:
    query = request.query
    return "index" in query or "wait" in query


async def _long_poll(
    request: web.Request, registry: Registry, model_name: str | None, healthy_only: bool | None
) -> bool:
    """With ``?index=N``, wait (up to ``wait``, default 5 min, or --max-wait)
    until something after revision N changes, as Consul's blocking queries do.
    ``healthy_only``: the poll is for that listing of ``model_name``, which may be
    answered ahead (``PollAnswers``): then true is returned."""
    index = revision_param(request, "index")
    max_wait = request.app[SETTINGS].max_wait
    wait = duration_param(request, "wait", limit=max_wait)
    if index is None:
        raise ApiError(
            422,
            "invalid_input",
            "wait: only means something with index=N (the X-Registry-Index of your last answer)",
            field="wait",
        )
    settings = request.app[SETTINGS]
    if registry.feed.polls >= settings.max_long_polls:
        raise ApiError(
            503,
            "too_many_long_polls",
            f"{settings.max_long_polls} long-polls are already waiting (--max-long-polls): "
            "retry later, or watch the changes over GET /api/v1/watch",
            headers={"Retry-After": str(BUSY_RETRY_AFTER_S)},
        )
    polls = request.app[POLL_ANSWERS]
    with request.app[DISCONNECTS].watch(request) as woken:
        if healthy_only is not None:
            polls.note(woken, request, model_name, healthy_only)
        try:
            await registry.wait_for_change(index, model_name, max_wait if wait is None else wait, woken)
        finally:
            answered = polls.done(woken)
    return answered


async def select(request: web.Request, registry: Registry) -> web.Response:
    model_name = model_name_param(request, required=True)
    strategy = strategy_param(request)
    fallback = request.query.get("fallback")
    if fallback is not None and fallback != "least_bad":
        raise ApiError(422, "invalid_input", "fallback: the one fallback is least_bad", field="fallback")
    picked, reason, degraded = await registry.select_why(model_name, strategy, fallback)
    return json_response({**picked.__dict__, "reason": reason, "degraded": degraded})


async def health(request: web.Request, registry: Registry) -> web.Response:
    if request.app[LIFECYCLE].draining:
        raise ApiError(503, "shutting_down", "the registry is shutting down", headers={"Retry-After": "1"})
    return json_response(
        {"status": "ok", **await registry.health(), "connections": request.app[CONNECTIONS].stats()}
    )
