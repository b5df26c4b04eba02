"""Each named template renders the same text as its vendor's Jinja chat template.

The vendor templates are stored under tests/fixtures/templates (sources in the README there) and
rendered with transformers' own chat-template renderer, as `apply_chat_template` would.
"""

import json
from pathlib import Path

import pytest
from transformers.utils.chat_template_utils import render_jinja_template

from lmforge.data.templates.named import available_templates, get_template
from lmforge.data.templates.tools import parse_tools

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "templates"
VENDOR = {
    "chatml": "chatml",
    "yi": "chatml",
    "qwen": "qwen",
    "qwen3": "qwen3",
    "qwen3_nothink": "qwen3_nothink",
    "llama2": "llama2",
    "llama3": "llama3",
    "mistral": "mistral",
    "mixtral": "mixtral",
    "gemma": "gemma",
    "glm4": "glm4",
    "deepseek": "deepseek",
    "deepseek3": "deepseek3",
    "deepseekr1": "deepseekr1",
    "phi3": "phi3",
    "phi4": "phi4",
    "intern2": "intern2",
}
NO_SYSTEM = {"mixtral"}  # the vendor template refuses a system message
SYSTEM_ONLY_BEFORE_PROMPT = {"mistral"}  # the vendor drops it unless the last turn is the user's
TOOLS = {"qwen", "qwen3", "qwen3_nothink", "glm4"}  # templates whose vendor writes tool calls


class Tok:
    bos_token, eos_token = "<s>", "</s>"


def vendor_render(name, messages, system=None, tools=None, generation=False, **kwargs):
    chat = ([{"role": "system", "content": system}] if system else []) + [
        _vendor_message(m) for m in messages
    ]
    schemas = parse_tools(tools) or None  # the OpenAI wrapping the vendors expect
    if name == "glm4" and schemas:  # GLM-4 reads tools from a message, not from `tools`
        if chat and chat[0]["role"] == "system":
            chat[0] = {**chat[0], "tools": schemas}
        else:
            chat.insert(0, {"role": "system", "content": "", "tools": schemas})
        schemas = None
    if name == "glm4":
        chat = [_glm4_message(m) for m in chat]
    text = (FIXTURES / f"{VENDOR[name]}.jinja").read_text(encoding="utf-8")
    rendered, _ = render_jinja_template(
        [chat],
        tools=schemas,
        chat_template=text,
        add_generation_prompt=generation,
        bos_token=Tok.bos_token,
        eos_token=Tok.eos_token,
        **kwargs,
    )
    return rendered[0]


def _vendor_message(message):
    out = {"role": message["role"], "content": message.get("content", "")}
    if message.get("reasoning"):
        out["reasoning_content"] = message["reasoning"]
    if message.get("tool_calls"):
        out["tool_calls"] = [{"type": "function", "function": c} for c in message["tool_calls"]]
    return out


def _glm4_message(message):
    if message["role"] == "tool":
        return {"role": "observation", "content": message["content"]}
    if message.get("tool_calls"):
        (call,) = message["tool_calls"]
        fn = call["function"]
        args = json.dumps(fn["arguments"], ensure_ascii=False)
        return {"role": "assistant", "metadata": fn["name"], "content": args}
    return message


def ours(name, messages, system=None, tools=None, generation=False, **options):
    template = get_template(name).with_options(**options) if options else get_template(name)
    segments = template.render(Tok(), messages, system, tools, add_generation_prompt=generation)
    return "".join(s.text for s in segments)


def closing(name):
    """What ends the last answer of efficient-EOS templates (not in the vendor's rendering)."""
    template = get_template(name)
    return template.closing.replace("{eos}", Tok.eos_token) if template.efficient_eos else ""


ONE_TURN = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}]
MULTI_TURN = ONE_TURN + [
    {"role": "user", "content": "Who are you?"},
    {"role": "assistant", "content": "Forge, a bot."},
]
ASKING = MULTI_TURN + [{"role": "user", "content": "And now?"}]
SYSTEM = "You are helpful."


@pytest.mark.parametrize("name", sorted(VENDOR))
@pytest.mark.parametrize("conversation", ["one_turn", "multi_turn"])
@pytest.mark.parametrize("system", [None, SYSTEM])
def test_conversation_text_equals_vendor(name, conversation, system):
    if system and (name in NO_SYSTEM or name in SYSTEM_ONLY_BEFORE_PROMPT):
        pytest.skip("the vendor template has no system prompt here")
    messages = ONE_TURN if conversation == "one_turn" else MULTI_TURN
    expected = vendor_render(name, messages, system)
    if name == "deepseekr1":
        # The vendor drops reasoning from every answer it renders; training writes the final
        # answer as the model produces it after the vendor's prompt, which opens <think>.
        prompt = vendor_render(name, messages[:-1], system, generation=True)
        expected = prompt + "\n</think>\n\n" + messages[-1]["content"] + "<｜end▁of▁sentence｜>"
    assert ours(name, messages, system) == expected + closing(name)


@pytest.mark.parametrize("name", sorted(VENDOR))
@pytest.mark.parametrize("system", [None, SYSTEM])
def test_generation_prompt_equals_vendor(name, system):
    if system and name in NO_SYSTEM:
        pytest.skip("the vendor template refuses a system message")
    expected = vendor_render(name, ASKING, system, generation=True)
    assert ours(name, ASKING, system, generation=True) == expected


def test_qwen2_is_qwen_with_its_default_system():
    default = "You are a helpful assistant."
    for messages, generation in ((MULTI_TURN, False), (ASKING, True)):
        expected = vendor_render("qwen", messages, generation=generation)
        assert ours("qwen", messages, generation=generation) == expected
        text = (FIXTURES / "qwen2.jinja").read_text(encoding="utf-8")
        chat = [dict(m) for m in messages]
        qwen2, _ = render_jinja_template(
            [chat], chat_template=text, add_generation_prompt=generation
        )
        assert ours("qwen", messages, generation=generation, default_system=default) == qwen2[0]


@pytest.mark.parametrize("generation", [False, True])
def test_gemma_1_and_2_equal_their_vendor_template(generation):
    """gemma-*-it and gemma-2-*-it ship one template (gemma2.jinja), Gemma 3's without a system
    prompt (they refuse one): the `gemma` template renders the same text, content trimmed."""
    messages = [dict(m) for m in (ASKING if generation else MULTI_TURN)]
    messages[0]["content"] = "  Hi\n"
    text = (FIXTURES / "gemma2.jinja").read_text(encoding="utf-8")
    rendered, _ = render_jinja_template(
        [messages],
        chat_template=text,
        add_generation_prompt=generation,
        bos_token=Tok.bos_token,
        eos_token=Tok.eos_token,
    )
    expected = (
        "<s><start_of_turn>user\nHi<end_of_turn>\n<start_of_turn>model\nHello!<end_of_turn>\n"
    )
    assert rendered[0].startswith(expected)
    assert ours("gemma", messages, generation=generation) == rendered[0]


TOOL_SCHEMAS = json.dumps(
    [
        {
            "name": "get_weather",
            "description": "Weather in a city",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string", "description": "City name"}},
                "required": ["city"],
            },
        }
    ]
)
TOOL_CALL = [{"name": "get_weather", "arguments": {"city": "Paris"}}]
TOOL_CONVERSATION = [
    {"role": "user", "content": "Weather in Paris?"},
    {"role": "assistant", "content": "", "tool_calls": TOOL_CALL},
    {"role": "tool", "content": '{"temp": 21}'},
    {"role": "assistant", "content": "It is 21 degrees."},
]
PARALLEL = [
    {"role": "user", "content": "Paris and Rome?"},
    {"role": "assistant", "content": "Checking.", "tool_calls": TOOL_CALL * 2},
    {"role": "tool", "content": "21"},
    {"role": "tool", "content": "25"},
    {"role": "assistant", "content": "21 and 25."},
]


@pytest.mark.parametrize("name", sorted(TOOLS))
@pytest.mark.parametrize("system", [None, SYSTEM])
def test_tool_calls_equal_vendor(name, system):
    expected = vendor_render(name, TOOL_CONVERSATION, system, TOOL_SCHEMAS)
    if name == "qwen3":  # its final answer always carries a (here empty) reasoning block
        assert "<think>\n\n</think>\n\nIt is 21" in expected
    assert ours(name, TOOL_CONVERSATION, system, TOOL_SCHEMAS) == expected + closing(name)
    asking = TOOL_CONVERSATION[:3]
    expected = vendor_render(name, asking, system, TOOL_SCHEMAS, generation=True)
    assert ours(name, asking, system, TOOL_SCHEMAS, generation=True) == expected


@pytest.mark.parametrize("name", ["qwen", "qwen3", "qwen3_nothink"])
def test_parallel_tool_calls_and_grouped_results_equal_vendor(name):
    expected = vendor_render(name, PARALLEL, None, TOOL_SCHEMAS)
    assert ours(name, PARALLEL, None, TOOL_SCHEMAS) == expected


REASONED = [
    {"role": "user", "content": "2+2?"},
    {"role": "assistant", "content": "4", "reasoning": "Two and two."},
    {"role": "user", "content": "3+3?"},
    {"role": "assistant", "content": "6", "reasoning": "Three and three."},
]


@pytest.mark.parametrize("thinking", [True, False, None])
def test_qwen3_generation_prompt_follows_enable_thinking(thinking):
    kwargs = {} if thinking is None else {"enable_thinking": thinking}
    expected = vendor_render("qwen3", ASKING, generation=True, **kwargs)
    got = ours("qwen3", ASKING, generation=True, enable_thinking=thinking)
    assert got == expected


def test_qwen3_reasoning_kept_in_last_turn_dropped_before():
    expected = vendor_render("qwen3", REASONED)
    assert "Two and two" not in expected and "<think>\nThree and three.\n</think>" in expected
    assert ours("qwen3", REASONED) == expected


def test_deepseekr1_reasoning_dropped_before_last_turn():
    prompt = vendor_render("deepseekr1", REASONED[:-1], generation=True)
    expected = prompt + "Three and three.\n</think>\n\n6<｜end▁of▁sentence｜>"
    assert "Two and two" not in prompt
    assert ours("deepseekr1", REASONED) == expected


GENERATED = sorted(set(available_templates()) - set(VENDOR))


@pytest.mark.parametrize("name", GENERATED)
@pytest.mark.parametrize("system", [None, SYSTEM])
def test_templates_without_vendor_jinja_match_their_written_jinja(name, system):
    """alpaca, vicuna, default, empty, baichuan2: the Jinja written into the saved tokenizer
    renders what training rendered."""
    template = get_template(name)
    observed = [
        {"role": "user", "content": " Hi "},
        {"role": "assistant", "content": "Hello!"},
        {"role": "user", "content": "Go"},
        {"role": "assistant", "content": "Gone"},
    ]
    for messages, generation in ((observed, False), (observed + [ASKING[-1]], True)):
        chat = ([{"role": "system", "content": system}] if system else []) + messages
        rendered, _ = render_jinja_template(
            [chat],
            chat_template=template.jinja,
            add_generation_prompt=generation,
            bos_token=Tok.bos_token,
            eos_token=Tok.eos_token,
        )
        tail = closing(name) if not generation else ""
        assert ours(name, messages, system, generation=generation) == rendered[0] + tail


def test_every_template_is_covered():
    assert set(VENDOR) | set(GENERATED) == set(available_templates())
    assert len(available_templates()) >= 21
