"""``ConnectionCap`` on a real aiohttp server on loopback: the descriptors the
process holds besides its clients' (the prober's connections) come off the cap."""

from __future__ import annotations

import asyncio

from aiohttp import web

from model_registry.api.connections import ConnectionCap


async def _served(port: int) -> bool:
    """Whether a new connection gets an answer (not closed at once)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
        try:
            line = await asyncio.wait_for(reader.readline(), 5)
        except ConnectionResetError:
            line = b""
        return line.startswith(b"HTTP/1.1 200")
    finally:
        writer.close()


async def _ok(request: web.Request) -> web.Response:
    return web.Response(text="ok")


async def test_descriptors_held_elsewhere_lower_the_cap() -> None:
    app = web.Application()
    app.router.add_get("/", _ok)
    runner = web.AppRunner(app)
    await runner.setup()
    assert runner.server is not None
    cap = ConnectionCap(per_client=0, total=3)
    cap.attach(runner.server)
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        held = [await asyncio.open_connection("127.0.0.1", port) for _ in range(2)]
        await asyncio.sleep(0.05)
        assert await _served(port)  # the third of three
        held_elsewhere = 1
        cap.held_elsewhere = lambda: held_elsewhere
        assert not await _served(port)  # three of clients', one of the prober's: past the cap
        assert cap.refused_at_limit == 1
        held_elsewhere = 0
        assert await _served(port)
        for _, writer in held:
            writer.close()
    finally:
        await runner.cleanup()
