"""The README's API examples and its shell (CLI) block, run as written against a live server.

Every ```sh block of "## The API" (up to "## Semantics"), then the block after
"**From the shell**", runs in order, each as one ``bash -euxo pipefail`` script, against one
fresh server; only the address changes (``localhost:8000``/``127.0.0.1:8000`` become the
server's, ``REGISTRY_URL`` is set for the CLI). ``curl`` resolves to a wrapper that runs the
real curl with an extra ``--write-out`` on stderr, so each call's status, URL and time are
recorded without changing what the command prints. The test then holds the answers to the
text beside them: the status codes it promises, the keys of the JSON it shows (the ```json
block after a command, ``# {...}`` comment lines), and that a long-poll really waits.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from itertools import pairwise
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import orjson
import pytest

from tests.process import ServerProcess

ROOT = Path(__file__).resolve().parent.parent
DOCUMENTED = "localhost:8000", "127.0.0.1:8000"
MARK = "\n@@readme-curl@@"

# Runs the real curl with our --write-out appended (on stderr, after the command's own one if
# it has one), passes its output through untouched and logs one JSON line per call.
WRAPPER = """#!{python}
import os, subprocess, sys, time
import orjson
args = sys.argv[1:]
ours = "%{{stderr}}" + {mark!r} + "%{{json}}\\n"
for i, arg in enumerate(args[:-1]):
    if arg in ("-w", "--write-out"):
        args[i + 1] += ours
        break
else:
    args += ["--write-out", ours]
start = time.time()
done = subprocess.run([os.environ["README_REAL_CURL"], *args], capture_output=True)
end = time.time()
err, _, info = done.stderr.rpartition({mark!r}.encode())
sys.stdout.buffer.write(done.stdout)
sys.stderr.buffer.write(err if info else done.stderr)
with open(os.environ["README_CURL_LOG"], "ab") as log:
    log.write(orjson.dumps({{
        "argv": sys.argv[1:], "rc": done.returncode, "stdout": done.stdout.decode(errors="replace"),
        "transfer": orjson.loads(info) if info.strip() else None, "start": start, "end": end,
    }}) + b"\\n")
sys.exit(done.returncode)
"""


@dataclass
class Block:
    where: str  # for messages: the section and the block's first line
    code: str
    answer: str | None = None  # a ```json block right after it: the last curl's answer
    comments: list[tuple[int, str]] = field(default_factory=list)  # (curls before it, JSON text)

    @property
    def curls(self) -> int:
        return _count_curls(self.code)


def _count_curls(code: str) -> int:
    lines = [line for line in code.splitlines() if not line.lstrip().startswith("#")]
    return len(re.findall(r"(?<![\w./-])curl(?![\w-])", "\n".join(lines)))


def _with_comments(block: Block) -> Block:
    """Attach each ``# {...}`` comment (continued on ``#  ...`` lines) to the curl before it."""
    lines = block.code.splitlines()
    i = 0
    while i < len(lines):
        if lines[i].startswith("# {"):
            text, start = lines[i][2:], i
            while text.count("{") + text.count("[") > text.count("}") + text.count("]"):
                i += 1
                assert i < len(lines) and lines[i].startswith("#"), f"{block.where}: unclosed {text}"
                text += lines[i][1:].strip()
            block.comments.append((_count_curls("\n".join(lines[:start])), text))
        i += 1
    return block


def _blocks(text: str, where: str) -> list[Block]:
    blocks: list[Block] = []
    previous = None
    for match in re.finditer(r"^```(\w*)\n(.*?)^```$", text, flags=re.M | re.S):
        kind, body = match.groups()
        if kind == "sh":
            first = body.splitlines()[0]
            blocks.append(_with_comments(Block(f"{where}, block `{first[:60]}`", body)))
        elif kind == "json" and previous == "sh":  # the answer of the block before it
            blocks[-1].answer = body
        previous = kind
    return blocks


def readme_blocks() -> list[Block]:
    text = (ROOT / "README.md").read_text()
    api = text[text.index("## The API") : text.index("## Semantics")]
    shell = text.index("**From the shell**")
    start = text.index("```sh", shell)
    cli = text[start : text.index("```", start + 5) + 3]
    return _blocks(api, "## The API") + _blocks(cli, "**From the shell**")


def _documented(text: str) -> object:
    """A JSON answer as the README shows it, with ``{...}``, ``[...]``, ``, ...`` elisions."""
    text = re.sub(r"\{\s*\.\.\.\s*\}", "{}", text)
    text = re.sub(r"\[\s*\.\.\.\s*\]", "[]", text)
    text = re.sub(r",\s*\.\.\.\s*(?=[\]}])", "", text)
    return orjson.loads(text)


def _same_keys(shown: object, real: object, path: str = "answer") -> None:
    """The keys the README shows are the keys of the real answer (``{}``/``[]`` elide)."""
    if isinstance(shown, dict):
        assert isinstance(real, dict), f"{path}: the README shows an object, the server sent {real!r}"
        if shown:
            missing, extra = set(shown) - set(real), set(real) - set(shown)
            assert not missing and not extra, (
                f"{path}: the README shows {sorted(missing)} the server does not send,"
                f" and not {sorted(extra)} that it sends"
            )
            for key, value in shown.items():
                _same_keys(value, real[key], f"{path}.{key}")
    elif isinstance(shown, list):
        assert isinstance(real, list), f"{path}: the README shows a list, the server sent {real!r}"
        if shown and real:
            _same_keys(shown[0], real[0], f"{path}[0]")


TIMESTAMP = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z$")


def _same_values(shown: object, real: object, path: str = "answer") -> None:
    """A full answer shown in a ```json block: the same, timestamps aside."""
    if isinstance(shown, dict):
        _same_keys(shown, real, path)
        for key, value in shown.items():
            _same_values(value, real[key], f"{path}.{key}")  # type: ignore[index]
    elif isinstance(shown, str) and TIMESTAMP.match(shown):
        assert isinstance(real, str) and TIMESTAMP.match(real), f"{path}: {real!r} is not a timestamp"
    else:
        assert shown == real and type(shown) is type(real), f"{path}: README shows {shown!r}, real {real!r}"


def _split(stdout: str) -> tuple[dict[str, str], str]:
    """Headers (when ``-D -`` printed them) and body of what curl printed."""
    headers: dict[str, str] = {}
    while stdout.startswith("HTTP/"):
        head, _, stdout = stdout.partition("\r\n\r\n")
        headers = {
            name.strip().lower(): value.strip()
            for name, _, value in (line.partition(":") for line in head.splitlines()[1:])
        }
    return headers, stdout


def _body(call: dict) -> object:
    return orjson.loads(_split(call["stdout"])[1])


def _request_json(argv: list[str]) -> dict:
    for flag, value in pairwise(argv):
        if flag in ("-d", "--data", "--data-raw", "--data-binary") and value.lstrip().startswith("{"):
            return orjson.loads(value)
    return {}


def _seconds(wait: str) -> float:
    number, unit = re.fullmatch(r"([\d.]+)(ms|s|m)?", wait).groups()  # type: ignore[union-attr]
    return float(number) * {"ms": 0.001, "s": 1, "m": 60, None: 1}[unit]


class Statuses:
    """The status the README's text promises for a call (fresh registry: 201 the first time)."""

    def __init__(self) -> None:
        self.registered: set[tuple[str, str, int]] = set()

    def expected(self, method: str, path: str, query: dict[str, list[str]], body: dict) -> int:
        if path in ("/api/v1/instances", "/api/v1/heartbeat") and method == "POST":
            identity = (body.get("model_name"), body.get("host"), body.get("port"))
            new = identity not in self.registered
            self.registered.add(identity)  # type: ignore[arg-type]
            return 201 if new and path == "/api/v1/instances" else 200
        if method == "DELETE" and query.get("purge") == ["true"]:
            self.registered.discard((query["model_name"][0], query["host"][0], int(query["port"][0])))
        return 200


def _indexes(call: dict) -> set[int]:
    """The index an answer showed: its X-Registry-Index header (``-D -``), or all it printed."""
    headers, body = _split(call["stdout"])
    if "x-registry-index" in headers:
        return {int(headers["x-registry-index"])}
    return {int(body)} if body.strip().isdigit() else set()


def _check_long_poll(
    call: dict, query: dict[str, list[str]], indexes: set[int], calls: list[dict], where: str
) -> None:
    """It asks with the index of an earlier answer and waits: for ``wait``, or for a change."""
    index, wait = int(query["index"][0]), _seconds(query["wait"][0])
    assert index in indexes, (
        f"{where}: the long-poll asks with index={index}, which no earlier answer carried"
        f" ({sorted(indexes)}): an old index answers at once"
    )
    assert wait >= 1, f"{where}: a long-poll with wait={wait:g}s shows no waiting"
    took = call["end"] - call["start"]
    assert took < wait + 2, f"{where}: the long-poll took {took:.1f} s for wait={wait:g}s"
    if took < 0.8 * wait:  # only a change made meanwhile (by another call of the block) ends it early
        during = [
            c for c in calls if call["start"] < c["start"] < call["end"] and c["transfer"]["method"] != "GET"
        ]
        answered = _indexes(call)
        assert during and answered and min(answered) > index, (
            f"{where}: the long-poll answered after {took:.2f} s of its {wait:g} s"
            f" with no change made meanwhile (index {index} -> {sorted(answered)})"
        )


@pytest.fixture
def tools(tmp_path: Path) -> dict[str, str]:
    curl = shutil.which("curl")
    if curl is None:
        reason = "curl not found: the README's examples need it (apt-get install curl)"
        if os.environ.get("CI"):
            pytest.fail(f"{reason}; CI must run them", pytrace=False)
        pytest.skip(reason)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    wrapper = bin_dir / "curl"
    wrapper.write_text(WRAPPER.format(python=sys.executable, mark=MARK))
    wrapper.chmod(0o755)
    path = os.pathsep.join([str(bin_dir), os.path.dirname(sys.executable), os.environ.get("PATH", "")])
    return {"README_REAL_CURL": curl, "README_CURL_LOG": str(tmp_path / "curl.log"), "PATH": path}


def test_the_readme_api_and_cli_examples_run_as_written(tmp_path: Path, tools: dict[str, str]) -> None:
    blocks = readme_blocks()
    assert sum(b.curls for b in blocks) >= 10 and any(b.answer for b in blocks), "examples not found"
    assert blocks[-1].where.startswith("**From the shell**")
    log = Path(tools["README_CURL_LOG"])
    log.touch()
    statuses, long_polls, checked_json = Statuses(), 0, 0
    indexes: set[int] = set()  # every X-Registry-Index an answer printed so far
    storage = f"sqlite+aiosqlite:///{tmp_path / 'registry.db'}"
    with ServerProcess("--storage", storage, "--heartbeat-timeout", "600") as server:
        address = server.url.removeprefix("http://")
        env = {k: v for k, v in os.environ.items() if not k.startswith("REGISTRY_")}
        env |= tools | {"REGISTRY_URL": server.url}
        for block in blocks:
            script = block.code
            for documented in DOCUMENTED:
                script = script.replace(documented, address)
            seen = len(log.read_text().splitlines())
            started = time.monotonic()
            done = subprocess.run(
                ["bash", "-euxo", "pipefail", "-c", script],
                capture_output=True,
                text=True,
                env=env,
                cwd=tmp_path,
                timeout=60,
            )
            assert done.returncode == 0, (
                f"{block.where} exited {done.returncode}\n{done.stdout}\n{done.stderr}"
            )
            calls = [orjson.loads(line) for line in log.read_text().splitlines()[seen:]]
            assert len(calls) == block.curls, f"{block.where}: {len(calls)} curl runs for {block.curls} curls"
            for call in calls:
                assert call["rc"] == 0 and call["transfer"], f"{block.where}: curl failed: {call}"
                transfer = call["transfer"]
                url = urlsplit(transfer["url_effective"])
                query = parse_qs(url.query)
                want = statuses.expected(transfer["method"], url.path, query, _request_json(call["argv"]))
                assert transfer["http_code"] == want, (
                    f"{block.where}: {transfer['method']} {url.path}?{url.query} answered"
                    f" {transfer['http_code']}, the text says {want}: {call['stdout']}"
                )
                if "index" in query and "wait" in query:
                    _check_long_poll(call, query, indexes, calls, block.where)
                    long_polls += 1
                indexes |= _indexes(call)
            if block.answer is not None:
                _same_values(_documented(block.answer), _body(calls[-1]), f"{block.where}: ```json")
                checked_json += 1
            for curls_before, shown in block.comments:
                assert curls_before > 0, f"{block.where}: {shown} follows no curl"
                _same_keys(_documented(shown), _body(calls[curls_before - 1]), f"{block.where}: # {shown}")
                checked_json += 1
            assert time.monotonic() - started < 20, f"{block.where} took too long"
    assert long_polls >= 1, "the long-poll example was not found"
    assert checked_json >= 4, "the README's JSON answers were not found"
