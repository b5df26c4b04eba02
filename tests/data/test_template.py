import jinja2
import pytest

from conftest import VOCAB, char_ids
from lmforge.data.encode import IGNORE_INDEX, encode_sample
from lmforge.data.sample import Sample
from lmforge.data.template import available_templates, get_template
from lmforge.errors import UserError

CONVERSATION = [
    {"role": "user", "content": "Hi"},
    {"role": "assistant", "content": "Hello!"},
    {"role": "user", "content": "Who are you?"},
    {"role": "assistant", "content": "Forge."},
]
BOS, SOT, EOT = VOCAB["<bos>"], VOCAB["<start_of_turn>"], VOCAB["<end_of_turn>"]


def render_jinja(template_text: str, messages, add_generation_prompt=False, bos="<bos>") -> str:
    env = jinja2.Environment(trim_blocks=True, lstrip_blocks=True)

    def raise_exception(message):
        raise ValueError(message)

    env.globals["raise_exception"] = raise_exception
    return env.from_string(template_text).render(
        messages=messages, add_generation_prompt=add_generation_prompt, bos_token=bos
    )


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


@pytest.mark.parametrize("name", sorted(available_templates()))
@pytest.mark.parametrize("system", [None, "You are helpful."])
def test_named_template_text_equals_its_jinja(name, system):
    template = get_template(name)
    messages = CONVERSATION + [{"role": "user", "content": "  And now?  "}]
    vendor_messages = ([{"role": "system", "content": system}] if system else []) + messages
    ours = "".join(p + a for p, a in template.render_pairs(messages, system))
    bos = "<bos>" if template.bos else ""
    assert bos + ours == render_jinja(template.jinja, vendor_messages, add_generation_prompt=True)


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


def test_wrong_role_order_is_refused(tiny_tokenizer):
    with pytest.raises(UserError, match="message 1 has role `user` where `assistant`"):
        get_template("gemma").render_pairs([{"role": "user", "content": "a"}] * 2)
