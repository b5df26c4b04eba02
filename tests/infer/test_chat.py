import builtins

import pytest
import yaml

from lmforge.cli import main
from lmforge.config import load_config
from lmforge.infer.chat_cli import chat_loop
from lmforge.infer.engine import HFEngine


@pytest.fixture
def engine(tiny_model_dir, tmp_path):
    path = tmp_path / "infer.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "model_name_or_path": str(tiny_model_dir),
                "template": "gemma",
                "do_sample": False,
                "max_new_tokens": 5,
            }
        )
    )
    return HFEngine.from_config(load_config(path)), path


def test_stream_yields_the_same_text_as_generate(engine):
    engine, _ = engine
    messages = [{"role": "user", "content": "Hi"}]
    pieces = list(engine.stream(messages))
    assert "".join(pieces) == engine.generate(messages)
    assert len("".join(pieces)) > 0


def test_chat_loop_keeps_history_and_clears_it(engine, monkeypatch, capsys):
    engine, _ = engine
    seen = []
    original = engine.stream

    def recording_stream(messages, system=None, **kw):
        seen.append([m["content"] for m in messages])
        return original(messages, system, **kw)

    monkeypatch.setattr(engine, "stream", recording_stream)
    answers = iter(["Hi", "Again", "clear", "New", "exit"])
    monkeypatch.setattr(builtins, "input", lambda prompt="": next(answers))
    chat_loop(engine)
    out = capsys.readouterr().out
    assert "History cleared." in out
    assert len(seen) == 3
    assert seen[0] == ["Hi"]
    assert seen[1][0] == "Hi" and seen[1][2] == "Again" and len(seen[1]) == 3
    assert seen[2] == ["New"]


def test_cli_prompt_prints_one_answer(engine, capsys):
    _, path = engine
    assert main(["chat", str(path), "--prompt", "Hi"]) == 0
    assert capsys.readouterr().out.endswith("\n")


def test_adapter_folder_without_adapter_config(engine, tmp_path, capsys):
    _, path = engine
    assert main(["chat", str(path), f"adapter_name_or_path={tmp_path}", "--prompt", "Hi"]) == 2
    assert "has no adapter_config.json" in capsys.readouterr().err
