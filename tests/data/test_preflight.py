"""Pre-flight: a template that does not fit the tokenizer stops the run with the reason."""

import dataclasses
from pathlib import Path

import pytest

from conftest import CharTokenizer
from lmforge.data.encoding.encode import encode_sample
from lmforge.data.encoding.preflight import PROBE, PROBE_SYSTEM, check_template
from lmforge.data.sample import Sample
from lmforge.data.templates.auto import auto_template
from lmforge.data.templates.named import available_templates, get_template
from lmforge.errors import UserError

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "templates"
IM = ["<|im_start|>", "<|im_end|>", "<think>", "</think>"]


@pytest.mark.parametrize("name", ["chatml", "qwen", "qwen3", "qwen3_nothink", "yi"])
def test_matching_templates_pass(name):
    check_template(get_template(name), CharTokenizer(IM))


@pytest.mark.parametrize("name", available_templates())
def test_every_named_template_trains_a_stop_token_and_fits_its_tokenizer(name):
    """Each named template, with a tokenizer holding its special tokens, passes pre-flight
    (special tokens whole, BOS once, text equal to its own Jinja), and every answer of the probe
    conversation ends with a trained stop token, so generation stops where training stopped."""
    template = get_template(name)
    words = dict.fromkeys(template.special_tokens + template.stop_words)
    tok = CharTokenizer([w for w in words if "{" not in w])  # {bos}/{eos}: <s>, </s>
    check_template(template, tok)
    stops = set(template.stop_token_ids(tok))
    assert tok.eos_token_id in stops
    labels = encode_sample(Sample(PROBE, PROBE_SYSTEM), template, tok, 1 << 30).labels
    runs, run = [], []  # the trained tokens of each answer
    for label in labels + [-100]:
        if label != -100:
            run.append(label)
        elif run:
            runs, run = runs + [run], []
    assert len(runs) == 2
    for answer in runs:  # a stop token, then at most the newline the template writes after it
        last = max(i for i, token in enumerate(answer) if token in stops)
        assert tok.decode(answer[last + 1 :]).strip() == "", tok.convert_ids_to_tokens(answer)


def test_gemma_passes_with_the_tiny_gemma_tokenizer(tiny_tokenizer):
    check_template(get_template("gemma"), tiny_tokenizer)


def test_a_special_token_missing_from_the_vocabulary_is_named():
    with pytest.raises(UserError, match="writes `<start_of_turn>` as one token.*splits it"):
        check_template(get_template("gemma"), CharTokenizer(IM))


def test_doubled_bos_is_refused():
    template = dataclasses.replace(get_template("chatml"), prefix="{bos}{bos}")
    with pytest.raises(UserError, match="BOS twice"):
        check_template(template, CharTokenizer(IM))


def test_an_end_of_turn_that_is_not_trained_is_refused():
    template = dataclasses.replace(
        get_template("chatml"), assistant="{content}", generation="<|im_start|>assistant\n"
    )
    with pytest.raises(UserError, match="does not train an end-of-turn token"):
        check_template(template, CharTokenizer(IM))


def test_rendering_that_differs_from_its_own_jinja_shows_the_diff():
    template = dataclasses.replace(get_template("chatml"), assistant="{content}<|im_end|>")
    with pytest.raises(UserError, match="renders differently") as caught:
        check_template(template, CharTokenizer(IM))
    assert "--- chat template" in str(caught.value) and "+++ training" in str(caught.value)


@pytest.mark.parametrize("name", ["qwen3", "chatml"])
def test_auto_passes_when_its_encoding_equals_apply_chat_template(name):
    text = (FIXTURES / f"{name}.jinja").read_text(encoding="utf-8")
    tok = CharTokenizer(IM, chat_template=text)
    check_template(auto_template(tok), tok)


def test_auto_without_an_end_of_turn_marker_asks_for_the_named_template():
    specials = ["[gMASK]", "<sop>", "<|system|>", "<|user|>", "<|assistant|>", "<|observation|>"]
    text = (FIXTURES / "glm4.jinja").read_text(encoding="utf-8")
    tok = CharTokenizer(specials, chat_template=text)
    with pytest.raises(UserError, match="does not train an end-of-turn token"):
        check_template(auto_template(tok), tok)
    check_template(get_template("glm4"), tok)


def test_configured_defaults_do_not_count_as_a_mismatch():
    template = get_template("qwen3").with_options(default_system="Be brief.", enable_thinking=False)
    check_template(template, CharTokenizer(IM))
