"""Real server processes for the tests: started, signalled and killed like in production."""

from __future__ import annotations

import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path

import orjson

__all__ = ["ServerProcess", "free_port", "run_cli"]


def free_port() -> int:
    """A loopback port nobody listens on (now)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _clean_env(extra: dict[str, str] | None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("REGISTRY_")}
    return {**env, **(extra or {})}


def run_cli(*args: str, env: dict[str, str] | None = None, cwd: Path | None = None, timeout: float = 30):
    """Run ``python -m model_registry ARGS`` to completion."""
    return subprocess.run(
        [sys.executable, "-m", "model_registry", *args],
        capture_output=True,
        text=True,
        env=_clean_env(env),
        cwd=cwd,
        timeout=timeout,
    )


class ServerProcess:
    """``python -m model_registry serve`` (or ``COMMAND serve``) on a free loopback port, logging JSON."""

    def __init__(
        self,
        *args: str,
        env: dict[str, str] | None = None,
        cwd: Path | None = None,
        command: Sequence[str] | None = None,
    ) -> None:
        # What runs ``model-registry``: this interpreter's package unless told otherwise
        # (e.g. the console script of another environment, tests/test_packaging.py).
        self.command = list(command) if command is not None else [sys.executable, "-m", "model_registry"]
        self.args = ["serve", "--port", "0", "--log-format", "json", *args]
        self.env, self.cwd = env, cwd
        self.url = ""
        self.logs: list[dict] = []
        self._lines: queue.Queue[str | None] = queue.Queue()

    def start(self, timeout: float = 30) -> ServerProcess:
        self.proc = subprocess.Popen(
            [*self.command, *self.args],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            env=_clean_env(self.env),
            cwd=self.cwd,
        )
        threading.Thread(target=self._read, daemon=True).start()
        self.url = self.wait_for_log("serving", timeout)["url"]
        return self

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self._lines.put(line)
        self._lines.put(None)

    def wait_for_log(self, message: str, timeout: float = 30) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = self._lines.get(timeout=max(0.01, deadline - time.monotonic()))
            except queue.Empty:
                raise AssertionError(f"no {message!r} log line within {timeout} s; got {self.logs}") from None
            if line is None:
                raise AssertionError(
                    f"server exited ({self.proc.wait()}) before logging {message!r}: {self.logs}"
                )
            entry = orjson.loads(line)
            self.logs.append(entry)
            if entry.get("msg") == message:
                return entry

    def messages(self, message: str) -> list[dict]:
        """Every log line so far with this message (reads what is pending)."""
        while True:
            try:
                line = self._lines.get_nowait()
            except queue.Empty:
                break
            if line is not None:
                self.logs.append(orjson.loads(line))
        return [entry for entry in self.logs if entry.get("msg") == message]

    def signal(self, signum: int) -> None:
        self.proc.send_signal(signum)

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=10)

    def wait(self, timeout: float) -> int:
        return self.proc.wait(timeout=timeout)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.kill()

    def __enter__(self) -> ServerProcess:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
