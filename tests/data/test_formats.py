import json

import pytest

from lmforge.data.problems import RecordCheck
from lmforge.data.sources.formats import check_stage, to_sample, to_samples
from lmforge.data.sources.readers import MalformedLine, read_records
from lmforge.data.sources.registry import resolve_datasets
from lmforge.errors import UserError


def registry(tmp_path, entry: dict, records, name="d.json", stage="sft"):
    (tmp_path / name).write_text(
        "\n".join(json.dumps(r) for r in records)
        if name.endswith(".jsonl")
        else json.dumps(records)
    )
    (tmp_path / "dataset_info.json").write_text(json.dumps({"d": {"file_name": name, **entry}}))
    spec = resolve_datasets(["d"], tmp_path)[0]
    return to_samples(spec, read_records(spec.path), stage)


def problems(tmp_path, entry: dict, record, stage="sft") -> list[str]:
    """Every problem of one record, as `file:record N:field: reason` lines."""
    (tmp_path / "d.json").write_text(json.dumps([record]))
    (tmp_path / "dataset_info.json").write_text(json.dumps({"d": {"file_name": "d.json", **entry}}))
    spec = resolve_datasets(["d"], tmp_path)[0]
    check = RecordCheck("d.json", 0)
    assert to_sample(spec, record, check, stage) is None
    return [str(p) for p in check.problems]


SHAREGPT = {"formatting": "sharegpt", "columns": {"messages": "conversations", "tools": "tools"}}
OPENAI = {"formatting": "openai"}


def test_alpaca_with_input_system_and_history(tmp_path):
    record = {
        "instruction": "Translate",
        "input": "hello",
        "output": "bonjour",
        "system": "Be terse.",
        "history": [["Hi", "Hey"]],
    }
    entry = {
        "columns": {
            "prompt": "instruction",
            "query": "input",
            "response": "output",
            "system": "system",
            "history": "history",
        }
    }
    (sample,) = registry(tmp_path, entry, [record])
    assert sample.system == "Be terse."
    assert sample.messages == [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hey"},
        {"role": "user", "content": "Translate\nhello"},
        {"role": "assistant", "content": "bonjour"},
    ]
    assert (sample.source_file, sample.record_index) == (str(tmp_path / "d.json"), 0)


def test_alpaca_columns_given_reads_only_those(tmp_path):
    # As LLaMA-Factory: once `columns` is given, an unlisted `input` column is not read.
    record = {"q": "Question", "input": "ignored", "a": "Answer"}
    (sample,) = registry(tmp_path, {"columns": {"prompt": "q", "response": "a"}}, [record])
    assert sample.messages[0]["content"] == "Question"


def test_alpaca_tools(tmp_path):
    record = {"instruction": "Add 2 and 3.", "output": "5", "tools": [{"name": "add"}]}
    entry = {"columns": {"prompt": "instruction", "response": "output", "tools": "tools"}}
    (sample,) = registry(tmp_path, entry, [record])
    assert sample.messages[-1] == {"role": "assistant", "content": "5"}
    assert json.loads(sample.tools) == [{"name": "add"}]


def test_a_number_where_text_is_expected_is_a_problem_not_converted(tmp_path):
    # alpaca: an integer instruction and output are reported, not turned into "5" with str().
    record = {"instruction": 5, "output": 2.5}
    assert problems(tmp_path, {}, record) == [
        "d.json:record 0:instruction: must be text, not a number (5)",
        "d.json:record 0:output: must be text, not a number (2.5)",
    ]
    check = RecordCheck("d.json", 0)
    spec = resolve_datasets(["d"], tmp_path)[0]
    to_sample(spec, record, check)
    assert check.problems[0].fix.startswith('write it as a JSON string ("5" instead of 5)')
    assert check.problems[0].kind == "wrong type"
    # sharegpt: an integer value in a turn, or in the system turn.
    turns = [{"from": "human", "value": 7}, {"from": "gpt", "value": "x"}]
    assert problems(tmp_path, SHAREGPT, {"conversations": turns}) == [
        "d.json:record 0:conversations: message 0: `value` must be text, not a number (7)"
    ]
    turns = [{"from": "system", "value": True}] + turns[1:]
    assert problems(tmp_path, SHAREGPT, {"conversations": turns}) == [
        "d.json:record 0:conversations: the system message: `value` must be text, not true/false"
    ]
    # openai: an integer content; a preference answer that is a number.
    messages = [{"role": "user", "content": "Q"}, {"role": "assistant", "content": 42}]
    assert problems(tmp_path, OPENAI, {"messages": messages}) == [
        "d.json:record 0:messages: message 1: `content` must be text, not a number (42)"
    ]
    ranking = {"formatting": "sharegpt", "ranking": True}
    ranking["columns"] = {"messages": "conversations", "chosen": "c", "rejected": "r"}
    record = {"conversations": [{"from": "human", "value": "Q"}], "c": 1, "r": "B"}
    assert problems(tmp_path, ranking, record, "dpo") == [
        "d.json:record 0:c: must be a message or text, not a number (1)"
    ]


def test_a_malformed_line_is_a_problem_of_its_record(tmp_path):
    (tmp_path / "d.jsonl").write_text("{}")
    (tmp_path / "dataset_info.json").write_text(json.dumps({"d": {"file_name": "d.jsonl"}}))
    spec = resolve_datasets(["d"], tmp_path)[0]
    check = RecordCheck("d.jsonl", 3)
    bad = MalformedLine(5, "not valid JSON (Expecting value at column 1)", "repair that line")
    assert to_sample(spec, bad, check) is None
    (problem,) = check.problems
    assert str(problem) == "d.jsonl:5: not valid JSON (Expecting value at column 1)"
    assert (problem.record, problem.kind, problem.fix) == (3, "malformed line", "repair that line")


def test_alpaca_preference_pairs_from_columns_and_from_response_list(tmp_path):
    entry = {
        "ranking": True,
        "columns": {"prompt": "instruction", "query": "input", "chosen": "c", "rejected": "r"},
    }
    (sample,) = registry(tmp_path, entry, [{"instruction": "Q", "input": "x", "c": "A", "r": "B"}])
    assert sample.messages == [{"role": "user", "content": "Q\nx"}]
    assert sample.chosen == {"role": "assistant", "content": "A"}
    assert sample.rejected == {"role": "assistant", "content": "B"}
    (older,) = registry(tmp_path, {"ranking": True}, [{"instruction": "Q", "output": ["A", "B"]}])
    assert (older.chosen["content"], older.rejected["content"]) == ("A", "B")


def test_alpaca_kto_label(tmp_path):
    entry = {"columns": {"prompt": "instruction", "response": "output", "kto_tag": "ok"}}
    records = [
        {"instruction": "Q", "output": "A", "ok": True},
        {"instruction": "Q", "output": "B", "ok": "false"},  # as a CSV cell
    ]
    good, bad = registry(tmp_path, entry, records, stage="kto")
    assert (good.kto_label, bad.kto_label) == (True, False)
    assert good.messages[-1] == {"role": "assistant", "content": "A"}


def test_pretraining_text_from_prompt_column(tmp_path):
    samples = registry(tmp_path, {"columns": {"prompt": "text"}}, [{"text": "doc"}], stage="pt")
    assert samples[0].text == "doc" and samples[0].messages == []


def test_sharegpt_with_system_turn_and_custom_columns(tmp_path):
    record = {
        "conv": [
            {"from": "system", "value": "S"},
            {"from": "human", "value": "Q1"},
            {"from": "gpt", "value": "A1"},
        ]
    }
    (sample,) = registry(
        tmp_path, {"formatting": "sharegpt", "columns": {"messages": "conv"}}, [record], "d.jsonl"
    )
    assert sample.system == "S"
    assert sample.messages == [
        {"role": "user", "content": "Q1"},
        {"role": "assistant", "content": "A1"},
    ]


def test_sharegpt_custom_tags(tmp_path):
    record = {"messages": [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "A"}]}
    entry = {
        "formatting": "sharegpt",
        "columns": {"messages": "messages"},
        "tags": {
            "role_tag": "role",
            "content_tag": "content",
            "user_tag": "user",
            "assistant_tag": "assistant",
        },
    }
    (sample,) = registry(tmp_path, entry, [record])
    assert [m["content"] for m in sample.messages] == ["Q", "A"]


def test_sharegpt_tool_calls_and_observations(tmp_path):
    call = {"name": "area", "arguments": {"w": 5, "h": 3}}
    record = {
        "conversations": [
            {"from": "human", "value": "Area of 5x3?"},
            {"from": "function_call", "value": json.dumps(call)},
            {"from": "observation", "value": '{"area": 15}'},
            {"from": "gpt", "value": "15."},
        ],
        "tools": json.dumps([{"name": "area", "parameters": {}}]),
    }
    (sample,) = registry(tmp_path, SHAREGPT, [record])
    assert sample.messages == [
        {"role": "user", "content": "Area of 5x3?"},
        {"role": "assistant", "content": "", "tool_calls": [call]},
        {"role": "tool", "content": '{"area": 15}'},
        {"role": "assistant", "content": "15."},
    ]
    assert json.loads(sample.tools) == [{"name": "area", "parameters": {}}]


def test_sharegpt_parallel_calls_with_string_arguments(tmp_path):
    calls = [{"name": "a", "arguments": '{"x": 1}'}, {"name": "b", "arguments": {}}]
    record = {
        "conversations": [
            {"from": "human", "value": "Q"},
            {"from": "function_call", "value": json.dumps(calls)},
            {"from": "observation", "value": "1"},
            {"from": "observation", "value": "2"},
            {"from": "gpt", "value": "A"},
        ]
    }
    (sample,) = registry(tmp_path, SHAREGPT, [record])
    assert sample.messages[1]["tool_calls"] == [
        {"name": "a", "arguments": {"x": 1}},
        {"name": "b", "arguments": {}},
    ]


def test_think_block_becomes_reasoning(tmp_path):
    record = {
        "conversations": [
            {"from": "human", "value": "Q"},
            {"from": "gpt", "value": "<think>\nstep by step\n</think>\n\nA"},
        ]
    }
    (sample,) = registry(tmp_path, SHAREGPT, [record])
    assert sample.messages[1] == {"role": "assistant", "content": "A", "reasoning": "step by step"}


def test_sharegpt_preference_pairs(tmp_path):
    record = {
        "conversations": [{"from": "human", "value": "Q"}],
        "chosen": {"from": "gpt", "value": "good"},
        "rejected": {"from": "gpt", "value": "bad"},
    }
    entry = {
        "formatting": "sharegpt",
        "ranking": True,
        "columns": {"messages": "conversations", "chosen": "chosen", "rejected": "rejected"},
    }
    (sample,) = registry(tmp_path, entry, [record], stage="dpo")
    assert sample.messages == [{"role": "user", "content": "Q"}]
    assert (sample.chosen["content"], sample.rejected["content"]) == ("good", "bad")


def test_sharegpt_preference_without_mapped_answers_names_the_columns_to_map(tmp_path):
    record = {"conversations": [{"from": "human", "value": "Q"}], "chosen": "a"}
    entry = {"formatting": "sharegpt", "ranking": True, "columns": {"messages": "conversations"}}
    (tmp_path / "d.json").write_text(json.dumps([record]))
    (tmp_path / "dataset_info.json").write_text(json.dumps({"d": {"file_name": "d.json", **entry}}))
    (spec,) = resolve_datasets(["d"], tmp_path)
    with pytest.raises(UserError) as info:
        check_stage(spec, "dpo")
    message = str(info.value)
    assert "dataset_info.json: dataset `d`: dataset `d` is preference data (`ranking: true`), " in (
        message
    )
    assert "but maps no chosen or rejected column" in message
    assert 'Fix: add "chosen": "chosen", "rejected": "rejected" to its "columns"' in message
    # Record by record (as without the dataset check), the fix names the column, never None.
    assert problems(tmp_path, entry, record, "dpo") == [
        "d.json:record 0:chosen: missing",
        "d.json:record 0:rejected: missing",
    ]
    check = RecordCheck("d.json", 0)
    to_sample(spec, record, check, "dpo")
    assert check.problems[0].fix == 'give every record "chosen": {"from": "gpt", "value": "..."}'


def test_openai_messages_with_tool_calls_reasoning_and_parts(tmp_path):
    record = {
        "messages": [
            {"role": "system", "content": "S"},
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "Weather "},
                    {"type": "text", "text": "in Paris?"},
                ],
            },
            {
                "role": "assistant",
                "content": None,
                "reasoning_content": "Need the tool.",
                "tool_calls": [
                    {"type": "function", "function": {"name": "w", "arguments": '{"c": "Paris"}'}}
                ],
            },
            {"role": "tool", "content": "sunny", "tool_call_id": "1"},
            {"role": "assistant", "content": "Sunny."},
        ],
        "tools": [{"type": "function", "function": {"name": "w", "parameters": {}}}],
    }
    (sample,) = registry(tmp_path, OPENAI, [record])
    assert sample.system == "S"
    assert sample.messages == [
        {"role": "user", "content": "Weather in Paris?"},
        {
            "role": "assistant",
            "content": "",
            "reasoning": "Need the tool.",
            "tool_calls": [{"name": "w", "arguments": {"c": "Paris"}}],
        },
        {"role": "tool", "content": "sunny"},
        {"role": "assistant", "content": "Sunny."},
    ]
    assert json.loads(sample.tools) == [{"name": "w", "parameters": {}}]  # one shape for all


def test_sharegpt_wrong_role_order_names_record_and_fix(tmp_path):
    records = [
        {"conversations": [{"from": "human", "value": "Q"}, {"from": "gpt", "value": "A"}]},
        {"conversations": [{"from": "gpt", "value": "A"}, {"from": "human", "value": "Q"}]},
    ]
    with pytest.raises(UserError) as info:
        registry(tmp_path, {"formatting": "sharegpt"}, records)
    message = str(info.value)
    assert "d.json:record 1:conversations: message 0 has role 'gpt'" in message
    assert "should be user" in message


@pytest.mark.parametrize(
    ("turns", "reason"),
    [
        ([["human", "Q"]], "the conversation ends with a user message, so there is no answer"),
        ([["human", "Q"], ["gpt", "A"], ["gpt", "B"]], "message 2 has role 'gpt'"),
        ([["human", "Q"], ["gpt", "A"], ["observation", "r"]], "message 2 has role 'observation'"),
        ([["human", "Q"], ["robot", "A"]], "message 1 has an unknown role 'robot' in `from`"),
        ([["human", "Q"], ["system", "S"], ["gpt", "A"]], "message 1 is a system message after"),
        ([["human", "Q"], ["function_call", "{oops"]], "message 1 (function_call): not valid JSON"),
        (
            [["human", "Q"], ["function_call", '{"arguments": {}}']],
            "message 1 (function_call): a tool",
        ),
    ],
)
def test_conversation_problems(tmp_path, turns, reason):
    record = {"conversations": [{"from": r, "value": v} for r, v in turns]}
    (problem,) = problems(tmp_path, SHAREGPT, record)
    assert problem.startswith("d.json:record 0:conversations: " + reason), problem


def test_every_problem_of_a_record_is_listed(tmp_path):
    record = {"instruction": "", "output": "", "tools": "[not json"}
    entry = {"columns": {"prompt": "instruction", "response": "output", "tools": "tools"}}
    found = problems(tmp_path, entry, record)
    assert [p.split(": ")[0] for p in found] == [
        "d.json:record 0:instruction",
        "d.json:record 0:tools",
        "d.json:record 0:output",
    ]


@pytest.mark.parametrize(
    ("entry", "record", "stage", "expected"),
    [
        ({}, ["not", "a", "dict"], "sft", "d.json:record 0: is a list, not an object"),
        ({}, {"instruction": "Q", "output": {"a": 1}}, "sft", ":output: must be text"),
        (
            {"columns": {"prompt": "i", "response": "o", "history": "h"}},
            {"i": "Q", "o": "A", "h": "x"},
            "sft",
            ":h: must be a list of pairs",
        ),
        ({"ranking": True}, {"instruction": "Q", "output": "A"}, "dpo", ":output: a preference"),
        (
            {"columns": {"prompt": "i", "response": "o", "kto_tag": "l"}},
            {"i": "Q", "o": "A", "l": "maybe"},
            "kto",
            ":l: must be true or false",
        ),
        ({"columns": {"prompt": "text"}}, {"body": "x"}, "pt", ":text: missing or empty"),
    ],
)
def test_record_problems(tmp_path, entry, record, stage, expected):
    found = problems(tmp_path, entry, record, stage)
    assert expected in found[0], found


def test_unknown_formatting_is_refused(tmp_path):
    with pytest.raises(UserError, match="unknown formatting `sharegtp`"):
        registry(tmp_path, {"formatting": "sharegtp"}, [{"a": 1}])


def test_empty_file_is_refused(tmp_path):
    with pytest.raises(UserError, match="holds no records"):
        registry(tmp_path, {}, [])
