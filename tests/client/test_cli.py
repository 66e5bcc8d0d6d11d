"""Operator subcommands against a live registry process."""

from __future__ import annotations

from collections.abc import Iterator

import orjson
import pytest

from tests.process import ServerProcess, free_port, run_cli

LLAMA = "meta-llama/Llama-3.1-8B-Instruct"


@pytest.fixture(scope="module")
def server() -> Iterator[ServerProcess]:
    with ServerProcess("--storage", "memory://") as process:
        yield process


def cli(server: ServerProcess, *args: str, via_env: bool = False):
    if via_env:
        return run_cli(*args, env={"REGISTRY_URL": server.url})
    return run_cli(*args, "--url", server.url)


def test_register_list_select_heartbeat_deregister(server: ServerProcess) -> None:
    result = cli(
        server, "register", LLAMA, "10.0.0.5", "8001", "--weight", "2", "--metadata", '{"gpu": "a100"}'
    )
    assert result.returncode == 0, result.stderr
    assert LLAMA in result.stdout and "10.0.0.5:8001" in result.stdout

    result = cli(server, "heartbeat", LLAMA, "10.0.0.5", "8001", "--queue-length", "4", via_env=True)
    assert result.returncode == 0, result.stderr

    table = cli(server, "list").stdout.splitlines()
    assert table[0].split() == [
        "MODEL",
        "ADDRESS",
        "HEALTHY",
        "ENABLED",
        "WEIGHT",
        "QUEUE",
        "LAST",
        "HEARTBEAT",
    ]
    assert table[1].split()[:6] == [LLAMA, "10.0.0.5:8001", "yes", "yes", "2", "4"]

    as_json = orjson.loads(cli(server, "list", "--model", LLAMA, "--json").stdout)
    assert [(i["port"], i["metadata"], i["queue_length"]) for i in as_json] == [(8001, {"gpu": "a100"}, 4)]

    picked = orjson.loads(cli(server, "select", LLAMA, "--json").stdout)
    assert picked["port"] == 8001

    models = cli(server, "models").stdout.splitlines()
    assert models[1].split() == [LLAMA, "1", "1", "1", "1"]
    assert orjson.loads(cli(server, "models", "--json").stdout)[0]["available"] == 1

    result = cli(server, "deregister", LLAMA, "10.0.0.5", "8001")
    assert result.returncode == 0 and " no " in result.stdout
    assert cli(server, "list", "--healthy-only").stdout.strip().endswith("(none)")
    assert cli(server, "deregister", LLAMA, "10.0.0.5", "8001", "--purge").returncode == 0
    assert orjson.loads(cli(server, "list", "--json").stdout) == []


def test_refusals_and_outages_are_one_line_and_exit_1(server: ServerProcess) -> None:
    result = cli(server, "deregister", "nobody", "h", "1")
    assert result.returncode == 1
    assert result.stderr.strip() == (
        "model-registry: the registry refused: no instance 'nobody' at h:1 is registered "
        "(404 instance_not_found)"
    )
    result = cli(server, "select", "nobody")
    assert result.returncode == 1 and "no_healthy_instance" in result.stderr
    result = run_cli("list", "--url", f"http://127.0.0.1:{free_port()}")
    assert result.returncode == 1 and len(result.stderr.strip().splitlines()) == 1
    assert "cannot reach the registry" in result.stderr and "--url" in result.stderr


def test_bad_arguments_are_usage_errors(server: ServerProcess) -> None:
    result = cli(server, "register", "m", "h", "1", "--metadata", "[1]")
    assert result.returncode == 2 and "must be a JSON object" in result.stderr
    result = cli(server, "register", "m", "h", "0")
    assert result.returncode == 1 and "port" in result.stderr and "422" in result.stderr


def test_drain_undrain_and_set_weight_pin_over_re_registration(server: ServerProcess) -> None:
    identity = ("glm-4", "10.0.0.7", "8001")
    assert cli(server, "register", *identity).returncode == 0
    drained = orjson.loads(cli(server, "drain", *identity, "--json").stdout)
    assert drained["enabled"] is False and drained["overrides"] == {"enabled": False}
    assert cli(server, "register", *identity).returncode == 0  # the worker comes back
    refused = cli(server, "select", "glm-4")
    assert refused.returncode == 1 and "no_healthy_instance" in refused.stderr
    weighted = orjson.loads(cli(server, "set-weight", *identity, "0.25", "--json").stdout)
    assert weighted["weight"] == 0.25 and weighted["enabled"] is False
    undrained = orjson.loads(cli(server, "undrain", *identity, "--json").stdout)
    assert undrained["enabled"] is True and undrained["overrides"] == {"weight": 0.25}
    assert orjson.loads(cli(server, "select", "glm-4", "--json").stdout)["weight"] == 0.25
    released = orjson.loads(cli(server, "set-weight", *identity, "worker", "--json").stdout)
    assert released["overrides"] is None
    bad = cli(server, "set-weight", *identity, "-1")
    assert bad.returncode == 2 and "at least 0" in bad.stderr
    missing = cli(server, "drain", "glm-4", "10.0.0.7", "9999")
    assert missing.returncode == 1 and "instance_not_found" in missing.stderr
