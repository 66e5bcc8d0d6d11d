"""``GET /docs``: the page and its packaged assets over plain HTTP, then rendered by a real
headless Chromium (Debian's ``chromium``, driven by Playwright) against a real server process.

What the page must list is read from the live ``/openapi.json``, so the test holds for
whatever the document holds. Without Chromium the browser tests are skipped, saying why,
except in CI (``CI`` set), where they fail: CI must run them (.ci/run installs it).
"""

from __future__ import annotations

import gzip
import hashlib
import os
import re
import shutil
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from html.parser import HTMLParser
from importlib.resources import files
from urllib.parse import parse_qs, urljoin, urlsplit

import aiohttp
import orjson
import pytest
from playwright.async_api import ConsoleMessage, Page, Request, async_playwright
from playwright.async_api import TimeoutError as PlaywrightTimeoutError

from model_registry.api.docs import ASSETS
from tests.process import ServerProcess

#: The operations of a path item (OpenAPI 3.1), as Swagger UI names them on the page.
METHODS = ("get", "put", "post", "delete", "options", "head", "patch", "trace")
#: Long enough for a loaded CI machine; a page that never renders still fails.
RENDER_TIMEOUT_MS = 30_000


@pytest.fixture(scope="module")
def server() -> Iterator[ServerProcess]:
    with ServerProcess("--storage", "memory://") as started:
        yield started


def fetch(url: str, **headers: str) -> tuple[int, dict[str, str], bytes]:
    """Status, headers (lower-cased names) and body; an error status is an answer too."""
    request = urllib.request.Request(url, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=10) as answer:
            return answer.status, {k.lower(): v for k, v in answer.headers.items()}, answer.read()
    except urllib.error.HTTPError as refused:
        return refused.code, {k.lower(): v for k, v in refused.headers.items()}, refused.read()


class _PageParts(HTMLParser):
    """The page's references (``src``/``href``), its inline scripts and inline styling."""

    def __init__(self) -> None:
        super().__init__()
        self.references: list[str] = []
        self.inline: list[str] = []
        self._in_script = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        named = dict(attrs)
        if tag == "script":
            self._in_script = True
            if not named.get("src"):
                self.inline.append("a <script> without src")
        if tag == "style":
            self.inline.append("a <style> element")
        self.inline += [f"{tag} {name}=" for name in named if name == "style" or name.startswith("on")]
        self.references += [
            value
            for name, value in attrs
            if name in ("src", "href") and value and not value.startswith("data:")
        ]

    def handle_endtag(self, tag: str) -> None:
        self._in_script = self._in_script and tag != "script"

    def handle_data(self, data: str) -> None:
        if self._in_script and data.strip():
            self.inline.append(f"inline script {data.strip()[:40]!r}")


def _policy(header: str) -> dict[str, list[str]]:
    directives = (part.split() for part in header.split(";") if part.strip())
    return {name: sources for name, *sources in directives}


def _packaged(name: str) -> bytes:
    path, _ = ASSETS[name]
    return files("model_registry.api").joinpath("static", *path.split("/")).read_bytes()


def test_the_page_is_html_under_a_strict_policy_and_loads_only_packaged_assets(server: ServerProcess) -> None:
    status, headers, body = fetch(f"{server.url}/docs")
    assert status == 200
    assert headers["content-type"] == "text/html; charset=utf-8"
    assert headers["cache-control"] == "no-cache"  # so that a new release's asset URLs are seen
    policy = _policy(headers["content-security-policy"])
    assert policy["default-src"] == ["'none'"]
    assert policy["script-src"] == ["'self'"]  # no inline script, no eval, no other host
    for directive in ("style-src", "img-src", "connect-src"):
        assert "'self'" in policy[directive], directive
        assert set(policy[directive]) <= {"'self'", "'unsafe-inline'", "data:"}, policy[directive]
    assert policy["frame-ancestors"] == ["'none'"]

    parts = _PageParts()
    parts.feed(body.decode())
    assert parts.inline == []
    # Every reference is relative (so that it resolves under a proxy's path prefix) and
    # names a packaged asset or the document.
    assert all(not urlsplit(ref).scheme and not ref.startswith("/") for ref in parts.references), (
        parts.references
    )
    page_url = f"{server.url}/docs"
    targets = {urlsplit(urljoin(page_url, ref)).path for ref in parts.references}
    assert targets == {"/openapi.json"} | {f"/docs/assets/{name}" for name in ASSETS}
    assert b'data-url="openapi.json"' in body
    # Each asset's URL carries a digest of its content: a new release's is a new URL.
    for ref in parts.references:
        name = urlsplit(ref).path.removeprefix("docs/assets/")
        if name in ASSETS:
            [digest] = parse_qs(urlsplit(ref).query)["v"]
            assert len(digest) >= 8 and hashlib.sha256(_packaged(name)).hexdigest().startswith(digest), ref


@pytest.mark.parametrize(("name", "content_type"), [(name, ct) for name, (_, ct) in ASSETS.items()])
def test_each_asset_answers_with_its_type_for_a_year_as_packaged(
    server: ServerProcess, name: str, content_type: str
) -> None:
    status, headers, body = fetch(f"{server.url}/docs/assets/{name}")
    assert status == 200
    assert headers["content-type"] == f"{content_type}; charset=utf-8"
    # Kept for a year: the page names each asset with a digest of its content (the test above).
    max_age = re.search(r"\bmax-age=(\d+)", headers["cache-control"])
    assert max_age is not None and int(max_age[1]) >= 365 * 24 * 3600, headers["cache-control"]
    assert headers["x-content-type-options"] == "nosniff"
    assert body == _packaged(name) and body
    status, headers, zipped = fetch(f"{server.url}/docs/assets/{name}", **{"Accept-Encoding": "gzip"})
    assert (status, headers["content-encoding"], headers["vary"]) == (200, "gzip", "Accept-Encoding")
    assert gzip.decompress(zipped) == body and len(zipped) < len(body)


@pytest.mark.parametrize(
    "name",
    ["nope.js", "LICENSE", "swagger-ui.css.map", "swagger-ui-init.js.bak", "..%2Fdocs.py", "%2e%2e%2fapp.py"],
)
def test_an_asset_off_the_list_is_a_json_404(server: ServerProcess, name: str) -> None:
    status, headers, body = fetch(f"{server.url}/docs/assets/{name}")
    assert status == 404
    assert headers["content-type"] == "application/json"
    assert orjson.loads(body)["error"] == "not_found"


def _chromium() -> str:
    found = shutil.which("chromium")
    if found is None:
        reason = "Debian's chromium is not installed (apt-get install chromium)"
        if os.environ.get("CI"):
            pytest.fail(f"{reason}; CI must run the /docs browser tests", pytrace=False)
        pytest.skip(reason)
    return found


@dataclass
class Recorded:
    """What a page did: every request it made, its console errors and uncaught exceptions."""

    requests: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def request(self, request: Request) -> None:
        self.requests.append(request.url)

    def console(self, message: ConsoleMessage) -> None:
        if message.type == "error":
            self.errors.append(f"console: {message.text} at {message.location}")

    def exception(self, error: Exception) -> None:
        self.errors.append(f"uncaught: {error}")


@pytest.fixture
async def browser_page() -> AsyncIterator[tuple[Page, Recorded]]:
    executable = _chromium()
    # Chromium will not start as root with its sandbox (a CI container's user).
    args = ["--no-sandbox"] if os.geteuid() == 0 else []
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=executable, args=args)
        try:
            page = await browser.new_page()
            recorded = Recorded()
            page.on("request", recorded.request)
            page.on("console", recorded.console)
            page.on("pageerror", recorded.exception)
            yield page, recorded
        finally:
            await browser.close()


async def _document(url: str) -> dict:
    async with aiohttp.ClientSession() as http, http.get(f"{url}/openapi.json") as answer:
        assert answer.status == 200
        return await answer.json()


def _operations(document: dict) -> set[tuple[str, str]]:
    return {
        (method.upper(), path)
        for path, item in document.get("paths", {}).items()
        for method in METHODS
        if method in item
    }


async def _rendered(page: Page, recorded: Recorded, title: str, operations: int) -> None:
    """Until Swagger UI shows the document's title and (at least) its operations."""
    try:
        await page.wait_for_function(
            """([title, operations]) => {
                const shown = document.querySelector("#swagger-ui .info .title");
                return shown !== null && shown.textContent.includes(title)
                    && document.querySelectorAll("#swagger-ui .opblock").length >= operations;
            }""",
            arg=[title, operations],
            timeout=RENDER_TIMEOUT_MS,
        )
    except PlaywrightTimeoutError:
        shown = await page.locator("#swagger-ui").inner_text()
        raise AssertionError(
            f"Swagger UI did not render {title!r} and {operations} operations within "
            f"{RENDER_TIMEOUT_MS} ms; errors: {recorded.errors}; the page shows: {shown[:500]!r}"
        ) from None


async def test_chromium_renders_every_operation_of_the_document_from_the_registry_alone(
    server: ServerProcess, browser_page: tuple[Page, Recorded]
) -> None:
    page, recorded = browser_page
    document = await _document(server.url)
    expected = _operations(document)

    answer = await page.goto(f"{server.url}/docs")
    assert answer is not None and answer.status == 200
    await _rendered(page, recorded, document["info"]["title"], len(expected))

    shown = set()
    for block in await page.locator("#swagger-ui .opblock").all():
        method = await block.locator(".opblock-summary-method").inner_text()
        path = await block.locator(".opblock-summary-path").get_attribute("data-path")
        shown.add((method.strip().upper(), path))
    assert shown == expected

    origin = f"{urlsplit(server.url).scheme}://{urlsplit(server.url).netloc}"
    elsewhere = [url for url in recorded.requests if not url.startswith(f"{origin}/")]
    assert elsewhere == [], f"the page made requests outside the registry: {elsewhere}"
    asked = {urlsplit(url).path for url in recorded.requests}
    assert {"/docs", "/openapi.json"} | {f"/docs/assets/{name}" for name in ASSETS} <= asked, asked
    assert recorded.errors == []


async def test_the_page_refuses_to_reach_any_other_origin(
    server: ServerProcess, browser_page: tuple[Page, Recorded]
) -> None:
    """The policy, enforced by the browser: a fetch to another origin (the same server
    under another name, so nothing leaves the machine) is refused before it is sent."""
    page, recorded = browser_page
    await page.goto(f"{server.url}/docs")
    await page.wait_for_selector("#swagger-ui .info", timeout=RENDER_TIMEOUT_MS)
    other = server.url.replace("127.0.0.1", "localhost") + "/health"
    assert other != server.url + "/health"
    violated = await page.evaluate(
        """(url) => new Promise((resolve) => {
            const seen = (e) => resolve(e.violatedDirective);
            document.addEventListener("securitypolicyviolation", seen, {once: true});
            fetch(url).catch(() => {});
        })""",
        other,
    )
    assert violated == "connect-src"
