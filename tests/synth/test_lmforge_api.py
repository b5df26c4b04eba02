"""The real loop: `lmforge synth` against `lmforge api` serving a tiny random model (the answers
are noise; the plumbing - requests, key, usage, failures kept with their raw text - must be
right), and, marked e2e, the embedded Gemma-3-270M over the example documents."""

from __future__ import annotations

import json
import threading
import time

import pytest
import yaml

from conftest import INFERENCE, write_config

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

SHORT_PROMPTS = {  # the tiny model's context is 512 characters
    "system": "Data.",
    "questions": "{count} Qs: {text}",
    "answer": "{style} {question} {text}",
    "style_detailed": "A:",
    "strict": "JSON!",
}


@pytest.fixture
def lmforge_api(tiny_model_dir, tmp_path):
    yield from serve_api(tiny_model_dir, tmp_path, "tiny")


def serve_api(model_dir, tmp_path, name: str):
    import socket

    import torch
    import uvicorn

    from lmforge.config import load_config
    from lmforge.infer.api import create_app
    from lmforge.infer.engine import HFEngine

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    path = write_config(
        tmp_path / "infer", model_dir, INFERENCE, served_model_name=name, max_new_tokens=8
    )
    engine = HFEngine.from_config(load_config(path))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    app = create_app(engine, api_key="sk-synth-test")
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the API did not start"
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        engine.close()
        torch.set_num_threads(threads)


def test_synth_against_lmforge_api(tmp_path, lmforge_api, helpers, monkeypatch):
    monkeypatch.setenv("LMFORGE_SYNTH_KEY", "sk-synth-test")
    prompts = tmp_path / "prompts"
    prompts.mkdir()
    (prompts / "en.yaml").write_text(yaml.safe_dump(SHORT_PROMPTS))
    helpers.write_docs(tmp_path / "docs", {"a.txt": "Wind turns blades. Blades turn a rotor."})
    path = helpers.write_synth_config(
        tmp_path,
        lmforge_api,
        llm={"model": "tiny", "api_key_env": "LMFORGE_SYNTH_KEY", "max_tokens": 8, "timeout": 60},
        prompt_dir=str(prompts),
        chunk_min_chars=10,
        chunk_max_chars=60,
    )
    code = helpers.run_cli("synth", str(path))
    out = tmp_path / "out"
    report = helpers.read_json(out / "synth_report.json")
    calls = report["llm_calls"]
    assert calls["http_requests"] >= 1 and calls["tokens_in"] > 0 and calls["tokens_out"] > 0
    stored = [json.loads(line) for line in (out / "synth_store.jsonl").open()]
    assert stored and all(isinstance(s["raw"], str) or s["ok"] for s in stored)
    if code == 1:  # noise is not JSON: kept, with the raw reply, for the next run
        failed = [json.loads(line) for line in (out / "failed.jsonl").open()]
        assert failed and all("raw" in f for f in failed)
        assert calls["strict_retries"] >= 1
    else:
        assert code == 0
    assert (out / "dataset_info.json").exists()


@pytest.mark.e2e
def test_synth_against_lmforge_api_with_the_embedded_model(tmp_path, helpers, monkeypatch):
    from pathlib import Path

    from lmforge.model.pull import pull_model

    server = serve_api(pull_model("gemma-3-270m"), tmp_path, "gemma")
    url = next(server)
    try:
        monkeypatch.setenv("LMFORGE_SYNTH_KEY", "sk-synth-test")
        example = Path(__file__).resolve().parents[2] / "examples" / "synth" / "documents"
        path = helpers.write_synth_config(
            tmp_path,
            url,
            documents=str(example / "heat_pumps.md"),
            llm={
                "model": "gemma",
                "api_key_env": "LMFORGE_SYNTH_KEY",
                "max_tokens": 48,
                "timeout": 300,
                "concurrency": 2,
            },
            chunk_min_chars=4000,  # one chunk: Gemma-3-270M on a CPU is slow
            chunk_max_chars=4000,
            questions_per_chars=4000,
        )
        code = helpers.run_cli("synth", str(path))
    finally:
        next(server, None)
    out = tmp_path / "out"
    report = helpers.read_json(out / "synth_report.json")
    calls = report["llm_calls"]
    assert calls["http_requests"] >= report["counts"]["chunks"] > 0
    assert calls["tokens_out"] > 0
    assert report["validation"]["problems"] == 0
    written = report["counts"]["train_pairs"] + report["counts"]["failed"]
    assert code in (0, 1) and written > 0  # every chunk's outcome is accounted for
