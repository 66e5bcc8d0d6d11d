"""A FastChat model worker process: FastChat's own worker app and
``BaseModelWorker``, with only what imports torch replaced (the conversation
template, looked up by name instead of by model path).

    python tests/compat/fastchat_worker.py CONTROLLER PORT MODEL[,MODEL...] [--beat]

``--beat`` registers and beats as FastChat's workers do (``init_heart_beat``).
"""

from __future__ import annotations

import logging
import os
import sys

os.environ["LOGDIR"] = ""

import uvicorn  # noqa: E402
from fastchat.conversation import get_conv_template  # noqa: E402
from fastchat.serve import base_model_worker  # noqa: E402

base_model_worker.logger = logging.getLogger("fastchat-worker")  # not build_logger: it takes over stdout


class Worker(base_model_worker.BaseModelWorker):
    def make_conv_template(self, conv_template=None, model_path=None):
        return get_conv_template("vicuna_v1.1")


def main() -> None:
    controller, port, names = sys.argv[1], int(sys.argv[2]), sys.argv[3].split(",")
    worker = Worker(controller, f"http://127.0.0.1:{port}", "w", "/models/x", names, 5)
    base_model_worker.worker = worker
    if "--beat" in sys.argv:
        worker.init_heart_beat()
    uvicorn.run(base_model_worker.app, host="127.0.0.1", port=port, log_level="warning")


if __name__ == "__main__":
    main()
