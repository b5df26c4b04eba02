"""Fixtures for inference tests: an engine over the tiny model, and a running API server."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from conftest import INFERENCE, write_config
from lmforge.config import load_config
from lmforge.infer.engine import HFEngine

API_KEY = "sk-test-key"


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """The tiny models' matrices are too small to split across threads; on a shared 2-core
    machine a second thread only waits for the first (10x slower under load, measured)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def serve_app():
    """running_server: `with serve_app(app) as url:` serves `app` on a free local port."""
    return running_server


@pytest.fixture(scope="session")
def local_port():
    """free_port: a free TCP port on 127.0.0.1."""
    return free_port


@pytest.fixture(scope="session")
def api_key() -> str:
    return API_KEY


@pytest.fixture(scope="session")
def infer_yaml(tiny_model_dir, tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("infer")
    return write_config(
        folder, tiny_model_dir, INFERENCE, served_model_name="tiny", max_new_tokens=16
    )


@pytest.fixture(scope="session")
def shared_engine(infer_yaml) -> Iterator[HFEngine]:
    engine = HFEngine.from_config(load_config(infer_yaml))
    yield engine
    engine.close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def running_server(app) -> Iterator[str]:
    """uvicorn in a thread on a free 127.0.0.1 port; yields the base URL."""
    import uvicorn

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the test server did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


@pytest.fixture(scope="session")
def api_url(shared_engine) -> Iterator[str]:
    from lmforge.infer.api import create_app

    with running_server(create_app(shared_engine, api_key=API_KEY)) as url:
        yield url


@pytest.fixture
def client(api_url):
    import openai

    return openai.OpenAI(base_url=f"{api_url}/v1", api_key=API_KEY, max_retries=0, timeout=60)
