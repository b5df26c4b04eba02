"""The ChatTemplate interface: named and `auto` templates both implement it, and the shared
behaviour (the generation prompt's ids, stop ids, thinking and tool settings) is one code."""

from pathlib import Path

import pytest

from conftest import CharTokenizer
from lmforge.data.encoding.preflight import check_template
from lmforge.data.templates.auto import AutoTemplate, auto_template, load_template
from lmforge.data.templates.base import ChatTemplate, RenderOptions, Segment
from lmforge.data.templates.named import Template, available_templates, get_template
from lmforge.errors import UserError
from lmforge.infer.prompt import build_chat_prompt

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "templates"
SPECIALS = {
    "gemma": ["<start_of_turn>", "<end_of_turn>"],
    "qwen3": ["<|im_start|>", "<|im_end|>", "<think>", "</think>"],
    "deepseekr1": ["<｜User｜>", "<｜Assistant｜>", "<｜end▁of▁sentence｜>", "<think>"],
}
MEMBERS = (
    "name",
    "jinja",
    "thinking",
    "options",
    "default_system",
    "efficient_eos",
    "tool_format",
    "renders_with_jinja",
    "with_options",
    "render",
    "encode_prompt",
    "stop_texts",
    "stop_token_ids",
    "system_prompt",
    "thinking_mode",
    "thinking_markers",
    "prompt_opens_thinking",
    "tool_format_name",
    "required_tokens",
)


def tokenizer_with(name):
    text = (FIXTURES / f"{name}.jinja").read_text(encoding="utf-8")
    return CharTokenizer(SPECIALS[name], chat_template=text)


def both(name):
    """(named template, auto template on the vendor's Jinja, the tokenizer)."""
    tok = tokenizer_with(name)
    return get_template(name), auto_template(tok), tok


def test_both_kinds_are_chat_templates():
    tok = tokenizer_with("gemma")
    templates = [*available_templates().values(), auto_template(tok)]
    for template in templates + [t.with_options(enable_thinking=False) for t in templates]:
        assert isinstance(template, ChatTemplate), template.name
        for member in MEMBERS:
            assert hasattr(template, member), (template.name, member)
        assert isinstance(template.options, RenderOptions)
        assert isinstance(template.jinja, str) and template.jinja
    assert isinstance(get_template("gemma"), Template)
    assert isinstance(load_template("auto", tok), AutoTemplate)
    with pytest.raises(TypeError):
        ChatTemplate()  # abstract: a kind supplies _render and stop_texts


def test_encode_prompt_is_shared_and_gives_the_same_ids_for_both_kinds():
    named, auto, tok = both("gemma")
    assert type(named).encode_prompt is ChatTemplate.encode_prompt
    assert type(auto).encode_prompt is ChatTemplate.encode_prompt
    messages = [{"role": "user", "content": "Hi"}]
    expected = tok.ids(
        "<s>", "<start_of_turn>", "user\nHi", "<end_of_turn>", "\n", "<start_of_turn>", "model\n"
    )
    assert named.encode_prompt(tok, messages) == expected
    assert auto.encode_prompt(tok, messages) == expected
    # The system prompt: given, else the configured default_system (Gemma folds it in).
    with_system = tok.ids(
        "<s>", "<start_of_turn>", "user\nBe brief.\n\nHi", "<end_of_turn>", "\n"
    ) + tok.ids("<start_of_turn>", "model\n")
    assert named.encode_prompt(tok, messages, "Be brief.") == with_system
    assert auto.encode_prompt(tok, messages, "Be brief.") == with_system
    for template in (named, auto):
        configured = template.with_options(default_system="Be brief.")
        assert configured.encode_prompt(tok, messages) == with_system
        with pytest.raises(UserError, match="must end with a user message"):
            template.encode_prompt(tok, messages + [{"role": "assistant", "content": "Hello"}])


def test_encode_prompt_thinking_off_for_both_kinds():
    named, auto, tok = both("qwen3")
    messages = [{"role": "user", "content": "Hi"}]
    expected = tok.ids(
        "<|im_start|>", "user\nHi", "<|im_end|>", "\n", "<|im_start|>", "assistant\n"
    ) + tok.ids("<think>", "\n\n", "</think>", "\n\n")
    assert named.encode_prompt(tok, messages, enable_thinking=False) == expected
    assert auto.encode_prompt(tok, messages, enable_thinking=False) == expected
    off = [t.with_options(enable_thinking=False) for t in (named, auto)]
    assert [t.encode_prompt(tok, messages) for t in off] == [expected, expected]


def test_render_is_shared_and_checks_roles_for_both_kinds():
    named, auto, tok = both("gemma")
    conversation = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Yo"}]
    for template in (named, auto):
        assert type(template).render is ChatTemplate.render
        segments = template.render(tok, conversation)
        assert all(isinstance(s, Segment) for s in segments)
        assert [s.text for s in segments if s.trained] == ["Yo<end_of_turn>\n"]
        with pytest.raises(UserError, match="role `assistant` where `user` was expected"):
            template.render(tok, conversation[1:])


def test_stop_ids_thinking_and_tool_settings_agree_between_kinds():
    named, auto, tok = both("gemma")
    eot = tok.ids("</s>", "<end_of_turn>")
    assert named.stop_token_ids(tok) == auto.stop_token_ids(tok) == eot
    assert named.stop_texts(tok) == auto.stop_texts(tok) == ["<end_of_turn>"]
    assert named.thinking_markers() is None and auto.thinking_markers() is None

    named, auto, tok = both("qwen3")
    assert named.thinking_markers() == auto.thinking_markers() == ("<think>", "</think>")
    assert named.tool_format_name() == auto.tool_format_name() == "qwen"
    for template in (named, auto):
        assert template.with_options(tool_format="glm4").tool_format_name() == "glm4"
        assert not template.prompt_opens_thinking(True)

    r1 = get_template("deepseekr1")
    assert r1.prompt_opens_thinking(True) and r1.prompt_opens_thinking(None)
    assert not r1.prompt_opens_thinking(False)


def test_inference_prompt_uses_the_interface():
    tok = tokenizer_with("deepseekr1")
    messages = [{"role": "user", "content": "Hi"}]
    for template in (get_template("deepseekr1"), auto_template(tok)):
        prompt = build_chat_prompt(template, tok, messages)
        assert prompt.ids == template.encode_prompt(tok, messages, enable_thinking=True)
        assert prompt.reasoning_open == template.prompt_opens_thinking(True)


def test_preflight_asks_the_interface_not_the_kind():
    named, auto, tok = both("gemma")
    assert auto.renders_with_jinja and not named.renders_with_jinja
    assert auto.required_tokens() == ()
    assert named.required_tokens() == ("<start_of_turn>", "<end_of_turn>")
    check_template(named, tok)
    check_template(auto, tok)


NEW_SPECIALS = {
    "llama3.1": ["<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>", "<|eom_id|>"],
    "mistral": ["[INST]", "[/INST]"],
    "mistral_nemo": ["[INST]", "[/INST]"],
    "yi": ["<|im_start|>", "<|im_end|>"],
    "deepseek3": ["<｜User｜>", "<｜Assistant｜>", "<｜end▁of▁sentence｜>"],
    "deepseekr1": ["<｜User｜>", "<｜Assistant｜>", "<｜end▁of▁sentence｜>", "<think>"],
    "glm4": ["[gMASK]", "<sop>", "<|system|>", "<|user|>", "<|assistant|>", "<|observation|>"],
}


@pytest.mark.parametrize("name", sorted(NEW_SPECIALS))
def test_preflight_passes_for_the_added_and_changed_templates(name):
    """Their Jinja (written into the saved tokenizer) renders what training renders."""
    tok = CharTokenizer(NEW_SPECIALS[name])
    check_template(get_template(name), tok)
    if name == "llama3.1":
        for date in ("today", "01 Jan 2025"):
            check_template(get_template(name).with_options(date_string=date), tok)
