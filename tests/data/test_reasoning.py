"""Reasoning in every format: a leading <think>...</think> block (or reasoning_content) of an
alpaca output or history answer, a sharegpt gpt turn, an openai assistant message, preference
chosen/rejected and KTO answers is read by one function into reasoning + answer; the template's
thinking rules decide what is trained; every drop or text-trained block is counted in a note;
a block that cannot be read is a problem of the record."""

import json

import pytest

from conftest import CharTokenizer, build_tiny_tokenizer, masked
from lmforge.config.schema import DataConfig
from lmforge.data.encoding.encode import encode_kto, encode_pairwise, encode_sample
from lmforge.data.encoding.loader import build_datasets
from lmforge.data.inspect import inspect_data
from lmforge.data.problems import RecordCheck
from lmforge.data.sources.formats import to_sample, to_samples
from lmforge.data.sources.readers import read_records
from lmforge.data.sources.reasoning import split_reasoning
from lmforge.data.sources.registry import resolve_datasets
from lmforge.data.templates.auto import load_template
from lmforge.data.templates.named import get_template
from lmforge.errors import UserError

IM = ["<|im_start|>", "<|im_end|>", "<think>", "</think>"]
HISTORY = {"columns": {"prompt": "instruction", "response": "output", "history": "history"}}
SHAREGPT = {"formatting": "sharegpt", "columns": {"messages": "conversations"}}
OPENAI = {"formatting": "openai"}


@pytest.fixture(autouse=True)
def cache_home(tmp_path, monkeypatch):
    monkeypatch.setenv("LMFORGE_HOME", str(tmp_path / "home"))


def samples(folder, entry, records, stage="sft"):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "d.json").write_text(json.dumps(records))
    (folder / "dataset_info.json").write_text(json.dumps({"d": {"file_name": "d.json", **entry}}))
    spec = resolve_datasets(["d"], folder)[0]
    return to_samples(spec, read_records(spec.path), stage)


def problems(folder, entry, record, stage="sft") -> list[str]:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "d.json").write_text(json.dumps([record]))
    (folder / "dataset_info.json").write_text(json.dumps({"d": {"file_name": "d.json", **entry}}))
    spec = resolve_datasets(["d"], folder)[0]
    check = RecordCheck("d.json", 0)
    assert to_sample(spec, record, check, stage) is None
    return [str(p) for p in check.problems]


def think(reasoning, answer):
    return f"<think>\n{reasoning}\n</think>\n\n{answer}"


# The same two-turn conversation (reasoning in both answers) in every format.
def alpaca(first, last):
    return {"instruction": "2+2?", "output": last, "history": [["1+1?", first]]}


def sharegpt(first, last):
    turns = [("human", "1+1?"), ("gpt", first), ("human", "2+2?"), ("gpt", last)]
    return {"conversations": [{"from": r, "value": v} for r, v in turns]}


def openai(first, last):
    turns = [("user", "1+1?"), ("assistant", first), ("user", "2+2?"), ("assistant", last)]
    return {"messages": [{"role": r, "content": c} for r, c in turns]}


def openai_fields(first, last):
    """reasoning_content instead of a block (given as (reasoning, answer) pairs)."""
    record = openai(first[1], last[1])
    record["messages"][1]["reasoning_content"] = first[0]
    record["messages"][3]["reasoning_content"] = last[0]
    return record


FORMATS = {
    "alpaca": (HISTORY, lambda: alpaca(think("One more.", "2"), think("Add.", "4"))),
    "sharegpt": (SHAREGPT, lambda: sharegpt(think("One more.", "2"), think("Add.", "4"))),
    "openai": (OPENAI, lambda: openai(think("One more.", "2"), think("Add.", "4"))),
    "openai reasoning_content": (
        OPENAI,
        lambda: openai_fields(("One more.", "2"), ("Add.", "4")),
    ),
}
CONVERSATION = [
    {"role": "user", "content": "1+1?"},
    {"role": "assistant", "content": "2", "reasoning": "One more."},
    {"role": "user", "content": "2+2?"},
    {"role": "assistant", "content": "4", "reasoning": "Add."},
]


@pytest.mark.parametrize("name", FORMATS)
def test_every_format_reads_the_same_reasoning(tmp_path, name):
    entry, record = FORMATS[name]
    (sample,) = samples(tmp_path, entry, [record()])
    assert sample.messages == CONVERSATION


def chatml(tok, role, text):
    return tok.ids("<|im_start|>", f"{role}\n{text}", "<|im_end|>", "\n")


@pytest.mark.parametrize(
    "thinking, preserve",
    [(True, False), (False, False), (None, False), (True, True), (False, True)],
)
def test_qwen3_encodes_every_format_identically_with_exact_ids(tmp_path, thinking, preserve):
    tok = CharTokenizer(IM)
    template = get_template("qwen3").with_options(
        enable_thinking=thinking, preserve_thinking=preserve
    )
    header = tok.ids("<|im_start|>", "assistant\n")
    prompt1 = chatml(tok, "user", "1+1?") + header
    prompt2 = chatml(tok, "user", "2+2?") + header
    end = tok.ids("<|im_end|>", "\n")
    if thinking is False:  # reasoning dropped everywhere; the last answer's empty block untrained
        answer1 = tok.ids("2") + end
        prompt2 += tok.ids("<think>", "\n\n", "</think>", "\n\n")
        answer2 = tok.ids("4") + end
    else:  # the last answer's reasoning is learned; the earlier one's only when preserved
        first = tok.ids("<think>", "\nOne more.\n", "</think>", "\n\n") if preserve else []
        answer1 = first + tok.ids("2") + end
        answer2 = tok.ids("<think>", "\nAdd.\n", "</think>", "\n\n4") + end
    expected_ids = prompt1 + answer1 + prompt2 + answer2
    expected_labels = masked(prompt1) + answer1 + masked(prompt2) + answer2
    for name, (entry, record) in FORMATS.items():
        (sample,) = samples(tmp_path / name, entry, [record()])
        encoded = encode_sample(sample, template, tok, 1024)
        assert encoded.input_ids == expected_ids, name
        assert encoded.labels == expected_labels, name


def test_deepseekr1_and_a_template_without_reasoning_encode_every_format_identically(tmp_path):
    specials = ["<｜User｜>", "<｜Assistant｜>", "<｜end▁of▁sentence｜>", *IM]
    tok = CharTokenizer(specials)
    for template in (get_template("deepseekr1"), get_template("qwen")):
        encodings = {
            name: encode_sample(samples(tmp_path / name, entry, [make()])[0], template, tok, 1024)
            for name, (entry, make) in FORMATS.items()
        }
        first = encodings["alpaca"]
        for name, encoded in encodings.items():
            assert (encoded.input_ids, encoded.labels) == (first.input_ids, first.labels), name
        text = tok.decode(first.input_ids)
        assert "One more." not in text
        assert ("Add." in text) == (template.name == "deepseekr1")  # qwen: dropped, noted


def test_preference_and_kto_answers_are_read_the_same_in_every_format(tmp_path):
    tok = CharTokenizer(IM)
    good, bad = think("Add.", "4"), think("Guess.", "5")
    alpaca_pref = {
        "ranking": True,
        "columns": {"prompt": "instruction", "chosen": "c", "rejected": "r"},
    }
    chat_columns = {"chosen": "chosen", "rejected": "rejected"}
    pairs = {
        "alpaca": (alpaca_pref, {"instruction": "2+2?", "c": good, "r": bad}),
        "alpaca output list": ({"ranking": True}, {"instruction": "2+2?", "output": [good, bad]}),
        "sharegpt": (
            {**SHAREGPT, "ranking": True, "columns": {"messages": "conversations", **chat_columns}},
            {
                "conversations": [{"from": "human", "value": "2+2?"}],
                "chosen": {"from": "gpt", "value": good},
                "rejected": {"from": "gpt", "value": bad},
            },
        ),
        "openai": (
            {**OPENAI, "ranking": True, "columns": {"messages": "messages", **chat_columns}},
            {
                "messages": [{"role": "user", "content": "2+2?"}],
                "chosen": {"role": "assistant", "content": "4", "reasoning_content": "Add."},
                "rejected": bad,  # plain text: an answer too
            },
        ),
    }
    header = tok.ids("<|im_start|>", "assistant\n")
    prompt = chatml(tok, "user", "2+2?") + header
    for thinking in (True, False):
        template = get_template("qwen3").with_options(enable_thinking=thinking)
        for name, (entry, record) in pairs.items():
            (sample,) = samples(tmp_path / name, entry, [record], stage="dpo")
            assert sample.chosen == {"role": "assistant", "content": "4", "reasoning": "Add."}
            assert sample.rejected == {"role": "assistant", "content": "5", "reasoning": "Guess."}
            pair = encode_pairwise(sample, template, tok, 1024)
            if thinking:
                assert pair.prompt_ids == prompt
                assert pair.chosen_ids == tok.ids(
                    "<think>", "\nAdd.\n", "</think>", "\n\n4", "<|im_end|>", "\n"
                )
                assert pair.rejected_ids == tok.ids(
                    "<think>", "\nGuess.\n", "</think>", "\n\n5", "<|im_end|>", "\n"
                )
            else:  # the empty block is the prompt's, both answers without reasoning
                assert pair.prompt_ids == prompt + tok.ids("<think>", "\n\n", "</think>", "\n\n")
                assert pair.chosen_ids == tok.ids("4", "<|im_end|>", "\n")
                assert pair.rejected_ids == tok.ids("5", "<|im_end|>", "\n")
    kto = {
        "alpaca": (
            {"columns": {"prompt": "instruction", "response": "output", "kto_tag": "ok"}},
            {"instruction": "2+2?", "output": good, "ok": True},
        ),
        "sharegpt": (
            {**SHAREGPT, "columns": {"messages": "conversations", "kto_tag": "ok"}},
            {"conversations": sharegpt("x", good)["conversations"][2:], "ok": True},
        ),
    }
    template = get_template("qwen3")
    for name, (entry, record) in kto.items():
        (sample,) = samples(tmp_path / f"kto {name}", entry, [record], stage="kto")
        encoded = encode_kto(sample, template, tok, 1024)
        assert encoded.prompt_ids == prompt, name
        assert encoded.completion_ids == tok.ids(
            "<think>", "\nAdd.\n", "</think>", "\n\n4", "<|im_end|>", "\n"
        )


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("<think>\nAdd.\n</think>\n\n4", ("Add.", "4", None)),
        ("  <think>Add.</think>4", ("Add.", "4", None)),
        ("<think>\n\n</think>\n\n4", (None, "4", None)),  # an empty block: no reasoning
        ("4", (None, "4", None)),
        ("Use <think> tags.", (None, "Use <think> tags.", None)),  # text (counted in a note)
        ("<think>\nAdd.", (None, "<think>\nAdd.", "opens `<think>` at its start but never")),
        ("Add.\n</think>\n\n4", (None, "Add.\n</think>\n\n4", "has `</think>` without")),
        ("<think>a</think>b</think>c", (None, "<think>a</think>b</think>c", "has a second")),
    ],
)
def test_split_reasoning(text, expected):
    reasoning, answer, problem = split_reasoning(text)
    assert (reasoning, answer) == expected[:2]
    if expected[2] is None:
        assert problem is None
    else:
        assert problem[0].startswith(expected[2]) and problem[1]  # a reason and a fix


UNCLOSED = "opens `<think>` at its start but never closes it"


@pytest.mark.parametrize(
    ("entry", "record", "stage", "expected"),
    [
        ({}, {"instruction": "Q", "output": "<think>\nstep"}, "sft", f"output: {UNCLOSED}"),
        (
            HISTORY,
            {"instruction": "Q", "output": "A", "history": [["H", "<think>h"]]},
            "sft",
            f"history: history turn 0 answer {UNCLOSED}",
        ),
        (
            SHAREGPT,
            sharegpt("ok", "<think>\nstep"),
            "sft",
            f"conversations: message 3 {UNCLOSED}",
        ),
        (OPENAI, openai("<think>x", "ok"), "sft", f"messages: message 1 {UNCLOSED}"),
        (
            OPENAI,
            openai("ok", "step\n</think>\n\nA"),
            "sft",
            "messages: message 3 has `</think>` without `<think>` at its start",
        ),
        (
            {},
            {"instruction": "Q", "output": "<think>a</think>b</think>c"},
            "sft",
            "output: has a second `</think>` after its reasoning block",
        ),
        (
            OPENAI,
            openai_fields(("x", "2"), ("y", think("z", "4"))),
            "sft",
            "messages: message 3 has reasoning twice: in `reasoning_content` and in a `<think>` block",
        ),
        (
            OPENAI,
            openai_fields(("x", "2"), (5, "4")),
            "sft",
            "messages: message 3 `reasoning_content` must be text, not a number (5)",
        ),
        (
            {"ranking": True, "columns": {"prompt": "i", "chosen": "c", "rejected": "r"}},
            {"i": "Q", "c": "<think>x", "r": "B"},
            "dpo",
            f"c: {UNCLOSED}",
        ),
        (
            {"ranking": True},
            {"instruction": "Q", "output": ["A", "<think>x"]},
            "dpo",
            f"output[1]: {UNCLOSED}",
        ),
        (
            {
                "formatting": "sharegpt",
                "ranking": True,
                "columns": {"messages": "c", "chosen": "ch", "rejected": "r"},
            },
            {
                "c": [{"from": "human", "value": "Q"}],
                "ch": "A",
                "r": {"from": "gpt", "value": "<think>"},
            },
            "dpo",
            f"r: message 0 {UNCLOSED}",
        ),
    ],
)
def test_an_unreadable_reasoning_block_is_a_problem_of_its_record(
    tmp_path, entry, record, stage, expected
):
    (problem,) = problems(tmp_path, entry, record, stage)
    assert problem == f"d.json:record 0:{expected}", problem


def test_an_unclosed_block_stops_training_with_its_place_and_fix_or_is_skipped(tmp_path):
    records = [
        {"instruction": "2+2?", "output": think("Add.", "4")},
        {"instruction": "3+3?", "output": "<think>\nAdd them, then"},
    ]
    folder = tmp_path / "data"
    samples(folder, {}, records[:1])  # writes dataset_info.json
    (folder / "d.json").write_text(json.dumps(records))
    tokenizer = build_tiny_tokenizer()
    data = DataConfig(dataset="d", dataset_dir=str(folder), cutoff_len=64)
    with pytest.raises(UserError) as info:
        build_datasets(data, load_template("qwen3", tokenizer, data), tokenizer, 0)
    message = str(info.value)
    assert f"d.json:record 1:output: {UNCLOSED}" in message
    assert "close the reasoning with `</think>` before the answer" in message
    data = DataConfig(dataset="d", dataset_dir=str(folder), cutoff_len=64, skip_invalid=True)
    _, _, report = build_datasets(data, load_template("qwen3", tokenizer, data), tokenizer, 0)
    assert report.skipped == 1 and report.skip_reasons == {"bad reasoning": 1}
    assert report.train_samples == 1


# Four conversations: reasoning in the last answer; none; reasoning only in an earlier answer;
# `<think>` in the middle of an answer (text).
def note_records(make):
    return [
        make("1", think("add", "4")),
        make("1", "4"),
        make(think("x", "1"), "4"),
        make("1", "Use <think> tags."),
    ]


NOTE_FORMATS = {
    "alpaca": (HISTORY, alpaca),
    "sharegpt": (SHAREGPT, sharegpt),
    "openai": (OPENAI, openai),
}
DROPPED = "2 samples carry reasoning that is not trained: "
HISTORY_NOTE = (
    "note: 1 sample carries reasoning in answers before the last user turn that is not "
    "trained: preserve_thinking is false, so earlier answers are rendered without it, as the "
    "vendor's template does; set preserve_thinking: true to train it (docs/thinking.md, "
    "multi-turn reasoning data)"
)
TEXT_NOTE = (
    "note: 1 sample has `<think>` inside an answer, not as a `<think>...</think>` block at its "
    "start: it is trained as text; to train it as reasoning, start the answer with the block "
    "(or use reasoning_content)"
)


@pytest.mark.parametrize("name", NOTE_FORMATS)
def test_every_reasoning_not_trained_as_reasoning_is_counted_in_a_note(tmp_path, name):
    entry, make = NOTE_FORMATS[name]
    folder = tmp_path / "data"
    samples(folder, entry, note_records(make))
    tokenizer = build_tiny_tokenizer()

    def notes(template, **settings):
        data = DataConfig(
            dataset="d", dataset_dir=str(folder), cutoff_len=128, val_size=0, **settings
        )
        _, _, report = build_datasets(data, load_template(template, tokenizer, data), tokenizer, 0)
        return [line for line in report.lines() if line.startswith("note: ")]

    assert notes("qwen3") == notes("qwen3", enable_thinking=None) == [HISTORY_NOTE, TEXT_NOTE]
    assert notes("qwen3", preserve_thinking=True) == [TEXT_NOTE]
    assert notes("qwen3", enable_thinking=False) == [
        f"note: {DROPPED}enable_thinking is false; set enable_thinking: true (or null) to train it",
        TEXT_NOTE,
    ]
    assert notes("gemma") == [
        f"note: {DROPPED}template `gemma` has no reasoning block; use a reasoning template "
        "(qwen3, deepseekr1; see docs/thinking.md) to train it",
        TEXT_NOTE,
    ]
    data = DataConfig(
        dataset="d", dataset_dir=str(folder), cutoff_len=128, enable_thinking=False, val_size=0
    )
    shown = inspect_data(data, load_template("qwen3", tokenizer, data), tokenizer, 0, num=0)
    assert shown.stats()["notes"] == [
        DROPPED + "enable_thinking is false; set enable_thinking: true (or null) to train it",
        TEXT_NOTE.removeprefix("note: "),
    ]


def test_alpaca_reasoning_with_thinking_off_is_dropped_with_a_note_not_silently(tmp_path):
    """The issue's case: template qwen3, enable_thinking false, alpaca data with <think>."""
    folder = tmp_path / "data"
    samples(folder, {}, [{"instruction": "2+2?", "output": think("Add.", "4")}])
    tokenizer = build_tiny_tokenizer()
    data = DataConfig(
        dataset="d", dataset_dir=str(folder), cutoff_len=128, enable_thinking=False, val_size=0
    )
    train, _, report = build_datasets(data, load_template("qwen3", tokenizer, data), tokenizer, 0)
    assert "Add." not in tokenizer.decode(train[0]["input_ids"])
    assert report.notes == [
        "1 sample carries reasoning that is not trained: enable_thinking is false; set "
        "enable_thinking: true (or null) to train it"
    ]


def test_a_template_with_other_markers_counts_them_in_answers_as_text():
    """Data is read with the generic <think> markers; reasoning written in a template's own
    different markers stays in the answer, and the note says so."""
    import dataclasses

    from lmforge.data.encoding.loader import reasoning_notes
    from lmforge.data.sample import Sample
    from lmforge.data.templates.base import Thinking

    seed = dataclasses.replace(
        get_template("qwen3"), thinking=Thinking("<seed:think>\n", "\n</seed:think>\n\n")
    )
    user = {"role": "user", "content": "2+2?"}
    answers = ["<seed:think>Add.</seed:think>4", "4"]
    data = [Sample([user, {"role": "assistant", "content": a}]) for a in answers]
    assert reasoning_notes(data, seed) == [
        "1 sample has `<seed:think>` or `<think>` inside an answer, not as a "
        "`<think>...</think>` block at its start: it is trained as text; to train it as "
        "reasoning, start the answer with the block (or use reasoning_content)"
    ]
