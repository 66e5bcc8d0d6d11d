"""DB-GPT 0.8.2's own controller client and worker managers, against a live registry."""

from __future__ import annotations

import aiohttp
import pytest

from tests.process import ServerProcess

pytestmark = pytest.mark.usefixtures("dbgpt")

VICUNA = "vicuna-13b@llm"


def client_for(url: str):
    from dbgpt.model.cluster.controller.controller import ModelRegistryClient

    return ModelRegistryClient(url)


def instance(name: str = VICUNA, port: int = 8101, **fields):
    from dbgpt.model.base import ModelInstance

    return ModelInstance(model_name=name, host="127.0.0.1", port=port, **fields)


async def test_the_registry_client_registers_lists_beats_and_deregisters(
    registry_process: ServerProcess,
) -> None:
    from dbgpt.model.base import ModelInstance

    client = client_for(registry_process.url)
    assert await client.register_instance(instance(weight=2.0, prompt_template="vicuna_v1.1")) is True
    [listed] = await client.get_all_instances(VICUNA, healthy_only=True)
    assert isinstance(listed, ModelInstance)
    assert (listed.host, listed.port, listed.weight, listed.healthy) == ("127.0.0.1", 8101, 2.0, True)
    assert listed.prompt_template == "vicuna_v1.1" and listed.last_heartbeat
    assert [i.port for i in client.sync_get_all_instances(VICUNA, True)] == [8101]

    # A heartbeat for an instance the registry does not know registers it.
    assert await client.send_heartbeat(instance(port=8102)) is True
    assert [i.port for i in await client.get_all_instances(VICUNA)] == [8101, 8102]
    assert [i.model_name for i in await client.get_all_model_instances()] == [VICUNA, VICUNA]

    assert await client.deregister_instance(instance(port=8101)) is True  # kept, unhealthy
    everything = await client.get_all_instances(VICUNA)
    assert [(i.port, i.healthy) for i in everything] == [(8101, False), (8102, True)]
    assert (await client.select_one_health_instance(VICUNA)).port == 8102
    assert await client.deregister_instance(instance(port=8102, remove_from_registry=True)) is True
    assert [i.port for i in await client.get_all_instances(VICUNA)] == [8101]
    assert await client.deregister_instance(instance(port=9999)) is True  # unknown: true, as DB-GPT
    assert await client.select_one_health_instance(VICUNA) is None


async def test_a_drain_through_api_v1_takes_an_instance_out_of_dbgpt_routing(
    registry_process: ServerProcess,
) -> None:
    client = client_for(registry_process.url)
    for port in (8101, 8102):
        await client.register_instance(instance(port=port))
    async with aiohttp.ClientSession(registry_process.url) as http:
        drained = await http.patch(
            "/api/v1/instances",
            params={"model_name": VICUNA, "host": "127.0.0.1", "port": "8101"},
            json={"enabled": False},
        )
        assert drained.status == 200
    assert {(await client.select_one_health_instance(VICUNA)).port for _ in range(20)} == {8102}
    assert [i.port for i in await client.get_all_instances(VICUNA, healthy_only=True)] == [8102]
    assert [(i.port, i.enabled) for i in await client.get_all_instances(VICUNA)] == [
        (8101, False),
        (8102, True),
    ]


async def test_the_worker_managers_closures_and_the_remote_manager(registry_process: ServerProcess) -> None:
    from dbgpt.model.cluster.worker.manager import _create_local_model_manager
    from dbgpt.model.cluster.worker.remote_manager import RemoteWorkerManager
    from dbgpt.model.parameter import ModelWorkerParameters

    url = registry_process.url
    params = ModelWorkerParameters(
        host="127.0.0.1", port=8201, controller_addr=url, worker_register_host="127.0.0.1"
    )
    local = _create_local_model_manager(params)
    run_data = local.run_data
    assert run_data.worker_key == "WorkerManager@service"
    assert await local.register_func(run_data) is True
    assert await local.send_heartbeat_func(run_data) is True
    # The models a worker manager serves register the same way (as a model's run data would).
    run_data.worker_key = VICUNA
    assert await local.register_func(run_data) is True
    run_data.worker_key = "WorkerManager@service"

    # Another team's instances in the same registry: names DB-GPT cannot split.
    async with aiohttp.ClientSession(url) as http:
        native = {"model_name": "llama-3-8b", "host": "10.0.0.9", "port": 8000}
        assert (await http.post("/api/v1/instances", json=native)).status == 201
        fastchat = {
            "worker_name": "http://10.0.0.8:21002",
            "check_heart_beat": True,
            "worker_status": {"model_names": ["vicuna-7b"], "speed": 1, "queue_length": 0},
        }
        assert (await http.post("/register_worker", json=fastchat)).status == 200

    remote = RemoteWorkerManager(model_registry=client_for(url))
    [service] = await remote._get_worker_service_instance("127.0.0.1", 8201)
    assert (service.host, service.port, service.worker.worker_addr) == (
        "127.0.0.1",
        8201,
        "http://127.0.0.1:8201/api/worker",
    )
    [model] = await remote.get_model_instances("llm", "vicuna-13b")
    assert (model.host, model.port, model.worker_key) == ("127.0.0.1", 8201, VICUNA)
    [same] = remote.sync_get_model_instances("llm", "vicuna-13b")
    assert same.port == 8201
    llms = await remote.get_all_model_instances("llm")
    assert [(w.worker_key, w.port) for w in llms] == [(VICUNA, 8201)]

    run_data.remove_from_registry = True
    assert await local.deregister_func(run_data) is True
    with pytest.raises(Exception, match="Cound not found worker instances"):
        await remote._get_worker_service_instance("127.0.0.1", 8201)
