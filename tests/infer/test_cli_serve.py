"""`lmforge api` and `lmforge webchat` as commands: address, key and port handling."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time

import httpx
import pytest

from lmforge.cli import main
from lmforge.config import load_config
from lmforge.infer.api import api_key_from, server_address
from lmforge.infer.webchat import webchat_address


def test_address_flag_beats_environment_beats_config(monkeypatch):
    config = load_config(None, ["api_port=9001"])
    monkeypatch.delenv("API_HOST", raising=False)
    monkeypatch.delenv("API_PORT", raising=False)
    assert server_address(config) == ("127.0.0.1", 9001)
    monkeypatch.setenv("API_HOST", "0.0.0.0")
    monkeypatch.setenv("API_PORT", "9002")
    assert server_address(config) == ("0.0.0.0", 9002)
    assert server_address(config, "127.0.0.2", 9003) == ("127.0.0.2", 9003)
    monkeypatch.delenv("GRADIO_SERVER_NAME", raising=False)
    monkeypatch.delenv("GRADIO_SERVER_PORT", raising=False)
    assert webchat_address(None, None) == ("127.0.0.1", 7860)


def test_api_key_from_environment_or_config(monkeypatch):
    monkeypatch.delenv("API_KEY", raising=False)
    assert api_key_from(load_config(None, [])) is None
    assert api_key_from(load_config(None, ["api_key=abc"])) == "abc"
    monkeypatch.setenv("API_KEY", "env")
    assert api_key_from(load_config(None, ["api_key=abc"])) == "env"


@pytest.mark.parametrize("command", ["api", "webchat"])
def test_a_port_in_use_is_a_user_error(infer_yaml, command, capsys):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        assert main([command, str(infer_yaml), "--port", str(port)]) == 2
    assert f"cannot listen on 127.0.0.1:{port}" in capsys.readouterr().err


def test_lmforge_api_command_serves_with_the_key_from_the_environment(infer_yaml, local_port):
    port = local_port()
    env = {**os.environ, "API_KEY": "from-env", "API_PORT": str(port)}
    process = subprocess.Popen(
        [sys.executable, "-m", "lmforge", "api", str(infer_yaml)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:  # bounded wait for the model to load and the server to listen
            assert process.poll() is None, process.stderr.read()
            assert time.monotonic() < deadline, "the server did not start in 120 s"
            try:
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.2)
        assert httpx.get(f"{url}/v1/models").status_code == 401
        models = httpx.get(f"{url}/v1/models", headers={"Authorization": "Bearer from-env"})
        assert [m["id"] for m in models.json()["data"]] == ["tiny"]
    finally:
        process.terminate()  # the one process this test started
        process.wait(timeout=30)
        process.stderr.close()
