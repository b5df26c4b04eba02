"""A tool-call round trip through the API, with answers that come from a real model.

A random tiny model cannot call tools, so this module trains one (about 100 optimizer steps,
a few seconds on one CPU thread) to give two fixed answers to two fixed prompts, rendered by
the same code the server uses:
  1. the user asks for the weather, with a tool offered -> reasoning + a Qwen-style tool call;
  2. the same conversation plus the call and the tool's result -> a final answer.
Everything after that is the real path: the server renders the prompt, the model generates
token by token, the parser finds the reasoning and the call, and the openai client reads them.
"""

from __future__ import annotations

import json

import pytest
import torch

from conftest import INFERENCE, write_config
from lmforge.config import load_config
from lmforge.data.templates.named import get_template
from lmforge.infer.engine import HFEngine
from lmforge.infer.openai_protocol import ChatCompletionRequest
from lmforge.infer.prompt import build_chat_prompt

TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Weather in a city",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string"}},
                "required": ["city"],
            },
        },
    }
]
QUESTION = [{"role": "user", "content": "Weather in Paris?"}]
CALL_ANSWER = (
    "<think>\nweather\n</think>\n\n<tool_call>\n"
    '{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call><|im_end|>'
)
FINAL_ANSWER = "<think>\n\n</think>\n\nSunny, 21 C.<|im_end|>"


def after_call(call_id: str, reasoning: str) -> list[dict]:
    """The conversation a client sends back: the question, the call, the tool's result."""
    call = {
        "id": call_id,
        "type": "function",
        "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
    }
    return QUESTION + [
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [call],
            "reasoning_content": reasoning,
        },
        {"role": "tool", "tool_call_id": call_id, "content": '{"temp": 21}'},
    ]


def server_prompt(tokenizer, messages: list[dict]) -> list[int]:
    """The prompt ids exactly as the server builds them from a request."""
    request = ChatCompletionRequest.model_validate(
        {"model": "m", "messages": messages, "tools": TOOLS}
    )
    return build_chat_prompt(
        get_template("qwen3"),
        tokenizer,
        request.canonical_messages(),
        tools=request.tool_dicts(),
    ).ids


def train_tool_model(folder, tokenizer) -> None:
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    examples = [
        (server_prompt(tokenizer, QUESTION), CALL_ANSWER),
        (server_prompt(tokenizer, after_call("call_x", "weather")), FINAL_ANSWER),
    ]
    examples = [(p, tokenizer.encode(a, add_special_tokens=False)) for p, a in examples]
    torch.manual_seed(0)
    config = Gemma3TextConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=32,
        max_position_embeddings=2048,  # the tool prompt alone is ~600 characters
        sliding_window=64,
        layer_types=["sliding_attention", "full_attention"],
        pad_token_id=0,
        eos_token_id=1,
        bos_token_id=2,
    )
    model = Gemma3ForCausalLM(config)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)

    def learned() -> bool:
        model.eval()
        with torch.inference_mode():
            ok = all(
                model.generate(
                    torch.tensor([p]),
                    attention_mask=torch.ones(1, len(p), dtype=torch.long),
                    max_new_tokens=len(a),
                    do_sample=False,
                    pad_token_id=0,
                )[0, len(p) :].tolist()
                == a
                for p, a in examples
            )
        model.train()
        return ok

    for step in range(1, 401):
        for prompt, answer in examples:
            ids = torch.tensor([prompt + answer])
            labels = torch.tensor([[-100] * len(prompt) + answer])
            model(input_ids=ids, labels=labels).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        if step % 20 == 0 and learned():
            break
    else:
        raise AssertionError("the tiny model did not learn the two answers in 400 steps")
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)


@pytest.fixture(scope="module")
def tool_client(tmp_path_factory, tiny_tokenizer, serve_app):
    import openai

    from lmforge.infer.api import create_app

    folder = tmp_path_factory.mktemp("tool-model")
    train_tool_model(
        folder / "model", tiny_tokenizer
    )  # on one torch thread (conftest.one_torch_thread)
    path = write_config(
        folder,
        folder / "model",
        INFERENCE,
        template="qwen3",
        served_model_name="tool-tiny",
        do_sample=False,
        max_new_tokens=120,
    )
    engine = HFEngine.from_config(load_config(path))
    with serve_app(create_app(engine)) as url:
        yield openai.OpenAI(base_url=f"{url}/v1", api_key="none", max_retries=0, timeout=60)
    engine.close()


def test_tool_call_round_trip(tool_client):
    first = tool_client.chat.completions.create(model="tool-tiny", messages=QUESTION, tools=TOOLS)
    choice = first.choices[0]
    assert choice.finish_reason == "tool_calls"
    message = choice.message
    assert message.content is None
    assert message.model_extra["reasoning_content"] == "weather"
    [call] = message.tool_calls
    assert call.type == "function" and call.function.name == "get_weather"
    assert json.loads(call.function.arguments) == {"city": "Paris"}
    assert call.id.startswith("call_")

    messages = after_call(call.id, message.model_extra["reasoning_content"])
    second = tool_client.chat.completions.create(model="tool-tiny", messages=messages, tools=TOOLS)
    assert second.choices[0].message.content == "Sunny, 21 C."
    assert second.choices[0].message.tool_calls is None
    assert second.choices[0].finish_reason == "stop"


def test_streamed_tool_call_deltas(tool_client):
    stream = tool_client.chat.completions.create(
        model="tool-tiny", messages=QUESTION, tools=TOOLS, stream=True
    )
    reasoning, content, calls, finish = "", "", {}, []
    for chunk in stream:
        delta = chunk.choices[0].delta
        reasoning += (delta.model_extra or {}).get("reasoning_content") or ""
        content += delta.content or ""
        for call in delta.tool_calls or []:
            entry = calls.setdefault(call.index, {"id": call.id, "name": "", "arguments": ""})
            entry["name"] += call.function.name or ""
            entry["arguments"] += call.function.arguments or ""
        if chunk.choices[0].finish_reason:
            finish.append(chunk.choices[0].finish_reason)
    assert reasoning == "weather" and content == ""
    assert list(calls) == [0] and calls[0]["name"] == "get_weather"
    assert json.loads(calls[0]["arguments"]) == {"city": "Paris"}
    assert calls[0]["id"].startswith("call_")
    assert finish == ["tool_calls"]


def test_forced_tool_choice_puts_the_call_in_the_prompt(tool_client, tiny_tokenizer):
    tokenizer = tiny_tokenizer
    choice = {"type": "function", "function": {"name": "get_weather"}}
    prompt = build_chat_prompt(
        get_template("qwen3"), tokenizer, QUESTION, tools=TOOLS, tool_choice=choice
    )
    assert tokenizer.decode(prompt.ids).endswith(
        '<|im_start|>assistant\n<tool_call>\n{"name": "get_weather", "arguments": '
    )
    with pytest.raises(Exception, match="not among the tools"):
        tool_client.chat.completions.create(
            model="tool-tiny",
            messages=QUESTION,
            tools=TOOLS,
            tool_choice={"type": "function", "function": {"name": "nope"}},
        )
