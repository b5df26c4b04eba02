"""`template: auto`: the tokenizer's own Jinja, with trained spans derived from prefix renders."""

from pathlib import Path
from types import SimpleNamespace

import pytest

from conftest import CharTokenizer
from lmforge.data.encoding.encode import encode_sample
from lmforge.data.sample import Sample
from lmforge.data.templates.auto import auto_template, load_template
from lmforge.data.templates.named import get_template
from lmforge.errors import UserError
from lmforge.model.setup import choose_template_name

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "templates"
SPECIALS = {
    "chatml": ["<|im_start|>", "<|im_end|>"],
    "qwen": ["<|im_start|>", "<|im_end|>"],
    "qwen3": ["<|im_start|>", "<|im_end|>", "<think>", "</think>"],
    "gemma": ["<start_of_turn>", "<end_of_turn>"],
    "llama3": ["<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>", "<|eom_id|>"],
    "glm4": ["[gMASK]", "<sop>", "<|system|>", "<|user|>", "<|assistant|>", "<|observation|>"],
}
LLAMA31 = ["<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>", "<|eom_id|>"]
MISTRAL = ["[INST]", "[/INST]", "[TOOL_CALLS]", "[AVAILABLE_TOOLS]", "[/AVAILABLE_TOOLS]"]
MISTRAL += ["[TOOL_RESULTS]", "[/TOOL_RESULTS]"]
DEEPSEEK = ["<｜User｜>", "<｜Assistant｜>", "<｜end▁of▁sentence｜>", "<think>", "</think>"]
DEEPSEEK += [
    f"<｜tool▁{t}｜>" for t in ("calls▁begin", "calls▁end", "call▁begin", "call▁end", "sep")
]
DEEPSEEK += [
    f"<｜tool▁{t}｜>" for t in ("outputs▁begin", "outputs▁end", "output▁begin", "output▁end")
]
SPECIALS.update(
    {
        "llama3_1": LLAMA31,
        "mistral": MISTRAL,
        "mistral_nemo": MISTRAL,
        "deepseek3_0324": DEEPSEEK,
        "deepseek_r1": DEEPSEEK,
        "yi": ["<|im_start|>", "<|im_end|>"],
    }
)
CONVERSATION = [
    {"role": "user", "content": "Hi"},
    {"role": "assistant", "content": "Hello!", "reasoning": "Greet."},
    {"role": "user", "content": "Who?"},
    {"role": "assistant", "content": "Forge.", "reasoning": "Name."},
]
TOOLS = '[{"name": "f", "parameters": {"type": "object", "properties": {}}}]'
TOOL_TURNS = [
    {"role": "user", "content": "Call f"},
    {"role": "assistant", "content": "", "tool_calls": [{"name": "f", "arguments": {"x": 1}}]},
    {"role": "tool", "content": "ok"},
    {"role": "assistant", "content": "Done."},
]


def tokenizer_with(name):
    text = (FIXTURES / f"{name}.jinja").read_text(encoding="utf-8")
    return CharTokenizer(SPECIALS[name], chat_template=text)


@pytest.mark.parametrize("name", ["chatml", "qwen", "qwen3", "gemma", "llama3"])
@pytest.mark.parametrize("system", [None, "Be brief."])
def test_auto_trains_what_the_named_template_trains(name, system):
    tok = tokenizer_with(name)
    sample = Sample(CONVERSATION, system=system)
    auto = encode_sample(sample, auto_template(tok), tok, 4096)
    named = encode_sample(sample, get_template(name), tok, 4096)
    assert auto.input_ids == named.input_ids
    assert auto.labels == named.labels


def test_auto_text_is_apply_chat_template():
    tok = tokenizer_with("qwen3")
    segments = auto_template(tok).render(tok, CONVERSATION, "Be brief.")
    chat = [{"role": "system", "content": "Be brief."}] + [
        {"role": m["role"], "content": m["content"], "reasoning_content": m["reasoning"]}
        if "reasoning" in m
        else m
        for m in CONVERSATION
    ]
    assert "".join(s.text for s in segments) == tok.apply_chat_template(chat, tokenize=False)


@pytest.mark.parametrize("name", ["qwen", "qwen3"])
def test_auto_tool_calls_match_the_named_template(name):
    tok = tokenizer_with(name)
    sample = Sample(TOOL_TURNS, tools=TOOLS)
    auto = encode_sample(sample, auto_template(tok), tok, 4096)
    named = encode_sample(sample, get_template(name), tok, 4096)
    assert (auto.input_ids, auto.labels) == (named.input_ids, named.labels)


@pytest.mark.parametrize("thinking", [True, False, None])
@pytest.mark.parametrize("reasoning", [True, False])
def test_auto_thinking_modes_match_qwen3(thinking, reasoning):
    tok = tokenizer_with("qwen3")
    messages = CONVERSATION if reasoning else [dict(m, reasoning=None) for m in CONVERSATION]
    auto = auto_template(tok).with_options(enable_thinking=thinking)
    named = get_template("qwen3").with_options(enable_thinking=thinking)
    a = encode_sample(Sample(messages), auto, tok, 4096)
    b = encode_sample(Sample(messages), named, tok, 4096)
    assert (a.input_ids, a.labels) == (b.input_ids, b.labels)
    prompt = [CONVERSATION[0]]
    assert auto.encode_prompt(tok, prompt) == named.encode_prompt(tok, prompt)


def test_auto_stop_tokens_include_the_end_of_turn_marker():
    tok = tokenizer_with("gemma")
    assert auto_template(tok).end_of_turn(tok) == "<end_of_turn>\n"
    assert auto_template(tok).stop_token_ids(tok) == tok.ids("</s>", "<end_of_turn>")


def test_auto_needs_a_chat_template():
    with pytest.raises(UserError, match="needs the tokenizer's chat template"):
        auto_template(CharTokenizer())
    assert load_template("gemma", CharTokenizer()).name == "gemma"


def _config(template=None):
    model = SimpleNamespace(template=template, adapter_name_or_path=None, model_name_or_path="m")
    return SimpleNamespace(model=model, source="train.yaml")


def test_auto_is_the_default_when_the_tokenizer_has_a_chat_template():
    with_jinja, without = tokenizer_with("chatml"), CharTokenizer()
    catalogue = SimpleNamespace(template="gemma")
    assert choose_template_name(_config(), catalogue, with_jinja) == "auto"
    assert choose_template_name(_config("qwen"), catalogue, with_jinja) == "qwen"
    assert choose_template_name(_config(), catalogue, without) == "gemma"
    with pytest.raises(UserError, match="no chat template is known"):
        choose_template_name(_config(), SimpleNamespace(template=None), without)


@pytest.mark.parametrize(
    "fixture, fmt",
    [
        ("qwen", "qwen"),
        ("qwen3", "qwen"),
        ("glm4", "glm4"),
        ("llama3_1", "llama3"),
        ("llama3_2", "llama3"),
        ("mistral", "mistral"),
        ("mistral_nemo", "mistral_nemo"),
        ("deepseek3_0324", "deepseek3"),
        ("deepseek_r1", "deepseek3"),
        ("gemma", "qwen"),  # no tool format in the Jinja: Hermes-style <tool_call> is read
    ],
)
def test_auto_reads_the_tool_format_its_jinja_writes(fixture, fmt):
    text = (FIXTURES / f"{fixture}.jinja").read_text(encoding="utf-8")
    template = auto_template(CharTokenizer(chat_template=text))
    assert template.tool_format_name() == fmt
    assert template.with_options(tool_format="default").tool_format_name() == "default"


@pytest.mark.parametrize(
    "fixture, name, system",
    [
        ("llama3_1", "llama3.1", "Be brief."),
        ("llama3_1", "llama3.1", None),
        ("mistral_nemo", "mistral_nemo", None),
        ("yi", "yi", "Be brief."),
    ],
)
def test_auto_trains_what_the_new_named_templates_train(fixture, name, system):
    tok = tokenizer_with(fixture)
    plain = [{k: v for k, v in m.items() if k != "reasoning"} for m in CONVERSATION]
    sample = Sample(plain, system=system)
    auto = encode_sample(sample, auto_template(tok), tok, 4096)
    named = encode_sample(sample, get_template(name), tok, 4096)
    assert (auto.input_ids, auto.labels) == (named.input_ids, named.labels)


@pytest.mark.parametrize(
    "fixture, name, with_schemas",
    [
        ("llama3_1", "llama3.1", True),
        ("mistral", "mistral", True),
        ("mistral_nemo", "mistral_nemo", True),
        # DeepSeek's Jinja writes no tool list (lmforge's system text): compared without one.
        ("deepseek3_0324", "deepseek3", False),
        ("deepseek_r1", "deepseekr1", False),
    ],
)
def test_auto_native_tool_calls_match_the_named_template(fixture, name, with_schemas):
    """auto gives Mistral's Jinja the call ids it requires and DeepSeek's the arguments as
    JSON text, and trains what the named template trains."""
    tok = tokenizer_with(fixture)
    sample = Sample(TOOL_TURNS, tools=TOOLS if with_schemas else None)
    auto = encode_sample(sample, auto_template(tok), tok, 4096)
    named = encode_sample(sample, get_template(name), tok, 4096)
    assert tok.decode(auto.input_ids) == tok.decode(named.input_ids)
    assert (auto.input_ids, auto.labels) == (named.input_ids, named.labels)
