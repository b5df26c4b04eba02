import pytest

from conftest import VOCAB, char_ids
from lmforge.data.encoding.encode import IGNORE_INDEX, encode_sample
from lmforge.data.sample import Sample
from lmforge.data.templates.named import get_template
from lmforge.data.templates.tools import parse_tools
from lmforge.errors import UserError

CONVERSATION = [
    {"role": "user", "content": "Hi"},
    {"role": "assistant", "content": "Hello!"},
    {"role": "user", "content": "Who are you?"},
    {"role": "assistant", "content": "Forge."},
]
BOS, SOT, EOT = VOCAB["<bos>"], VOCAB["<start_of_turn>"], VOCAB["<end_of_turn>"]


def test_gemma_two_turn_exact_ids_and_labels(tiny_tokenizer):
    template = get_template("gemma")
    encoded = encode_sample(Sample(CONVERSATION), template, tiny_tokenizer, cutoff_len=1024)
    nl = VOCAB["\n"]
    prompt1 = [BOS, SOT] + char_ids("user\nHi") + [EOT, nl, SOT] + char_ids("model\n")
    answer1 = char_ids("Hello!") + [EOT, nl]
    prompt2 = [SOT] + char_ids("user\nWho are you?") + [EOT, nl, SOT] + char_ids("model\n")
    answer2 = char_ids("Forge.") + [EOT, nl]
    assert encoded.input_ids == prompt1 + answer1 + prompt2 + answer2
    assert encoded.labels == (
        [IGNORE_INDEX] * len(prompt1) + answer1 + [IGNORE_INDEX] * len(prompt2) + answer2
    )
    assert not encoded.truncated


def test_train_on_prompt_keeps_every_label(tiny_tokenizer):
    template = get_template("gemma")
    encoded = encode_sample(
        Sample(CONVERSATION), template, tiny_tokenizer, cutoff_len=1024, train_on_prompt=True
    )
    assert encoded.labels == encoded.input_ids


def test_gemma_system_is_folded_into_first_user_turn(tiny_tokenizer):
    template = get_template("gemma")
    pairs = template.render_pairs(CONVERSATION[:2], system="Be brief.")
    assert pairs[0][0] == (
        "<start_of_turn>user\nBe brief.\n\nHi<end_of_turn>\n<start_of_turn>model\n"
    )


def test_truncation_keeps_prompt_and_cuts_answer(tiny_tokenizer):
    template = get_template("gemma")
    full = encode_sample(Sample(CONVERSATION[:2]), template, tiny_tokenizer, cutoff_len=1024)
    cut = encode_sample(Sample(CONVERSATION[:2]), template, tiny_tokenizer, cutoff_len=20)
    assert cut.truncated
    assert cut.input_ids == full.input_ids[:20]
    assert cut.trained_tokens == 20 - 18  # the prompt is 18 tokens


def test_generation_prompt_ends_with_model_turn(tiny_tokenizer):
    template = get_template("gemma")
    ids = template.encode_prompt(tiny_tokenizer, [{"role": "user", "content": "Hi"}])
    assert ids[-7:] == [SOT] + char_ids("model\n")
    assert template.stop_token_ids(tiny_tokenizer) == [VOCAB["<eos>"], EOT]


def test_unknown_template_suggests_closest():
    with pytest.raises(UserError, match="unknown template `gema`.*did you mean `gemma`"):
        get_template("gema")


def test_llamafactory_gemma_names_are_the_gemma_template(tiny_tokenizer):
    """LLaMA-Factory's Gemma tutorials say `template: gemma3` (gemma2, gemma3n): the same turns
    as gemma, so the same template here, to the token."""
    gemma = encode_sample(Sample(CONVERSATION[:2]), get_template("gemma"), tiny_tokenizer, 1024)
    for name in ("gemma2", "gemma3", "gemma3n"):
        assert get_template(name) is get_template("gemma")
        encoded = encode_sample(Sample(CONVERSATION[:2]), get_template(name), tiny_tokenizer, 1024)
        assert (encoded.input_ids, encoded.labels) == (gemma.input_ids, gemma.labels)
    with pytest.raises(UserError, match="unknown template `gemma9`"):
        get_template("gemma9")


def test_the_plan_names_the_template_and_the_name_it_was_given():
    from types import SimpleNamespace

    from lmforge.train.run import template_line

    def line(given):
        config = SimpleNamespace(model=SimpleNamespace(template=given))
        return template_line(config, SimpleNamespace(template=get_template("gemma")))

    assert line("gemma3") == "gemma (as `gemma3`)"
    assert line("gemma") == line("auto") == line(None) == "gemma"


def test_wrong_role_order_is_refused(tiny_tokenizer):
    with pytest.raises(UserError, match="message 1 has role `user` where `assistant`"):
        get_template("gemma").render_pairs([{"role": "user", "content": "a"}] * 2)


# Text equality with each vendor's Jinja template: tests/data/test_template_vendor.py.


def test_tool_results_must_follow_an_answer():
    with pytest.raises(UserError, match="message 1 has role `tool` where `assistant`"):
        get_template("qwen").render_pairs([{"role": "user", "content": "a"}, {"role": "tool"}])


def test_options_change_the_rendering_not_the_catalogue(tiny_tokenizer):
    qwen = get_template("qwen")
    custom = qwen.with_options(default_system="Be brief.")
    messages = [{"role": "user", "content": "Hi"}]
    assert "Be brief." in "".join(s.text for s in custom.render(tiny_tokenizer, messages))
    assert "You are Qwen" in "".join(s.text for s in qwen.render(tiny_tokenizer, messages))
    assert get_template("qwen") is qwen


def test_bare_tool_schemas_get_the_openai_wrapping():
    tools = parse_tools('[{"name": "f", "parameters": {}}]')
    assert tools == [{"type": "function", "function": {"name": "f", "parameters": {}}}]
    with pytest.raises(UserError, match="not valid JSON"):
        parse_tools("[{")


def test_content_is_never_read_as_a_placeholder(tiny_tokenizer):
    messages = [{"role": "user", "content": "say {eos} and {content}"}]
    text = "".join(s.text for s in get_template("default").render(tiny_tokenizer, messages))
    assert "say {eos} and {content}<eos>" in text


def test_unknown_tool_format_is_refused(tiny_tokenizer):
    template = get_template("chatml").with_options(tool_format="hermes9")
    with pytest.raises(UserError, match="unknown tool_format `hermes9`"):
        template.render(tiny_tokenizer, [{"role": "user", "content": "a"}], tools='[{"name": "f"}]')
