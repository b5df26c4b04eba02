"""The chat worker: models load in an `lmforge api` process, never in the board's process.

`ChatWorker.load` writes an inference YAML (the base model, each adapter served under its own
name, generation defaults) into the board's work folder and starts `lmforge api` on a free
127.0.0.1 port with a random API key (other local users cannot use the worker). The board
talks to it over HTTP (OpenAI's chat API, streamed as server-sent events) with the standard
library only. Side by side is two requests, one per model name, to the same worker.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import yaml

from lmforge.webui.jobs import lmforge_argv, tail

BASE_NAME = "base"
LOAD_TIMEOUT = 600.0


class WorkerError(Exception):
    pass


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def adapter_names(adapters: list[str]) -> dict[str, str]:
    """Served name -> folder: the folder's name, made unique (and never `base`)."""
    names: dict[str, str] = {}
    for path in adapters:
        name = Path(path.rstrip("/")).name or "adapter"
        candidate, n = name, 2
        while candidate in names or candidate == BASE_NAME:
            candidate, n = f"{name}-{n}", n + 1
        names[candidate] = path
    return names


def worker_settings(model: str, adapters: list[str], template: str | None) -> dict:
    settings: dict = {"model_name_or_path": model, "served_model_name": BASE_NAME}
    if template:
        settings["template"] = template
    if adapters:
        settings["adapters"] = adapter_names(adapters)
    return settings


class ChatWorker:
    """One `lmforge api` process at a time, under `workdir/chat`."""

    def __init__(self, workdir: str | Path):
        self.folder = Path(workdir) / "chat"
        self.process: subprocess.Popen | None = None
        self.port = 0
        self.key = ""
        self.models: list[str] = []

    @property
    def log_path(self) -> Path:
        return self.folder / "worker_log.txt"

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def load(
        self, model: str, adapters: list[str], template: str | None = None, *, cwd=None
    ) -> list[str]:
        """Start the worker and wait until it answers; the served model names."""
        self.unload()
        self.folder.mkdir(parents=True, exist_ok=True)
        config = self.folder / "chat.yaml"
        config.write_text(yaml.safe_dump(worker_settings(model, adapters, template)))
        self.port, self.key = free_port(), secrets.token_urlsafe(24)
        env = {**os.environ, "API_KEY": self.key, "PYTHONUNBUFFERED": "1"}
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(
                [
                    *lmforge_argv(),
                    "api",
                    str(config),
                    "--host",
                    "127.0.0.1",
                    "--port",
                    str(self.port),
                ],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=cwd,
                start_new_session=True,
            )
        deadline = time.time() + LOAD_TIMEOUT
        while time.time() < deadline:
            if not self.alive():
                reason = tail(self.log_path, 6) or "it exited"
                self.process = None
                raise WorkerError(reason)
            try:
                data = self._get("/v1/models")
                self.models = [m["id"] for m in data["data"]]
                return self.models
            except (OSError, ValueError, KeyError):
                time.sleep(0.5)
        self.unload()
        raise WorkerError(f"the model did not load within {LOAD_TIMEOUT:.0f} s")

    def unload(self) -> None:
        if self.process is not None:
            try:
                os.killpg(self.process.pid, signal.SIGTERM)
                self.process.wait(timeout=15)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                try:
                    os.killpg(self.process.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            self.process = None
        self.models = []

    def _request(self, path: str, body: dict | None = None):
        request = urllib.request.Request(
            f"http://127.0.0.1:{self.port}{path}",
            data=None if body is None else json.dumps(body).encode(),
            headers={"Authorization": f"Bearer {self.key}", "Content-Type": "application/json"},
        )
        return urllib.request.urlopen(request, timeout=600)

    def _get(self, path: str) -> dict:
        with self._request(path) as response:
            return json.loads(response.read())

    def stream(
        self, model: str, messages: list[dict], system: str | None = None, **sampling
    ) -> Iterator[tuple[str, str]]:
        """(kind, text) deltas of one answer: kind is content or reasoning."""
        if not self.alive():
            raise WorkerError("no model is loaded")
        messages = ([{"role": "system", "content": system}] if system else []) + messages
        body = {"model": model, "messages": messages, "stream": True, **sampling}
        try:
            response = self._request("/v1/chat/completions", body)
        except urllib.error.HTTPError as exc:
            detail = exc.read().decode("utf-8", errors="replace")
            try:
                detail = json.loads(detail)["error"]["message"]
            except (ValueError, KeyError, TypeError):
                pass
            raise WorkerError(detail) from None
        with response:
            for raw in response:
                line = raw.decode("utf-8").strip()
                if not line.startswith("data:"):
                    continue
                data = line[5:].strip()
                if data == "[DONE]":
                    break
                for choice in json.loads(data).get("choices", []):
                    delta = choice.get("delta") or {}
                    if delta.get("reasoning_content"):
                        yield "reasoning", delta["reasoning_content"]
                    if delta.get("content"):
                        yield "content", delta["content"]
