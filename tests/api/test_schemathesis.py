"""Schemathesis against a live server on SQLite, driven by the server's own /openapi.json.

Every operation gets a bounded number of generated requests, valid and invalid ones, and
the links of the document (register -> list, select, patch, deregister; create a token ->
revoke it) are walked as a state machine. Each answer must be no 5xx and one the document
gives: its status, its content type, its headers and its body's schema. The examples are
derandomized, so CI sees the same requests on every run; the bound keeps the whole file
within a few tens of seconds on two cores.
"""

from __future__ import annotations

import secrets
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from schemathesis import GenerationMode
from schemathesis.generation.stateful.state_machine import StepInput, StepOutput
from schemathesis.specs.openapi.schemas import OpenApiSchema

from model_registry.api.operations import OPERATIONS
from model_registry.api.routes import ROUTES
from tests.conftest import sqlite_url
from tests.process import ServerProcess

#: Generated requests per operation, and scenarios of the state machine.
EXAMPLES = 25
SCENARIOS = 80

TOKEN = secrets.token_urlsafe(32)
AUTH = {"Authorization": f"Bearer {TOKEN}"}

#: Skipped: GET /api/v1/watch is a WebSocket. Schemathesis speaks plain HTTP, so every request
#: it could send is answered 400 websocket_required; the upgrade and its messages are
#: checked by tests/api/test_watch.py (through the same document, conftest.Documented).
SKIPPED = {"GET /api/v1/watch"}

#: What the server is told so that no request can take long: a long-poll waits at most
#: 0.2 s, and FastChat's registration asks the worker at a generated URL for at most 0.2 s.
FAST = ("--max-wait", "0.2", "--fastchat-status-timeout", "0.2")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    path: Path = tmp_path_factory.mktemp("schemathesis") / "r.db"
    with ServerProcess("--storage", sqlite_url(path), *FAST, env={"REGISTRY_ADMIN_TOKEN": TOKEN}) as running:
        yield running


@pytest.fixture(scope="module")
def live(server: ServerProcess) -> OpenApiSchema:
    config = schemathesis.Config.from_dict({"checks": CHECKS, "phases": {"stateful": STATEFUL}})
    loaded = schemathesis.openapi.from_url(f"{server.url}/openapi.json", config=config)
    loaded.config.update(base_url=server.url, headers=AUTH)
    return loaded.exclude(name=sorted(SKIPPED))


BOUNDED = settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=list(HealthCheck),
)


def _can_be_wrong(method: str, path: str) -> bool:
    """Whether a request to the route can break the document: a body, or a parameter with a rule."""
    operation = OPERATIONS[(method, path)]
    return operation.body is not None or any(set(p["schema"]) - {"type"} for p in operation.parameters)


#: Every route of the table but those skipped, with the kinds of requests each can be sent:
#: invalid ones only where there is something to get wrong (a parameter, a body).
CASES = [
    (f"{method} {path}", mode)
    for method, path, _view, _action in ROUTES
    if f"{method} {path}" not in SKIPPED
    for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE)
    if mode is GenerationMode.POSITIVE or _can_be_wrong(method, path)
]

#: Every check of the answers against the document, and that invalid requests are refused
#: (any 4xx: a body over 64 KiB gets 413); but not that every valid one is accepted: the
#: document cannot say every rule (a host must be a hostname or an address, a model name has
#: no control characters, `wait` only goes with `index`, 8001.0 is an integer to JSON Schema
#: and not to the registry's strict types), so a request it calls valid may get the 422 it
#: documents.
CHECKS = {
    "positive_data_acceptance": {"enabled": False},
    "negative_data_rejection": {"expected-statuses": ["4xx"]},
}
#: The state machine follows the document's links (not links schemathesis would infer), with
#: valid data: invalid requests are each operation's own test's.
STATEFUL = {"generation": {"mode": "positive"}, "inference": {"algorithms": []}}


@pytest.fixture(scope="module")
def http() -> Iterator[requests.Session]:
    with requests.Session() as session:  # keep-alive: one connection for all the requests
        yield session


@pytest.mark.parametrize(("operation", "mode"), CASES, ids=[f"{o} {m.value}" for o, m in CASES])
def test_every_operation_answers_as_documented(
    live: OpenApiSchema, http: requests.Session, operation: str, mode: GenerationMode
) -> None:
    method, path = operation.split(" ", 1)

    @BOUNDED
    @given(case=live[path][method].as_strategy(generation_mode=mode))
    def answers_as_documented(case: schemathesis.Case) -> None:
        case.call_and_validate(session=http, headers=AUTH)

    answers_as_documented()


def test_linked_operations_answer_as_documented(
    live: OpenApiSchema, http: requests.Session, server: ServerProcess
) -> None:
    """The document's links as a state machine: what a registration or a heartbeat answers
    is listed, selected, reported on, beaten, patched and deregistered; a token made is revoked."""
    followed: Counter[str] = Counter()  # the links followed to a 2xx, by target

    class Scenarios(live.as_state_machine()):  # type: ignore[misc]
        def setup(self) -> None:
            # Each scenario starts from an empty registry: what it is answered then depends
            # on its own steps alone, as hypothesis needs of data it replays.
            forget(server.url, http)

        def get_call_kwargs(self, case: schemathesis.Case) -> dict[str, object]:
            return {"session": http, "headers": AUTH}

        def step(self, input: StepInput) -> StepOutput:
            output = super().step(input)
            if input.transition is not None and output.response.status_code < 300:
                followed[f"{input.case.method} {input.case.path}"] += 1
            return output

    # Generated, not shrunk: a scenario's data depends on what the server answered, so a
    # replay to shrink it may draw other data (hypothesis would call that flaky).
    only_generate = (Phase.explicit, Phase.generate)
    Scenarios.run(
        settings=settings(BOUNDED, max_examples=SCENARIOS, stateful_step_count=6, phases=only_generate)
    )
    for target in (
        "GET /api/v1/instances",
        "PATCH /api/v1/instances",
        "DELETE /api/v1/instances",
        "POST /api/v1/heartbeat",
        "DELETE /api/v1/tokens/{name}",
    ):
        assert followed[target], (target, followed)


def forget(url: str, http: requests.Session) -> None:
    """Purge every instance and revoke every token, through the API."""
    for instance in http.get(f"{url}/api/v1/instances", headers=AUTH).json()["instances"]:
        key = {name: instance[name] for name in ("model_name", "host", "port")}
        http.delete(
            f"{url}/api/v1/instances", params={**key, "purge": "true"}, headers=AUTH
        ).raise_for_status()
    for token in http.get(f"{url}/api/v1/tokens", headers=AUTH).json()["tokens"]:
        http.delete(f"{url}/api/v1/tokens/{token['name']}", headers=AUTH).raise_for_status()
