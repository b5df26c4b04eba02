import builtins
import io

import pytest

from conftest import INFERENCE, write_config
from lmforge.cli import main
from lmforge.config import load_config
from lmforge.infer.chat_cli import chat_loop, show_answer
from lmforge.infer.engine import HFEngine
from lmforge.infer.tool_parser import ToolCall


@pytest.fixture
def engine(tiny_model_dir, tmp_path):
    path = write_config(tmp_path, tiny_model_dir, INFERENCE, do_sample=False, max_new_tokens=5)
    engine = HFEngine.from_config(load_config(path))
    yield engine, path
    engine.close()


def test_stream_yields_the_same_text_as_generate(engine):
    engine, _ = engine
    messages = [{"role": "user", "content": "Hi"}]
    pieces = list(engine.stream(messages))
    assert "".join(pieces) == engine.generate(messages)
    assert len("".join(pieces)) > 0


def test_chat_loop_keeps_history_and_clears_it(engine, monkeypatch, capsys):
    engine, _ = engine
    seen = []
    original = engine.chat

    def recording_chat(messages, system=None, **kw):
        seen.append([m["content"] for m in messages])
        return original(messages, system, **kw)

    monkeypatch.setattr(engine, "chat", recording_chat)
    answers = iter(["Hi", "Again", "clear", "New", "exit"])
    monkeypatch.setattr(builtins, "input", lambda prompt="": next(answers))
    chat_loop(engine)
    out = capsys.readouterr().out
    assert "History cleared." in out
    assert len(seen) == 3
    assert seen[0] == ["Hi"]
    assert seen[1][0] == "Hi" and seen[1][2] == "Again" and len(seen[1]) == 3
    assert seen[2] == ["New"]


def test_a_too_long_message_is_an_error_and_the_chat_goes_on(engine, monkeypatch, capsys):
    engine, _ = engine
    seen = []
    original = engine.chat

    def recording_chat(messages, system=None, **kw):
        seen.append([m["content"] for m in messages])
        return original(messages, system, **kw)

    monkeypatch.setattr(engine, "chat", recording_chat)
    answers = iter(["x" * 600, "Hi", "exit"])  # the tiny model's context is 512 tokens
    monkeypatch.setattr(builtins, "input", lambda prompt="": next(answers))
    chat_loop(engine)
    captured = capsys.readouterr()
    assert "error: the prompt has 616 tokens; this model's context is 512" in captured.err
    assert "`clear` it" in captured.err
    # The refused message is not kept: the next turn is a fresh conversation that gets answered.
    assert seen == [["x" * 600], ["Hi"]]
    expected = engine.generate([{"role": "user", "content": "Hi"}])
    assert captured.out.endswith(f"Assistant: \nAssistant: {expected}\n")


def test_reasoning_is_printed_apart_and_kept_out_of_the_history():
    out = io.StringIO()
    events = [
        ("reasoning", "2 and 3 "),
        ("reasoning", "make 5."),
        ("content", "It is "),
        ("content", "5."),
    ]
    answer = show_answer(events, out)
    assert out.getvalue() == "[thinking] 2 and 3 make 5.\n[answer] It is 5.\n"
    assert answer == "It is 5."


def test_tool_calls_are_shown():
    out = io.StringIO()
    show_answer([("tool_call", ToolCall("get_weather", '{"city": "Paris"}', "call_1"))], out)
    assert '[tool call] get_weather({"city": "Paris"})' in out.getvalue()


def test_cli_prompt_prints_one_answer(engine, capsys):
    _, path = engine
    assert main(["chat", str(path), "--prompt", "Hi"]) == 0
    assert capsys.readouterr().out.endswith("\n")


def test_adapter_folder_without_adapter_config(engine, tmp_path, capsys):
    _, path = engine
    assert main(["chat", str(path), f"adapter_name_or_path={tmp_path}", "--prompt", "Hi"]) == 2
    assert "has no adapter_config.json" in capsys.readouterr().err


def test_vllm_backend_without_vllm_is_a_user_error(engine, capsys, monkeypatch):
    _, path = engine
    import sys

    monkeypatch.setitem(sys.modules, "vllm", None)  # import vllm -> ImportError
    assert main(["chat", str(path), "infer_backend=vllm", "--prompt", "Hi"]) == 2
    assert "needs the vllm package" in capsys.readouterr().err


def test_vllm_backend_without_a_gpu_is_a_user_error(monkeypatch):
    import sys
    import types

    import torch

    from lmforge.errors import UserError
    from lmforge.infer.vllm_engine import require_vllm

    monkeypatch.setitem(sys.modules, "vllm", types.ModuleType("vllm"))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(UserError, match="needs a CUDA GPU"):
        require_vllm()


def test_a_conversation_longer_than_the_context_is_a_user_error(engine):
    from lmforge.errors import UserError

    engine, _ = engine
    with pytest.raises(UserError, match="context"):
        engine.generate([{"role": "user", "content": "x" * 600}])
