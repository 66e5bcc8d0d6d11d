"""The bare aiohttp server every figure is compared with.

Same request and response shapes as the registry: a heartbeat or registration
body parsed with orjson and a small JSON object returned (``true`` and
``{"exist": true}`` for DB-GPT's and FastChat's heartbeats); a GET returning a list
of ``--list-size`` instance objects; a GET returning one. No validation, no
storage: the framework's limit on this machine.
"""

from __future__ import annotations

import argparse
import asyncio
from datetime import datetime, timezone

import orjson
from aiohttp import web


def instance(i: int) -> dict:
    now = datetime.now(timezone.utc)
    return {
        "model_name": "model-0",
        "host": f"10.0.{i // 250}.{i % 250 + 1}",
        "port": 8000,
        "weight": 1.0,
        "check_healthy": True,
        "healthy": True,
        "enabled": True,
        "prompt_template": None,
        "last_heartbeat": now,
        "metadata": {},
        "registered_at": now,
        "unhealthy_since": None,
        "queue_length": 0,
        "overrides": None,
        "cooldown_until": None,
    }


def create_app(list_size: int) -> web.Application:
    listing = [instance(i) for i in range(list_size)]
    one = instance(0)
    options = orjson.OPT_UTC_Z

    async def post(request: web.Request) -> web.Response:
        body = orjson.loads(await request.read())
        reply = {**one, "model_name": body["model_name"], "host": body["host"], "port": body["port"]}
        return web.Response(body=orjson.dumps(reply, option=options), content_type="application/json")

    async def get_list(request: web.Request) -> web.Response:
        payload = {"instances": listing, "count": len(listing)}
        return web.Response(body=orjson.dumps(payload, option=options), content_type="application/json")

    async def get_one(request: web.Request) -> web.Response:
        return web.Response(body=orjson.dumps(one, option=options), content_type="application/json")

    async def post_true(request: web.Request) -> web.Response:  # DB-GPT's heartbeat
        body = orjson.loads(await request.read())
        reply = body["model_name"] is not None and body["port"] > 0
        return web.Response(body=orjson.dumps(reply), content_type="application/json")

    async def post_exist(request: web.Request) -> web.Response:  # FastChat's heartbeat
        body = orjson.loads(await request.read())
        reply = {"exist": bool(body["worker_name"]) and body["queue_length"] >= 0}
        return web.Response(body=orjson.dumps(reply), content_type="application/json")

    app = web.Application()
    app.router.add_post("/api/controller/heartbeat", post_true)
    app.router.add_post("/receive_heart_beat", post_exist)
    app.router.add_post("/api/v1/heartbeat", post)
    app.router.add_post("/api/v1/instances", post)
    app.router.add_get("/api/v1/instances", get_list)
    app.router.add_get("/api/v1/select", get_one)
    app.router.add_get("/health", get_one)
    return app


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--list-size", type=int, default=10)
    parser.add_argument("--uvloop", action="store_true")
    args = parser.parse_args()
    loop_factory = None
    if args.uvloop:
        import uvloop

        loop_factory = uvloop.new_event_loop
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        runner.run(_serve(create_app(args.list_size), args.port))


async def _serve(app: web.Application, port: int) -> None:
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    await asyncio.Event().wait()


if __name__ == "__main__":
    main()
