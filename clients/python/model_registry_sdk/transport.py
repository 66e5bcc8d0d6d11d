"""One logical call to the registry: choose a URL, send, retry, map errors.

The pipeline, in order, for every call:

1. refuse at once if the client is closed;
2. send to the current URL with a per-attempt timeout;
3. a connection failure (refused, reset, timed out) or a retryable status
   (502/503/504, and 500 when the call is idempotent) moves to the next URL:
   at once if that URL has not been tried in this call, else after a backoff
   (or the ``Retry-After`` the registry sent);
4. a 4xx is raised at once as ``RegistryClientError``, never retried;
5. out of attempts or past the deadline: ``RegistryUnavailable`` naming the
   last cause.

After ``reset_after`` connection failures in a row the HTTP session is thrown
away and a new one made, so sockets kept alive from a registry that has since
restarted stop failing calls.

``websocket`` opens one WebSocket on the current URL, for callers that run
their own reconnection loop (``watch``): one attempt, the same failover and
the same error mapping, no retry.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Mapping, Sequence
from typing import Any

import aiohttp
import orjson

from .clock import Clock, SystemClock
from .errors import ClientClosed, RegistryUnavailable, client_error
from .retry import RETRY_STATUSES, Retry

#: The registry is full (``InstanceLimit``): an answer to give up on, not to retry.
INSUFFICIENT_STORAGE = 507
#: 503 answers that are outcomes, not outages: raised at once, never retried elsewhere.
NOT_RETRIED = frozenset({"all_cooling_down"})

__all__ = ["Transport", "parse_urls"]

log = logging.getLogger("model_registry_sdk")

_CONNECTION_ERRORS = (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError, asyncio.TimeoutError)


def parse_urls(urls: str | Sequence[str]) -> list[str]:
    """``"http://a:8000, b:8000"`` or a list -> normalised base URLs."""
    items = urls.split(",") if isinstance(urls, str) else list(urls)
    parsed = []
    for item in items:
        url = item.strip().rstrip("/")
        if not url:
            continue
        parsed.append(url if "://" in url else f"http://{url}")
    if not parsed:
        raise ValueError(f"no registry URL given in {urls!r}; pass e.g. http://127.0.0.1:8000")
    return parsed


def _retry_after(headers: Mapping[str, str]) -> float | None:
    try:
        return float(headers["Retry-After"])
    except (KeyError, ValueError):
        return None


class Transport:
    def __init__(
        self,
        urls: str | Sequence[str],
        retry: Retry,
        *,
        reset_after: int = 3,
        clock: Clock | None = None,
        token: str | None = None,
        ca: str | None = None,
    ) -> None:
        self.urls = parse_urls(urls)
        # Sent with every request and the watch's handshake; never in a URL's query.
        self._headers = {"Authorization": f"Bearer {token}"} if token else None
        self._ssl: ssl.SSLContext | bool = ssl.create_default_context(cafile=ca) if ca else True
        self.retry = retry
        self.reset_after = reset_after
        self.sessions_created = 0
        self.clock: Clock = clock or SystemClock()
        self._current = 0
        self._failures_in_a_row = 0
        self._session: aiohttp.ClientSession | None = None
        self._closed = False
        self._closing = asyncio.Event()

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def current_url(self) -> str:
        return self.urls[self._current]

    def fail_over(self) -> None:
        """Make the next URL the current one."""
        self._current = (self._current + 1) % len(self.urls)

    async def close(self) -> None:
        self._closed = True
        self._closing.set()
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _session_for_call(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                headers=self._headers, connector=aiohttp.TCPConnector(ssl=self._ssl)
            )
            self.sessions_created += 1
        return self._session

    async def _reset_session(self) -> None:
        if self._session is not None:
            log.info("recreating the HTTP session after %d connection failures", self._failures_in_a_row)
            await self._session.close()
            self._session = None
        self._failures_in_a_row = 0

    async def request(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        params: Mapping[str, str] | None = None,
        idempotent: bool = True,
        deadline: float | None = None,
    ) -> Any:
        """Send one call; return the decoded JSON body of its 2xx answer."""
        if self._closed:
            raise ClientClosed()
        clock = self.clock
        started = clock.monotonic()
        give_up_at = started + (deadline if deadline is not None else self.retry.deadline)
        body = None if json is None else orjson.dumps(json, option=orjson.OPT_NAIVE_UTC | orjson.OPT_UTC_Z)
        tried: set[int] = set()
        attempts, retries, last_error = 0, 0, "no attempt was made"
        # Failing over to a URL not yet tried costs an attempt but no wait.
        max_attempts = self.retry.attempts + len(self.urls) - 1
        while attempts < max_attempts:
            remaining = give_up_at - clock.monotonic()
            if remaining <= 0:
                break
            index, url = self._current, self.urls[self._current]
            tried.add(index)
            attempts += 1
            retry_after = None
            try:
                status, answer, headers = await self._send(method, url + path, body, params, remaining)
            except _CONNECTION_ERRORS as exc:
                last_error = f"{url}: {_describe(exc)}"
                self._failures_in_a_row += 1
                if self._failures_in_a_row >= self.reset_after:
                    await self._reset_session()
            else:
                self._failures_in_a_row = 0
                if status < 400:
                    return answer
                if status == 503 and isinstance(answer, dict) and answer.get("error") in NOT_RETRIED:
                    raise client_error(status, answer)  # an answer about the model, not the registry
                retryable = status in RETRY_STATUSES or (status == 500 and idempotent)
                if 400 <= status < 500 or not retryable:
                    if status >= 500 and status != INSUFFICIENT_STORAGE:
                        raise RegistryUnavailable(f"{url} answered {status} to {method} {path}")
                    raise client_error(status, answer)
                last_error = f"{url} answered {status}" + (
                    f" ({answer['detail']})" if isinstance(answer, dict) and "detail" in answer else ""
                )
                retry_after = _retry_after(headers)
            self._current = (index + 1) % len(self.urls)
            if self._current in tried and attempts < max_attempts:
                wait = self.retry.delay(retries, retry_after)
                retries += 1
                if clock.monotonic() + wait >= give_up_at:
                    break
                await clock.sleep(wait)
        elapsed = clock.monotonic() - started
        raise RegistryUnavailable(
            f"no registry answered {method} {path} after {attempts} attempt(s) in {elapsed:.1f} s; "
            f"last error: {last_error}; check that the registry runs at {', '.join(self.urls)}"
        )

    async def websocket(
        self, path: str, params: Mapping[str, str], *, heartbeat: float
    ) -> aiohttp.ClientWebSocketResponse:
        """Open a WebSocket to ``path`` on the current URL (``ws://`` for ``http://``).

        The handshake is bounded by the per-attempt timeout; the socket then
        pings every ``heartbeat`` s and closes itself when no pong comes back. A
        connection failure or a 5xx moves the current URL to the next one and
        raises ``RegistryUnavailable``; a 4xx raises its ``RegistryClientError``.
        """
        if self._closed:
            raise ClientClosed()
        url = self.current_url
        timeout = aiohttp.ClientWSTimeout(ws_receive=None, ws_close=self.retry.timeout)
        try:
            async with asyncio.timeout(self.retry.timeout):
                ws = await self._session_for_call().ws_connect(
                    "ws" + url.removeprefix("http") + path,
                    params=params,
                    heartbeat=heartbeat,
                    timeout=timeout,
                )
        except aiohttp.WSServerHandshakeError as exc:
            if self._closed:
                raise ClientClosed() from exc
            if 400 <= exc.status < 500:
                raise client_error(exc.status, None) from exc
            self.fail_over()
            raise RegistryUnavailable(f"{url} answered {exc.status} to the upgrade of {path}") from exc
        except _CONNECTION_ERRORS as exc:
            if self._closed:
                raise ClientClosed() from exc
            self.fail_over()
            self._failures_in_a_row += 1
            if self._failures_in_a_row >= self.reset_after:
                await self._reset_session()
            raise RegistryUnavailable(f"{url}: {_describe(exc)}") from exc
        self._failures_in_a_row = 0
        return ws

    async def pause(self, seconds: float) -> None:
        """Wait ``seconds`` on the client's clock, or until the client is closed."""
        sleeping = asyncio.ensure_future(self.clock.sleep(seconds))
        closing = asyncio.ensure_future(self._closing.wait())
        try:
            await asyncio.wait({sleeping, closing}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            sleeping.cancel()
            closing.cancel()

    async def _send(
        self, method: str, url: str, body: bytes | None, params: Mapping[str, str] | None, budget: float
    ) -> tuple[int, Any, Mapping[str, str]]:
        session = self._session_for_call()
        timeout = aiohttp.ClientTimeout(total=min(self.retry.timeout, budget))
        headers = {"Content-Type": "application/json"} if body is not None else None
        async with session.request(
            method, url, data=body, params=params, headers=headers, timeout=timeout
        ) as response:
            raw = await response.read()
            try:
                answer = orjson.loads(raw) if raw else None
            except orjson.JSONDecodeError:
                answer = None  # e.g. a proxy's HTML error page
            return response.status, answer, response.headers


def _describe(exc: BaseException) -> str:
    if isinstance(exc, asyncio.TimeoutError):
        return "timed out"
    return str(exc) or type(exc).__name__
