"""Authentication with real processes: the CLI, the start-up rules, replicas."""

from __future__ import annotations

import asyncio
import time

import aiohttp
import orjson
import pytest

from model_registry_sdk import AsyncRegistryClient, ModelInstance
from model_registry_sdk.errors import RegistryClientError
from tests.process import ServerProcess, run_cli

BOOTSTRAP = "bootstrap-admin-token-for-the-tests-0123456789"


def test_the_cli_creates_lists_and_revokes_tokens(tmp_path) -> None:
    secret_file = tmp_path / "admin-token"
    secret_file.write_text(BOOTSTRAP + "\n")  # as a Docker secret: the newline is not part of it
    with ServerProcess("--storage", "memory://", "--admin-token-file", str(secret_file)) as server:
        env = {"REGISTRY_URL": server.url, "REGISTRY_TOKEN": BOOTSTRAP}
        made = run_cli(
            "token",
            "create",
            "--role",
            "worker",
            "--models",
            "glm-4*",
            "--name",
            "gpu-pool-a",
            "--expires",
            "30d",
            env=env,
        )
        assert made.returncode == 0, made.stderr
        secret = made.stdout.strip()
        assert secret.startswith("mrt_") and "\n" not in secret
        as_json = run_cli("token", "create", "--role", "router", "--name", "lb", "--json", env=env)
        answer = orjson.loads(as_json.stdout)
        assert answer["name"] == "lb" and answer["role"] == "router" and answer["token"].startswith("mrt_")
        listed = run_cli("token", "list", env=env)
        assert "gpu-pool-a" in listed.stdout and "glm-4*" in listed.stdout and secret not in listed.stdout

        async def use() -> None:
            async with AsyncRegistryClient(server.url, token=secret) as worker:
                await worker.register(ModelInstance("glm-4-9b", "10.0.0.1", 8000))
                with pytest.raises(RegistryClientError) as refused:
                    await worker.register(ModelInstance("llama-3", "10.0.0.1", 8000))
                assert refused.value.status == 403 and "glm-4*" in refused.value.detail

        asyncio.run(use())
        assert run_cli("token", "revoke", "gpu-pool-a", env=env).returncode == 0
        refused = run_cli("list", env={**env, "REGISTRY_TOKEN": secret})
        assert refused.returncode == 1 and "401" in refused.stderr
        anonymous = run_cli("list", env={"REGISTRY_URL": server.url})
        assert anonymous.returncode == 1 and "unauthorized" in anonymous.stderr
        assert BOOTSTRAP not in "".join(str(line) for line in server.logs)
        assert secret not in "".join(str(line) for line in server.messages("authentication failed"))


def test_off_loopback_without_a_token_it_refuses_to_start() -> None:
    done = run_cli("serve", "--host", "0.0.0.0", "--port", "0", "--storage", "memory://")
    assert done.returncode == 2
    assert "REGISTRY_ADMIN_TOKEN" in done.stderr and "--insecure-no-auth" in done.stderr


def test_insecure_no_auth_serves_open_and_says_so() -> None:
    with ServerProcess("--host", "0.0.0.0", "--storage", "memory://", "--insecure-no-auth") as server:
        [warning] = server.messages(
            "authentication is off on a non-loopback address (--insecure-no-auth): anyone who can "
            "reach this port can register, drain or purge instances; set REGISTRY_ADMIN_TOKEN"
        )
        assert warning["level"] == "warning"


def test_on_loopback_without_a_token_the_registry_stays_open() -> None:
    with ServerProcess("--storage", "memory://") as server:
        done = run_cli("list", env={"REGISTRY_URL": server.url})
        assert done.returncode == 0, done.stderr


async def test_a_token_revoked_through_one_replica_is_refused_by_the_other_within_2_s(pg_url: str) -> None:
    env = {"REGISTRY_ADMIN_TOKEN": BOOTSTRAP}
    a = ServerProcess("--storage", pg_url, env=env).start()
    b = ServerProcess("--storage", pg_url, env=env).start()
    try:
        async with aiohttp.ClientSession() as http:
            admin = {"Authorization": f"Bearer {BOOTSTRAP}"}
            made = await http.post(
                a.url + "/api/v1/tokens", json={"name": "r", "role": "router"}, headers=admin
            )
            secret = (await made.json())["token"]
            router = {"Authorization": f"Bearer {secret}"}

            async def status_on_b() -> int:
                return (await http.get(b.url + "/api/v1/instances", headers=router)).status

            deadline = time.monotonic() + 2.5
            while await status_on_b() != 200:
                assert time.monotonic() < deadline, "b never accepted the new token"
                await asyncio.sleep(0.05)
            assert (await http.delete(a.url + "/api/v1/tokens/r", headers=admin)).status == 200
            revoked_at = time.monotonic()
            while await status_on_b() != 401:
                await asyncio.sleep(0.05)
            assert time.monotonic() - revoked_at < 2.0
    finally:
        a.stop()
        b.stop()
