"""What ships beside the code: README commands, CI script, Dockerfile, compose file.

No Docker engine runs here, so the compose file is checked by parsing it and
following every reference it makes; its healthcheck command is run for real.
"""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

import orjson
import pytest
import yaml

from model_registry.settings import Settings
from tests.process import ServerProcess

ROOT = Path(__file__).resolve().parent.parent


def readme_commands() -> list[str]:
    return re.findall(r"```sh\n(.+?)\n```", (ROOT / "README.md").read_text())[:2]


def test_readme_opens_with_the_two_commands() -> None:
    text = (ROOT / "README.md").read_text()
    first_block = text.index("```sh")
    assert text[:first_block].strip() == "# model-registry"
    serve, test = readme_commands()
    assert serve.endswith("model-registry serve")
    assert test.endswith(".venv/bin/pytest")


def test_ci_runs_the_readme_test_command() -> None:
    ci = (ROOT / ".ci" / "run").read_text()
    assert readme_commands()[1] in ci.splitlines()


#: What the compose file is read with: the two secrets it needs, as an operator exports them.
SECRETS = {"POSTGRES_PASSWORD": "pg-secret-for-the-tests", "REGISTRY_ADMIN_TOKEN": "a" * 43}
_REQUIRED = re.compile(r"\$\{(\w+):\?([^}]*)\}")


def interpolate(text: str, env: dict[str, str]) -> str:
    """``${VAR:?message}`` as Compose reads it: the value, or an error naming the variable."""

    def value(match: re.Match[str]) -> str:
        if match.group(1) not in env:
            raise KeyError(f"{match.group(1)}: {match.group(2)}")
        return env[match.group(1)]

    return _REQUIRED.sub(value, text)


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load(interpolate((ROOT / "docker-compose.yml").read_text(), SECRETS))


def test_compose_takes_its_secrets_from_the_environment() -> None:
    text = (ROOT / "docker-compose.yml").read_text()
    assert {name for name, _ in _REQUIRED.findall(text)} == set(SECRETS)
    for name in SECRETS:  # without it, compose refuses to start, naming it
        with pytest.raises(KeyError, match=name):
            interpolate(text, {k: v for k, v in SECRETS.items() if k != name})
    parsed = yaml.safe_load(interpolate(text, SECRETS))
    # No other value stands in for a secret: no password in a URL but the variable, and
    # the variable names no setting the file writes out itself.
    for service in parsed["services"].values():
        for key, value in (service.get("environment") or {}).items():
            if "PASSWORD" in key or "TOKEN" in key or "postgresql" in str(value):
                assert any(secret in str(value) for secret in SECRETS.values()), (key, value)


def registries(compose: dict) -> dict[str, dict]:
    return {name: s for name, s in compose["services"].items() if name.startswith("registry")}


def test_compose_builds_an_image_that_exists(compose: dict) -> None:
    for service in registries(compose).values():
        context = ROOT / service["build"]
        dockerfile = (context / "Dockerfile").read_text()
        for line in dockerfile.splitlines():
            if line.startswith("COPY") and "--from=" not in line:  # --from: from a build stage
                for source in shlex.split(line)[1:-1]:
                    assert (context / source).exists(), f"Dockerfile copies missing {source}"
        assert "model-registry" in dockerfile and "serve" in dockerfile


def _dockerfile_env() -> dict[str, str]:
    text = (ROOT / "Dockerfile").read_text().replace("\\\n", " ")
    env_line = next(line for line in text.splitlines() if line.startswith("ENV "))
    return dict(item.split("=", 1) for item in shlex.split(env_line)[1:])


def test_every_variable_is_a_valid_setting(compose: dict) -> None:
    for env in [s["environment"] for s in registries(compose).values()] + [_dockerfile_env()]:
        names = {k.removeprefix("REGISTRY_").lower() for k in env}
        assert names <= set(Settings.model_fields), names - set(Settings.model_fields)
        Settings(**{k.removeprefix("REGISTRY_").lower(): v for k, v in env.items()})


def test_replicas_share_the_compose_postgres(compose: dict) -> None:
    postgres = compose["services"]["postgres"]
    pg = postgres["environment"]
    expected = f"postgresql+asyncpg://{pg['POSTGRES_USER']}:{pg['POSTGRES_PASSWORD']}@postgres:5432/{pg['POSTGRES_DB']}"
    replicas = {n: s for n, s in registries(compose).items() if "profiles" not in s}
    assert len(replicas) >= 2
    for service in replicas.values():
        assert service["environment"]["REGISTRY_STORAGE"] == expected
        assert service["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert "pg_isready" in " ".join(postgres["healthcheck"]["test"])


def test_the_load_balancer_fronts_every_replica(compose: dict) -> None:
    lb = compose["services"]["lb"]
    source, target = lb["volumes"][0].split(":")[:2]
    conf = (ROOT / source).read_text()
    assert target.startswith("/etc/nginx/conf.d/")
    upstreams = set(re.findall(r"server (registry-\d+):(\d+)", conf))
    replicas = {n: s for n, s in registries(compose).items() if "profiles" not in s}
    assert upstreams == {(name, s["environment"]["REGISTRY_PORT"]) for name, s in replicas.items()}
    listen = re.search(r"listen (\d+);", conf).group(1)
    assert lb["ports"] == [f"{listen}:{listen}"]
    assert set(lb["depends_on"]) == set(replicas)
    assert "client_max_body_size 64k" in conf


def test_sqlite_file_lives_in_the_volume(compose: dict) -> None:
    service = compose["services"]["registry-sqlite"]
    storage = service["environment"]["REGISTRY_STORAGE"]
    path = Path(storage.removeprefix("sqlite+aiosqlite:///"))
    volume, target = service["volumes"][0].split(":")
    assert volume in compose["volumes"] and path.parent == Path(target)
    assert _dockerfile_env()["REGISTRY_STORAGE"] == storage


def test_grace_period_outlasts_the_shutdown_timeout(compose: dict) -> None:
    for service in registries(compose).values():
        grace = int(service["stop_grace_period"].removesuffix("s"))
        assert grace > float(service["environment"]["REGISTRY_SHUTDOWN_TIMEOUT"])


def test_the_healthcheck_command_works(compose: dict, tmp_path: Path) -> None:
    service = compose["services"]["registry-1"]
    command = service["healthcheck"]["test"]
    assert command[0] == "CMD" and command[1] == "python"
    port = service["environment"]["REGISTRY_PORT"]
    with ServerProcess("--storage", "memory://") as server:
        script = command[3].replace(f"127.0.0.1:{port}", server.url.removeprefix("http://"))
        assert subprocess.run([sys.executable, "-c", script], timeout=10).returncode == 0
    assert subprocess.run([sys.executable, "-c", script], capture_output=True, timeout=10).returncode != 0


def _client_examples() -> list[str]:
    text = (ROOT / "README.md").read_text()
    section = text[text.index("## Workers and controllers") : text.index("## Using the registry in-process")]
    return re.findall(r"```python\n(.+?)```", section, flags=re.S)


def test_the_readme_client_examples_run(tmp_path: Path) -> None:
    worker, controller = _client_examples()[:2]  # the whole programs; later blocks are fragments
    with ServerProcess("--storage", "memory://") as server:
        for name, code in (("worker", worker), ("controller", controller)):
            script = tmp_path / f"{name}.py"
            script.write_text(code.replace("http://127.0.0.1:8000", server.url))
            result = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=60)
            assert result.returncode == 0, result.stderr
        listing = subprocess.run(
            [sys.executable, "-m", "model_registry", "list", "--json", "--url", server.url],
            capture_output=True,
            text=True,
            timeout=30,
        )
    # The worker registered, then deregistered on the way out.
    [instance] = orjson.loads(listing.stdout)
    assert instance["model_name"] == "glm-4@llm" and instance["healthy"] is False
    assert instance["metadata"] == {"gpu": "a100"}


def test_every_setting_is_documented_in_the_readme() -> None:
    from model_registry.settings import Settings

    text = (ROOT / "README.md").read_text()
    for name in Settings.model_fields:
        flag, variable = "--" + name.replace("_", "-"), "REGISTRY_" + name.upper()
        if name == "admin_token":  # no flag: a flag's value would show in every process listing
            flag = "(environment only)"
            assert f"| {flag} | `{variable}` |" in text, f"{variable} is missing from the README"
            continue
        assert f"| `{flag}` | `{variable}` |" in text, (
            f"{flag} is missing from the README's configuration table"
        )


def test_the_load_balancer_passes_watches_and_long_polls(compose: dict) -> None:
    from model_registry.settings import Settings

    source = compose["services"]["lb"]["volumes"][0].split(":")[0]
    conf = (ROOT / source).read_text()
    watch = conf[conf.index("location = /api/v1/watch") :]
    assert "proxy_set_header Upgrade $http_upgrade" in watch and 'Connection "upgrade"' in watch
    lists = conf[conf.index("location ~ ^/api/v1/(instances|models)$") :]
    timeout = int(re.search(r"proxy_read_timeout (\d+)s;", lists).group(1))
    assert timeout > Settings.model_fields["max_wait"].default  # a long-poll answers before nginx gives up
    reports = conf[conf.index("location = /api/v1/reports") :].split("}")[0]
    assert (
        "non_idempotent" not in reports
        and "timeout" not in reports.split("proxy_next_upstream ")[1].split(";")[0]
    )
