"""``Fetcher``: the prober's HTTP GETs, a bare asyncio protocol per connection,
kept open between GETs while the instance allows it.

Why not aiohttp's client, which the rest of the project uses: measured on the
probing benchmark (``benchmarks/probing.py``), 1,000 probes a second through
``aiohttp.ClientSession`` took half of the registry's event loop (some 500 µs
of CPU each: connector, request and response objects, tracing hooks, cookie
jar). A probe needs far less: send one fixed request, read the status line and
the body it frames, and keep the connection for the next probe.

Why keep connections (as Envoy's health checker does by default): a new TCP
connection per probe costs the registry's core about 130 µs on loopback here,
nearly all of it the kernel's (handshake, teardown, the wake-ups); a GET on an
open connection costs a fifth of that. Whether it stays open is the instance's
call: uvicorn, under vLLM and SGLang, closes a connection idle for 5 s, so at
intervals over 5 s each probe of those connects anew (the close is noticed and
the connection dropped); TGI, Ollama and most others keep it. At most
``max_idle`` connections wait between probes (each is a descriptor); past it, a
connection is closed after its answer.

What it does not do, on purpose: follow redirects (a redirect could point
anywhere: the target rules are the registry's), send cookies or credentials,
use a proxy, ask for compression, or pipeline.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
from urllib.parse import urlsplit

__all__ = ["FetchError", "Fetcher", "Target", "TooLarge"]


class FetchError(Exception):
    """The request did not get an answer: the message says why (``connection refused``)."""


class TooLarge(FetchError):
    pass


class _Lost(FetchError):
    """A kept connection closed before any byte of the answer: the instance
    closed it while idle, as the request went out. Asked again on a new one."""


class Target:
    """A URL to fetch, taken apart once (a probe fetches the same one every
    interval), and the connection kept to it between fetches."""

    __slots__ = ("host", "idle", "port", "request", "tls", "url")

    def __init__(self, url: str) -> None:
        parts = urlsplit(url)
        self.url = url
        self.host = parts.hostname or ""
        self.tls = parts.scheme == "https"
        self.port = parts.port or (443 if self.tls else 80)
        path = parts.path or "/"
        if parts.query:
            path += f"?{parts.query}"
        authority = f"[{self.host}]" if ":" in self.host else self.host
        if parts.port is not None:
            authority += f":{parts.port}"
        self.request = (
            f"GET {path} HTTP/1.1\r\nHost: {authority}\r\nUser-Agent: model-registry-prober\r\n"
            "Accept: */*\r\n\r\n"
        ).encode("latin-1")
        self.idle: _Connection | None = None  # open, between two fetches


Answer = tuple[int, bytes | None]


class _Connection(asyncio.Protocol):
    """One connection: an answer at a time, idle between them. A status-only GET
    still reads the body it frames (to keep the connection), up to the limit;
    past it, or when the body runs to the close, the status is the answer and
    the connection is not kept."""

    __slots__ = (
        "body",
        "buffer",
        "closed",
        "done",
        "framing",
        "head_end",
        "keep",
        "limit",
        "owner",
        "transport",
    )

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.done: asyncio.Future[Answer] | None = None  # None: idle
        self.buffer = bytearray()
        self.body = False
        self.limit = 0
        self.head_end = -1  # where the body starts, once the head is in
        self.framing: int | bytes | None = None  # its length, b"chunked", or None: until the close
        self.keep = False  # whether the answer lets the connection be used again
        self.closed = False
        self.owner: tuple[Fetcher, Target] | None = None  # who keeps it, while it is idle

    # -- one exchange ------------------------------------------------------------

    def send(self, request: bytes, body: bool, limit: int, done: asyncio.Future[Answer]) -> None:
        self.done, self.body, self.limit = done, body, limit
        self.buffer = bytearray()
        self.head_end, self.framing, self.keep = -1, None, False
        assert self.transport is not None
        self.transport.write(request)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        if self.done is None:  # bytes nobody asked for: not a connection to keep
            self.close()
            return
        buffer = self.buffer
        buffer += data
        if len(buffer) > self.limit:
            if self.body or self.head_end < 0 and not self._head():
                self._fail(TooLarge(f"the answer is over {self.limit} bytes"))
            else:
                self._answer(keep=False)  # a status is all a check needs
        elif (self.head_end >= 0 or self._head()) and self._whole():
            self._answer(keep=self.keep)

    def _head(self) -> bool:
        """Take the head apart once it is all in."""
        end = self.buffer.find(b"\r\n\r\n")
        if end < 0:
            return False
        self.head_end = end + 4
        head = bytes(self.buffer[:end])
        headers = _headers(head)
        if b"chunked" in headers.get(b"transfer-encoding", b""):
            self.framing = b"chunked"
        else:
            length = headers.get(b"content-length", b"")
            self.framing = int(length) if length.isdigit() else None
        self.keep = (
            head.startswith(b"HTTP/1.1 ")
            and self.framing is not None
            and b"close" not in headers.get(b"connection", b"")
        )
        return True

    def _whole(self) -> bool:
        """Whether the body is all in (before the peer closes)."""
        buffer, framing = self.buffer, self.framing
        if isinstance(framing, int):
            return len(buffer) - self.head_end >= framing
        if framing == b"chunked" and buffer.endswith(b"0\r\n\r\n"):  # perhaps the last chunk
            try:
                _dechunk(bytes(buffer[self.head_end :]))
            except FetchError:
                return False  # chunk data that looked like the end
            return True
        return False

    def eof_received(self) -> bool | None:
        if self.done is not None:
            if self.buffer:
                self._answer(keep=False)
            else:
                self._fail(_Lost("the connection closed before an answer"))
        return None  # the transport closes itself

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.done is None:
            if self.owner is not None:
                fetcher, target = self.owner
                fetcher.forget(target, self)
            return
        if not self.buffer:
            self._fail(_Lost("the connection closed before an answer"))
        elif exc is not None:
            self._fail(FetchError(f"connection lost ({exc})"))
        else:
            self._answer(keep=False)

    # -- endings -------------------------------------------------------------------

    def _answer(self, *, keep: bool) -> None:
        done = self.done
        if done is None or done.done():
            return
        buffer = bytes(self.buffer)
        try:
            status = _status(buffer)
            result = (status, _body(buffer, self.head_end, self.framing) if self.body else None)
        except FetchError as exc:
            self._fail(exc)
            return
        self.done = None
        self.keep = keep
        if not keep:
            self.close()
        done.set_result(result)

    def _fail(self, exc: FetchError) -> None:
        done, self.done = self.done, None
        self.keep = False
        self.close()
        if done is not None and not done.done():
            done.set_exception(exc)

    def close(self) -> None:
        self.keep = False
        if self.transport is not None and not self.closed:
            self.transport.close()
            self.closed = True


def _headers(head: bytes) -> dict[bytes, bytes]:
    headers = {}
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        headers[name.strip().lower()] = value.strip().lower()
    return headers


def _status(buffer: bytes) -> int:
    line, _, _ = buffer[:256].partition(b"\r\n")
    parts = line.split(b" ", 2)
    if len(parts) < 2 or not parts[0].startswith(b"HTTP/1.") or not parts[1].isdigit() or len(parts[1]) != 3:
        raise FetchError("not an HTTP answer")
    return int(parts[1])


def _body(answer: bytes, head_end: int, framing: int | bytes | None) -> bytes:
    if head_end < 0:
        raise FetchError("the answer ended within its headers")
    body = answer[head_end:]
    if framing == b"chunked":
        return _dechunk(body)
    if isinstance(framing, int):
        if len(body) < framing:
            raise FetchError("the answer ended before its Content-Length")
        return body[:framing]
    return body


def _dechunk(body: bytes) -> bytes:
    out, at = bytearray(), 0
    while True:
        end = body.find(b"\r\n", at)
        if end < 0:
            raise FetchError("a chunked answer ended early")
        try:
            size = int(body[at:end].split(b";", 1)[0], 16)
        except ValueError:
            raise FetchError("a chunked answer has a bad chunk size") from None
        if size == 0:
            return bytes(out)
        start = end + 2
        out += body[start : start + size]
        if len(body) < start + size + 2:
            raise FetchError("a chunked answer ended early")
        at = start + size + 2


class _Deadline:
    """Cancels the task that fetches when its time is up, and says it did (cheaper
    than ``asyncio.timeout``, which a probe a millisecond would pay for)."""

    __slots__ = ("expired", "task")

    def __init__(self, task: asyncio.Task[object]) -> None:
        self.task, self.expired = task, False

    def __call__(self) -> None:
        self.expired = True
        self.task.cancel()


_TLS: ssl.SSLContext | None = None


def _tls() -> ssl.SSLContext:
    global _TLS
    if _TLS is None:
        _TLS = ssl.create_default_context()
    return _TLS


class Fetcher:
    """GETs to targets, with at most ``max_idle`` connections kept open between
    them (0: a new connection for every GET). ``close()`` closes those kept."""

    def __init__(self, max_idle: int) -> None:
        self.max_idle = max_idle
        # The loop, once known: on Python 3.11 each asyncio.get_running_loop()
        # is a getpid() system call, and a probe would make several.
        self._loop: asyncio.AbstractEventLoop | None = None
        self._kept: set[Target] = set()
        #: GETs sent on a kept connection, and on a new one, since the start.
        self.reused = 0
        self.connected = 0

    @property
    def idle(self) -> int:
        """Connections open and waiting for their target's next GET."""
        return len(self._kept)

    async def get(
        self, target: Target, timeout: float, *, body: bool = False, limit: int = 64 * 1024
    ) -> Answer:
        """``GET`` the target: its status, and with ``body`` the answer's body (at most
        ``limit`` bytes, ``TooLarge`` past it). ``TimeoutError`` after ``timeout`` seconds
        in all; ``FetchError`` when there is no answer."""
        loop = self._loop
        if loop is None:
            loop = self._loop = asyncio.get_running_loop()
        task = asyncio.current_task(loop)
        assert task is not None, "a GET runs in a task"
        deadline = _Deadline(task)
        timer = loop.call_later(timeout, deadline)
        connection = self._take(target)
        try:
            if connection is not None:
                self.reused += 1
                try:
                    return await self._exchange(connection, target, body, limit)
                except _Lost:
                    pass  # closed by the instance as we asked: ask again, on a new connection
            connection = await self._connect(target)
            self.connected += 1
            try:
                return await self._exchange(connection, target, body, limit)
            except _Lost as exc:
                raise FetchError(str(exc)) from None
        except asyncio.CancelledError:
            if connection is not None:
                connection.close()
            if deadline.expired:
                task.uncancel()
                raise TimeoutError(f"no answer within {timeout:g} s") from None
            raise
        finally:
            timer.cancel()

    def _take(self, target: Target) -> _Connection | None:
        connection, target.idle = target.idle, None
        if connection is None:
            return None
        self._kept.discard(target)
        connection.owner = None
        return None if connection.closed else connection

    async def _exchange(self, connection: _Connection, target: Target, body: bool, limit: int) -> Answer:
        assert self._loop is not None
        done: asyncio.Future[Answer] = self._loop.create_future()
        connection.send(target.request, body, limit, done)
        answer = await done
        if connection.keep and not connection.closed and len(self._kept) < self.max_idle:
            target.idle, connection.owner = connection, (self, target)
            self._kept.add(target)
        else:
            connection.close()
        return answer

    async def _connect(self, target: Target) -> _Connection:
        assert self._loop is not None
        try:
            _, connection = await self._loop.create_connection(
                _Connection,
                target.host,
                target.port,
                ssl=_tls() if target.tls else None,
                server_hostname=target.host if target.tls else None,
            )
        except ConnectionRefusedError:
            raise FetchError("connection refused") from None
        except ssl.SSLError as exc:
            raise FetchError(f"TLS error ({exc.reason or exc})") from None
        except socket.gaierror:
            raise FetchError("cannot resolve the host") from None
        except OSError as exc:
            raise FetchError(f"cannot connect ({exc.strerror or exc})") from None
        return connection

    def forget(self, target: Target, connection: _Connection | None = None) -> None:
        """Close the connection kept to ``target`` (when it is ``connection``, if given)."""
        if target.idle is None or (connection is not None and target.idle is not connection):
            return
        kept = self._take(target)
        if kept is not None:
            kept.close()

    def close(self) -> None:
        """Close every connection kept."""
        for target in list(self._kept):
            self.forget(target)
