from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from model_registry import SystemClock
from tests.process import ServerProcess


@pytest.fixture
def server() -> Iterator[ServerProcess]:
    """A real registry process on memory://, on a free loopback port."""
    with ServerProcess("--storage", "memory://") as process:
        yield process


class Scripted:
    """A real HTTP server on loopback that answers from a script: a list of
    (status, body, headers) consumed in order, the last repeated."""

    def __init__(self, script: list[tuple[int, dict, dict]]) -> None:
        self.script = script
        self.requests: list[web.Request] = []

    async def handle(self, request: web.Request) -> web.Response:
        self.requests.append(request)
        status, body, headers = self.script[min(len(self.requests), len(self.script)) - 1]
        return web.json_response(body, status=status, headers=headers)


@pytest.fixture
async def scripted(aiohttp_server: Callable) -> Callable:
    async def start(*script: tuple[int, dict, dict]) -> tuple[Scripted, TestServer]:
        fake = Scripted(list(script))
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", fake.handle)
        return fake, await aiohttp_server(app)

    return start


class SteppingClock(SystemClock):
    """Monotonic time that moves only by the sleeps asked of it, which return
    at once and are recorded: retry arithmetic without waiting."""

    def __init__(self) -> None:
        self.sleeps: list[float] = []
        self._mono = 0.0

    def monotonic(self) -> float:
        return self._mono

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self._mono += seconds


@pytest.fixture
def clock() -> SteppingClock:
    return SteppingClock()
