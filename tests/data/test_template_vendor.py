"""Each named template renders the same text as its vendor's Jinja chat template.

The vendor templates are stored under tests/fixtures/templates (sources in the README there) and
rendered with transformers' own chat-template renderer, as `apply_chat_template` would.
"""

import json
import re
from datetime import datetime
from pathlib import Path

import pytest
from transformers.utils.chat_template_utils import render_jinja_template

from lmforge.data.templates.named import available_templates, get_template
from lmforge.data.templates.tools import get_tool_format, parse_tools
from lmforge.errors import UserError

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "templates"
VENDOR = {
    "chatml": "chatml",
    "yi": "yi",
    "qwen": "qwen",
    "qwen3": "qwen3",
    "qwen3_nothink": "qwen3_nothink",
    "llama2": "llama2",
    "llama3": "llama3",
    "llama3.1": "llama3_1",
    "mistral": "mistral",
    "mistral_nemo": "mistral_nemo",
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
# The vendor drops it unless the last turn is the user's
SYSTEM_ONLY_BEFORE_PROMPT = {"mistral", "mistral_nemo"}
# Templates whose vendor writes tool calls, and the vendor Jinja that writes them when it is not
# the one above (DeepSeek's earlier revisions render calls without their closing marker).
TOOLS = {
    "qwen": "qwen",
    "qwen3": "qwen3",
    "qwen3_nothink": "qwen3_nothink",
    "glm4": "glm4",
    "llama3.1": "llama3_1",
    "mistral": "mistral",
    "mistral_nemo": "mistral_nemo",
    "deepseek3": "deepseek3_0324",
    "deepseekr1": "deepseek_r1",
}
DEEPSEEK = {"deepseek3", "deepseekr1"}  # the vendor writes no tool list (lmforge's system text)


class Tok:
    bos_token, eos_token = "<s>", "</s>"


def vendor_render(
    name, messages, system=None, tools=None, generation=False, fixture=None, **kwargs
):
    schemas = parse_tools(tools) or None  # the OpenAI wrapping the vendors expect
    if name in DEEPSEEK and schemas:  # its Jinja ignores `tools`: the system text lmforge writes
        system = get_tool_format("deepseek3").system_parts(system, schemas)[0]
    chat = ([{"role": "system", "content": system}] if system else []) + [
        _vendor_message(m, string_arguments=name in DEEPSEEK) for m in messages
    ]
    if name == "glm4" and schemas:  # GLM-4 reads tools from a message, not from `tools`
        if chat and chat[0]["role"] == "system":
            chat[0] = {**chat[0], "tools": schemas}
        else:
            chat.insert(0, {"role": "system", "content": "", "tools": schemas})
        schemas = None
    if name == "glm4":
        chat = [_glm4_message(m) for m in chat]
    text = (FIXTURES / f"{fixture or VENDOR[name]}.jinja").read_text(encoding="utf-8")
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


def _vendor_message(message, string_arguments=False):
    out = {"role": message["role"], "content": message.get("content", "")}
    if message.get("reasoning"):
        out["reasoning_content"] = message["reasoning"]
    if message.get("tool_call_id"):
        out["tool_call_id"] = message["tool_call_id"]
    if message.get("tool_calls"):
        out["tool_calls"] = []
        for c in message["tool_calls"]:
            function = {"name": c["name"], "arguments": c["arguments"]}
            if string_arguments:  # DeepSeek's Jinja concatenates the JSON text
                function["arguments"] = json.dumps(c["arguments"], ensure_ascii=False)
            call = {"type": "function", "function": function}
            out["tool_calls"].append({**call, "id": c["id"]} if "id" in c else call)
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


@pytest.mark.parametrize(
    "name, fixture", [("deepseek3", "deepseek3_0324"), ("deepseekr1", "deepseek_r1")]
)
@pytest.mark.parametrize("system", [None, SYSTEM])
def test_deepseek_current_templates_render_plain_conversations_alike(name, fixture, system):
    """The Jinja lmforge ships for DeepSeek (V3-0324's, R1's) renders conversations without
    tools as the original revisions the conversation tests compare with."""
    for messages in (ONE_TURN, MULTI_TURN):
        expected = vendor_render(name, messages, system, fixture=fixture)
        if name == "deepseekr1":  # the last answer: the prompt opens <think>, as above
            prompt = vendor_render(name, messages[:-1], system, generation=True, fixture=fixture)
            expected = prompt + "\n</think>\n\n" + messages[-1]["content"] + "<｜end▁of▁sentence｜>"
        assert ours(name, messages, system) == expected
    expected = vendor_render(name, ASKING, system, generation=True, fixture=fixture)
    assert ours(name, ASKING, system, generation=True) == expected
    assert get_template(name).jinja == (FIXTURES / f"{fixture}.jinja").read_text(encoding="utf-8")


def test_qwen15_is_qwen_with_its_default_system():
    """Qwen1.5-Chat's template: Qwen2.5's markup, default system prompt without a full stop."""
    default = "You are a helpful assistant"
    for messages, generation in ((ONE_TURN, False), (MULTI_TURN, False), (ASKING, True)):
        for system in (None, SYSTEM):
            expected = vendor_render(
                "qwen", messages, system, generation=generation, fixture="qwen1_5"
            )
            got = ours("qwen", messages, system, generation=generation, default_system=default)
            assert got == expected
    text = ours("qwen", ONE_TURN, default_system=default)
    assert text.startswith("<|im_start|>system\nYou are a helpful assistant<|im_end|>\n")


LLAMA_CONVERSATIONS = [(ONE_TURN, False), (MULTI_TURN, False), (ASKING, True)]


@pytest.mark.parametrize("system", [None, SYSTEM])
def test_llama32_is_llama31_with_todays_date(system):
    """Llama 3.2's template stamps today's date (`date_string: today`); 3.1 and 3.3 write
    26 Jul 2024 unless `date_string` is given, as their template's own variable."""
    today = datetime.now().strftime("%d %b %Y")
    for messages, generation in LLAMA_CONVERSATIONS:
        expected = vendor_render("llama3.1", messages, system, None, generation, fixture="llama3_2")
        got = ours("llama3.1", messages, system, generation=generation, date_string="today")
        assert got == expected and f"Today Date: {today}\n\n" in got
        expected = vendor_render(
            "llama3.1", messages, system, None, generation, date_string="01 Jan 2025"
        )
        assert (
            ours("llama3.1", messages, system, generation=generation, date_string="01 Jan 2025")
            == expected
        )
    got = ours("llama3.1", TOOL_CONVERSATION, system, TOOL_SCHEMAS, date_string="today")
    assert got == vendor_render(
        "llama3.1", TOOL_CONVERSATION, system, TOOL_SCHEMAS, fixture="llama3_2"
    )


@pytest.mark.parametrize("date", [None, "today", "01 Jan 2025"])
def test_llama31_saved_jinja_writes_the_trained_date(date):
    """The Jinja written into the saved tokenizer renders the date training used."""
    template = get_template("llama3.1").with_options(date_string=date)
    assert template.date() == (
        datetime.now().strftime("%d %b %Y") if date == "today" else date or "26 Jul 2024"
    )
    for messages, generation in LLAMA_CONVERSATIONS:
        rendered, _ = render_jinja_template(
            [[{"role": "system", "content": SYSTEM}] + messages],
            chat_template=template.jinja,
            add_generation_prompt=generation,
            bos_token=Tok.bos_token,
        )
        got = "".join(
            s.text
            for s in template.render(Tok(), messages, SYSTEM, add_generation_prompt=generation)
        )
        assert got == rendered[0]
    again = template.with_options(date_string=None).with_options(date_string="26 Jul 2024")
    assert again.jinja == get_template("llama3.1").jinja


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


def vendor_tools(name, messages, system=None, generation=False, ours_text="", **kwargs):
    """The vendor's rendering of a tool conversation. Mistral's needs 9-character call ids that
    samples do not carry: it is given the ids lmforge wrote (`ours_text`), in order."""
    if name in ("mistral", "mistral_nemo"):
        messages = with_ids(messages, ours_text)
    return vendor_render(
        name, messages, system, TOOL_SCHEMAS, generation, fixture=TOOLS[name], **kwargs
    )


def with_ids(messages, text):
    call_ids = re.findall(r'"id": "(\w+)"', text)
    result_ids = re.findall(r'"call_id": "(\w+)"', text)
    assert all(re.fullmatch(r"[A-Za-z0-9]{9}", i) for i in call_ids + result_ids)
    out = []
    for m in messages:
        if m.get("tool_calls"):
            calls = [{**c, "id": call_ids.pop(0)} for c in m["tool_calls"]]
            m = {**m, "tool_calls": calls}
        elif m["role"] == "tool":
            m = {**m, "tool_call_id": result_ids.pop(0)}
        out.append(m)
    return out


@pytest.mark.parametrize("name", sorted(TOOLS))
@pytest.mark.parametrize("system", [None, SYSTEM])
def test_tool_calls_equal_vendor(name, system):
    if system and name in SYSTEM_ONLY_BEFORE_PROMPT:
        pytest.skip("the vendor template drops the system prompt here")
    got = ours(name, TOOL_CONVERSATION, system, TOOL_SCHEMAS)
    expected = vendor_tools(name, TOOL_CONVERSATION, system, ours_text=got)
    if name == "qwen3":  # its final answer always carries a (here empty) reasoning block
        assert "<think>\n\n</think>\n\nIt is 21" in expected
    assert got == expected + closing(name)
    asking = TOOL_CONVERSATION[:3]
    got = ours(name, asking, system, TOOL_SCHEMAS, generation=True)
    assert got == vendor_tools(name, asking, system, generation=True, ours_text=got)


@pytest.mark.parametrize(
    "name", ["qwen", "qwen3", "qwen3_nothink", "mistral", "mistral_nemo", "deepseek3", "deepseekr1"]
)
def test_parallel_tool_calls_and_grouped_results_equal_vendor(name):
    got = ours(name, PARALLEL, None, TOOL_SCHEMAS)
    assert got == vendor_tools(name, PARALLEL, ours_text=got)


def test_native_tool_formats_write_the_vendors_markers():
    """What each native format looks like (the tests above compare whole conversations)."""
    text = ours("llama3.1", TOOL_CONVERSATION, None, TOOL_SCHEMAS)
    assert "Environment: ipython\nCutting Knowledge Date" in text
    assert '\n\n{"name": "get_weather", "parameters": {"city": "Paris"}}<|eot_id|>' in text
    assert '<|start_header_id|>ipython<|end_header_id|>\n\n"{\\"temp\\": 21}"' in text
    text = ours("mistral", TOOL_CONVERSATION, None, TOOL_SCHEMAS)
    assert text.startswith('<s>[AVAILABLE_TOOLS] [{"type": "function", "function": {"name": "g')
    assert (
        '[/INST][TOOL_CALLS] [{"name": "get_weather", "arguments": {"city": "Paris"}, "id"' in text
    )
    text = ours("mistral_nemo", TOOL_CONVERSATION, None, TOOL_SCHEMAS)
    assert '[/INST][TOOL_CALLS][{"name": "get_weather"' in text and "[TOOL_RESULTS]{" in text
    text = ours("deepseek3", TOOL_CONVERSATION, None, TOOL_SCHEMAS)
    assert (
        "<｜Assistant｜><｜tool▁calls▁begin｜><｜tool▁call▁begin｜>function<｜tool▁sep｜>get_weather\n"
        '```json\n{"city": "Paris"}\n```<｜tool▁call▁end｜><｜tool▁calls▁end｜><｜end▁of▁sentence｜>'
    ) in text
    assert "<｜tool▁outputs▁end｜>It is 21 degrees.<｜end▁of▁sentence｜>" in text


def test_mistral_call_ids_pair_calls_with_results():
    """Samples carry no call ids: each call gets a 9-character id and its result the same one;
    a call's own id is kept when it is 9 characters, and an OpenAI id maps to the same id in the
    call and in the result that names it."""
    text = ours("mistral", PARALLEL, None, TOOL_SCHEMAS)
    calls = re.findall(r'"id": "(\w+)"', text)
    assert len(set(calls)) == 2 and re.findall(r'"call_id": "(\w+)"', text) == calls
    named = [dict(m) for m in PARALLEL]
    named[1] = {
        **named[1],
        "tool_calls": [{**TOOL_CALL[0], "id": "call_x"}, {**TOOL_CALL[0], "id": "abcDEF123"}],
    }
    named[2] = {**named[2], "tool_call_id": "abcDEF123"}
    named[3] = {**named[3], "tool_call_id": "call_x"}
    text = ours("mistral_nemo", named, None, TOOL_SCHEMAS)
    first, second = re.findall(r'"id": "(\w+)"', text)
    assert second == "abcDEF123" and re.findall(r'"call_id": "(\w+)"', text) == [second, first]
    assert text == vendor_tools("mistral_nemo", named, ours_text=text)


def test_llama31_refuses_parallel_calls_as_its_vendor_does():
    with pytest.raises(UserError, match="one call per answer"):
        ours("llama3.1", PARALLEL, None, TOOL_SCHEMAS)


REASONED_TOOLS = [
    TOOL_CONVERSATION[0],
    {**TOOL_CONVERSATION[1], "reasoning": "Look it up."},
    TOOL_CONVERSATION[2],
    {**TOOL_CONVERSATION[3], "reasoning": "Say it."},
]


@pytest.mark.parametrize("thinking", [True, False])
def test_deepseekr1_tool_calls_with_reasoning_equal_vendor(thinking):
    """R1's template keeps an answer's text (its reasoning included) in the turns after the last
    user message and opens no reasoning block after tool results."""
    got = ours("deepseekr1", REASONED_TOOLS, None, TOOL_SCHEMAS, enable_thinking=thinking)
    messages = [dict(m) for m in REASONED_TOOLS]
    if thinking:
        for m in messages:
            if m.get("reasoning"):
                m["content"] = f"<think>\n{m.pop('reasoning')}\n</think>\n\n{m['content']}"
    else:
        messages = [{k: v for k, v in m.items() if k != "reasoning"} for m in messages]
    assert got == vendor_tools("deepseekr1", messages)
    asking = REASONED_TOOLS[:3]
    got = ours("deepseekr1", asking, None, TOOL_SCHEMAS, generation=True, enable_thinking=thinking)
    assert got.endswith("<｜tool▁outputs▁end｜>")
    assert got == vendor_tools("deepseekr1", messages[:3], generation=True)
    r1 = get_template("deepseekr1")
    assert not r1.prompt_opens_thinking(thinking, asking)  # the answer does not start inside
    assert r1.prompt_opens_thinking(thinking, asking[:1]) == thinking


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
