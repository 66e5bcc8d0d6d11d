"""FastChat 0.2.36's own worker, registration script and API server code,
against a live registry."""

from __future__ import annotations

import logging
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest
import requests

from tests.process import ServerProcess, free_port

pytestmark = pytest.mark.usefixtures("fastchat")

WORKER_SCRIPT = Path(__file__).with_name("fastchat_worker.py")


@pytest.fixture
def worker_class(monkeypatch: pytest.MonkeyPatch):
    """FastChat's BaseModelWorker with only what imports torch replaced."""
    from fastchat.conversation import get_conv_template
    from fastchat.serve import base_model_worker

    monkeypatch.setattr(base_model_worker, "logger", logging.getLogger("fastchat-worker"))
    monkeypatch.setattr(base_model_worker, "worker", None)

    class Worker(base_model_worker.BaseModelWorker):
        def make_conv_template(self, conv_template=None, model_path=None):
            return get_conv_template("vicuna_v1.1")

    return Worker


def in_time(call, timeout: float = 20.0):
    """Run a FastChat call that would retry forever on a wrong answer; fail if it does."""
    result: dict = {}
    thread = threading.Thread(target=lambda: result.setdefault("value", call()), daemon=True)
    thread.start()
    thread.join(timeout)
    assert not thread.is_alive(), f"{call} did not return within {timeout} s (it retries on a wrong answer)"
    return result.get("value")


def listed(url: str, path: str = "/list_models") -> list[str]:
    return requests.post(url + path, timeout=5).json()["models"]


def test_a_workers_registration_and_heart_beat(registry_process: ServerProcess, worker_class) -> None:
    url = registry_process.url
    worker = worker_class(
        url, "http://127.0.0.1:21002", "w1", "/models/vicuna-7b", ["vicuna-7b", "vicuna-13b"], 5
    )
    worker.register_to_controller()
    assert listed(url) == ["vicuna-13b", "vicuna-7b"]
    in_time(worker.send_heart_beat)
    native = requests.get(url + "/api/v1/instances", timeout=5).json()
    assert [(i["model_name"], i["port"], i["queue_length"]) for i in native["instances"]] == [
        ("vicuna-13b", 21002, 0),
        ("vicuna-7b", 21002, 0),
    ]
    # The registry lost the worker (an operator purged it): its next beat is told
    # so, and FastChat's worker registers again by itself.
    for name in ("vicuna-7b", "vicuna-13b"):
        query = {"model_name": name, "host": "127.0.0.1", "port": "21002", "purge": "true"}
        assert requests.delete(url + "/api/v1/instances", params=query, timeout=5).status_code == 200
    assert listed(url) == []
    in_time(worker.send_heart_beat)
    assert listed(url) == ["vicuna-13b", "vicuna-7b"]


@pytest.fixture
def worker_process(registry_process: ServerProcess) -> Iterator[str]:
    """A FastChat worker process serving FastChat's worker API; yields its URL."""
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, str(WORKER_SCRIPT), registry_process.url, str(port), "vicuna-7b,vicuna-13b"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                requests.post(url + "/worker_get_status", timeout=1).raise_for_status()
                break
            except requests.RequestException:
                assert proc.poll() is None, "the FastChat worker exited"
                assert time.monotonic() < deadline, "the FastChat worker did not start"
                time.sleep(0.1)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_the_register_worker_script_has_the_registry_ask_the_worker(
    registry_process: ServerProcess, worker_process: str
) -> None:
    url = registry_process.url
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "fastchat.serve.register_worker",
            "--controller-address",
            url,
            "--worker-name",
            worker_process,
            "--check-heart-beat",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        env={"LOGDIR": "", "PATH": ""},
    )
    assert done.returncode == 0, done.stderr
    assert listed(url) == ["vicuna-13b", "vicuna-7b"]
    assert listed(url, "/list_language_models") == ["vicuna-13b", "vicuna-7b"]
    assert listed(url, "/list_multimodal_models") == []
    address = requests.post(url + "/get_worker_address", json={"model": "vicuna-7b"}, timeout=5).json()
    assert address == {"address": worker_process}


async def test_the_api_servers_lookups(registry_process: ServerProcess, worker_class) -> None:
    from fastchat.serve import openai_api_server as api

    url = registry_process.url
    worker = worker_class(url, "http://127.0.0.1:21002", "w1", "/models/vicuna-7b", ["vicuna-7b"], 5)
    worker.register_to_controller()
    api.app_settings.controller_address = url

    class Asked:
        model = "vicuna-7b"

    assert await api.check_model(Asked()) is None
    Asked.model = "gpt-5"
    refused = await api.check_model(Asked())
    assert refused is not None and b"vicuna-7b" in refused.body
    assert await api.get_worker_address("vicuna-7b") == "http://127.0.0.1:21002"
    with pytest.raises(ValueError, match="No available worker for gpt-5"):
        await api.get_worker_address("gpt-5")
    models = await api.show_available_models()
    assert [card.id for card in models.data] == ["vicuna-7b"]

    # A drain through /api/v1 keeps the worker out of dispatch.
    async with aiohttp.ClientSession(url) as http:
        query = {"model_name": "vicuna-7b", "host": "127.0.0.1", "port": "21002"}
        assert (await http.patch("/api/v1/instances", params=query, json={"enabled": False})).status == 200
    with pytest.raises(ValueError, match="No available worker"):
        await api.get_worker_address("vicuna-7b")
