"""The upstream projects' own code, unchanged, against a live registry.

DB-GPT 0.8.2 and FastChat 0.2.36 are installed without their dependencies
(``.ci/run`` does it; see the README): they pin an aiohttp with known CVEs and
pull in torch. In CI (``CI`` set) their absence fails these tests rather than
skipping them.

FastChat redirects ``sys.stdout``/``sys.stderr`` into loggers when it builds
one, and writes log files into ``LOGDIR``: ``LOGDIR`` is set empty before it
is imported, and the streams are put back after.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from collections.abc import Iterator

import pytest

from tests.process import ServerProcess

os.environ["LOGDIR"] = ""  # before fastchat is imported, anywhere

UPSTREAM = {"dbgpt": "dbgpt==0.8.2", "fastchat": "fschat==0.2.36"}


def _require(module: str) -> None:
    if importlib.util.find_spec(module) is not None:
        return
    reason = (
        f"{UPSTREAM[module]} is not installed: pip install --no-deps dbgpt==0.8.2 fschat==0.2.36 "
        "(then the packages listed in the README's test command)"
    )
    if os.environ.get("CI"):
        pytest.fail(f"{reason}; CI must run the compatibility tests", pytrace=False)
    pytest.skip(reason)


@pytest.fixture(scope="session")
def dbgpt() -> None:
    _require("dbgpt")


@pytest.fixture(scope="session")
def fastchat() -> Iterator[None]:
    _require("fastchat")
    stdout, stderr = sys.stdout, sys.stderr
    import fastchat.serve.openai_api_server  # noqa: F401 - builds its logger at import

    sys.stdout, sys.stderr = stdout, stderr
    yield


@pytest.fixture
def registry_process(tmp_path) -> Iterator[ServerProcess]:
    """A registry on its embedded default (a SQLite file), as an operator starts it."""
    with ServerProcess("--storage", f"sqlite+aiosqlite:///{tmp_path / 'registry.db'}") as process:
        yield process
