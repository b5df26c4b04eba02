"""Exact token ids and labels for the encoders, with character-level tokenizers."""

import pytest

from conftest import CharTokenizer, masked
from lmforge.data.encoding.encode import (
    IGNORE_INDEX,
    add_kl_completions,
    encode_kto,
    encode_pairwise,
    encode_pretrain,
    encode_sample,
    kl_partner,
)
from lmforge.data.sample import Sample
from lmforge.data.templates.named import get_template
from lmforge.data.templates.tools import QWEN_TOOLS, to_json

IM = ["<|im_start|>", "<|im_end|>", "<think>", "</think>"]
TWO_TURNS = [
    {"role": "user", "content": "Hi"},
    {"role": "assistant", "content": "Hello!"},
    {"role": "user", "content": "Who?"},
    {"role": "assistant", "content": "Forge."},
]


def chatml_turn(tok, role, text):
    return tok.ids("<|im_start|>", f"{role}\n{text}", "<|im_end|>", "\n")


def test_qwen_exact_ids_and_labels():
    tok = CharTokenizer(IM)
    encoded = encode_sample(Sample(TWO_TURNS, system="Be brief."), get_template("qwen"), tok, 1024)
    header = tok.ids("<|im_start|>", "assistant\n")
    prompt1 = chatml_turn(tok, "system", "Be brief.") + chatml_turn(tok, "user", "Hi") + header
    answer1 = tok.ids("Hello!", "<|im_end|>", "\n")
    prompt2 = chatml_turn(tok, "user", "Who?") + header
    answer2 = tok.ids("Forge.", "<|im_end|>", "\n")
    assert encoded.input_ids == prompt1 + answer1 + prompt2 + answer2
    assert encoded.labels == masked(prompt1) + answer1 + masked(prompt2) + answer2


def test_qwen_default_system_and_chatml_without_one():
    tok = CharTokenizer(IM)
    qwen = encode_sample(Sample(TWO_TURNS[:2]), get_template("qwen"), tok, 1024)
    system = "You are Qwen, created by Alibaba Cloud. You are a helpful assistant."
    assert qwen.input_ids[: len(chatml_turn(tok, "system", system))] == chatml_turn(
        tok, "system", system
    )
    chatml = encode_sample(Sample(TWO_TURNS[:2]), get_template("chatml"), tok, 1024)
    assert chatml.input_ids == (
        chatml_turn(tok, "user", "Hi")
        + tok.ids("<|im_start|>", "assistant\n")
        + tok.ids("Hello!", "<|im_end|>", "\n")
    )


def test_llama3_exact_ids_labels_and_trimmed_content():
    specials = ["<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>", "<|eom_id|>"]
    tok = CharTokenizer(specials)
    sample = Sample([{"role": "user", "content": " Hi "}, {"role": "assistant", "content": "Yo "}])
    encoded = encode_sample(sample, get_template("llama3"), tok, 1024)

    def header(role):
        return tok.ids("<|start_header_id|>", role, "<|end_header_id|>", "\n\n")

    prompt = tok.ids("<s>") + header("user") + tok.ids("Hi", "<|eot_id|>") + header("assistant")
    answer = tok.ids("Yo", "<|eot_id|>")
    assert encoded.input_ids == prompt + answer
    assert encoded.labels == masked(prompt) + answer
    assert get_template("llama3").stop_token_ids(tok) == tok.ids("</s>", "<|eot_id|>", "<|eom_id|>")


TOOLS = '[{"name": "get_weather", "parameters": {"type": "object", "properties": {}}}]'
TOOL_TURNS = [
    {"role": "user", "content": "Weather?"},
    {"role": "assistant", "content": "", "tool_calls": [{"name": "get_weather", "arguments": {}}]},
    {"role": "tool", "content": "21 C"},
    {"role": "assistant", "content": "21 degrees."},
]


def test_tool_call_is_trained_and_tool_result_is_not():
    tok = CharTokenizer(IM)
    encoded = encode_sample(
        Sample(TOOL_TURNS, tools=TOOLS), get_template("qwen3_nothink"), tok, 1024
    )
    schema = {"type": "function", "function": {"name": "get_weather", "parameters": {}}}
    schema["function"]["parameters"] = {"type": "object", "properties": {}}
    system = QWEN_TOOLS.format(tools="\n" + to_json(schema))
    header = tok.ids("<|im_start|>", "assistant\n")
    prompt1 = chatml_turn(tok, "system", system) + chatml_turn(tok, "user", "Weather?") + header
    call = tok.ids('<tool_call>\n{"name": "get_weather", "arguments": {}}\n</tool_call>')
    call += tok.ids("<|im_end|>", "\n")
    result = chatml_turn(tok, "user", "<tool_response>\n21 C\n</tool_response>") + header
    answer = tok.ids("21 degrees.", "<|im_end|>", "\n")
    assert encoded.input_ids == prompt1 + call + result + answer
    assert encoded.labels == masked(prompt1) + call + masked(result) + answer


REASONED = [
    {"role": "user", "content": "2+2?"},
    {"role": "assistant", "content": "4", "reasoning": "Add."},
]


@pytest.mark.parametrize(
    "thinking, with_reasoning, block_trained",
    [
        (True, True, True),  # reasoning kept and learned
        (None, True, True),  # mixed: a sample with reasoning learns it
        (True, False, True),  # thinking on: the empty block is learned as well
        (None, False, False),  # mixed: an empty block goes in the prompt
        (False, True, False),  # off: reasoning dropped, empty block in the prompt
    ],
)
def test_qwen3_thinking_modes(thinking, with_reasoning, block_trained):
    tok = CharTokenizer(IM)
    messages = REASONED if with_reasoning else [REASONED[0], {"role": "assistant", "content": "4"}]
    template = get_template("qwen3").with_options(enable_thinking=thinking)
    encoded = encode_sample(Sample(messages), template, tok, 1024)
    prompt = chatml_turn(tok, "user", "2+2?") + tok.ids("<|im_start|>", "assistant\n")
    reasoning = "Add." if with_reasoning and thinking is not False else ""
    block = tok.ids("<think>", f"\n{reasoning}\n", "</think>", "\n\n")
    answer = tok.ids("4", "<|im_end|>", "\n")
    assert encoded.input_ids == prompt + block + answer
    expected_block = block if block_trained else masked(block)
    assert encoded.labels == masked(prompt) + expected_block + answer


def test_qwen3_drops_reasoning_of_earlier_turns_unless_preserved():
    tok = CharTokenizer(IM)
    history = [
        {"role": "user", "content": "1+1?"},
        {"role": "assistant", "content": "2", "reasoning": "Old."},
    ] + REASONED
    dropped = encode_sample(Sample(history), get_template("qwen3"), tok, 1024)
    assert "Old." not in tok.decode(dropped.input_ids)
    kept = get_template("qwen3").with_options(preserve_thinking=True)
    preserved = encode_sample(Sample(history), kept, tok, 1024)
    text = tok.decode([t for t in preserved.labels if t != IGNORE_INDEX])
    assert "<think>\nOld.\n</think>\n\n2" in text


def test_deepseekr1_prompt_opens_the_reasoning():
    specials = ["<｜User｜>", "<｜Assistant｜>", "<｜end▁of▁sentence｜>", "<think>", "</think>"]
    tok = CharTokenizer(specials)
    encoded = encode_sample(Sample(REASONED), get_template("deepseekr1"), tok, 1024)
    prompt = tok.ids("<s>", "<｜User｜>", "2+2?", "<｜Assistant｜>", "<think>", "\n")
    answer = tok.ids("Add.\n", "</think>", "\n\n4", "<｜end▁of▁sentence｜>")
    assert encoded.input_ids == prompt + answer
    assert encoded.labels == masked(prompt) + answer
    generation = get_template("deepseekr1").encode_prompt(tok, REASONED[:1])
    assert generation == prompt


def test_glm4_trains_the_next_turn_marker_as_end_of_turn():
    specials = ["[gMASK]", "<sop>", "<|system|>", "<|user|>", "<|assistant|>", "<|observation|>"]
    tok = CharTokenizer(specials)
    encoded = encode_sample(Sample(TWO_TURNS), get_template("glm4"), tok, 1024)
    prompt1 = tok.ids("[gMASK]", "<sop>", "<|user|>", "\nHi", "<|assistant|>")
    answer1 = tok.ids("\nHello!", "<|user|>")
    prompt2 = tok.ids("\nWho?", "<|assistant|>")
    answer2 = tok.ids("\nForge.", "<|user|>")
    assert encoded.input_ids == prompt1 + answer1 + prompt2 + answer2
    assert encoded.labels == masked(prompt1) + answer1 + masked(prompt2) + answer2


def test_mask_history_trains_only_the_last_answer():
    tok = CharTokenizer(IM)
    full = encode_sample(Sample(TWO_TURNS), get_template("chatml"), tok, 1024)
    last = encode_sample(Sample(TWO_TURNS), get_template("chatml"), tok, 1024, mask_history=True)
    assert last.input_ids == full.input_ids
    assert tok.decode([t for t in last.labels if t != IGNORE_INDEX]) == "Forge.<|im_end|>\n"


def test_train_on_prompt_trains_every_token():
    tok = CharTokenizer(IM)
    encoded = encode_sample(Sample(TWO_TURNS), get_template("chatml"), tok, 1024, True)
    assert encoded.labels == encoded.input_ids


def test_truncation_never_keeps_a_prompt_without_its_answer():
    tok = CharTokenizer(IM)
    template = get_template("chatml")
    full = encode_sample(Sample(TWO_TURNS), template, tok, 1024)
    first_turn = len(chatml_turn(tok, "user", "Hi")) + len(tok.ids("<|im_start|>", "assistant\n"))
    first_turn += len(tok.ids("Hello!", "<|im_end|>", "\n"))
    cut = encode_sample(Sample(TWO_TURNS), template, tok, first_turn + 5)
    assert cut.truncated and cut.input_ids == full.input_ids[:first_turn]
    assert cut.lost_tokens == len(full.input_ids) - first_turn
    inside_prompt = encode_sample(Sample(TWO_TURNS), template, tok, 4)
    assert inside_prompt.truncated and inside_prompt.trained_tokens == 0  # counted, then dropped


def test_pretrain_text_gets_eos_and_splits_into_blocks():
    tok = CharTokenizer()
    blocks = encode_pretrain(Sample([], text="abcdefg"), tok, cutoff_len=4)
    ids = tok.ids("abcdefg", "</s>")
    assert [b.input_ids for b in blocks] == [ids[:4], ids[4:]]
    assert all(b.labels == b.input_ids for b in blocks)


def test_pairwise_shares_the_prompt_and_masks_it():
    tok = CharTokenizer(IM)
    sample = Sample(
        TWO_TURNS[:1],
        chosen={"role": "assistant", "content": "Hello!"},
        rejected={"role": "assistant", "content": "Go away."},
    )
    pair = encode_pairwise(sample, get_template("chatml"), tok, 1024)
    prompt = chatml_turn(tok, "user", "Hi") + tok.ids("<|im_start|>", "assistant\n")
    assert pair.prompt_ids == prompt
    assert pair.chosen_ids == tok.ids("Hello!", "<|im_end|>", "\n")
    assert pair.rejected_ids == tok.ids("Go away.", "<|im_end|>", "\n")
    ids, labels = pair.rejected()
    assert ids == prompt + pair.rejected_ids and labels == masked(prompt) + pair.rejected_ids
    # Too long: the prompt keeps its end and at least half of cutoff_len, the answers the rest.
    short = encode_pairwise(sample, get_template("chatml"), tok, 16)
    assert short.truncated and short.prompt_ids == prompt[-8:]
    assert short.chosen_ids == pair.chosen_ids and short.rejected_ids == pair.rejected_ids[:8]


def test_kto_splits_prompt_and_judged_answer():
    tok = CharTokenizer(IM)
    sample = Sample(TWO_TURNS[:2], kto_label=False)
    kto = encode_kto(sample, get_template("chatml"), tok, 1024)
    assert kto.completion_ids == tok.ids("Hello!", "<|im_end|>", "\n") and kto.label is False
    assert kto.prompt_ids == chatml_turn(tok, "user", "Hi") + tok.ids("<|im_start|>", "assistant\n")


@pytest.mark.parametrize("count", [2, 3, 4, 5, 8, 1001])
def test_kl_partners_are_a_rotation_that_never_pairs_a_record_with_itself(count):
    partners = [kl_partner(i, count) for i in range(count)]
    assert sorted(partners) == list(range(count))  # every answer used once
    assert all(p != i for i, p in enumerate(partners))
    if count >= 4:  # and not a neighbour's (neighbours often share the prompt)
        assert all(abs(p - i) not in (1, count - 1) for i, p in enumerate(partners))


def kto_rows(prompts, answers):
    return [
        {"input_ids": p + a, "labels": masked(p) + a, "prompt_ids": p, "answer_ids": a,
         "kto_label": True}
        for p, a in zip(prompts, answers)
    ]  # fmt: skip


def test_kl_rows_pair_each_prompt_with_another_records_answer():
    prompts = [[10, 11], [20], [30, 31, 32], [40]]
    answers = [[1], [2, 2], [3, 3, 3], [4]]
    rows = kto_rows(prompts, answers)
    add_kl_completions(rows, cutoff_len=64)
    # 4 records: partner i + 2 (wrapping)
    assert [r["kl_input_ids"] for r in rows] == [
        [10, 11, 3, 3, 3],
        [20, 4],
        [30, 31, 32, 1],
        [40, 2, 2],
    ]
    assert [r["kl_labels"] for r in rows] == [
        [IGNORE_INDEX] * 2 + [3, 3, 3],
        [IGNORE_INDEX, 4],
        [IGNORE_INDEX] * 3 + [1],
        [IGNORE_INDEX, 2, 2],
    ]
    # the samples themselves are untouched; the prompt and answer are not kept twice
    assert [r["input_ids"] for r in rows] == [p + a for p, a in zip(prompts, answers)]
    assert all("prompt_ids" not in r and "answer_ids" not in r for r in rows)
    two = kto_rows(prompts[:2], answers[:2])
    add_kl_completions(two, cutoff_len=64)
    assert [r["kl_input_ids"] for r in two] == [[10, 11, 2, 2], [20, 1]]


def test_kl_rows_fit_cutoff_len_like_a_kto_sample():
    # a short prompt's long answer, with a long prompt: the prompt keeps its end and at least
    # half of cutoff_len, the answer its beginning
    rows = kto_rows([[1, 2, 3, 4, 5, 6], [7]], [[8], [9, 9, 9, 9, 9, 9]])
    add_kl_completions(rows, cutoff_len=8)
    assert rows[0]["kl_input_ids"] == [3, 4, 5, 6, 9, 9, 9, 9]
    assert rows[0]["kl_labels"] == masked([3, 4, 5, 6]) + [9, 9, 9, 9]
    assert rows[1]["kl_input_ids"] == [7, 8]


def test_kl_rows_need_two_records():
    add_kl_completions([], cutoff_len=8)  # nothing to pair (an empty eval split)
    with pytest.raises(ValueError, match="two records"):
        add_kl_completions(kto_rows([[1]], [[2]]), cutoff_len=8)


def test_spelling_matches_the_tokenizer():
    tok = CharTokenizer(["<|im_end|>"])
    assert tok.encode("Hi<|im_end|>\n", add_special_tokens=False) == tok.ids(
        "Hi", "<|im_end|>", "\n"
    )
