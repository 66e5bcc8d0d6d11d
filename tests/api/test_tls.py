"""HTTPS and mutual TLS with certificates the test makes (trustme), through the SDK."""

from __future__ import annotations

import ssl
from pathlib import Path

import aiohttp
import pytest
import trustme

from model_registry_sdk import AsyncRegistryClient, ModelInstance
from model_registry_sdk.errors import RegistryUnavailable
from tests.process import ServerProcess

BOOTSTRAP = "bootstrap-admin-token-for-the-tests-0123456789"


@pytest.fixture
def pki(tmp_path: Path) -> dict[str, Path]:
    ca = trustme.CA()
    server = ca.issue_cert("127.0.0.1", "localhost")
    client = ca.issue_cert("gpu-pool-a", common_name="gpu-pool-a")  # a token's name
    paths = {name: tmp_path / f"{name}.pem" for name in ("ca", "cert", "key", "client")}
    ca.cert_pem.write_to_path(paths["ca"])
    server.cert_chain_pems[0].write_to_path(paths["cert"])
    for pem in server.cert_chain_pems[1:]:
        pem.write_to_path(paths["cert"], append=True)
    server.private_key_pem.write_to_path(paths["key"])
    client.private_key_and_cert_chain_pem.write_to_path(paths["client"])
    return paths


@pytest.mark.filterwarnings("ignore:ssl.TLSVersion.TLSv1_1 is deprecated:DeprecationWarning")
async def test_the_sdk_talks_to_the_registry_over_tls_with_a_token(pki: dict[str, Path]) -> None:
    args = ("--storage", "memory://", "--tls-cert", str(pki["cert"]), "--tls-key", str(pki["key"]))
    with ServerProcess(*args, env={"REGISTRY_ADMIN_TOKEN": BOOTSTRAP}) as server:
        assert server.url.startswith("https://")
        url = server.url.replace("[::1]", "127.0.0.1")
        async with AsyncRegistryClient(url, token=BOOTSTRAP, ca=str(pki["ca"])) as client:
            await client.register(ModelInstance("glm-4-9b", "10.0.0.1", 8000))
            assert [i.model_name for i in await client.list_instances()] == ["glm-4-9b"]
        # The system's CAs do not know the test's: verification fails, and says so.
        async with AsyncRegistryClient(url, token=BOOTSTRAP, retry=False) as untrusting:
            with pytest.raises(RegistryUnavailable, match="certificate"):
                await untrusting.list_instances()
        # Old protocol versions are refused.
        old = ssl.create_default_context(cafile=str(pki["ca"]))
        old.maximum_version = ssl.TLSVersion.TLSv1_1
        old.minimum_version = ssl.TLSVersion.MINIMUM_SUPPORTED
        async with aiohttp.ClientSession() as http:
            with pytest.raises(aiohttp.ClientError):
                await http.get(url + "/health", ssl=old)


async def test_mutual_tls_a_client_certificate_stands_for_the_token_it_names(pki: dict[str, Path]) -> None:
    args = (
        "--storage",
        "memory://",
        "--tls-cert",
        str(pki["cert"]),
        "--tls-key",
        str(pki["key"]),
        "--tls-client-ca",
        str(pki["ca"]),
    )
    with ServerProcess(*args, env={"REGISTRY_ADMIN_TOKEN": BOOTSTRAP}) as server:
        url = server.url.replace("[::1]", "127.0.0.1")
        trusted = ssl.create_default_context(cafile=str(pki["ca"]))
        trusted.load_cert_chain(str(pki["client"]))
        bare = ssl.create_default_context(cafile=str(pki["ca"]))
        async with aiohttp.ClientSession() as http:
            with pytest.raises(aiohttp.ClientError):  # no client certificate: no handshake
                await http.get(url + "/health", ssl=bare)
            # The certificate's common name, gpu-pool-a, names no token yet: a token is still needed.
            answer = await http.get(url + "/api/v1/instances", ssl=trusted)
            assert answer.status == 401
            made = await http.post(
                url + "/api/v1/tokens",
                json={"name": "gpu-pool-a", "role": "worker", "models": ["glm-4*"]},
                headers={"Authorization": f"Bearer {BOOTSTRAP}"},
                ssl=trusted,
            )
            assert made.status == 201
            register = {"model_name": "glm-4-9b", "host": "10.0.0.1", "port": 8000}
            assert (await http.post(url + "/api/v1/instances", json=register, ssl=trusted)).status == 201
            outside = {**register, "model_name": "llama-3"}
            assert (await http.post(url + "/api/v1/instances", json=outside, ssl=trusted)).status == 403


async def test_a_long_poll_over_tls_is_answered_when_its_model_changes(pki: dict[str, Path]) -> None:
    """Answered ahead (the bytes written to the TLS transport itself), as over plain HTTP."""
    import asyncio

    args = ("--storage", "memory://", "--tls-cert", str(pki["cert"]), "--tls-key", str(pki["key"]))
    with ServerProcess(*args, env={"REGISTRY_ADMIN_TOKEN": BOOTSTRAP}) as server:
        url = server.url.replace("[::1]", "127.0.0.1")
        trusted = ssl.create_default_context(cafile=str(pki["ca"]))
        headers = {"Authorization": f"Bearer {BOOTSTRAP}"}
        async with aiohttp.ClientSession(url, headers=headers) as http:
            first = await http.get("/api/v1/instances", params={"model_name": "m"}, ssl=trusted)
            index = first.headers["X-Registry-Index"]
            params = {"model_name": "m", "index": index, "wait": "30s"}
            polls = [
                asyncio.create_task(http.get("/api/v1/instances", params=params, ssl=trusted))
                for _ in range(3)
            ]
            await asyncio.sleep(0.3)
            assert not any(p.done() for p in polls)
            body = {"model_name": "m", "host": "10.0.0.1", "port": 8000}
            assert (await http.post("/api/v1/instances", json=body, ssl=trusted)).status == 201
            answers = await asyncio.wait_for(asyncio.gather(*polls), 5)
            assert {a.status for a in answers} == {200}
            assert all([(await a.json())["count"] == 1 for a in answers])
            again = await http.get("/api/v1/instances", params={"model_name": "m"}, ssl=trusted)
            assert again.status == 200  # the connections go on
