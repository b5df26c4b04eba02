"""A scripted OpenAI-compatible chat-completions server (a test double of the external LLM),
and small documents and configs for synth tests.

`scripted_llm(respond)` serves http://127.0.0.1:PORT/v1 in a thread; `respond(body)` returns
what to answer to a request: a string (the message content, 200), `(status, payload)`, `DROP`
(close the connection without answering) or `Slow(seconds, answer)`. `SMART` answers every
synth prompt with deterministic, well-formed JSON derived from the prompt, so two runs over
the same documents get the same answers. Every request's body is kept in `server.requests`.
"""

from __future__ import annotations

import hashlib
import json
import re
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import yaml

DROP = object()


@dataclass
class Slow:
    seconds: float
    answer: Any


def prompt_of(body: dict) -> str:
    return body["messages"][1]["content"]


def stage_of(body: dict) -> str:
    text = prompt_of(body)
    if len(body["messages"]) > 2:
        return "strict"
    for marker, stage in (
        ("questions that it answers", "questions"),
        ("个可以由该文本回答的问题", "questions"),
        ("Rate this question-answer pair", "score"),
        ("为下面这个用于训练模型的问答对打分", "score"),
        ("Rewrite the conversation", "augment"),
        ("Answer the question", "answer"),
        ("回答问题", "answer"),
    ):
        if marker in text:
            return stage
    return "unknown"


def _quoted(text: str) -> str:
    match = re.search(r'"""\n(.*?)\n"""', text, re.DOTALL)
    return match.group(1) if match else ""


def smart(body: dict) -> str:
    """Deterministic, well-formed answers to every synth prompt."""
    text = prompt_of(body)
    stage = stage_of(body)
    if stage == "questions":
        count = int(re.search(r"(?:write|写出) (\d+) (?:questions|个)", text).group(1))
        words = re.findall(r"[A-Za-z]{4,}|[\u4e00-\u9fff]{2}", _quoted(text)) or ["nothing"]
        tag = hashlib.sha256(_quoted(text).encode()).hexdigest()[:6]
        questions = [
            f"How does {words[(i * 3) % len(words)]} relate to "
            f"{words[(i * 3 + 1) % len(words)]} ({tag}{i})?"
            for i in range(count)
        ]
        return json.dumps(questions)
    if stage == "answer":
        question = re.split("Question:|问题：", text)[-1].strip()
        answer = {"answer": f"It is explained as follows: {question[:40]}"}
        if '"reasoning"' in text:
            answer["reasoning"] = "First consider the facts."
        return json.dumps(answer)
    if stage == "score":
        return json.dumps({"score": 8, "reason": "fine"})
    if stage == "augment":
        count = int(re.search(r"into (\d+) variants", text).group(1))
        turns = json.loads(text.split("Conversation (JSON):", 1)[1])
        return json.dumps([[f"{t['content']} (v{k})" for t in turns] for k in range(1, count + 1)])
    return "[]"


class ScriptedLLM:
    def __init__(self, respond: Callable[[dict], Any]):
        self.respond = respond
        self.requests: list[dict] = []
        self.lock = threading.Lock()
        owner = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def do_GET(self):
                self._send(200, {"object": "list", "data": [{"id": "scripted"}]})

            def do_POST(self):
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length))
                with owner.lock:
                    owner.requests.append(body)
                answer = owner.respond(body)
                if isinstance(answer, Slow):
                    time.sleep(answer.seconds)
                    answer = answer.answer
                if answer is DROP:
                    self.close_connection = True
                    self.connection.shutdown(2)
                    return
                if isinstance(answer, tuple):
                    self._send(*answer)
                    return
                self._send(
                    200,
                    {
                        "id": "cmpl-1",
                        "object": "chat.completion",
                        "model": body.get("model"),
                        "choices": [
                            {
                                "index": 0,
                                "message": {"role": "assistant", "content": answer},
                                "finish_reason": "stop",
                            }
                        ],
                        "usage": {"prompt_tokens": 10, "completion_tokens": 5},
                    },
                )

            def _send(self, status: int, payload: Any):
                data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass

        self.server = _QuietServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"

    def stages(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for body in self.requests:
            counts[stage_of(body)] = counts.get(stage_of(body), 0) + 1
        return counts


class _QuietServer(ThreadingHTTPServer):
    """A client that stops (lmforge synth at the first refused request) drops the connections
    still in flight; socketserver would print each reset to stderr, where the tests read the
    CLI's one-paragraph error."""

    def handle_error(self, request, client_address) -> None:
        if isinstance(sys.exc_info()[1], OSError):  # resets, broken pipes, timeouts
            return
        super().handle_error(request, client_address)


@contextmanager
def serve(respond: Callable[[dict], Any]) -> Iterator[ScriptedLLM]:
    llm = ScriptedLLM(respond)
    thread = threading.Thread(target=llm.server.serve_forever, daemon=True)
    thread.start()
    try:
        yield llm
    finally:
        llm.server.shutdown()
        llm.server.server_close()


@pytest.fixture
def scripted_llm():
    """`with scripted_llm(respond) as server:` (respond defaults to smart)."""
    return lambda respond=smart: serve(respond)


DOCS = {
    "guide.md": """# Solar panels

Solar panels convert sunlight into electricity using photovoltaic cells made of silicon.
A typical residential panel produces between 250 and 400 watts under full sunlight.

## Maintenance

Panels need little maintenance. Rain cleans most dust away, and an inspection every year
catches loose wiring. Efficiency drops by about half a percent per year as cells age.

| Component | Lifetime |
|-----------|----------|
| Panel | 25 years |
| Inverter | 10 years |

## Installation

Installers mount panels facing south in the northern hemisphere, tilted at roughly the local
latitude. A permit from the local authority is usually required before installation begins.
""",
    "notes.txt": """Batteries store surplus solar energy for use at night. Lithium iron phosphate
batteries last for several thousand charge cycles and tolerate heat better than other lithium
chemistries.

Grid-tied systems without batteries export surplus power to the utility, which credits the
owner through net metering agreements that vary between regions.
""",
}


def write_docs(folder: Path, docs: dict[str, str] | None = None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in (docs or DOCS).items():
        (folder / name).write_text(text, encoding="utf-8")
    return folder


def write_synth_config(folder: Path, base_url: str, **settings) -> Path:
    """folder/synth.yaml over folder/docs (written if absent), output folder/out."""
    if not (folder / "docs").exists():
        write_docs(folder / "docs")
    llm = {
        "base_url": base_url,
        "model": "scripted",
        "concurrency": 4,
        "retry_wait": 0.01,
        "timeout": 5,
        **settings.pop("llm", {}),
    }
    config = {
        "documents": str(folder / "docs"),
        "llm": llm,
        "chunk_min_chars": 100,
        "chunk_max_chars": 400,
        "questions_per_chars": 150,
        "output_dir": str(folder / "out"),
        **settings,
    }
    path = folder / "synth.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False, allow_unicode=True), encoding="utf-8")
    return path


def run_cli(*args: str) -> int:
    from lmforge.cli import main

    return main(list(args))


def read_json(path: Path) -> Any:
    return json.loads(Path(path).read_text(encoding="utf-8"))


@pytest.fixture
def helpers():
    """The helpers above, for test files (which do not import one another)."""

    class H:
        pass

    h = H()
    for name, value in {
        "DROP": DROP,
        "Slow": Slow,
        "smart": smart,
        "stage_of": stage_of,
        "prompt_of": prompt_of,
        "write_docs": write_docs,
        "write_synth_config": write_synth_config,
        "run_cli": run_cli,
        "read_json": read_json,
        "DOCS": DOCS,
    }.items():
        setattr(h, name, value)
    return h
