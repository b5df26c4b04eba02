"""The formats an export writes its chat template in, each equal to the training rendering:
the Jinja of the exported tokenizer (with the training's default_system and enable_thinking),
and the Modelfile's Go TEMPLATE, rendered here by a small Go-template renderer."""

import pytest

from conftest import build_tiny_tokenizer
from lmforge.data.templates.named import available_templates, get_template
from lmforge.errors import UserError
from lmforge.export.chat_format import export_jinja, turn_texts
from lmforge.export.modelfile import go_template, modelfile_text

CONVERSATIONS = [
    [{"role": "user", "content": "Hi"}],
    [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello!"},
        {"role": "user", "content": "Who are you?"},
    ],
    [
        {"role": "user", "content": "A"},
        {"role": "assistant", "content": "B"},
        {"role": "user", "content": "C"},
        {"role": "assistant", "content": "D"},
        {"role": "user", "content": "E"},
    ],
]


def training_text(template, tokenizer, messages, system=None) -> str:
    segments = template.render(tokenizer, messages, system, add_generation_prompt=True)
    return "".join(s.text for s in segments)


def ollama_messages(messages, system):
    """What Ollama hands a template: .System, and .Messages with the system message first."""
    listed = [{"Role": "system", "Content": system}] if system else []
    return {
        "System": system or "",
        "Messages": listed + [{"Role": m["role"], "Content": m["content"]} for m in messages],
    }


@pytest.mark.parametrize("name", sorted(available_templates()))
def test_modelfile_template_renders_the_training_text(name, go_render):
    tokenizer = build_tiny_tokenizer()
    template = get_template(name)
    go = go_template(turn_texts(template, tokenizer), tokenizer.bos_token)
    for messages in CONVERSATIONS:
        for system in (None, "Be brief."):
            expected = training_text(template, tokenizer, messages, system)
            # The Modelfile's SYSTEM is the default system prompt; Ollama adds BOS itself.
            shown = system or template.system_prompt(None)
            rendered = go_render(go, ollama_messages(messages, shown))
            if expected.startswith(tokenizer.bos_token):
                rendered = tokenizer.bos_token + rendered
            assert rendered == expected, (name, system, messages)


def test_auto_template_from_the_tokenizer_jinja(go_render):
    from lmforge.data.templates.auto import load_template

    tokenizer = build_tiny_tokenizer()
    tokenizer.chat_template = get_template("chatml").jinja
    template = load_template("auto", tokenizer)
    go = go_template(turn_texts(template, tokenizer))
    for messages in CONVERSATIONS:
        expected = training_text(template, tokenizer, messages, "Be brief.")
        assert go_render(go, ollama_messages(messages, "Be brief.")) == expected


def test_exported_jinja_carries_default_system_and_thinking_off():
    tokenizer = build_tiny_tokenizer()
    gemma = get_template("gemma").with_options(default_system="You are Forge.")
    tokenizer.chat_template = export_jinja(gemma)
    for messages in CONVERSATIONS:
        rendered = tokenizer.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=True
        )
        assert rendered == training_text(gemma, tokenizer, messages)
        assert "You are Forge." in rendered
    own = [{"role": "system", "content": "Other."}, *CONVERSATIONS[0]]
    rendered = tokenizer.apply_chat_template(own, tokenize=False, add_generation_prompt=True)
    assert rendered == training_text(gemma, tokenizer, CONVERSATIONS[0], "Other.")

    qwen3 = get_template("qwen3").with_options(enable_thinking=False)
    tokenizer.chat_template = export_jinja(qwen3)
    rendered = tokenizer.apply_chat_template(
        CONVERSATIONS[1], tokenize=False, add_generation_prompt=True
    )
    assert rendered == training_text(qwen3, tokenizer, CONVERSATIONS[1])
    assert rendered.endswith("<think>\n\n</think>\n\n")


def test_modelfile_lines():
    tokenizer = build_tiny_tokenizer()
    template = get_template("gemma").with_options(default_system="You are Forge.")
    text = modelfile_text(
        template, tokenizer, source="./model.gguf", context_length=32768, adds_bos=True
    )
    lines = text.splitlines()
    assert "FROM ./model.gguf" in lines
    assert 'SYSTEM """You are Forge."""' in lines
    assert 'PARAMETER stop "<eos>"' in lines and 'PARAMETER stop "<end_of_turn>"' in lines
    assert "PARAMETER num_ctx 8192" in lines  # the model's context, capped
    body = text.split('TEMPLATE """', 1)[1].split('"""', 1)[0]
    assert "<bos>" not in body  # added by the tokenizer, as Ollama does


def test_a_template_with_turns_that_change_is_refused():
    from dataclasses import replace

    tokenizer = build_tiny_tokenizer()
    # A prefix that depends on the conversation cannot be a fixed text between turns.
    odd = replace(get_template("chatml"), prefix="", user="<|im_start|>user\n{content}{content}")
    with pytest.raises(UserError, match="cannot be written as an Ollama template"):
        turn_texts(odd, tokenizer)
