"""The dashboard under a large fleet: ``python benchmarks/dashboard.py`` (``--help``).

A registry (memory backend, pinned to core 0) gets ``--instances`` instances over
HTTP, then Debian's headless Chromium opens the dashboard and we measure:

- *first render*: from the navigation to every model listed (the snapshot received,
  applied and drawn), with the busiest model's instance list open;
- *events*: ``--events`` drains through the API, ``--connections`` at a time, then as
  many undrains: from the first request to the frame that shows the last of them
  (``window.__dashboard.rendered``, the events the page has drawn), and how far the page
  trailed the API's last answer.

Not a test: it prints figures. ``--screenshot docs/dashboard.png`` instead fills a
small, realistic fleet (some instances silent, one drained, one cooling down) and
saves the README's picture of it.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import sys
import time
from collections.abc import Iterable
from pathlib import Path
from urllib.parse import quote

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.load import identity, registry  # noqa: E402

WAIT_MS = 120_000


def _chromium() -> str:
    found = shutil.which("chromium")
    if found is None:
        raise SystemExit("Debian's chromium is not installed (apt-get install chromium)")
    return found


async def _each(
    url: str, method: str, path: str, requests: Iterable[tuple[dict | None, dict]], connections: int
) -> None:
    """Every (query, body) request, ``connections`` at a time; each must answer 2xx."""
    connector = aiohttp.TCPConnector(limit=connections)
    async with aiohttp.ClientSession(url, connector=connector) as http:
        queue = iter(requests)

        async def worker() -> None:
            for params, body in queue:
                async with http.request(method, path, params=params, json=body) as answer:
                    if answer.status >= 300:
                        raise SystemExit(f"{method} {path} answered {answer.status}: {await answer.text()}")

        await asyncio.gather(*(worker() for _ in range(connections)))


def _query(instance: dict) -> dict:
    return {"model_name": instance["model_name"], "host": instance["host"], "port": str(instance["port"])}


async def _launch(playwright):
    args = ["--no-sandbox"] if os.geteuid() == 0 else []
    return await playwright.chromium.launch(executable_path=_chromium(), args=args)


# -- the measurement -----------------------------------------------------------


async def _shown(page, count: int) -> float:
    """Until the page has drawn ``count`` events; the page's clock (ms) at that frame."""
    handle = await page.wait_for_function(
        "(n) => window.__dashboard && window.__dashboard.rendered >= n && performance.now()",
        arg=count,
        polling="raf",
        timeout=WAIT_MS,
    )
    return float(await handle.json_value())


async def measure(args: argparse.Namespace) -> None:
    from playwright.async_api import async_playwright

    per_model = max(1, args.instances // args.models)
    instances = [identity(n, per_model) for n in range(args.instances)]
    models = len({i["model_name"] for i in instances})
    server = registry("memory://")
    try:
        server.wait_ready()
        started = time.monotonic()
        registrations = ((None, body) for body in instances)
        await _each(server.url, "POST", "/api/v1/instances", registrations, args.connections)
        print(
            f"registered {len(instances)} instances of {models} models in {time.monotonic() - started:.1f} s"
        )

        async with async_playwright() as playwright:
            browser = await _launch(playwright)
            page = await browser.new_page(viewport={"width": 1440, "height": 900})
            errors: list[str] = []
            page.on("pageerror", lambda error: errors.append(str(error)))
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            await page.goto(f"{server.url}/#model={quote(instances[0]['model_name'], safe='')}")
            first = await page.wait_for_function(
                """(n) => window.__dashboard && window.__dashboard.models === n
                    && document.querySelectorAll('[data-testid="model-row"]').length > 0
                    && document.querySelectorAll('[data-testid="instance-row"]').length > 0
                    && performance.now()""",
                arg=models,
                polling="raf",
                timeout=WAIT_MS,
            )
            first_ms = float(await first.json_value())
            rows = await page.evaluate("document.querySelectorAll('.vrow').length")
            print(f"first render: {first_ms:.0f} ms from navigation to {models} models listed", end=" ")
            print(f"and model-0's instances shown ({rows} rows in the DOM)")

            for kind, body in (("drains", {"enabled": False}), ("undrains", {"enabled": None})):
                await _events(page, server.url, kind, body, instances[: args.events], args.connections)
            heap = await page.evaluate("performance.memory ? performance.memory.usedJSHeapSize : 0")
            print(f"page JS heap: {heap / 1e6:.1f} MB; errors on the page: {errors or 'none'}")
            await browser.close()
    finally:
        server.stop()


async def _events(page, url: str, kind: str, body: dict, targets: list[dict], connections: int) -> None:
    base = await page.evaluate("window.__dashboard.rendered")
    sent_at = await page.evaluate("performance.now()")
    started = time.monotonic()
    shown = asyncio.create_task(_shown(page, base + len(targets)))
    await _each(url, "PATCH", "/api/v1/instances", ((_query(i), body) for i in targets), connections)
    answered = time.monotonic() - started
    shown_ms = await shown - sent_at
    print(
        f"{len(targets)} {kind}: the API answered all in {answered * 1000:.0f} ms; the page showed the last "
        f"{shown_ms:.0f} ms after the first was sent ({max(0.0, shown_ms - answered * 1000):.0f} ms after "
        f"the last answer), {len(targets) / (shown_ms / 1000):.0f} events/s"
    )


# -- the README's picture ------------------------------------------------------

#: A fleet: (model, instances, silent ones).
FLEET = [
    ("meta-llama/Llama-3.1-8B-Instruct", 12, 2),
    ("glm-4@llm", 6, 0),
    ("qwen2.5-72b-instruct", 8, 3),
    ("bge-m3@embedding", 4, 0),
    ("whisper-large-v3", 3, 3),
]


async def screenshot(path: Path) -> None:
    from playwright.async_api import async_playwright, expect

    server = registry("memory://", "--heartbeat-timeout", "2")
    try:
        server.wait_ready()
        fleet = [
            (_member(model, m, n), n < silent)
            for m, (model, count, silent) in enumerate(FLEET)
            for n in range(count)
        ]
        async with async_playwright() as playwright, aiohttp.ClientSession(server.url) as http:
            browser = await _launch(playwright)
            page = await browser.new_page(viewport={"width": 1440, "height": 860})
            await page.goto(f"{server.url}/#model={quote(FLEET[0][0], safe='')}")
            beating = asyncio.create_task(_beat(http, [body for body, silent in fleet if not silent]))
            try:
                for body, _ in fleet:
                    async with http.post("/api/v1/instances", json=body) as answer:
                        assert answer.status in (200, 201), await answer.text()
                    await asyncio.sleep(0.05)
                drained, weighed, cooling = fleet[5][0], fleet[9][0], fleet[7][0]
                await _send(http, "PATCH", "/api/v1/instances", _query(drained), {"enabled": False})
                await _send(http, "PATCH", "/api/v1/instances", _query(weighed), {"weight": 3})
                report = {**cooling, "ok": False, "status": 500, "error": "CUDA error: device-side assert"}
                report.pop("metadata")
                for _ in range(3):  # --unhealthy-threshold: the routers' reports put it in cooldown
                    await _send(http, "POST", "/api/v1/reports", None, report)
                # The silent ones are marked after the start-up grace and one timeout.
                await expect(page.locator('[data-health="unhealthy"]')).to_have_count(
                    FLEET[0][2], timeout=20_000
                )
                await page.wait_for_function("(n) => window.__dashboard.models === n", arg=len(FLEET))
                await page.get_by_test_id("refresh-loads").click()
                await asyncio.sleep(1.5)  # let the chart's line run on past the last change
                await page.screenshot(path=path)
                print(f"saved {path}")
            finally:
                beating.cancel()
            await browser.close()
    finally:
        server.stop()


async def _send(http: aiohttp.ClientSession, method: str, path: str, params: dict | None, body: dict) -> None:
    async with http.request(method, path, params=params, json=body) as answer:
        assert answer.status < 300, await answer.text()


def _member(model: str, m: int, n: int) -> dict:
    metadata = {"gpu": ["a100", "h100", "l40s"][(m + n) % 3], "zone": f"eu-west-{1 + n % 3}"}
    return {"model_name": model, "host": f"10.0.{m}.{n + 11}", "port": 8001, "metadata": metadata}


async def _beat(http: aiohttp.ClientSession, bodies: list[dict]) -> None:
    load = 0
    while True:
        for body in bodies:
            load = (load + 7) % 23
            beat = {**body, "queue_length": load}
            async with http.post("/api/v1/heartbeat", json=beat) as answer:
                assert answer.status == 200, await answer.text()
        await asyncio.sleep(0.4)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--instances", type=int, default=10_000)
    parser.add_argument("--models", type=int, default=100, help="the instances are spread over this many")
    parser.add_argument("--events", type=int, default=1_000)
    parser.add_argument("--connections", type=int, default=32, help="requests in flight at once")
    parser.add_argument("--screenshot", type=Path, help="save the README's picture here instead of measuring")
    args = parser.parse_args()
    if args.screenshot:
        asyncio.run(screenshot(args.screenshot))
    else:
        asyncio.run(measure(args))


if __name__ == "__main__":
    main()
